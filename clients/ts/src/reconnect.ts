/**
 * The reconnect table of clients/README.md as pure functions: no socket, no
 * timer, no clock, no randomness of their own. The client feeds them what
 * happened and acts on the answer.
 */

/** How a connection (or a connection attempt) ended. */
export type EndEvent =
  /** The socket had opened and then closed with this code (1006 = lost). */
  | { kind: "close"; code: number; reason?: string }
  /** The upgrade was answered with this HTTP status instead of 101. */
  | { kind: "handshake"; status: number }
  /**
   * Lost without a code or status: network error, EOF, refused TCP connect,
   * no answer to the client's heartbeat PING, or (in a browser) any failure
   * before the socket opened.
   */
  | { kind: "lost" }
  /** `getToken()` failed while preparing an attempt. */
  | { kind: "token_error" }
  /** The app called `close()`. */
  | { kind: "client" };

/** Why the client stopped for good (`closed` state). */
export type ClosedReason = "client" | "unauthorized" | "disconnected" | "protocol" | "refused";

/** How long to wait before the next attempt. */
export type WaitKind =
  /** Exponential backoff with full jitter: `[0, min(max, base · 2ⁿ)]`. */
  | "backoff"
  /** A random time in `[slowMinMs, slowMaxMs]` (15–30 s by default). */
  | "slow"
  /** No wait. */
  | "immediate";

export type Decision =
  | {
      reconnect: true;
      wait: WaitKind;
      /** `new`: ask `getToken()` for a fresh token before the attempt. */
      token: "same" | "new";
      /** Start the attempt counter over (4001: "at once (attempt 0)"). */
      resetAttempts: boolean;
      /** A short name for the `reconnecting` state event. */
      reason: string;
    }
  | { reconnect: false; reason: ClosedReason };

export interface DecideContext {
  /** The app gave a `getToken` callback. */
  hasGetToken: boolean;
  /** Handshake 401s in a row before this event (0 if the last end was something else). */
  previous401s: number;
}

const again = (wait: WaitKind, token: "same" | "new", reason: string, resetAttempts = false): Decision => ({
  reconnect: true,
  wait,
  token,
  resetAttempts,
  reason,
});

const stop = (reason: ClosedReason): Decision => ({ reconnect: false, reason });

/** The reconnect table (clients/README.md), row by row. */
export function decide(ev: EndEvent, ctx: DecideContext): Decision {
  switch (ev.kind) {
    case "client":
      return stop("client");
    case "lost":
      return again("backoff", "same", "connection_lost");
    case "token_error":
      return again("backoff", "new", "token_error");
    case "handshake":
      return decideHandshake(ev.status, ctx);
    case "close":
      return decideClose(ev.code, ctx);
  }
}

function decideClose(code: number, ctx: DecideContext): Decision {
  switch (code) {
    case 1006:
      return again("backoff", "same", "connection_lost");
    case 1000:
      return again("backoff", "same", "server_closed");
    case 1001:
      return again("backoff", "same", "going_away");
    case 4008:
      return again("backoff", "same", "slow_consumer");
    case 4029:
      return again("slow", "same", "rate_limited");
    case 4001:
      return ctx.hasGetToken ? again("immediate", "new", "token_expired", true) : stop("unauthorized");
    case 4003:
      return ctx.hasGetToken ? again("slow", "new", "disconnected") : stop("disconnected");
    case 1002:
    case 1003:
    case 1007:
    case 1009:
      return stop("protocol");
    case 1008:
      return stop("refused");
    default:
      // 1011, 1012, 1013, 1014 and every code the table does not name.
      return again("backoff", "same", "server_closed");
  }
}

function decideHandshake(status: number, ctx: DecideContext): Decision {
  switch (status) {
    case 401:
      if (!ctx.hasGetToken) return stop("unauthorized");
      // Once at once with a new token; a second 401 in a row (the token was
      // fresh from getToken) ends the client.
      return ctx.previous401s >= 1 ? stop("unauthorized") : again("immediate", "new", "unauthorized");
    case 400:
    case 403:
    case 404:
      return stop("refused");
    case 429:
      return again("slow", "same", "rate_limited");
    case 503:
      return again("backoff", "same", "unavailable");
    default:
      // A status the table does not name (500, 502 from a proxy, …): treat
      // it as a lost connection.
      return again("backoff", "same", `http_${status}`);
  }
}

