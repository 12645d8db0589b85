import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { tokenTimes } from "./jwt.js";
import {
  decodeInbound,
  encodePing,
  encodePublish,
  encodeRefresh,
  encodeSubscribe,
  encodeUnsubscribe,
} from "./protocol.js";
import {
  type BackoffOptions,
  type ClosedReason,
  type EndEvent,
  plan,
  refreshDelay,
  tokenExpiresSoon,
} from "./reconnect.js";
import { type Publication, type Subscribed, Subscription, type SubscriptionHost } from "./subscription.js";

/**
 * The part of a WebSocket the client uses: the browser's `WebSocket`, the
 * `ws` package's, or anything shaped like them.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  // Typed loosely so that both the DOM's and ws's handler types fit.
  onopen: any;
  onmessage: any;
  onerror: any;
  onclose: any;
}

/** A WebSocket constructor. A third argument `{headers}` is passed when `tokenIn` is `"header"` (ws accepts it). */
export type WebSocketCtor = new (url: string, protocols?: string | string[], options?: any) => WebSocketLike;

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateEvent {
  state: Exclude<ConnectionState, "idle">;
  /**
   * `reconnecting`: why (`connection_lost`, `going_away`, `server_closed`,
   * `slow_consumer`, `rate_limited`, `token_expired`, `disconnected`,
   * `unauthorized`, `unavailable`, `token_error`, `http_<status>`);
   * `closed`: a {@link ClosedReason}.
   */
  reason?: string;
  /** `reconnecting`: how long the client waits before the next attempt. */
  delayMs?: number;
  /** The close code, when a close frame ended the connection. */
  code?: number;
  /** The HTTP status, when the upgrade was refused. */
  status?: number;
  /** `reconnecting`: the attempt counter used for the wait. */
  attempt?: number;
}

export interface HeraldClientOptions {
  /** `ws://host:8780/ws` or `wss://…`. */
  url: string;
  /** The JWT to connect with. Without `getToken` it is the only one. */
  token?: string;
  /**
   * Supplies tokens: before the current one expires (sent as REFRESH), after
   * 4001 / 4003 / a handshake 401, and before a reconnect when the current
   * one expires within 30 s.
   */
  getToken?: () => Promise<string> | string;
  /** A WebSocket constructor; default `globalThis.WebSocket`. On Node 20 pass the `ws` package's. */
  WebSocket?: WebSocketCtor;
  /**
   * Where the token goes: `"header"` (`Authorization: Bearer`, default when
   * a `WebSocket` constructor is passed in) or `"protocol"` (a
   * `bearer.<jwt>` subprotocol entry, default otherwise: browsers cannot set
   * headers).
   */
  tokenIn?: "header" | "protocol";
  /** Reconnect waits (clients/README.md). */
  backoff?: BackoffOptions;
  /** Publications an async-iterated subscription holds at most (default 1024). */
  bufferSize?: number;
  /** How long PUBLISH, PING, UNSUBSCRIBE and REFRESH wait for their reply (default 10 000 ms). */
  requestTimeoutMs?: number;
  /**
   * After this long without anything from the gateway the client sends a
   * PING; no reply within `requestTimeoutMs` counts as a lost connection.
   * Default 30 000; 0 turns it off.
   */
  heartbeatMs?: number;
  /** Random source in [0, 1) for the jitter (default `Math.random`; for tests). */
  random?: () => number;
}

export interface SubscribeOptions {
  /** Resume after this seq (with `epoch`): the gateway replays what it still has. */
  since?: number;
  epoch?: string;
}

type Pending =
  | { kind: "subscribe"; sub: Subscription }
  | { kind: "unsubscribe"; resolve: () => void; timer: ReturnType<typeof setTimeout> }
  | {
      kind: "ping" | "publish" | "refresh";
      resolve: (r: Record<string, unknown>) => void;
      reject: (e: HeraldError) => void;
      timer: ReturnType<typeof setTimeout>;
    };

type ClientEvents = {
  state: StateEvent;
  error: HeraldError;
};

const HANDSHAKE_STATUS = /Unexpected server response: (\d{3})/;

const CLOSED_MESSAGES: Record<ClosedReason, string> = {
  client: "the client was closed",
  unauthorized: "the gateway refused the token and there is no new one",
  disconnected: "disconnected by the operator",
  protocol: "the gateway refused what the client sent",
  refused: "the gateway refused the connection",
};

