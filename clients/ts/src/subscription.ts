import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";

/** One publication as the app sees it. */
export interface Publication {
  topic: string;
  /** The topic's sequence number: grows by 1 per publication within an epoch. */
  seq: number;
  /** The payload, as published (herald never looks inside). */
  data: Uint8Array;
  /** The topic's epoch: changes when the topic's sequence starts over. */
  epoch: string;
}

/**
 * Why data may be missing:
 * - `not_recovered`: a resubscribe (after a reconnect, or a `since` the app
 *   gave) could not be served from the gateway's history;
 * - `epoch_changed`: the topic started over (gateway restart, topic
 *   forgotten), so the old seqs mean nothing any more;
 * - `seq_jump`: a publication's seq is not the last one + 1 (same epoch);
 * - `dropped`: the async iterator's buffer was full and the oldest
 *   publications were dropped.
 *
 * When several of these meet at one place in the stream (no publication
 * between them) the app gets one gap event; its reason is the first of
 * `epoch_changed`, `not_recovered`, `dropped`, `seq_jump` that applies.
 */
export type GapReason = "not_recovered" | "epoch_changed" | "seq_jump" | "dropped";

/**
 * Data may be missing between `lastSeq` and `seq`: `lastSeq + 1 … seq − 1`.
 * Delivered in stream order: after the last publication before the gap,
 * right before the first one after it (callbacks and iterators alike).
 */
export interface Gap {
  topic: string;
  reason: GapReason;
  /**
   * The last seq the app got before the gap (before any publication: the
   * `since` it gave, or the seq of the first REPLY, where it started).
   */
  lastSeq: number;
  /**
   * The seq of the next publication the app gets. For a gap that no
   * publication follows yet when it is delivered (a REPLY with `recovered:
   * false`): the topic's seq in that REPLY + 1, where live publications go
   * on.
   */
  seq: number;
  /** The epoch the stream goes on in. */
  epoch: string;
  /** How many publications the iterator's full buffer dropped here (only when it dropped some). */
  dropped?: number;
}

/** The REPLY to a SUBSCRIBE (every one, also after each reconnect). */
export interface Subscribed {
  topic: string;
  /** The topic's last seq when the subscription took effect. */
  seq: number;
  epoch: string;
  recovered: boolean;
}

export type SubscriptionEvents = {
  gap: Gap;
  subscribed: Subscribed;
  error: HeraldError;
};

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  unsubscribe(sub: Subscription): Promise<void>;
  reportError(err: HeraldError): void;
}

/** A gap waiting in the iterator's queue; `lastSeq` is filled in when it is delivered. */
interface PendingGap {
  reason: GapReason;
  /** The seq the stream is expected to go on from (the next publication's seq, when there is one, wins). */
  seq: number;
  epoch: string;
  dropped: number;
}

type Entry = { kind: "pub"; p: Publication } | { kind: "gap"; g: PendingGap };

const GAP_RANK: GapReason[] = ["epoch_changed", "not_recovered", "dropped", "seq_jump"];

/** Two gaps with no publication between them are one gap: from where the first starts to where the second ends. */
function mergeGaps(a: PendingGap | undefined, b: PendingGap): PendingGap {
  if (!a) return { ...b };
  let reason = GAP_RANK[Math.min(GAP_RANK.indexOf(a.reason), GAP_RANK.indexOf(b.reason))]!;
  if (a.epoch !== b.epoch) reason = "epoch_changed";
  return { reason, seq: b.seq, epoch: b.epoch, dropped: a.dropped + b.dropped };
}

/** A FIFO with O(1) shift. */
class Deque<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(x: T): void {
    this.items.push(x);
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) this.clear();
    else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }
  last(): T | undefined {
    return this.head < this.items.length ? this.items[this.items.length - 1] : undefined;
  }
  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

type Waiter = { resolve: (r: IteratorResult<Publication>) => void; reject: (e: unknown) => void };

/**
 * A subscription to one topic. Created by `HeraldClient.subscribe`; lives
 * across reconnects (the client subscribes again with `since`/`epoch`) until
 * `unsubscribe()`, an ERROR from the gateway, or the client's close.
 *
 * Without a callback it is an async iterable holding at most `bufferSize`
 * publications.
 *
 * Gap events come in stream order. With a callback they are emitted as the
 * stream reaches them: right before the callback gets the first publication
 * after the gap, or at once for a REPLY with `recovered: false` (nothing
 * is held back, so nothing is before it). With an iterator they wait in the
 * iterator's queue and are emitted when the reader reaches them: right
 * before `next()` hands out the first publication after the gap, or, when
 * no publication follows yet, as soon as the reader asks for the next one
 * (at once if it is already waiting).
 */
export class Subscription extends Emitter<SubscriptionEvents> implements AsyncIterable<Publication> {
  readonly topic: string;
  /**
   * Resolves with the first REPLY to SUBSCRIBE; rejects with the gateway's
   * ERROR (`HeraldError`, e.g. code 403) or with `closed` when the
   * subscription ends before it.
   */
  readonly ready: Promise<Subscribed>;

