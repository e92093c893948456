//! Demultiplexing of datagrams that share one UDP 5-tuple (RFC 7983, RFC 8656 §12).
//!
//! Media (SRTP/SRTCP), STUN (connectivity checks, TURN control) and TURN ChannelData arrive on the
//! same socket. The first byte tells them apart:
//!
//! | first byte | protocol |
//! |---|---|
//! | 0–3 | STUN (and the 32-bit magic cookie at offset 4) |
//! | 16–19 | ZRTP |
//! | 20–63 | DTLS |
//! | 64–79 | TURN ChannelData |
//! | 128–191 | RTP / RTCP |
//!
//! These parsers look at untrusted bytes: they never index out of bounds and never panic.

/// STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length.
const STUN_HEADER_LEN: usize = 20;
/// ChannelData header length.
const CHANNEL_HEADER_LEN: usize = 4;

/// What kind of packet a datagram is, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketKind {
    /// A STUN message (header present, magic cookie matches, length consistent).
    Stun,
    /// ZRTP (not used by hush; dropped).
    Zrtp,
    /// DTLS (not used by hush; dropped).
    Dtls,
    /// TURN ChannelData.
    ChannelData,
    /// RTP or RTCP (SRTP/SRTCP in hush): handed to the application unchanged.
    Media,
    /// Anything else: dropped.
    Unknown,
}

/// Classifies a datagram by RFC 7983's first-byte ranges, checking STUN's fixed header.
pub fn classify(packet: &[u8]) -> PacketKind {
    let Some(&first) = packet.first() else {
        return PacketKind::Unknown;
    };
    match first {
        0..=3 => {
            if is_stun(packet) {
                PacketKind::Stun
            } else {
                PacketKind::Unknown
            }
        }
        16..=19 => PacketKind::Zrtp,
        20..=63 => PacketKind::Dtls,
        64..=79 => PacketKind::ChannelData,
        128..=191 => PacketKind::Media,
        _ => PacketKind::Unknown,
    }
}

/// Whether `packet` has a plausible STUN header: first byte 0–3 (RFC 7983's STUN range), magic
/// cookie, a body length that is a multiple of 4 and matches the datagram.
pub fn is_stun(packet: &[u8]) -> bool {
    let Some(header) = packet.get(..STUN_HEADER_LEN) else {
        return false;
    };
    if header[0] > 3 {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    cookie == MAGIC_COOKIE && len & 3 == 0 && STUN_HEADER_LEN + len == packet.len()
}

/// The STUN transaction id of a message whose header [`is_stun`] accepted.
pub fn stun_transaction_id(packet: &[u8]) -> Option<[u8; 12]> {
    let id = packet.get(8..STUN_HEADER_LEN)?;
    let mut out = [0u8; 12];
    out.copy_from_slice(id);
    Some(out)
}

/// A parsed TURN ChannelData message (RFC 8656 §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000–0x4FFF.
    pub channel: u16,
    /// The application data it carries.
    pub payload: &'a [u8],
}

/// Parses a ChannelData message. Over UDP the datagram may carry up to 3 bytes of padding after
/// the payload; anything else that does not fit is rejected.
pub fn parse_channel_data(packet: &[u8]) -> Option<ChannelData<'_>> {
    let header = packet.get(..CHANNEL_HEADER_LEN)?;
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !(0x4000..=0x4FFF).contains(&channel) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let rest = packet.get(CHANNEL_HEADER_LEN..)?;
    let payload = rest.get(..len)?;
    if rest.len() - len > 3 {
        return None;
    }
    Some(ChannelData { channel, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_header(len: u16) -> Vec<u8> {
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        p.extend_from_slice(&[7u8; 12]);
        p.resize(STUN_HEADER_LEN + usize::from(len), 0);
        p
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&stun_header(0)), PacketKind::Stun);
        assert_eq!(classify(&stun_header(8)), PacketKind::Stun);
        assert_eq!(classify(&[0x80, 0x60, 0, 1]), PacketKind::Media);
        assert_eq!(classify(&[0xBF]), PacketKind::Media);
        assert_eq!(classify(&[0x40, 0x00, 0, 0]), PacketKind::ChannelData);
        assert_eq!(classify(&[22, 3, 3]), PacketKind::Dtls);
        assert_eq!(classify(&[16]), PacketKind::Zrtp);
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[200]), PacketKind::Unknown);
        assert_eq!(classify(&[4]), PacketKind::Unknown);
    }

    #[test]
    fn stun_needs_cookie_and_consistent_length() {
        let mut p = stun_header(4);
        assert!(is_stun(&p));
        p[4] ^= 1;
        assert!(!is_stun(&p));
        let mut q = stun_header(4);
        q.push(0);
        assert!(!is_stun(&q));
        assert!(!is_stun(&stun_header(4)[..19]));
        assert_eq!(classify(&q), PacketKind::Unknown);
        // The magic cookie alone does not make STUN outside the 0–3 range (fuzz finding).
        let mut z = stun_header(0);
        z[0] = 0x10;
        assert!(!is_stun(&z));
        assert_eq!(classify(&z), PacketKind::Zrtp);
        assert_eq!(stun_transaction_id(&stun_header(0)), Some([7u8; 12]));
        assert_eq!(stun_transaction_id(&[0u8; 10]), None);
    }

    #[test]
    fn channel_data_parses_and_rejects() {
        let p = [0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0];
        let cd = parse_channel_data(&p).unwrap();
        assert_eq!(cd.channel, 0x4001);
        assert_eq!(cd.payload, &[1, 2, 3]);
        // Truncated payload.
        assert!(parse_channel_data(&[0x40, 0x01, 0x00, 0x05, 1, 2]).is_none());
        // Too much trailing data.
        assert!(parse_channel_data(&[0x40, 0x01, 0x00, 0x00, 1, 2, 3, 4]).is_none());
        // Channel out of range.
        assert!(parse_channel_data(&[0x50, 0x00, 0x00, 0x00]).is_none());
        assert!(parse_channel_data(&[0x40]).is_none());
    }
}
