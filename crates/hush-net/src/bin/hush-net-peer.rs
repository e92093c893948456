//! `hush-net-peer`: a line-driven hush-net endpoint for tests and manual experiments.
//!
//! It runs one ICE connection with the tokio driver and talks over stdin/stdout, so a test can
//! run two of them in different network namespaces (`ip netns exec`) and relay the signaling.
//!
//! Arguments: `--role controlling|controlled`, `--policy p2p|relay`, `--turn IP:PORT`,
//! `--user NAME --pass PASSWORD` (long-term) or `--rest-secret SECRET --user NAME` (TURN REST),
//! `--stun IP:PORT`, `--loopback`, `--consent-ms N`.
//!
//! stdout lines: `CRED <ufrag> <pwd>`, `CAND <candidate>`, `PATH <kind> <local> <remote>`,
//! `STATE <state>`, `RECV <hex>`, `RESTARTED <ufrag> <pwd>`, `ERROR <text>`, `GATHERED`.
//! stdin lines: `CRED <ufrag> <pwd>`, `CAND <candidate>`, `SEND <hex>`, `RESTART`, `QUIT`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hush_net::driver::{self, Bind};
use hush_net::{Config, Event, IceCredentials, Policy, Role, TurnCredentials};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

struct Args {
    role: Role,
    policy: Policy,
    turn: Option<SocketAddr>,
    stun: Option<SocketAddr>,
    user: String,
    pass: Option<String>,
    rest_secret: Option<String>,
    loopback: bool,
    consent: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        role: Role::Controlling,
        policy: Policy::P2pFirst,
        turn: None,
        stun: None,
        user: String::new(),
        pass: None,
        rest_secret: None,
        loopback: false,
        consent: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--role" => {
                a.role = match val()?.as_str() {
                    "controlled" => Role::Controlled,
                    _ => Role::Controlling,
                }
            }
            "--policy" => {
                a.policy = match val()?.as_str() {
                    "relay" => Policy::RelayOnly,
                    _ => Policy::P2pFirst,
                }
            }
            "--turn" => a.turn = Some(val()?.parse().map_err(|e| format!("--turn: {e}"))?),
            "--stun" => a.stun = Some(val()?.parse().map_err(|e| format!("--stun: {e}"))?),
            "--user" => a.user = val()?,
            "--pass" => a.pass = Some(val()?),
            "--rest-secret" => a.rest_secret = Some(val()?),
            "--consent-ms" => {
                a.consent = Duration::from_millis(val()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--loopback" => a.loopback = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            out(&format!("ERROR {e}"));
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out(&format!("ERROR runtime: {e}"));
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        out(&format!("ERROR {e}"));
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), hush_net::Error> {
    let mut b = Config::builder()
        .policy(args.policy)
        .include_loopback(args.loopback)
        .consent_timeout(args.consent)
        .keepalive_interval(args.consent / 4)
        .failed_timeout(Duration::from_secs(10));
    if let Some(stun) = args.stun {
        b = b.stun_server(stun);
    }
    if let Some(turn) = args.turn {
        let creds = match (&args.rest_secret, &args.pass) {
            (Some(secret), _) => TurnCredentials::rest(
                secret.as_bytes(),
                &args.user,
                SystemTime::now() + Duration::from_secs(3600),
            ),
            (None, Some(pass)) => TurnCredentials::long_term(args.user.clone(), pass.clone()),
            (None, None) => TurnCredentials::long_term(args.user.clone(), ""),
        };
        b = b.turn_server(turn, creds);
    }
    let config = b.build()?;
    let started = driver::start(config, args.role, Bind::Interfaces).await?;
    let driver::Started {
        handle,
        mut events,
        mut datagrams,
        credentials,
    } = started;
    out(&format!("CRED {} {}", credentials.ufrag, credentials.pwd));

    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match cmd {
                    "CRED" => {
                        let (u, p) = rest.split_once(' ').unwrap_or((rest, ""));
                        if let Err(e) = handle.set_remote_credentials(IceCredentials::new(u, p)).await {
                            out(&format!("ERROR {e}"));
                        }
                    }
                    "CAND" => {
                        if let Err(e) = handle.add_remote_candidate(rest).await {
                            out(&format!("ERROR {e}"));
                        }
                    }
                    "SEND" => match unhex(rest) {
                        Some(d) => { let _ = handle.send(d); }
                        None => out("ERROR bad hex"),
                    },
                    "RESTART" => match handle.restart().await {
                        Ok(_) => {} // reported through the Restarted event
                        Err(e) => out(&format!("ERROR {e}")),
                    },
                    "QUIT" => break,
                    _ => out(&format!("ERROR unknown command {cmd}")),
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::LocalCandidate(c) => out(&format!("CAND {c}")),
                    Event::GatheringComplete => out("GATHERED"),
                    Event::StateChanged(s) => out(&format!("STATE {s:?}")),
                    Event::PathSelected(p) => out(&format!("PATH {} {} {}", p.kind, p.local, p.remote)),
                    Event::Restarted { credentials } => {
                        out(&format!("RESTARTED {} {}", credentials.ufrag, credentials.pwd));
                    }
                    Event::ServerError(e) | Event::Failed(e) => out(&format!("ERROR {e}")),
                    _ => {}
                }
            }
            d = datagrams.recv() => {
                let Some(d) = d else { break };
                out(&format!("RECV {}", hex(&d)));
            }
        }
    }
    let _ = handle.close().await;
    Ok(())
}
