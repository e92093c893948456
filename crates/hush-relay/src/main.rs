//! `hush-relay` command line: `hush-relay --listen 127.0.0.1:7400 --db relay.db`, or as a
//! cluster node: `hush-relay --listen 0.0.0.0:7400 --postgres URL --nats URL --key relay.key`.
//!
//! Every flag can also come from an environment variable (`HUSH_RELAY_` and the flag's name in
//! upper case with `_`, shown by `--help`) or from a TOML file given with `--config` whose keys
//! are the flags' long names (`listen = "0.0.0.0:443"`, `max-queue = 2000`). A flag on the
//! command line wins over the environment, which wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, ValueEnum};
use hush_relay::{Relay, RelayConfig, SyncMode};

/// Default lifetime of handed-out TURN credentials: a day, so a call never outlives them
/// (coturn checks them again when an allocation is refreshed).
const DEFAULT_TURN_TTL_S: u64 = 86_400;

/// SQLite durability.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    /// fsync every commit: survives power loss.
    Full,
    /// Survives kill -9 but not power loss.
    Normal,
}

/// The hush signaling relay: authenticated, durable store-and-forward of sealed envelopes.
///
/// Logging: HUSH_RELAY_LOG=error|warn|info|debug|trace (default info).
#[derive(Debug, Parser)]
#[command(name = "hush-relay", version)]
struct Cli {
    /// TOML file with default values for these flags (keys are the long flag names).
    #[arg(long, env = "HUSH_RELAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address for client connections (TCP and WebSocket on the same port).
    #[arg(long, env = "HUSH_RELAY_LISTEN", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// SQLite database file (created if missing); not needed with --postgres.
    #[arg(
        long,
        env = "HUSH_RELAY_DB",
        value_name = "PATH",
        required_unless_present = "postgres"
    )]
    db: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, env = "HUSH_RELAY_METRICS", value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// SQLite durability.
    #[arg(long, env = "HUSH_RELAY_SYNC", value_enum, default_value = "full")]
    sync: Sync,
    /// Largest client frame in bytes [default: 65536].
    #[arg(long, env = "HUSH_RELAY_MAX_FRAME", value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Most simultaneous connections [default: 100000].
    #[arg(long, env = "HUSH_RELAY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<u64>,
    /// Simultaneous connections from one IP address (IPv6: one /64), authenticated or not
    /// [default: 1000; carrier-grade NAT puts many devices behind one address].
    #[arg(long, env = "HUSH_RELAY_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<u32>,
    /// An unauthenticated connection is closed this long after it was accepted, whatever it
    /// sent (TLS, WebSocket upgrade and challenge-response must all be done) [default: 10000].
    #[arg(long, env = "HUSH_RELAY_AUTH_TIMEOUT_MS", value_name = "MS")]
    auth_timeout_ms: Option<u64>,
    /// Requests per second per connection [default: 50].
    #[arg(long, env = "HUSH_RELAY_RATE", value_name = "N")]
    rate: Option<u32>,
    /// Request burst per connection [default: 200].
    #[arg(long, env = "HUSH_RELAY_BURST", value_name = "N")]
    burst: Option<u32>,
    /// Envelopes queued per device, all senders together [default: 1000].
    #[arg(long, env = "HUSH_RELAY_MAX_QUEUE", value_name = "N")]
    max_queue: Option<u32>,
    /// Envelopes one sender may have queued for one recipient; past it the sender gets
    /// SENDER_QUOTA_EXCEEDED and others still get through [default: 100].
    #[arg(long, env = "HUSH_RELAY_MAX_QUEUE_PER_SENDER", value_name = "N")]
    max_queue_per_sender: Option<u32>,
    /// Envelopes stamped longer ago are refused, and queued ones admitted longer ago are
    /// deleted unread [default: 300].
    #[arg(long, env = "HUSH_RELAY_MAX_ENVELOPE_AGE_S", value_name = "S")]
    max_envelope_age_s: Option<u64>,
    /// How often expired envelopes are deleted [default: 10000].
    #[arg(long, env = "HUSH_RELAY_SWEEP_INTERVAL_MS", value_name = "MS")]
    sweep_interval_ms: Option<u64>,
    /// A write to a client that takes longer closes the connection (a device that stops
    /// reading) [default: 30000].
    #[arg(long, env = "HUSH_RELAY_WRITE_TIMEOUT_MS", value_name = "MS")]
    write_timeout_ms: Option<u64>,
    /// An authenticated client that sends no frame for this long is disconnected; clients
    /// ping more often [default: 900].
    #[arg(long, env = "HUSH_RELAY_IDLE_TIMEOUT_S", value_name = "S")]
    idle_timeout_s: Option<u64>,
    /// One-time prekeys one device may take per minute; past it, fetches get the bundle
    /// without one [default: 30].
    #[arg(long, env = "HUSH_RELAY_PREKEY_FETCHES_PER_MINUTE", value_name = "N")]
    prekey_fetches_per_minute: Option<u32>,
    /// Live deliveries buffered per connection [default: 1024].
    #[arg(long, env = "HUSH_RELAY_DELIVERY_BUFFER", value_name = "N")]
    delivery_buffer: Option<usize>,
    /// How long an envelope pushed to its online recipient waits for the acknowledgement
    /// before it is written to SQLite; acknowledged ones are never written, ones for offline
    /// devices are written at once, and a sender is answered only once its envelope is
    /// committed or acknowledged [default: 20].
    #[arg(long, env = "HUSH_RELAY_COMMIT_DELAY_MS", value_name = "MS")]
    commit_delay_ms: Option<u64>,
    /// Tokio worker threads (1 runs connections on one thread, the database on another)
    /// [default: number of CPUs].
    #[arg(long, env = "HUSH_RELAY_WORKER_THREADS", value_name = "N")]
    worker_threads: Option<usize>,
    /// Serve TLS with this PEM certificate chain (build with --features tls): the production
    /// setting, devices bind their authentication to the TLS connection. Without it the
    /// listener is plaintext, for local use only.
    #[arg(
        long,
        env = "HUSH_RELAY_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// ... and this PEM private key.
    #[arg(
        long,
        env = "HUSH_RELAY_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The relay's ed25519 key file, created on first start [default: the --db path with .key
    /// appended]; devices may pin its public key, so keep it (cluster: the same file on every
    /// node).
    #[arg(long, env = "HUSH_RELAY_KEY", value_name = "PATH")]
    key: Option<PathBuf>,
    /// Run as a cluster node (build with --features cluster): the queue and prekey directory
    /// live in this PostgreSQL database (postgresql://relay@db.internal/hush) instead of --db.
    #[arg(
        long,
        env = "HUSH_RELAY_POSTGRES",
        value_name = "URL",
        requires = "nats"
    )]
    postgres: Option<String>,
    /// ... and nodes tell each other about new envelopes and connected devices over this NATS
    /// server (nats://host:4222).
    #[arg(
        long,
        env = "HUSH_RELAY_NATS",
        value_name = "URL",
        requires = "postgres"
    )]
    nats: Option<String>,
    /// Cluster node: writer tasks (each with its own PostgreSQL connection) that commit the
    /// envelopes queued by all connections in batches.
    #[arg(
        long,
        env = "HUSH_RELAY_PG_WRITERS",
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pg_writers: u16,
    /// Hand authenticated devices short-lived TURN credentials (TURN REST scheme): the file
    /// holds the secret shared with the TURN servers (coturn `use-auth-secret` with
    /// `static-auth-secret` set to the file's content, trailing newline removed).
    #[arg(
        long,
        env = "HUSH_RELAY_TURN_SECRET_FILE",
        value_name = "PATH",
        requires = "turn_url"
    )]
    turn_secret_file: Option<PathBuf>,
    /// TURN server URLs handed out with the credentials, comma-separated (turn:IP:PORT,
    /// turn:IP:PORT?transport=tcp, turns:IP:PORT).
    #[arg(
        long,
        env = "HUSH_RELAY_TURN_URL",
        value_name = "URL,...",
        value_delimiter = ',',
        requires = "turn_secret_file"
    )]
    turn_url: Vec<String>,
    /// This node's name: the `node` label on every metric [default: the listening address].
    #[arg(long, env = "HUSH_RELAY_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// Lifetime of the TURN credentials handed out, in seconds (1 to 604800) [default: 86400].
    #[arg(long, env = "HUSH_RELAY_TURN_TTL_S", value_name = "S")]
    turn_ttl_s: Option<u64>,
}

