//! A minimal, strict MessagePack reader and the writer helpers the encoders
//! share.
//!
//! The reader exists because peer bytes are hostile: every length it reads is
//! checked against the bytes that are actually left before it is used, it
//! never allocates (so a declared length of 4 GiB costs nothing), it never
//! recurses (so nesting depth costs nothing), and a failed read leaves the
//! position where it was. Values are borrowed from the input.
//!
//! The writer side wraps `rmp::encode` over `rmp`'s `ByteBuf`, whose error
//! type is `Infallible`, together with exact size functions so that callers
//! can allocate a frame once with the right capacity.

use std::convert::Infallible;

use rmp::encode::{ByteBuf, ValueWriteError};

/// Why a MessagePack value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    #[error("unexpected end of input")]
    Eof,
    #[error("expected {0}")]
    Type(&'static str),
    #[error("value too deeply nested")]
    Depth,
    #[error("integer out of range")]
    Range,
    #[error("invalid utf-8 in string")]
    Utf8,
}

type Result<T> = std::result::Result<T, MsgpackError>;

/// A cursor over one buffer of MessagePack.
///
/// Every `read_*` either consumes exactly one value and returns it, or
/// returns an error and leaves the position unchanged.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when no bytes are left.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The bytes not consumed yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Runs `f` and rewinds on failure, so that a caller can try another
    /// interpretation or report the error with an accurate position.
    fn atomic<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let start = self.pos;
        let r = f(self);
        if r.is_err() {
            self.pos = start;
        }
        r
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.peek().ok_or(MsgpackError::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(MsgpackError::Eof);
        }
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(MsgpackError::Eof)?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn be_u8(&mut self) -> Result<u8> {
        self.byte()
    }

    fn be_u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be_u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn be_u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A 32-bit length from the input as a `usize`, refusing (rather than
    /// truncating) on targets where it does not fit.
    fn len32(&mut self) -> Result<usize> {
        usize::try_from(self.be_u32()?).map_err(|_| MsgpackError::Eof)
    }

    pub fn read_array_len(&mut self) -> Result<u32> {
        self.atomic(|r| match r.byte()? {
            m @ 0x90..=0x9f => Ok(u32::from(m & 0x0f)),
            0xdc => Ok(u32::from(r.be_u16()?)),
            0xdd => r.be_u32(),
            _ => Err(MsgpackError::Type("array")),
        })
    }

    pub fn read_map_len(&mut self) -> Result<u32> {
        self.atomic(|r| match r.byte()? {
            m @ 0x80..=0x8f => Ok(u32::from(m & 0x0f)),
            0xde => Ok(u32::from(r.be_u16()?)),
            0xdf => r.be_u32(),
            _ => Err(MsgpackError::Type("map")),
        })
    }

    /// Any integer encoding whose value is non-negative. Senders are free to
    /// pick a signed format for a small positive number (JavaScript encoders
    /// do), so the format alone decides nothing.
    pub fn read_u64(&mut self) -> Result<u64> {
        self.atomic(|r| {
            let m = r.byte()?;
            let signed: i64 = match m {
                0x00..=0x7f => return Ok(u64::from(m)),
                0xcc => return Ok(u64::from(r.be_u8()?)),
                0xcd => return Ok(u64::from(r.be_u16()?)),
                0xce => return Ok(u64::from(r.be_u32()?)),
                0xcf => return r.be_u64(),
                0xd0 => i64::from(r.be_u8()? as i8),
                0xd1 => i64::from(r.be_u16()? as i16),
                0xd2 => i64::from(r.be_u32()? as i32),
                0xd3 => r.be_u64()? as i64,
                0xe0..=0xff => return Err(MsgpackError::Range),
                _ => return Err(MsgpackError::Type("unsigned integer")),
            };
            u64::try_from(signed).map_err(|_| MsgpackError::Range)
        })
    }

    /// As [`read_u64`](Self::read_u64), `Range` if the value exceeds `u32`.
    pub fn read_u32(&mut self) -> Result<u32> {
        self.atomic(|r| u32::try_from(r.read_u64()?).map_err(|_| MsgpackError::Range))
    }

    /// As [`read_u64`](Self::read_u64), `Range` if the value exceeds `u16`.
    pub fn read_u16(&mut self) -> Result<u16> {
        self.atomic(|r| u16::try_from(r.read_u64()?).map_err(|_| MsgpackError::Range))
    }

    pub fn read_str(&mut self) -> Result<&'a str> {
        self.atomic(|r| {
            let len = match r.byte()? {
                m @ 0xa0..=0xbf => usize::from(m & 0x1f),
                0xd9 => usize::from(r.be_u8()?),
                0xda => usize::from(r.be_u16()?),
                0xdb => r.len32()?,
                _ => return Err(MsgpackError::Type("string")),
            };
            std::str::from_utf8(r.take(len)?).map_err(|_| MsgpackError::Utf8)
        })
    }

    /// bin8/16/32 only: the protocol keeps payloads opaque, and a str would
    /// mean the sender got the type wrong.
    pub fn read_bin(&mut self) -> Result<&'a [u8]> {
        self.atomic(|r| {
            let len = match r.byte()? {
                0xc4 => usize::from(r.be_u8()?),
                0xc5 => usize::from(r.be_u16()?),
                0xc6 => r.len32()?,
                _ => return Err(MsgpackError::Type("bin")),
            };
            r.take(len)
        })
    }

    pub fn read_bool(&mut self) -> Result<bool> {
        self.atomic(|r| match r.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(MsgpackError::Type("bool")),
        })
    }

    pub fn peek_is_map(&self) -> bool {
        matches!(self.peek(), Some(0x80..=0x8f | 0xde | 0xdf))
    }

    pub fn peek_is_nil(&self) -> bool {
        self.peek() == Some(0xc0)
    }

    /// Skips one value of any type, containers included.
    ///
    /// Instead of recursing it counts the values still owed, so nesting
    /// depth costs neither stack nor heap (`Depth` is never returned). Since
    /// every value takes at least one byte, a count that exceeds the bytes
    /// left is reported as `Eof` at once, which also keeps the counter bounded.
    pub fn skip_value(&mut self) -> Result<()> {
        self.atomic(|r| {
            let mut owed: u64 = 1;
            while owed > 0 {
                owed -= 1;
                let m = r.byte()?;
                let children: u64 = match m {
                    0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                    0x80..=0x8f => 2 * u64::from(m & 0x0f),
                    0x90..=0x9f => u64::from(m & 0x0f),
                    0xa0..=0xbf => {
                        r.take(usize::from(m & 0x1f))?;
                        0
                    }
                    0xc1 => return Err(MsgpackError::Type("a valid marker")),
                    0xc4 | 0xd9 => {
                        let n = usize::from(r.be_u8()?);
                        r.take(n)?;
                        0
                    }
                    0xc5 | 0xda => {
                        let n = usize::from(r.be_u16()?);
                        r.take(n)?;
                        0
                    }
                    0xc6 | 0xdb => {
                        let n = r.len32()?;
                        r.take(n)?;
                        0
                    }
                    // ext: a length, then one type byte, then the data.
                    0xc7 => {
                        let n = usize::from(r.be_u8()?);
                        r.take(1)?;
                        r.take(n)?;
                        0
                    }
                    0xc8 => {
                        let n = usize::from(r.be_u16()?);
                        r.take(1)?;
                        r.take(n)?;
                        0
                    }
                    0xc9 => {
                        let n = r.len32()?;
                        r.take(1)?;
                        r.take(n)?;
                        0
                    }
                    0xca => {
                        r.take(4)?;
                        0
                    }
                    0xcb => {
                        r.take(8)?;
                        0
                    }
                    0xcc | 0xd0 => {
                        r.take(1)?;
                        0
                    }
                    0xcd | 0xd1 => {
                        r.take(2)?;
                        0
                    }
                    0xce | 0xd2 => {
                        r.take(4)?;
                        0
                    }
                    0xcf | 0xd3 => {
                        r.take(8)?;
                        0
                    }
                    // fixext 1/2/4/8/16: one type byte, then the data.
                    0xd4 => {
                        r.take(2)?;
                        0
                    }
                    0xd5 => {
                        r.take(3)?;
                        0
                    }
                    0xd6 => {
                        r.take(5)?;
                        0
                    }
                    0xd7 => {
                        r.take(9)?;
                        0
                    }
                    0xd8 => {
                        r.take(17)?;
                        0
                    }
                    0xdc => u64::from(r.be_u16()?),
                    0xdd => u64::from(r.be_u32()?),
                    0xde => 2 * u64::from(r.be_u16()?),
                    0xdf => 2 * u64::from(r.be_u32()?),
                };
                // Both terms are bounded (by the input length and by
                // 2 * u32::MAX), so the sum cannot overflow a u64.
                owed += children;
                if owed > r.remaining() as u64 {
                    return Err(MsgpackError::Eof);
                }
            }
            Ok(())
        })
    }

    /// The undecoded bytes of the next value, e.g. to echo a feed's PING
    /// nonce back verbatim whatever its type.
    pub fn read_raw_value(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        self.skip_value()?;
        self.buf.get(start..self.pos).ok_or(MsgpackError::Eof)
    }
}

