//! Throwaway PostgreSQL and NATS servers on loopback, for the relay's cluster tests. Each is a
//! child process with its data in a fresh temporary directory, stopped (SIGKILL) and removed
//! on Drop; each can be killed and restarted on the same port and data mid-test.
//!
//! ```no_run
//! use hush_testkit::servers::{nats_present, postgres_present, Nats, Postgres};
//!
//! if hush_testkit::system_component("postgresql (initdb, postgres)", postgres_present())
//!     && hush_testkit::system_component("nats-server", nats_present())
//! {
//!     let pg = Postgres::start();
//!     let nats = Nats::start();
//!     println!("{} {}", pg.url(), nats.url());
//! }
//! ```
//!
//! PostgreSQL refuses to run as root: as root, the data directory is handed to the `postgres`
//! user (Debian's package creates it; `nobody` otherwise) and the server runs as that user.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian keeps the server binaries (not on `PATH`).
const PG_LIB: &str = "/usr/lib/postgresql";

/// The directory holding `initdb` and `postgres`: on `PATH`, or the newest under
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> Option<PathBuf> {
    if crate::on_path("initdb") && crate::on_path("postgres") {
        // Often a symlink into the version's directory, which also has createdb, pg_isready.
        let paths = std::env::var_os("PATH")?;
        let initdb = std::env::split_paths(&paths)
            .map(|d| d.join("initdb"))
            .find(|p| p.is_file())?;
        return std::fs::canonicalize(initdb)
            .ok()?
            .parent()
            .map(Path::to_path_buf);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir(PG_LIB)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// Whether a PostgreSQL server can be started (Debian package `postgresql`).
pub fn postgres_present() -> bool {
    pg_bin().is_some()
}

/// Whether `nats-server` (Debian package `nats-server`) is on `PATH` or in `/usr/sbin`.
pub fn nats_present() -> bool {
    nats_bin().is_some()
}

fn nats_bin() -> Option<PathBuf> {
    if crate::on_path("nats-server") {
        return Some(PathBuf::from("nats-server"));
    }
    let sbin = Path::new("/usr/sbin/nats-server");
    sbin.is_file().then(|| sbin.to_path_buf())
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// Waits until something accepts TCP connections on `addr`; `Err` (with the log) if `child`
/// exits first or nothing listens within 30 s.
fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before listening on {addr}:\n{}",
                log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "{what} not listening on {addr} after 30 s:\n{}",
        log_text()
    ))
}

/// The uid/gid to run PostgreSQL as when we are root.
fn unprivileged() -> Option<(u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    for user in ["postgres", "nobody"] {
        let ids = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, user]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if let (Some(u), Some(g)) = (ids("-u"), ids("-g")) {
            return Some((u, g));
        }
    }
    None
}

/// Builds a command that runs `program` as `user` (uid, gid) when set.
fn command_as(program: &Path, user: Option<(u32, u32)>) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A throwaway PostgreSQL cluster (`initdb` + `postgres`) on a loopback port; user `hush`,
/// trust authentication on loopback, database `hush`.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Creates the cluster, starts the server and creates database `hush`. Panics (with the
    /// server's log) if it does not come up.
    pub fn start() -> Self {
        let bin = pg_bin().expect("PostgreSQL binaries (package postgresql)");
        let user = unprivileged();
        let dir = crate::scratch("pg");
        let data = dir.join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown scratch dir");
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let out = command_as(&bin.join("initdb"), user)
            .args(["-A", "trust", "-U", "hush", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            dir,
            bin,
            user,
            port: free_port(),
            child: None,
        };
        pg.restart();
        let psql_free = pg.bin.join("createdb");
        let out = command_as(&psql_free, user)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "hush",
                "hush",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// (Re)starts the server on the same port and data; waits until it accepts connections.
    /// After a kill, the old server's backends may hold the data directory for a moment: the
    /// start is retried for up to 20 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(child) => {
                    self.child = Some(child);
                    break;
                }
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        self.wait_ready();
    }

    fn spawn(&self) -> Result<Child, String> {
        let log = self.dir.join("postgres.log");
        let log_file = std::fs::File::create(&log).expect("postgres log");
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let mut child = command_as(&self.bin.join("postgres"), self.user)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                // No Unix socket: the scratch dir is enough, and /var/run may not be writable.
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn postgres");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        wait_listening(addr, &mut child, "postgres", &log)?;
        Ok(child)
    }

    fn wait_ready(&self) {
        // Listening is not yet accepting logins (startup recovery): wait for a real login.
        let deadline = Instant::now() + Duration::from_secs(30);
        let isready = self.bin.join("pg_isready");
        while isready.is_file() && Instant::now() < deadline {
            let ok = Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "hush",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once: SIGKILL to the postmaster and each of its backends (by
    /// process id, from `/proc`; they are session leaders, so no process group holds them), as a
    /// crash of the database machine would. The data stays for [`restart`](Self::restart)
    /// (which recovers from the write-ahead log).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            // The postmaster first, so that it starts no new backend.
            let _ = child.kill();
            let pids: Vec<&str> = children.split_whitespace().collect();
            if !pids.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(&pids)
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = child.wait();
            // SIGKILL is delivered asynchronously: wait until the backends are gone (one still
            // running could commit one more transaction).
            let deadline = Instant::now() + Duration::from_secs(10);
            for p in pids {
                while Instant::now() < deadline {
                    let state =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    // Gone, or a zombie (field 3 is the state).
                    if state
                        .split_whitespace()
                        .nth(2)
                        .is_none_or(|st| st == "Z" || st == "X")
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The postmaster's process id while it runs (its backends are its children), e.g. to
    /// read their CPU time in a benchmark.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The connection string for database `hush`.
    pub fn url(&self) -> String {
        format!("postgresql://hush@127.0.0.1:{}/hush", self.port)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway `nats-server` on a loopback port.
pub struct Nats {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server and waits until it listens.
    pub fn start() -> Self {
        let mut nats = Self {
            dir: crate::scratch("nats"),
            port: free_port(),
            child: None,
        };
        nats.restart();
        nats
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let bin = nats_bin().expect("nats-server");
        let log = self.dir.join("nats.log");
        let log_file = std::fs::File::create(&log).expect("nats log");
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn nats-server");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        if let Err(e) = wait_listening(addr, &mut child, "nats-server", &log) {
            panic!("{e}");
        }
        self.child = Some(child);
    }

    /// Stops the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
