//! The simulated send link of `ClientConfig` does what it says in a real call over loopback:
//! its delay shows in the RTT the media engine measures, and its bandwidth cap bounds what the
//! peer receives. Alone in its test binary, like `call_loss`, so no other call competes for
//! the CPU.

mod common;

use std::time::Duration;

use common::{connect, loopback_config, pair, Heard};
use hush::SimulatedLink;

/// Alice sends `frames` 20 ms frames of loud noise at microphone pace (Opus spends its whole
/// bitrate on noise, unlike on a tone) while Bob listens; then 600 ms more of listening.
/// Returns what Bob heard and his statistics as the last frame was sent.
async fn noise_call(a: &hush::Call, b: &hush::Call, frames: u32) -> (Heard, hush::CallStats) {
    let mut stats = None;
    let mut heard = Heard::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = tokio::time::Instant::now() + Duration::from_millis(u64::from(frames) * 20 + 600);
    let mut state = 0x2545_f491_u32;
    let mut n = 0;
    loop {
        tokio::select! {
            _ = ticker.tick(), if n < frames => {
                let pcm: Vec<i16> = (0..960)
                    .map(|_| {
                        // xorshift32
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        (state >> 18) as i16 - 8_192
                    })
                    .collect();
                a.send_audio(&pcm).expect("call live");
                n += 1;
                if n == frames {
                    stats = Some(b.stats().await.expect("stats"));
                }
            }
            f = b.recv_audio() => heard.note(f.expect("call live").source),
            () = tokio::time::sleep_until(end) => break,
        }
    }
    (heard, stats.expect("all frames sent"))
}

async fn call_over(link: SimulatedLink, frames: u32) -> (hush::CallStats, hush::CallStats, Heard) {
    let mut config = loopback_config();
    config.simulated_link = link;
    let (alice, bob, _net) = pair(config);
    let (call, answered) = connect(&alice, &bob).await;
    let (heard_b, bob_stats) = noise_call(&call, &answered, frames).await;
    let alice_stats = call.stats().await.expect("stats");
    call.hangup().expect("hangup");
    (alice_stats, bob_stats, heard_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_in_the_measured_rtt() {
    const DELAY: Duration = Duration::from_millis(40);
    // 2 s: a few RTCP report rounds (every 500 ms) for the RTT.
    let (alice, _, _) = call_over(SimulatedLink::new().delay(DELAY).seed(Some(7)), 100).await;
    // Both directions are delayed, so the round trip is at least twice the one-way delay; on
    // loopback, scheduling adds a few milliseconds, not tens.
    let rtt = alice.media.rtt_ms.expect("RTT measured");
    assert!(
        (80.0..130.0).contains(&rtt),
        "RTT {rtt:.1} ms with {DELAY:?} each way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_bounds_the_receive_rate() {
    const CAP_BPS: u64 = 40_000;
    let link = SimulatedLink::new()
        .bandwidth_bps(Some(CAP_BPS))
        .seed(Some(7));
    // 3 s: the rate window is the last second, after the controller met the cap.
    let (_, bob, heard_b) = call_over(link, 150).await;
    let quality = bob.quality.expect("keys");
    // The receive rate counts each packet with its SRTP tag and IPv4/UDP headers, as the cap
    // does: it never exceeds the cap (one packet of slack for the window's edges). Without the
    // cap, 32 kbps Opus on noise at 50 packets a second is about 60 kbps on the wire.
    assert!(
        quality.recv_bps <= CAP_BPS + 1_500,
        "bob received {} bps through a {CAP_BPS} bps cap: {quality:?}",
        quality.recv_bps
    );
    // And the call still carries audio through it.
    assert!(
        heard_b.playable() >= 100,
        "bob heard the stream: {heard_b:?}, {quality:?}"
    );
}
