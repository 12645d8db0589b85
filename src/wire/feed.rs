//! The upstream feed protocol (PROTOCOL.md §2): a 4-byte big-endian length
//! `L`, then `L` bytes holding one MessagePack array.
//!
//! Framing and decoding are separate so that the ingest task can check the
//! length (and refuse an oversized frame) from the first four bytes, before
//! it reads or buffers the body.

use bytes::Bytes;

use super::msgpack::{self, MsgpackError, Reader, Writer};
use super::topic::is_valid_topic;

/// Default limit on `L`, the body of one feed frame.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

pub const ERROR: u8 = 0;
pub const HELLO: u8 = 1;
pub const PUBLISH: u8 = 2;
pub const PING: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFrame<'a> {
    Hello {
        token: &'a str,
        name: &'a str,
    },
    Publish {
        topic: &'a str,
        payload: &'a [u8],
    },
    /// `nonce` is the raw MessagePack of the nonce, of any type, so it can
    /// be echoed back byte for byte.
    Ping {
        nonce: &'a [u8],
    },
}

/// A malformed or oversized frame: answered with `[0, code, message]`,
/// then the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FeedError {
    /// 400 or 413.
    pub code: u16,
    pub message: &'static str,
}

const fn bad(message: &'static str) -> FeedError {
    FeedError { code: 400, message }
}

/// Looks at the front of `buf`: `Ok(None)` = need more bytes;
/// `Ok(Some(total))` = a whole frame of `total` (4 + L) bytes is there.
/// `L` = 0 is a 400 and `L > max` a 413, reported as soon as the four
/// length bytes are there.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FeedError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    if len == 0 {
        return Err(bad("empty frame"));
    }
    let len = match usize::try_from(len) {
        Ok(l) if l <= max => l,
        _ => {
            return Err(FeedError {
                code: 413,
                message: "frame over the maximum size",
            })
        }
    };
    // len <= max <= usize::MAX, so only an absurd max could overflow here.
    let total = len.checked_add(4).ok_or(FeedError {
        code: 413,
        message: "frame over the maximum size",
    })?;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes the `L` bytes of one frame. Elements after the ones a type needs
/// are skipped (but must be well-formed so the end of the array is found);
/// bytes after the array are an error.
pub fn decode_frame(body: &[u8]) -> Result<FeedFrame<'_>, FeedError> {
    let mut r = Reader::new(body);
    let n = r
        .read_array_len()
        .map_err(|_| bad("frame must be an array"))?;
    if n == 0 {
        return Err(bad("empty array"));
    }
    let kind = r
        .read_u64()
        .map_err(|_| bad("frame type must be an unsigned integer"))?;
    let (used, frame) = match kind {
        k if k == u64::from(HELLO) => {
            if n < 3 {
                return Err(bad("missing elements"));
            }
            let token = r.read_str().map_err(|_| bad("token must be a string"))?;
            let name = r.read_str().map_err(|_| bad("name must be a string"))?;
            (3, FeedFrame::Hello { token, name })
        }
        k if k == u64::from(PUBLISH) => {
            if n < 3 {
                return Err(bad("missing elements"));
            }
            let topic = match r.read_str() {
                Ok(t) if is_valid_topic(t) => t,
                Ok(_) => return Err(bad("invalid topic")),
                Err(_) => return Err(bad("topic must be a string")),
            };
            let payload = r.read_bin().map_err(|_| bad("payload must be bin"))?;
            (3, FeedFrame::Publish { topic, payload })
        }
        k if k == u64::from(PING) => {
            if n < 2 {
                return Err(bad("missing elements"));
            }
            let nonce = r.read_raw_value().map_err(|_| bad("malformed nonce"))?;
            (2, FeedFrame::Ping { nonce })
        }
        _ => return Err(bad("unknown frame type")),
    };
    for _ in used..n {
        r.skip_value()
            .map_err(|_| bad("malformed trailing element"))?;
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes after the frame"));
    }
    Ok(frame)
}

