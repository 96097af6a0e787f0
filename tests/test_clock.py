"""The simulated clock's arithmetic: a client's time on a hand-made profile and the close rules."""

import math

import numpy as np
import pytest

from fedmm.clock import ClientTimes, client_time, close_round
from fedmm.devices import Profiles
from fedmm.strategies.timing import ClockSettings, SimClock

# a hand-made model: shared head 1000 bytes, modality a 4000 bytes, b 6000 bytes; cost shares 0.1/0.3/0.6
BYTES = {None: 1000, "a": 4000, "b": 6000}
COSTS = {None: 0.1, "a": 0.3, "b": 0.6}


def hand_clock(rule="all", **settings):
    # client 0: 10 ms per sample of the full model, 8 kbit/s down (1000 B/s), 4 kbit/s up (500 B/s)
    profiles = Profiles(np.array([10.0, 20.0]), np.array([8.0, 16.0]), np.array([4.0, 8.0]), period_s=1000.0)
    return SimClock(profiles, BYTES, COSTS, ClockSettings(rule, **settings), local_epochs=2)


def test_a_clients_time_on_a_hand_made_profile():
    clock = hand_clock()
    # client 0 receives a and b (the policy asked for facts of all it holds) but trains only a, 50 examples x 2 epochs
    (t,) = clock.times([0], [("a", "b")], [("a",)], [100])
    assert t.download == pytest.approx((1000 + 4000 + 6000) / 1000)  # 11 s: every group it received
    assert t.train == pytest.approx(100 * 10 * (0.1 + 0.3) / 1000)  # 0.4 s: the encoder it trains + the head
    assert t.upload == pytest.approx((1000 + 4000) / 500)  # 10 s: only the trained groups, not b's
    assert t.total == pytest.approx(21.4)
    # the same on the scalar function
    same = client_time(
        bytes_down=11000, bytes_up=5000, samples=100, share=0.4, compute_ms_per_sample=10, down_kbps=8, up_kbps=4
    )
    assert same == ClientTimes(pytest.approx(11.0), pytest.approx(0.4), pytest.approx(10.0))


def test_fewer_modalities_are_faster_and_upload_less():
    clock = hand_clock()
    both, weak = clock.times([1, 1], [("a", "b"), ("a",)], [("a", "b"), ("a",)], [100, 100])
    assert weak.train < both.train and weak.upload < both.upload and weak.download < both.download
    assert both.train == pytest.approx(100 * 20 * 1.0 / 1000)  # the full model: share 1


def test_close_all_waits_for_the_last_and_notices_drop_outs():
    c = close_round([5.0, 1.0, 3.0], [math.inf, math.inf, 2.0], "all")
    assert c.status == ("ok", "ok", "dropped") and c.seconds == 5.0
    c = close_round([1.0, 2.0], [math.inf, 1.5], "all")
    assert c.status == ("ok", "dropped") and c.seconds == 1.5  # the server notices the drop at 1.5 s


def test_a_deadline_keeps_exactly_the_clients_in_time():
    c = close_round([5.0, 1.0, 3.0, 7.0], [math.inf] * 4, "deadline", deadline=4.0)
    assert c.status == ("late", "ok", "ok", "late") and c.seconds == 4.0
    c = close_round([1.0, 3.0], [math.inf, math.inf], "deadline", deadline=4.0)
    assert c.status == ("ok", "ok") and c.seconds == 3.0  # everyone in time: no need to wait for the deadline
    c = close_round([1.0, 3.0], [math.inf, 2.0], "deadline", deadline=4.0)
    assert c.status == ("ok", "dropped") and c.seconds == 4.0  # a silent drop-out: the server waits


def test_overcommitment_keeps_the_first_k_to_finish():
    c = close_round([5.0, 1.0, 3.0, 2.0, 4.0], [math.inf] * 5, "overcommit", keep=2)
    assert c.status == ("late", "ok", "late", "ok", "late") and c.seconds == 2.0
    # a drop-out does not count among the first K; one still running at the close is late, not dropped
    c = close_round([5.0, 1.0, 3.0, 2.0], [math.inf, math.inf, math.inf, 1.5], "overcommit", keep=2)
    assert c.status == ("late", "ok", "ok", "dropped") and c.seconds == 3.0
    c = close_round([5.0, 1.0], [4.0, math.inf], "overcommit", keep=1)
    assert c.status == ("late", "ok")
    # fewer than K finish: wait as under "all"
    c = close_round([5.0, 1.0], [2.0, math.inf], "overcommit", keep=2)
    assert c.status == ("dropped", "ok") and c.seconds == 2.0


def test_overcommitment_budget():
    assert hand_clock("overcommit", overcommit=0.3).budget(10) == 13
    assert hand_clock("overcommit", overcommit=0.25).budget(3) == 4
    assert hand_clock("deadline").budget(10) == 10


def test_bad_close_settings_are_refused():
    with pytest.raises(ValueError, match="deadline"):
        close_round([1.0], [math.inf], "deadline")
    with pytest.raises(ValueError, match="keep"):
        close_round([1.0], [math.inf], "overcommit")
    with pytest.raises(ValueError, match="round-close"):
        close_round([1.0], [math.inf], "sometimes")
