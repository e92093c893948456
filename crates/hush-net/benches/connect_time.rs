//! Time from the first candidate to a selected pair, on loopback (host path) and through a
//! real coturn (relay path), median of N runs.
//!
//! Run: `cargo bench -p hush-net --bench connect_time` (needs `turnserver` for the relay rows,
//! and `openssl` for the TURN-over-TLS row; `HUSH_NET_BENCH_RUNS` sets N, default 30).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use hush_net::driver::{self, Bind};
use hush_net::{CandidateKind, Config, Event, Policy, Role, TlsRoots, TurnCredentials, TurnServer};

/// One connection attempt; returns the time from the first candidate handed to a peer until
/// both peers report a selected path, the time from creating the connections (gathering
/// included) to the same point, and the path kind.
async fn connect_once(make: impl Fn() -> Config) -> (Duration, Duration, CandidateKind) {
    let start = Instant::now();
    let bind = Bind::Addresses(vec!["127.0.0.1".parse().unwrap()]);
    let mut a = driver::start(make(), Role::Controlling, bind.clone())
        .await
        .unwrap();
    let mut b = driver::start(make(), Role::Controlled, bind).await.unwrap();
    a.handle
        .set_remote_credentials(b.credentials.clone())
        .await
        .unwrap();
    b.handle
        .set_remote_credentials(a.credentials.clone())
        .await
        .unwrap();
    let mut first: Option<Instant> = None;
    let (mut done_a, mut done_b) = (None, None);
    let mut kind = CandidateKind::Host;
    while done_a.is_none() || done_b.is_none() {
        tokio::select! {
            ev = a.events.recv() => match ev.unwrap() {
                Event::LocalCandidate(c) => {
                    first.get_or_insert_with(Instant::now);
                    b.handle.add_remote_candidate(c).await.unwrap();
                }
                Event::PathSelected(p) => { kind = p.kind; done_a = Some(Instant::now()); }
                _ => {}
            },
            ev = b.events.recv() => match ev.unwrap() {
                Event::LocalCandidate(c) => {
                    first.get_or_insert_with(Instant::now);
                    a.handle.add_remote_candidate(c).await.unwrap();
                }
                Event::PathSelected(_) => { done_b = Some(Instant::now()); }
                _ => {}
            },
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("no path within 10 s"),
        }
    }
    let end = done_a.max(done_b).unwrap();
    let _ = a.handle.close().await;
    let _ = b.handle.close().await;
    (end - first.unwrap(), end - start, kind)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
    println!(
        "{name:<34} n={n:<3} median={:>8.2} ms  min={:>8.2} ms  max={:>8.2} ms",
        median(v).as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::var("HUSH_NET_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut host, mut host_total) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (d, t, k) =
                connect_once(|| Config::builder().include_loopback(true).build().unwrap()).await;
            assert_eq!(k, CandidateKind::Host);
            host.push(d);
            host_total.push(t);
        }
        report("hush-net host: candidate->pair", host);
        report("hush-net host: start->pair", host_total);

        if !common::coturn_present() {
            println!("hush-net relay (coturn)             NOT RUN: turnserver missing");
            return;
        }
        let tls = hush_testkit::coturn::coturn_tls_present();
        let turn = common::Coturn::builder(common::Auth::long_term())
            .tcp(true)
            .tls(tls)
            .start();
        let creds = || TurnCredentials::long_term("alice", "wonderland");
        let mut servers = vec![
            ("udp", TurnServer::udp(turn.udp_addr(), creds())),
            (
                "tcp",
                TurnServer::tcp(turn.tcp_addr().expect("tcp listener"), creds()),
            ),
        ];
        if let Some(addr) = turn.tls_addr() {
            servers.push((
                "tls",
                TurnServer::tls(addr, hush_testkit::coturn::TLS_SERVER_NAME, creds()),
            ));
        } else {
            println!("hush-net relay over TLS             NOT RUN: openssl missing");
        }
        let roots = TlsRoots::Custom(
            turn.tls_cert_der()
                .map(<[u8]>::to_vec)
                .into_iter()
                .collect(),
        );
        for (name, server) in servers {
            let (mut relay, mut relay_total) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let (d, t, k) = connect_once(|| {
                    let mut b = Config::builder()
                        .policy(Policy::RelayOnly)
                        .turn(server.clone());
                    if name == "tls" {
                        b = b.turn_tls_roots(roots.clone());
                    }
                    b.build().unwrap()
                })
                .await;
                assert_eq!(k, CandidateKind::Relay);
                relay.push(d);
                relay_total.push(t);
            }
            report(&format!("hush-net relay/{name}: candidate->pair"), relay);
            report(&format!("hush-net relay/{name}: start->pair"), relay_total);
        }
    });
}
