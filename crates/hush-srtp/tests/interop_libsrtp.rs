//! Byte-exact interoperability with libsrtp 2 (Debian's `libsrtp2-dev`), both suites, SRTP and
//! SRTCP, both directions.
//!
//! `interop/srtp_tool.c` is compiled with the system C compiler into a temporary directory and
//! driven over stdin/stdout: one libsrtp session per run, so ROC, replay state and SRTCP index
//! evolve exactly as they do in hush-srtp for the same packet sequence.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{key, salt, SUITES};
use hush_srtp::{SrtpContext, Suite};

/// One of the four packet transforms of a context.
type Transform = fn(&mut SrtpContext, &mut Vec<u8>) -> Result<(), hush_srtp::Error>;

const COMPONENT: &str = "libsrtp2 (apt: libsrtp2-dev) and a C compiler (cc)";

fn libsrtp_present() -> bool {
    Path::new("/usr/include/srtp2/srtp.h").exists() && hush_testkit::on_path("cc")
}

/// Compiles the tool once per test binary.
fn tool() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        // Cargo's scratch directory for integration tests (inside the target directory), so
        // nothing is left behind in /tmp; built under a per-process name, then renamed into
        // place, so concurrent test processes never run a half-written binary.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let exe = dir.join("srtp_tool");
        let partial = dir.join(format!("srtp_tool.{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/srtp_tool.c");
        let out = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&partial)
            .arg(&src)
            .arg("-lsrtp2")
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "compiling {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &exe).expect("move the tool into place");
        exe
    })
}

fn bits(suite: Suite) -> &'static str {
    match suite {
        Suite::AeadAes128Gcm => "128",
        Suite::AeadAes256Gcm => "256",
    }
}

/// Runs libsrtp over `packets` in one session; `None` for a packet libsrtp refused.
fn libsrtp(
    mode: &str,
    suite: Suite,
    key: &[u8],
    salt: &[u8],
    packets: &[Vec<u8>],
) -> Vec<Option<Vec<u8>>> {
    let mut child = Command::new(tool())
        .args([mode, bits(suite), &hex::encode(key), &hex::encode(salt)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for p in packets {
            writeln!(stdin, "{}", hex::encode(p)).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "srtp_tool {mode} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let results: Vec<_> = text
        .lines()
        .map(|l| l.strip_prefix("OK ").map(|h| hex::decode(h).unwrap()))
        .collect();
    assert_eq!(results.len(), packets.len());
    results
}

/// RTP packets exercising CSRCs, RFC 8285 one- and two-byte extensions, padding bit, empty
/// payloads, two SSRCs, out-of-order sending, and a sequence number wrap (ROC 0 → 1).
fn rtp_packets() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let seqs: Vec<u16> = (65_520..=65_535).chain(0..20).collect();
    for (n, &seq) in seqs.iter().enumerate() {
        for ssrc in [0x1122_3344u32, 0xdead_beef] {
            let csrcs = n % 4;
            let ext = n % 3;
            let mut p = vec![0x80 | csrcs as u8, 0x60 | (n as u8 & 0x80)];
            if ext != 0 {
                p[0] |= 0x10;
            }
            if n % 5 == 0 {
                p[0] |= 0x20; // padding bit (payload ends with a pad count)
            }
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(n as u32 * 960).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            for c in 0..csrcs {
                p.extend_from_slice(&(0x0c5c_0000_u32 + c as u32).to_be_bytes());
            }
            match ext {
                1 => p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0x7f, 0x00, 0x00]),
                2 => p.extend_from_slice(&[
                    0x10, 0x00, 0x00, 0x02, 0x05, 0x03, 0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x00,
                ]),
                _ => {}
            }
            let len = [0usize, 1, 15, 16, 17, 160, 1200][n % 7];
            p.extend((0..len).map(|i| (i * 31 + n) as u8));
            if n % 5 == 0 {
                p.extend_from_slice(&[0, 0, 3]);
            }
            out.push(p);
        }
    }
    // Out of order (still inside the window) at the end.
    out.swap(60, 64);
    out
}

fn rtcp_packets() -> Vec<Vec<u8>> {
    (0..20u32)
        .map(|n| {
            let ssrc: u32 = if n % 2 == 0 { 0x4d61_7273 } else { 0x0bad_cafe };
            let mut p = vec![0x80, 200 + (n % 2) as u8, 0, 6];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend((0..(n as usize * 12)).map(|i| (i as u8) ^ 0x5a));
            p
        })
        .collect()
}

