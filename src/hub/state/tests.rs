//! `HomeState` without sockets, tasks or a broker: messages and broker
//! events in, effects out.

use super::*;
use crate::broker::{codec, Event};
use crate::wire::client::publication_frame;

fn key(slot: u32) -> SessionKey {
    SessionKey {
        slot,
        generation: 0,
    }
}

fn req(shard: usize, slot: u32, recover: Option<(u64, &str)>) -> SubscribeReq {
    SubscribeReq {
        shard,
        session: key(slot),
        id: slot,
        recover: recover.map(|(s, e)| (s, Some(Box::from(e)))),
    }
}

fn acks(out: &mut Vec<Effect>) -> Vec<SubscribeAck> {
    let mut acks = Vec::new();
    let mut rest = Vec::new();
    for e in out.drain(..) {
        match e {
            Effect::Ack { ack, .. } => acks.push(*ack),
            other => rest.push(other),
        }
    }
    *out = rest;
    acks
}

fn delivered(out: &[Effect]) -> Vec<(Bytes, Targets)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Deliver { frame, to, .. } => Some((frame.clone(), to.clone())),
            _ => None,
        })
        .collect()
}

fn frame(topic: &str, seq: u64, p: &str) -> Bytes {
    publication_frame(topic, seq, p.as_bytes())
}

#[test]
fn local_publish_sequences_from_one_and_targets_only_subscribed_shards() {
    let mut h = HomeState::new(3, 8, Duration::from_secs(60));
    let t: Arc<str> = Arc::from("md.x");
    let now = Instant::now();
    let p = h.publish(&t, b"a", now);
    assert_eq!((p.seq, p.targets.len()), (1, 0));
    let mut out = Vec::new();
    h.subscribe(&t, req(2, 1, None), now, &mut out);
    let a = acks(&mut out);
    assert_eq!((a[0].seq, a[0].recovered), (1, false));
    let p = h.publish(&t, b"b", now);
    assert_eq!(p.seq, 2);
    assert_eq!(p.targets, &[2]);
    assert_eq!(p.frame, frame("md.x", 2, "b"));
    h.unsubscribe(&t, 2, now, &mut out);
    assert!(h.publish(&t, b"c", now).targets.is_empty());
    assert!(out.is_empty(), "one node: no broker effects");
}

#[test]
fn local_recovery_replays_exactly_the_missed_tail_of_the_same_epoch() {
    let mut h = HomeState::new(1, 4, Duration::from_secs(60));
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    for i in 0..6 {
        h.publish(&t, format!("{i}").as_bytes(), now);
    }
    let epoch = h
        .position("t")
        .map(|p| p.1)
        .unwrap_or_else(|| Arc::from(""));
    let mut out = Vec::new();
    h.subscribe(&t, req(0, 1, Some((3, &epoch))), now, &mut out);
    h.subscribe(&t, req(0, 2, Some((1, &epoch))), now, &mut out);
    h.subscribe(&t, req(0, 3, Some((3, "other"))), now, &mut out);
    let a = acks(&mut out);
    assert!(a[0].recovered);
    assert_eq!(
        a[0].replay,
        vec![frame("t", 4, "3"), frame("t", 5, "4"), frame("t", 6, "5")]
    );
    assert!(!a[1].recovered, "seq 2 fell out of a 4-frame history");
    assert!(!a[2].recovered && a[2].replay.is_empty(), "other epoch");
}

#[test]
fn an_expired_topic_comes_back_under_a_new_epoch() {
    let mut h = HomeState::new(1, 4, Duration::from_secs(10));
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    h.publish(&t, b"x", now);
    let (_, e1) = h.position("t").expect("exists");
    assert_eq!(h.expire(now + Duration::from_secs(5)), 0);
    assert_eq!(h.expire(now + Duration::from_secs(11)), 1);
    let p = h.publish(&t, b"y", now + Duration::from_secs(12));
    assert_eq!(p.seq, 1);
    let (_, e2) = h.position("t").expect("exists");
    assert_ne!(e1, e2);
}

// ---- cluster mode -------------------------------------------------------

