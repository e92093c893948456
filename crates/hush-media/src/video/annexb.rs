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

/// The picture size an access unit's sequence parameter set declares (ITU-T H.264 §7.3.2.1.1,
/// cropping applied), from its first SPS; `None` without one, or when the SPS is malformed.
/// Lets a receiver of encoded frames know the picture size without decoding.
pub fn sps_dimensions(access_unit: &[u8]) -> Option<(u32, u32)> {
    let sps = annexb_nal_units(access_unit).find(|n| nal_type(n) == Some(NAL_SPS))?;
    parse_sps_dimensions(sps.get(1..)?)
}

/// Profiles whose SPS carries the chroma format and bit depths (§7.3.2.1.1).
const HIGH_PROFILES: [u8; 12] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134];

fn parse_sps_dimensions(rbsp_with_epb: &[u8]) -> Option<(u32, u32)> {
    // Emulation prevention: `00 00 03` stands for `00 00`.
    let mut rbsp = Vec::with_capacity(rbsp_with_epb.len().min(256));
    let mut zeros = 0;
    for &b in rbsp_with_epb.iter().take(256) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits {
        data: &rbsp,
        pos: 0,
    };
    let profile = r.bits(8)? as u8;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if HIGH_PROFILES.contains(&profile) || profile == 135 {
        chroma_format = r.ue()?;
        if chroma_format > 3 {
            return None;
        }
        if chroma_format == 3 {
            r.bits(1)?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    r.skip_scaling_list(if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bits(1)? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (sub_w, sub_h) = match chroma_format {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        crop_x = left.checked_add(right)?.checked_mul(sub_w)?;
        crop_y = top
            .checked_add(bottom)?
            .checked_mul(sub_h * (2 - frame_mbs_only))?;
    }
    let width = width_mbs.checked_mul(16)?.checked_sub(crop_x)?;
    let height = height_units
        .checked_mul(16 * (2 - frame_mbs_only))?
        .checked_sub(crop_y)?;
    (width > 0 && height > 0).then_some((width, height))
}

/// A bit reader over an RBSP; every read is bounds-checked.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    /// Exp-Golomb unsigned (§9.1); `None` past 31 leading zeros.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    /// Exp-Golomb signed (§9.1.1).
    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    fn skip_scaling_list(&mut self, size: usize) -> Option<()> {
        let (mut last, mut next) = (8i64, 8i64);
        for _ in 0..size {
            if next != 0 {
                next = (last + self.se()? + 256).rem_euclid(256);
            }
            if next != 0 {
                last = next;
            }
        }
        Some(())
    }
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

    /// A Baseline SPS access unit of 40x23 macroblocks with the given cropping
    /// (left, right, top, bottom), followed by a PPS. Built by hand: profile 66,
    /// level 30, id 0, log2_max_frame_num 4 (ue 0), poc type 2, 1 ref frame, no gaps,
    /// frame_mbs_only, direct 8x8.
    fn sps_access_unit(crop: [u32; 4]) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.put(66, 8);
        w.put(0xc0, 8);
        w.put(30, 8);
        w.ue(0);
        w.ue(0);
        w.ue(2);
        w.ue(1);
        w.put(0, 1);
        w.ue(39);
        w.ue(22);
        w.put(1, 1);
        w.put(1, 1);
        w.put(1, 1);
        for c in crop {
            w.ue(c);
        }
        w.put(1, 1); // rbsp stop bit
        let mut au = vec![0, 0, 0, 1, 0x67];
        au.extend(w.finish());
        au.extend([0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        au
    }

    #[test]
    fn sps_dimensions_of_common_sizes() {
        // 640x360 as OpenH264 writes it: 8 rows cropped at the bottom (4 x 2).
        let au = sps_access_unit([0, 0, 0, 4]);
        assert_eq!(sps_dimensions(&au), Some((640, 360)));
        // Truncated anywhere: no size, no panic.
        for cut in 0..au.len() {
            let _ = sps_dimensions(&au[..cut]);
        }
        assert_eq!(sps_dimensions(&[0, 0, 1, 0x65, 1, 2]), None);
    }

    #[test]
    fn sps_with_absurd_cropping_has_no_size() {
        // Found by the media_h264_decode fuzz target: crop offsets whose product with
        // the chroma unit overflowed u32 and panicked.
        for crop in [
            [0x7fff_ffff, 0, 0, 0],
            [0, 0, 0x7fff_ffff, 0x7fff_ffff],
            [0, 0, 0, 0x7fff_ffff],
            [320, 0, 0, 0], // crops the whole width away
        ] {
            assert_eq!(sps_dimensions(&sps_access_unit(crop)), None, "{crop:?}");
        }
        // The fuzzer's input itself (fuzz/corpus/media_h264_decode/sps-crop-overflow,
        // without its 2-byte record length).
        let found = [
            0, 0, 0, 1, 71, 103, 0, 0, 0, 0, 0, 2, 104, 255, 52, 86, 0, 16, 0, 0, 0, 165, 1, 104,
            206, 60, 128, 0, 0, 0, 43, 1, 101, 184, 0, 4, 19, 255, 255, 1, 101, 184, 0, 4, 19, 255,
            255, 238, 255, 126, 191, 170, 215, 27, 94, 64, 191, 255, 251, 101, 6, 214, 17, 0, 129,
            64, 85, 40, 27, 94, 64, 191, 255, 251, 101, 0, 42, 251,
        ];
        assert_eq!(sps_dimensions(&found), None);
    }

    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn put(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                if let Some(last) = self.bytes.last_mut() {
                    *last |= bit << (7 - self.bits % 8);
                }
                self.bits += 1;
            }
        }

        fn ue(&mut self, v: u32) {
            let x = v + 1;
            let len = 32 - x.leading_zeros();
            self.put(0, len - 1);
            self.put(x, len);
        }

        fn finish(self) -> Vec<u8> {
            self.bytes
        }
    }
}