fn hush_all(ctx: &mut SrtpContext, packets: &[Vec<u8>], f: Transform) -> Vec<Option<Vec<u8>>> {
    packets
        .iter()
        .map(|p| {
            let mut p = p.clone();
            f(ctx, &mut p).ok().map(|()| p)
        })
        .collect()
}

fn check_direction(suite: Suite, rtcp: bool) {
    let k = key(suite, 0x3c);
    let s = salt(0xc3);
    let (plain, protect, unprotect, hush_protect, hush_unprotect): (_, _, _, Transform, Transform) =
        if rtcp {
            (
                rtcp_packets(),
                "protect-rtcp",
                "unprotect-rtcp",
                SrtpContext::protect_rtcp,
                SrtpContext::unprotect_rtcp,
            )
        } else {
            (
                rtp_packets(),
                "protect-rtp",
                "unprotect-rtp",
                SrtpContext::protect_rtp,
                SrtpContext::unprotect_rtp,
            )
        };

    // Same inputs, same keys: byte-identical output.
    let from_libsrtp = libsrtp(protect, suite, &k, &s, &plain);
    let mut hush_tx = SrtpContext::new(suite, &k, &s).unwrap();
    let from_hush = hush_all(&mut hush_tx, &plain, hush_protect);
    for (i, (a, b)) in from_libsrtp.iter().zip(&from_hush).enumerate() {
        let a = a
            .as_ref()
            .unwrap_or_else(|| panic!("libsrtp refused packet {i}"));
        let b = b
            .as_ref()
            .unwrap_or_else(|| panic!("hush refused packet {i}"));
        assert_eq!(
            hex::encode(a),
            hex::encode(b),
            "{suite} {protect} packet {i}"
        );
    }
    let protected: Vec<Vec<u8>> = from_hush.into_iter().map(Option::unwrap).collect();

    // libsrtp's packets open in hush, hush's in libsrtp.
    let mut hush_rx = SrtpContext::new(suite, &k, &s).unwrap();
    let opened = hush_all(&mut hush_rx, &protected, hush_unprotect);
    let by_libsrtp = libsrtp(unprotect, suite, &k, &s, &protected);
    for i in 0..plain.len() {
        assert_eq!(
            opened[i].as_ref(),
            Some(&plain[i]),
            "{suite} hush {unprotect} {i}"
        );
        assert_eq!(
            by_libsrtp[i].as_ref(),
            Some(&plain[i]),
            "{suite} libsrtp {unprotect} {i}"
        );
    }

    // Both reject the same tampered packet and the same replay.
    let mut bad = protected[3].clone();
    let last = bad.len() - if rtcp { 5 } else { 1 };
    bad[last] ^= 0x80;
    let replay = vec![protected[0].clone(), protected[0].clone(), bad.clone()];
    let lib = libsrtp(unprotect, suite, &k, &s, &replay);
    let mut rx = SrtpContext::new(suite, &k, &s).unwrap();
    let ours = hush_all(&mut rx, &replay, hush_unprotect);
    assert!(lib[0].is_some() && ours[0].is_some());
    assert!(lib[1].is_none() && ours[1].is_none(), "replay accepted");
    assert!(
        lib[2].is_none() && ours[2].is_none(),
        "tampered packet accepted"
    );
}

#[test]
fn srtp_byte_exact_with_libsrtp() {
    if !hush_testkit::system_component(COMPONENT, libsrtp_present()) {
        return;
    }
    for suite in SUITES {
        check_direction(suite, false);
    }
}

#[test]
fn srtcp_byte_exact_with_libsrtp() {
    if !hush_testkit::system_component(COMPONENT, libsrtp_present()) {
        return;
    }
    for suite in SUITES {
        check_direction(suite, true);
    }
}

/// libsrtp's own GCM session-key derivation from a 12-byte master salt agrees with hush's: a
/// single packet with all-zero key material protects identically.
#[test]
fn kdf_with_96_bit_salt_matches_libsrtp() {
    if !hush_testkit::system_component(COMPONENT, libsrtp_present()) {
        return;
    }
    for suite in SUITES {
        for (kf, sf) in [(0u8, 0u8), (0xff, 0xff), (0x01, 0x80)] {
            let k = vec![kf; suite.key_len()];
            let s = vec![sf; 12];
            let p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xab, 0xcd];
            let lib = libsrtp("protect-rtp", suite, &k, &s, std::slice::from_ref(&p));
            let mut ours = p.clone();
            SrtpContext::new(suite, &k, &s)
                .unwrap()
                .protect_rtp(&mut ours)
                .unwrap();
            assert_eq!(
                lib[0].as_ref(),
                Some(&ours),
                "{suite} key {kf:#x} salt {sf:#x}"
            );
        }
    }
}
