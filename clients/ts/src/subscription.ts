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
 */
export type GapReason = "not_recovered" | "epoch_changed" | "seq_jump" | "dropped";

export interface Gap {
  topic: string;
  reason: GapReason;
  /** The last seq the app had before the gap (for `dropped`: the last one before the dropped ones). */
  lastSeq: number;
  /** The seq the stream goes on from: the first one the app gets after the gap. */
  seq: number;
  /** The epoch the stream goes on in. */
  epoch: string;
  /** For `dropped`: how many publications were dropped. */
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

class Ring<T> {
  private items: (T | undefined)[];
  private head = 0;
  length = 0;
  constructor(readonly capacity: number) {
    this.items = new Array(capacity);
  }
  push(x: T): void {
    this.items[(this.head + this.length) % this.capacity] = x;
    this.length++;
  }
  shift(): T | undefined {
    if (this.length === 0) return undefined;
    const x = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.length--;
    return x;
  }
}

/**
 * A subscription to one topic. Created by `HeraldClient.subscribe`; lives
 * across reconnects (the client subscribes again with `since`/`epoch`) until
 * `unsubscribe()`, an ERROR from the gateway, or the client's close.
 *
 * Without a callback it is an async iterable holding at most `bufferSize`
 * publications.
 */
export class Subscription extends Emitter<SubscriptionEvents> implements AsyncIterable<Publication> {
  readonly topic: string;
  /**
   * Resolves with the first REPLY to SUBSCRIBE; rejects with the gateway's
   * ERROR (`HeraldError`, e.g. code 403) or with `closed` when the
   * subscription ends before it.
   */
  readonly ready: Promise<Subscribed>;

  private lastSeqValue: number | undefined;
  private epochValue: string | undefined;
  /** A REPLY came on the current connection: publications are ours. */
  private live = false;
  private ended = false;
  private endError: HeraldError | undefined;
  private settled = false;
  private resolveReady!: (s: Subscribed) => void;
  private rejectReady!: (e: HeraldError) => void;

  private readonly queue: Ring<Publication> | undefined;
  private waiter: { resolve: (r: IteratorResult<Publication>) => void; reject: (e: unknown) => void } | undefined;
  private iterating = false;
  private droppedFirst: number | undefined;
  private droppedCount = 0;

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
    this.epochValue = opts.since !== undefined ? opts.epoch : undefined;
    this.queue = callback ? undefined : new Ring(Math.max(1, bufferSize));
    this.ready = new Promise<Subscribed>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {}); // an app that never awaits `ready` gets no unhandled rejection
  }

  /** The last seq delivered to this subscription (after the first REPLY). */
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

  /** Sends UNSUBSCRIBE (when connected) and ends the subscription. */
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
    if (had === undefined) {
      this.lastSeqValue = seq;
    } else if (!recovered || (this.epochValue !== undefined && epoch !== this.epochValue)) {
      const reason: GapReason = this.epochValue !== undefined && epoch !== this.epochValue ? "epoch_changed" : "not_recovered";
      this.lastSeqValue = seq;
      this.emitGap({ topic: this.topic, reason, lastSeq: had, seq: seq + 1, epoch });
    }
    // recovered: the replayed publications since+1 … seq follow.
    this.epochValue = epoch;
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
    if (seq !== last + 1) {
      this.emitGap({ topic: this.topic, reason: "seq_jump", lastSeq: last, seq, epoch });
    }
    this.lastSeqValue = seq;
    const p: Publication = { topic: this.topic, seq, data, epoch };
    if (this.callback) {
      try {
        this.callback(p);
      } catch (e) {
        this.host.reportError(new HeraldError("callback", `subscription callback for ${this.topic} threw: ${String(e)}`, { cause: e }));
      }
      return;
    }
    this.enqueue(p);
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
   * iterator finishes what it holds and then ends (or throws `err`).
   */
  _end(err?: HeraldError): void {
    if (this.ended) return;
    this.ended = true;
    this.live = false;
    this.endError = err;
    if (!this.settled) {
      this.settled = true;
      this.rejectReady(err ?? new HeraldError("closed", `subscription to ${this.topic} ended before the gateway answered`));
    }
    if (this.waiter && (!this.queue || this.queue.length === 0)) {
      const w = this.waiter;
      this.waiter = undefined;
      if (err) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  // ---- async iteration ----

  [Symbol.asyncIterator](): AsyncIterator<Publication> {
    if (!this.queue) throw new TypeError("this subscription has a callback; subscribe without one to iterate");
    if (this.iterating) throw new TypeError("a subscription can be iterated only once");
    this.iterating = true;
    return {
      next: () => this.next(),
      return: async () => {
        this.waiter = undefined;
        await this.unsubscribe().catch(() => {});
        return { value: undefined, done: true };
      },
    };
  }

  private next(): Promise<IteratorResult<Publication>> {
    const q = this.queue!;
    if (q.length > 0) return Promise.resolve({ value: this.take(q), done: false });
    if (this.ended) {
      const err = this.endError;
      this.endError = undefined;
      return err ? Promise.reject(err) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  private take(q: Ring<Publication>): Publication {
    const p = q.shift()!;
    if (this.droppedCount > 0) {
      const gap: Gap = {
        topic: this.topic,
        reason: "dropped",
        lastSeq: this.droppedFirst! - 1,
        seq: p.seq,
        epoch: p.epoch,
        dropped: this.droppedCount,
      };
      this.droppedCount = 0;
      this.droppedFirst = undefined;
      this.emitGap(gap);
    }
    return p;
  }

  private enqueue(p: Publication): void {
    const q = this.queue!;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: p, done: false });
      return;
    }
    if (q.length >= q.capacity) {
      const old = q.shift()!;
      if (this.droppedCount === 0) this.droppedFirst = old.seq;
      this.droppedCount++;
    }
    q.push(p);
  }

  private emitGap(g: Gap): void {
    this.emitOrReport("gap", g);
  }

  private emitOrReport<K extends keyof SubscriptionEvents>(event: K, ev: SubscriptionEvents[K]): void {
    for (const e of this.emitSafe(event, ev)) {
      this.host.reportError(new HeraldError("callback", `a ${String(event)} listener threw: ${String(e)}`, { cause: e }));
    }
  }
}