/// Why the command line could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
enum ArgsError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path}: unknown key {key:?}")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: key {key:?} must be a string, number or boolean")]
    BadValue { path: PathBuf, key: String },
    #[cfg_attr(not(feature = "tls"), allow(dead_code, reason = "TLS setup only"))]
    #[error(transparent)]
    Relay(#[from] hush_relay::RelayError),
    #[error("TURN secret file {path}: {source}")]
    TurnSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TURN: {0}")]
    Turn(#[from] hush_relay::TurnConfigError),
    #[cfg_attr(
        all(feature = "tls", feature = "cluster"),
        allow(dead_code, reason = "builds without a feature only")
    )]
    #[error("{0} needs a build with --features {1}")]
    Feature(&'static str, &'static str),
}

/// The command line with the config file's values (if any) put first, as flags, for those
/// options not set on the command line or in the environment.
fn args_with_config_file(
    args: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, ArgsError> {
    // Only `--config` matters here; everything else is checked by the real parse below.
    let first = Cli::command().ignore_errors(true).get_matches_from(&args);
    let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ArgsError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ArgsError::Toml {
        path: path.clone(),
        source,
    })?;
    let command = Cli::command();
    let mut from_file = Vec::new();
    for (key, value) in table {
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
        else {
            return Err(ArgsError::UnknownKey { path, key });
        };
        let set_on_command_line = first.value_source(arg.get_id().as_str())
            == Some(clap::parser::ValueSource::CommandLine);
        let set_in_env = arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some());
        if set_on_command_line || set_in_env {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(ArgsError::BadValue { path, key }),
        };
        from_file.push(format!("--{key}").into());
        from_file.push(value.into());
    }
    let mut out = Vec::with_capacity(args.len() + from_file.len());
    out.extend(args.iter().take(1).cloned());
    out.extend(from_file);
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

