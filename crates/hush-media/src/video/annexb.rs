//! H.264 Annex B byte streams (ITU-T H.264 Annex B): NAL units behind `00 00 01` start codes.

/// NAL unit type of a non-IDR coded slice.
pub const NAL_SLICE: u8 = 1;
/// NAL unit type of an IDR coded slice (a keyframe).
pub const NAL_IDR: u8 = 5;
/// NAL unit type of supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;
/// RTP aggregation packet STAP-A (RFC 6184 §5.7.1).
pub const NAL_STAP_A: u8 = 24;
/// RTP fragmentation unit FU-A (RFC 6184 §5.8).
pub const NAL_FU_A: u8 = 28;

/// The `nal_unit_type` of a NAL unit (its first byte's low five bits); `None` when empty.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// The NAL units of an Annex B byte stream, without their start codes (3 or 4 bytes) and
/// trailing zero bytes. Bytes before the first start code and empty units are skipped.
pub fn annexb_nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = find_start(stream).map(|(_, after)| &stream[after..]);
    std::iter::from_fn(move || loop {
        let cur = rest?;
        let (nal, next) = match find_start(cur) {
            Some((at, after)) => (&cur[..at], Some(&cur[after..])),
            None => (cur, None),
        };
        rest = next;
        let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        if end > 0 {
            return Some(&nal[..end]);
        }
    })
}

/// Position of the first `00 00 01` and the index just after it.
fn find_start(s: &[u8]) -> Option<(usize, usize)> {
    s.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|at| (at, at + 3))
}

/// Whether an Annex B access unit holds an IDR slice.
pub fn contains_idr(access_unit: &[u8]) -> bool {
    annexb_nal_units(access_unit).any(|n| nal_type(n) == Some(NAL_IDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let s = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 9, 0, 0, 1,
        ];
        let nals: Vec<&[u8]> = annexb_nal_units(&s).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 9]]);
        assert!(contains_idr(&s));
        assert!(!contains_idr(&s[..10]));
        assert_eq!(nal_type(nals[0]), Some(NAL_SPS));
    }

    #[test]
    fn garbage_without_start_code_has_no_units() {
        assert_eq!(annexb_nal_units(&[1, 2, 3, 0, 0]).count(), 0);
        assert_eq!(annexb_nal_units(&[]).count(), 0);
        assert_eq!(annexb_nal_units(&[0, 0, 1, 0, 0, 1]).count(), 0);
    }
}
