//! Feeds arbitrary bytes to the WebSocket frame decoder the way a session
//! does (in chunks, dropping what it consumed) and checks that it never
//! panics, never claims more than it was given and never yields a message
//! over the limit. The low bit of the step byte picks `decode_text` (the
//! `autobahn` echo route's mode), whose text messages must be UTF-8.
#![no_main]

use herald::wire::ws::{Decoder, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[limit, step], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(limit) * 16;
    let text = step & 1 == 1;
    let step = usize::from(step >> 1).max(1);
    let mut dec = Decoder::new(max);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            let len = buf.len();
            let decoded = if text {
                dec.decode_text(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            match decoded {
                Ok(None) => break,
                Ok(Some((ev, n))) => {
                    assert!(n > 0 && n <= len, "consumed {n} of {len}");
                    let stop = match ev {
                        Some(Event::Binary(m)) => {
                            assert!(m.len() <= max);
                            false
                        }
                        Some(Event::TextMessage(t)) => {
                            // A &str is UTF-8 by construction; the size is
                            // what the decoder must enforce.
                            assert!(text && t.len() <= max);
                            false
                        }
                        Some(Event::Ping(p) | Event::Pong(p)) => {
                            assert!(p.len() <= 125);
                            false
                        }
                        // A session closes on these.
                        Some(Event::Text | Event::Close(..)) => true,
                        None => false,
                    };
                    if stop {
                        return;
                    }
                    buf.drain(..n);
                }
                Err(e) => {
                    assert!(matches!(e.code.code(), 1002 | 1007 | 1009));
                    return;
                }
            }
        }
        if fed >= input.len() {
            return;
        }
        let end = input.len().min(fed + step);
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
    }
});