fn config(cli: Cli) -> Result<(RelayConfig, Option<usize>), ArgsError> {
    // A cluster node keeps no database file; only the key file defaults to a path beside it.
    let db = cli.db.unwrap_or_else(|| "hush-relay.db".into());
    let mut config = RelayConfig::new(cli.listen, db);
    config.metrics_listen = cli.metrics;
    config.sync = match cli.sync {
        Sync::Full => SyncMode::Full,
        Sync::Normal => SyncMode::Normal,
    };
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    macro_rules! set {
        ($field:ident = $value:expr) => {
            if let Some(v) = $value {
                config.$field = v;
            }
        };
    }
    set!(max_frame_len = cli.max_frame);
    set!(max_connections = cli.max_connections);
    set!(max_connections_per_ip = cli.max_connections_per_ip);
    set!(handshake_timeout = cli.auth_timeout_ms.map(ms));
    set!(rate_limit_per_sec = cli.rate);
    set!(rate_limit_burst = cli.burst);
    set!(max_queue_per_device = cli.max_queue);
    set!(max_queue_per_sender = cli.max_queue_per_sender);
    set!(max_envelope_age = cli.max_envelope_age_s.map(s));
    set!(sweep_interval = cli.sweep_interval_ms.map(ms));
    set!(write_timeout = cli.write_timeout_ms.map(ms));
    set!(idle_timeout = cli.idle_timeout_s.map(s));
    set!(prekey_fetches_per_minute = cli.prekey_fetches_per_minute);
    set!(delivery_buffer = cli.delivery_buffer);
    set!(commit_delay = cli.commit_delay_ms.map(ms));
    set!(key_path = cli.key);
    config.node_name = cli.node_name;
    if let Some(path) = cli.turn_secret_file {
        let mut secret = zeroize::Zeroizing::new(std::fs::read(&path).map_err(|source| {
            ArgsError::TurnSecret {
                path: path.clone(),
                source,
            }
        })?);
        while secret.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            secret.pop();
        }
        let ttl = s(cli.turn_ttl_s.unwrap_or(DEFAULT_TURN_TTL_S));
        config.turn = Some(hush_relay::TurnConfig::new(
            secret.to_vec(),
            cli.turn_url,
            ttl,
        )?);
    }
    if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
        #[cfg(feature = "tls")]
        {
            config.tls = Some(hush_relay::load_tls_config(&cert, &key)?);
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (cert, key);
            return Err(ArgsError::Feature("--tls-cert", "tls"));
        }
    }
    if let (Some(postgres), Some(nats)) = (cli.postgres, cli.nats) {
        #[cfg(feature = "cluster")]
        {
            let mut cluster = hush_relay::ClusterConfig::new(postgres, nats);
            cluster.writers = usize::from(cli.pg_writers);
            config.cluster = Some(cluster);
        }
        #[cfg(not(feature = "cluster"))]
        {
            let _ = (postgres, nats, cli.pg_writers);
            return Err(ArgsError::Feature("--postgres", "cluster"));
        }
    }
    Ok((config, cli.worker_threads))
}