/// Builds a length-prefixed frame whose body is exactly `body_len` bytes,
/// in one allocation.
fn framed(body_len: usize, write: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body_len);
    // Bodies we build are tiny or bounded by the frame limit, far below 4 GiB.
    let prefix = u32::try_from(body_len).unwrap_or(u32::MAX);
    v.extend_from_slice(&prefix.to_be_bytes());
    let mut w = Writer::from_vec(v);
    write(&mut w);
    let v = w.into_vec();
    debug_assert_eq!(v.len(), 4 + body_len, "size computation out of sync");
    v
}

/// Length-prefixed `[1, "ok"]`.
pub fn hello_ok() -> Bytes {
    static HELLO_OK: [u8; 9] = [0, 0, 0, 5, 0x92, HELLO, 0xa2, b'o', b'k'];
    Bytes::from_static(&HELLO_OK)
}

/// Length-prefixed `[3, nonce]`, with the nonce's raw MessagePack echoed.
pub fn pong(nonce_raw: &[u8]) -> Bytes {
    Bytes::from(framed(2 + nonce_raw.len(), |w| {
        w.array(2).uint(u64::from(PING)).raw(nonce_raw);
    }))
}

/// Length-prefixed `[0, code, message]`.
pub fn error(code: u16, message: &str) -> Bytes {
    let len = 2 + msgpack::uint_len(u64::from(code)) + msgpack::str_len(message.len());
    Bytes::from(framed(len, |w| {
        w.array(3)
            .uint(u64::from(ERROR))
            .uint(u64::from(code))
            .str(message);
    }))
}

// ---------------------------------------------------------------------------
// Feed side: for tests and the load generator.

/// Length-prefixed `[1, token, name]`.
pub fn encode_hello(token: &str, name: &str) -> Vec<u8> {
    let len = 2 + msgpack::str_len(token.len()) + msgpack::str_len(name.len());
    framed(len, |w| {
        w.array(3).uint(u64::from(HELLO)).str(token).str(name);
    })
}

/// Length-prefixed `[2, topic, payload]`.
pub fn encode_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let len = 2 + msgpack::str_len(topic.len()) + msgpack::bin_len(payload.len());
    framed(len, |w| {
        w.array(3).uint(u64::from(PUBLISH)).str(topic).bin(payload);
    })
}

/// Length-prefixed `[3, nonce]`.
pub fn encode_ping(nonce: u64) -> Vec<u8> {
    framed(2 + msgpack::uint_len(nonce), |w| {
        w.array(2).uint(u64::from(PING)).uint(nonce);
    })
}

/// A gateway → feed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayFrame {
    HelloOk,
    Pong(u64),
    Error { code: u16, message: String },
}

