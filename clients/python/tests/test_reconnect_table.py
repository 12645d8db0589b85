"""The reconnect table (clients/README.md) and the backoff, without sockets."""

import pytest

from herald_client.reconnect import (
    OPEN_RESETS_AFTER_S,
    Decision,
    Outcome,
    backoff_delay,
    decide,
    next_wait,
    slow_delay,
)

lost, close, hs = Outcome.lost, Outcome.close, Outcome.handshake

# (outcome, has_get_token, consecutive_401s) -> (reconnect, wait, new_token, reason, reset)
TABLE = [
    # connection lost: network error, EOF, 1006, no pong
    (lost(), False, 0, (True, "backoff", False, "connection_lost", False)),
    (close(1006), False, 0, (True, "backoff", False, "connection_lost", False)),
    (close(None), True, 0, (True, "backoff", False, "connection_lost", False)),
    # 1000 the app did not ask for
    (close(1000), False, 0, (True, "backoff", False, "server_closed", False)),
    # 1001 going away / topic stream interrupted
    (close(1001), False, 0, (True, "backoff", False, "going_away", False)),
    (close(1001), True, 0, (True, "backoff", False, "going_away", False)),
    # 1011, 1012, 1013, 1014, any other code not below
    (close(1011), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(1012), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(1013), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(1014), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(1005), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(4000), False, 0, (True, "backoff", False, "server_closed", False)),
    (close(4999), True, 0, (True, "backoff", False, "server_closed", False)),
    # 4008 slow consumer
    (close(4008), False, 0, (True, "backoff", False, "slow_consumer", False)),
    # 4029 rate limited
    (close(4029), False, 0, (True, "slow", False, "rate_limited", False)),
    (close(4029), True, 0, (True, "slow", False, "rate_limited", False)),
    # 4001 token expired
    (close(4001), True, 0, (True, "now", True, "token_expired", True)),
    (close(4001), False, 0, (False, None, False, "unauthorized", False)),
    # 4003 disconnected by the operator
    (close(4003), True, 0, (True, "slow", True, "disconnected", False)),
    (close(4003), False, 0, (False, None, False, "disconnected", False)),
    # 1002, 1003, 1007, 1009: the client sent something the gateway refuses
    (close(1002), True, 0, (False, None, False, "protocol", False)),
    (close(1003), True, 0, (False, None, False, "protocol", False)),
    (close(1007), False, 0, (False, None, False, "protocol", False)),
    (close(1009), False, 0, (False, None, False, "protocol", False)),
    # 1008: the application refused the session
    (close(1008), True, 0, (False, None, False, "refused", False)),
    # handshake 401
    (hs(401), True, 0, (True, "now", True, "unauthorized", False)),
    (hs(401), True, 1, (False, None, False, "unauthorized", False)),
    (hs(401), True, 2, (False, None, False, "unauthorized", False)),
    (hs(401), False, 0, (False, None, False, "unauthorized", False)),
    # handshake 403, 400, 404
    (hs(403), True, 0, (False, None, False, "refused", False)),
    (hs(400), False, 0, (False, None, False, "refused", False)),
    (hs(404), False, 0, (False, None, False, "refused", False)),
    # handshake 429, 503
    (hs(429), False, 0, (True, "slow", False, "rate_limited", False)),
    (hs(503), True, 0, (True, "backoff", False, "unavailable", False)),
    # a status the table does not name: like a lost connection
    (hs(502), False, 0, (True, "backoff", False, "http_502", False)),
    # close() called by the app
    (Outcome.client(), True, 0, (False, None, False, "client", False)),
    (Outcome.client(), False, 0, (False, None, False, "client", False)),
    # get_token failed (not a row of the table): back off, ask again
    (Outcome.token_error(), True, 0, (True, "backoff", True, "token_error", False)),
]


@pytest.mark.parametrize("outcome,has_get_token,n401,expected", TABLE)
def test_table(outcome, has_get_token, n401, expected):
    d = decide(outcome, has_get_token=has_get_token, consecutive_401s=n401)
    assert (d.reconnect, d.wait, d.new_token, d.reason, d.reset_attempts) == expected


def test_backoff_window_grows_and_is_capped():
    top = lambda: 1.0  # the top of the window
    assert backoff_delay(0, 0.25, 30.0, top) == 0.25
    assert backoff_delay(1, 0.25, 30.0, top) == 0.5
    assert backoff_delay(3, 0.25, 30.0, top) == 2.0
    assert backoff_delay(7, 0.25, 30.0, top) == 30.0  # 32 capped
    assert backoff_delay(10_000, 0.25, 30.0, top) == 30.0  # no overflow
    assert backoff_delay(5, 0.25, 30.0, lambda: 0.0) == 0.0  # full jitter: down to 0
    assert backoff_delay(2, 0.25, 30.0, lambda: 0.5) == 0.5


