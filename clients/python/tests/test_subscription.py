"""A subscription's bookkeeping (dedupe, gaps, bounded buffer), fed by hand:
the REPLYs and PUBLICATIONs a gateway could send, including ones herald
itself does not produce in a test (a duplicate, a seq jump)."""

import asyncio

import pytest

from herald_client import HeraldError, Publication
from herald_client.client import Subscription


def make(buffer_size=100, since=None, epoch=None, callback=None):
    sub = Subscription(None, "t.x", since, epoch, buffer_size, callback)
    gaps = []
    sub.on_gap(gaps.append)
    return sub, gaps


async def drain(sub):
    out = []
    while any(isinstance(e, Publication) for e in sub._buf):
        out.append((await sub.next(1)).seq)
    return out


def reconnect(sub, **reply):
    """A new connection: the REPLY to the re-sent SUBSCRIBE."""
    sub._awaiting_reply = True
    sub._on_reply(reply)


def gap_tuples(gaps):
    return [(g.reason, g.last_seq, g.seq, g.epoch, g.dropped) for g in gaps]


async def test_replay_overlap_is_dropped():
    sub, gaps = make()
    sub._on_reply({"seq": 3, "epoch": "e1", "recovered": False})
    for s in (4, 5, 6):
        sub._on_publication(s, b"")
    # reconnect: recovered, and the gateway replays from before what we had
    sub._awaiting_reply = True
    sub._on_reply({"seq": 8, "epoch": "e1", "recovered": True})
    for s in (5, 6, 7, 8, 9):
        sub._on_publication(s, b"")
    assert await drain(sub) == [4, 5, 6, 7, 8, 9]
    assert gaps == []


async def test_seq_jump():
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    for s in (1, 2, 5, 6):
        sub._on_publication(s, b"")
    assert await drain(sub) == [1, 2, 5, 6]
    assert [(g.reason, g.last_seq, g.seq, g.epoch) for g in gaps] == [("seq_jump", 2, 5, "e1")]


async def test_gaps_come_in_stream_order():
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    sub._on_publication(2, b"")
    sub._awaiting_reply = True
    sub._on_reply({"seq": 40, "epoch": "e1", "recovered": False})
    sub._on_publication(41, b"")
    p = await sub.next(1)
    assert p.seq == 1 and gaps == []  # the gap is behind 1 and 2
    assert (await sub.next(1)).seq == 2 and gaps == []
    assert (await sub.next(1)).seq == 41
    assert [(g.reason, g.last_seq, g.seq) for g in gaps] == [("not_recovered", 2, 41)]


async def test_epoch_change_resets_the_position():
    sub, gaps = make()
    sub._on_reply({"seq": 7, "epoch": "e1", "recovered": False})
    sub._awaiting_reply = True
    sub._on_reply({"seq": 0, "epoch": "e2", "recovered": False})
    sub._on_publication(1, b"")
    p = await sub.next(1)
    assert (p.seq, p.epoch) == (1, "e2")
    assert [(g.reason, g.last_seq, g.seq, g.epoch) for g in gaps] == [("epoch_changed", 7, 1, "e2")]


async def test_since_given_by_the_app():
    sub, gaps = make(since=10, epoch="e1")
    sub._on_reply({"seq": 12, "epoch": "e1", "recovered": True})
    for s in (11, 12, 13):
        sub._on_publication(s, b"")
    assert await drain(sub) == [11, 12, 13] and gaps == []

    sub2, gaps2 = make(since=10, epoch="old")
    sub2._on_reply({"seq": 3, "epoch": "new", "recovered": False})
    assert sub2.last_seq == 3
    sub2._on_publication(4, b"")
    assert await drain(sub2) == [4]
    assert [(g.reason, g.last_seq, g.seq) for g in gaps2] == [("epoch_changed", 10, 4)]


async def test_publication_before_reply_is_held():
    sub, gaps = make()
    sub._awaiting_reply = True
    sub._on_publication(6, b"")
    sub._on_reply({"seq": 5, "epoch": "e1", "recovered": False})
    assert await drain(sub) == [6] and gaps == []


async def test_overflow_drops_oldest_and_reports_once():
    sub, gaps = make(buffer_size=3)
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    for s in range(1, 9):
        sub._on_publication(s, b"")
    assert sub.dropped == 5
    assert await drain(sub) == [6, 7, 8]
    assert [(g.reason, g.last_seq, g.seq, g.dropped) for g in gaps] == [("dropped", 0, 6, 5)]


async def test_end_with_error_after_buffered_items():
    sub, _ = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    sub._end(HeraldError(403, "topic not allowed"), discard=False)
    assert (await sub.next(1)).seq == 1
    with pytest.raises(HeraldError):
        await sub.next(1)


