//! Measures the media engine on the deterministic simulator and prints the figures that
//! docs/benchmarks.md records.
//!
//! Run: `cargo run --release -p hush-media --example media_sim`

use std::time::{Duration, Instant};

use hush_media::sim::{CallConfig, CallSim, Jitter, LossModel, SimConfig};
use hush_media::{MediaSession, SessionConfig};

fn link(seed: u64, one_way_ms: u64, loss: LossModel) -> SimConfig {
    SimConfig {
        seed,
        delay: Duration::from_millis(one_way_ms),
        loss,
        ..SimConfig::default()
    }
}

fn loss_run(name: &str, loss: LossModel, seeds: &[u64]) {
    let mut total = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for &seed in seeds {
        let config = CallConfig {
            a_to_b: link(seed, 20, loss),
            b_to_a: link(seed + 1000, 20, loss),
            ..CallConfig::default()
        };
        let mut call = CallSim::new(config, Instant::now());
        call.run_until(Duration::from_secs(120));
        let m = call.metrics();
        total.0 += m.played_original;
        total.1 += m.played_rtx;
        total.2 += m.played_red;
        total.3 += m.fec;
        total.4 += m.concealed;
        total.5 += call.b.stats(call.now()).packets_lost;
    }
    let (orig, rtx, red, fec, conc, lost) = total;
    let due = orig + rtx + red + fec + conc;
    println!(
        "| {name} | {:.2} % | {:.2} % | {rtx} / {red} / {fec} | {conc} | {:.2} % |",
        100.0 * lost as f64 / due as f64,
        100.0 * (orig + rtx + red) as f64 / due as f64,
        100.0 * conc as f64 / due as f64,
    );
}

/// 10 % random loss with real Opus in the loop (A encodes a synthetic voice following the
/// engine's encoder targets, B decodes what the jitter buffer plays out).
fn opus_run(name: &str, red: bool, nack: bool, seeds: &[u64]) {
    let mut t = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for &seed in seeds {
        let loss = LossModel::Random(0.10);
        let mut config = CallConfig {
            a_to_b: link(seed, 20, loss),
            b_to_a: link(seed + 1000, 20, loss),
            opus: true,
            ..CallConfig::default()
        };
        if !red {
            config.session.red_pt = None;
        }
        if !nack {
            config.session.audio_nack_max_rtt = Duration::ZERO;
        }
        let mut call = CallSim::new(config, Instant::now());
        call.run_until(Duration::from_secs(120));
        let m = call.metrics();
        t.0 += m.played_original;
        t.1 += m.played_rtx;
        t.2 += m.played_red;
        t.3 += m.fec;
        t.4 += m.fec_decoded;
        t.5 += m.concealed;
        t.6 += m.opus_decoded;
        t.7 += m.decode_errors;
    }
    let (orig, rtx, red_n, fec, fec_dec, conc, decoded, errors) = t;
    let due = orig + rtx + red_n + fec + conc;
    println!(
        "| {name} | {:.2} % | {rtx} / {red_n} | {fec} ({fec_dec} from LBRR) | {:.2} % | {:.2} % | {decoded} | {errors} |",
        100.0 * (orig + rtx + red_n) as f64 / due as f64,
        100.0 * (orig + rtx + red_n + fec_dec) as f64 / due as f64,
        100.0 * (conc + fec - fec_dec) as f64 / due as f64,
    );
}