export interface BackoffOptions {
  /** First backoff window, ms (default 250). */
  baseMs?: number;
  /** Largest backoff window, ms (default 30 000). */
  maxMs?: number;
  /** "Slow" waits are random in [slowMinMs, slowMaxMs] (default 15 000 – 30 000). */
  slowMinMs?: number;
  slowMaxMs?: number;
  /** A connection open this long resets the attempt counter (default 10 000). */
  resetAfterMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = {
  baseMs: 250,
  maxMs: 30_000,
  slowMinMs: 15_000,
  slowMaxMs: 30_000,
  resetAfterMs: 10_000,
};

/** Full-jitter backoff: attempt `n` waits a random time in `[0, min(max, base · 2ⁿ)]`. */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number): number {
  const o = { ...DEFAULT_BACKOFF, ...opts };
  const n = Math.max(0, Math.min(attempt, 52));
  const window = Math.min(o.maxMs, o.baseMs * 2 ** n);
  return Math.round(clamp01(random()) * window);
}

/** The wait before the next attempt, in ms. */
export function waitDelay(wait: WaitKind, attempt: number, opts: BackoffOptions, random: () => number): number {
  const o = { ...DEFAULT_BACKOFF, ...opts };
  switch (wait) {
    case "immediate":
      return 0;
    case "backoff":
      return backoffDelay(attempt, o, random);
    case "slow":
      return Math.round(o.slowMinMs + clamp01(random()) * Math.max(0, o.slowMaxMs - o.slowMinMs));
  }
}

/**
 * The attempt counter to use for the wait after a connection ended: it starts
 * over once a connection has stayed open for `resetAfterMs` (`openMs` is how
 * long the one that just ended was open; 0 if it never opened).
 */
export function attemptAfter(attempt: number, openMs: number, opts: BackoffOptions): number {
  const o = { ...DEFAULT_BACKOFF, ...opts };
  return openMs >= o.resetAfterMs ? 0 : attempt;
}

/**
 * Everything the client does after a connection ended, in one call: the
 * decision, the delay and the attempt counter for the attempt after.
 */
export function plan(
  ev: EndEvent,
  ctx: DecideContext & { attempt: number; openMs: number },
  opts: BackoffOptions,
  random: () => number,
): { decision: Decision; delayMs: number; nextAttempt: number } {
  const decision = decide(ev, ctx);
  if (!decision.reconnect) return { decision, delayMs: 0, nextAttempt: ctx.attempt };
  let attempt = attemptAfter(ctx.attempt, ctx.openMs, opts);
  if (decision.resetAttempts) attempt = 0;
  const delayMs = waitDelay(decision.wait, attempt, opts, random);
  // Every attempt that follows a failure counts, so a server that accepts
  // and closes at once (4008 in a loop) still backs off.
  return { decision, delayMs, nextAttempt: decision.resetAttempts ? 0 : attempt + 1 };
}

/**
 * Whether a token that expires at `expS` (JWT NumericDate) should be replaced
 * before connecting: it expires within `marginMs` (30 s) of `nowMs`.
 */
export function tokenExpiresSoon(nowMs: number, expS: number | undefined, marginMs = 30_000): boolean {
  return expS !== undefined && expS * 1000 - nowMs < marginMs;
}

/**
 * When to send REFRESH for a token: at 80% of its lifetime, and at least 5 s
 * before `exp`; never sooner than `minDelayMs` from now (a token source that
 * hands out tokens about to expire must not make the client spin).
 *
 * @param startMs when the lifetime began: `iat` · 1000 if the token has one,
 *   else when the client got it.
 * @returns ms from `nowMs`.
 */
export function refreshDelay(nowMs: number, startMs: number, expS: number, minDelayMs = 1000): number {
  const expMs = expS * 1000;
  const at80 = startMs + 0.8 * (expMs - startMs);
  const at = Math.min(at80, expMs - 5000);
  return Math.max(minDelayMs, Math.round(at - nowMs));
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;
}
