/**
 * The client's own error kinds (a server ERROR carries a number instead).
 *
 * - `not_connected`: PUBLISH or PING while the connection is not open.
 * - `connection_lost`: the connection ended before the reply came (a PUBLISH
 *   may or may not have been stored).
 * - `closed`: the client was closed (by `close()` or for good by the table).
 * - `timeout`: no reply within `requestTimeoutMs`.
 * - `unauthorized`: 4001 or a handshake 401 that the client cannot answer
 *   with a new token; the client is closed.
 * - `disconnected`: 4003 without `getToken`; the client is closed.
 * - `protocol`: the gateway refused what the client sent (1002, 1003, 1007,
 *   1009); the client is closed.
 * - `refused`: 1008, or a handshake 400/403/404; the client is closed.
 * - `token`: `getToken()` threw or returned no string.
 * - `callback`: a subscription callback or event listener threw.
 * - `already_subscribed`: `subscribe()` for a topic this client already has.
 */
export type ClientErrorCode =
  | "not_connected"
  | "connection_lost"
  | "closed"
  | "timeout"
  | "unauthorized"
  | "disconnected"
  | "protocol"
  | "refused"
  | "token"
  | "callback"
  | "already_subscribed";

/**
 * Every error the client reports. `code` is the server's number for an ERROR
 * from the gateway (`403`, `409`, `503`, …) and a {@link ClientErrorCode}
 * string for the client's own.
 */
export class HeraldError extends Error {
  readonly code: number | ClientErrorCode;

  constructor(code: number | ClientErrorCode, message?: string, options?: { cause?: unknown }) {
    super(message ?? String(code));
    this.name = "HeraldError";
    this.code = code;
    if (options && "cause" in options) {
      (this as { cause?: unknown }).cause = options.cause;
    }
  }

  /** True when the gateway sent this error (an ERROR message). */
  get fromServer(): boolean {
    return typeof this.code === "number";
  }
}
