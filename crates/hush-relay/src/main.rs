//! `hush-relay` command line: `hush-relay --listen 127.0.0.1:7400 --db relay.db`, or as a
//! cluster node: `hush-relay --listen 0.0.0.0:7400 --postgres URL --nats URL --key relay.key`.

use std::process::ExitCode;

use hush_relay::{Relay, RelayConfig, SyncMode};

const USAGE: &str = "usage: hush-relay --listen ADDR:PORT --db PATH [options]

options:
  --metrics ADDR:PORT     serve Prometheus metrics at http://ADDR:PORT/metrics
  --sync full|normal      SQLite durability (default full: fsync every commit;
                          normal survives kill -9 but not power loss)
  --max-frame BYTES       largest client frame (default 65536)
  --max-connections N     (default 100000)
  --max-connections-per-ip N
                          simultaneous connections from one IP address, authenticated
                          or not (default 1000; carrier-grade NAT puts many devices
                          behind one address)
  --auth-timeout-ms MS    an unauthenticated connection is closed this long after it
                          was accepted, whatever it sent (TLS, WebSocket upgrade and
                          challenge-response must all be done by then; default 10000)
  --rate N                requests per second per connection (default 50)
  --burst N               request burst per connection (default 200)
  --max-queue N           envelopes queued per device, all senders together
                          (default 1000)
  --max-queue-per-sender N
                          envelopes one sender may have queued for one recipient
                          (default 100; past it the sender gets
                          SENDER_QUOTA_EXCEEDED, others still get through)
  --max-envelope-age-s S  envelopes stamped longer ago are refused, and queued ones
                          admitted longer ago are deleted unread (default 300)
  --sweep-interval-ms MS  how often expired envelopes are deleted (default 10000)
  --write-timeout-ms MS   a write to a client that takes longer closes the
                          connection (a device that stops reading; default 30000)
  --idle-timeout-s S      an authenticated client that sends no frame for this long
                          is disconnected (default 900; clients ping more often)
  --prekey-fetches-per-minute N
                          one-time prekeys one device may take per minute; past it,
                          fetches get the bundle without one (default 30)
  --delivery-buffer N     live deliveries buffered per connection (default 1024)
  --commit-delay-ms MS    how long an envelope pushed to its online recipient waits
                          for the acknowledgement before it is written to the
                          database (default 20); acknowledged ones are never
                          written, ones for offline devices are written at once,
                          and a sender is answered only once its envelope is
                          committed or acknowledged
  --worker-threads N      tokio worker threads (default: number of CPUs; 1 runs
                          connections on one thread, with the database on another)
  --tls-cert PATH         serve TLS with this PEM certificate chain (build with --features tls):
                          the production setting; devices bind their authentication to
                          the TLS connection. Without it the listener is plaintext, for
                          local use only (it says so in a warning at startup)
  --tls-key PATH          ... and this PEM private key
  --key PATH              the relay's ed25519 key file, created on first start (default:
                          the --db path with .key appended); its public key is in every
                          challenge and devices may pin it: keep it with the database
                          (cluster: give every node a copy of the same key file)
  --postgres URL          run as a cluster node (build with --features cluster): the
                          queue and prekey directory live in this PostgreSQL database
                          (e.g. postgresql://relay@db.internal/hush) instead of --db
  --nats URL              ... and nodes tell each other about new envelopes and
                          connected devices over this NATS server (nats://host:4222)

logging: HUSH_RELAY_LOG=error|warn|info|debug|trace (default info)";

fn parse() -> Result<(RelayConfig, Option<usize>), String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut db = None;
    let mut rest = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--db" => db = Some(value.into()),
            _ => rest.push((flag, value)),
        }
    }
    let clustered = rest.iter().any(|(f, _)| f == "--postgres" || f == "--nats");
    // A cluster node keeps no database file; only the key file defaults to a path beside it.
    let db = db.or_else(|| clustered.then(|| "hush-relay.db".into()));
    let (Some(listen), Some(db)) = (listen, db) else {
        return Err("--listen and --db (or --postgres and --nats) are required".into());
    };
    let mut config = RelayConfig::new(listen, db);
    let mut threads = None;
    let mut tls_cert: Option<std::path::PathBuf> = None;
    let mut tls_key: Option<std::path::PathBuf> = None;
    let mut postgres: Option<String> = None;
    let mut nats: Option<String> = None;
    for (flag, value) in rest {
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--metrics" => {
                config.metrics_listen = Some(value.parse().map_err(|e| format!("--metrics: {e}"))?)
            }
            "--sync" => {
                config.sync = match value.as_str() {
                    "full" => SyncMode::Full,
                    "normal" => SyncMode::Normal,
                    _ => return Err("--sync must be full or normal".into()),
                }
            }
            "--max-frame" => config.max_frame_len = num(&value)? as usize,
            "--max-connections" => config.max_connections = num(&value)?,
            "--max-connections-per-ip" => config.max_connections_per_ip = num(&value)? as u32,
            "--auth-timeout-ms" => {
                config.handshake_timeout = std::time::Duration::from_millis(num(&value)?)
            }
            "--rate" => config.rate_limit_per_sec = num(&value)? as u32,
            "--burst" => config.rate_limit_burst = num(&value)? as u32,
            "--max-queue" => config.max_queue_per_device = num(&value)? as u32,
            "--max-queue-per-sender" => config.max_queue_per_sender = num(&value)? as u32,
            "--max-envelope-age-s" => {
                config.max_envelope_age = std::time::Duration::from_secs(num(&value)?)
            }
            "--sweep-interval-ms" => {
                config.sweep_interval = std::time::Duration::from_millis(num(&value)?)
            }
            "--write-timeout-ms" => {
                config.write_timeout = std::time::Duration::from_millis(num(&value)?)
            }
            "--idle-timeout-s" => {
                config.idle_timeout = std::time::Duration::from_secs(num(&value)?)
            }
            "--prekey-fetches-per-minute" => config.prekey_fetches_per_minute = num(&value)? as u32,
            "--delivery-buffer" => config.delivery_buffer = num(&value)? as usize,
            "--commit-delay-ms" => {
                config.commit_delay = std::time::Duration::from_millis(num(&value)?)
            }
            "--worker-threads" => threads = Some(num(&value)? as usize),
            "--tls-cert" => tls_cert = Some(value.into()),
            "--tls-key" => tls_key = Some(value.into()),
            "--key" => config.key_path = value.into(),
            "--postgres" => postgres = Some(value),
            "--nats" => nats = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    match (tls_cert, tls_key) {
        (None, None) => {}
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            config.tls = Some(hush_relay::load_tls_config(&cert, &key).map_err(|e| e.to_string())?)
        }
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => {
            return Err("this build has no TLS support (build with --features tls)".into())
        }
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    match (postgres, nats) {
        (None, None) => {}
        #[cfg(feature = "cluster")]
        (Some(postgres), Some(nats)) => {
            config.cluster = Some(hush_relay::ClusterConfig::new(postgres, nats));
        }
        #[cfg(not(feature = "cluster"))]
        (Some(_), Some(_)) => {
            return Err("this build has no cluster support (build with --features cluster)".into())
        }
        _ => return Err("--postgres and --nats go together".into()),
    }
    Ok((config, threads))
}

fn main() -> ExitCode {
    let (config, threads) = match parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("hush-relay: {e}");
            }
            eprintln!("{USAGE}");
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
