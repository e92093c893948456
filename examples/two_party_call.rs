//! Two parties exchange SRTP-protected audio packets over real UDP sockets on loopback.
//!
//! This is the first stage of the two-party call example: each direction gets its own fresh
//! master key and salt (printed only as fingerprints); Alice sends 5 s of 20 ms RTP audio
//! packets plus an RTCP report to Bob through `hush-srtp`, Bob does the same back, and each
//! receiver authenticates, decrypts and checks every packet. The last line printed is a JSON summary; the process exits non-zero if any
//! packet failed.
//!
//! Run with `cargo run --example two_party_call`.

use std::error::Error;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hush_srtp::{SrtpContext, Suite};
use rand::RngCore;
use sha2::{Digest, Sha256};

const FRAMES: u16 = 250; // 5 s of 20 ms frames
const SSRC: u32 = 0x1234_5678;

fn fingerprint(key: &[u8], salt: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(salt)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A 12-byte RTP header (version 2, payload type 111 = Opus) followed by `payload`.
fn rtp_packet(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len() + Suite::RTP_OVERHEAD);
    p.extend_from_slice(&[0x80, 111]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn frame_payload(seq: u16) -> Vec<u8> {
    // Stand-in for an encoded audio frame: 60 bytes that differ per frame.
    (0..60u16)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i)) as u8)
        .collect()
}

struct Direction {
    name: &'static str,
    tx: SrtpContext,
    rx: SrtpContext,
}

impl Direction {
    /// Fresh master key and salt for one direction, shared by its sender and receiver.
    fn new(name: &'static str, suite: Suite) -> Result<Self, hush_srtp::Error> {
        let mut rng = rand::rng();
        let mut key = vec![0u8; suite.key_len()];
        let mut salt = vec![0u8; suite.salt_len()];
        rng.fill_bytes(&mut key);
        rng.fill_bytes(&mut salt);
        println!("{name} master key fingerprint {}", fingerprint(&key, &salt));
        Ok(Self {
            name,
            tx: SrtpContext::new(suite, &key, &salt)?,
            rx: SrtpContext::new(suite, &key, &salt)?,
        })
    }

    /// Sends 5 s of audio packets and one RTCP report from `from` to `to`, checking each.
    fn run(&mut self, from: &UdpSocket, to: &UdpSocket) -> Result<(u32, u32), Box<dyn Error>> {
        let (mut sent, mut received) = (0u32, 0u32);
        let mut buf = vec![0u8; 1500];
        for seq in 0..FRAMES {
            let mut packet = rtp_packet(seq, &frame_payload(seq));
            self.tx.protect_rtp(&mut packet)?;
            if packet.windows(8).any(|w| w == &frame_payload(seq)[..8]) {
                return Err("plaintext visible on the wire".into());
            }
            from.send_to(&packet, to.local_addr()?)?;
            sent += 1;
            let n = to.recv(&mut buf)?;
            let mut got = buf[..n].to_vec();
            if self.rx.unprotect_rtp(&mut got).is_ok() && got[12..] == frame_payload(seq)[..] {
                received += 1;
            }
        }
        // One RTCP receiver report (RFC 3550, no report blocks).
        let mut rtcp = vec![0x80, 201, 0, 1];
        rtcp.extend_from_slice(&SSRC.to_be_bytes());
        let clear = rtcp.clone();
        self.tx.protect_rtcp(&mut rtcp)?;
        from.send_to(&rtcp, to.local_addr()?)?;
        let n = to.recv(&mut buf)?;
        let mut got = buf[..n].to_vec();
        if self.rx.unprotect_rtcp(&mut got).is_err() || got != clear {
            return Err(format!("{}: RTCP did not round-trip", self.name).into());
        }
        Ok((sent, received))
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let suite = Suite::AeadAes128Gcm;
    let alice = UdpSocket::bind("127.0.0.1:0")?;
    let bob = UdpSocket::bind("127.0.0.1:0")?;
    for s in [&alice, &bob] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    let mut alice_to_bob = Direction::new("alice->bob", suite)?;
    let mut bob_to_alice = Direction::new("bob->alice", suite)?;

    let start = Instant::now();
    let (sent_ab, recv_ab) = alice_to_bob.run(&alice, &bob)?;
    let (sent_ba, recv_ba) = bob_to_alice.run(&bob, &alice)?;
    let (sent, received) = (sent_ab + sent_ba, recv_ab + recv_ba);
    let ok = received == sent && sent == 2 * u32::from(FRAMES);
    println!(
        "{{\"frames_sent\":{sent},\"frames_received\":{received},\"suite\":\"{}\",\"elapsed_ms\":{},\"result\":\"{}\"}}",
        suite.name(),
        start.elapsed().as_millis(),
        if ok { "ok" } else { "failed" }
    );
    if ok {
        Ok(())
    } else {
        Err("the call did not work".into())
    }
}
