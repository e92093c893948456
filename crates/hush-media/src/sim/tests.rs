use super::*;

fn run(
    config: SimConfig,
    n: usize,
    gap: Duration,
    size: usize,
) -> (Vec<(Duration, Vec<u8>)>, SimStats) {
    let t0 = Instant::now();
    let mut sim = NetSim::new(config);
    let mut out = Vec::new();
    for i in 0..n {
        let send_at = t0 + gap * i as u32;
        // Deliver everything due before the next send.
        while let Some(at) = sim.poll_timeout().filter(|&at| at <= send_at) {
            sim.handle_timeout(at);
            while let Some(p) = sim.poll_transmit() {
                out.push((at - t0, p));
            }
        }
        let mut p = vec![0u8; size];
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        sim.handle_packet(send_at, p);
    }
    while let Some(at) = sim.poll_timeout() {
        sim.handle_timeout(at);
        while let Some(p) = sim.poll_transmit() {
            out.push((at - t0, p));
        }
    }
    (out, sim.stats())
}

fn index(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

#[test]
fn same_seed_same_outcome() {
    let c = SimConfig {
        loss: LossModel::Random(0.2),
        jitter: Jitter::Uniform(Duration::from_millis(30)),
        reorder: true,
        duplicate: 0.05,
        ..SimConfig::default()
    };
    let (a, sa) = run(c.clone(), 500, Duration::from_millis(20), 100);
    let (b, sb) = run(c.clone(), 500, Duration::from_millis(20), 100);
    assert_eq!(sa, sb);
    assert_eq!(a, b);
    let (c2, _) = run(
        SimConfig { seed: 2, ..c },
        500,
        Duration::from_millis(20),
        100,
    );
    assert_ne!(a, c2);
}

#[test]
fn random_loss_and_duplication_rates() {
    let c = SimConfig {
        loss: LossModel::Random(0.1),
        duplicate: 0.05,
        ..SimConfig::default()
    };
    let (_, s) = run(c, 20_000, Duration::from_millis(1), 50);
    let loss = s.lost as f64 / s.sent as f64;
    assert!((0.09..0.11).contains(&loss), "{loss}");
    assert!((800..1200).contains(&s.duplicated), "{}", s.duplicated);
    assert_eq!(s.delivered, s.sent - s.lost + s.duplicated);
}

#[test]
fn no_reorder_keeps_order_and_reorder_reorders() {
    let mut c = SimConfig {
        jitter: Jitter::Uniform(Duration::from_millis(50)),
        ..SimConfig::default()
    };
    let (a, _) = run(c.clone(), 300, Duration::from_millis(5), 20);
    assert!(a.windows(2).all(|w| index(&w[0].1) < index(&w[1].1)));
    c.reorder = true;
    let (b, _) = run(c, 300, Duration::from_millis(5), 20);
    assert!(b.windows(2).any(|w| index(&w[0].1) > index(&w[1].1)));
}

#[test]
fn delay_is_base_plus_jitter() {
    let c = SimConfig {
        delay: Duration::from_millis(40),
        jitter: Jitter::Uniform(Duration::from_millis(10)),
        reorder: true,
        ..SimConfig::default()
    };
    let t0 = Instant::now();
    let mut sim = NetSim::new(c);
    sim.handle_packet(t0, vec![1u8; 10]);
    let at = sim.poll_timeout().unwrap();
    assert!(at >= t0 + Duration::from_millis(40) && at <= t0 + Duration::from_millis(50));
    sim.handle_timeout(at - Duration::from_micros(1));
    assert!(sim.poll_transmit().is_none());
    sim.handle_timeout(at);
    assert!(sim.poll_transmit().is_some());
    assert!(sim.poll_timeout().is_none());
}

#[test]
fn rate_cap_paces_and_tail_drops() {
    // 100 kbps; 1000-byte packets take 80 ms each; queue holds 3 packets.
    let c = SimConfig {
        delay: Duration::ZERO,
        rate_bps: Some(100_000),
        queue_bytes: 3000,
        ..SimConfig::default()
    };
    let (out, s) = run(c, 10, Duration::ZERO, 1000);
    assert_eq!(s.queue_dropped, 7);
    assert_eq!(out.len(), 3);
    let t: Vec<u128> = out
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis())
        .collect();
    assert_eq!(t, vec![80, 80]);
}

#[test]
fn exponential_jitter_p95_matches_formula() {
    let mut rng = SimRng::new(3);
    let j = Jitter::Exponential(Duration::from_millis(10));
    let mut xs: Vec<Duration> = (0..20_000).map(|_| j.sample(&mut rng)).collect();
    xs.sort();
    let p95 = xs[19_000].as_secs_f64();
    assert!((p95 - j.p95().as_secs_f64()).abs() < 0.002, "{p95}");
}
