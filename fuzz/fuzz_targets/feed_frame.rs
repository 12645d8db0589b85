//! The ingest feed protocol (`wire::feed`, PROTOCOL.md §2) on arbitrary
//! bytes, framed the way the ingest task frames a TCP stream: the 4-byte
//! length is checked before a body is buffered, then the body decoded.
//! The first byte sets the frame limit (`byte * 64`, so that 413 and the
//! limit's edges are reachable).
//!
//! Checks: never panics; a frame is found exactly when all its bytes are
//! there (no prefix of it is a frame) and its body is within the limit;
//! errors are 400 or 413; a PUBLISH topic is a valid topic; a PING nonce
//! is exactly one MessagePack value and its PONG frames correctly; a HELLO
//! re-encodes to a frame that decodes to the same HELLO. The gateway →
//! feed decoder (what a feed client reads) gets the same bytes.
#![no_main]

use herald::wire::feed::{self, FeedFrame};
use herald::wire::msgpack::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, data)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 64;
    let _ = feed::decode_gateway_frame(data);
    let _ = feed::decode_frame(data);
    let mut rest = data;
    loop {
        for cut in 0..rest.len().min(4) {
            assert_eq!(feed::frame_len(&rest[..cut], max), Ok(None));
        }
        let total = match feed::frame_len(rest, max) {
            Ok(Some(total)) => total,
            Ok(None) => return,
            Err(e) => {
                assert!(matches!(e.code, 400 | 413), "code {}", e.code);
                return;
            }
        };
        assert!(total > 4 && total <= rest.len() && total - 4 <= max);
        assert_eq!(feed::frame_len(&rest[..total - 1], max), Ok(None));
        match feed::decode_frame(&rest[4..total]) {
            Ok(FeedFrame::Ping { nonce }) => {
                let mut r = Reader::new(nonce);
                assert!(r.skip_value().is_ok() && r.is_empty());
                let p = feed::pong(nonce);
                assert_eq!(feed::frame_len(&p, usize::MAX), Ok(Some(p.len())));
            }
            Ok(FeedFrame::Publish { topic, payload }) => {
                assert!(herald::wire::topic::is_valid_topic(topic));
                let again = feed::encode_publish(topic, payload);
                assert_eq!(
                    feed::decode_frame(&again[4..]),
                    Ok(FeedFrame::Publish { topic, payload })
                );
            }
            Ok(FeedFrame::Hello { token, name }) => {
                let again = feed::encode_hello(token, name);
                assert_eq!(
                    feed::decode_frame(&again[4..]),
                    Ok(FeedFrame::Hello { token, name })
                );
            }
            Err(e) => {
                assert_eq!(e.code, 400);
                return;
            }
        }
        rest = &rest[total..];
    }
});
