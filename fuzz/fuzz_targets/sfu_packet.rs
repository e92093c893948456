//! Fuzzes the SFU core's ingress path (`Sfu::handle_input`) in a three-participant call.
//!
//! The input is a sequence of chunks `mode u8 || len u8 || bytes`. By mode:
//! - 0: the bytes as a datagram on participant 1's leg (unauthenticated);
//! - 1: the bytes made into an RTP header for one of participant 1's declared SSRCs (audio, or
//!   a layer of its simulcast source, picked by the header's last SSRC byte), then protected
//!   with its real hop key (so the post-authentication parsing, audio level, transport-wide
//!   number, padding probes, layer selection and forwarding run);
//! - 2: the same as RTCP (so NACK/PLI/FIR/BYE walking, the cache, PLI relay and stopping a
//!   simulcast layer run);
//! - 3: the bytes on a leg that does not exist.
//!
//! Checked: no panic; unauthenticated input makes the SFU send nothing (its timers, run
//! separately, may: sender reports, probes, feedback); everything the SFU sends
//! authenticates at its recipient with that recipient's hop key.
#![no_main]

use ed25519_dalek::SigningKey;
use hush_sfu::join::{JoinAnswer, JoinParams, PendingJoin, SfuSigningKey, StreamDecl, StreamKind};
use hush_sfu::roster::Roster;
use hush_sfu::{CallId, DeviceId, LegId, Sfu, SfuConfig};
use hush_srtp::{SrtpConfig, SrtpContext, Suite};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

const CALL: CallId = CallId::from_bytes([0xc0; 16]);
const NOW_MS: u64 = 1_780_000_000_000;

struct Client {
    leg: LegId,
    send: SrtpContext,
    recv: SrtpContext,
}

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 1; 32])
}

fn setup(now: std::time::Instant) -> (Sfu, Vec<Client>) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut sfu =
        Sfu::new(SfuConfig::default(), SfuSigningKey::from_seed(&[9; 32])).expect("default config");
    let members: Vec<DeviceId> = (0..3)
        .map(|i| DeviceId::from_signing_key(&key(i)))
        .collect();
    let roster = Roster::sign(&key(0), CALL, 1, &members)
        .expect("roster")
        .encode();
    let mut clients = Vec::new();
    for i in 0..3u8 {
        let params = JoinParams {
            call_id: CALL,
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams: vec![
                StreamDecl {
                    ssrc: 0x100 + u32::from(i),
                    kind: StreamKind::Audio,
                },
                StreamDecl {
                    ssrc: 0x200 + u32::from(i),
                    kind: StreamKind::Video,
                },
            ]
            .into_iter()
            .chain(StreamDecl::simulcast(
                0,
                [
                    (0x300 + u32::from(i), 160, 90),
                    (0x310 + u32::from(i), 320, 180),
                ],
            ))
            .collect(),
        };
        let (pending, request) =
            PendingJoin::new(&key(i), &params, NOW_MS, &mut rng).expect("request");
        let joined = sfu
            .handle_join(
                now,
                NOW_MS,
                &request.encode(),
                (i == 0).then_some(&roster[..]),
                &mut rng,
            )
            .expect("join");
        let answer = JoinAnswer::decode(&joined.answer).expect("answer");
        let keys = pending.finish(&sfu.public_key(), &answer).expect("keys");
        let cfg = SrtpConfig::builder().max_ssrcs(512).build().expect("cfg");
        clients.push(Client {
            leg: joined.leg,
            send: keys.send_context(cfg.clone()).expect("ctx"),
            recv: keys.recv_context(cfg).expect("ctx"),
        });
    }
    while sfu.poll_event().is_some() {}
    (sfu, clients)
}

fuzz_target!(|data: &[u8]| {
    let start = std::time::Instant::now();
    let (mut sfu, mut clients) = setup(start);
    let mut rest = data;
    let mut step = 0u64;
    while let [mode, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        step += 1;
        let now = start + std::time::Duration::from_millis(step * 7);
        let mut bytes = chunk.to_vec();
        let authenticated = match mode % 4 {
            1 if bytes.len() >= 12 => {
                bytes[0] = 0x80 | (bytes[0] & 0x3f);
                bytes[1] &= 0x7f;
                let ssrc = [0x101u32, 0x301, 0x311][usize::from(bytes[11]) % 3];
                bytes[8..12].copy_from_slice(&ssrc.to_be_bytes());
                clients[1].send.protect_rtp(&mut bytes).is_ok()
            }
            2 if bytes.len() >= 8 => {
                bytes[0] = 0x80 | (bytes[0] & 0x3f);
                bytes[1] = 200 + bytes[1] % 8;
                let ssrc = [0x201u32, 0x101, 0x301, 0x311][usize::from(bytes[7]) % 4];
                bytes[4..8].copy_from_slice(&ssrc.to_be_bytes());
                clients[1].send.protect_rtcp(&mut bytes).is_ok()
            }
            _ => false,
        };
        let leg = if mode % 4 == 3 {
            LegId(u64::MAX)
        } else {
            clients[1].leg
        };
        let _ = sfu.handle_input(now, leg, &bytes);
        // What the input alone made the SFU send: nothing at all unless it authenticated.
        drain(&mut sfu, &mut clients, Some(authenticated));
        // Timers (sender reports, probing, feedback) send on their own; those must authenticate.
        sfu.handle_timeout(now);
        drain(&mut sfu, &mut clients, None);
        while sfu.poll_event().is_some() {}
    }
});

/// Takes everything the SFU has to send and checks each at its recipient. With
/// `Some(false)`, the SFU must have nothing to send.
fn drain(sfu: &mut Sfu, clients: &mut [Client], from_input: Option<bool>) {
    while let Some(t) = sfu.poll_transmit() {
        assert!(
            from_input != Some(false),
            "unauthenticated input made the SFU send"
        );
        let c = clients
            .iter_mut()
            .find(|c| c.leg == t.leg)
            .expect("known leg");
        let mut b = t.bytes;
        let rtcp = matches!(b.get(1), Some(192..=223));
        // A resend of a packet the recipient already has is a replay there; anything else
        // must authenticate.
        let r = if rtcp {
            c.recv.unprotect_rtcp(&mut b)
        } else {
            c.recv.unprotect_rtp(&mut b)
        };
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    hush_srtp::Error::Replayed { .. } | hush_srtp::Error::TooOld { .. }
                ),
                "sfu output failed at its recipient: {e}"
            );
        }
    }
}
