//! `hush-sfu` command line: `hush-sfu --media 127.0.0.1:0 --signal 127.0.0.1:0 --key-file sfu.key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use hush_sfu::join::SfuSigningKey;
use hush_sfu::server::{Server, ServerConfig};

const USAGE: &str = "usage: hush-sfu --media ADDR:PORT --signal ADDR:PORT --key-file PATH [options]

  --media ADDR:PORT       UDP address for the media of all participants (ICE-lite)
  --signal ADDR:PORT      TCP address of the signaling channel (joins, roster updates)
  --key-file PATH         the SFU's ed25519 seed (32 bytes, hex); created if missing
  --announce ADDR:PORT    media address given to clients (default: the bound one)
  --max-participants N    per call (default 32)
  --loudest-n N|all       audio forwarded from the N loudest only (default 3)
  --leg-timeout-s S       drop a leg with no check and no media for S seconds (default 30)
  --max-connections N     signaling connections open at once (default 4096)
  --metrics ADDR:PORT     serve Prometheus metrics at http://ADDR:PORT/metrics

Prints the SFU public key (hex) and the bound addresses on stdout, one per line.
Logs to stderr; HUSH_SFU_LOG=error|warn|info|debug|trace.";

struct Args {
    config: ServerConfig,
    key_file: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut media = None;
    let mut signal = None;
    let mut key_file = None;
    let mut announce = None;
    let mut max_participants = None;
    let mut loudest_n = None;
    let mut leg_timeout = None;
    let mut max_connections = None;
    let mut metrics = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let addr = |v: String| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("bad address {v}: {e}"))
        };
        match flag.as_str() {
            "--media" => media = Some(addr(value()?)?),
            "--signal" => signal = Some(addr(value()?)?),
            "--announce" => announce = Some(addr(value()?)?),
            "--metrics" => metrics = Some(addr(value()?)?),
            "--key-file" => key_file = Some(PathBuf::from(value()?)),
            "--max-participants" => {
                max_participants = Some(
                    value()?
                        .parse::<usize>()
                        .map_err(|e| format!("--max-participants: {e}"))?,
                );
            }
            "--loudest-n" => {
                let v = value()?;
                loudest_n = Some(if v == "all" {
                    None
                } else {
                    Some(
                        v.parse::<usize>()
                            .map_err(|e| format!("--loudest-n: {e}"))?,
                    )
                });
            }
            "--leg-timeout-s" => {
                let secs = value()?
                    .parse::<u64>()
                    .map_err(|e| format!("--leg-timeout-s: {e}"))?;
                leg_timeout = Some(std::time::Duration::from_secs(secs.max(1)));
            }
            "--max-connections" => {
                max_connections = Some(
                    value()?
                        .parse::<usize>()
                        .map_err(|e| format!("--max-connections: {e}"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let mut config = ServerConfig::new(
        media.ok_or("--media is required")?,
        signal.ok_or("--signal is required")?,
    );
    config.announce = announce;
    config.metrics = metrics;
    if let Some(n) = max_participants {
        config.sfu.max_participants = n;
    }
    if let Some(n) = loudest_n {
        config.sfu.loudest_n = n;
    }
    if let Some(t) = leg_timeout {
        config.leg_timeout = t;
    }
    if let Some(n) = max_connections {
        config.max_connections = n;
    }
    Ok(Args {
        config,
        key_file: key_file.ok_or("--key-file is required")?,
    })
}

fn load_or_create_key(path: &PathBuf) -> Result<SfuSigningKey, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = zeroize::Zeroizing::new(
                hex::decode(text.trim()).map_err(|e| format!("{}: {e}", path.display()))?,
            );
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| format!("{}: expected 32 bytes of hex", path.display()))?;
            Ok(SfuSigningKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SfuSigningKey::generate(&mut rand::rng());
            let text = zeroize::Zeroizing::new(hex::encode(key.to_seed().as_slice()));
            write_private(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(unix)]
fn write_private(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("hush-sfu: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let level = match std::env::var("HUSH_SFU_LOG").as_deref() {
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
    let key = match load_or_create_key(&args.key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hush-sfu: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One core's worth of forwarding: the main task is single-threaded by design.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hush-sfu: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::start(args.config, key).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hush-sfu: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("key {}", hex::encode(server.public_key().to_bytes()));
        println!("media {}", server.media_addr());
        println!("signal {}", server.signal_addr());
        if let Some(m) = server.metrics_addr() {
            println!("metrics {m}");
        }
        let _ = tokio::signal::ctrl_c().await;
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