async def test_callback_gets_publications_in_order():
    got = []

    async def cb(p):
        await asyncio.sleep(0)
        got.append(p.seq)

    sub, _ = make(callback=cb)
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    for s in (1, 2, 3):
        sub._on_publication(s, b"")
    for _ in range(50):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    assert got == [1, 2, 3]
    sub._end(None, discard=True)
    await asyncio.wait_for(sub._task, 1)


async def test_gaps_with_no_publication_between_are_one_gap():
    """Two reconnects that could not recover, nothing published between:
    one gap from the last seq the app got to the next one it gets."""
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    assert (await sub.next(1)).seq == 1
    reconnect(sub, seq=10, epoch="e1", recovered=False)
    reconnect(sub, seq=20, epoch="e1", recovered=False)
    sub._on_publication(21, b"")
    assert (await sub.next(1)).seq == 21
    assert gap_tuples(gaps) == [("not_recovered", 1, 21, "e1", None)]


async def test_not_recovered_then_seq_jump_is_one_gap():
    """The REPLY says the stream goes on at 6, the next publication is 9 (a
    drop_oldest topic): one gap, ending at the seq the app gets next."""
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    reconnect(sub, seq=5, epoch="e1", recovered=False)
    sub._on_publication(9, b"")
    assert await drain(sub) == [1, 9]
    assert gap_tuples(gaps) == [("not_recovered", 1, 9, "e1", None)]


async def test_epoch_change_is_a_gap_even_if_the_reply_says_recovered():
    sub, gaps = make()
    sub._on_reply({"seq": 4, "epoch": "e1", "recovered": False})
    reconnect(sub, seq=2, epoch="e2", recovered=True)
    sub._on_publication(3, b"")
    p = await sub.next(1)
    assert (p.seq, p.epoch) == (3, "e2")
    assert gap_tuples(gaps) == [("epoch_changed", 4, 3, "e2", None)]


async def test_epoch_change_wins_over_other_gaps_at_the_same_place():
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    reconnect(sub, seq=8, epoch="e1", recovered=False)
    reconnect(sub, seq=3, epoch="e2", recovered=False)
    sub._on_publication(6, b"")  # and a seq jump
    assert await drain(sub) == [1, 6]
    assert gap_tuples(gaps) == [("epoch_changed", 1, 6, "e2", None)]


async def test_gap_last_seq_is_the_last_seq_the_app_got():
    """The app read 1; 2..4 wait in a buffer of 3; the reconnect did not
    recover; 11..13 push 2..4 out. One gap: the app had 1, gets 11 next."""
    sub, gaps = make(buffer_size=3)
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    assert (await sub.next(1)).seq == 1
    for s in (2, 3, 4):
        sub._on_publication(s, b"")
    reconnect(sub, seq=10, epoch="e1", recovered=False)
    for s in (11, 12, 13):
        sub._on_publication(s, b"")
    assert sub.dropped == 3
    assert await drain(sub) == [11, 12, 13]
    assert gap_tuples(gaps) == [("not_recovered", 1, 11, "e1", 3)]


async def test_a_gap_no_publication_follows_is_delivered_when_the_reader_reaches_it():
    sub, gaps = make()
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    sub._on_publication(1, b"")
    reconnect(sub, seq=7, epoch="e1", recovered=False)
    assert (await sub.next(1)).seq == 1
    assert gaps == []  # behind 1: not yet
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sub._next(), 0.05)
    assert gap_tuples(gaps) == [("not_recovered", 1, 8, "e1", None)]  # where live ones go on
    sub._on_publication(8, b"")
    assert (await sub.next(1)).seq == 8
    assert len(gaps) == 1


async def test_callback_gets_gaps_in_stream_order():
    log = []

    async def cb(p):
        await asyncio.sleep(0)
        log.append(p.seq)

    sub, _ = make(callback=cb)
    sub.on_gap(lambda g: log.append((g.reason, g.last_seq, g.seq)))
    sub._on_reply({"seq": 0, "epoch": "e1", "recovered": False})
    for s in (1, 2, 3):
        sub._on_publication(s, b"")
    reconnect(sub, seq=40, epoch="e1", recovered=False)
    for s in (41, 42, 45):
        sub._on_publication(s, b"")
    for _ in range(100):
        if len(log) == 8:
            break
        await asyncio.sleep(0.01)
    assert log == [1, 2, 3, ("not_recovered", 3, 41), 41, 42, ("seq_jump", 42, 45), 45]
    sub._end(None, discard=True)
    await asyncio.wait_for(sub._task, 1)
