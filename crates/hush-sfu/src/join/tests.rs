use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_780_000_000_000;

fn device(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn params() -> JoinParams {
    JoinParams {
        call_id: CallId::from_bytes([0x11; 16]),
        suite: Suite::AeadAes128Gcm,
        audio_level_ext: Some(1),
        streams: vec![
            StreamDecl {
                ssrc: 0x1111_0001,
                kind: StreamKind::Audio,
            },
            StreamDecl {
                ssrc: 0x1111_0002,
                kind: StreamKind::Video,
            },
        ],
    }
}

fn sfu() -> SfuSigningKey {
    SfuSigningKey::from_seed(&[0x5f; 32])
}

fn start(dev: u8, nonce: u8, ts: u64) -> (PendingJoin, JoinRequest) {
    PendingJoin::from_parts(
        &device(dev),
        &params(),
        ts,
        [nonce; JOIN_NONCE_LEN],
        Zeroizing::new([dev ^ nonce ^ 0xa5; 32]),
    )
    .unwrap()
}

/// Re-signs a request body (the bytes before the signature) with the device key.
fn resign(dev: u8, mut body: Vec<u8>) -> Vec<u8> {
    let sig = device(dev).sign(&signed_message(REQUEST_SIG_LABEL, &[&body]));
    body.extend_from_slice(&sig.to_bytes());
    body
}

#[test]
fn both_sides_derive_mirrored_hop_keys() {
    let (pending, request) = start(1, 1, NOW);
    let wire = request.encode();
    let at_sfu = JoinRequest::decode(&wire).unwrap();
    assert_eq!(at_sfu, request);
    assert_eq!(at_sfu.device(), DeviceId::from_signing_key(&device(1)));
    let (answer, sfu_keys) = sfu()
        .answer_with_seed(&at_sfu, &Zeroizing::new([9; 32]))
        .unwrap();
    let answer = JoinAnswer::decode(&answer.encode()).unwrap();
    let client_keys = pending.finish(&sfu().public_key(), &answer).unwrap();
    assert_eq!(client_keys.send_key(), sfu_keys.recv_key());
    assert_eq!(client_keys.send_salt(), sfu_keys.recv_salt());
    assert_eq!(client_keys.recv_key(), sfu_keys.send_key());
    assert_eq!(client_keys.recv_salt(), sfu_keys.send_salt());
    assert_ne!(client_keys.send_key(), client_keys.recv_key());
    assert_eq!(client_keys.send_key().len(), 16);
    assert_eq!(client_keys.send_salt().len(), 12);

    // And the contexts built from them interoperate.
    let cfg = SrtpConfig::default();
    let mut tx = client_keys.send_context(cfg.clone()).unwrap();
    let mut rx = sfu_keys.recv_context(cfg).unwrap();
    let mut p = vec![0x80, 111, 0, 1, 0, 0, 0, 0, 0x11, 0x11, 0, 1, 1, 2, 3];
    let plain = p.clone();
    tx.protect_rtp(&mut p).unwrap();
    rx.unprotect_rtp(&mut p).unwrap();
    assert_eq!(p, plain);
}

#[test]
fn different_joins_get_different_keys() {
    let (_, r1) = start(1, 1, NOW);
    let (_, r2) = start(1, 2, NOW);
    let (_, k1) = sfu()
        .answer_with_seed(&r1, &Zeroizing::new([9; 32]))
        .unwrap();
    let (_, k2) = sfu()
        .answer_with_seed(&r2, &Zeroizing::new([9; 32]))
        .unwrap();
    assert_ne!(k1.recv_key(), k2.recv_key());
}

#[test]
fn forged_or_altered_requests_are_refused() {
    let (_, request) = start(1, 1, NOW);
    let wire = request.encode();
    // Any flipped bit in the signed body or the signature breaks the signature (or the
    // encoding); none may panic or pass.
    for i in 0..wire.len() {
        let mut w = wire.clone();
        w[i] ^= 0x01;
        assert!(
            JoinRequest::decode(&w).is_err(),
            "byte {i} flipped accepted"
        );
    }
    // A request signed by another device than the one it names.
    let body = wire[..wire.len() - 64].to_vec();
    let other = resign(2, body);
    assert_eq!(
        JoinRequest::decode(&other),
        Err(JoinError::BadSignature("join request"))
    );
    for n in 0..wire.len() {
        assert!(JoinRequest::decode(&wire[..n]).is_err());
    }
    let mut long = wire.clone();
    long.push(0);
    assert!(JoinRequest::decode(&long).is_err());
}

#[test]
fn answer_checks_sfu_key_and_transcript() {
    let (pending, request) = start(1, 1, NOW);
    let (answer, _) = sfu()
        .answer_with_seed(&request, &Zeroizing::new([9; 32]))
        .unwrap();
    // Signed by another SFU key.
    let rogue = SfuSigningKey::from_seed(&[0x66; 32]);
    let (rogue_answer, _) = rogue
        .answer_with_seed(&request, &Zeroizing::new([9; 32]))
        .unwrap();
    let (p2, _) = start(1, 1, NOW);
    assert_eq!(
        p2.finish(&sfu().public_key(), &rogue_answer).unwrap_err(),
        JoinError::BadSignature("join answer")
    );
    // An answer made for another request (same device, other nonce) does not verify.
    let (_, other_request) = start(1, 2, NOW);
    let (other_answer, _) = sfu()
        .answer_with_seed(&other_request, &Zeroizing::new([9; 32]))
        .unwrap();
    let (p3, _) = start(1, 1, NOW);
    assert_eq!(
        p3.finish(&sfu().public_key(), &other_answer).unwrap_err(),
        JoinError::BadSignature("join answer")
    );
    // The right answer still works.
    pending.finish(&sfu().public_key(), &answer).unwrap();
    let bytes = answer.encode();
    for n in 0..bytes.len() {
        assert!(JoinAnswer::decode(&bytes[..n]).is_err());
    }
}

#[test]
fn low_order_keys_are_refused_on_both_sides() {
    let (_, request) = start(1, 1, NOW);
    let wire = request.encode();
    let mut body = wire[..wire.len() - 64].to_vec();
    // The ephemeral sits after tag, version, call id and device key.
    let at = 2 + 16 + 32;
    for low in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        body[at..at + 32].copy_from_slice(&low);
        let req = JoinRequest::decode(&resign(1, body.clone())).unwrap();
        assert!(matches!(
            sfu().answer_with_seed(&req, &Zeroizing::new([9; 32])),
            Err(JoinError::NonContributory)
        ));
    }
    // Client side: an answer with a low-order SFU key, validly signed by the SFU.
    let (pending, request) = start(1, 3, NOW);
    let low = [0u8; 32];
    let transcript = request.transcript(&sfu().public_key().to_bytes(), &low);
    let signature = sfu()
        .0
        .sign(&signed_message(ANSWER_SIG_LABEL, &[&transcript]))
        .to_bytes();
    let answer = JoinAnswer {
        ephemeral: low,
        signature,
    };
    assert_eq!(
        pending.finish(&sfu().public_key(), &answer).unwrap_err(),
        JoinError::NonContributory
    );
}

