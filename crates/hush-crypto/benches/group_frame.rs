//! Benchmarks: the end-to-end encryption of one group call frame (SFrame encrypt at the sender,
//! decrypt at a receiver) through `hush_crypto::group::GroupE2ee`, against the bare `sframe`
//! crate with the same suite and against bare AES-128-GCM (ring) on the same bytes, for an
//! audio frame (100 B) and video frames (1.2 KB, 20 KB).
//!
//! Run: `cargo bench -p hush-crypto --bench group_frame`
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hush_crypto::group::{FrameKind, GroupCallId, GroupE2ee, MemberSlot, Opened, GROUP_SUITE};
use hush_crypto::rand::rngs::StdRng;
use hush_crypto::rand::SeedableRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};

const SIZES: [usize; 3] = [100, 1_200, 20_000];

fn bench_group_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("group frame encrypt+decrypt");
    for size in SIZES {
        let payload = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));

        let call = GroupCallId([1; 16]);
        let now = Instant::now();
        let mut sender =
            GroupE2ee::new(call, MemberSlot(0), &mut StdRng::seed_from_u64(1)).expect("sender");
        let mut receiver =
            GroupE2ee::new(call, MemberSlot(1), &mut StdRng::seed_from_u64(2)).expect("receiver");
        receiver
            .receive_key(MemberSlot(0), &sender.key_message(), now)
            .expect("key");
        group.bench_with_input(
            BenchmarkId::new("hush GroupE2ee", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    let sframe = sender.encrypt(FrameKind::Video, p).expect("encrypt");
                    match receiver.decrypt(MemberSlot(0), FrameKind::Video, &sframe, now) {
                        Ok(Opened::Frame(plain)) => plain,
                        other => panic!("{other:?}"),
                    }
                })
            },
        );

        let enc = EncryptionKey::derive_from(GROUP_SUITE, 0x0100_0000u64, [7u8; 32]).expect("key");
        let dec = DecryptionKey::derive_from(GROUP_SUITE, 0x0100_0000u64, [7u8; 32]).expect("key");
        let mut counter = MonotonicCounter::default();
        let (mut ebuf, mut dbuf) = (Vec::new(), Vec::new());
        group.bench_with_input(BenchmarkId::new("bare sframe", size), &payload, |b, p| {
            b.iter(|| {
                let media =
                    MediaFrameView::try_with_meta_data(&mut counter, p, &[1u8, 1]).expect("frame");
                let encrypted = media.encrypt_into(&enc, &mut ebuf).expect("encrypt");
                let bytes = encrypted.sframe_cipher_text().to_vec();
                let view = EncryptedFrameView::try_with_meta_data(&bytes, &[1u8, 1]).expect("view");
                view.decrypt_into(&dec, &mut dbuf)
                    .expect("decrypt")
                    .payload()
                    .len()
            })
        });

        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).expect("key"));
        let mut n = 0u64;
        group.bench_with_input(
            BenchmarkId::new("bare AES-128-GCM", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&n.to_be_bytes());
                    let mut buf = p.clone();
                    key.seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([1u8, 1]),
                        &mut buf,
                    )
                    .expect("seal");
                    key.open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([1u8, 1]),
                        &mut buf,
                    )
                    .expect("open")
                    .len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_group_frame);
criterion_main!(benches);