// ---------------------------------------------------------------------------
// Writing

/// Encoded size of an unsigned integer in its smallest format.
pub const fn uint_len(v: u64) -> usize {
    if v < 128 {
        1
    } else if v < 256 {
        2
    } else if v < 65536 {
        3
    } else if v <= u32::MAX as u64 {
        5
    } else {
        9
    }
}

/// Encoded size of a str of `n` bytes, header included.
pub const fn str_len(n: usize) -> usize {
    n + if n < 32 {
        1
    } else if n < 256 {
        2
    } else if n < 65536 {
        3
    } else {
        5
    }
}

/// Encoded size of a bin of `n` bytes, header included.
pub const fn bin_len(n: usize) -> usize {
    n + if n < 256 {
        2
    } else if n < 65536 {
        3
    } else {
        5
    }
}

/// Encoded size of an array or map header for `n` entries.
pub const fn array_header_len(n: usize) -> usize {
    if n < 16 {
        1
    } else if n < 65536 {
        3
    } else {
        5
    }
}

/// Encoded size of a map header for `n` pairs.
pub const fn map_header_len(n: usize) -> usize {
    array_header_len(n)
}

/// `rmp`'s `ByteBuf` cannot fail to write; this turns its `Infallible`
/// error type back into a plain value without an `unwrap`.
fn ok<T>(r: std::result::Result<T, ValueWriteError<Infallible>>) -> T {
    match r {
        Ok(v) => v,
        Err(ValueWriteError::InvalidMarkerWrite(e) | ValueWriteError::InvalidDataWrite(e)) => {
            match e {}
        }
    }
}