#[test]
fn unknown_suite_and_bad_params() {
    let (_, request) = start(1, 1, NOW);
    let wire = request.encode();
    let mut body = wire[..wire.len() - 64].to_vec();
    let at = 2 + 16 + 32 + 32 + 8 + 16;
    body[at..at + 2].copy_from_slice(&0x0001u16.to_be_bytes());
    let req = JoinRequest::decode(&resign(1, body)).unwrap();
    assert!(matches!(
        sfu().answer_with_seed(&req, &Zeroizing::new([9; 32])),
        Err(JoinError::UnsupportedSuite(1))
    ));
    let mut p = params();
    p.streams.push(p.streams[0]);
    assert!(matches!(
        PendingJoin::from_parts(&device(1), &p, NOW, [0; 16], Zeroizing::new([1; 32])),
        Err(JoinError::InvalidArgument("duplicate ssrc"))
    ));
    p.streams.clear();
    assert!(
        PendingJoin::from_parts(&device(1), &p, NOW, [0; 16], Zeroizing::new([1; 32])).is_err()
    );
    let mut p = params();
    p.audio_level_ext = Some(15);
    assert!(
        PendingJoin::from_parts(&device(1), &p, NOW, [0; 16], Zeroizing::new([1; 32])).is_err()
    );
}

#[test]
fn guard_refuses_stale_and_replayed_requests() {
    let skew = Duration::from_secs(30);
    let mut guard = JoinGuard::new(skew, 4, 4);
    let (_, fresh) = start(1, 1, NOW);
    guard.check_fresh(&fresh, NOW + 30_000).unwrap();
    guard.check_fresh(&fresh, NOW - 30_000).unwrap();
    assert_eq!(
        guard.check_fresh(&fresh, NOW + 30_001),
        Err(JoinError::Stale { skew_ms: 30_001 })
    );
    assert_eq!(
        guard.check_fresh(&fresh, NOW - 31_000),
        Err(JoinError::Stale { skew_ms: 31_000 })
    );
    guard.record(&fresh, NOW).unwrap();
    assert_eq!(guard.record(&fresh, NOW + 1), Err(JoinError::Replayed));
    // Still remembered for as long as the request could be fresh...
    assert_eq!(guard.record(&fresh, NOW + 60_000), Err(JoinError::Replayed));
    // ...and forgotten after, when it is stale anyway.
    assert!(guard.check_fresh(&fresh, NOW + 60_001).is_err());
    guard.record(&fresh, NOW + 60_001).unwrap();
    assert_eq!(guard.len(), 1);
    // The same nonce from another device is another request.
    let (_, other_device) = start(2, 1, NOW);
    guard.record(&other_device, NOW + 60_001).unwrap();
}

