//! RFC 7983 demultiplexing and TURN ChannelData parsing of arbitrary datagrams.
#![no_main]

use hush_net::demux::{classify, is_stun, parse_channel_data, stun_transaction_id, PacketKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    if is_stun(data) {
        assert_eq!(kind, PacketKind::Stun);
        assert!(stun_transaction_id(data).is_some());
    }
    if let Some(cd) = parse_channel_data(data) {
        assert_eq!(kind, PacketKind::ChannelData);
        assert!(cd.payload.len() + 4 <= data.len());
        assert!(data.len() - cd.payload.len() - 4 <= 3);
    }
});
