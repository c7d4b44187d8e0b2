"""Pong: encoding, decoding and the three feedback conditions, with a scripted fake organoid."""

from __future__ import annotations

import numpy as np
import pytest

from lifelm.wetware import (
    LocalSession,
    Neuroplatform,
    PongConfig,
    StimParam,
    WetwareError,
    play_pong,
    preset,
)


class FakeLoop:
    """Records every stimulation; motor counts follow a script (up-electrodes fire when asked)."""

    def __init__(self, up: bool | None) -> None:
        self.electrodes = list(range(8))
        self.up = up
        self.ticks: list[list[StimParam]] = []
        self.uv_calls = 0

    def tick(self, ms: int, stims: list[StimParam] | None = None) -> np.ndarray:
        self.ticks.append(list(stims or []))
        c = np.ones(8)
        if self.up is True:
            c[[4, 5]] = 3
        elif self.up is False:
            c[[6, 7]] = 3
        return c

    def uv(self, site: int, duration_s: float, intensity: float) -> float:
        self.uv_calls += 1
        return 0.1


def test_sensory_encoding_is_place_and_rate_coded() -> None:
    loop = FakeLoop(up=None)
    play_pong(loop, PongConfig(duration_s=1.0, feedback="none"), seed=0)
    pulses = [p for t in loop.ticks for p in t]
    assert pulses
    assert {p.index for p in pulses} <= {0, 1, 2, 3}  # only sensory electrodes
    assert all(p.validate(preset("tiny").stim) for p in pulses)  # balanced, in range
    n = len(pulses)
    assert 4 * 1.0 * 0.5 <= n <= 40 * 1.0 + 1  # 4-40 Hz


def _feedback_ticks(feedback: str, up: bool | None) -> tuple[FakeLoop, list]:
    loop = FakeLoop(up=up)
    res = play_pong(loop, PongConfig(duration_s=30.0, feedback=feedback), seed=2)
    return loop, res


def test_miss_feedback_is_unpredictable_and_absent_in_the_control() -> None:
    loop, res = _feedback_ticks("fep", up=True)  # paddle pinned to the top: mostly misses
    misses = [t for t, h in res.outcomes if not h]
    assert misses
    k = round(misses[0] / 0.02) + 1
    window = loop.ticks[k : k + 200]  # 4 s after the miss
    pulses = [p for t in window for p in t]
    assert 8 <= len(pulses) <= 40  # ~5 Hz for 4 s
    assert len({p.index for p in pulses}) >= 2  # random electrodes
    ctrl, res_c = _feedback_ticks("none", up=True)
    kc = round(next(t for t, h in res_c.outcomes if not h) / 0.02) + 1
    assert sum(len(t) for t in ctrl.ticks[kc : kc + 200]) == 0  # same pause, no stimulation


def test_hit_feedback_is_predictable_or_dopamine() -> None:
    for up in (True, False, None):
        loop, res = _feedback_ticks("fep", up=up)
        hits = [t for t, h in res.outcomes if h]
        if hits:
            break
    assert hits, "no hit in any scripted game"
    k = round(hits[0] / 0.02) + 1
    pulses = [p for t in loop.ticks[k : k + 5] for p in t]  # 100 ms
    per_el = np.bincount([p.index for p in pulses], minlength=4)
    assert (per_el[:4] == 10).all()  # all 4 sensory electrodes at 100 Hz for 100 ms
    loop_d, res_d = _feedback_ticks("dopamine", up=up)
    assert loop_d.uv_calls == sum(h for _, h in res_d.outcomes)


def test_paddle_follows_motor_counts() -> None:
    up = play_pong(FakeLoop(up=True), PongConfig(duration_s=20.0, feedback="none"), seed=5)
    down = play_pong(FakeLoop(up=False), PongConfig(duration_s=20.0, feedback="none"), seed=5)
    assert up.outcomes != down.outcomes


def test_pong_on_the_simulator_is_deterministic_and_checks_the_booking() -> None:
    outs = []
    for _ in range(2):
        plat = Neuroplatform(preset("tiny", n_neurons=120), seed=8)
        tok = plat.book(list(range(8))).token
        plat.start(tok)
        res = play_pong(LocalSession(plat, tok), PongConfig(duration_s=4.0, feedback="fep"), seed=0)
        outs.append((res.outcomes, plat.sites[0].net.w.copy()))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    plat = Neuroplatform(preset("tiny", n_neurons=60), seed=0)
    tok = plat.book([0, 1, 2]).token
    plat.start(tok)
    with pytest.raises(WetwareError, match="needs 8 booked electrodes"):
        play_pong(LocalSession(plat, tok), PongConfig(duration_s=1.0), seed=0)
    with pytest.raises(WetwareError, match="feedback"):
        PongConfig(feedback="reward")
