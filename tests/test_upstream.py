"""One upstream server's retransmission timer (RFC 6298's estimator, as upstream.RttEstimator keeps it)."""

from __future__ import annotations

import pytest

from nodecache.upstream import INITIAL_RTO, MIN_RTO, RttEstimator


def estimator(*samples: float) -> RttEstimator:
    rtt = RttEstimator()
    for s in samples:
        rtt.add(s)
    return rtt


def test_before_any_answer_the_initial_timer_applies_within_the_cap() -> None:
    assert estimator().timeout(cap=2.0) == INITIAL_RTO
    assert estimator().timeout(cap=0.3) == 0.3


def test_a_fast_server_is_retried_after_the_floor() -> None:
    assert estimator(*[0.0005] * 20).timeout(cap=2.0) == MIN_RTO


def test_a_steady_slow_server_is_not_retried_before_twice_its_round_trip() -> None:
    rtt = estimator(*[0.2] * 50)
    assert rtt.rttvar < 0.01
    assert rtt.timeout(cap=2.0) == pytest.approx(0.4, rel=0.05)


def test_a_jittery_server_gets_room_for_its_variation() -> None:
    rtt = estimator(*[0.05, 0.3] * 20)
    assert 0.4 < rtt.timeout(cap=2.0) < 1.2
    assert rtt.timeout(cap=0.5) == 0.5


def test_the_first_sample_sets_the_smoothed_time_and_half_as_variation() -> None:
    rtt = estimator(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)
