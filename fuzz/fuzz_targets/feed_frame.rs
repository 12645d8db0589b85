//! Runs arbitrary bytes through feed framing and decoding the way the
//! ingest task does: never panics, lengths stay within the limit, and a
//! PING nonce echoed in a PONG is still one well-formed value.
#![no_main]

use herald::wire::feed::{self, FeedFrame};
use herald::wire::msgpack::Reader;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let _ = feed::decode_gateway_frame(data);
    let _ = feed::decode_frame(data);
    let mut rest = data;
    while let Ok(Some(total)) = feed::frame_len(rest, MAX) {
        assert!(total > 4 && total <= rest.len() && total - 4 <= MAX);
        match feed::decode_frame(&rest[4..total]) {
            Ok(FeedFrame::Ping { nonce }) => {
                let mut r = Reader::new(nonce);
                assert!(r.skip_value().is_ok() && r.is_empty());
                let p = feed::pong(nonce);
                assert_eq!(feed::frame_len(&p, usize::MAX), Ok(Some(p.len())));
            }
            Ok(FeedFrame::Publish { topic, .. }) => {
                assert!(herald::wire::topic::is_valid_topic(topic));
            }
            Ok(FeedFrame::Hello { .. }) => {}
            Err(e) => {
                assert_eq!(e.code, 400);
                return;
            }
        }
        rest = &rest[total..];
    }
});
