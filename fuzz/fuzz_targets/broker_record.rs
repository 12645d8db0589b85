//! The cluster record decoder (`broker::Record::decode`, `broker::codec`):
//! a log record's headers and body as they come back from NATS, written
//! by other nodes (or anyone who may publish on the stream's subjects).
//!
//! Input: three lines (the `Herald-Epoch`, `Herald-Seq` and
//! `Nats-Expected-Last-Subject-Sequence` headers; a missing line is a
//! missing header), then the body.
//!
//! Checks: never panics, including on what the hub then computes from the
//! record (`last_seq`, and `first_seq + i` for each payload); a decoded
//! record's body is exactly a sequence of length-prefixed payloads, which
//! `Payloads` yields in full and re-encodes to the same bytes; on any body
//! `validate` and `Payloads` agree and never read past the end.
#![no_main]

use bytes::Bytes;
use herald::broker::{codec, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let mut header = || parts.next().and_then(|h| std::str::from_utf8(h).ok());
    let (epoch, seq, prev) = (header(), header(), header());
    let body = parts.next().unwrap_or(&[]);

    // The framing on its own, whatever the headers.
    let n = codec::validate(body);
    let items: Vec<&[u8]> = codec::Payloads::new(body).collect();
    let framed: usize = items.iter().map(|p| p.len() + codec::OVERHEAD).sum();
    assert!(framed <= body.len());
    match n {
        Some(n) => {
            assert_eq!(items.len(), n);
            assert_eq!(framed, body.len());
        }
        None => assert!(framed < body.len()),
    }

    let Some(r) = Record::decode(epoch, seq, prev, Bytes::copy_from_slice(body), 7) else {
        return;
    };
    assert!(!r.epoch.is_empty() && r.epoch.len() <= 64);
    assert!(r.first_seq >= 1);
    let payloads: Vec<Bytes> = r.payloads().map(Bytes::copy_from_slice).collect();
    assert_eq!(codec::encode(&payloads), r.body);
    // What the hub does with a record (hub::state): the seq of each
    // publication, and where the topic's log ends.
    let last = r.last_seq();
    for i in 0..payloads.len() {
        assert!(r.first_seq + i as u64 <= last);
    }
    assert!(
        last.checked_add(1).is_some(),
        "the next record's seq would overflow"
    );
});