#[test]
fn guard_memory_is_bounded() {
    let mut guard = JoinGuard::new(Duration::from_secs(30), 3, 2);
    for n in 0..2 {
        guard.record(&start(1, n, NOW).1, NOW).unwrap();
    }
    // One device cannot take more than its share.
    assert_eq!(
        guard.record(&start(1, 2, NOW).1, NOW),
        Err(JoinError::TooManyJoins)
    );
    guard.record(&start(2, 0, NOW).1, NOW).unwrap();
    assert_eq!(
        guard.record(&start(3, 9, NOW).1, NOW),
        Err(JoinError::ReplayCacheFull)
    );
    assert_eq!(guard.len(), 3);
    // Once the old entries can no longer be replayed, there is room again.
    guard.record(&start(1, 9, NOW).1, NOW + 60_001).unwrap();
    assert_eq!(guard.len(), 1);
    // And the device's share came back with its expired entries.
    guard.record(&start(1, 10, NOW).1, NOW + 60_001).unwrap();
    assert_eq!(
        guard.record(&start(1, 11, NOW).1, NOW + 60_001),
        Err(JoinError::TooManyJoins)
    );
}

/// The test vector of docs/sfu.md: fixed keys, nonce, timestamp and X25519 seeds.
fn vector() -> (Vec<u8>, Vec<u8>, HopKeys) {
    let client = SigningKey::from_bytes(&[0x01; 32]);
    let (pending, request) = PendingJoin::from_parts(
        &client,
        &JoinParams {
            call_id: CallId::from_bytes([0x11; 16]),
            suite: Suite::AeadAes128Gcm,
            audio_level_ext: Some(1),
            streams: vec![StreamDecl {
                ssrc: 0x0000_1234,
                kind: StreamKind::Audio,
            }],
        },
        1_780_000_000_000,
        [0x22; JOIN_NONCE_LEN],
        Zeroizing::new([0x03; 32]),
    )
    .unwrap();
    let sfu = SfuSigningKey::from_seed(&[0x02; 32]);
    let (answer, sfu_keys) = sfu
        .answer_with_seed(&request, &Zeroizing::new([0x04; 32]))
        .unwrap();
    let client_keys = pending.finish(&sfu.public_key(), &answer).unwrap();
    assert_eq!(client_keys.send_key(), sfu_keys.recv_key());
    (request.encode(), answer.encode(), client_keys)
}

#[test]
fn docs_test_vector_matches_code() {
    let (request, answer, keys) = vector();
    let doc = include_str!("../../../../docs/sfu.md");
    let expect = [
        ("request", hex::encode(&request)),
        ("answer", hex::encode(&answer)),
        ("client-to-SFU master key", hex::encode(keys.send_key())),
        ("client-to-SFU master salt", hex::encode(keys.send_salt())),
        ("SFU-to-client master key", hex::encode(keys.recv_key())),
        ("SFU-to-client master salt", hex::encode(keys.recv_salt())),
        ("SFU ICE ufrag", keys.ice_ufrag().to_owned()),
        ("SFU ICE password", keys.ice_pwd().to_owned()),
        ("notice key", hex::encode(keys.notice_key())),
    ];
    // The doc wraps long hex at 64 characters per line; join the block back.
    let flat: String = doc.split_whitespace().collect();
    for (what, hex) in expect {
        assert!(
            flat.contains(&hex),
            "docs/sfu.md lacks the {what} of the test vector: {hex}"
        );
    }
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = JoinRequest::decode(&bytes);
        let _ = JoinAnswer::decode(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_tagged_input(mut bytes in proptest::collection::vec(any::<u8>(), 2..300)) {
        bytes[0] = JOIN_REQUEST_TAG;
        bytes[1] = JOIN_PROTOCOL_VERSION;
        let _ = JoinRequest::decode(&bytes);
        bytes[0] = JOIN_ANSWER_TAG;
        let _ = JoinAnswer::decode(&bytes);
    }
}

fn layer(ssrc: u32, source: u8, layer: u8, height: u16) -> StreamDecl {
    StreamDecl {
        ssrc,
        kind: StreamKind::SimulcastLayer(SimulcastLayer {
            source,
            layer,
            width: height * 16 / 9,
            height,
        }),
    }
}

fn simulcast_params() -> JoinParams {
    let mut p = params();
    p.streams = vec![
        p.streams[0],
        layer(0x2001, 7, 2, 360),
        layer(0x2000, 7, 1, 180),
        layer(0x1fff, 7, 0, 90),
        layer(0x3000, 8, 0, 720),
    ];
    p
}

#[test]
fn simulcast_layers_round_trip_and_are_announced_as_one_stream() {
    let p = simulcast_params();
    let (_, request) =
        PendingJoin::from_parts(&device(1), &p, NOW, [3; 16], Zeroizing::new([4; 32])).unwrap();
    let at_sfu = JoinRequest::decode(&request.encode()).unwrap();
    assert_eq!(at_sfu.streams(), &p.streams[..]);
    let sources = simulcast_sources(at_sfu.streams());
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].0, 7);
    let ssrcs: Vec<u32> = sources[0].1.iter().map(|(s, _)| *s).collect();
    assert_eq!(ssrcs, vec![0x1fff, 0x2000, 0x2001], "sorted by layer index");
    assert_eq!(
        announced_streams(at_sfu.streams()),
        vec![
            p.streams[0],
            StreamDecl {
                ssrc: 0x1fff,
                kind: StreamKind::Video
            },
            StreamDecl {
                ssrc: 0x3000,
                kind: StreamKind::Video
            },
        ]
    );
    // A declaration without simulcast encodes exactly as before (the test vector in
    // docs/sfu.md pins the bytes) and is announced unchanged.
    assert_eq!(announced_streams(&params().streams), params().streams);
}

