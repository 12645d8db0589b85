//! Decodes arbitrary bytes as a client request (and as a server message):
//! never panics, and whatever decodes re-encodes to something that decodes
//! to the same request.
#![no_main]

use herald::wire::client::{self, Request};
use herald::wire::topic::is_valid_topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = client::decode_server_message(data);
    let Ok(req) = client::decode_request(data) else {
        return;
    };
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