/// Decodes the body (without the length prefix) of a gateway → feed frame.
/// `Pong` expects the u64 nonce that [`encode_ping`] sends.
pub fn decode_gateway_frame(body: &[u8]) -> Result<GatewayFrame, MsgpackError> {
    let mut r = Reader::new(body);
    let n = r.read_array_len()?;
    let need = |k: u32| {
        if n < k {
            Err(MsgpackError::Type("more array elements"))
        } else {
            Ok(())
        }
    };
    need(1)?;
    let (used, frame) = match r.read_u64()? {
        k if k == u64::from(HELLO) => {
            need(2)?;
            if r.read_str()? != "ok" {
                return Err(MsgpackError::Type("\"ok\""));
            }
            (2, GatewayFrame::HelloOk)
        }
        k if k == u64::from(PING) => {
            need(2)?;
            (2, GatewayFrame::Pong(r.read_u64()?))
        }
        k if k == u64::from(ERROR) => {
            need(3)?;
            let code = r.read_u16()?;
            let message = r.read_str()?.to_owned();
            (3, GatewayFrame::Error { code, message })
        }
        _ => return Err(MsgpackError::Type("a known gateway frame type")),
    };
    for _ in used..n {
        r.skip_value()?;
    }
    if !r.is_empty() {
        return Err(MsgpackError::Type("end of frame"));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a length-prefixed frame, checking the prefix.
    fn unframe(f: &[u8]) -> &[u8] {
        assert_eq!(frame_len(f, DEFAULT_MAX_FRAME), Ok(Some(f.len())));
        &f[4..]
    }

    #[test]
    fn framing() {
        assert_eq!(frame_len(&[], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 2, 0x91], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 2, 0x91, 0x01], 10), Ok(Some(6)));
        assert_eq!(frame_len(&[0, 0, 0, 2, 0x91, 0x01, 0xff], 10), Ok(Some(6)));
        assert_eq!(
            frame_len(&[0, 0, 0, 0], 10),
            Err(FeedError {
                code: 400,
                message: "empty frame"
            })
        );
        assert_eq!(frame_len(&[0, 0, 0, 10], 10), Ok(None));
        // Oversized is reported from the prefix alone.
        assert_eq!(frame_len(&[0, 0, 0, 11], 10).map_err(|e| e.code), Err(413));
        assert_eq!(
            frame_len(&[0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME).map_err(|e| e.code),
            Err(413)
        );
        assert_eq!(frame_len(&[0, 0x10, 0, 0], DEFAULT_MAX_FRAME), Ok(None));
        assert_eq!(
            frame_len(&[0, 0x10, 0, 1], DEFAULT_MAX_FRAME).map_err(|e| e.code),
            Err(413)
        );
    }

    #[test]
    fn exact_bytes() {
        assert_eq!(&hello_ok()[..], [0, 0, 0, 5, 0x92, 0x01, 0xa2, b'o', b'k']);
        assert_eq!(&pong(&[0x2a])[..], [0, 0, 0, 3, 0x92, 0x03, 0x2a]);
        assert_eq!(
            &error(401, "no")[..],
            [0, 0, 0, 8, 0x93, 0x00, 0xcd, 0x01, 0x91, 0xa2, b'n', b'o']
        );
        assert_eq!(encode_ping(7), [0, 0, 0, 3, 0x92, 0x03, 0x07]);
        assert_eq!(
            encode_hello("s", "f"),
            [0, 0, 0, 6, 0x93, 0x01, 0xa1, b's', 0xa1, b'f']
        );
        assert_eq!(
            encode_publish("t", b"x"),
            [0, 0, 0, 7, 0x93, 0x02, 0xa1, b't', 0xc4, 0x01, b'x']
        );
    }

    #[test]
    fn feed_round_trips() {
        let h = encode_hello("secret", "feed-1");
        assert_eq!(
            decode_frame(unframe(&h)),
            Ok(FeedFrame::Hello {
                token: "secret",
                name: "feed-1"
            })
        );
        for n in [0usize, 1, 255, 256, 70_000] {
            let payload = vec![3u8; n];
            let p = encode_publish("md.BTC-USD", &payload);
            assert_eq!(
                decode_frame(unframe(&p)),
                Ok(FeedFrame::Publish {
                    topic: "md.BTC-USD",
                    payload: &payload
                })
            );
        }
        for nonce in [0u64, 1, 300, u64::MAX] {
            let p = encode_ping(nonce);
            let Ok(FeedFrame::Ping { nonce: raw }) = decode_frame(unframe(&p)) else {
                panic!("not a ping");
            };
            let back = pong(raw);
            assert_eq!(
                decode_gateway_frame(unframe(&back)),
                Ok(GatewayFrame::Pong(nonce))
            );
        }
        assert_eq!(
            decode_gateway_frame(unframe(&hello_ok())),
            Ok(GatewayFrame::HelloOk)
        );
        for code in [400u16, 401, 408, 413, 429] {
            let e = error(code, "why");
            assert_eq!(
                decode_gateway_frame(unframe(&e)),
                Ok(GatewayFrame::Error {
                    code,
                    message: "why".into()
                })
            );
        }
    }

    #[test]
    fn ping_nonce_of_any_type_is_echoed_verbatim() {
        let mut w = Writer::new();
        w.array(2)
            .uint(3)
            .map(1)
            .str("k")
            .array(2)
            .bin(b"x")
            .bool(true);
        let body = w.into_vec();
        let Ok(FeedFrame::Ping { nonce }) = decode_frame(&body) else {
            panic!("not a ping");
        };
        assert_eq!(nonce, &body[2..]);
        let p = pong(nonce);
        assert_eq!(&p[4..], &body[..]);
    }

    #[test]
    fn malformed_frames() {
        let e = |b: &[u8]| decode_frame(b).expect_err("should fail");
        assert_eq!(e(&[0x01]).message, "frame must be an array");
        assert_eq!(e(&[0x90]).message, "empty array");
        assert_eq!(
            e(&[0x91, 0xc0]).message,
            "frame type must be an unsigned integer"
        );
        assert_eq!(e(&[0x91, 0x09]).message, "unknown frame type");
        assert_eq!(e(&[0x91, 0x00]).message, "unknown frame type");
        assert_eq!(e(&[0x92, 0x01, 0xa1, b't']).message, "missing elements");
        assert_eq!(e(&[0x92, 0x02, 0xa1, b't']).message, "missing elements");
        assert_eq!(e(&[0x91, 0x03]).message, "missing elements");
        assert_eq!(
            e(&[0x93, 0x01, 0x01, 0xa1, b'n']).message,
            "token must be a string"
        );
        assert_eq!(
            e(&[0x93, 0x01, 0xa1, b't', 0x01]).message,
            "name must be a string"
        );
        assert_eq!(
            e(&[0x93, 0x02, 0xa3, b'a', b' ', b'b', 0xc4, 0x00]).message,
            "invalid topic"
        );
        assert_eq!(
            e(&[0x93, 0x02, 0x05, 0xc4, 0x00]).message,
            "topic must be a string"
        );
        assert_eq!(
            e(&[0x93, 0x02, 0xa1, b't', 0xa1, b'x']).message,
            "payload must be bin"
        );
        assert_eq!(e(&[0x92, 0x03, 0xc1]).message, "malformed nonce");
        assert_eq!(e(&[0x93, 0x03, 0x01]).message, "malformed trailing element");
        assert_eq!(
            e(&[0x92, 0x03, 0x01, 0x00]).message,
            "trailing bytes after the frame"
        );
        for b in [&[0x01][..], &[0x91, 0x09]] {
            assert_eq!(e(b).code, 400);
        }
        // Trailing elements are ignored.
        assert_eq!(
            decode_frame(&[0x94, 0x03, 0x01, 0xc0, 0x81, 0x01, 0x02]),
            Ok(FeedFrame::Ping { nonce: &[0x01] })
        );
    }

    #[test]
    fn gateway_frame_errors() {
        assert!(decode_gateway_frame(&[]).is_err());
        assert!(decode_gateway_frame(&[0x90]).is_err());
        assert!(decode_gateway_frame(&[0x92, 0x01, 0xa2, b'n', b'o']).is_err());
        assert!(decode_gateway_frame(&[0x92, 0x07, 0x01]).is_err());
        assert!(decode_gateway_frame(&[0x92, 0x03, 0x01, 0x00]).is_err());
        assert_eq!(
            decode_gateway_frame(&[0x93, 0x03, 0x01, 0xc0]),
            Ok(GatewayFrame::Pong(1))
        );
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        let mut frames = vec![
            encode_hello("tok", "name"),
            encode_publish("md.x", b"abcdef"),
            encode_ping(1 << 40),
        ];
        frames.push(pong(&[0x81, 0xa1, b'k', 0x92, 0xc3, 0xc0]).to_vec());
        for f in &frames {
            let body = &f[4..];
            for cut in 0..body.len() {
                assert!(decode_frame(&body[..cut]).is_err());
                let _ = decode_gateway_frame(&body[..cut]);
            }
            for i in 0..f.len() {
                for b in 0..=255u8 {
                    let mut m = f.clone();
                    m[i] = b;
                    if let Ok(Some(total)) = frame_len(&m, 64) {
                        let _ = decode_frame(&m[4..total]);
                    }
                    let _ = decode_frame(&m[4..]);
                    let _ = decode_gateway_frame(&m[4..]);
                }
            }
        }
    }
}
