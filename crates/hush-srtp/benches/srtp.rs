//! SRTP protect/unprotect throughput, side by side with the anchors, in one run:
//!
//! 1. criterion groups for hush-srtp protect and unprotect (both suites) and for the backend's
//!    raw AES-GCM on the same bytes, at 160 B and 1200 B payloads (12-byte RTP header);
//! 2. a comparison table (packets per second) of hush-srtp, the backend's raw AES-GCM, libsrtp 2
//!    (`interop/srtp_tool.c bench`, built with `cc -O2 -lsrtp2`) and `openssl speed -evp
//!    aes-128-gcm` (the hardware limit), all measured in this run with the same method: copy
//!    the packet into a work buffer, then transform it in place.
//!
//! Run: `cargo bench -p hush-srtp --bench srtp` (add `-- --table-only` to skip criterion), and
//! with `--features ring` for the ring backend (the "raw" column is then ring's AES-GCM).

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[cfg(not(feature = "ring"))]
use aes_gcm::aead::generic_array::GenericArray;
#[cfg(not(feature = "ring"))]
use aes_gcm::aead::AeadInPlace;
#[cfg(not(feature = "ring"))]
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput};
use hush_srtp::{SrtpContext, Suite};

const PAYLOADS: [usize; 2] = [160, 1200];
const BATCH: usize = 4096;

fn key(suite: Suite) -> Vec<u8> {
    (0..suite.key_len() as u8)
        .map(|i| i.wrapping_mul(7) + 1)
        .collect()
}

fn salt() -> [u8; 12] {
    [0x5a; 12]
}

fn template(payload: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
    p.extend((0..payload).map(|i| i as u8));
    p
}

/// Protects packets with consecutive sequence numbers from a template.
struct Protect {
    ctx: SrtpContext,
    template: Vec<u8>,
    buf: Vec<u8>,
    seq: u16,
}

impl Protect {
    fn new(suite: Suite, payload: usize) -> Self {
        Self {
            ctx: SrtpContext::new(suite, &key(suite), &salt()).unwrap(),
            template: template(payload),
            buf: Vec::with_capacity(payload + 64),
            seq: 0,
        }
    }

    #[inline]
    fn step(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&self.template);
        self.buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.ctx.protect_rtp(&mut self.buf).unwrap();
        black_box(&self.buf);
    }
}

/// Unprotects a batch of protected packets, with a fresh receiver for each pass over the batch
/// (the replay window would refuse a second pass).
struct Unprotect {
    suite: Suite,
    ctx: SrtpContext,
    batch: Vec<Vec<u8>>,
    buf: Vec<u8>,
    i: usize,
}

impl Unprotect {
    fn new(suite: Suite, payload: usize) -> Self {
        let mut tx = Protect::new(suite, payload);
        let batch = (0..BATCH)
            .map(|_| {
                tx.step();
                tx.buf.clone()
            })
            .collect();
        Self {
            suite,
            ctx: SrtpContext::new(suite, &key(suite), &salt()).unwrap(),
            batch,
            buf: Vec::with_capacity(payload + 64),
            i: 0,
        }
    }

    #[inline]
    fn step(&mut self) {
        if self.i == BATCH {
            self.i = 0;
            self.ctx = SrtpContext::new(self.suite, &key(self.suite), &salt()).unwrap();
        }
        self.buf.clear();
        self.buf.extend_from_slice(&self.batch[self.i]);
        self.i += 1;
        self.ctx.unprotect_rtp(&mut self.buf).unwrap();
        black_box(&self.buf);
    }
}

/// The backend's AES-GCM on the same bytes: header as AAD, payload encrypted in place.
struct Raw {
    aead: RawAead,
    template: Vec<u8>,
    buf: Vec<u8>,
}

#[cfg(not(feature = "ring"))]
enum RawAead {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
}

#[cfg(feature = "ring")]
struct RawAead(ring::aead::LessSafeKey);

impl Raw {
    fn new(suite: Suite, payload: usize) -> Self {
        let k = key(suite);
        #[cfg(not(feature = "ring"))]
        let aead = match suite {
            Suite::AeadAes128Gcm => {
                RawAead::A128(Box::new(Aes128Gcm::new(GenericArray::from_slice(&k))))
            }
            Suite::AeadAes256Gcm => {
                RawAead::A256(Box::new(Aes256Gcm::new(GenericArray::from_slice(&k))))
            }
        };
        #[cfg(feature = "ring")]
        let aead = {
            let alg = match suite {
                Suite::AeadAes128Gcm => &ring::aead::AES_128_GCM,
                Suite::AeadAes256Gcm => &ring::aead::AES_256_GCM,
            };
            RawAead(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(alg, &k).unwrap(),
            ))
        };
        Self {
            aead,
            template: template(payload),
            buf: Vec::with_capacity(payload + 64),
        }
    }

    #[inline]
    fn step(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&self.template);
        let (aad, body) = self.buf.split_at_mut(12);
        #[cfg(not(feature = "ring"))]
        let tag: [u8; 16] = {
            let nonce = GenericArray::from_slice(&[7u8; 12]);
            match &self.aead {
                RawAead::A128(c) => c.encrypt_in_place_detached(nonce, aad, body),
                RawAead::A256(c) => c.encrypt_in_place_detached(nonce, aad, body),
            }
            .unwrap()
            .into()
        };
        #[cfg(feature = "ring")]
        let tag: [u8; 16] = self
            .aead
            .0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key([7u8; 12]),
                ring::aead::Aad::from(&*aad),
                body,
            )
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        self.buf.extend_from_slice(&tag);
        black_box(&self.buf);
    }
}