fn cluster(shards: usize) -> HomeState {
    HomeState::new_cluster(
        shards,
        8,
        Duration::from_secs(60),
        ClusterSettings {
            max_batch_bytes: 16,
        },
    )
}

fn record(offset: u64, prev: u64, epoch: &str, first: u64, ps: &[&str]) -> Record {
    let ps: Vec<Bytes> = ps.iter().map(|p| Bytes::from(p.to_string())).collect();
    Record {
        offset,
        prev,
        epoch: Arc::from(epoch),
        first_seq: first,
        body: codec::encode(&ps),
    }
}

fn rec_event(topic: &str, r: Record) -> Event {
    Event::Record {
        topic: Arc::from(topic),
        record: r,
    }
}

/// The broker's answer to a successful append.
fn appended(t: &Arc<str>, first_seq: u64, tail: Tail) -> Event {
    Event::Appended {
        topic: t.clone(),
        result: Ok(Appended { first_seq, tail }),
    }
}

fn tail(epoch: &str, seq: u64, offset: u64) -> Tail {
    Tail {
        epoch: Arc::from(epoch),
        seq,
        offset,
    }
}

/// Subscribes one session of shard 0 to `t` and opens it at `tl`.
fn open_at(h: &mut HomeState, t: &Arc<str>, tl: Tail) -> SubscribeAck {
    let now = Instant::now();
    let mut out = Vec::new();
    h.subscribe(t, req(0, 1, None), now, &mut out);
    assert!(matches!(&out[..], [Effect::Open(x)] if x == t), "{out:?}");
    out.clear();
    h.on_event(
        Event::Opened {
            topic: t.clone(),
            result: Ok(tl),
        },
        now,
        &mut out,
    );
    let mut a = acks(&mut out);
    assert!(out.is_empty(), "{out:?}");
    a.remove(0)
}

#[test]
fn cluster_subscribe_opens_the_log_and_answers_with_its_tail() {
    let mut h = cluster(2);
    let t: Arc<str> = Arc::from("md.x");
    let a = open_at(&mut h, &t, tail("e1", 7, 40));
    assert_eq!((a.seq, &*a.epoch, a.recovered), (7, "e1", false));
    // A second subscriber is answered at once, without another open.
    let mut out = Vec::new();
    h.subscribe(&t, req(1, 2, None), Instant::now(), &mut out);
    let b = acks(&mut out);
    assert_eq!(b[0].seq, 7);
    assert!(out.is_empty());
}

#[test]
fn cluster_records_are_delivered_once_in_order_and_duplicates_dropped() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e", 2, 10));
    let now = Instant::now();
    let mut out = Vec::new();
    h.on_event(
        rec_event("t", record(12, 10, "e", 3, &["c", "d"])),
        now,
        &mut out,
    );
    h.on_event(
        rec_event("t", record(12, 10, "e", 3, &["c", "d"])),
        now,
        &mut out,
    );
    h.on_event(
        rec_event("t", record(13, 12, "e", 5, &["e"])),
        now,
        &mut out,
    );
    let d = delivered(&out);
    assert_eq!(
        d.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        vec![frame("t", 3, "c"), frame("t", 4, "d"), frame("t", 5, "e")]
    );
    assert_eq!(h.position("t").map(|p| p.0), Some(5));
}

#[test]
fn records_from_before_the_tail_are_dropped_and_later_ones_kept_while_opening() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let mut out = Vec::new();
    h.subscribe(&t, req(0, 1, None), now, &mut out);
    out.clear();
    // Arrive before the tail does.
    h.on_event(rec_event("t", record(5, 3, "e", 4, &["d"])), now, &mut out);
    h.on_event(rec_event("t", record(6, 5, "e", 5, &["e"])), now, &mut out);
    assert!(out.is_empty());
    h.on_event(
        Event::Opened {
            topic: t.clone(),
            result: Ok(tail("e", 4, 5)),
        },
        now,
        &mut out,
    );
    let a = acks(&mut out);
    assert_eq!(a[0].seq, 4);
    let d = delivered(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, frame("t", 5, "e"));
}