/// Appends MessagePack to a `Vec<u8>` through `rmp::encode`, always in the
/// smallest format (the `*_len` functions above assume exactly that).
///
/// Lengths above `u32::MAX` cannot be expressed in MessagePack; callers
/// only ever pass topics, short messages and payloads bounded by the frame
/// limits, far below that.
#[derive(Debug, Default)]
pub struct Writer {
    buf: ByteBuf,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn with_capacity(cap: usize) -> Self {
        Writer {
            buf: ByteBuf::with_capacity(cap),
        }
    }

    /// Continues writing after what `v` already holds (e.g. a frame header).
    pub fn from_vec(v: Vec<u8>) -> Self {
        Writer {
            buf: ByteBuf::from_vec(v),
        }
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf.into_vec()
    }

    pub fn len(&self) -> usize {
        self.buf.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn array(&mut self, n: u32) -> &mut Self {
        ok(rmp::encode::write_array_len(&mut self.buf, n));
        self
    }

    pub fn map(&mut self, n: u32) -> &mut Self {
        ok(rmp::encode::write_map_len(&mut self.buf, n));
        self
    }

    pub fn uint(&mut self, v: u64) -> &mut Self {
        ok(rmp::encode::write_uint(&mut self.buf, v));
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        debug_assert!(u32::try_from(s.len()).is_ok());
        ok(rmp::encode::write_str(&mut self.buf, s));
        self
    }

    pub fn bin(&mut self, b: &[u8]) -> &mut Self {
        debug_assert!(u32::try_from(b.len()).is_ok());
        ok(rmp::encode::write_bin(&mut self.buf, b));
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        match rmp::encode::write_bool(&mut self.buf, v) {
            Ok(()) => {}
            Err(e) => match e {},
        }
        self
    }

    /// Appends bytes that already are MessagePack (or a frame header).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.as_mut_vec().extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Writer {
        Writer::new()
    }