fn criterion_benches(c: &mut Criterion) {
    for suite in [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm] {
        let mut g = c.benchmark_group(format!("srtp/{suite}"));
        g.throughput(Throughput::Elements(1));
        for payload in PAYLOADS {
            let mut p = Protect::new(suite, payload);
            g.bench_function(BenchmarkId::new("protect", payload), |b| {
                b.iter(|| p.step())
            });
            let mut u = Unprotect::new(suite, payload);
            g.bench_function(BenchmarkId::new("unprotect", payload), |b| {
                b.iter(|| u.step())
            });
            let mut r = Raw::new(suite, payload);
            g.bench_function(BenchmarkId::new("raw_aes_gcm", payload), |b| {
                b.iter(|| r.step())
            });
        }
        g.finish();
    }
}

/// Packets per second of one run of `n` calls of `step`.
fn pps(n: u64, mut step: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        step();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Compiles `interop/srtp_tool.c` once; `None` without libsrtp or cc.
fn libsrtp_tool() -> Option<std::path::PathBuf> {
    if !Path::new("/usr/include/srtp2/srtp.h").exists() {
        return None;
    }
    // Cargo's scratch directory for benches (inside the target directory): nothing is left
    // behind in /tmp.
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("srtp_tool_bench");
    if !exe.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/srtp_tool.c");
        let ok = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&exe)
            .arg(src)
            .arg("-lsrtp2")
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    Some(exe)
}

/// libsrtp's packets per second (protect, unprotect) in one run of `n` packets.
fn libsrtp_pps(exe: &Path, suite: Suite, payload: usize, n: u64) -> Option<(f64, f64)> {
    let bits = if suite == Suite::AeadAes128Gcm {
        "128"
    } else {
        "256"
    };
    let out = Command::new(exe)
        .args(["bench", bits, &payload.to_string(), &n.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let get = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((get("protect_pps")?, get("unprotect_pps")?))
}

/// `openssl speed -evp aes-<bits>-gcm` bytes per second at the given buffer size.
fn openssl_bytes_per_s(suite: Suite, bytes: usize) -> Option<f64> {
    let alg = if suite == Suite::AeadAes128Gcm {
        "aes-128-gcm"
    } else {
        "aes-256-gcm"
    };
    let out = Command::new("openssl")
        .args([
            "speed",
            "-mr",
            "-seconds",
            "1",
            "-bytes",
            &bytes.to_string(),
            "-evp",
            alg,
        ])
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Machine-readable line: "+F:<n>:<alg>:<bytes per second>"
    text.lines()
        .find(|l| l.starts_with("+F:"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
}

fn table() {
    const ROUNDS: usize = 15;
    let n = 50_000;
    let tool = libsrtp_tool();
    let backend = if cfg!(feature = "ring") {
        "ring"
    } else {
        "aes-gcm"
    };
    println!();
    println!(
        "## side by side, backend {backend} (packets/s, best of {ROUNDS} interleaved rounds of {n}; \
         12-byte RTP header + payload)"
    );
    println!();
    println!(
        "| suite | payload | hush protect | hush unprotect | backend raw AES-GCM | libsrtp protect | \
         libsrtp unprotect | OpenSSL raw GCM (pkts/s equiv.) | protect / libsrtp | \
         unprotect / libsrtp | protect / raw | protect / OpenSSL |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for suite in [Suite::AeadAes128Gcm, Suite::AeadAes256Gcm] {
        for payload in PAYLOADS {
            let mut p = Protect::new(suite, payload);
            let mut u = Unprotect::new(suite, payload);
            let mut r = Raw::new(suite, payload);
            // Warm up, then interleave the contenders so load changes hit all of them alike.
            pps(n / 10, || p.step());
            pps(n / 10, || u.step());
            pps(n / 10, || r.step());
            let (mut protect, mut unprotect, mut raw) = (0f64, 0f64, 0f64);
            let mut lib: Option<(f64, f64)> = None;
            let mut ossl: Option<f64> = None;
            for round in 0..ROUNDS {
                protect = protect.max(pps(n, || p.step()));
                unprotect = unprotect.max(pps(n, || u.step()));
                raw = raw.max(pps(n, || r.step()));
                if let Some(l) = tool
                    .as_deref()
                    .and_then(|t| libsrtp_pps(t, suite, payload, n))
                {
                    let best = lib.unwrap_or((0.0, 0.0));
                    lib = Some((best.0.max(l.0), best.1.max(l.1)));
                }
                // Same bytes per packet as SRTP processes: the payload plus 12 bytes of AAD.
                // One second each, so only every fifth round.
                if round % 5 != 0 {
                    continue;
                }
                if let Some(b) = openssl_bytes_per_s(suite, payload + 12) {
                    let v = b / (payload + 12) as f64;
                    ossl = Some(ossl.map_or(v, |o: f64| o.max(v)));
                }
            }
            let fmt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
            let ratio =
                |a: f64, b: Option<f64>| b.map_or("n/a".to_owned(), |b| format!("{:.2}×", a / b));
            println!(
                "| {suite} | {payload} | {protect:.0} | {unprotect:.0} | {raw:.0} | {} | {} | {} | \
                 {} | {} | {:.2}× | {} |",
                fmt(lib.map(|l| l.0)),
                fmt(lib.map(|l| l.1)),
                fmt(ossl),
                ratio(protect, lib.map(|l| l.0)),
                ratio(unprotect, lib.map(|l| l.1)),
                protect / raw,
                ratio(protect, ossl),
            );
        }
    }
    println!();
}

fn main() {
    let table_only = std::env::args().any(|a| a == "--table-only");
    if !table_only {
        let mut c = Criterion::default()
            .warm_up_time(std::time::Duration::from_millis(500))
            .measurement_time(std::time::Duration::from_secs(2))
            .configure_from_args();
        criterion_benches(&mut c);
        c.final_summary();
    }
    table();
}