#[test]
fn a_gap_in_the_chain_is_fetched_and_applied_before_what_came_after() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e", 1, 3));
    let now = Instant::now();
    let mut out = Vec::new();
    // Offset 4 (seq 2) was lost on the way; 5 arrives.
    h.on_event(rec_event("t", record(5, 4, "e", 3, &["c"])), now, &mut out);
    assert!(
        matches!(&out[..], [Effect::Fetch { after: 3, .. }]),
        "{out:?}"
    );
    out.clear();
    h.on_event(rec_event("t", record(6, 5, "e", 4, &["d"])), now, &mut out);
    assert!(out.is_empty(), "held back while catching up");
    h.on_event(
        Event::Fetched {
            topic: t.clone(),
            after: 3,
            result: Ok(Fetched::Records {
                records: vec![record(4, 3, "e", 2, &["b"]), record(5, 4, "e", 3, &["c"])],
                more: false,
            }),
        },
        now,
        &mut out,
    );
    let d: Vec<Bytes> = delivered(&out).into_iter().map(|x| x.0).collect();
    assert_eq!(
        d,
        vec![frame("t", 2, "b"), frame("t", 3, "c"), frame("t", 4, "d")]
    );
}

#[test]
fn a_log_that_no_longer_reaches_back_evicts_the_subscribers() {
    let mut h = cluster(2);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e", 1, 3));
    let now = Instant::now();
    let mut out = Vec::new();
    h.on_event(rec_event("t", record(9, 8, "e", 6, &["f"])), now, &mut out);
    out.clear();
    h.on_event(
        Event::Fetched {
            topic: t.clone(),
            after: 3,
            result: Ok(Fetched::Moved(Some(tail("e", 6, 9)))),
        },
        now,
        &mut out,
    );
    assert!(
        matches!(&out[..], [Effect::Evict { to, .. }] if to[..] == [0]),
        "{out:?}"
    );
    assert_eq!(h.position("t").map(|p| p.0), Some(6));
}

#[test]
fn a_new_epoch_in_the_log_evicts_and_restarts_the_sequence() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e1", 5, 10));
    let mut out = Vec::new();
    h.on_event(
        rec_event("t", record(1, 0, "e2", 1, &["a"])),
        Instant::now(),
        &mut out,
    );
    assert!(matches!(out[0], Effect::Evict { .. }));
    assert_eq!(delivered(&out)[0].0, frame("t", 1, "a"));
    let (seq, epoch) = h.position("t").expect("known");
    assert_eq!((seq, &*epoch), (1, "e2"));
}

#[test]
fn publications_are_appended_in_batches_one_at_a_time_and_get_the_log_seqs() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let mut out = Vec::new();
    let mut waits = Vec::new();
    for p in ["aaaa", "bbbb", "cccc", "dddd"] {
        let (tx, rx) = oneshot::channel();
        waits.push(rx);
        h.enqueue(&t, Bytes::from(p), Origin::Waiter(tx), true, now, &mut out);
    }
    // The first went alone (nothing in flight yet); the rest wait.
    let [Effect::Append {
        payloads, expect, ..
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!((payloads.len(), expect.is_none()), (1, true));
    assert_eq!(h.pending_bytes(), 16);
    out.clear();
    h.on_event(appended(&t, 1, tail("e", 1, 3)), now, &mut out);
    // Next batch: as many as fit in 16 bytes (4 of framing each),
    // expecting the new tail.
    let append = out
        .iter()
        .find_map(|e| match e {
            Effect::Append {
                payloads, expect, ..
            } => Some((payloads.len(), expect.clone())),
            _ => None,
        })
        .expect("next batch");
    assert_eq!(append, (2, Some(tail("e", 1, 3))));
    for e in out.drain(..) {
        if let Effect::Resolve {
            origin: Origin::Waiter(tx),
            result,
        } = e
        {
            let _ = tx.send(result);
        }
    }
    assert_eq!(waits[0].try_recv(), Ok(Ok(1)));
    h.on_event(appended(&t, 2, tail("e", 3, 4)), now, &mut out);
    let seqs: Vec<u64> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Resolve { result, .. } => result.ok(),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);
}

