//! The client protocol, version 1 (PROTOCOL.md §1): MessagePack arrays
//! carried one per WebSocket binary message.
//!
//! Requests are decoded without allocating: strings and payloads borrow
//! from the (already unmasked) message. Server messages are encoded as
//! complete WebSocket frames in one allocation of the exact size, so the
//! hub can share one `Bytes` among every subscriber.

use bytes::Bytes;

use super::msgpack::{self, MsgpackError, Reader, Writer};
use super::topic::is_valid_topic;
use super::ws;

pub const SUBSCRIBE: u8 = 1;
pub const UNSUBSCRIBE: u8 = 2;
pub const PING: u8 = 3;
pub const REFRESH: u8 = 4;
pub const PUBLISH: u8 = 5;
pub const PUBLICATION: u8 = 16;
pub const REPLY: u8 = 17;
pub const ERROR: u8 = 18;

/// The recovery options of a SUBSCRIBE: replay what came after `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recover<'a> {
    pub since: u64,
    pub epoch: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `recover` is `Some` iff a 4th element map carries `"since"`.
    Subscribe {
        id: u32,
        topic: &'a str,
        recover: Option<Recover<'a>>,
    },
    Unsubscribe {
        id: u32,
        topic: &'a str,
    },
    Ping {
        id: u32,
    },
    Refresh {
        id: u32,
        token: &'a str,
    },
    Publish {
        id: u32,
        topic: &'a str,
        payload: &'a [u8],
    },
}

impl Request<'_> {
    pub fn id(&self) -> u32 {
        match *self {
            Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Ping { id }
            | Request::Refresh { id, .. }
            | Request::Publish { id, .. } => id,
        }
    }

    /// A fixed name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Ping { .. } => "ping",
            Request::Refresh { .. } => "refresh",
            Request::Publish { .. } => "publish",
        }
    }
}

/// A binary message that is not a valid request: answered with
/// `[18, id, 400, message]`, the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request id if it could be read, else 0.
    pub id: u32,
    pub message: &'static str,
}

fn fail<T>(id: u32, message: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError { id, message })
}

/// Decodes one request. The buffer must hold exactly one MessagePack array;
/// elements after the ones a request type needs are skipped (forward
/// compatibility) but must still be well-formed, since otherwise the end of
/// the array could not be found.
pub fn decode_request(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let Ok(n) = r.read_array_len() else {
        return fail(0, "request must be an array");
    };
    if n == 0 {
        return fail(0, "empty request");
    }
    let Ok(kind) = r.read_u64() else {
        return fail(0, "request type must be an unsigned integer");
    };
    if n < 2 {
        return fail(0, "missing request id");
    }
    let Ok(id) = r.read_u32() else {
        return fail(0, "request id must be a uint32");
    };
    let (needed, req) = match kind {
        k if k == u64::from(SUBSCRIBE) => (3, decode_subscribe(&mut r, id, n)?),
        k if k == u64::from(UNSUBSCRIBE) => {
            if n < 3 {
                return fail(id, "missing elements");
            }
            let topic = read_topic(&mut r, id)?;
            (3, Request::Unsubscribe { id, topic })
        }
        k if k == u64::from(PING) => (2, Request::Ping { id }),
        k if k == u64::from(REFRESH) => {
            if n < 3 {
                return fail(id, "missing elements");
            }
            let Ok(token) = r.read_str() else {
                return fail(id, "token must be a string");
            };
            (3, Request::Refresh { id, token })
        }
        k if k == u64::from(PUBLISH) => {
            if n < 4 {
                return fail(id, "missing elements");
            }
            let topic = read_topic(&mut r, id)?;
            let Ok(payload) = r.read_bin() else {
                return fail(id, "payload must be bin");
            };
            (4, Request::Publish { id, topic, payload })
        }
        _ => return fail(id, "unknown request type"),
    };
    // SUBSCRIBE's options map is consumed by decode_subscribe when present.
    let consumed = match req {
        Request::Subscribe { .. } if n >= 4 => 4,
        _ => needed,
    };
    for _ in consumed..n {
        if r.skip_value().is_err() {
            return fail(id, "malformed trailing element");
        }
    }
    if !r.is_empty() {
        return fail(id, "trailing bytes after the request");
    }
    Ok(req)
}

