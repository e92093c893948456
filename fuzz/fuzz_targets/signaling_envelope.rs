//! Envelope decode as the client runs it on what a relay delivers: the relay transport's reader
//! decodes a `ServerFrame` and turns its `Deliver` envelope into an [`Envelope`] with
//! `decode_server_frame` and `Envelope::from_proto` (`transport/relay.rs`, `Dispatcher::handle`).
//! The input is the envelope's bytes, wrapped in a `Deliver` frame the way the relay sends it
//! (`encode_deliver_frame`). `Envelope::decode`, for app-driven transports, must agree.
#![no_main]

use hush_signaling::frame::{decode_server_frame, encode_deliver_frame};
use hush_signaling::proto::relay::server_frame::Frame;
use hush_signaling::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let direct = Envelope::decode(data);
    let framed = encode_deliver_frame(7, data);
    let delivered = match decode_server_frame(&framed) {
        Ok(Frame::Deliver(d)) => {
            assert_eq!(d.delivery_id, 7);
            // The client skips a delivery without an envelope; an empty message decodes to
            // `None` only if the field is absent, which the wrapper never makes it.
            let envelope = d.envelope.expect("wrapped envelope present");
            Some(Envelope::from_proto(envelope))
        }
        Ok(other) => panic!("a deliver frame decoded as {other:?}"),
        // prost's nesting limit (100 levels, counted from the outermost message) is reached two
        // levels sooner inside the frame: an envelope nested ~100 deep in unknown groups can
        // decode alone and not inside a Deliver. Hostile either way; both paths only refuse.
        Err(_) if nesting_limit(&framed) => return,
        // The nested envelope did not decode: the reader closes the connection.
        Err(_) => None,
    };
    match (&direct, delivered) {
        (Ok(a), Some(Ok(b))) => {
            assert_eq!(a, &b);
            // A valid envelope re-encodes to something that decodes to the same envelope.
            let again = Envelope::decode(&a.encode()).expect("re-encoded envelope decodes");
            assert_eq!(&again, a);
        }
        (Err(_), Some(Err(_)) | None) => {}
        (direct, delivered) => {
            panic!("decode paths disagree: direct {direct:?}, delivered {delivered:?}")
        }
    }
});

/// Whether prost refused `framed` for nesting too deep (its error says so; hush's `Error`
/// keeps only "protobuf decode error").
fn nesting_limit(framed: &[u8]) -> bool {
    use prost::Message;
    hush_signaling::proto::relay::ServerFrame::decode(framed)
        .is_err_and(|e| e.to_string().contains("recursion limit"))
}