#[test]
fn a_refused_batch_refuses_what_was_queued_behind_it_and_fails_the_feed() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let feed = Arc::new(FeedStatus::default());
    let mut out = Vec::new();
    for _ in 0..3 {
        h.enqueue(
            &t,
            Bytes::from("xxxxxxxx"),
            Origin::Feed(feed.clone()),
            true,
            now,
            &mut out,
        );
    }
    out.clear();
    h.on_event(
        Event::Appended {
            topic: t.clone(),
            result: Err(BrokerError::Unavailable),
        },
        now,
        &mut out,
    );
    let refused = out
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Resolve {
                    result: Err(HubError::Unavailable),
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 3);
    assert!(!out.iter().any(|e| matches!(e, Effect::Append { .. })));
    assert_eq!(h.pending_bytes(), 0);
}

#[test]
fn while_disconnected_publications_are_refused_at_once() {
    let mut h = cluster(1);
    let now = Instant::now();
    let mut out = Vec::new();
    h.on_event(Event::Disconnected, now, &mut out);
    h.enqueue(
        &Arc::from("t"),
        Bytes::from("x"),
        Origin::None,
        false,
        now,
        &mut out,
    );
    assert!(matches!(
        &out[..],
        [Effect::Resolve {
            result: Err(HubError::Unavailable),
            ..
        }]
    ));
}

#[test]
fn a_barrier_waits_for_the_batches_queued_before_it() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let mut out = Vec::new();
    h.enqueue(&t, Bytes::from("x"), Origin::None, true, now, &mut out);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    h.barrier(BarrierToken(tx));
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Empty)
    ));
    h.on_event(appended(&t, 1, tail("e", 1, 1)), now, &mut out);
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
    ));
}

#[test]
fn recovery_older_than_the_ring_is_read_from_the_log_history() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e", 4, 20));
    let now = Instant::now();
    let mut out = Vec::new();
    h.subscribe(&t, req(0, 2, Some((1, "e"))), now, &mut out);
    assert!(
        matches!(&out[..], [Effect::History { down_to_seq: 2, .. }]),
        "{out:?}"
    );
    out.clear();
    // A record arrives meanwhile: seq 5.
    h.on_event(
        rec_event("t", record(21, 20, "e", 5, &["e"])),
        now,
        &mut out,
    );
    h.on_event(
        Event::History {
            topic: t.clone(),
            result: Ok(vec![
                record(18, 0, "e", 1, &["a", "b"]),
                record(20, 18, "e", 3, &["c", "d"]),
                record(21, 20, "e", 5, &["e"]),
            ]),
        },
        now,
        &mut out,
    );
    let a = acks(&mut out);
    assert!(a[0].recovered);
    assert_eq!(a[0].seq, 5);
    assert_eq!(
        a[0].replay,
        vec![
            frame("t", 2, "b"),
            frame("t", 3, "c"),
            frame("t", 4, "d"),
            frame("t", 5, "e")
        ]
    );
}

#[test]
fn an_open_that_fails_answers_503_and_the_last_unsubscribe_closes_the_follow() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let mut out = Vec::new();
    h.subscribe(&t, req(0, 1, None), now, &mut out);
    out.clear();
    h.on_event(
        Event::Opened {
            topic: t.clone(),
            result: Err(BrokerError::Unavailable),
        },
        now,
        &mut out,
    );
    assert_eq!(acks(&mut out)[0].error, Some(503));
    // The shard releases the interest; a later subscriber opens again.
    h.unsubscribe(&t, 0, now, &mut out);
    assert!(out.is_empty(), "nothing followed: nothing to close");
    h.subscribe(&t, req(0, 2, None), now, &mut out);
    assert!(matches!(&out[..], [Effect::Open(_)]));
    out.clear();
    h.on_event(
        Event::Opened {
            topic: t.clone(),
            result: Ok(tail("e", 0, 1)),
        },
        now,
        &mut out,
    );
    acks(&mut out);
    h.unsubscribe(&t, 0, now, &mut out);
    assert!(matches!(&out[..], [Effect::Close(_)]), "{out:?}");
}