/**
 * A connection to a herald gateway that reconnects by itself (the table in
 * clients/README.md), keeps its subscriptions across reconnects and
 * refreshes its token.
 */
export class HeraldClient extends Emitter<ClientEvents> {
  private readonly url: string;
  private readonly getToken: (() => Promise<string> | string) | undefined;
  private readonly Ctor: WebSocketCtor;
  private readonly tokenIn: "header" | "protocol";
  private readonly backoff: BackoffOptions;
  private readonly bufferSize: number;
  private readonly requestTimeoutMs: number;
  private readonly heartbeatMs: number;
  private readonly random: () => number;

  private stateValue: ConnectionState = "idle";
  private ws: WebSocketLike | undefined;
  /** Bumped whenever a socket or an attempt is abandoned; stale callbacks compare it. */
  private gen = 0;
  private readonly subs = new Map<string, Subscription>();
  private readonly pending = new Map<number, Pending>();
  private idCounter = 1;

  private attempt = 0;
  private previous401s = 0;
  private openedAt = 0;
  private lastInbound = 0;
  private heartbeatInFlight = false;

  private token: string | undefined;
  /** When the current token's lifetime began (ms): `iat`, or when the client got it. */
  private tokenStart = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  private openTimer: ReturnType<typeof setTimeout> | undefined;

  private readonly host: SubscriptionHost = {
    unsubscribe: (sub) => this.unsubscribeSub(sub),
    reportError: (err) => this.reportError(err),
  };

