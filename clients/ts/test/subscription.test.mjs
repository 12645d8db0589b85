// A Subscription on its own (no client, no socket): dedupe, gaps in stream
// order for callbacks and iterators, the iterator's bound, unsubscribe/close.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Subscription } from "../dist/index.js";

const E = new Uint8Array();

/**
 * A subscription with a stub host. `log` gets ["pub", seq] for what the app
 * got and ["gap", reason, lastSeq, seq, epoch, dropped?] for each gap, in
 * the order the app saw them.
 */
function mk({ callback = false, bufferSize = 1024, since, epoch } = {}) {
  const log = [];
  const errors = [];
  const host = {
    unsubscribe(sub) {
      sub._end(undefined, true);
      return Promise.resolve();
    },
    reportError: (e) => errors.push(e),
  };
  const cb = callback ? (p) => log.push(["pub", p.seq]) : undefined;
  const sub = new Subscription(host, "t", cb, bufferSize, since === undefined ? {} : { since, epoch });
  sub.on("gap", (g) => {
    assert.equal(g.topic, "t");
    const row = ["gap", g.reason, g.lastSeq, g.seq, g.epoch];
    if (g.dropped !== undefined) row.push(g.dropped);
    log.push(row);
  });
  const reply = (seq, ep, recovered = false) => sub._onReply({ seq, epoch: ep, recovered });
  const pub = (...seqs) => seqs.forEach((s) => sub._onPublication(s, E));
  const lost = () => sub._connectionLost();
  let it;
  const iter = () => (it ??= sub[Symbol.asyncIterator]());
  /** Reads `n` publications into the log. */
  const read = async (n) => {
    for (let i = 0; i < n; i++) {
      const r = await iter().next();
      assert.equal(r.done, false);
      log.push(["pub", r.value.seq]);
    }
  };
  return { sub, log, errors, reply, pub, lost, iter, read };
}

const flush = () => new Promise((r) => setImmediate(r));

test("iterator: a not_recovered gap comes after the publications buffered before it, right before the first one after it", async () => {
  const s = mk();
  s.reply(0, "e1");
  s.pub(1, 2, 3); // buffered: nobody reads yet
  s.lost();
  s.reply(10, "e1", false); // the history no longer reaches back to 3
  assert.deepEqual(s.log, [], "nothing reaches the app before it reads");
  s.pub(11);
  await s.read(4);
  assert.deepEqual(s.log, [
    ["pub", 1],
    ["pub", 2],
    ["pub", 3],
    ["gap", "not_recovered", 3, 11, "e1"],
    ["pub", 11],
  ]);
  assert.equal(s.sub.lastSeq, 11);
});

test("iterator: seq_jump and epoch_changed gaps come at their place in the stream", async () => {
  const s = mk();
  s.reply(0, "e1");
  s.pub(1, 2, 5, 6);
  s.lost();
  s.reply(0, "e2", false); // the gateway restarted: a new epoch
  s.pub(1, 2);
  assert.deepEqual(s.log, []);
  await s.read(6);
  assert.deepEqual(s.log, [
    ["pub", 1],
    ["pub", 2],
    ["gap", "seq_jump", 2, 5, "e1"],
    ["pub", 5],
    ["pub", 6],
    ["gap", "epoch_changed", 6, 1, "e2"],
    ["pub", 1],
    ["pub", 2],
  ]);
});

test("iterator: a gap no publication follows yet reaches a waiting reader at once, a busy one when it asks again", async () => {
  // Waiting reader, empty queue: at once.
  const a = mk();
  a.reply(0, "e1");
  a.pub(1);
  await a.read(1);
  const pending = a.iter().next();
  a.lost();
  a.reply(50, "e1", false);
  assert.deepEqual(a.log.at(-1), ["gap", "not_recovered", 1, 51, "e1"]);
  a.pub(51);
  assert.equal((await pending).value.seq, 51);

  // Publications still buffered before it: after them, when the reader asks for more.
  const b = mk();
  b.reply(0, "e1");
  b.pub(1, 2);
  b.lost();
  b.reply(50, "e1", false);
  await b.read(2);
  assert.deepEqual(b.log, [
    ["pub", 1],
    ["pub", 2],
  ]);
  const next = b.iter().next();
  assert.deepEqual(b.log.at(-1), ["gap", "not_recovered", 2, 51, "e1"]);
  b.pub(51);
  assert.equal((await next).value.seq, 51);
  assert.equal(b.log.filter((r) => r[0] === "gap").length, 1, "delivered once");
});