fn read_topic<'a>(r: &mut Reader<'a>, id: u32) -> Result<&'a str, DecodeError> {
    match r.read_str() {
        Ok(t) if is_valid_topic(t) => Ok(t),
        Ok(_) => fail(id, "invalid topic"),
        Err(_) => fail(id, "topic must be a string"),
    }
}

fn decode_subscribe<'a>(r: &mut Reader<'a>, id: u32, n: u32) -> Result<Request<'a>, DecodeError> {
    if n < 3 {
        return fail(id, "missing elements");
    }
    let topic = read_topic(r, id)?;
    if n < 4 || r.peek_is_nil() {
        // nil stands for "no options" (what a JS client sends for
        // `undefined`); skipping it here keeps the trailing-element count
        // in decode_request right.
        if n >= 4 && r.skip_value().is_err() {
            return fail(id, "malformed options");
        }
        return Ok(Request::Subscribe {
            id,
            topic,
            recover: None,
        });
    }
    let Ok(pairs) = r.read_map_len() else {
        return fail(id, "subscribe options must be a map");
    };
    let mut since: Option<u64> = None;
    let mut epoch: Option<Option<&'a str>> = None;
    for _ in 0..pairs {
        // Unknown keys (of any type) are skipped with their values.
        match r.read_str() {
            Ok("since") => {
                if since.is_some() {
                    return fail(id, "duplicate option");
                }
                let Ok(s) = r.read_u64() else {
                    return fail(id, "since must be an unsigned integer");
                };
                since = Some(s);
            }
            Ok("epoch") => {
                if epoch.is_some() {
                    return fail(id, "duplicate option");
                }
                if r.peek_is_nil() {
                    let _ = r.skip_value();
                    epoch = Some(None);
                } else {
                    let Ok(e) = r.read_str() else {
                        return fail(id, "epoch must be a string");
                    };
                    epoch = Some(Some(e));
                }
            }
            Ok(_) => {
                if r.skip_value().is_err() {
                    return fail(id, "malformed options");
                }
            }
            Err(_) => {
                if r.skip_value().is_err() || r.skip_value().is_err() {
                    return fail(id, "malformed options");
                }
            }
        }
    }
    Ok(Request::Subscribe {
        id,
        topic,
        recover: since.map(|since| Recover {
            since,
            epoch: epoch.flatten(),
        }),
    })
}

// ---------------------------------------------------------------------------
// Gateway → client frames

/// Builds one complete unmasked binary frame whose MessagePack body is
/// exactly `body_len` bytes, in a single allocation of the final size.
fn frame(body_len: usize, write: impl FnOnce(&mut Writer)) -> Bytes {
    let mut hdr = [0u8; 10];
    let h = ws::frame_header(ws::OP_BINARY, body_len, &mut hdr);
    let mut v = Vec::with_capacity(h + body_len);
    v.extend_from_slice(&hdr[..h]);
    let mut w = Writer::from_vec(v);
    write(&mut w);
    let v = w.into_vec();
    debug_assert_eq!(v.len(), h + body_len, "size computation out of sync");
    debug_assert_eq!(v.len(), v.capacity());
    Bytes::from(v)
}

/// Exact encoded size of a `[16, topic, seq, payload]` body.
pub fn publication_len(topic: &str, seq: u64, payload_len: usize) -> usize {
    1 + 1 + msgpack::str_len(topic.len()) + msgpack::uint_len(seq) + msgpack::bin_len(payload_len)
}