def test_slow_is_between_15_and_30_s():
    assert slow_delay(lambda: 0.0) == 15.0
    assert slow_delay(lambda: 0.5) == 22.5
    assert slow_delay(lambda: 0.999) < 30.0


def test_next_wait_counts_attempts():
    backoff = decide(Outcome.lost(), has_get_token=False)
    top = lambda: 1.0
    delays = []
    attempt = 0
    for _ in range(5):
        delay, attempt = next_wait(backoff, attempt, rand=top)
        delays.append(delay)
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert attempt == 5


def test_short_connections_do_not_reset_the_counter():
    # 4008 in a loop: each connection opens and is closed at once
    d = decide(Outcome.close(4008), has_get_token=False)
    top = lambda: 1.0
    attempt, delays = 0, []
    for _ in range(4):
        delay, attempt = next_wait(d, attempt, opened_for=0.05, rand=top)
        delays.append(delay)
    assert delays == [0.25, 0.5, 1.0, 2.0]


def test_a_connection_open_10_s_resets_the_counter():
    d = decide(Outcome.close(1001), has_get_token=False)
    delay, attempt = next_wait(d, 6, opened_for=OPEN_RESETS_AFTER_S, rand=lambda: 1.0)
    assert (delay, attempt) == (0.25, 1)
    delay, attempt = next_wait(d, 6, opened_for=OPEN_RESETS_AFTER_S - 0.1, rand=lambda: 1.0)
    assert (delay, attempt) == (16.0, 7)


def test_token_expired_reconnects_at_once_with_attempt_0():
    d = decide(Outcome.close(4001), has_get_token=True)
    assert next_wait(d, 5, rand=lambda: 1.0) == (0.0, 0)


def test_handshake_401_retries_at_once_then_ends():
    first = decide(Outcome.handshake(401), has_get_token=True, consecutive_401s=0)
    assert next_wait(first, 2, rand=lambda: 1.0) == (0.0, 3)
    second = decide(Outcome.handshake(401), has_get_token=True, consecutive_401s=1)
    assert not second.reconnect and second.reason == "unauthorized"


def test_slow_wait_uses_the_slow_range():
    d = decide(Outcome.handshake(429), has_get_token=False)
    assert next_wait(d, 0, rand=lambda: 0.0) == (15.0, 1)
    assert next_wait(d, 0, rand=lambda: 0.5) == (22.5, 1)


def test_custom_base_and_max():
    d = decide(Outcome.lost(), has_get_token=False)
    assert next_wait(d, 4, base=0.01, cap=0.1, rand=lambda: 1.0) == (0.1, 5)
    assert next_wait(d, 2, base=0.01, cap=0.1, rand=lambda: 1.0) == (0.04, 3)


def test_no_wait_for_a_terminal_decision():
    with pytest.raises(ValueError):
        next_wait(Decision(False, "client"), 0)


# The last paragraph of clients/README.md: the reasons of the state events.
RECONNECTING_REASONS = {
    "connection_lost", "server_closed", "going_away", "slow_consumer", "rate_limited",
    "token_expired", "disconnected", "unauthorized", "unavailable", "http_<status>", "token_error",
}
CLOSED_REASONS = {"client", "unauthorized", "disconnected", "protocol", "refused"}


def test_reasons_are_exactly_the_listed_ones():
    outcomes = [Outcome.lost(), Outcome.token_error(), Outcome.client(), close(None)]
    outcomes += [close(c) for c in list(range(1000, 1016)) + list(range(3000, 3010)) + list(range(4000, 4100))]
    outcomes += [hs(s) for s in range(100, 600) if s != 101]
    seen = {True: set(), False: set()}
    for o in outcomes:
        for has_get_token in (False, True):
            for n401 in (0, 1):
                d = decide(o, has_get_token=has_get_token, consecutive_401s=n401)
                reason = d.reason
                if d.reconnect and reason.startswith("http_"):
                    assert reason == f"http_{o.code}" and o.kind == "handshake"
                    reason = "http_<status>"
                seen[d.reconnect].add(reason)
    assert seen[True] == RECONNECTING_REASONS
    assert seen[False] == CLOSED_REASONS


@pytest.mark.parametrize("status", [500, 502, 504, 418, 302])
def test_any_other_handshake_status_is_http_status_with_backoff(status):
    d = decide(hs(status), has_get_token=True)
    assert (d.reconnect, d.wait, d.new_token, d.reason) == (True, "backoff", False, f"http_{status}")
