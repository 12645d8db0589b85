//! The WebSocket frame decoder (`wire::ws::Decoder`) on arbitrary bytes,
//! fed the way a session feeds it: in chunks of arbitrary sizes, dropping
//! what each event consumed.
//!
//! Input: `[limit, k, k chunk sizes..., stream...]`; the message limit is
//! `limit * 16` bytes, the chunk sizes (`k % 16` of them) repeat, and the
//! high bit of `k` picks `decode_text` (the `autobahn` echo route's mode:
//! text messages reassembled and checked to be UTF-8, 1007 otherwise).
//!
//! Checks:
//! - it never panics, never claims more than it was given, and an error is
//!   one of the close codes a decoder may give (1002, 1007, 1009);
//! - a binary message is never over the limit, a control payload never
//!   over 125 bytes, the reassembly buffer never beyond the limit;
//! - chunking changes nothing: the events (and the error, if any) are the
//!   same as when the whole input arrives at once;
//! - a message is delivered whole: every binary message equals the
//!   concatenation of its frames' payloads, unmasked here independently of
//!   the decoder, and every ping/pong payload its frame's.
#![no_main]

use herald::wire::ws::{Decoder, Event};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Ev {
    Binary(Vec<u8>),
    /// A whole text message (`decode_text` only); UTF-8 by its type.
    TextMessage(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Text,
    Close(Option<u16>, String),
    /// A fragment absorbed into the reassembly buffer.
    Fragment,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Text or Close: a session stops reading there.
    Stopped,
    Error(u16),
    /// Input ran out with this many bytes not yet a whole frame.
    NeedMore(usize),
}

/// Header length and unmasked payload of the frame at the front of `f`
/// (which the decoder said is exactly one frame, or a text frame's header).
fn reference_payload(f: &[u8]) -> (usize, Vec<u8>) {
    let len7 = f[1] & 0x7f;
    let (len, ext) = match len7 {
        126 => (u64::from(u16::from_be_bytes([f[2], f[3]])), 2),
        127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()), 8),
        n => (u64::from(n), 0),
    };
    let hlen = 2 + ext + 4;
    let mask = &f[2 + ext..hlen];
    let body = f.get(hlen..hlen + len as usize).unwrap_or(&[]);
    (
        hlen,
        body.iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect(),
    )
}

/// Runs the decoder over `input` arriving in chunks of `sizes` (cycled).
/// With `check`, verifies each consumed frame against the reference.
fn run(max: usize, text: bool, input: &[u8], sizes: &[usize], check: bool) -> (Vec<Ev>, End) {
    let mut dec = Decoder::new(max);
    let mut buf: Vec<u8> = Vec::new();
    // Offset in `input` of buf[0]: frames are checked against the original,
    // still masked, bytes.
    let mut base = 0usize;
    let mut fed = 0usize;
    let mut chunk = 0usize;
    let mut events = Vec::new();
    // Unmasked payloads of the message being reassembled.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        loop {
            let len = buf.len();
            let decoded = if text {
                dec.decode_text(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            let (ev, n) = match decoded {
                Ok(None) => break,
                Ok(Some((ev, n))) => {
                    assert!(n > 0 && n <= len, "consumed {n} of {len}");
                    let ev = match ev {
                        Some(Event::Binary(m)) => {
                            assert!(m.len() <= max, "message of {} over {max}", m.len());
                            Ev::Binary(m.to_vec())
                        }
                        Some(Event::TextMessage(t)) => {
                            assert!(text, "a text message outside text mode");
                            assert!(t.len() <= max, "message of {} over {max}", t.len());
                            Ev::TextMessage(t.as_bytes().to_vec())
                        }
                        Some(Event::Ping(p)) => Ev::Ping(p.to_vec()),
                        Some(Event::Pong(p)) => Ev::Pong(p.to_vec()),
                        Some(Event::Text) => Ev::Text,
                        Some(Event::Close(code, reason)) => {
                            Ev::Close(code.map(|c| c.code()), reason.to_owned())
                        }
                        None => Ev::Fragment,
                    };
                    (ev, n)
                }
                Err(e) => {
                    let code = e.code.code();
                    assert!(matches!(code, 1002 | 1007 | 1009), "close code {code}");
                    return (events, End::Error(code));
                }
            };
            assert!(dec.buffered() <= max, "holds {} over {max}", dec.buffered());
            if check {
                let frame = &input[base..base + n];
                let opcode = frame[0] & 0x0f;
                if let Ev::Text = ev {
                } else {
                    let (hlen, payload) = reference_payload(frame);
                    assert_eq!(hlen + payload.len(), n, "frame length");
                    match &ev {
                        Ev::Ping(p) | Ev::Pong(p) => {
                            assert!(p.len() <= 125);
                            assert_eq!(*p, payload);
                        }
                        Ev::Fragment => {
                            assert!(opcode == 0 || opcode == 2 || (text && opcode == 1));
                            pending.extend_from_slice(&payload);
                        }
                        Ev::Binary(m) | Ev::TextMessage(m) => {
                            pending.extend_from_slice(&payload);
                            assert_eq!(*m, pending, "message not delivered whole");
                            pending.clear();
                        }
                        Ev::Close(..) | Ev::Text => {}
                    }
                }
            }
            let stop = matches!(ev, Ev::Text | Ev::Close(..));
            events.push(ev);
            if stop {
                return (events, End::Stopped);
            }
            buf.drain(..n);
            base += n;
        }
        if fed >= input.len() {
            return (events, End::NeedMore(buf.len()));
        }
        let step = sizes[chunk % sizes.len()];
        chunk += 1;
        let end = input.len().min(fed + step);
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[limit, k], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let text = k & 0x80 != 0;
    let k = usize::from(k % 16);
    if rest.len() < k {
        return;
    }
    let (sizes, input) = rest.split_at(k);
    let mut sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s).max(1)).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }
    let max = usize::from(limit) * 16;
    let whole = run(max, text, input, &[input.len().max(1)], true);
    let chunked = run(max, text, input, &sizes, false);
    assert_eq!(whole, chunked, "chunking changed the outcome");
});
