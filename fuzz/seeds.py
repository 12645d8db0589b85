#!/usr/bin/env python3
"""Regenerates the committed seed corpora in fuzz/corpus/<target>/.

    python3 fuzz/seeds.py

Seeds are small valid (and a few deliberately edge-case) inputs for each
target, in each target's input layout (see the doc comment at the top of
fuzz/fuzz_targets/<target>.rs). The same files every run, except the ES256
token: HMAC, RS256 (PKCS#1 v1.5) and EdDSA signatures are deterministic,
ECDSA ones are not (regenerating changes that file's bytes, not what it
exercises). Needs python3-cryptography for the
RS256/ES256/EdDSA tokens and the JWKS; keys come from tests/keys.

Files the fuzzer found and that we keep as regressions are named
`crash-*`/`regress-*` and are not touched by this script.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "tests", "keys")
CORPUS = os.path.join(HERE, "corpus")

# Must match the constants in jwt_verify.rs / upgrade_request.rs.
SECRET = b"herald-fuzz-hs256-secret-32-bytes-long!"
OCT_K = "aGVyYWxkLWZ1enotb2N0LWtleS0zMi1ieXRlcy1sb25nISE"
EXP = 4_000_000_000  # far past the targets' fixed "now" (1.8e9)


# --- MessagePack, the few shapes the protocols use --------------------------

def mp(v):
    if v is None:
        return b"\xc0"
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if v < 0x80:
            return bytes([v])
        if v < 1 << 8:
            return b"\xcc" + bytes([v])
        if v < 1 << 16:
            return b"\xcd" + struct.pack(">H", v)
        if v < 1 << 32:
            return b"\xce" + struct.pack(">I", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        if len(v) < 256:
            return b"\xc4" + bytes([len(v)]) + bytes(v)
        return b"\xc5" + struct.pack(">H", len(v)) + bytes(v)
    if isinstance(v, list):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


# --- WebSocket client frames ------------------------------------------------

def ws_frame(opcode, payload, fin=True, mask=b"\x12\x34\x56\x78"):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 1 << 16:
        hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# --- JWT ----------------------------------------------------------------------

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(header, claims, sign):
    si = b64u(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64u(json.dumps(claims, separators=(",", ":")).encode())
    return si + "." + b64u(sign(si.encode()))


def hs256(key):
    return lambda m: hmac.new(key, m, hashlib.sha256).digest()


def load(name):
    from cryptography.hazmat.primitives import serialization
    with open(os.path.join(KEYS, name), "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def asym_signers():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    rsa = load("rsa_private.pem")
    p256 = load("ec_p256_private.pem")
    ed = load("ed25519_private.pem")

    def es256(m):
        r, s = decode_dss_signature(p256.sign(m, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return {
        "RS256": lambda m: rsa.sign(m, padding.PKCS1v15(), hashes.SHA256()),
        "ES256": es256,
        "EdDSA": ed.sign,
    }, (rsa, p256, ed)


def jwks_doc(rsa, p256, ed):
    from cryptography.hazmat.primitives import serialization
    rn = rsa.public_key().public_numbers()
    en = p256.public_key().public_numbers()
    edx = ed.public_key().public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)

    def big(i, n=None):
        n = n or (i.bit_length() + 7) // 8
        return b64u(i.to_bytes(n, "big"))
    return {"keys": [
        {"kty": "oct", "kid": "oct-1", "k": OCT_K},
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": big(rn.n), "e": big(rn.e)},
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": big(en.x, 32), "y": big(en.y, 32)},
        {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64u(edx)},
    ]}


# --- writing ----------------------------------------------------------------

def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    # Drop earlier generated seeds, keep kept findings.
    if os.path.isdir(CORPUS):
        for t in os.listdir(CORPUS):
            for f in os.listdir(os.path.join(CORPUS, t)):
                if not f.startswith(("crash-", "regress-")):
                    os.remove(os.path.join(CORPUS, t, f))

    sub = mp([1, 1, "md.BTC-USD"])
    sub_rec = mp([1, 70000, "md.BTC-USD", {"since": 1 << 35, "epoch": "e1"}])
    unsub = mp([2, 2, "t"])
    ping = mp([3, 3])
    refresh = mp([4, 4, "hdr.payload.sig"])
    publish = mp([5, 5, "t", bytes(range(6))])
    requests = {"subscribe": sub, "subscribe_recover": sub_rec, "unsubscribe": unsub,
                "ping": ping, "refresh": refresh, "publish": publish,
                "subscribe_nil_opts": mp([1, 9, "a.b", None]),
                "trailing": mp([3, 7, "extra", [1, 2]])}
    for name, body in requests.items():
        write("client_request", name, body)

    # ws_decoder: [limit, k, k chunk sizes, stream]
    big = bytes(300)
    streams = {
        "single": ws_frame(2, publish),
        "fragmented": ws_frame(2, b"abc", fin=False) + ws_frame(9, b"hi")
        + ws_frame(0, b"def", fin=False) + ws_frame(0, b"g"),
        "controls": ws_frame(9, b"") + ws_frame(10, b"pong") + ws_frame(2, sub)
        + ws_frame(8, struct.pack(">H", 1000) + b"bye"),
        "len16": ws_frame(2, big),
        "text": ws_frame(1, b"hello"),
        "close_empty": ws_frame(8, b""),
    }
    for name, s in streams.items():
        write("ws_decoder", name, bytes([64, 3, 1, 5, 200]) + s)
    write("ws_decoder", "whole", bytes([64, 0]) + streams["fragmented"])
    write("ws_decoder", "too_big", bytes([1, 1, 7]) + streams["len16"])

    # feed_frame: [limit, stream of length-prefixed frames]
    def fr(body):
        return struct.pack(">I", len(body)) + body
    feed = fr(mp([1, "demo-feed-token", "quotes"])) + fr(mp([2, "md.BTC-USD", b"42.5"])) \
        + fr(mp([3, 12345])) + fr(mp([3, {"n": [1, "x"]}]))
    write("feed_frame", "session", bytes([16]) + feed)
    write("feed_frame", "hello", bytes([255]) + fr(mp([1, "tok", "name", "extra"])))
    write("feed_frame", "gateway", bytes([255]) + mp([0, 413, "frame over the maximum size"]))
    write("feed_frame", "over_limit", bytes([1]) + fr(mp([2, "t", bytes(100)])))

    # jwt_verify: even first byte = raw token, odd = header JSON \n claims JSON
    claims = {"sub": "alice", "exp": EXP, "topics": ["md.*", "chat.1"], "pub": ["chat.1"]}
    set_claims = dict(claims, iss="https://idp.example", aud="herald")
    write("jwt_verify", "hs256_plain", b"\x00" + jwt({"alg": "HS256", "typ": "JWT"}, claims, hs256(SECRET)).encode())
    write("jwt_verify", "hs256_set", b"\x00" + jwt({"alg": "HS256", "kid": "oct-1"}, set_claims,
                                                    hs256(base64.urlsafe_b64decode(OCT_K + "=")))
          .encode())
    write("jwt_verify", "alg_none", b"\x00" + (b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(claims).encode()) + ".").encode())
    write("jwt_verify", "signed_by_target", b"\x01" + json.dumps({"alg": "HS256", "kid": "oct-1"}).encode()
          + b"\n" + json.dumps(dict(set_claims, nbf=1_700_000_000.5)).encode())
    write("jwt_verify", "signed_defaults", b"\x01{\"alg\":\"HS256\",\"typ\":\"JWT\"}\n{\"sub\":\"b\",\"exp\":1800000003}")
    write("jwt_verify", "crit", b"\x01{\"alg\":\"HS256\",\"crit\":[\"x\"]}\n{\"sub\":\"b\",\"exp\":4000000000}")
    signers, (rsa, p256, ed) = asym_signers()
    kids = {"RS256": "rsa-1", "ES256": "ec-1", "EdDSA": "ed-1"}
    for alg, sign in signers.items():
        write("jwt_verify", f"{alg.lower()}_set", b"\x00" + jwt({"alg": alg, "kid": kids[alg]}, set_claims, sign).encode())
    write("jwt_verify", "rs256_plain", b"\x00" + jwt({"alg": "RS256"}, claims, signers["RS256"]).encode())

    # jwks_parse: documents
    doc = jwks_doc(rsa, p256, ed)
    write("jwks_parse", "four_keys", json.dumps(doc, indent=1))
    for k in doc["keys"]:
        write("jwks_parse", "one_" + k["kid"], json.dumps({"keys": [k]}))
    write("jwks_parse", "skipped_enc", json.dumps({"keys": [
        dict(doc["keys"][1], kid="enc-1", use="enc"), doc["keys"][0],
        dict(doc["keys"][2], kid="ops", key_ops=["encrypt"])]}))
    write("jwks_parse", "p384_alg_mismatch", json.dumps({"keys": [
        dict(doc["keys"][2], kid="x", alg="ES384")]}))

    # upgrade_request: "METHOD URI" then header lines
    token = jwt({"alg": "HS256"}, claims, hs256(SECRET))
    base = ("GET /ws\r\nHost: herald.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    write("upgrade_request", "protocol_token", base + f"Sec-WebSocket-Protocol: herald.v1, bearer.{token}\r\n"
          "Origin: https://app.example\r\n")
    write("upgrade_request", "header_token", base + f"Authorization: Bearer {token}\r\nOrigin: HTTP://[::1]:3000/\r\n")
    write("upgrade_request", "query_token", base.replace("GET /ws", f"GET /ws?x=1&token={token}")
          + "Origin: http://localhost:8080\r\n")
    write("upgrade_request", "bad_origin", base + f"Authorization: Bearer {token}\r\nOrigin: null\r\n")
    write("upgrade_request", "no_token", base)
    write("upgrade_request", "post", "POST /ws\r\nUpgrade: websocket\r\n")

    # topic_pattern: pattern lines, then the topic
    write("topic_pattern", "prefix", "md.*\nchat.1\n*\nmd.BTC-USD")
    write("topic_pattern", "exact", "chat.room_1:a-b\nchat.room_1:a-b")
    write("topic_pattern", "subject", "x.*\nherald.c1.d.md~BTC-USD")
    write("topic_pattern", "bad", ".*\na..*\nmd.*")

    # broker_record: epoch \n first seq \n prev \n body
    def body(*ps):
        return b"".join(struct.pack(">I", len(p)) + p for p in ps)
    write("broker_record", "batch", b"AbCdEf012345\n41\n17\n" + body(b"one", b"", b"three"))
    write("broker_record", "marker", b"AbCdEf012345\n1\n0\n")
    write("broker_record", "high_seq", b"e\n18446744073709551000\n5\n" + body(b"x"))
    write("broker_record", "lying_length", b"e\n3\n2\n" + b"\xff\xff\xff\xff\x01\x02")


if __name__ == "__main__":
    sys.exit(main())
