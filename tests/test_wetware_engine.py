"""Wetware engine: determinism, biology ranges, and the Izhikevich (2007) credit-assignment check.

Ranges and where they come from (../shared/WETWARE-NOTES.md unless marked):
- events per electrode: "up to ~1,500 events/min is normal" (A1, FinalSpark FAQ);
- mean firing rate 0.1-10 Hz and network bursts 1-30 per minute: typical of cortical organoid and
  culture MEA recordings [not in the notes; chosen by this simulator, see docs/wetware.md];
- evoked responses at 5-50 ms, mostly on the stimulated electrode (A4.8; A1 FAQ "Responses appear
  mostly on the stimulated channel").
"""

from __future__ import annotations

import numpy as np
import pytest

from lifelm.wetware import Neuroplatform, WetwareError, preset
from lifelm.wetware.analysis import evoked_response, firing_rate_hz, network_bursts
from lifelm.wetware.config import NetworkConfig, PlasticityConfig
from lifelm.wetware.engine import Network


def _platform(seed: int = 0, n: int = 300) -> tuple[Neuroplatform, str]:
    plat = Neuroplatform(preset("tiny", n_neurons=n), seed=seed)
    plat.advance_days(1.0)  # past the early bursting phase after plating
    tok = plat.book(list(range(8))).token
    plat.start(tok)
    return plat, tok


def test_same_seed_same_spikes_and_events_other_seed_differs() -> None:
    runs = []
    for seed in (5, 5, 6):
        plat, tok = _platform(seed, n=200)
        res = plat.record(tok, 1500)
        runs.append(
            (res.spikes[0].times_ms, res.spikes[0].neurons, res.events.t_ms, res.events.channel)
        )
    for a, b in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_cell_types_and_connectivity_follow_the_config() -> None:
    net = Network(NetworkConfig(n_neurons=400), PlasticityConfig(), np.random.default_rng(0))
    assert net.excitatory.mean() == pytest.approx(0.8, abs=0.01)
    assert set(net.kinds[~net.excitatory]) == {"FS"}
    assert {"RS", "IB", "CH"} <= set(net.kinds[net.excitatory])
    assert net.delay.min() >= 1
    assert net.delay.max() <= 20
    # distance-dependent wiring: connected pairs are closer than random pairs
    d_conn = np.linalg.norm(net.positions[net.pre] - net.positions[net.post], axis=1).mean()
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 400, (2, 5000))
    d_rand = np.linalg.norm(net.positions[a] - net.positions[b], axis=1).mean()
    assert d_conn < 0.85 * d_rand
    # and longer axons have longer delays
    dist = np.linalg.norm(net.positions[net.pre] - net.positions[net.post], axis=1)
    assert np.corrcoef(dist, net.delay)[0, 1] > 0.5


def test_spontaneous_activity_is_in_organoid_ranges_with_network_bursts() -> None:
    plat, tok = _platform(seed=2, n=300)
    plat.record(tok, 1000)  # settle after plating
    dur = 20_000
    res = plat.record(tok, dur)
    sp = res.spikes[0]
    rate = firing_rate_hz(sp.times_ms.size, 300, dur)
    assert 0.1 <= rate <= 10.0, rate
    bursts = network_bursts(sp.times_ms, 300, dur)
    per_min = bursts.size / (dur / 60_000)
    assert 1 <= per_min <= 30, per_min
    # a burst is synchronous: far above the asynchronous rate
    counts = np.bincount(sp.times_ms // 10, minlength=dur // 10)
    assert counts.max() > 10 * max(1.0, np.median(counts))
    ev_per_min = res.counts[:8] / (dur / 60_000)
    assert ev_per_min.max() <= 1500, ev_per_min
    assert (ev_per_min > 0).sum() >= 6, ev_per_min  # most electrodes see cells


def test_depression_terminates_bursts() -> None:
    """Without short-term depression the same network stays locked in high activity."""
    rates = {}
    for use in (0.2, 0.0):
        cfg = NetworkConfig(n_neurons=300, radius_um=180.0, std_use=use)
        net = Network(cfg, PlasticityConfig(enabled=False), np.random.default_rng(3))
        net.run(500)
        rates[use] = firing_rate_hz(net.run(3000).times_ms.size, 300, 3000)
    assert rates[0.0] > 3 * rates[0.2], rates


def test_evoked_responses_are_local_and_at_5_to_50_ms() -> None:
    plat, tok = _platform(seed=1, n=300)
    plat.record(tok, 500)
    r = evoked_response(plat, tok, list(range(8)), trials=40, window_ms=(2.0, 100.0), gap_ms=300)
    # the stimulated electrode (offset 0) responds more than the average other electrode
    assert r.per_offset[0] > 0
    assert r.per_offset[0] > r.per_offset[1:].mean(), r.per_offset
    assert 5.0 <= float(np.median(r.latencies_all_ms)) <= 50.0, np.median(r.latencies_all_ms)


def _quiet_net() -> Network:
    # the regime of Izhikevich (2007) Fig. 1: asynchronous ~1 Hz firing, no network bursts
    cfg = NetworkConfig(n_neurons=200, radius_um=150.0, w_exc=1.5, drive_rate_hz=1.0)
    return Network(cfg, PlasticityConfig(), np.random.default_rng(7))


def _pairing(order: str, dopamine: bool) -> tuple[float, np.ndarray]:
    net = _quiet_net()
    ee = np.flatnonzero(net.excitatory[net.pre] & net.excitatory[net.post])
    s = int(ee[0])
    i, j = int(net.pre[s]), int(net.post[s])
    first, second = (i, j) if order == "pre-post" else (j, i)
    net.run(500)
    w0 = net.w.copy()
    for _ in range(10):
        inject = {
            0: (np.array([first]), np.array([200.0])),
            5: (np.array([second]), np.array([200.0])),
        }
        net.run(1500, inject=inject, dopamine={1000: 0.5} if dopamine else None)  # reward 1 s later
    net.run(1000)
    dw = net.w - w0
    others = np.zeros(net.n_syn, dtype=bool)
    others[net.plastic_idx] = True
    others[s] = False
    return float(dw[s]), np.abs(dw[others])


def test_dopamine_after_pre_post_pairing_potentiates_the_eligible_synapse() -> None:
    """Izhikevich (2007): the delayed reward finds the synapse whose trace was still eligible."""
    dw, others = _pairing("pre-post", dopamine=True)
    assert dw > 0
    assert dw > np.percentile(others, 99), (dw, np.percentile(others, 99))
    assert dw > 10 * np.median(others)
    dw_no_da, _ = _pairing("pre-post", dopamine=False)
    assert dw_no_da < 0.3 * dw  # without dopamine the eligibility decays unused (tonic DA only)
    dw_rev, _ = _pairing("post-pre", dopamine=True)
    assert dw_rev < 0  # post-before-pre pairing + dopamine depresses


def test_config_refuses_bad_sizes() -> None:
    with pytest.raises(WetwareError, match="n_neurons"):
        NetworkConfig(n_neurons=5)
    with pytest.raises(WetwareError, match="unknown wetware preset"):
        preset("nope")
