//! The body of a log record: the batch's payloads, each prefixed by its
//! length as a 4-byte big-endian integer. Sans-IO; the payloads stay opaque.
//!
//! A record body comes from the broker, which other nodes write to: it is
//! checked ([`validate`]) before anything is taken from it, and the
//! iterator never reads past the end of what it was given.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes the framing adds per payload.
pub const OVERHEAD: usize = 4;

/// Frames `payloads` into one body.
pub fn encode(payloads: &[Bytes]) -> Bytes {
    let len = payloads.iter().map(|p| p.len() + OVERHEAD).sum();
    let mut out = BytesMut::with_capacity(len);
    for p in payloads {
        out.put_u32(p.len() as u32);
        out.put_slice(p);
    }
    out.freeze()
}

/// The number of payloads in `body`, or `None` if it is not a whole
/// sequence of length-prefixed payloads.
pub fn validate(body: &[u8]) -> Option<usize> {
    let mut rest = body;
    let mut n = 0;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest = rest.get(4..)?.get(len..)?;
        n += 1;
    }
    Some(n)
}

/// The payloads of a body, in order. Stops at the first malformed entry
/// (a body that passed [`validate`] has none).
pub struct Payloads<'a> {
    rest: &'a [u8],
}

impl<'a> Payloads<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Payloads { rest: body }
    }
}

impl<'a> Iterator for Payloads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.rest.get(..4)?.try_into().ok()?) as usize;
        let p = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_in_order() {
        let ps = [
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from(vec![7u8; 300]),
        ];
        let body = encode(&ps);
        assert_eq!(validate(&body), Some(3));
        let back: Vec<&[u8]> = Payloads::new(&body).collect();
        assert_eq!(back, vec![&b"a"[..], &b""[..], &[7u8; 300][..]]);
    }

    #[test]
    fn an_empty_body_is_a_marker() {
        assert_eq!(validate(&encode(&[])), Some(0));
        assert_eq!(Payloads::new(&[]).count(), 0);
    }

    #[test]
    fn truncated_or_lying_bodies_are_refused_and_never_overread() {
        let body = encode(&[Bytes::from_static(b"hello")]);
        for cut in 1..body.len() {
            assert_eq!(validate(&body[..cut]), None, "cut at {cut}");
            assert!(Payloads::new(&body[..cut]).all(|p| p.len() <= cut));
        }
        let lie = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert_eq!(validate(&lie), None);
        assert_eq!(Payloads::new(&lie).count(), 0);
    }
}
