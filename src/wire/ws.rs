//! RFC 6455 framing, server side, sans-IO.
//!
//! Outgoing frames are unmasked, so one encoded frame is valid on every
//! socket: the hub encodes a PUBLICATION once and fans the same `Bytes` out.
//! Incoming frames come from untrusted clients and are small, so the
//! [`Decoder`] is strict rather than forgiving: anything RFC 6455 calls a
//! protocol error is refused with the close code to send, and size limits
//! are enforced from the declared length, before a payload is waited for.

use bytes::Bytes;

use super::close::Close;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A violation by the peer; `code` is the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("websocket protocol violation ({code}): {reason}")]
pub struct WsError {
    pub code: Close,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> WsError {
    WsError {
        code: Close::ProtocolError,
        reason,
    }
}

const TOO_BIG: WsError = WsError {
    code: Close::TooBig,
    reason: "message too big",
};

const TOO_MANY_FRAGMENTS: WsError = WsError {
    code: Close::TooBig,
    reason: "too many fragments",
};

/// How many frames one fragmented message may have: one per 16 bytes of
/// `max_message`, at least 64 (4096 at the default 64 KiB). Sizes alone do
/// not bound a message sent as empty continuation frames, which would hold
/// the connection and its reassembly buffer forever at no cost to the
/// peer; a real client's fragments are far larger than 16 bytes.
pub const fn max_fragments(max_message: usize) -> usize {
    let n = max_message / 16;
    if n < 64 {
        64
    } else {
        n
    }
}

/// One thing the peer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete binary message, reassembled if it was fragmented.
    Binary(&'a [u8]),
    /// The first frame of a text message. herald only speaks binary, so the
    /// caller closes with 1003; the decoder must not be used after this
    /// (the text payload is not consumed). Only [`Decoder::decode`] yields it.
    Text,
    /// A complete text message, reassembled if it was fragmented and
    /// checked to be UTF-8. Only [`Decoder::decode_text`] yields it (the
    /// `autobahn` echo route; the herald protocol has no text messages).
    TextMessage(&'a str),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The close code if the peer sent one, and its (possibly empty) reason.
    Close(Option<Close>, &'a str),
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragment {
    data: Vec<u8>,
    /// Set when the final fragment has arrived and `data` has been handed
    /// out as an event; the next `decode` call frees it.
    complete: bool,
    /// A text message (only with [`Decoder::decode_text`]).
    text: bool,
    /// For text: `data[..checked]` is known to be UTF-8; what follows is at
    /// most an incomplete character that the next fragment may finish.
    checked: usize,
    /// Frames received so far, bounded by [`max_fragments`].
    frames: usize,
}

const NOT_UTF8: WsError = WsError {
    code: Close::InvalidPayload,
    reason: "text message is not utf-8",
};

/// Checks the part of a text message not checked yet, so invalid UTF-8 is
/// refused at the first fragment that holds it (RFC 6455 §8.1: fail fast)
/// rather than once the message is complete. With `fin`, a character cut
/// off at the end is invalid too.
fn check_utf8(data: &[u8], checked: &mut usize, fin: bool) -> Result<(), WsError> {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => {
            *checked = data.len();
            Ok(())
        }
        // An incomplete character at the very end: the next fragment may
        // complete it.
        Err(e) if e.error_len().is_none() && !fin => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(NOT_UTF8),
    }
}

/// Incremental parser for masked client frames.
///
/// The fragment buffer lives behind an `Option<Box<_>>` so that an idle
/// decoder (the common case for thousands of quiet connections) is two
/// words and owns no heap memory.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    frag: Option<Box<Fragment>>,
}

struct Header {
    fin: bool,
    opcode: u8,
    payload_len: u64,
    /// Header length including the masking key, and the key; `None` while
    /// the key has not fully arrived.
    key: Option<(usize, [u8; 4])>,
}

/// Parses and validates a frame header from the front of `buf`. Every rule
/// that can be checked on the bytes present is checked before asking for
/// more, so a bad header is refused as early as possible.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        // No extension is ever negotiated, so any RSV bit is a violation.
        return Err(protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0f;
    let control = match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(protocol("unknown opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(protocol("unmasked client frame"));
    }
    let len7 = b1 & 0x7f;
    if control {
        if !fin {
            return Err(protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(protocol("control frame too long"));
        }
    }
    let (payload_len, ext) = match len7 {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 2),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(s) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                let n = u64::from_be_bytes(a);
                if n >> 63 != 0 {
                    return Err(protocol("64-bit length with the high bit set"));
                }
                (n, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    let mask_at = 2 + ext;
    // Even without the key, the length is known: that lets the caller
    // refuse an oversized message without waiting for more.
    let key = match buf.get(mask_at..mask_at + 4) {
        Some(&[a, b, c, d]) => Some((mask_at + 4, [a, b, c, d])),
        _ => None,
    };
    Ok(Some(Header {
        fin,
        opcode,
        payload_len,
        key,
    }))
}

/// XORs the client's masking key over `payload`. Working on 4-byte chunks
/// lets the compiler vectorise the loop.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        for (b, m) in c.iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// RFC 6455 §7.4 plus the IANA registry: codes a peer may put on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn parse_close(payload: &[u8]) -> Result<Event<'_>, WsError> {
    match payload {
        [] => Ok(Event::Close(None, "")),
        [_] => Err(protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_close_code(code) {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError {
                code: Close::InvalidPayload,
                reason: "close reason is not utf-8",
            })?;
            Ok(Event::Close(Some(Close::from_code(code)), reason))
        }
    }
}

impl Decoder {
    /// `max_message` bounds a whole (reassembled) binary message.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            frag: None,
        }
    }

    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// No fragmented message in progress (and no reassembly buffer held).
    pub fn is_idle(&self) -> bool {
        self.frag.as_ref().is_none_or(|f| f.complete)
    }

    /// Bytes held in the reassembly buffer, for memory accounting.
    pub fn buffered(&self) -> usize {
        self.frag.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Decodes at most one frame from the front of `buf`, unmasking it in
    /// place.
    ///
    /// - `Ok(None)`: the frame is incomplete; nothing was consumed.
    /// - `Ok(Some((event, consumed)))`: drop `consumed` bytes from the front
    ///   of the buffer once done with `event`. `event` is `None` when the
    ///   frame was a fragment absorbed into the reassembly buffer; just
    ///   call again.
    /// - `Err(e)`: close the connection with `e.code`.
    ///
    /// A reassembled message borrows the decoder's buffer, which the next
    /// call frees; a caller that loops until `Ok(None)` never holds it
    /// longer than needed.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(Option<Event<'a>>, usize)>, WsError> {
        self.decode_inner(buf, false)
    }

    /// [`Decoder::decode`] for a peer that may send text: a text message is
    /// reassembled like a binary one, within the same size limit, checked
    /// to be UTF-8 fragment by fragment (1007 at the first bad one) and
    /// yielded as [`Event::TextMessage`]. Used by the `autobahn` echo route;
    /// the herald protocol itself refuses text (1003).
    pub fn decode_text<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(Option<Event<'a>>, usize)>, WsError> {
        self.decode_inner(buf, true)
    }

    fn decode_inner<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        allow_text: bool,
    ) -> Result<Option<(Option<Event<'a>>, usize)>, WsError> {
        if self.frag.as_ref().is_some_and(|f| f.complete) {
            self.frag = None;
        }
        let Some(h) = parse_header(buf)? else {
            return Ok(None);
        };
        let in_progress = self.frag.as_ref().map(|f| f.data.len());
        match (h.opcode, in_progress) {
            (OP_CONT, None) => return Err(protocol("continuation without a message")),
            (OP_TEXT | OP_BINARY, Some(_)) => {
                return Err(protocol("new message inside a fragmented one"))
            }
            _ => {}
        }
        if h.opcode == OP_CONT
            && self
                .frag
                .as_ref()
                .is_some_and(|f| f.frames >= max_fragments(self.max_message))
        {
            return Err(TOO_MANY_FRAGMENTS);
        }
        if h.opcode == OP_CONT || h.opcode == OP_BINARY || (allow_text && h.opcode == OP_TEXT) {
            let held = in_progress.unwrap_or(0);
            let room = self.max_message.saturating_sub(held);
            if h.payload_len > room as u64 {
                return Err(TOO_BIG);
            }
        }
        let Some((hlen, mask)) = h.key else {
            return Ok(None);
        };
        if h.opcode == OP_TEXT && !allow_text {
            return Ok(Some((Some(Event::Text), hlen)));
        }
        // Data payloads were bounded by max_message above and control ones
        // by 125, so this only fails for a max_message near usize::MAX.
        let total = usize::try_from(h.payload_len)
            .ok()
            .and_then(|n| n.checked_add(hlen))
            .ok_or(TOO_BIG)?;
        let Some(frame) = buf.get_mut(..total) else {
            return Ok(None);
        };
        let payload = &mut frame[hlen..];
        unmask(payload, mask);
        let payload: &'a [u8] = payload;

        let event = match h.opcode {
            OP_PING => Some(Event::Ping(payload)),
            OP_PONG => Some(Event::Pong(payload)),
            OP_CLOSE => Some(parse_close(payload)?),
            OP_BINARY if h.fin => Some(Event::Binary(payload)),
            OP_TEXT if h.fin => Some(Event::TextMessage(
                std::str::from_utf8(payload).map_err(|_| NOT_UTF8)?,
            )),
            OP_BINARY | OP_TEXT => {
                let text = h.opcode == OP_TEXT;
                let mut checked = 0;
                if text {
                    check_utf8(payload, &mut checked, false)?;
                }
                self.frag = Some(Box::new(Fragment {
                    data: payload.to_vec(),
                    complete: false,
                    text,
                    checked,
                    frames: 1,
                }));
                None
            }
            _ => {
                // OP_CONT with a message in progress (checked above).
                let max = self.max_message;
                let Some(f) = self.frag.as_deref_mut() else {
                    return Err(protocol("continuation without a message"));
                };
                append_bounded(&mut f.data, payload, max);
                f.frames += 1;
                if f.text {
                    check_utf8(&f.data, &mut f.checked, h.fin)?;
                }
                if !h.fin {
                    None
                } else if f.text {
                    f.complete = true;
                    // Checked whole by check_utf8 just above.
                    Some(Event::TextMessage(
                        std::str::from_utf8(&f.data).map_err(|_| NOT_UTF8)?,
                    ))
                } else {
                    f.complete = true;
                    Some(Event::Binary(&f.data[..]))
                }
            }
        };
        Ok(Some((event, total)))
    }
}

/// Appends with amortised growth (so many tiny fragments stay linear) but
/// never reserves beyond `max`, the most the message may reach.
fn append_bounded(v: &mut Vec<u8>, more: &[u8], max: usize) {
    let need = v.len().saturating_add(more.len());
    if need > v.capacity() {
        let target = v.capacity().saturating_mul(2).min(max).max(need);
        v.reserve_exact(target - v.len());
    }
    v.extend_from_slice(more);
}

/// Writes a FIN, unmasked frame header for `payload_len` bytes into `out`
/// and returns its length (2, 4 or 10).
pub fn frame_header(opcode: u8, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | (opcode & 0x0f);
    if payload_len <= 125 {
        out[1] = payload_len as u8;
        2
    } else if let Ok(n) = u16::try_from(payload_len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&n.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Length of the header [`frame_header`] writes for `payload_len` bytes.
pub const fn header_len(payload_len: usize) -> usize {
    if payload_len <= 125 {
        2
    } else if payload_len <= 0xffff {
        4
    } else {
        10
    }
}

/// A whole unmasked frame in one allocation of exactly the right size.
fn frame(opcode: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut hdr = [0u8; 10];
    let n = frame_header(opcode, len, &mut hdr);
    let mut v = Vec::with_capacity(n + len);
    v.extend_from_slice(&hdr[..n]);
    for p in parts {
        v.extend_from_slice(p);
    }
    Bytes::from(v)
}

/// A close frame; the reason is cut (on a char boundary) to fit the
/// 125-byte control payload.
pub fn close_frame(code: Close, reason: &str) -> Bytes {
    let mut n = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    frame(
        OP_CLOSE,
        &[&code.code().to_be_bytes(), &reason.as_bytes()[..n]],
    )
}

/// The answer to a ping; `payload` is cut to 125 bytes so the frame stays
/// valid whatever the caller passes (the decoder never yields a longer one).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    let n = payload.len().min(MAX_CONTROL_PAYLOAD);
    frame(OP_PONG, &[&payload[..n]])
}

/// An empty ping, shared: the keepalive timer sends it to every socket.
pub fn ping_frame() -> Bytes {
    static PING: [u8; 2] = [0x80 | OP_PING, 0];
    Bytes::from_static(&PING)
}

pub fn binary_frame(body: &[u8]) -> Bytes {
    frame(OP_BINARY, &[body])
}

/// A text message as one frame (the `autobahn` echo route only: herald's
/// own protocol is binary).
pub fn text_frame(body: &str) -> Bytes {
    frame(OP_TEXT, &[body.as_bytes()])
}

/// A masked client frame, for tests and client-side tools. Control frames
/// and lengths are not checked, so tests can build invalid frames.
pub fn client_frame(opcode: u8, fin: bool, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; 10];
    let n = frame_header(opcode, payload.len(), &mut hdr);
    if !fin {
        hdr[0] &= 0x7f;
    }
    hdr[1] |= 0x80;
    let mut v = Vec::with_capacity(n + 4 + payload.len());
    v.extend_from_slice(&hdr[..n]);
    v.extend_from_slice(&mask);
    let start = v.len();
    v.extend_from_slice(payload);
    unmask(&mut v[start..], mask);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn bin(p: &[u8]) -> Vec<u8> {
        client_frame(OP_BINARY, true, M, p)
    }

    /// Owned copy of an event, so tests can collect across decode calls.
    #[derive(Debug, PartialEq)]
    enum Ev {
        Binary(Vec<u8>),
        Text,
        TextMessage(String),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(e: Event<'_>) -> Ev {
        match e {
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Text => Ev::Text,
            Event::TextMessage(t) => Ev::TextMessage(t.to_string()),
            Event::Ping(b) => Ev::Ping(b.to_vec()),
            Event::Pong(b) => Ev::Pong(b.to_vec()),
            Event::Close(c, r) => Ev::Close(c.map(Close::code), r.to_string()),
        }
    }

    /// Feeds `input` in chunks of `step` bytes the way a session would and
    /// collects events until the first error.
    fn run(dec: &mut Decoder, input: &[u8], step: usize) -> (Vec<Ev>, Option<WsError>) {
        run_mode(dec, input, step, false)
    }

    /// [`run`] with [`Decoder::decode_text`] when `allow_text` is set.
    fn run_mode(
        dec: &mut Decoder,
        input: &[u8],
        step: usize,
        allow_text: bool,
    ) -> (Vec<Ev>, Option<WsError>) {
        let mut buf: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        let mut fed = 0;
        loop {
            loop {
                let decoded = if allow_text {
                    dec.decode_text(&mut buf)
                } else {
                    dec.decode(&mut buf)
                };
                match decoded {
                    Ok(None) => break,
                    Ok(Some((ev, n))) => {
                        let text = ev == Some(Event::Text);
                        if let Some(ev) = ev {
                            events.push(own(ev));
                        }
                        assert!(n > 0 && n <= buf.len());
                        buf.drain(..n);
                        if text {
                            return (events, None);
                        }
                    }
                    Err(e) => return (events, Some(e)),
                }
            }
            if fed >= input.len() {
                return (events, None);
            }
            let end = (fed + step).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
    }

    fn decode_all(input: &[u8]) -> (Vec<Ev>, Option<WsError>) {
        run(&mut Decoder::new(1 << 16), input, usize::MAX)
    }

    fn err(input: &[u8]) -> WsError {
        match decode_all(input) {
            (_, Some(e)) => e,
            (ev, None) => panic!("expected an error, got {ev:?}"),
        }
    }

    #[test]
    fn idle_decoder_is_small() {
        assert!(std::mem::size_of::<Decoder>() <= 24);
        assert!(std::mem::size_of::<Decoder>() <= 16);
    }

    #[test]
    fn exact_client_frame_bytes() {
        // RFC 6455 §5.7: a masked "Hello" text frame.
        let f = client_frame(OP_TEXT, true, M, b"Hello");
        assert_eq!(
            f,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn single_binary_frame() {
        let mut f = bin(b"hello");
        let mut d = Decoder::new(100);
        let (ev, n) = d.decode(&mut f).unwrap().unwrap();
        assert_eq!(ev, Some(Event::Binary(b"hello")));
        assert_eq!(n, 11);
        assert!(d.is_idle());
    }

    #[test]
    fn every_prefix_needs_more_and_consumes_nothing() {
        let full = bin(&[9u8; 300]);
        for cut in 0..full.len() {
            let mut b = full[..cut].to_vec();
            let mut d = Decoder::new(1000);
            assert_eq!(d.decode(&mut b), Ok(None), "cut {cut}");
            // Nothing was unmasked in place either.
            assert_eq!(b, full[..cut]);
        }
    }

    #[test]
    fn lengths_16_and_64_bit() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let p: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (ev, e) = run(&mut Decoder::new(1 << 20), &bin(&p), 4096);
            assert_eq!(e, None);
            assert_eq!(ev, vec![Ev::Binary(p)], "len {len}");
        }
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        // 5 bytes announced with a 16-bit length: RFC says minimal, we are
        // lenient because it is harmless.
        let mut f = vec![0x82, 0xfe, 0x00, 0x05];
        f.extend_from_slice(&M);
        let start = f.len();
        f.extend_from_slice(b"hello");
        unmask(&mut f[start..], M);
        assert_eq!(decode_all(&f).0, vec![Ev::Binary(b"hello".to_vec())]);
    }

    #[test]
    fn control_frames() {
        let mut input = client_frame(OP_PING, true, M, b"p1");
        input.extend(client_frame(OP_PONG, true, M, b"p2"));
        input.extend(client_frame(OP_PING, true, M, &[]));
        input.extend(client_frame(OP_CLOSE, true, M, &[]));
        input.extend(client_frame(OP_CLOSE, true, M, &[0x03, 0xe8]));
        input.extend(client_frame(OP_CLOSE, true, M, b"\x0f\xa1bye \xc3\xa9"));
        let (ev, e) = decode_all(&input);
        assert_eq!(e, None);
        assert_eq!(
            ev,
            vec![
                Ev::Ping(b"p1".to_vec()),
                Ev::Pong(b"p2".to_vec()),
                Ev::Ping(vec![]),
                Ev::Close(None, String::new()),
                Ev::Close(Some(1000), String::new()),
                Ev::Close(Some(4001), "bye é".to_string()),
            ]
        );
        let max_ping = client_frame(OP_PING, true, M, &[1; 125]);
        assert_eq!(decode_all(&max_ping).0, vec![Ev::Ping(vec![1; 125])]);
    }

    #[test]
    fn fragmentation_with_interleaved_control_frames() {
        let mut input = client_frame(OP_BINARY, false, M, b"he");
        input.extend(client_frame(OP_PING, true, M, b"x"));
        input.extend(client_frame(OP_CONT, false, M, b"ll"));
        input.extend(client_frame(OP_PONG, true, M, b""));
        input.extend(client_frame(OP_CONT, false, M, b""));
        input.extend(client_frame(OP_CONT, true, M, b"o"));
        input.extend(bin(b"next"));
        for step in [1, 2, 3, 7, usize::MAX] {
            let mut d = Decoder::new(5);
            let (ev, e) = run(&mut d, &input, step);
            assert_eq!(e, None, "step {step}");
            assert_eq!(
                ev,
                vec![
                    Ev::Ping(b"x".to_vec()),
                    Ev::Pong(vec![]),
                    Ev::Binary(b"hello".to_vec()),
                    Ev::Binary(b"next".to_vec()),
                ]
            );
            assert!(d.is_idle());
            assert_eq!(d.buffered(), 0, "reassembly buffer released");
        }
    }

    #[test]
    fn fragment_state_and_release() {
        let mut d = Decoder::new(100);
        let mut a = client_frame(OP_BINARY, false, M, b"ab");
        assert_eq!(d.decode(&mut a).unwrap().unwrap().0, None);
        assert!(!d.is_idle());
        assert!(d.buffered() >= 2);
        let mut b = client_frame(OP_CONT, true, M, b"cd");
        let (ev, _) = d.decode(&mut b).unwrap().unwrap();
        assert_eq!(ev, Some(Event::Binary(b"abcd")));
        assert!(d.is_idle());
        let mut empty: [u8; 0] = [];
        assert_eq!(d.decode(&mut empty), Ok(None));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn reserved_bits_opcodes_and_mask() {
        for rsv in [0x40u8, 0x20, 0x10] {
            let mut f = bin(b"x");
            f[0] |= rsv;
            assert_eq!(err(&f).code.code(), 1002);
        }
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                err(&client_frame(op, true, M, b"x")).code.code(),
                1002,
                "opcode {op}"
            );
        }
        let unmasked = [0x82, 0x01, b'x'];
        assert_eq!(err(&unmasked), protocol("unmasked client frame"));
        // Refused from the first two bytes, without waiting for the rest.
        let mut d = Decoder::new(100);
        assert_eq!(d.decode(&mut [0x82, 0x7f]).unwrap_err().code.code(), 1002);
        assert_eq!(d.decode(&mut [0xc2, 0x80]).unwrap_err().code.code(), 1002);
    }

    #[test]
    fn bad_control_frames() {
        assert_eq!(
            err(&client_frame(OP_PING, false, M, b"")),
            protocol("fragmented control frame")
        );
        assert_eq!(
            err(&client_frame(OP_CLOSE, false, M, b"")).code.code(),
            1002
        );
        assert_eq!(
            err(&client_frame(OP_PONG, true, M, &[0; 126])),
            protocol("control frame too long")
        );
        // Even with a 16-bit length field announcing a small size.
        assert_eq!(err(&[0x89, 0xfe]).code.code(), 1002);
    }

    #[test]
    fn high_bit_64_bit_length() {
        let f = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(err(&f), protocol("64-bit length with the high bit set"));
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(
            err(&client_frame(OP_CONT, true, M, b"x")),
            protocol("continuation without a message")
        );
        let mut input = client_frame(OP_BINARY, false, M, b"a");
        input.extend(bin(b"b"));
        assert_eq!(err(&input), protocol("new message inside a fragmented one"));
        let mut input = client_frame(OP_BINARY, false, M, b"a");
        input.extend(client_frame(OP_TEXT, true, M, b"b"));
        assert_eq!(err(&input).code.code(), 1002);
        // After a finished fragmented message, a continuation is an error again.
        let mut input = client_frame(OP_BINARY, false, M, b"a");
        input.extend(client_frame(OP_CONT, true, M, b"b"));
        input.extend(client_frame(OP_CONT, true, M, b"c"));
        let (ev, e) = decode_all(&input);
        assert_eq!(ev, vec![Ev::Binary(b"ab".to_vec())]);
        assert_eq!(e.map(|e| e.code.code()), Some(1002));
    }

    #[test]
    fn too_big_is_refused_from_the_declared_length() {
        let mut d = Decoder::new(10);
        let f = bin(&[0; 11]);
        // Only the header is present: refused before any payload arrives.
        assert_eq!(d.decode(&mut f[..2].to_vec()), Err(TOO_BIG));
        let mut d = Decoder::new(10);
        assert_eq!(
            d.decode(&mut [0x82, 0xff, 0, 0, 0, 0, 0x10, 0, 0, 0]),
            Err(TOO_BIG)
        );
        assert_eq!(d.decode(&mut [0x82, 0xfe, 0xff, 0xff]), Err(TOO_BIG));
        assert_eq!(run(&mut Decoder::new(10), &bin(&[0; 10]), 3).1, None);
        // Reassembled messages count as a whole.
        let mut input = client_frame(OP_BINARY, false, M, &[0; 6]);
        input.extend(client_frame(OP_CONT, false, M, &[0; 4]));
        input.extend(client_frame(OP_CONT, true, M, &[0; 1]));
        let (ev, e) = run(&mut Decoder::new(10), &input, 1);
        assert!(ev.is_empty());
        assert_eq!(e, Some(TOO_BIG));
        let (_, e) = run(&mut Decoder::new(11), &input, 1);
        assert_eq!(e, None);
    }

    #[test]
    fn fragment_count_is_bounded() {
        assert_eq!(max_fragments(65536), 4096);
        assert_eq!(max_fragments(125), 64);
        // Empty continuations cost nothing in size; their number is bounded,
        // and the refusal comes from the header of the one too many.
        let max = 1024;
        let n = max_fragments(max);
        let mut input = client_frame(OP_BINARY, false, M, b"a");
        for _ in 1..n - 1 {
            input.extend(client_frame(OP_CONT, false, M, b""));
        }
        let mut last = input.clone();
        last.extend(client_frame(OP_CONT, true, M, b"z"));
        let (ev, e) = run(&mut Decoder::new(max), &last, 4096);
        assert_eq!(e, None);
        assert_eq!(ev, vec![Ev::Binary(b"az".to_vec())]);
        input.extend(client_frame(OP_CONT, false, M, b""));
        input.extend(&[0x80, 0x80]);
        let (ev, e) = run(&mut Decoder::new(max), &input, 4096);
        assert!(ev.is_empty());
        assert_eq!(e, Some(TOO_MANY_FRAGMENTS));
        assert_eq!(TOO_MANY_FRAGMENTS.code.code(), 1009);
    }

    #[test]
    fn reassembly_buffer_stays_within_limit() {
        // As many small fragments as allowed (16 bytes each, the most
        // max_fragments grants): growth is amortised but capped at max.
        let max = 16_000;
        assert_eq!(max_fragments(max), 1000);
        let mut input = client_frame(OP_BINARY, false, M, &[1; 16]);
        for _ in 0..998 {
            input.extend(client_frame(OP_CONT, false, M, &[1; 16]));
        }
        let mut d = Decoder::new(max);
        let mut buf = input.clone();
        let mut off = 0;
        while off < buf.len() {
            let (ev, n) = d.decode(&mut buf[off..]).unwrap().unwrap();
            assert_eq!(ev, None);
            off += n;
            assert!(d.buffered() <= max);
        }
        let mut last = client_frame(OP_CONT, true, M, &[1; 16]);
        let (ev, _) = d.decode(&mut last).unwrap().unwrap();
        assert_eq!(ev, Some(Event::Binary(&[1u8; 16_000][..])));
    }

    #[test]
    fn text_is_reported_at_its_header() {
        let mut d = Decoder::new(10);
        let mut f = client_frame(OP_TEXT, true, M, &[b'a'; 200]);
        // Header (4) + mask key (4) is enough; the payload is not required
        // and its size does not matter.
        let (ev, n) = d.decode(&mut f[..8]).unwrap().unwrap();
        assert_eq!((ev, n), (Some(Event::Text), 8));
        let mut d = Decoder::new(10);
        assert_eq!(d.decode(&mut f[..7]), Ok(None));
        let mut frag_text = client_frame(OP_TEXT, false, M, b"ab");
        assert_eq!(
            Decoder::new(10).decode(&mut frag_text).unwrap().unwrap().0,
            Some(Event::Text)
        );
    }

    fn text_run(input: &[u8], max: usize, step: usize) -> (Vec<Ev>, Option<WsError>) {
        run_mode(&mut Decoder::new(max), input, step, true)
    }

    #[test]
    fn text_messages_when_allowed() {
        // Whole, fragmented (a 2-byte character split across fragments and
        // a ping between them), empty, and the same bytes as binary.
        let mut input = client_frame(OP_TEXT, true, M, "héllo".as_bytes());
        let e = "é".as_bytes();
        input.extend(client_frame(OP_TEXT, false, M, &[b'a', e[0]]));
        input.extend(client_frame(OP_PING, true, M, b"p"));
        input.extend(client_frame(OP_CONT, false, M, &[e[1]]));
        input.extend(client_frame(OP_CONT, true, M, b"z"));
        input.extend(client_frame(OP_TEXT, true, M, b""));
        input.extend(client_frame(OP_BINARY, true, M, &[0xff]));
        for step in [1, 5, usize::MAX] {
            let (ev, e) = text_run(&input, 100, step);
            assert_eq!(e, None, "step {step}");
            assert_eq!(
                ev,
                vec![
                    Ev::TextMessage("héllo".into()),
                    Ev::Ping(b"p".to_vec()),
                    Ev::TextMessage("aéz".into()),
                    Ev::TextMessage(String::new()),
                    Ev::Binary(vec![0xff]),
                ]
            );
        }
        // Without decode_text, text is still refused at its header.
        assert_eq!(decode_all(&input).0, vec![Ev::Text]);
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment() {
        // Single frame.
        let (_, e) = text_run(&client_frame(OP_TEXT, true, M, &[b'a', 0xff]), 100, 1);
        assert_eq!(e, Some(NOT_UTF8));
        // The first fragment is already invalid: refused before the rest
        // (which never arrives here).
        let bad_first = client_frame(
            OP_TEXT,
            false,
            M,
            &[
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            ],
        );
        assert_eq!(text_run(&bad_first, 100, 3).1, Some(NOT_UTF8));
        // Invalid in a middle continuation.
        let mut input = client_frame(OP_TEXT, false, M, b"ok");
        input.extend(client_frame(OP_CONT, false, M, &[0xc0, 0x80]));
        assert_eq!(text_run(&input, 100, usize::MAX).1, Some(NOT_UTF8));
        // A character cut off by the final fragment.
        let mut input = client_frame(OP_TEXT, false, M, b"ok");
        input.extend(client_frame(OP_CONT, true, M, &[0xe2, 0x82]));
        assert_eq!(text_run(&input, 100, usize::MAX).1, Some(NOT_UTF8));
        // Text counts toward the message limit like binary.
        let (_, e) = text_run(&client_frame(OP_TEXT, true, M, &[b'a'; 11]), 10, 2);
        assert_eq!(e, Some(TOO_BIG));
    }

    #[test]
    fn close_payload_rules() {
        let c = |p: &[u8]| decode_all(&client_frame(OP_CLOSE, true, M, p));
        assert_eq!(c(&[0x03]).1, Some(protocol("close payload of one byte")));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(
                c(&code.to_be_bytes()).1.map(|e| e.code.code()),
                Some(1002),
                "code {code}"
            );
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert_eq!(
                c(&code.to_be_bytes()).0,
                vec![Ev::Close(Some(code), String::new())]
            );
        }
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd]); // truncated UTF-8
        assert_eq!(c(&bad).1.map(|e| e.code.code()), Some(1007));
    }