/// `[16, topic, seq, bin payload]` as a whole WebSocket frame. This is the
/// per-message hot path: one allocation of exactly the final size.
pub fn publication_frame(topic: &str, seq: u64, payload: &[u8]) -> Bytes {
    frame(publication_len(topic, seq, payload.len()), |w| {
        w.array(4)
            .uint(u64::from(PUBLICATION))
            .str(topic)
            .uint(seq)
            .bin(payload);
    })
}

/// `[17, id, {"seq": seq, "epoch": epoch, "recovered": recovered}]`.
pub fn subscribe_reply_frame(id: u32, seq: u64, epoch: &str, recovered: bool) -> Bytes {
    let len = 1
        + 1
        + msgpack::uint_len(u64::from(id))
        + 1
        + msgpack::str_len(3)
        + msgpack::uint_len(seq)
        + msgpack::str_len(5)
        + msgpack::str_len(epoch.len())
        + msgpack::str_len(9)
        + 1;
    frame(len, |w| {
        w.array(3)
            .uint(u64::from(REPLY))
            .uint(u64::from(id))
            .map(3)
            .str("seq")
            .uint(seq)
            .str("epoch")
            .str(epoch)
            .str("recovered")
            .bool(recovered);
    })
}

/// `[17, id, {}]`.
pub fn reply_frame(id: u32) -> Bytes {
    frame(3 + msgpack::uint_len(u64::from(id)), |w| {
        w.array(3).uint(u64::from(REPLY)).uint(u64::from(id)).map(0);
    })
}

/// `[17, id, {"seq": seq}]`.
pub fn publish_reply_frame(id: u32, seq: u64) -> Bytes {
    let len = 3 + msgpack::uint_len(u64::from(id)) + msgpack::str_len(3) + msgpack::uint_len(seq);
    frame(len, |w| {
        w.array(3)
            .uint(u64::from(REPLY))
            .uint(u64::from(id))
            .map(1)
            .str("seq")
            .uint(seq);
    })
}

/// `[18, id, code, message]`.
pub fn error_frame(id: u32, code: u16, message: &str) -> Bytes {
    let len = 2
        + msgpack::uint_len(u64::from(id))
        + msgpack::uint_len(u64::from(code))
        + msgpack::str_len(message.len());
    frame(len, |w| {
        w.array(4)
            .uint(u64::from(ERROR))
            .uint(u64::from(id))
            .uint(u64::from(code))
            .str(message);
    })
}

// ---------------------------------------------------------------------------
// Client side: for tests and the load generator. Bare MessagePack, no
// WebSocket header (the client library frames and masks it).

pub fn encode_subscribe(id: u32, topic: &str, since: Option<(u64, &str)>) -> Vec<u8> {
    let mut w = Writer::with_capacity(32 + topic.len());
    match since {
        None => {
            w.array(3)
                .uint(u64::from(SUBSCRIBE))
                .uint(u64::from(id))
                .str(topic);
        }
        Some((seq, epoch)) => {
            w.array(4)
                .uint(u64::from(SUBSCRIBE))
                .uint(u64::from(id))
                .str(topic)
                .map(2)
                .str("since")
                .uint(seq)
                .str("epoch")
                .str(epoch);
        }
    }
    w.into_vec()
}

pub fn encode_unsubscribe(id: u32, topic: &str) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + topic.len());
    w.array(3)
        .uint(u64::from(UNSUBSCRIBE))
        .uint(u64::from(id))
        .str(topic);
    w.into_vec()
}

pub fn encode_ping(id: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(7);
    w.array(2).uint(u64::from(PING)).uint(u64::from(id));
    w.into_vec()
}

pub fn encode_refresh(id: u32, token: &str) -> Vec<u8> {
    let mut w = Writer::with_capacity(12 + token.len());
    w.array(3)
        .uint(u64::from(REFRESH))
        .uint(u64::from(id))
        .str(token);
    w.into_vec()
}

