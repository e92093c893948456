//! RTCP compound parsing (hush-media): never panics; what parses re-serializes equal.
#![no_main]
use hush_media::rtcp::{parse_compound, write_compound, RtcpPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = parse_compound(data) {
        let known: Vec<RtcpPacket> = packets
            .into_iter()
            .filter(|p| !matches!(p, RtcpPacket::Unknown { .. }))
            .collect();
        if known.is_empty() {
            return;
        }
        let again = parse_compound(&write_compound(&known)).expect("re-parse of written RTCP");
        assert_eq!(again.len(), known.len());
    }
});
