//! The client → gateway request decoder (`wire::client::decode_request`,
//! PROTOCOL.md §1: one MessagePack array per binary message) on arbitrary
//! bytes, plus the gateway → client decoder the client tools use and the
//! MessagePack reader's generic skip.
//!
//! Checks: never panics; a decoded topic is valid; whatever decodes
//! re-encodes to bytes that decode to the same request.
#![no_main]

use herald::wire::client::{self, Request};
use herald::wire::topic::is_valid_topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = client::decode_server_message(data);
    let mut r = herald::wire::msgpack::Reader::new(data);
    while r.skip_value().is_ok() && !r.is_empty() {}
    let Ok(req) = client::decode_request(data) else {
        return;
    };
    let _ = (req.id(), req.kind());
    let again = match req {
        Request::Subscribe { id, topic, recover } => {
            assert!(is_valid_topic(topic));
            match recover {
                None => client::encode_subscribe(id, topic, None),
                Some(r) => match r.epoch {
                    Some(e) => client::encode_subscribe(id, topic, Some((r.since, e))),
                    // The helper always sends an epoch; nothing to compare.
                    None => return,
                },
            }
        }
        Request::Unsubscribe { id, topic } => {
            assert!(is_valid_topic(topic));
            client::encode_unsubscribe(id, topic)
        }
        Request::Ping { id } => client::encode_ping(id),
        Request::Refresh { id, token } => client::encode_refresh(id, token),
        Request::Publish { id, topic, payload } => {
            assert!(is_valid_topic(topic));
            client::encode_publish(id, topic, payload)
        }
    };
    assert_eq!(client::decode_request(&again), Ok(req));
});
