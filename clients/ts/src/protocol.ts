import { Decoder, Encoder } from "@msgpack/msgpack";

/** Type codes of PROTOCOL.md §1.3 and §1.4. */
export const T = {
  SUBSCRIBE: 1,
  UNSUBSCRIBE: 2,
  PING: 3,
  REFRESH: 4,
  PUBLISH: 5,
  PUBLICATION: 16,
  REPLY: 17,
  ERROR: 18,
} as const;

export interface RecoveryOptions {
  since: number;
  /** Without an epoch the gateway cannot check `since` and answers `recovered: false`. */
  epoch?: string;
}

/** A decoded gateway → client message. */
export type Inbound =
  | { type: "publication"; topic: string; seq: number; data: Uint8Array }
  | { type: "reply"; id: number; result: Record<string, unknown> }
  | { type: "error"; id: number; code: number; message: string }
  | { type: "unknown" };

const encoder = new Encoder();
const decoder = new Decoder();

export function encodeSubscribe(id: number, topic: string, opts?: RecoveryOptions): Uint8Array {
  return encoder.encode(opts ? [T.SUBSCRIBE, id, topic, { since: opts.since, epoch: opts.epoch ?? null }] : [T.SUBSCRIBE, id, topic]);
}

export function encodeUnsubscribe(id: number, topic: string): Uint8Array {
  return encoder.encode([T.UNSUBSCRIBE, id, topic]);
}

export function encodePing(id: number): Uint8Array {
  return encoder.encode([T.PING, id]);
}

export function encodeRefresh(id: number, jwt: string): Uint8Array {
  return encoder.encode([T.REFRESH, id, jwt]);
}

export function encodePublish(id: number, topic: string, payload: Uint8Array): Uint8Array {
  return encoder.encode([T.PUBLISH, id, topic, payload]);
}

function num(x: unknown): number | undefined {
  if (typeof x === "number") return x;
  if (typeof x === "bigint") return Number(x);
  return undefined;
}

/** Decodes one binary message; anything malformed or unknown is `{type: "unknown"}`. */
export function decodeInbound(bytes: Uint8Array): Inbound {
  let v: unknown;
  try {
    v = decoder.decode(bytes);
  } catch {
    return { type: "unknown" };
  }
  if (!Array.isArray(v) || v.length < 2) return { type: "unknown" };
  switch (num(v[0])) {
    case T.PUBLICATION: {
      const seq = num(v[2]);
      if (typeof v[1] !== "string" || seq === undefined || !(v[3] instanceof Uint8Array)) break;
      return { type: "publication", topic: v[1], seq, data: v[3] };
    }
    case T.REPLY: {
      const id = num(v[1]);
      if (id === undefined) break;
      const r = v[2];
      const result = r && typeof r === "object" && !Array.isArray(r) && !(r instanceof Uint8Array) ? (r as Record<string, unknown>) : {};
      return { type: "reply", id, result };
    }
    case T.ERROR: {
      const id = num(v[1]);
      const code = num(v[2]);
      if (id === undefined || code === undefined) break;
      return { type: "error", id, code, message: typeof v[3] === "string" ? v[3] : "" };
    }
  }
  return { type: "unknown" };
}
