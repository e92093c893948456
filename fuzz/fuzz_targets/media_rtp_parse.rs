//! RTP parsing (hush-media): never panics; what parses re-serializes to an equal packet.
#![no_main]
use hush_media::rtp::RtpPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(data) {
        let again = RtpPacket::parse(&p.to_vec()).expect("re-parse of written packet");
        assert_eq!(again, p);
        let _ = hush_media::red::decode(&p.payload);
    }
});