  /** The last seq received (what a resubscribe sends as `since`). */
  private lastSeqValue: number | undefined;
  private epochValue: string | undefined;
  /** The last seq the app got (handed to the callback or out of the iterator), or where it started. */
  private appSeq: number | undefined;
  /** A REPLY came on the current connection: publications are ours. */
  private live = false;
  private ended = false;
  /** Ended by unsubscribe(): what was buffered is thrown away. */
  private discarded = false;
  private endError: HeraldError | undefined;
  private settled = false;
  private resolveReady!: (s: Subscribed) => void;
  private rejectReady!: (e: HeraldError) => void;

  // The iterator's queue: publications (at most `capacity`) and the gaps between them.
  private readonly queue: Deque<Entry> | undefined;
  private readonly capacity: number;
  private pubCount = 0;
  /** What dropping from the front of the queue removed: delivered before the queue's first publication. */
  private frontGap: PendingGap | undefined;
  private waiters: Waiter[] = [];
  /** In pull(): gap listeners run; whoever called pull() serves the waiters. */
  private pulling = false;
  private iterating = false;

  /** @internal Created by HeraldClient.subscribe. */
  constructor(
    private readonly host: SubscriptionHost,
    topic: string,
    private readonly callback: ((p: Publication) => void) | undefined,
    bufferSize: number,
    opts: { since?: number; epoch?: string } = {},
  ) {
    super();
    this.topic = topic;
    this.lastSeqValue = opts.since;
    this.appSeq = opts.since;
    this.epochValue = opts.since !== undefined ? opts.epoch : undefined;
    this.capacity = Math.max(1, bufferSize);
    this.queue = callback ? undefined : new Deque<Entry>();
    this.ready = new Promise<Subscribed>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {}); // an app that never awaits `ready` gets no unhandled rejection
  }

  /** The last seq received for this subscription (what a reconnect sends as `since`). */
  get lastSeq(): number | undefined {
    return this.lastSeqValue;
  }

  /** The epoch of the last REPLY. */
  get epoch(): string | undefined {
    return this.epochValue;
  }

  /** False once unsubscribed, refused by the gateway, or the client closed. */
  get active(): boolean {
    return !this.ended;
  }

  /** Sends UNSUBSCRIBE (when connected) and ends the subscription; what an iterator still holds is thrown away. */
  unsubscribe(): Promise<void> {
    return this.host.unsubscribe(this);
  }

  // ---- called by the client ----

  /** @internal The `since`/`epoch` to send with SUBSCRIBE, if any. */
  _recoveryOptions(): { since: number; epoch?: string } | undefined {
    return this.lastSeqValue === undefined ? undefined : { since: this.lastSeqValue, epoch: this.epochValue };
  }

  /** @internal The REPLY to this subscription's SUBSCRIBE. */
  _onReply(result: Record<string, unknown>): void {
    if (this.ended) return;
    const seq = typeof result.seq === "number" ? result.seq : Number(result.seq ?? 0);
    const epoch = typeof result.epoch === "string" ? result.epoch : "";
    const recovered = result.recovered === true;
    const had = this.lastSeqValue;
    const epochChanged = this.epochValue !== undefined && epoch !== this.epochValue;
    this.epochValue = epoch;
    if (had === undefined) {
      this.lastSeqValue = seq;
      this.appSeq ??= seq;
    } else if (!recovered || epochChanged) {
      // Live publications go on from seq + 1.
      this.lastSeqValue = seq;
      this.streamGap({ reason: epochChanged ? "epoch_changed" : "not_recovered", seq: seq + 1, epoch, dropped: 0 });
      if (this.ended) return; // a gap listener unsubscribed
    }
    // recovered: the replayed publications since+1 … seq follow.
    this.live = true;
    const info: Subscribed = { topic: this.topic, seq, epoch, recovered };
    if (!this.settled) {
      this.settled = true;
      this.resolveReady(info);
    }
    this.emitOrReport("subscribed", info);
  }

  /** @internal A PUBLICATION for this topic. */
  _onPublication(seq: number, data: Uint8Array): void {
    if (!this.live || this.ended) return;
    const last = this.lastSeqValue ?? 0;
    if (seq <= last) return; // already delivered (a replay overlapping what we had)
    const epoch = this.epochValue ?? "";
    this.lastSeqValue = seq;
    if (seq !== last + 1) {
      this.streamGap({ reason: "seq_jump", seq, epoch, dropped: 0 });
      if (this.ended) return; // a gap listener unsubscribed
    }
    const p: Publication = { topic: this.topic, seq, data, epoch };
    if (this.callback) {
      this.appSeq = seq;
      try {
        this.callback(p);
      } catch (e) {
        this.host.reportError(new HeraldError("callback", `subscription callback for ${this.topic} threw: ${String(e)}`, { cause: e }));
      }
      return;
    }
    this.enqueue({ kind: "pub", p });
  }

  /** @internal The connection ended; a REPLY on the next one makes it live again. */
  _connectionLost(): void {
    this.live = false;
  }

  /** @internal The gateway answered SUBSCRIBE with ERROR: the subscription ends. */
  _fail(err: HeraldError): void {
    if (this.ended) return;
    this.emitOrReport("error", err);
    this._end(err);
  }

  /**
   * @internal Ends the subscription: `ready` rejects if still pending, the
   * iterator finishes what it holds (unless `discard`: unsubscribe) and
   * then ends (or throws `err`).
   */
  _end(err?: HeraldError, discard = false): void {
    if (this.ended) return;
    this.ended = true;
    this.live = false;
    this.endError = err;
    if (discard) {
      this.discarded = true;
      this.queue?.clear();
      this.pubCount = 0;
      this.frontGap = undefined;
    }
    if (!this.settled) {
      this.settled = true;
      this.rejectReady(err ?? new HeraldError("closed", `subscription to ${this.topic} ended before the gateway answered`));
    }
    if (!this.pulling) this.serveWaiters();
  }

  // ---- async iteration ----

  [Symbol.asyncIterator](): AsyncIterator<Publication> {
    if (!this.queue) throw new TypeError("this subscription has a callback; subscribe without one to iterate");
    if (this.iterating) throw new TypeError("a subscription can be iterated only once");
    this.iterating = true;
    return {
      next: () => this.next(),
      return: async () => {
        await this.unsubscribe().catch(() => {});
        return { value: undefined, done: true };
      },
    };
  }

  private next(): Promise<IteratorResult<Publication>> {
    if (this.waiters.length === 0) {
      const p = this.pull();
      if (p) return Promise.resolve({ value: p, done: false });
      if (this.ended) {
        const err = this.endError;
        this.endError = undefined;
        return err ? Promise.reject(err) : Promise.resolve({ value: undefined, done: true });
      }
    }
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
    });
  }

  /**
   * The next publication out of the queue, emitting the gaps before it; a
   * gap that no publication follows yet is emitted too (the reader reached
   * it). `undefined` when the queue holds no publication.
   */
  private pull(): Publication | undefined {
    this.pulling = true;
    try {
      return this.pullEntries();
    } finally {
      this.pulling = false;
    }
  }

  private pullEntries(): Publication | undefined {
    const q = this.queue!;
    let gap = this.frontGap;
    this.frontGap = undefined;
    for (;;) {
      const e = q.shift();
      if (!e) break;
      if (e.kind === "gap") {
        gap = mergeGaps(gap, e.g);
        continue;
      }
      this.pubCount--;
      if (gap) {
        this.emitGap(gap, e.p.seq, e.p.epoch);
        if (this.discarded) return undefined; // a gap listener unsubscribed
      }
      this.appSeq = e.p.seq;
      return e.p;
    }
    if (gap) this.emitGap(gap, gap.seq, gap.epoch);
    return undefined;
  }

  /** A gap in the stream: emitted now with a callback, queued behind what the iterator holds otherwise. */
  private streamGap(g: PendingGap): void {
    if (this.callback) this.emitGap(g, g.seq, g.epoch);
    else this.enqueue({ kind: "gap", g });
  }

  private enqueue(e: Entry): void {
    const q = this.queue!;
    if (e.kind === "gap") {
      const tail = q.last();
      if (tail?.kind === "gap") tail.g = mergeGaps(tail.g, e.g);
      else q.push(e);
    } else {
      if (this.pubCount >= this.capacity) this.dropOldest();
      q.push(e);
      this.pubCount++;
    }
    if (!this.pulling) this.serveWaiters();
  }

  /** The buffer is full: drop the oldest publication (and fold the gaps before it into one). */
  private dropOldest(): void {
    const q = this.queue!;
    for (;;) {
      const e = q.shift();
      if (!e) return;
      if (e.kind === "gap") {
        this.frontGap = mergeGaps(this.frontGap, e.g);
        continue;
      }
      this.pubCount--;
      this.frontGap = mergeGaps(this.frontGap, { reason: "dropped", seq: e.p.seq + 1, epoch: e.p.epoch, dropped: 1 });
      return;
    }
  }

  /**
   * Readers are waiting: hand them what the queue holds (emitting the gaps
   * they reach on the way); once the subscription ended and the queue is
   * empty, they get the end (or the error that ended it).
   */
  private serveWaiters(): void {
    while (this.waiters.length > 0) {
      const p = this.pull();
      if (p !== undefined) {
        this.waiters.shift()!.resolve({ value: p, done: false });
        continue;
      }
      if (!this.ended) return;
      const w = this.waiters.shift()!;
      const err = this.endError;
      this.endError = undefined;
      if (err) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  private emitGap(g: PendingGap, seq: number, epoch: string): void {
    const gap: Gap = { topic: this.topic, reason: g.reason, lastSeq: this.appSeq ?? seq - 1, seq, epoch };
    if (g.dropped > 0) gap.dropped = g.dropped;
    this.emitOrReport("gap", gap);
  }

  private emitOrReport<K extends keyof SubscriptionEvents>(event: K, ev: SubscriptionEvents[K]): void {
    for (const e of this.emitSafe(event, ev)) {
      this.host.reportError(new HeraldError("callback", `a ${String(event)} listener threw: ${String(e)}`, { cause: e }));
    }
  }
}
