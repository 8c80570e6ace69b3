//! lib0, the binary encoding under Yjs and y-protocols: variable-length integers (7 bits a
//! byte, low bits first) and length-prefixed byte strings.
//!
//! The bytes come from untrusted peers, so the [`Reader`] checks every claimed length against
//! the bytes that are really there before it slices, never allocates from a claim, and
//! refuses integers that do not fit in 64 bits. Its methods are `#[inline]`: the node's
//! update validator calls them for every byte of every edit, from another crate.

/// Why lib0 bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lib0Error {
    #[error("input ends before the value it announces")]
    Truncated,
    #[error("variable-length integer does not fit in 64 bits")]
    VarIntOverflow,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("bytes left over after the last value")]
    TrailingBytes,
}

type Result<T> = std::result::Result<T, Lib0Error>;

/// A cursor over borrowed bytes; what it returns borrows from them.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// How far into the input the cursor is.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Succeeds only if everything was read.
    #[inline]
    pub fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Lib0Error::TrailingBytes)
        }
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8> {
        let byte = *self.buf.get(self.pos).ok_or(Lib0Error::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    /// The next `len` bytes, if the input has them.
    #[inline]
    pub fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let len = usize::try_from(len).map_err(|_| Lib0Error::Truncated)?;
        if len > self.remaining() {
            return Err(Lib0Error::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.buf[start..self.pos])
    }

    /// An unsigned varint: at most 10 bytes, the 10th carrying only the 64th bit.
    #[inline]
    pub fn var_u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10u32 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && (bits > 1 || byte & 0x80 != 0) {
                return Err(Lib0Error::VarIntOverflow);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Lib0Error::VarIntOverflow)
    }

    /// A signed varint: the first byte holds a continuation bit, the sign (0x40) and 6 bits
    /// of magnitude; the magnitude must fit in 63 bits.
    #[inline]
    pub fn var_i64(&mut self) -> Result<i64> {
        let first = self.u8()?;
        let mut magnitude = u64::from(first & 0x3f);
        let negative = first & 0x40 != 0;
        if first & 0x80 != 0 {
            let mut shift = 6u32;
            loop {
                let byte = self.u8()?;
                let bits = u64::from(byte & 0x7f);
                if shift >= 63 || (bits << shift) >> shift != bits || (bits << shift) > i64::MAX as u64 {
                    return Err(Lib0Error::VarIntOverflow);
                }
                magnitude |= bits << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
        }
        let magnitude = i64::try_from(magnitude).map_err(|_| Lib0Error::VarIntOverflow)?;
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// A count of items that each take at least `min_bytes`: a count the rest of the input
    /// cannot hold is refused before anyone loops over (or allocates for) it.
    #[inline]
    pub fn count(&mut self, min_bytes: usize) -> Result<u64> {
        let n = self.var_u64()?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(Lib0Error::Truncated);
        }
        Ok(n)
    }

    /// A length-prefixed byte string (lib0 `varUint8Array`).
    #[inline]
    pub fn var_bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.var_u64()?;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string (lib0 `varString`).
    #[inline]
    pub fn var_str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.var_bytes()?).map_err(|_| Lib0Error::InvalidUtf8)
    }
}

/// Appends an unsigned varint.
#[inline]
pub fn write_var_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte string.
#[inline]
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_u64_round_trips() {
        for value in [0u64, 1, 127, 128, 300, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_var_u64(&mut out, value);
            let mut r = Reader::new(&out);
            assert_eq!(r.var_u64(), Ok(value));
            assert_eq!(r.finish(), Ok(()));
        }
    }

    #[test]
    fn var_u64_refuses_overflow_and_truncation() {
        assert_eq!(Reader::new(&[0xff; 12]).var_u64(), Err(Lib0Error::VarIntOverflow));
        // The 10th byte may carry the 64th bit only.
        let mut ten = [0xff; 10];
        ten[9] = 0x02;
        assert_eq!(Reader::new(&ten).var_u64(), Err(Lib0Error::VarIntOverflow));
        ten[9] = 0x01;
        assert_eq!(Reader::new(&ten).var_u64(), Ok(u64::MAX));
        assert_eq!(Reader::new(&[0x80]).var_u64(), Err(Lib0Error::Truncated));
        assert_eq!(Reader::new(&[]).var_u64(), Err(Lib0Error::Truncated));
    }

    #[test]
    fn var_i64_reads_sign_and_magnitude() {
        // lib0 writes -1 as 0x41 and 64 as 0x80 0x01.
        assert_eq!(Reader::new(&[0x41]).var_i64(), Ok(-1));
        assert_eq!(Reader::new(&[0x05]).var_i64(), Ok(5));
        assert_eq!(Reader::new(&[0x80, 0x01]).var_i64(), Ok(64));
        assert_eq!(Reader::new(&[0xc0, 0x01]).var_i64(), Ok(-64));
        let mut huge = vec![0xbf];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert_eq!(Reader::new(&huge).var_i64(), Err(Lib0Error::VarIntOverflow));
        assert_eq!(Reader::new(&[0x80]).var_i64(), Err(Lib0Error::Truncated));
    }

    #[test]
    fn lengths_are_checked_against_the_input() {
        let mut claim = Vec::new();
        write_var_u64(&mut claim, 1 << 40);
        assert_eq!(Reader::new(&claim).var_bytes(), Err(Lib0Error::Truncated));
        assert_eq!(Reader::new(&[5, 1, 2]).var_bytes(), Err(Lib0Error::Truncated));
        assert_eq!(Reader::new(&[1, 0xff]).var_str(), Err(Lib0Error::InvalidUtf8));
        // 2^28 entries of at least 3 bytes in a 5-byte input.
        assert_eq!(
            Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x01]).count(3),
            Err(Lib0Error::Truncated)
        );
        let mut r = Reader::new(&[2, b'h', b'i', 9]);
        assert_eq!(r.var_str(), Ok("hi"));
        assert_eq!(r.finish(), Err(Lib0Error::TrailingBytes));
    }
}