  constructor(opts: HeraldClientOptions) {
    super();
    this.url = opts.url;
    this.getToken = opts.getToken;
    const ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!ctor) throw new TypeError("no WebSocket: pass options.WebSocket (on Node 20, the ws package's WebSocket)");
    this.Ctor = ctor;
    this.tokenIn = opts.tokenIn ?? (opts.WebSocket ? "header" : "protocol");
    this.backoff = opts.backoff ?? {};
    this.bufferSize = opts.bufferSize ?? 1024;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.heartbeatMs = opts.heartbeatMs ?? 30_000;
    this.random = opts.random ?? Math.random;
    if (opts.token) this.setToken(opts.token);
  }

  /** `idle` before `connect()`, then `connecting`, `open`, `reconnecting`, `closed`. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** Starts connecting (once). The client then stays connected until `close()` or a terminal row of the table. */
  connect(): this {
    if (this.stateValue === "closed") throw new HeraldError("closed", "the client is closed; create a new one");
    if (this.stateValue !== "idle") return this;
    this.setState({ state: "connecting" });
    void this.startAttempt("same");
    return this;
  }

  /** Closes for good: state `closed` (`client`); pending requests reject with `closed`, iterators end. */
  close(): void {
    if (this.stateValue === "closed") return;
    this.terminate("client");
  }

  /**
   * Subscribes to `topic`. With a callback, each publication is passed to
   * it; without one, the subscription is an async iterable (bounded by
   * `bufferSize`). The SUBSCRIBE is sent now if the connection is open, else
   * on (re)connect.
   */
  subscribe(topic: string, callback?: (p: Publication) => void, opts?: SubscribeOptions): Subscription;
  subscribe(topic: string, opts?: SubscribeOptions): Subscription;
  subscribe(
    topic: string,
    cbOrOpts?: ((p: Publication) => void) | SubscribeOptions,
    maybeOpts?: SubscribeOptions,
  ): Subscription {
    const callback = typeof cbOrOpts === "function" ? cbOrOpts : undefined;
    const opts = (typeof cbOrOpts === "function" ? maybeOpts : cbOrOpts) ?? {};
    if (this.stateValue === "closed") throw new HeraldError("closed", "the client is closed");
    if (this.subs.has(topic)) throw new HeraldError("already_subscribed", `already subscribed to ${topic}`);
    const sub = new Subscription(this.host, topic, callback, this.bufferSize, opts);
    this.subs.set(topic, sub);
    if (this.stateValue === "open") this.sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` to `topic`; resolves to the seq it got. Rejects with
   * `not_connected` when the connection is not open (never sent late), with
   * the gateway's ERROR (`403` not allowed, …), `timeout`, or
   * `connection_lost` (then it may or may not have been stored).
   */
  async publish(topic: string, data: Uint8Array): Promise<number> {
    const r = await this.request("publish", (id) => encodePublish(id, topic, data));
    return typeof r.seq === "number" ? r.seq : Number(r.seq);
  }

  /** Application-level round trip; resolves to the time it took in ms. */
  async ping(): Promise<number> {
    const t0 = Date.now();
    await this.request("ping", (id) => encodePing(id));
    return Date.now() - t0;
  }

  // ---- connection ----

  private async startAttempt(tokenMode: "same" | "new"): Promise<void> {
    this.reconnectTimer = undefined;
    const gen = ++this.gen;
    if (
      this.getToken &&
      (tokenMode === "new" || !this.token || tokenExpiresSoon(Date.now(), tokenTimes(this.token).exp))
    ) {
      let t: unknown;
      try {
        t = await this.getToken();
        if (typeof t !== "string" || t === "") throw new TypeError("getToken() returned no token");
      } catch (e) {
        if (gen !== this.gen) return;
        this.reportError(new HeraldError("token", `getToken() failed: ${String(e)}`, { cause: e }));
        this.connectionEnded({ kind: "token_error" });
        return;
      }
      if (gen !== this.gen) return; // closed meanwhile
      this.setToken(t);
    }
    const token = this.token;
    let ws: WebSocketLike;
    try {
      if (this.tokenIn === "header") {
        ws = new this.Ctor(
          this.url,
          ["herald.v1"],
          token ? { headers: { Authorization: `Bearer ${token}` } } : undefined,
        );
      } else {
        ws = new this.Ctor(this.url, token ? ["herald.v1", `bearer.${token}`] : ["herald.v1"]);
      }
    } catch (e) {
      // A URL the WebSocket constructor refuses: nothing to retry.
      this.reportError(new HeraldError("refused", `cannot open ${this.url}: ${String(e)}`, { cause: e }));
      this.terminate("refused");
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    let status: number | undefined;
    // An upgrade that gets no answer (a peer that accepted TCP and hangs)
    // counts as a lost connection, like Python's open_timeout.
    this.openTimer = setTimeout(() => {
      this.openTimer = undefined;
      if (gen === this.gen && this.stateValue !== "open") this.connectionEnded({ kind: "lost" });
    }, this.requestTimeoutMs);
    ws.onopen = () => {
      if (gen === this.gen) this.onOpen();
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (gen === this.gen) this.onMessage(ev.data);
    };
    ws.onerror = (ev: { message?: unknown; error?: { message?: unknown } }) => {
      if (gen !== this.gen) return;
      // ws (Node) reports a refused upgrade as "Unexpected server response: 401";
      // browsers do not show the status at all.
      const m = HANDSHAKE_STATUS.exec(String(ev?.message ?? ev?.error?.message ?? ""));
      if (m) status = Number(m[1]);
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (gen !== this.gen) return;
      this.ws = undefined;
      let end: EndEvent;
      if (this.stateValue === "open") end = { kind: "close", code: ev?.code ?? 1006, reason: ev?.reason };
      else if (status !== undefined) end = { kind: "handshake", status };
      else end = { kind: "lost" };
      this.connectionEnded(end);
    };
  }

  private onOpen(): void {
    if (this.openTimer !== undefined) clearTimeout(this.openTimer);
    this.openTimer = undefined;
    this.openedAt = Date.now();
    this.lastInbound = this.openedAt;
    this.previous401s = 0;
    this.stateValue = "open";
    for (const sub of this.subs.values()) this.sendSubscribe(sub);
    this.scheduleRefresh();
    this.startHeartbeat();
    this.setState({ state: "open" });
  }

  /** A connection (or an attempt) ended: ask the table what to do. */
  private connectionEnded(end: EndEvent): void {
    const wasOpen = this.stateValue === "open";
    const openMs = wasOpen ? Date.now() - this.openedAt : 0;
    this.dropConnection(end.kind === "lost", "connection_lost");
    const { decision, delayMs, nextAttempt } = plan(
      end,
      { hasGetToken: !!this.getToken, previous401s: this.previous401s, attempt: this.attempt, openMs },
      this.backoff,
      this.random,
    );
    this.previous401s = end.kind === "handshake" && end.status === 401 ? this.previous401s + 1 : 0;
    const detail = {
      ...(end.kind === "close" ? { code: end.code } : {}),
      ...(end.kind === "handshake" ? { status: end.status } : {}),
    };
    if (!decision.reconnect) {
      this.terminate(decision.reason, detail);
      return;
    }
    const usedAttempt = decision.resetAttempts ? 0 : nextAttempt - 1;
    this.attempt = nextAttempt;
    this.stateValue = "reconnecting";
    this.setState({ state: "reconnecting", reason: decision.reason, delayMs, attempt: usedAttempt, ...detail });
    if (this.stateValue !== "reconnecting") return; // a listener closed the client
    const token = decision.token;
    this.reconnectTimer = setTimeout(() => void this.startAttempt(token), delayMs);
  }

  /**
   * Forgets the current socket and everything tied to it. PUBLISH and PING
   * waiting for their reply fail with `failWith`: `connection_lost` (they
   * may or may not have been served), or `closed` when the app closed the
   * client.
   */
  private dropConnection(abrupt: boolean, failWith: "connection_lost" | "closed"): void {
    this.gen++;
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      try {
        const t = (ws as { terminate?: () => void }).terminate;
        if (abrupt && typeof t === "function") t.call(ws);
        else ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    this.stopConnectionTimers();
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      if (p.kind === "subscribe") continue; // the subscription is sent again on the next connection
      clearTimeout(p.timer);
      if (p.kind === "unsubscribe") p.resolve();
      else if (failWith === "closed") p.reject(new HeraldError("closed", `the client was closed before the ${p.kind} reply`));
      else p.reject(new HeraldError("connection_lost", `the connection ended before the ${p.kind} reply`));
    }
    for (const sub of this.subs.values()) sub._connectionLost();
  }

  private terminate(reason: ClosedReason, detail: { code?: number; status?: number } = {}): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.dropConnection(false, reason === "client" ? "closed" : "connection_lost");
    this.stateValue = "closed";
    const err = new HeraldError(reason === "client" ? "closed" : reason, CLOSED_MESSAGES[reason]);
    const subs = [...this.subs.values()];
    this.subs.clear();
    for (const sub of subs) sub._end(reason === "client" ? undefined : err);
    if (reason !== "client") this.reportError(err);
    this.setState({ state: "closed", reason, ...detail });
  }

  private stopConnectionTimers(): void {
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    if (this.heartbeatTimer !== undefined) clearTimeout(this.heartbeatTimer);
    if (this.openTimer !== undefined) clearTimeout(this.openTimer);
    this.refreshTimer = undefined;
    this.heartbeatTimer = undefined;
    this.openTimer = undefined;
    this.heartbeatInFlight = false;
  }

  // ---- messages ----

  private onMessage(data: unknown): void {
    this.lastInbound = Date.now();
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return; // text: the gateway never sends any
    const m = decodeInbound(bytes);
    switch (m.type) {
      case "publication":
        this.subs.get(m.topic)?._onPublication(m.seq, m.data);
        return;
      case "reply": {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (p.kind === "subscribe") {
          if (this.subs.get(p.sub.topic) === p.sub) p.sub._onReply(m.result);
          return;
        }
        clearTimeout(p.timer);
        if (p.kind === "unsubscribe") p.resolve();
        else p.resolve(m.result);
        return;
      }
      case "error": {
        const err = new HeraldError(m.code, m.message);
        const p = this.pending.get(m.id);
        if (!p) {
          this.reportError(err);
          return;
        }
        this.pending.delete(m.id);
        if (p.kind === "subscribe") {
          if (this.subs.get(p.sub.topic) === p.sub) {
            this.subs.delete(p.sub.topic);
            const e = new HeraldError(m.code, `subscribe ${p.sub.topic}: ${m.message}`);
            p.sub._fail(e);
            this.reportError(e);
          }
          return;
        }
        clearTimeout(p.timer);
        if (p.kind === "unsubscribe") p.resolve(); // 409 not subscribed: it is gone either way
        else p.reject(err);
        return;
      }
      default:
        return;
    }
  }

  private nextId(): number {
    for (;;) {
      const id = this.idCounter;
      this.idCounter = id >= 0xffffffff ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  private send(bytes: Uint8Array): void {
    try {
      this.ws?.send(bytes);
    } catch {
      /* the close event follows */
    }
  }

  private sendSubscribe(sub: Subscription): void {
    const id = this.nextId();
    this.pending.set(id, { kind: "subscribe", sub });
    this.send(encodeSubscribe(id, sub.topic, sub._recoveryOptions()));
  }

  private request(kind: "ping" | "publish" | "refresh", encode: (id: number) => Uint8Array): Promise<Record<string, unknown>> {
    if (this.stateValue === "closed") return Promise.reject(new HeraldError("closed", "the client is closed"));
    if (this.stateValue !== "open" || !this.ws) {
      return Promise.reject(new HeraldError("not_connected", `not connected (${this.stateValue})`));
    }
    const id = this.nextId();
    const bytes = encode(id);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.get(id)?.kind !== kind) return;
        this.pending.delete(id);
        reject(new HeraldError("timeout", `no reply to ${kind} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(id, { kind, resolve, reject, timer });
      this.send(bytes);
    });
  }

  private unsubscribeSub(sub: Subscription): Promise<void> {
    if (this.subs.get(sub.topic) !== sub) {
      sub._end(undefined, true);
      return Promise.resolve();
    }
    this.subs.delete(sub.topic);
    sub._end(undefined, true);
    if (this.stateValue !== "open" || !this.ws) return Promise.resolve(); // nothing to tell: the next connection won't have it
    const id = this.nextId();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve();
      }, this.requestTimeoutMs);
      this.pending.set(id, { kind: "unsubscribe", resolve, timer });
      this.send(encodeUnsubscribe(id, sub.topic));
    });
  }

  // ---- token refresh ----

  private setToken(t: string): void {
    this.token = t;
    const { iat } = tokenTimes(t);
    this.tokenStart = iat !== undefined ? iat * 1000 : Date.now();
  }

  private scheduleRefresh(delayMs?: number): void {
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (!this.getToken || !this.token) return;
    const { exp } = tokenTimes(this.token);
    if (exp === undefined) return;
    const delay = delayMs ?? refreshDelay(Date.now(), this.tokenStart, exp);
    const gen = this.gen;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      if (gen === this.gen) void this.refresh(gen);
    }, delay);
  }

  private async refresh(gen: number): Promise<void> {
    let t: unknown;
    try {
      t = await this.getToken!();
      if (typeof t !== "string" || t === "") throw new TypeError("getToken() returned no token");
    } catch (e) {
      if (gen !== this.gen) return;
      this.reportError(new HeraldError("token", `getToken() failed: ${String(e)}`, { cause: e }));
      this.retryRefresh();
      return;
    }
    if (gen !== this.gen || this.stateValue !== "open") return;
    try {
      await this.request("refresh", (id) => encodeRefresh(id, t as string));
    } catch (e) {
      if (gen !== this.gen) return;
      this.reportError(e instanceof HeraldError ? e : new HeraldError("token", String(e), { cause: e }));
      this.retryRefresh(); // the old token stays in force
      return;
    }
    if (gen !== this.gen) return;
    this.setToken(t);
    this.scheduleRefresh();
  }

  /** After a failed refresh: try again halfway to the current token's expiry (a 4001 follows otherwise). */
  private retryRefresh(): void {
    const exp = this.token ? tokenTimes(this.token).exp : undefined;
    if (exp === undefined) return;
    const left = exp * 1000 - Date.now();
    if (left > 2000) this.scheduleRefresh(Math.max(1000, Math.round(left / 2)));
  }

  // ---- heartbeat ----

  /**
   * A PING once nothing came from the gateway for `heartbeatMs`; no reply
   * within `requestTimeoutMs` ends the connection as lost.
   */
  private startHeartbeat(): void {
    if (this.heartbeatMs <= 0) return;
    const gen = this.gen;
    const check = () => {
      this.heartbeatTimer = undefined;
      if (gen !== this.gen || this.stateValue !== "open" || this.heartbeatInFlight) return;
      const quietMs = Date.now() - this.lastInbound;
      if (quietMs < this.heartbeatMs) {
        this.heartbeatTimer = setTimeout(check, this.heartbeatMs - quietMs);
        return;
      }
      this.heartbeatInFlight = true;
      this.request("ping", (id) => encodePing(id)).then(
        () => {
          if (gen !== this.gen) return;
          this.heartbeatInFlight = false;
          check();
        },
        (e: HeraldError) => {
          if (gen !== this.gen) return;
          this.heartbeatInFlight = false;
          if (e.code === "timeout") this.connectionEnded({ kind: "lost" });
          else check();
        },
      );
    };
    this.heartbeatTimer = setTimeout(check, this.heartbeatMs);
  }

  // ---- events ----

  private setState(ev: StateEvent): void {
    this.stateValue = ev.state;
    for (const e of this.emitSafe("state", ev)) {
      this.reportError(new HeraldError("callback", `a state listener threw: ${String(e)}`, { cause: e }));
    }
  }

  private reportError(err: HeraldError): void {
    this.emitSafe("error", err); // errors thrown by error listeners are dropped
  }
}

export type { Publication, Subscribed };
