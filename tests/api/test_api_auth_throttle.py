"""Repeated authentication failures from one client are slowed down, without slowing anyone else.

Asserted on the server's own decisions (its failure count and the delay it chose for each
attempt), never on how long a request took.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cthm.api.auth import Authenticator, FailureThrottle, client_key

from .support import Api, ApiFactory, TestClient

BAD = {"X-Auth-Token": "cthm_" + "B" * 43}


class Clock:
    """A monotonic clock the test moves by hand (the throttle's window is minutes long)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled_api(api_factory: ApiFactory, **throttle: float) -> tuple[Api, FailureThrottle]:
    settings: dict[str, float] = {"base_delay": 0.001, "max_delay": 0.008, **throttle}
    limiter = FailureThrottle(**settings)  # type: ignore[arg-type]
    return api_factory(authenticator=Authenticator(limiter)), limiter


def fail(api: Api) -> None:
    assert api.as_token(None).get("/v2.0/routers", headers=BAD).status_code == 401


def test_delays_start_after_five_failures_double_and_are_capped(api_factory: ApiFactory) -> None:
    api, limiter = throttled_api(api_factory)
    decided = []
    for _ in range(10):
        fail(api)
        state = limiter.state("testclient")
        assert state is not None
        decided.append((state.count, state.delay))
    assert decided == [
        (1, 0.0),
        (2, 0.0),
        (3, 0.0),
        (4, 0.0),
        (5, 0.0),
        (6, 0.001),
        (7, 0.002),
        (8, 0.004),
        (9, 0.008),
        (10, 0.008),  # capped at max_delay
    ]


def test_success_does_not_reset_a_count_and_other_clients_are_not_slowed(
    api_factory: ApiFactory,
) -> None:
    api, limiter = throttled_api(api_factory)
    valid = api.issue_token("p1", ["reader"])
    for _ in range(7):
        fail(api)
    # The attacker holds one valid token: using it does not wipe its record.
    assert api.as_token(valid).get("/v2.0/routers").status_code == 200
    fail(api)
    attacker = limiter.state("testclient")
    assert attacker is not None
    assert (attacker.count, attacker.delay) == (8, 0.004)

    # Another client, at another address: its own count, from zero; its success changes
    # nothing for the attacker either.
    with TestClient(api.client.app, client=("198.18.0.7", 40000)) as other:
        assert other.get("/v2.0/routers", headers={"X-Auth-Token": valid}).status_code == 200
        assert other.get("/v2.0/routers", headers=BAD).status_code == 401
    neighbour = limiter.state("198.18.0.7")
    assert neighbour is not None
    assert (neighbour.count, neighbour.delay) == (1, 0.0)
    assert limiter.state("testclient") == attacker


def test_a_quiet_window_forgets_a_client() -> None:
    clock = Clock()
    limiter = FailureThrottle(window=60.0, clock=clock)
    for _ in range(6):
        limiter.record_failure("198.18.0.1")
    assert limiter.record_failure("198.18.0.1").delay == pytest.approx(0.2)
    clock.now += 59.0  # a failure within the window keeps the count growing
    assert limiter.record_failure("198.18.0.1").count == 8
    clock.now += 60.5
    assert limiter.state("198.18.0.1") is None
    again = limiter.record_failure("198.18.0.1")
    assert (again.count, again.delay) == (1, 0.0)


def test_memory_is_bounded_by_forgetting_the_longest_quiet_clients() -> None:
    clock = Clock()
    limiter = FailureThrottle(max_clients=3, clock=clock)
    for address in ("198.18.0.1", "198.18.0.2", "198.18.0.3"):
        limiter.record_failure(address)
        clock.now += 1
    limiter.record_failure("198.18.0.1")  # the oldest fails again: now the most recent
    limiter.record_failure("198.18.0.4")
    assert limiter.tracked_clients() == 3
    assert limiter.state("198.18.0.2") is None  # the longest quiet one went
    for kept in ("198.18.0.1", "198.18.0.3", "198.18.0.4"):
        assert limiter.state(kept) is not None
    for n in range(10_000):  # a flood of addresses never grows it
        limiter.record_failure(f"10.{n // 256 % 256}.{n % 256}.1")
    assert limiter.tracked_clients() == 3


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("198.18.0.1", "198.18.0.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64: one client
        ("::ffff:198.18.0.9", "198.18.0.9"),
        (None, "unknown"),
        ("testclient", "testclient"),
        ("x" * 500, "x" * 64),
    ],
)
def test_clients_are_keyed_by_address_and_ipv6_by_its_64(host: str | None, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize(
    "settings",
    [
        {"free_failures": -1},
        {"window": 0},
        {"base_delay": -1},
        {"base_delay": 3, "max_delay": 2},
        {"max_clients": 0},
    ],
)
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|>="):
        FailureThrottle(**settings)  # type: ignore[arg-type]


def test_a_waiting_failure_blocks_neither_the_event_loop_nor_other_clients(
    api_factory: ApiFactory,
) -> None:
    """One client's failure waits 30 s; meanwhile another client's request is answered."""
    limiter = FailureThrottle(free_failures=0, base_delay=30.0, max_delay=30.0)
    api = api_factory(authenticator=Authenticator(limiter))
    valid = api.issue_token("p1", ["reader"])
    app = api.client.app

    async def scenario() -> tuple[bool, int]:
        attacker = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.18.0.66", 1)),
            base_url="http://testserver",
        )
        user = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.18.0.77", 1)),
            base_url="http://testserver",
        )
        async with attacker, user:
            waiting = asyncio.create_task(attacker.get("/v2.0/routers", headers=BAD))
            for _ in range(1000):  # until the attacker's failure is counted (and it sleeps)
                if limiter.state("198.18.0.66") is not None:
                    break
                await asyncio.sleep(0.001)
            answered = await user.get("/v2.0/routers", headers={"X-Auth-Token": valid})
            still_waiting = not waiting.done()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            return still_waiting, answered.status_code

    still_waiting, status = asyncio.run(scenario())
    assert status == 200
    assert still_waiting
    state = limiter.state("198.18.0.66")
    assert state is not None
    assert (state.count, state.delay) == (1, 30.0)
