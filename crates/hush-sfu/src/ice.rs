//! ICE-lite on the SFU side (RFC 8445 §2.5): the SFU gathers one host candidate (its media
//! port), never sends checks, and answers the connectivity checks of its clients.
//!
//! A client's check is a STUN Binding request (RFC 8489) whose USERNAME is
//! `<SFU ufrag>:<client ufrag>` and whose MESSAGE-INTEGRITY is keyed with the SFU's password on
//! that leg. Both are derived at join ([`crate::join::HopKeys::ice_ufrag`]), so the ufrag tells
//! the driver which leg a check belongs to, and only the participant who joined can make a
//! check that verifies. The answer is a Binding success response with XOR-MAPPED-ADDRESS,
//! MESSAGE-INTEGRITY (same key) and FINGERPRINT.
//!
//! Sans-IO and allocation-light; every read of the untrusted datagram is bounds-checked.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::net::SocketAddr;

/// STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const MI_LEN: usize = 20;

/// Why a datagram was not answered as a connectivity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IceError {
    /// Not a well-formed STUN Binding request.
    #[error("malformed stun: {0}")]
    Malformed(&'static str),
    /// The FINGERPRINT attribute does not match.
    #[error("stun fingerprint mismatch")]
    Fingerprint,
    /// No MESSAGE-INTEGRITY, or it does not verify with the leg's password.
    #[error("stun message integrity does not verify")]
    Integrity,
}

/// What [`parse_check`] found in a Binding request, before its integrity is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check<'a> {
    /// The SFU-side ufrag (the part of USERNAME before the colon): names the leg.
    pub local_ufrag: &'a str,
    /// The STUN transaction id.
    pub transaction_id: [u8; 12],
    /// Whether the client nominates this path (USE-CANDIDATE).
    pub use_candidate: bool,
    /// Offset of the MESSAGE-INTEGRITY attribute.
    mi_at: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Parses a STUN Binding request as a connectivity check. Checks the header, the attribute
/// layout and the FINGERPRINT (when present), not the MESSAGE-INTEGRITY: that needs the leg's
/// password, which the ufrag leads to ([`answer_check`] verifies it).
pub fn parse_check(packet: &[u8]) -> Result<Check<'_>, IceError> {
    let malformed = IceError::Malformed;
    let msg_type = be16(packet, 0).ok_or(malformed("short"))?;
    if msg_type != BINDING_REQUEST {
        return Err(malformed("not a binding request"));
    }
    let len = usize::from(be16(packet, 2).ok_or(malformed("short"))?);
    if be32(packet, 4) != Some(MAGIC_COOKIE) {
        return Err(malformed("magic cookie"));
    }
    if len % 4 != 0 || HEADER_LEN + len != packet.len() {
        return Err(malformed("length"));
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(packet.get(8..HEADER_LEN).ok_or(malformed("short"))?);
    let mut at = HEADER_LEN;
    let mut username = None;
    let mut use_candidate = false;
    let mut mi_at = None;
    while at < packet.len() {
        let ty = be16(packet, at).ok_or(malformed("attribute header"))?;
        let alen = usize::from(be16(packet, at + 2).ok_or(malformed("attribute header"))?);
        let value = packet
            .get(at + 4..at + 4 + alen)
            .ok_or(malformed("attribute length"))?;
        let next = at + 4 + alen.div_ceil(4) * 4;
        if mi_at.is_some() && ty != ATTR_FINGERPRINT {
            // RFC 8489 §14.5: only FINGERPRINT may follow MESSAGE-INTEGRITY.
            return Err(malformed("attribute after message integrity"));
        }
        match ty {
            ATTR_USERNAME => username = Some(value),
            ATTR_USE_CANDIDATE => use_candidate = true,
            ATTR_MESSAGE_INTEGRITY => {
                if alen != MI_LEN {
                    return Err(malformed("message integrity length"));
                }
                mi_at = Some(at);
            }
            ATTR_FINGERPRINT => {
                if alen != 4 || next != packet.len() {
                    return Err(malformed("fingerprint not last"));
                }
                let want = be32(value, 0).ok_or(malformed("fingerprint"))?;
                if fingerprint(packet.get(..at).ok_or(malformed("fingerprint"))?, at) != want {
                    return Err(IceError::Fingerprint);
                }
            }
            _ => {}
        }
        at = next;
    }
    let username = username.ok_or(malformed("no username"))?;
    let username = std::str::from_utf8(username).map_err(|_| malformed("username not utf-8"))?;
    let (local_ufrag, _remote) = username
        .split_once(':')
        .ok_or(malformed("username without colon"))?;
    let mi_at = mi_at.ok_or(IceError::Integrity)?;
    Ok(Check {
        local_ufrag,
        transaction_id,
        use_candidate,
        mi_at,
    })
}

