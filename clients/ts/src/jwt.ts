/** The claims the client reads from a JWT (it never verifies one). */
export interface TokenTimes {
  /** NumericDate (seconds). */
  exp?: number;
  iat?: number;
}

/** Reads `exp` and `iat` from a JWT's payload; `{}` when it cannot. */
export function tokenTimes(jwt: string): TokenTimes {
  const part = jwt.split(".")[1];
  if (!part) return {};
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const claims = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
    const out: TokenTimes = {};
    if (typeof claims.exp === "number" && Number.isFinite(claims.exp)) out.exp = claims.exp;
    if (typeof claims.iat === "number" && Number.isFinite(claims.iat)) out.iat = claims.iat;
    return out;
  } catch {
    return {};
  }
}
