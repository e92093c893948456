//! The sans-IO media engine of hush: RTP/RTCP, jitter buffer, loss recovery, congestion control
//! and adaptive bitrate, quality statistics and the `Codec` trait.
//!
//! It never holds keys: packets leave it in the clear and are protected by `hush-srtp`.