/// Verifies the check's MESSAGE-INTEGRITY with the leg's password and, if it verifies, builds
/// the Binding success response to send back to `from` (the address the check came from).
pub fn answer_check(
    packet: &[u8],
    check: &Check<'_>,
    pwd: &str,
    from: SocketAddr,
) -> Result<Vec<u8>, IceError> {
    let covered = packet.get(..check.mi_at).ok_or(IceError::Integrity)?;
    let mi = packet
        .get(check.mi_at + 4..check.mi_at + 4 + MI_LEN)
        .ok_or(IceError::Integrity)?;
    let mac = integrity_mac(pwd, covered, check.mi_at + 4 + MI_LEN)?;
    mac.verify_slice(mi).map_err(|_| IceError::Integrity)?;

    let mut out = Vec::with_capacity(HEADER_LEN + 12 + 24 + 24 + 8);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&check.transaction_id);
    // XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    let port = from.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match from {
        SocketAddr::V4(a) => {
            out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
            out.extend_from_slice(&8u16.to_be_bytes());
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            let ip = u32::from(*a.ip()) ^ MAGIC_COOKIE;
            out.extend_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(&check.transaction_id);
            for (o, k) in a.ip().octets().iter().zip(key) {
                out.push(o ^ k);
            }
        }
    }
    let mi_at = out.len();
    let mac = integrity_mac(pwd, &out, mi_at + 4 + MI_LEN)?
        .finalize()
        .into_bytes();
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&(MI_LEN as u16).to_be_bytes());
    out.extend_from_slice(&mac);
    let fp_at = out.len();
    let fp = fingerprint(&out, fp_at);
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&fp.to_be_bytes());
    set_len(&mut out);
    Ok(out)
}

/// Builds a connectivity check as a client's ICE agent sends it to the SFU: a Binding request
/// with USERNAME `<sfu_ufrag>:<client_ufrag>`, USE-CANDIDATE, MESSAGE-INTEGRITY under the SFU's
/// `pwd` and FINGERPRINT. For tools and tests that talk to the SFU without a full ICE agent.
pub fn build_check(
    sfu_ufrag: &str,
    client_ufrag: &str,
    pwd: &str,
    transaction_id: [u8; 12],
) -> Result<Vec<u8>, IceError> {
    let username = format!("{sfu_ufrag}:{client_ufrag}");
    let ulen = u16::try_from(username.len()).map_err(|_| IceError::Malformed("username"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + username.len() + 4 + 4 + 24 + 8);
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&transaction_id);
    out.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    out.extend_from_slice(&ulen.to_be_bytes());
    out.extend_from_slice(username.as_bytes());
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    let mi_at = out.len();
    let mac = integrity_mac(pwd, &out, mi_at + 4 + MI_LEN)?
        .finalize()
        .into_bytes();
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&(MI_LEN as u16).to_be_bytes());
    out.extend_from_slice(&mac);
    let fp_at = out.len();
    let fp = fingerprint(&out, fp_at);
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&fp.to_be_bytes());
    set_len(&mut out);
    Ok(out)
}

fn set_len(msg: &mut [u8]) {
    let len = (msg.len() - HEADER_LEN) as u16;
    if let Some(l) = msg.get_mut(2..4) {
        l.copy_from_slice(&len.to_be_bytes());
    }
}

/// HMAC-SHA1 keyed with the short-term password over `covered` (everything before the
/// MESSAGE-INTEGRITY attribute) with the header's length field set as if the message ended
/// right after MESSAGE-INTEGRITY (`end` bytes in all), RFC 8489 §14.5.
fn integrity_mac(pwd: &str, covered: &[u8], end: usize) -> Result<Hmac<Sha1>, IceError> {
    let mut mac = Hmac::<Sha1>::new_from_slice(pwd.as_bytes()).map_err(|_| IceError::Integrity)?;
    let head = covered.get(..HEADER_LEN).ok_or(IceError::Integrity)?;
    mac.update(&head[..2]);
    mac.update(&((end - HEADER_LEN) as u16).to_be_bytes());
    mac.update(&head[4..]);
    mac.update(covered.get(HEADER_LEN..).ok_or(IceError::Integrity)?);
    Ok(mac)
}

/// FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message up to the attribute, with the length
/// field covering the attribute (`at + 8` bytes in all), XORed with `0x5354554E`.
fn fingerprint(before: &[u8], at: usize) -> u32 {
    let mut crc = Crc32::new();
    if let Some(head) = before.get(..HEADER_LEN) {
        crc.update(&head[..2]);
        crc.update(&((at + 8 - HEADER_LEN) as u16).to_be_bytes());
        crc.update(&head[4..]);
        crc.update(before.get(HEADER_LEN..).unwrap_or_default());
    }
    crc.finish() ^ FINGERPRINT_XOR
}

/// CRC-32 as in ISO-HDLC / zlib (reflected polynomial 0xEDB88320), bitwise.
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Self(0xFFFF_FFFF)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u32::from(b);
            for _ in 0..8 {
                let mask = (self.0 & 1).wrapping_neg();
                self.0 = (self.0 >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1 sample request (short-term credentials, password "VOkJxbRl1RmTxUk/WvJxBt").
    const RFC5769_REQUEST: &str = concat!(
        "000100582112a442b7e7a701bc34d686fa87dfae",
        "802200105354554e207465737420636c69656e74", // SOFTWARE "STUN test client"
        "00240004",
        "6e0001ff",
        "80290008",
        "932ff9b151263b36",
        "000600096576746a3a68367659202020", // USERNAME "evtj:h6vY" + padding
        "00080014",
        "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2",
        "80280004",
        "e57a3bcf",
    );

    fn rfc_request() -> Vec<u8> {
        hex::decode(RFC5769_REQUEST.replace(' ', "")).unwrap_or_default()
    }

    #[test]
    fn crc32_check_value() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_request_verifies_and_is_answered() {
        let req = rfc_request();
        assert_eq!(req.len(), 108);
        let check = parse_check(&req).unwrap();
        assert_eq!(check.local_ufrag, "evtj");
        assert!(!check.use_candidate);
        let from: SocketAddr = "127.0.0.1:32853".parse().unwrap();
        let resp = answer_check(&req, &check, "VOkJxbRl1RmTxUk/WvJxBt", from).unwrap();
        // The response is well formed, carries our transaction id and verifies with the same
        // password (re-checked by parsing it as a request-shaped message).
        assert_eq!(be16(&resp, 0), Some(BINDING_SUCCESS));
        assert_eq!(&resp[8..20], &req[8..20]);
        assert_eq!(
            usize::from(be16(&resp, 2).unwrap()) + HEADER_LEN,
            resp.len()
        );
        let mi_at = resp.len() - 8 - 24;
        let mac = integrity_mac("VOkJxbRl1RmTxUk/WvJxBt", &resp[..mi_at], mi_at + 24).unwrap();
        mac.verify_slice(&resp[mi_at + 4..mi_at + 24]).unwrap();
        let fp = be32(&resp, resp.len() - 4).unwrap();
        assert_eq!(fingerprint(&resp[..resp.len() - 8], resp.len() - 8), fp);
        // XOR-MAPPED-ADDRESS decodes back to the source address.
        let port = be16(&resp, 26).unwrap() ^ 0x2112;
        let ip = be32(&resp, 28).unwrap() ^ MAGIC_COOKIE;
        assert_eq!(port, 32853);
        assert_eq!(std::net::Ipv4Addr::from(ip), std::net::Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn built_checks_verify_only_under_their_password() {
        let check = build_check("sfuufrag", "client", "the password", [5; 12]).unwrap();
        let parsed = parse_check(&check).unwrap();
        assert_eq!(parsed.local_ufrag, "sfuufrag");
        assert!(parsed.use_candidate);
        let from: SocketAddr = "[::1]:4000".parse().unwrap();
        assert!(answer_check(&check, &parsed, "the password", from).is_ok());
        assert_eq!(
            answer_check(&check, &parsed, "another password", from),
            Err(IceError::Integrity)
        );
    }

    #[test]
    fn wrong_password_or_tampering_is_refused() {
        let req = rfc_request();
        let check = parse_check(&req).unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            answer_check(&req, &check, "wrong password", from),
            Err(IceError::Integrity)
        );
        let mut bad = req.clone();
        bad[44] ^= 1; // inside the PRIORITY value
        assert_eq!(parse_check(&bad), Err(IceError::Fingerprint));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(check) = parse_check(&bytes) {
                let _ = answer_check(&bytes, &check, "pwd", "[::1]:9".parse().unwrap());
            }
        }
    }
}