#[test]
fn after_a_reconnect_every_followed_topic_is_read_from_where_it_was() {
    let mut h = cluster(1);
    let t: Arc<str> = Arc::from("t");
    open_at(&mut h, &t, tail("e", 3, 7));
    let now = Instant::now();
    let mut out = Vec::new();
    h.on_event(Event::Disconnected, now, &mut out);
    h.on_event(Event::Reconnected, now, &mut out);
    assert!(
        matches!(&out[..], [Effect::Fetch { after: 7, .. }]),
        "{out:?}"
    );
    out.clear();
    h.on_event(
        Event::Fetched {
            topic: t.clone(),
            after: 7,
            result: Ok(Fetched::Records {
                records: vec![record(9, 7, "e", 4, &["d"])],
                more: false,
            }),
        },
        now,
        &mut out,
    );
    assert_eq!(delivered(&out)[0].0, frame("t", 4, "d"));
}

#[test]
fn batches_stay_below_the_brokers_record_limit_framing_included() {
    let mut h = cluster(1);
    h.set_record_limit(12);
    let t: Arc<str> = Arc::from("t");
    let now = Instant::now();
    let mut out = Vec::new();
    for _ in 0..3 {
        h.enqueue(&t, Bytes::from("xxxxxx"), Origin::None, true, now, &mut out);
    }
    h.on_event(appended(&t, 1, tail("e", 1, 1)), now, &mut out);
    let sizes: Vec<usize> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Append { payloads, .. } => Some(payloads.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![1, 1], "6 + 4 framing: one per 12-byte record");
}

mod props {
    use super::*;
    use crate::wire::client::{decode_server_message, ServerMessage};
    use proptest::prelude::*;

    fn seq_of(frame: &Bytes) -> u64 {
        // Skip the WebSocket header: PUBLICATION frames are binary, short
        // header below 126 bytes of payload, else 2 extra length bytes.
        let off = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        match decode_server_message(&frame[off..]) {
            Ok(ServerMessage::Publication { seq, .. }) => seq,
            other => panic!("not a publication: {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A subscriber recovering from `since`: the replay plus the live
        /// publications after the SUBSCRIBE are every seq after `since`,
        /// exactly once, in order; or, when the history no longer reaches
        /// back, no replay and `recovered: false`.
        #[test]
        fn replay_and_live_are_everything_after_since_exactly_once(
            history in 1usize..16,
            before in 1u64..40,
            since in 0u64..40,
            after in 0u64..20,
        ) {
            let since = since % (before + 1);
            let mut h = HomeState::new(2, history, Duration::from_secs(60));
            let t: Arc<str> = Arc::from("p.t");
            let now = Instant::now();
            for i in 0..before {
                h.publish(&t, format!("{i}").as_bytes(), now);
            }
            let (_, epoch) = h.position(&t).expect("topic exists");
            let mut out = Vec::new();
            h.subscribe(&t, req(1, 7, Some((since, &epoch))), now, &mut out);
            let ack = acks(&mut out).pop().expect("an ack");
            prop_assert_eq!(ack.seq, before);
            let mut live = Vec::new();
            for i in 0..after {
                let p = h.publish(&t, format!("live{i}").as_bytes(), now);
                prop_assert!(p.targets.contains(&1));
                live.push(seq_of(&p.frame));
            }
            let reachable = (before - since) as usize <= history.min(before as usize);
            prop_assert_eq!(ack.recovered, reachable);
            let mut got: Vec<u64> = ack.replay.iter().map(seq_of).collect();
            if ack.recovered {
                got.extend(&live);
                let want: Vec<u64> = (since + 1..=before + after).collect();
                prop_assert_eq!(got, want);
            } else {
                prop_assert!(got.is_empty());
                let want: Vec<u64> = (before + 1..=before + after).collect();
                prop_assert_eq!(live, want);
            }
        }
    }
}