pub fn encode_publish(id: u32, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + topic.len() + payload.len());
    w.array(4)
        .uint(u64::from(PUBLISH))
        .uint(u64::from(id))
        .str(topic)
        .bin(payload);
    w.into_vec()
}

/// A gateway → client message, owned (client-side tools keep them around).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Publication {
        topic: String,
        seq: u64,
        payload: Vec<u8>,
    },
    Reply {
        id: u32,
        seq: Option<u64>,
        epoch: Option<String>,
        recovered: Option<bool>,
    },
    Error {
        id: u32,
        code: u16,
        message: String,
    },
}

/// Decodes one gateway → client message (bare MessagePack).
pub fn decode_server_message(buf: &[u8]) -> Result<ServerMessage, MsgpackError> {
    let mut r = Reader::new(buf);
    let n = r.read_array_len()?;
    let need = |k: u32| {
        if n < k {
            Err(MsgpackError::Type("more array elements"))
        } else {
            Ok(())
        }
    };
    need(1)?;
    let kind = r.read_u64()?;
    let (used, msg) = match kind {
        k if k == u64::from(PUBLICATION) => {
            need(4)?;
            let topic = r.read_str()?.to_owned();
            let seq = r.read_u64()?;
            let payload = r.read_bin()?.to_vec();
            (
                4,
                ServerMessage::Publication {
                    topic,
                    seq,
                    payload,
                },
            )
        }
        k if k == u64::from(REPLY) => {
            need(3)?;
            let id = r.read_u32()?;
            let (mut seq, mut epoch, mut recovered) = (None, None, None);
            for _ in 0..r.read_map_len()? {
                match r.read_str() {
                    Ok("seq") => seq = Some(r.read_u64()?),
                    Ok("epoch") => epoch = Some(r.read_str()?.to_owned()),
                    Ok("recovered") => recovered = Some(r.read_bool()?),
                    Ok(_) => r.skip_value()?,
                    Err(_) => {
                        r.skip_value()?;
                        r.skip_value()?;
                    }
                }
            }
            (
                3,
                ServerMessage::Reply {
                    id,
                    seq,
                    epoch,
                    recovered,
                },
            )
        }
        k if k == u64::from(ERROR) => {
            need(4)?;
            let id = r.read_u32()?;
            let code = r.read_u16()?;
            let message = r.read_str()?.to_owned();
            (4, ServerMessage::Error { id, code, message })
        }
        _ => return Err(MsgpackError::Type("a known server message type")),
    };
    for _ in used..n {
        r.skip_value()?;
    }
    if !r.is_empty() {
        return Err(MsgpackError::Type("end of message"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The msgpack body of a server frame, after checking its ws header.
    fn body(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0x82, "FIN + binary");
        assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
        let (len, h) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(a) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        assert_eq!(frame.len(), h + len, "header length matches body");
        &frame[h..]
    }

    fn ok(buf: &[u8]) -> Request<'_> {
        decode_request(buf).unwrap_or_else(|e| panic!("{buf:02x?}: {e:?}"))
    }

    fn err(buf: &[u8]) -> DecodeError {
        decode_request(buf).expect_err("should fail")
    }

    #[test]
    fn publication_exact_bytes() {
        let f = publication_frame("a", 1, b"x");
        assert_eq!(
            &f[..],
            [0x82, 0x08, 0x94, 0x10, 0xa1, b'a', 0x01, 0xc4, 0x01, b'x']
        );
        let f = publication_frame("md.X", 300, &[]);
        assert_eq!(
            &f[..],
            [0x82, 0x0c, 0x94, 0x10, 0xa4, b'm', b'd', b'.', b'X', 0xcd, 0x01, 0x2c, 0xc4, 0x00]
        );
    }

    #[test]
    fn publication_sizes_and_round_trip() {
        for plen in [
            0usize, 1, 100, 115, 116, 117, 255, 256, 65_000, 65_535, 65_536, 100_000,
        ] {
            for seq in [0u64, 1, 127, 128, 70_000, 1 << 33, u64::MAX] {
                let payload = vec![0xab; plen];
                let f = publication_frame("md.BTC-USD", seq, &payload);
                let b = body(&f);
                assert_eq!(b.len(), publication_len("md.BTC-USD", seq, plen));
                assert_eq!(
                    decode_server_message(b),
                    Ok(ServerMessage::Publication {
                        topic: "md.BTC-USD".into(),
                        seq,
                        payload,
                    })
                );
            }
        }
    }

    #[test]
    fn reply_frames_exact_bytes() {
        assert_eq!(&reply_frame(7)[..], [0x82, 0x04, 0x93, 0x11, 0x07, 0x80]);
        assert_eq!(
            &publish_reply_frame(1, 2)[..],
            [0x82, 0x09, 0x93, 0x11, 0x01, 0x81, 0xa3, b's', b'e', b'q', 0x02]
        );
        assert_eq!(
            &error_frame(0, 400, "bad")[..],
            [0x82, 0x0a, 0x94, 0x12, 0x00, 0xcd, 0x01, 0x90, 0xa3, b'b', b'a', b'd']
        );
        let f = subscribe_reply_frame(1, 0, "e", false);
        let mut want = vec![0x93, 0x11, 0x01, 0x83, 0xa3, b's', b'e', b'q', 0x00, 0xa5];
        want.extend_from_slice(b"epoch");
        want.extend_from_slice(&[0xa1, b'e', 0xa9]);
        want.extend_from_slice(b"recovered");
        want.push(0xc2);
        assert_eq!(body(&f), &want[..]);
    }

    #[test]
    fn reply_frames_round_trip() {
        for id in [0u32, 1, 200, 70_000, u32::MAX] {
            for seq in [0u64, 5, 1 << 40] {
                let f = subscribe_reply_frame(id, seq, "epoch-123", true);
                assert_eq!(
                    decode_server_message(body(&f)),
                    Ok(ServerMessage::Reply {
                        id,
                        seq: Some(seq),
                        epoch: Some("epoch-123".into()),
                        recovered: Some(true),
                    })
                );
                let f = publish_reply_frame(id, seq);
                assert_eq!(
                    decode_server_message(body(&f)),
                    Ok(ServerMessage::Reply {
                        id,
                        seq: Some(seq),
                        epoch: None,
                        recovered: None
                    })
                );
            }
            assert_eq!(
                decode_server_message(body(&reply_frame(id))),
                Ok(ServerMessage::Reply {
                    id,
                    seq: None,
                    epoch: None,
                    recovered: None
                })
            );
            for code in [400u16, 403, 500] {
                let long = "m".repeat(300);
                for msg in ["", "not allowed", &long] {
                    let f = error_frame(id, code, msg);
                    assert_eq!(
                        decode_server_message(body(&f)),
                        Ok(ServerMessage::Error {
                            id,
                            code,
                            message: msg.into()
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn request_round_trips() {
        assert_eq!(
            ok(&encode_subscribe(1, "md.BTC", None)),
            Request::Subscribe {
                id: 1,
                topic: "md.BTC",
                recover: None
            }
        );
        assert_eq!(
            ok(&encode_subscribe(u32::MAX, "t", Some((42, "ep")))),
            Request::Subscribe {
                id: u32::MAX,
                topic: "t",
                recover: Some(Recover {
                    since: 42,
                    epoch: Some("ep")
                }),
            }
        );
        assert_eq!(
            ok(&encode_unsubscribe(2, "t")),
            Request::Unsubscribe { id: 2, topic: "t" }
        );
        assert_eq!(ok(&encode_ping(3)), Request::Ping { id: 3 });
        assert_eq!(
            ok(&encode_refresh(4, "a.b.c")),
            Request::Refresh {
                id: 4,
                token: "a.b.c"
            }
        );
        let big = vec![1u8; 70_000];
        assert_eq!(
            ok(&encode_publish(5, "t", &big)),
            Request::Publish {
                id: 5,
                topic: "t",
                payload: &big
            }
        );
    }

    #[test]
    fn request_exact_bytes() {
        assert_eq!(encode_ping(3), [0x92, 0x03, 0x03]);
        assert_eq!(
            encode_subscribe(1, "a", None),
            [0x93, 0x01, 0x01, 0xa1, b'a']
        );
        assert_eq!(
            encode_publish(9, "a", b"z"),
            [0x94, 0x05, 0x09, 0xa1, b'a', 0xc4, 0x01, b'z']
        );
        assert_eq!(
            ok(&[0x93, 0x01, 0x07, 0xa1, b'a']),
            Request::Subscribe {
                id: 7,
                topic: "a",
                recover: None
            }
        );
    }

    #[test]
    fn ids_and_kinds() {
        let reqs = [
            (
                Request::Subscribe {
                    id: 1,
                    topic: "t",
                    recover: None,
                },
                "subscribe",
            ),
            (Request::Unsubscribe { id: 2, topic: "t" }, "unsubscribe"),
            (Request::Ping { id: 3 }, "ping"),
            (Request::Refresh { id: 4, token: "x" }, "refresh"),
            (
                Request::Publish {
                    id: 5,
                    topic: "t",
                    payload: b"",
                },
                "publish",
            ),
        ];
        for (i, (r, k)) in reqs.iter().enumerate() {
            assert_eq!(r.id(), i as u32 + 1);
            assert_eq!(r.kind(), *k);
        }
    }

    #[test]
    fn subscribe_options() {
        // Signed encodings of non-negative numbers are accepted (JS encoders).
        let b = [
            0x94, 0x01, 0xd0, 0x05, 0xa1, b't', 0x81, 0xa5, b's', b'i', b'n', b'c', b'e', 0xd1,
            0x01, 0x00,
        ];
        assert_eq!(
            ok(&b),
            Request::Subscribe {
                id: 5,
                topic: "t",
                recover: Some(Recover {
                    since: 256,
                    epoch: None
                })
            }
        );
        // epoch without since: no recovery; unknown keys of any type skipped.
        let mut w = Writer::new();
        w.array(4)
            .uint(1)
            .uint(1)
            .str("t")
            .map(3)
            .str("epoch")
            .str("e")
            .str("x")
            .array(1)
            .uint(1)
            .uint(7)
            .str("y");
        assert_eq!(
            ok(&w.into_vec()),
            Request::Subscribe {
                id: 1,
                topic: "t",
                recover: None
            }
        );
        // nil options and nil epoch.
        let mut w = Writer::new();
        w.array(4).uint(1).uint(1).str("t").raw(&[0xc0]);
        assert_eq!(
            ok(&w.into_vec()),
            Request::Subscribe {
                id: 1,
                topic: "t",
                recover: None
            }
        );
        let mut w = Writer::new();
        w.array(4)
            .uint(1)
            .uint(1)
            .str("t")
            .map(2)
            .str("since")
            .uint(0)
            .str("epoch")
            .raw(&[0xc0]);
        assert_eq!(
            ok(&w.into_vec()),
            Request::Subscribe {
                id: 1,
                topic: "t",
                recover: Some(Recover {
                    since: 0,
                    epoch: None
                })
            }
        );
        // Empty map.
        let mut w = Writer::new();
        w.array(4).uint(1).uint(1).str("t").map(0);
        assert_eq!(
            ok(&w.into_vec()),
            Request::Subscribe {
                id: 1,
                topic: "t",
                recover: None
            }
        );
        // Options followed by trailing elements.
        let mut w = Writer::new();
        w.array(5)
            .uint(1)
            .uint(1)
            .str("t")
            .map(1)
            .str("since")
            .uint(3)
            .str("later");
        assert_eq!(
            ok(&w.into_vec()),
            Request::Subscribe {
                id: 1,
                topic: "t",
                recover: Some(Recover {
                    since: 3,
                    epoch: None
                })
            }
        );
    }

    #[test]
    fn subscribe_option_errors() {
        let opts = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::new();
            w.array(4).uint(1).uint(9).str("t");
            f(&mut w);
            err(&w.into_vec())
        };
        let e = opts(&|w| {
            w.uint(1);
        });
        assert_eq!(
            e,
            DecodeError {
                id: 9,
                message: "subscribe options must be a map"
            }
        );
        let e = opts(&|w| {
            w.map(1).str("since").str("5");
        });
        assert_eq!(
            e,
            DecodeError {
                id: 9,
                message: "since must be an unsigned integer"
            }
        );
        let e = opts(&|w| {
            w.map(1).str("since").raw(&[0xff]);
        });
        assert_eq!(e.message, "since must be an unsigned integer");
        let e = opts(&|w| {
            w.map(2).str("since").uint(1).str("epoch").uint(1);
        });
        assert_eq!(e.message, "epoch must be a string");
        let e = opts(&|w| {
            w.map(2).str("since").uint(1).str("since").uint(2);
        });
        assert_eq!(e.message, "duplicate option");
        let e = opts(&|w| {
            w.map(2).str("since").uint(1);
        });
        assert_eq!(e.message, "malformed options");
    }

    #[test]
    fn malformed_requests() {
        assert_eq!(
            err(&[]),
            DecodeError {
                id: 0,
                message: "request must be an array"
            }
        );
        assert_eq!(err(&[0x81, 0x01, 0x02]).id, 0);
        assert_eq!(
            err(&[0x90]),
            DecodeError {
                id: 0,
                message: "empty request"
            }
        );
        assert_eq!(
            err(&[0x91, 0x03]),
            DecodeError {
                id: 0,
                message: "missing request id"
            }
        );
        assert_eq!(
            err(&[0x92, 0xa1, b'x', 0x01]).message,
            "request type must be an unsigned integer"
        );
        assert_eq!(
            err(&[0x92, 0x03, 0xff]),
            DecodeError {
                id: 0,
                message: "request id must be a uint32"
            }
        );
        assert_eq!(err(&[0x92, 0x03, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]).id, 0);
        // Unknown type: error carries the id.
        assert_eq!(
            err(&[0x92, 0x09, 0x2a]),
            DecodeError {
                id: 42,
                message: "unknown request type"
            }
        );
        assert_eq!(
            err(&[0x92, 0xcd, 0x01, 0x01, 0x2a]).message,
            "unknown request type"
        );
        assert_eq!(err(&[0x92, 0x10, 0x2a]).message, "unknown request type");
        // Missing elements.
        for t in [SUBSCRIBE, UNSUBSCRIBE, REFRESH, PUBLISH] {
            assert_eq!(
                err(&[0x92, t, 0x07]),
                DecodeError {
                    id: 7,
                    message: "missing elements"
                }
            );
        }
        assert_eq!(
            err(&[0x93, PUBLISH, 0x07, 0xa1, b't']).message,
            "missing elements"
        );
        // Truncated array (declares more than there is).
        assert_eq!(
            err(&[0x93, SUBSCRIBE, 0x07]).message,
            "topic must be a string"
        );
        // Type errors carry the id.
        assert_eq!(
            err(&[0x93, SUBSCRIBE, 0x07, 0x01]),
            DecodeError {
                id: 7,
                message: "topic must be a string"
            }
        );
        assert_eq!(
            err(&[0x93, REFRESH, 0x07, 0x01]),
            DecodeError {
                id: 7,
                message: "token must be a string"
            }
        );
        assert_eq!(
            err(&[0x94, PUBLISH, 0x07, 0xa1, b't', 0xa1, b'p']),
            DecodeError {
                id: 7,
                message: "payload must be bin"
            }
        );
    }

    #[test]
    fn invalid_topics() {
        for bad in ["", "a b", "a*", "é"] {
            for enc in [
                encode_subscribe(3, bad, None),
                encode_unsubscribe(3, bad),
                encode_publish(3, bad, b""),
            ] {
                assert_eq!(
                    err(&enc),
                    DecodeError {
                        id: 3,
                        message: "invalid topic"
                    },
                    "{bad:?}"
                );
            }
        }
        let long = "x".repeat(129);
        assert_eq!(
            err(&encode_subscribe(3, &long, None)).message,
            "invalid topic"
        );
        assert!(decode_request(&encode_subscribe(3, &long[..128], None)).is_ok());
    }

    #[test]
    fn trailing_elements_and_bytes() {
        let mut w = Writer::new();
        w.array(5)
            .uint(3)
            .uint(1)
            .map(1)
            .str("k")
            .array(2)
            .uint(1)
            .uint(2)
            .bin(b"x")
            .raw(&[0xc0]);
        assert_eq!(ok(&w.into_vec()), Request::Ping { id: 1 });
        // A trailing element that is cut short.
        assert_eq!(
            err(&[0x93, 0x03, 0x01, 0xa5, b'a']),
            DecodeError {
                id: 1,
                message: "malformed trailing element"
            }
        );
        // Declared elements missing entirely.
        assert_eq!(
            err(&[0x93, 0x03, 0x01]).message,
            "malformed trailing element"
        );
        // Bytes after the array.
        let mut b = encode_ping(1);
        b.push(0xc0);
        assert_eq!(
            err(&b),
            DecodeError {
                id: 1,
                message: "trailing bytes after the request"
            }
        );
    }

    #[test]
    fn server_message_errors() {
        assert!(decode_server_message(&[]).is_err());
        assert!(decode_server_message(&[0x90]).is_err());
        assert!(decode_server_message(&[0x91, 0x10]).is_err());
        assert!(decode_server_message(&[0x93, 0x13, 0x01, 0x80]).is_err());
        assert!(decode_server_message(&[0x93, 0x11, 0x01, 0x80, 0x00]).is_err());
        assert!(decode_server_message(&[
            0x93, 0x11, 0x01, 0x81, 0xa3, b's', b'e', b'q', 0xa1, b'x'
        ])
        .is_err());
        // Trailing elements and unknown reply keys are ignored.
        assert_eq!(
            decode_server_message(&[0x94, 0x11, 0x01, 0x81, 0xa1, b'z', 0x05, 0xc0]),
            Ok(ServerMessage::Reply {
                id: 1,
                seq: None,
                epoch: None,
                recovered: None
            })
        );
    }

    fn valid_requests() -> Vec<Vec<u8>> {
        vec![
            encode_subscribe(1, "md.BTC-USD", None),
            encode_subscribe(70_000, "md.BTC-USD", Some((1 << 35, "e1"))),
            encode_unsubscribe(2, "t"),
            encode_ping(3),
            encode_refresh(4, "hdr.payload.sig"),
            encode_publish(5, "t", &[1, 2, 3, 4, 5, 6]),
        ]
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        for v in valid_requests() {
            for cut in 0..v.len() {
                assert!(decode_request(&v[..cut]).is_err(), "{v:02x?} cut at {cut}");
            }
            for i in 0..v.len() {
                for b in 0..=255u8 {
                    let mut m = v.clone();
                    m[i] = b;
                    let _ = decode_request(&m);
                }
            }
        }
        let frames = [
            publication_frame("md.x", 1 << 20, b"payload"),
            subscribe_reply_frame(9, 9, "ep", true),
            error_frame(3, 403, "no"),
        ];
        for f in frames {
            let v = body(&f).to_vec();
            for cut in 0..v.len() {
                assert!(decode_server_message(&v[..cut]).is_err());
            }
            for i in 0..v.len() {
                for b in 0..=255u8 {
                    let mut m = v.clone();
                    m[i] = b;
                    let _ = decode_server_message(&m);
                }
            }
        }
    }
}
