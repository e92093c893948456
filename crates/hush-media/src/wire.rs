//! A bounds-checked reader for untrusted bytes. Every read returns an error instead of panicking.

use crate::error::ParseError;

/// Cursor over a byte slice; short input gives [`ParseError::Truncated`].
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in truncation errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.buf.len() {
            return Err(ParseError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        let b = self.take(1)?;
        Ok(b[0])
    }

    /// Reads a big-endian u16.
    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian 24-bit unsigned value.
    pub(crate) fn u24(&mut self) -> Result<u32, ParseError> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// Reads a big-endian u32.
    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a big-endian u64.
    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }
}

/// Extends a wrapping 16-bit sequence number to 64 bits, relative to the last one seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqUnwrapper {
    last: Option<u64>,
}

impl SeqUnwrapper {
    /// The 64-bit value nearest the last one whose low 16 bits are `seq`.
    pub(crate) fn unwrap(&mut self, seq: u16) -> u64 {
        let ext = self.peek(seq);
        match self.last {
            Some(last) if ext <= last => {}
            _ => self.last = Some(ext),
        }
        ext
    }

    /// Like [`unwrap`](Self::unwrap) without remembering the value.
    pub(crate) fn peek(&self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            // Start well above zero so that early reordering cannot go negative.
            return (1 << 16) + u64::from(seq);
        };
        let diff = seq.wrapping_sub(last as u16) as i16;
        let ext = last as i64 + i64::from(diff);
        ext.max(0) as u64
    }
}

/// Extends a wrapping 32-bit RTP timestamp to 64 bits, relative to the last one seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct TsUnwrapper {
    last: Option<u64>,
}

impl TsUnwrapper {
    /// The 64-bit value nearest the last one whose low 32 bits are `ts`.
    pub(crate) fn unwrap(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => (1 << 32) + u64::from(ts),
            Some(last) => {
                let diff = ts.wrapping_sub(last as u32) as i32;
                (last as i64 + i64::from(diff)).max(0) as u64
            }
        };
        match self.last {
            Some(last) if ext <= last => {}
            _ => self.last = Some(ext),
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_short_input() {
        let mut r = Reader::new(&[1, 2, 3], "x");
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u16(), Err(ParseError::Truncated("x")));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn seq_unwrap_wraps_both_ways() {
        let mut u = SeqUnwrapper::default();
        let a = u.unwrap(65534);
        assert_eq!(u.unwrap(65535), a + 1);
        assert_eq!(u.unwrap(1), a + 3);
        assert_eq!(u.unwrap(65533), a - 1);
        assert_eq!(u.unwrap(2), a + 4);
    }

    #[test]
    fn ts_unwrap_wraps() {
        let mut u = TsUnwrapper::default();
        let a = u.unwrap(u32::MAX - 959);
        assert_eq!(u.unwrap(0), a + 960);
        assert_eq!(u.unwrap(u32::MAX - 959), a);
    }
}