#[test]
fn bad_simulcast_layouts_are_refused_on_both_ends() {
    let bad: Vec<(Vec<StreamDecl>, &str)> = vec![
        (
            vec![
                layer(1, 0, 0, 90),
                layer(2, 0, 1, 180),
                layer(3, 0, 2, 360),
                layer(4, 0, 3, 720),
            ],
            "more than 3 simulcast layers in a source",
        ),
        (
            vec![layer(1, 0, 0, 90), layer(2, 0, 2, 180)],
            "simulcast layer indices not 0..n",
        ),
        (
            vec![layer(1, 0, 1, 90), layer(2, 0, 1, 180)],
            "simulcast layer indices not 0..n",
        ),
        (
            vec![layer(1, 0, 0, 180), layer(2, 0, 1, 180)],
            "simulcast layer heights not increasing",
        ),
    ];
    for (streams, reason) in bad {
        let mut p = params();
        p.streams = streams.clone();
        match PendingJoin::from_parts(&device(1), &p, NOW, [0; 16], Zeroizing::new([1; 32])) {
            Err(JoinError::InvalidArgument(r)) => assert_eq!(r, reason),
            other => panic!("{reason}: {other:?}"),
        }
        // The same layout, signed by hand, is refused by the SFU's decoder.
        let mut body = start(1, 1, NOW).1.encode();
        body.truncate(body.len() - 64);
        let at = 2 + 16 + 32 + 32 + 8 + 16 + 2 + 1;
        body.truncate(at);
        body.push(streams.len() as u8);
        for s in &streams {
            s.write(&mut body);
        }
        match JoinRequest::decode(&resign(1, body)) {
            Err(JoinError::Malformed(w)) => assert_eq!(w.reason, reason),
            other => panic!("{reason}: {other:?}"),
        }
    }
    // A zero size is refused by the decoder.
    let mut body = start(1, 1, NOW).1.encode();
    body.truncate(2 + 16 + 32 + 32 + 8 + 16 + 2 + 1);
    body.push(1);
    body.extend_from_slice(&[0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 90]);
    assert!(matches!(
        JoinRequest::decode(&resign(1, body)),
        Err(JoinError::Malformed(w)) if w.reason == "simulcast layer size zero"
    ));
}

#[test]
fn reserved_extension_ids_are_refused_for_the_audio_level() {
    for id in [11u8, 12] {
        let mut p = params();
        p.audio_level_ext = Some(id);
        assert!(matches!(
            PendingJoin::from_parts(&device(1), &p, NOW, [0; 16], Zeroizing::new([1; 32])),
            Err(JoinError::InvalidArgument(_))
        ));
        let mut body = start(1, 1, NOW).1.encode();
        body.truncate(body.len() - 64);
        body[2 + 16 + 32 + 32 + 8 + 16 + 2] = id;
        assert!(matches!(
            JoinRequest::decode(&resign(1, body)),
            Err(JoinError::Malformed(w)) if w.reason == "audio level extension id reserved"
        ));
    }
}