    #[test]
    fn fixint_and_uints() {
        for (bytes, v) in [
            (&[0x00][..], 0u64),
            (&[0x7f], 127),
            (&[0xcc, 0x80], 128),
            (&[0xcd, 0x01, 0x00], 256),
            (&[0xce, 0x00, 0x01, 0x00, 0x00], 65536),
            (&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0], 1 << 32),
            (&[0xd0, 0x05], 5),
            (&[0xd1, 0x01, 0x00], 256),
            (&[0xd2, 0x00, 0x00, 0x00, 0x07], 7),
            (
                &[0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                i64::MAX as u64,
            ),
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(r.read_u64(), Ok(v), "{bytes:02x?}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn negative_ints_are_range_errors() {
        for bytes in [
            &[0xff][..],
            &[0xe0],
            &[0xd0, 0xff],
            &[0xd1, 0x80, 0x00],
            &[0xd3, 0xff, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(r.read_u64(), Err(MsgpackError::Range));
            assert_eq!(r.position(), 0, "failed read must not move");
        }
    }

    #[test]
    fn non_ints_are_type_errors() {
        for bytes in [&[0xc0][..], &[0xc3], &[0xa1, b'a'], &[0xca, 0, 0, 0, 0]] {
            assert_eq!(
                Reader::new(bytes).read_u64(),
                Err(MsgpackError::Type("unsigned integer"))
            );
        }
    }

    #[test]
    fn u32_u16_range() {
        let mut r = Reader::new(&[0xce, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.read_u32(), Ok(u32::MAX));
        let mut r = Reader::new(&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(r.read_u32(), Err(MsgpackError::Range));
        assert_eq!(r.position(), 0);
        assert_eq!(
            Reader::new(&[0xce, 0, 1, 0, 0]).read_u16(),
            Err(MsgpackError::Range)
        );
        assert_eq!(Reader::new(&[0xcd, 0xff, 0xff]).read_u16(), Ok(u16::MAX));
    }

    #[test]
    fn truncated_ints_are_eof() {
        assert_eq!(Reader::new(&[]).read_u64(), Err(MsgpackError::Eof));
        assert_eq!(
            Reader::new(&[0xcd, 0x01]).read_u64(),
            Err(MsgpackError::Eof)
        );
        assert_eq!(
            Reader::new(&[0xcf, 0, 0, 0]).read_u64(),
            Err(MsgpackError::Eof)
        );
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(&[
            0xa3, b'a', b'b', b'c', 0xd9, 0x01, b'x', 0xda, 0x00, 0x00, 0xdb, 0, 0, 0, 1, b'y',
        ]);
        assert_eq!(r.read_str(), Ok("abc"));
        assert_eq!(r.read_str(), Ok("x"));
        assert_eq!(r.read_str(), Ok(""));
        assert_eq!(r.read_str(), Ok("y"));
        assert!(r.is_empty());
        assert_eq!(
            Reader::new(&[0xa2, 0xff, 0xfe]).read_str(),
            Err(MsgpackError::Utf8)
        );
        assert_eq!(
            Reader::new(&[0xa5, b'a']).read_str(),
            Err(MsgpackError::Eof)
        );
        // A declared length far beyond the input is refused without allocating.
        assert_eq!(
            Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']).read_str(),
            Err(MsgpackError::Eof)
        );
        assert_eq!(
            Reader::new(&[0xc4, 0x00]).read_str(),
            Err(MsgpackError::Type("string"))
        );
    }

    #[test]
    fn bins() {
        let mut r = Reader::new(&[0xc4, 0x02, 1, 2, 0xc5, 0x00, 0x01, 3, 0xc6, 0, 0, 0, 0]);
        assert_eq!(r.read_bin(), Ok(&[1u8, 2][..]));
        assert_eq!(r.read_bin(), Ok(&[3u8][..]));
        assert_eq!(r.read_bin(), Ok(&[][..]));
        assert_eq!(
            Reader::new(&[0xa1, b'a']).read_bin(),
            Err(MsgpackError::Type("bin"))
        );
        assert_eq!(
            Reader::new(&[0xc6, 0xff, 0xff, 0xff, 0xff]).read_bin(),
            Err(MsgpackError::Eof)
        );
    }

    #[test]
    fn containers_and_peeks() {
        let mut r = Reader::new(&[
            0x93, 0x82, 0xdc, 0x00, 0x10, 0xdd, 0, 1, 0, 0, 0xde, 0, 3, 0xdf, 0, 0, 0, 4,
        ]);
        assert!(!r.peek_is_map());
        assert_eq!(r.read_array_len(), Ok(3));
        assert!(r.peek_is_map());
        assert_eq!(r.read_map_len(), Ok(2));
        assert_eq!(r.read_array_len(), Ok(16));
        assert_eq!(r.read_array_len(), Ok(65536));
        assert!(r.peek_is_map());
        assert_eq!(r.read_map_len(), Ok(3));
        assert_eq!(r.read_map_len(), Ok(4));
        assert_eq!(
            Reader::new(&[0x80]).read_array_len(),
            Err(MsgpackError::Type("array"))
        );
        assert_eq!(
            Reader::new(&[0x90]).read_map_len(),
            Err(MsgpackError::Type("map"))
        );
        assert!(Reader::new(&[0xc0]).peek_is_nil());
        assert!(!Reader::new(&[]).peek_is_map());
        assert_eq!(Reader::new(&[0xc3]).read_bool(), Ok(true));
        assert_eq!(Reader::new(&[0xc2]).read_bool(), Ok(false));
        assert_eq!(
            Reader::new(&[0x01]).read_bool(),
            Err(MsgpackError::Type("bool"))
        );
    }

    /// One value of every format, each followed by a fixint sentinel.
    fn every_format() -> Vec<Vec<u8>> {
        vec![
            vec![0x05],
            vec![0xe5],
            vec![0xc0],
            vec![0xc2],
            vec![0xc3],
            vec![0x81, 0xa1, b'k', 0x01],
            vec![0x92, 0x01, 0x92, 0x02, 0x03],
            vec![0xa2, b'h', b'i'],
            vec![0xc4, 0x01, 0xff],
            vec![0xc5, 0x00, 0x01, 0xff],
            vec![0xc6, 0, 0, 0, 1, 0xff],
            vec![0xc7, 0x01, 0x05, 0xaa],
            vec![0xc8, 0x00, 0x01, 0x05, 0xaa],
            vec![0xc9, 0, 0, 0, 1, 0x05, 0xaa],
            vec![0xca, 0, 0, 0, 0],
            vec![0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xcc, 1],
            vec![0xcd, 0, 1],
            vec![0xce, 0, 0, 0, 1],
            vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![0xd0, 1],
            vec![0xd1, 0, 1],
            vec![0xd2, 0, 0, 0, 1],
            vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 1],
            vec![0xd4, 1, 2],
            vec![0xd5, 1, 2, 3],
            vec![0xd6, 1, 2, 3, 4, 5],
            vec![0xd7, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![
                0xd8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
            ],
            vec![0xd9, 0x01, b'a'],
            vec![0xda, 0x00, 0x01, b'a'],
            vec![0xdb, 0, 0, 0, 1, b'a'],
            vec![0xdc, 0x00, 0x01, 0xc0],
            vec![0xdd, 0, 0, 0, 1, 0xc0],
            vec![0xde, 0x00, 0x01, 0x01, 0x02],
            vec![0xdf, 0, 0, 0, 1, 0x01, 0x02],
        ]
    }

    #[test]
    fn skip_and_raw_every_format() {
        for v in every_format() {
            let mut input = v.clone();
            input.push(0x2a);
            let mut r = Reader::new(&input);
            assert_eq!(r.read_raw_value(), Ok(&v[..]), "{v:02x?}");
            assert_eq!(r.read_u64(), Ok(42));
            assert!(r.is_empty());
            // Every strict prefix is an Eof and leaves the reader untouched.
            for cut in 0..v.len() {
                let mut r = Reader::new(&v[..cut]);
                assert_eq!(
                    r.skip_value(),
                    Err(MsgpackError::Eof),
                    "{v:02x?} cut at {cut}"
                );
                assert_eq!(r.position(), 0);
            }
        }
    }

    #[test]
    fn skip_rejects_reserved_marker() {
        assert_eq!(
            Reader::new(&[0xc1]).skip_value(),
            Err(MsgpackError::Type("a valid marker"))
        );
        assert_eq!(
            Reader::new(&[0x91, 0xc1]).skip_value(),
            Err(MsgpackError::Type("a valid marker"))
        );
    }

    #[test]
    fn skip_refuses_counts_beyond_input_immediately() {
        // array32 of 4G elements with 4 bytes behind it.
        let mut r = Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(r.skip_value(), Err(MsgpackError::Eof));
        let mut r = Reader::new(&[0xdf, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(r.skip_value(), Err(MsgpackError::Eof));
    }

    #[test]
    fn skip_deep_nesting_without_recursion() {
        let depth = 100_000;
        let mut v = vec![0x91; depth];
        v.push(0xc0);
        let mut r = Reader::new(&v);
        assert_eq!(r.skip_value(), Ok(()));
        assert!(r.is_empty());
        v.pop();
        assert_eq!(Reader::new(&v).skip_value(), Err(MsgpackError::Eof));
    }

    #[test]
    fn writer_sizes_match_rmp() {
        let uints = [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ];
        for v in uints {
            let mut x = w();
            x.uint(v);
            assert_eq!(x.len(), uint_len(v), "{v}");
            let bytes = x.into_vec();
            assert_eq!(Reader::new(&bytes).read_u64(), Ok(v));
        }
        for n in [0usize, 1, 31, 32, 255, 256, 65535, 65536] {
            let s = "a".repeat(n);
            let mut x = w();
            x.str(&s);
            assert_eq!(x.len(), str_len(n), "str {n}");
            let bytes = x.into_vec();
            assert_eq!(Reader::new(&bytes).read_str(), Ok(&s[..]));
            let b = vec![7u8; n];
            let mut x = w();
            x.bin(&b);
            assert_eq!(x.len(), bin_len(n), "bin {n}");
            let bytes = x.into_vec();
            assert_eq!(Reader::new(&bytes).read_bin(), Ok(&b[..]));
        }
        for n in [0u32, 15, 16, 65535, 65536] {
            let mut x = w();
            x.array(n);
            assert_eq!(x.len(), array_header_len(n as usize));
            let bytes = x.into_vec();
            assert_eq!(Reader::new(&bytes).read_array_len(), Ok(n));
            let mut x = w();
            x.map(n);
            assert_eq!(x.len(), map_header_len(n as usize));
            let bytes = x.into_vec();
            assert_eq!(Reader::new(&bytes).read_map_len(), Ok(n));
        }
        let mut x = w();
        x.bool(true).bool(false).raw(&[0xc0]);
        assert_eq!(x.into_vec(), [0xc3, 0xc2, 0xc0]);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every 1- and 2-byte input, and every 3-byte input for the markers
        // with length prefixes, through every read.
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for a in 0..=255u8 {
            inputs.push(vec![a]);
            for b in 0..=255u8 {
                inputs.push(vec![a, b]);
            }
        }
        for a in 0xc4..=0xdfu8 {
            for b in 0..=255u8 {
                inputs.push(vec![a, 0, b]);
                inputs.push(vec![a, 0xff, b, 0xff]);
            }
        }
        for i in &inputs {
            let _ = Reader::new(i).read_array_len();
            let _ = Reader::new(i).read_map_len();
            let _ = Reader::new(i).read_u64();
            let _ = Reader::new(i).read_u32();
            let _ = Reader::new(i).read_str();
            let _ = Reader::new(i).read_bin();
            let _ = Reader::new(i).read_bool();
            let mut r = Reader::new(i);
            if r.read_raw_value().is_err() {
                assert_eq!(r.position(), 0);
            } else {
                assert!(r.position() <= i.len());
            }
        }
    }
}
