"""A subscription's bookkeeping (dedupe, gaps, bounded buffer), fed by hand:
the REPLYs and PUBLICATIONs a gateway could send, including ones herald
itself does not produce in a test (a duplicate, a seq jump)."""

import asyncio

import pytest

from herald_client import HeraldError
from herald_client.client import Subscription


def make(buffer_size=100, since=None, epoch=None, callback=None):
    sub = Subscription(None, "t.x", since, epoch, buffer_size, callback)
    gaps = []
    sub.on_gap(gaps.append)
    return sub, gaps


async def drain(sub):
    out = []
    while sub._buf:
        out.append((await sub.next(1)).seq)
    return out


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