    #[test]
    fn unmask_matches_bytewise() {
        for len in 0..20 {
            let orig: Vec<u8> = (0..len as u8).collect();
            let mut v = orig.clone();
            unmask(&mut v, M);
            for (i, b) in v.iter().enumerate() {
                assert_eq!(*b, orig[i] ^ M[i % 4]);
            }
        }
    }

    #[test]
    fn headers_for_boundary_lengths() {
        let mut h = [0u8; 10];
        assert_eq!(frame_header(OP_BINARY, 0, &mut h), 2);
        assert_eq!(h[..2], [0x82, 0x00]);
        assert_eq!(frame_header(OP_BINARY, 125, &mut h), 2);
        assert_eq!(h[..2], [0x82, 125]);
        assert_eq!(frame_header(OP_BINARY, 126, &mut h), 4);
        assert_eq!(h[..4], [0x82, 126, 0x00, 126]);
        assert_eq!(frame_header(OP_BINARY, 65535, &mut h), 4);
        assert_eq!(h[..4], [0x82, 126, 0xff, 0xff]);
        assert_eq!(frame_header(OP_BINARY, 65536, &mut h), 10);
        assert_eq!(h, [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        for n in [0, 125, 126, 65535, 65536, 1 << 40] {
            assert_eq!(header_len(n), frame_header(OP_CLOSE, n, &mut h));
        }
    }

    #[test]
    fn server_frames() {
        assert_eq!(&ping_frame()[..], [0x89, 0x00]);
        assert_eq!(&pong_frame(b"ab")[..], [0x8a, 0x02, b'a', b'b']);
        assert_eq!(pong_frame(&[0; 200]).len(), 2 + 125);
        assert_eq!(&binary_frame(b"xyz")[..], [0x82, 0x03, b'x', b'y', b'z']);
        let big = binary_frame(&[0; 300]);
        assert_eq!(big[..4], [0x82, 126, 0x01, 0x2c]);
        assert_eq!(big.len(), 304);
        assert_eq!(
            &close_frame(Close::Normal, "")[..],
            [0x88, 0x02, 0x03, 0xe8]
        );
        assert_eq!(
            &close_frame(Close::SlowConsumer, "slow")[..],
            [0x88, 0x06, 0x0f, 0xa8, b's', b'l', b'o', b'w']
        );
        // 2-byte chars: 61 fit in 122 bytes, the 62nd would straddle 123.
        let long = "é".repeat(100);
        let c = close_frame(Close::GoingAway, &long);
        assert_eq!(c[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
        assert_eq!(close_frame(Close::GoingAway, &"a".repeat(500))[1], 125);
    }

    #[test]
    fn server_frames_decode_when_masked() {
        // Round trip: a server frame re-masked as a client would send it.
        for (op, payload) in [
            (OP_BINARY, &b"data"[..]),
            (OP_PING, b"p"),
            (OP_CLOSE, b"\x03\xe9bye"),
        ] {
            let (ev, e) = decode_all(&client_frame(op, true, M, payload));
            assert_eq!(e, None);
            assert_eq!(ev.len(), 1);
        }
    }

    fn valid_stream() -> Vec<u8> {
        let mut s = client_frame(OP_BINARY, false, M, b"frag");
        s.extend(client_frame(OP_PING, true, M, b"pi"));
        s.extend(client_frame(OP_CONT, true, M, &[7; 130]));
        s.extend(bin(b"whole"));
        s.extend(client_frame(OP_CLOSE, true, M, b"\x03\xe8ok"));
        s
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        let s = valid_stream();
        for cut in 0..=s.len() {
            let _ = run(&mut Decoder::new(64), &s[..cut], usize::MAX);
        }
        for i in 0..s.len() {
            for v in [0x00, 0xff, 0x80, 0x7f, 0x7e, 0x01, 0x0f, 0x70] {
                let mut m = s.clone();
                m[i] ^= v;
                let _ = run(&mut Decoder::new(64), &m, usize::MAX);
                let _ = run(&mut Decoder::new(200), &m, 13);
            }
        }
    }
}
