use super::*;
use proptest::prelude::*;

fn block(seed: u32) -> ReportBlock {
    ReportBlock {
        ssrc: seed,
        fraction_lost: seed as u8,
        cumulative_lost: -5,
        highest_seq: seed.wrapping_mul(3),
        jitter: 77,
        last_sr: 0x1234_5678,
        delay_since_last_sr: 65536,
    }
}

#[test]
fn compound_round_trip() {
    let packets = vec![
        RtcpPacket::SenderReport(SenderReport {
            ssrc: 1,
            ntp_time: 0x0102_0304_0506_0708,
            rtp_time: 960,
            packet_count: 10,
            octet_count: 1000,
            reports: vec![block(9)],
        }),
        RtcpPacket::Sdes(Sdes {
            chunks: vec![(1, b"hush".to_vec())],
        }),
        RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 2,
            reports: vec![block(3), block(4)],
        }),
        RtcpPacket::Nack(Nack {
            sender_ssrc: 2,
            media_ssrc: 1,
            lost: vec![65535, 0, 3, 40],
        }),
        RtcpPacket::Pli(Pli {
            sender_ssrc: 2,
            media_ssrc: 1,
        }),
        RtcpPacket::Fir(Fir {
            sender_ssrc: 2,
            entries: vec![(1, 7), (9, 255)],
        }),
        RtcpPacket::TransportFeedback(TransportFeedback {
            sender_ssrc: 2,
            media_ssrc: 1,
            base_seq: 65530,
            reference_time: 0xABCDEF,
            feedback_count: 7,
            packets: vec![Some(4), None, Some(-3), Some(300), Some(0), None, None],
        }),
        RtcpPacket::Bye(Bye { ssrcs: vec![1, 2] }),
    ];
    let bytes = write_compound(&packets);
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(parse_compound(&bytes).unwrap(), packets);
}

#[test]
fn rejects_malformed() {
    assert!(parse_compound(&[]).is_err());
    // Length says two words, only one present.
    assert!(parse_compound(&[0x80, 201, 0, 2, 0, 0, 0, 1]).is_err());
    // RR promises a report block that is missing.
    assert!(parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]).is_err());
    // Bad version.
    assert!(parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 1]).is_err());
    // Transport feedback with a reserved run-length symbol.
    let fb = [
        0x8F, 205, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 1, 0, 0,
    ];
    assert!(parse_compound(&fb).is_err());
}

#[test]
fn unknown_types_are_skipped() {
    let mut bytes = vec![0x80, 204, 0, 1, 1, 2, 3, 4];
    RtcpPacket::Pli(Pli {
        sender_ssrc: 1,
        media_ssrc: 2,
    })
    .write(&mut bytes);
    let p = parse_compound(&bytes).unwrap();
    assert_eq!(p.len(), 2);
    assert!(matches!(
        p[0],
        RtcpPacket::Unknown {
            packet_type: 204,
            ..
        }
    ));
}

fn arb_feedback() -> impl Strategy<Value = TransportFeedback> {
    (
        any::<u16>(),
        0u32..(1 << 24),
        any::<u8>(),
        proptest::collection::vec(
            prop_oneof![
                Just(None),
                (0i16..=255).prop_map(Some),
                any::<i16>().prop_map(Some)
            ],
            0..200,
        ),
    )
        .prop_map(
            |(base_seq, reference_time, feedback_count, packets)| TransportFeedback {
                sender_ssrc: 5,
                media_ssrc: 6,
                base_seq,
                reference_time,
                feedback_count,
                packets,
            },
        )
}

proptest! {
    #[test]
    fn transport_feedback_round_trip(fb in arb_feedback()) {
        let p = RtcpPacket::TransportFeedback(fb);
        let bytes = write_compound(std::slice::from_ref(&p));
        prop_assert_eq!(parse_compound(&bytes).unwrap(), vec![p]);
    }

    #[test]
    fn nack_round_trip(first in any::<u16>(), gaps in proptest::collection::vec(1u16..40, 0..30)) {
        let mut lost = vec![first];
        for g in gaps {
            let last = *lost.last().unwrap();
            lost.push(last.wrapping_add(g));
        }
        let p = RtcpPacket::Nack(Nack { sender_ssrc: 1, media_ssrc: 2, lost });
        let bytes = write_compound(std::slice::from_ref(&p));
        prop_assert_eq!(parse_compound(&bytes).unwrap(), vec![p]);
    }

    #[test]
    fn report_round_trip(ssrc in any::<u32>(), n in 0usize..31, lost in -(1i32 << 23)..(1 << 23)) {
        let reports = (0..n as u32).map(|i| ReportBlock { cumulative_lost: lost, ..block(i) }).collect();
        let p = RtcpPacket::ReceiverReport(ReceiverReport { ssrc, reports });
        let bytes = write_compound(std::slice::from_ref(&p));
        prop_assert_eq!(parse_compound(&bytes).unwrap(), vec![p]);
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_compound(&bytes);
    }
}
