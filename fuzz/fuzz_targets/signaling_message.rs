//! Every signaling message decode: the sealed `Content` (which carries each call message) and
//! each raw protobuf message type on its own.
#![no_main]

use hush_signaling::proto::signaling as pb;
use hush_signaling::Content;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = Content::decode(data) {
        let again = Content::decode(&content.encode()).expect("re-encoded content decodes");
        assert_eq!(again, content);
    }
    // The first byte picks a raw message type; the rest is its body.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => drop(pb::Offer::decode(body)),
        1 => drop(pb::Answer::decode(body)),
        2 => drop(pb::IceCandidates::decode(body)),
        3 => drop(pb::Hangup::decode(body)),
        4 => drop(pb::Busy::decode(body)),
        5 => drop(pb::Ringing::decode(body)),
        6 => drop(pb::IceParameters::decode(body)),
        _ => drop(pb::Envelope::decode(body)),
    }
});