fn main() -> ExitCode {
    let parsed = args_with_config_file(std::env::args_os().collect()).and_then(|args| {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| e.exit());
        config(cli)
    });
    let (config, threads) = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hush-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match std::env::var("HUSH_RELAY_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    // One worker: a current-thread runtime (no work-stealing machinery; the store has its own
    // thread either way).
    let mut rt = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all();
    if let Some(n) = threads.filter(|&n| n > 1) {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hush-relay: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let relay = Relay::bind(config).await?;
        // Printed on stdout so scripts and tests can find the ports when they asked for :0.
        println!("listening {}", relay.local_addr());
        if let Some(m) = relay.metrics_addr() {
            println!("metrics {m}");
        }
        relay.serve().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hush-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, ArgsError> {
        let args = args.iter().map(Into::into).collect();
        let args = args_with_config_file(args)?;
        Ok(Cli::try_parse_from(args).expect("valid flags"))
    }

    #[test]
    fn config_file_gives_defaults_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("hush-relay-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7400\"\ndb = \"from-file.db\"\nmax-queue = 7\nrate = 9\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let cli = parse(&["hush-relay", "--config", f, "--rate", "11"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(cli.db, Some(PathBuf::from("from-file.db")));
        assert_eq!(cli.max_queue, Some(7));
        assert_eq!(cli.rate, Some(11), "the command line wins over the file");
        let (config, _) = config(cli).unwrap();
        assert_eq!(config.max_queue_per_device, 7);
        assert_eq!(config.rate_limit_per_sec, 11);

        std::fs::write(&file, "listen = \"127.0.0.1:7400\"\nmax-qeue = 7\n").unwrap();
        assert!(matches!(
            parse(&["hush-relay", "--config", f, "--db", "x.db"]),
            Err(ArgsError::UnknownKey { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn turn_flags_make_a_turn_config() {
        let dir = std::env::temp_dir().join(format!("hush-relay-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("turn.secret");
        std::fs::write(&secret, "sekrit\n").unwrap();
        let s = secret.to_str().unwrap();
        let base = ["hush-relay", "--listen", "127.0.0.1:7400", "--db", "x.db"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            parse(&a).and_then(config)
        };
        let (c, _) = with(&[
            "--turn-secret-file",
            s,
            "--turn-url",
            "turn:192.0.2.1:3478,turns:192.0.2.1:5349",
            "--turn-ttl-s",
            "600",
        ])
        .unwrap();
        let turn = c.turn.expect("TURN configured");
        assert_eq!(turn.urls(), ["turn:192.0.2.1:3478", "turns:192.0.2.1:5349"]);
        assert_eq!(turn.ttl(), Duration::from_secs(600));
        assert!(matches!(
            with(&["--turn-secret-file", s, "--turn-url", "stun:192.0.2.1"]),
            Err(ArgsError::Turn(_))
        ));
        assert!(matches!(
            with(&[
                "--turn-secret-file",
                "/nonexistent/x",
                "--turn-url",
                "turn:192.0.2.1"
            ]),
            Err(ArgsError::TurnSecret { .. })
        ));
        let (c, _) = with(&[]).unwrap();
        assert!(c.turn.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_flag_has_an_environment_variable_and_help() {
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(
                env,
                format!("HUSH_RELAY_{}", long.to_uppercase().replace('-', "_")),
                "--{long}"
            );
            assert!(arg.get_help().is_some(), "--{long} has help");
        }
        Cli::command().debug_assert();
    }
}