fn opus_table() {
    println!("\n### Opus in the loop (10 % random loss both ways, 40 ms RTT, 5 seeds × 120 s)\n");
    println!("| recovery | played without concealment | recovered rtx / red | FEC frames | played or rebuilt from FEC | concealed by the decoder | Opus frames decoded | decode errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let seeds = [1, 2, 3, 4, 5];
    opus_run("RED + NACK/RTX + FEC (default)", true, true, &seeds);
    opus_run("FEC + NACK/RTX (RED off)", false, true, &seeds);
    opus_run("FEC only (RED and NACK off)", false, false, &seeds);
}

fn jitter_run(jitter: Jitter, reorder: bool) {
    let config = CallConfig {
        a_to_b: SimConfig {
            seed: 5,
            delay: Duration::from_millis(30),
            jitter,
            reorder,
            ..SimConfig::default()
        },
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    call.run_until(Duration::from_secs(120));
    let m = call.metrics();
    let p95 = jitter.p95().as_secs_f64() * 1000.0;
    let mean = m.added_delay_mean() * 1000.0;
    println!(
        "| {jitter:?}, reorder {reorder} | {p95:.1} ms | {mean:.1} ms ({:.2} ×) | {:.1} ms | {:.2} % |",
        mean / p95,
        m.added_delay_quantile(0.95) * 1000.0,
        100.0 * m.played_fraction()
    );
}

/// One call with video whose A→B cap follows `steps` (from time in s, bps) until `end` s;
/// prints one table row per step.
fn bandwidth_steps(steps: &[(u64, u64)], end: u64, one_way_ms: u64, queue_bytes: usize) {
    bandwidth_steps_on(
        steps,
        end,
        one_way_ms,
        queue_bytes,
        LossModel::None,
        Jitter::None,
    );
}

/// [`bandwidth_steps`] with loss and jitter on the capped link as well.
fn bandwidth_steps_on(
    steps: &[(u64, u64)],
    end: u64,
    one_way_ms: u64,
    queue_bytes: usize,
    loss: LossModel,
    jitter: Jitter,
) {
    let base = Duration::from_millis(one_way_ms);
    let cap = |bps| SimConfig {
        seed: 9,
        delay: base,
        rate_bps: Some(bps),
        queue_bytes,
        loss,
        jitter,
        ..SimConfig::default()
    };
    let config = CallConfig {
        a_to_b: cap(steps[0].1),
        b_to_a: SimConfig {
            seed: 10,
            delay: base,
            ..SimConfig::default()
        },
        video: true,
        ..CallConfig::default()
    };
    let mut call = CallSim::new(config, Instant::now());
    for w in steps.windows(2) {
        call.run_until(Duration::from_secs(w[1].0));
        call.ab.set_rate(Some(w[1].1));
    }
    call.run_until(Duration::from_secs(end));
    let tl = &call.metrics().timeline;
    // Queueing allowed: the issue's "one-way delay under 100 ms" on its 20 ms path (plus the
    // link's own jitter, which is not queueing).
    let limit = base + Duration::from_millis(80) + jitter.p95();
    for (k, &(step_at, cap_bps)) in steps.iter().enumerate() {
        let from = Duration::from_secs(step_at);
        let to = Duration::from_secs(steps.get(k + 1).map_or(end, |s| s.0));
        let within = |t: Duration| t >= from && t < to;
        let close = |s: &(Duration, u64, Duration, u32)| {
            (s.1 as f64 - cap_bps as f64).abs() <= 0.2 * cap_bps as f64
        };
        let window: Vec<_> = tl.iter().filter(|s| within(s.0)).collect();
        // From when on the target stays within 20 % of the cap (until the next step).
        let est_ok = window
            .iter()
            .rposition(|s| !close(s))
            .map_or(Some(0.0), |i| {
                window.get(i + 1).map(|s| (s.0 - from).as_secs_f64())
            });
        // From when on the one-way delay stays under the limit.
        let delay_ok = window
            .iter()
            .rposition(|s| s.2 >= limit)
            .map_or(Some(0.0), |i| {
                window.get(i + 1).map(|s| (s.0 - from).as_secs_f64())
            });
        let last = window
            .iter()
            .filter(|s| s.0 >= from + Duration::from_secs(5))
            .collect::<Vec<_>>();
        let (min, max) = last
            .iter()
            .fold((u64::MAX, 0), |(a, b), s| (a.min(s.1), b.max(s.1)));
        let max_owd = last.iter().map(|s| s.2).max().unwrap_or_default();
        let peak_owd = window.iter().map(|s| s.2).max().unwrap_or_default();
        println!(
            "| {step_at} s → {} kbps | {} | {} | {} ms | {}–{} kbps | {} ms |",
            cap_bps / 1000,
            est_ok.map_or("never".into(), |t| format!("{t:.1} s")),
            delay_ok.map_or("never".into(), |t| format!("{t:.1} s")),
            peak_owd.as_millis(),
            min / 1000,
            max / 1000,
            max_owd.as_millis()
        );
    }
    if std::env::var_os("HUSH_TIMELINE").is_some() {
        for s in tl {
            println!(
                "{:.1} {} {} {}",
                s.0.as_secs_f64(),
                s.1,
                s.2.as_millis(),
                s.3
            );
        }
    }
}

fn bandwidth_table() {
    let head = |title: &str| {
        println!("\n### {title}\n");
        println!("| step | target within 20 % of cap from | one-way delay < base + 80 ms from | peak one-way delay | target range from 5 s on | max one-way delay from 5 s on |");
        println!("|---|---|---|---|---|---|");
    };
    head("Bandwidth steps (A→B cap 1 Mbps → 150 kbps at 20 s → 1 Mbps at 40 s; 20 ms one way; 100 kB queue; audio + video)");
    bandwidth_steps(
        &[(0, 1_000_000), (20, 150_000), (40, 1_000_000)],
        60,
        20,
        100_000,
    );
    head("Bandwidth steps, shallow queue (same, 15 kB queue: the drop overflows it)");
    bandwidth_steps(
        &[(0, 1_000_000), (20, 150_000), (40, 1_000_000)],
        60,
        20,
        15_000,
    );
    head("Bandwidth steps, longer path (600 → 200 → 800 kbps; 50 ms one way; 100 kB queue)");
    bandwidth_steps(
        &[(0, 600_000), (15, 200_000), (35, 800_000)],
        55,
        50,
        100_000,
    );
    let issue = [(0, 1_000_000), (20, 150_000), (40, 1_000_000)];
    head("Bandwidth steps with 2 % random loss on the capped link (not a target)");
    bandwidth_steps_on(
        &issue,
        60,
        20,
        100_000,
        LossModel::Random(0.02),
        Jitter::None,
    );
    head("Bandwidth steps with 10 ms uniform jitter on the capped link (not a target; delay limit + jitter p95)");
    let j = Jitter::Uniform(Duration::from_millis(10));
    bandwidth_steps_on(&issue, 60, 20, 100_000, LossModel::None, j);
}

fn cpu_table() {
    println!("| run | cost | share of one core |");
    println!("|---|---|---|");
    cpu_per_call();
    cpu_engine_only();
}

fn cpu_per_call() {
    // One call, 50 audio packets/s each way, no codec; measures both engines plus the
    // simulator, so the figure is an upper bound for one side.
    let config = CallConfig {
        a_to_b: link(1, 20, LossModel::Random(0.02)),
        b_to_a: link(2, 20, LossModel::Random(0.02)),
        ..CallConfig::default()
    };
    let simulated = Duration::from_secs(600);
    let mut call = CallSim::new(config, Instant::now());
    let wall = Instant::now();
    call.run_until(simulated);
    let cpu = wall.elapsed();
    println!(
        "| two engines + simulator, 2 % loss | {:.1} s simulated in {:.1} ms | {:.4} % of one core (both sides) |",
        simulated.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0,
        100.0 * cpu.as_secs_f64() / simulated.as_secs_f64()
    );
}

/// Two sessions handing their datagrams straight to each other one 20 ms tick later (no
/// simulator, no codec), every 50th datagram dropped (2 %), on a virtual clock: the timed
/// loop is the engine's own work, both sides, for 50 audio packets/s each way.
fn cpu_engine_only() {
    let t0 = Instant::now();
    let config = SessionConfig::default();
    let mut a = MediaSession::new(config.mirrored(), t0);
    let mut b = MediaSession::new(config, t0);
    let frame = [0x5au8; 60];
    let ticks = 30_000u32; // 600 s
    let (mut to_a, mut to_b): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    let mut datagrams = 0u64;
    let mut events = 0u64;
    let wall = Instant::now();
    for i in 0..ticks {
        let now = t0 + Duration::from_millis(20) * i;
        for d in std::mem::take(&mut to_a) {
            let _ = a.handle_packet(now, &d);
        }
        for d in std::mem::take(&mut to_b) {
            let _ = b.handle_packet(now, &d);
        }
        a.send_audio(now, &frame, None);
        b.send_audio(now, &frame, None);
        a.handle_timeout(now);
        b.handle_timeout(now);
        for (s, out) in [(&mut a, &mut to_b), (&mut b, &mut to_a)] {
            while let Some(t) = s.poll_transmit() {
                datagrams += 1;
                if !datagrams.is_multiple_of(50) {
                    out.push(t.data);
                }
            }
            while s.poll_event().is_some() {
                events += 1;
            }
        }
    }
    let cpu = wall.elapsed().as_secs_f64();
    let simulated = f64::from(ticks) * 0.020;
    println!(
        "| two engines back to back (no simulator), 2 % loss | {simulated:.0} s simulated in {:.1} ms ({datagrams} datagrams, {events} events; {:.2} µs per datagram sent and received) | {:.4} % of one core per side |",
        cpu * 1000.0,
        cpu * 1e6 / datagrams as f64,
        100.0 * cpu / 2.0 / simulated
    );
}

fn jitter_table() {
    println!("\n### Jitter buffer (no loss, 30 ms base delay, 120 s)\n");
    println!("| jitter | configured p95 | mean added delay | p95 added delay | played |");
    println!("|---|---|---|---|---|");
    jitter_run(Jitter::Uniform(Duration::from_millis(40)), true);
    jitter_run(Jitter::Uniform(Duration::from_millis(100)), true);
    jitter_run(Jitter::Exponential(Duration::from_millis(10)), true);
    jitter_run(Jitter::Exponential(Duration::from_millis(20)), false);
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("bandwidth") {
        if std::env::var_os("HUSH_TIMELINE").is_some() {
            bandwidth_steps(
                &[(0, 1_000_000), (20, 150_000), (40, 1_000_000)],
                60,
                20,
                100_000,
            );
        } else {
            bandwidth_table();
        }
        return;
    }
    let only = std::env::args().nth(1);
    if only.as_deref() == Some("jitter") {
        jitter_table();
        return;
    }
    if only.as_deref() == Some("opus") {
        opus_table();
        return;
    }
    if only.as_deref() == Some("cpu") {
        cpu_table();
        return;
    }
    let seeds = [1, 2, 3, 4, 5];
    let loss_only = only.as_deref() == Some("loss");
    println!(
        "### Loss recovery (20 ms audio, 40 ms RTT, 5 seeds × 120 s, both directions lossy)\n"
    );
    println!("| loss model | lost before recovery | played without concealment | recovered rtx / red / fec | concealed frames | concealed |");
    println!("|---|---|---|---|---|---|");
    loss_run("random 10 %", LossModel::Random(0.10), &seeds);
    loss_run("random 20 %", LossModel::Random(0.20), &seeds);
    loss_run(
        "burst 10 %, mean burst 3",
        LossModel::bursty(0.10, 3.0),
        &seeds,
    );
    loss_run(
        "burst 10 %, mean burst 6",
        LossModel::bursty(0.10, 6.0),
        &seeds,
    );
    loss_run(
        "burst 20 %, mean burst 4",
        LossModel::bursty(0.20, 4.0),
        &seeds,
    );
    if loss_only {
        return;
    }
    opus_table();
    jitter_table();
    bandwidth_table();
    println!("\n### Engine CPU\n");
    cpu_table();
}