test("iterator: a gap right after a publication handed to a waiting reader (same tick) still comes after it", async () => {
  const s = mk();
  s.reply(0, "e1");
  const reader = (async () => {
    for await (const p of s.sub) {
      s.log.push(["pub", p.seq]);
      if (p.seq === 11) break;
    }
  })();
  await flush(); // the reader waits
  s.pub(1); // handed to the waiting reader (it gets it in a microtask)
  s.lost();
  s.reply(10, "e1", false); // the same tick: the reader has not seen 1 yet
  s.pub(11);
  await reader;
  assert.deepEqual(s.log, [
    ["pub", 1],
    ["gap", "not_recovered", 1, 11, "e1"],
    ["pub", 11],
  ]);
});

test("iterator: gaps with no publication between them are one gap, from what the app had to where the stream goes on", async () => {
  const s = mk();
  s.reply(0, "e1");
  s.pub(1, 2, 3);
  s.lost();
  s.reply(10, "e1", false);
  s.lost();
  s.reply(20, "e1", false);
  s.pub(23); // and a seq jump on top
  await s.read(4);
  assert.deepEqual(s.log, [
    ["pub", 1],
    ["pub", 2],
    ["pub", 3],
    ["gap", "not_recovered", 3, 23, "e1"],
    ["pub", 23],
  ]);
});

test("callback: a seq_jump gap right before the callback of the publication after it; a not_recovered gap at once", () => {
  const s = mk({ callback: true });
  s.reply(0, "e1");
  s.pub(1, 2, 5);
  assert.deepEqual(s.log, [
    ["pub", 1],
    ["pub", 2],
    ["gap", "seq_jump", 2, 5, "e1"],
    ["pub", 5],
  ]);
  s.lost();
  s.reply(9, "e1", false);
  assert.deepEqual(s.log.at(-1), ["gap", "not_recovered", 5, 10, "e1"]);
  // Another reconnect before any publication: the app still had 5.
  s.lost();
  s.reply(0, "e2", false);
  assert.deepEqual(s.log.at(-1), ["gap", "epoch_changed", 5, 1, "e2"]);
  s.pub(1, 1, 2); // a duplicate is dropped
  assert.deepEqual(s.log.slice(-2), [
    ["pub", 1],
    ["pub", 2],
  ]);
  assert.equal(s.log.length, 8);
});

test("recovered: replayed publications go on with no gap and no duplicate", async () => {
  const s = mk();
  s.reply(0, "e1");
  s.pub(1, 2, 3);
  s.lost();
  s.pub(4); // after the connection ended, before the next REPLY: not ours
  s.reply(5, "e1", true);
  s.pub(2, 3, 4, 5, 6);
  await s.read(6);
  assert.deepEqual(
    s.log,
    [1, 2, 3, 4, 5, 6].map((n) => ["pub", n]),
  );
});

test("since/epoch given by the app: lastSeq of the first gap is that since", async () => {
  const s = mk({ since: 10, epoch: "old" });
  s.reply(2, "new", false);
  s.pub(3);
  await s.read(1);
  assert.deepEqual(s.log, [
    ["gap", "epoch_changed", 10, 3, "new"],
    ["pub", 3],
  ]);
});

test("iterator bound: the oldest are dropped; a dropped gap at the hole; a gap folded into it keeps epoch_changed", async () => {
  const s = mk({ bufferSize: 2 });
  s.reply(0, "e1");
  s.pub(1, 2, 3, 4);
  await s.read(2);
  assert.deepEqual(s.log, [
    ["gap", "dropped", 0, 3, "e1", 2],
    ["pub", 3],
    ["pub", 4],
  ]);
  s.log.length = 0;
  s.pub(5);
  s.lost();
  s.reply(0, "e2", false);
  s.pub(1, 2); // 5 is dropped, with the epoch_changed gap behind it
  await s.read(2);
  assert.deepEqual(s.log, [
    ["gap", "epoch_changed", 4, 1, "e2", 1],
    ["pub", 1],
    ["pub", 2],
  ]);
});

test("unsubscribe throws away what the iterator holds; an end by close hands it out first", async () => {
  const a = mk();
  a.reply(0, "e1");
  a.pub(1, 2);
  await a.sub.unsubscribe();
  assert.deepEqual(await a.iter().next(), { value: undefined, done: true });
  a.pub(3);
  assert.deepEqual(a.log, []);

  const b = mk();
  b.reply(0, "e1");
  b.pub(1, 2);
  b.lost();
  b.reply(7, "e1", false);
  b.sub._end(); // the client closed
  await b.read(2);
  assert.deepEqual(await b.iter().next(), { value: undefined, done: true });
  assert.deepEqual(b.log, [
    ["pub", 1],
    ["pub", 2],
    ["gap", "not_recovered", 2, 8, "e1"],
  ]);
});

test("a waiting reader gets the error that ended the subscription", async () => {
  const s = mk();
  s.reply(0, "e1");
  const next = s.iter().next();
  s.sub._end(Object.assign(new Error("403"), { code: 403 }));
  await assert.rejects(next, (e) => e.code === 403);
  assert.deepEqual(await s.iter().next(), { value: undefined, done: true });
});
