//! Replay windows and rollover-counter estimation.
//!
//! A [`ReplayWindow`] remembers the highest packet index accepted and which of the `size`
//! indices just below it were seen, in a ring of 64-bit words (the layout WireGuard uses for its
//! nonce window): at least one word more than the window needs (rounded up to a power of two,
//! so the ring index is a mask) lets the ring advance a word at a time without ever overwriting
//! a bit still inside the window. Nothing is allocated per packet.

/// Largest replay window this crate accepts, in packets.
pub(crate) const MAX_WINDOW: usize = 32_768;

/// Outcome of a failed replay check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The index was already accepted.
    Replayed,
    /// The index is behind the window.
    TooOld,
}

/// Per-SSRC replay window over packet indices.
#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// Highest index accepted.
    max: u64,
    /// Window length in packets (a multiple of 64).
    size: u64,
    /// Ring of at least `size / 64 + 1` words, a power of two; bit `i % 64` of word
    /// `(i / 64) & mask` is index `i`.
    bits: Box<[u64]>,
    /// Number of words minus one.
    mask: u64,
}

impl ReplayWindow {
    /// A window of `size` packets (a multiple of 64, checked by the config) whose first accepted
    /// index is `first`.
    pub(crate) fn new(size: usize, first: u64) -> Self {
        let words = (size / 64 + 1).next_power_of_two();
        let mut w = Self {
            max: first,
            size: size as u64,
            bits: vec![0u64; words].into_boxed_slice(),
            mask: words as u64 - 1,
        };
        w.set(first);
        w
    }

    /// Highest index accepted so far.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    fn word_of(&self, index: u64) -> usize {
        // Masked to the number of words, so the result fits in usize and indexes `bits`.
        ((index >> 6) & self.mask) as usize
    }

    fn set(&mut self, index: u64) {
        let w = self.word_of(index);
        self.bits[w] |= 1 << (index & 63);
    }

    /// Whether `index` may be accepted. Does not change the window.
    pub(crate) fn check(&self, index: u64) -> Result<(), Reject> {
        if index > self.max {
            return Ok(());
        }
        if self.max - index >= self.size {
            return Err(Reject::TooOld);
        }
        if self.bits[self.word_of(index)] & (1 << (index & 63)) != 0 {
            return Err(Reject::Replayed);
        }
        Ok(())
    }

    /// Records `index` as accepted. Call only after [`check`](Self::check) passed and the
    /// packet authenticated.
    pub(crate) fn accept(&mut self, index: u64) {
        if index > self.max {
            let current = self.max >> 6;
            let target = index >> 6;
            let clear = (target - current).min(self.mask + 1);
            for step in 1..=clear {
                let w = ((current + step) & self.mask) as usize;
                self.bits[w] = 0;
            }
            self.max = index;
        }
        self.set(index);
    }
}

/// Largest 48-bit SRTP packet index.
pub(crate) const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;

/// Estimates the 48-bit packet index of sequence number `seq` given the highest index seen so
/// far (RFC 3711 §3.3.1 and Appendix A): the guess is the one of `ROC - 1`, `ROC`, `ROC + 1`
/// that puts the packet closest to `max`.
///
/// Returns `None` when the guess is `ROC - 1` with a ROC of 0 (a packet from before the stream
/// began) or would pass 2^48 (the ROC is exhausted).
pub(crate) fn estimate_index(max: u64, seq: u16) -> Option<u64> {
    let roc = max >> 16;
    let s_l = (max & 0xffff) as u16;
    let v = if s_l < 0x8000 {
        if u32::from(seq) > u32::from(s_l) + 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if u32::from(s_l) - 0x8000 > u32::from(seq) {
        roc + 1
    } else {
        roc
    };
    let index = (v << 16) | u64::from(seq);
    (index <= MAX_SRTP_INDEX).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_in_order_and_rejects_duplicates() {
        let mut w = ReplayWindow::new(64, 10);
        assert_eq!(w.check(10), Err(Reject::Replayed));
        for i in 11..200 {
            assert_eq!(w.check(i), Ok(()));
            w.accept(i);
            assert_eq!(w.check(i), Err(Reject::Replayed));
        }
        assert_eq!(w.max(), 199);
        // 199 - 136 = 63 is the oldest index inside a window of 64.
        assert_eq!(w.check(136), Err(Reject::Replayed));
        assert_eq!(w.check(135), Err(Reject::TooOld));
    }

    #[test]
    fn out_of_order_inside_window() {
        let mut w = ReplayWindow::new(128, 1000);
        w.accept(1100);
        for i in (1001..1100).rev() {
            assert_eq!(w.check(i), Ok(()), "{i}");
            w.accept(i);
        }
        for i in 1000..=1100 {
            assert_eq!(w.check(i), Err(Reject::Replayed), "{i}");
        }
        assert_eq!(w.check(1100 - 128), Err(Reject::TooOld));
    }

    #[test]
    fn large_jump_clears_the_ring() {
        let mut w = ReplayWindow::new(1024, 0);
        for i in 0..1024 {
            w.accept(i);
        }
        w.accept(1_000_000);
        for i in 1_000_000 - 1023..1_000_000 {
            assert_eq!(w.check(i), Ok(()), "{i}");
        }
        assert_eq!(w.check(1_000_000 - 1024), Err(Reject::TooOld));
    }

    /// The ring must agree with a plain set-based model for any sequence of indices.
    #[test]
    fn matches_a_simple_model() {
        use std::collections::BTreeSet;
        let mut state = 0x1234_5678_u64;
        for size in [64usize, 128, 1024] {
            let mut w = ReplayWindow::new(size, 5000);
            let mut seen = BTreeSet::from([5000u64]);
            let mut max = 5000u64;
            for _ in 0..20_000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let delta = (state >> 33) % (size as u64 * 3);
                let i = (max + size as u64).saturating_sub(delta);
                let expect = if i > max {
                    Ok(())
                } else if max - i >= size as u64 {
                    Err(Reject::TooOld)
                } else if seen.contains(&i) {
                    Err(Reject::Replayed)
                } else {
                    Ok(())
                };
                assert_eq!(w.check(i), expect, "size {size} index {i} max {max}");
                if expect.is_ok() {
                    w.accept(i);
                    seen.insert(i);
                    max = max.max(i);
                }
            }
        }
    }

    #[test]
    fn index_estimation_rfc3711_appendix_a() {
        // In order.
        assert_eq!(estimate_index(0x0000_1000, 0x1001), Some(0x0000_1001));
        // Wrap forward: highest 65535, next 0 is ROC + 1.
        assert_eq!(estimate_index(0x0000_ffff, 0), Some(0x0001_0000));
        assert_eq!(estimate_index(0x0003_fff0, 5), Some(0x0004_0005));
        // Late packet from before the wrap: ROC - 1.
        assert_eq!(estimate_index(0x0004_0005, 0xfff0), Some(0x0003_fff0));
        // ROC 0 cannot go back.
        assert_eq!(estimate_index(0x0000_0005, 0xfff0), None);
        // Half way is still the same ROC.
        assert_eq!(estimate_index(0x0002_0000, 0x8000), Some(0x0002_8000));
        assert_eq!(estimate_index(0x0002_8000, 0x0000), Some(0x0002_0000));
        // End of the index space.
        assert_eq!(estimate_index(MAX_SRTP_INDEX, 0), None);
        assert_eq!(
            estimate_index(MAX_SRTP_INDEX - 1, 0xffff),
            Some(MAX_SRTP_INDEX)
        );
    }
}
