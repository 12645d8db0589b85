"""Wire encoding (byte examples of PROTOCOL.md §1.3/§1.4) and token timing."""

import base64
import json

import pytest

from herald_client import tokens, wire


def test_client_messages_match_protocol_md():
    assert wire.subscribe(7, "md.BTC") == bytes.fromhex("930107a66d642e425443")
    assert wire.subscribe(8, "md.BTC", 41, "9f86d081884c7d65") == bytes.fromhex(
        "940108a66d642e425443"
        "82" "a573696e636529" "a565706f6368" "b039663836643038313838346337643635"
    )
    assert wire.unsubscribe(7, "md.BTC") == bytes.fromhex("930207a66d642e425443")
    assert wire.ping(3) == bytes.fromhex("920303")
    assert wire.refresh(4, "e30.e30.sig") == bytes.fromhex("930404ab6533302e6533302e736967")
    assert wire.publish(9, "chat.room1", b"hi") == bytes.fromhex(
        "940509aa636861742e726f6f6d31c4026869"
    )


def test_gateway_messages_decode():
    # PUBLICATION md.BTC seq 42 payload {"p":1} (frame body of PROTOCOL.md §1.4)
    assert wire.decode(bytes.fromhex("9410a66d642e4254432ac4077b2270223a317d")) == (
        wire.PUBLICATION, "md.BTC", 42, b'{"p":1}')
    reply = bytes.fromhex(
        "931107" "83" "a373657129" "a565706f6368" "b039663836643038313838346337643635"
        "a97265636f7665726564c2"
    )
    assert wire.decode(reply) == (
        wire.REPLY, 7, {"seq": 41, "epoch": "9f86d081884c7d65", "recovered": False})
    assert wire.decode(bytes.fromhex("93110981a373657124")) == (wire.REPLY, 9, {"seq": 36})
    err = bytes.fromhex("941207cd0193b1746f706963206e6f7420616c6c6f776564")
    assert wire.decode(err) == (wire.ERROR, 7, 403, "topic not allowed")
    # trailing elements are skipped (forward compatibility)
    assert wire.decode(bytes.fromhex("9510a16101c40178c0"))[0:3] == (wire.PUBLICATION, "a", 1)


@pytest.mark.parametrize("hexdata", ["c0", "90", "91cc63", "9410a161a178c40178", "c1"])
def test_malformed_gateway_messages(hexdata):
    with pytest.raises(wire.MalformedMessage):
        wire.decode(bytes.fromhex(hexdata))


def _jwt(claims):
    b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{b({'alg': 'HS256'})}.{b(claims)}.sig"


def test_token_times():
    assert tokens.token_times(_jwt({"exp": 1000, "iat": 900})) == (900.0, 1000.0)
    assert tokens.token_times(_jwt({"exp": 1000})) == (None, 1000.0)
    assert tokens.token_times("not-a-jwt") == (None, None)
    assert tokens.token_times(None) == (None, None)
    assert tokens.token_times("a.!!!.c") == (None, None)


def test_refresh_at_80_percent_and_5_s_before_exp():
    # one hour: 80% comes first
    assert tokens.refresh_at(_jwt({"iat": 0, "exp": 3600}), 0) == pytest.approx(2880)
    # 20 s: 80% = 16 s, but at least 5 s before exp = 15 s
    assert tokens.refresh_at(_jwt({"iat": 100, "exp": 120}), 100) == pytest.approx(115)
    # no iat: the lifetime starts when the client got the token
    assert tokens.refresh_at(_jwt({"exp": 150}), 50) == pytest.approx(130)
    # iat in the future (clock skew) is not trusted
    assert tokens.refresh_at(_jwt({"iat": 500, "exp": 600}), 100) == pytest.approx(500)
    assert tokens.refresh_at("opaque", 0) is None


def test_refresh_delay_never_below_1_s():
    assert tokens.refresh_delay(_jwt({"iat": 0, "exp": 3}), 0, 0) == 1.0
    assert tokens.refresh_delay(_jwt({"iat": 0, "exp": 100}), 0, 10) == pytest.approx(70)


def test_expires_within_30_s():
    assert tokens.RENEW_BEFORE_CONNECT_S == 30.0
    assert tokens.expires_within(_jwt({"exp": 1029}), 1000)
    assert not tokens.expires_within(_jwt({"exp": 1030}), 1000)
    assert tokens.expires_within(_jwt({"exp": 900}), 1000)  # expired already
    assert tokens.expires_within(_jwt({"exp": 1100}), 1000, margin=120)
    assert not tokens.expires_within("opaque", 1000)  # no exp: nothing to go by
    assert not tokens.expires_within(None, 1000)
