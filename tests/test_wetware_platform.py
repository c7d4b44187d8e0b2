"""Wetware platform: stimulation validation, bookings and the lock, life cycle, UV dopamine,
the 30 kHz trace path, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lifelm._core.errors import LifeLMError
from lifelm.wetware import (
    BookingConflictError,
    BookingError,
    ExperimentLockError,
    Neuroplatform,
    OrganoidExpiredError,
    StimParam,
    StimulationError,
    UnbalancedPulseError,
    preset,
)
from lifelm.wetware.config import LifeConfig, StimLimits
from lifelm.wetware.lifecycle import Organoid, lifetime_quantiles


@pytest.fixture
def plat() -> Neuroplatform:
    return Neuroplatform(preset("finalspark-4x8", n_neurons=120), seed=0)


def test_unbalanced_pulse_is_refused_with_the_reason() -> None:
    bad = StimParam(index=0, phase_amplitude1=2.0, phase_amplitude2=1.0)
    with pytest.raises(UnbalancedPulseError, match=r"0\.2 nC.*0\.1 nC.*A1·D1") as e:
        bad.validate(StimLimits())
    assert isinstance(e.value, LifeLMError)
    # balanced by a longer, weaker second phase is fine
    StimParam(
        index=0,
        phase_amplitude1=2.0,
        phase_duration1=100,
        phase_amplitude2=1.0,
        phase_duration2=200,
    ).validate(StimLimits())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("phase_amplitude1", 9.0, "phase_amplitude1"),
        ("phase_duration2", 5.0, "phase_duration2"),
        ("nb_pulse", 0, "nb_pulse"),
        ("trigger_key", 16, "trigger_key"),
    ],
)
def test_out_of_range_stim_fields_are_refused(field: str, value: float, match: str) -> None:
    kw = {field: value}
    if field == "phase_amplitude1":
        kw["phase_amplitude2"] = value
    with pytest.raises(StimulationError, match=match):
        StimParam(index=0, **kw).validate(StimLimits())


def test_bookings_overlap_and_electrode_rules(plat: Neuroplatform) -> None:
    a = plat.book([0, 1, 2, 3], duration_s=60)
    with pytest.raises(BookingConflictError, match=r"\[2, 3\].*already booked"):
        plat.book([2, 3, 4], duration_s=60)
    later = plat.book([2, 3], duration_s=60, start_in_s=60)  # after the first slot: fine
    b = plat.book([8, 9], duration_s=60)  # other electrodes at the same time: fine
    with pytest.raises(BookingError, match="outside"):
        plat.book([999])
    plat.start(a.token)
    with pytest.raises(ExperimentLockError, match="another experiment"):
        plat.start(b.token)
    with pytest.raises(BookingError, match=r"electrodes \[5\] are not in this booking"):
        plat.tick(a.token, 10, [StimParam(index=5)])
    with pytest.raises(BookingError, match="not in this booking"):
        plat.send_stimparam(a.token, [StimParam(index=8)])
    plat.stop(a.token)
    plat.stop(a.token)  # idempotent, safe in finally
    plat.start(b.token)
    plat.stop(b.token)
    with pytest.raises(BookingError, match="starts at"):
        plat.start(later.token)
    plat.advance(61)
    with pytest.raises(BookingError, match="expired"):
        plat.start(a.token)
    plat.start(later.token)
    c = plat.book([10], duration_s=60)
    with pytest.raises(ExperimentLockError, match="not running"):
        plat.tick(c.token, 10)


def test_trigger_counts_blank_the_first_10_ms_and_log_to_the_database(plat: Neuroplatform) -> None:
    tok = plat.book(list(range(8))).token
    session = plat.start(tok)
    with pytest.raises(StimulationError, match="send_stimparam"):
        plat.trigger(tok, [0])
    p = StimParam(index=2, trigger_key=3, phase_amplitude1=3, phase_amplitude2=3, nb_pulse=3)
    plat.send_stimparam(tok, [p])
    counts = plat.trigger(tok, [3], count_ms=200)
    assert counts.shape == (32,)
    assert counts[8:].sum() == 0  # only booked electrodes are read
    rows = plat.db.events(session)
    t0 = plat.db.query("SELECT t_ms FROM triggers WHERE session=?", (session,))[0][0]
    in_window = [r for r in rows if t0 + 10 <= r[0] < t0 + 200]
    assert counts.sum() == len(in_window)
    assert len(plat.db.query("SELECT * FROM stims WHERE session=?", (session,))) == 1


def test_organoid_death_and_replacement_mint_a_new_id(plat: Neuroplatform) -> None:
    tok = plat.book([0, 1], duration_s=400 * 86400).token
    first = plat.organoids()[0]
    assert first["fs_id"].startswith("fs")
    assert first["alive"]
    plat.advance_days(first["lifetime_days"] + 0.1)
    assert not plat.organoids()[0]["alive"]
    with pytest.raises(OrganoidExpiredError, match=r"died.*replace_organoid\(0\)"):
        plat.start(tok)
    new_id = plat.replace_organoid(0)
    assert new_id != first["fs_id"]
    assert plat.organoids()[0]["age_days"] == 0.0
    plat.start(tok)
    assert plat.record(tok, 50).n_ms == 50


def test_lifetimes_are_weeks_with_a_tail_past_100_days() -> None:
    cfg = LifeConfig()
    q = lifetime_quantiles(cfg)
    assert 28 <= q["median_days"] <= 56
    assert q["p_within_2_12_weeks"] > 0.85  # the docs' "two to twelve weeks"
    assert 0.01 < q["p_beyond_100d"] < 0.15  # the paper's "even more than 100 days"
    rng = np.random.default_rng(0)
    draws = np.array([Organoid.mint(i, 0, 0, cfg, rng).lifetime_days for i in range(2000)])
    assert abs(np.median(draws) - q["median_days"]) < 3
    assert (draws > 100).any()
    o = Organoid("fs1", 0, 0, 50.0)
    day = 86_400_000
    assert o.excitability(0, cfg) > 1.0  # early bursting phase
    assert o.excitability(day, cfg) == 1.0
    assert o.activity(10 * day, cfg) == 1.0
    assert o.activity(45 * day, cfg) < 1.0  # decline before death
    assert o.activity(51 * day, cfg) == 0.0


def test_uv_uncaging_releases_depletes_and_refreshes(plat: Neuroplatform) -> None:
    tok = plat.book([0, 1, 8]).token
    plat.start(tok)
    r1 = plat.uv(tok, 0, duration_s=2.0, intensity=1.0)
    r2 = plat.uv(tok, 0, duration_s=2.0, intensity=1.0)
    assert r1 > r2 > 0  # the caged pool depletes
    assert plat.sites[0].net.dopamine == pytest.approx(r1 + r2)
    plat.record(tok, 1000)  # free dopamine decays (tau_d 200 ms plus washout)
    assert plat.sites[0].net.dopamine < 0.01 * (r1 + r2)
    plat.medium_change(0)
    assert plat.uv(tok, 0, duration_s=2.0, intensity=1.0) == pytest.approx(r1)
    with pytest.raises(BookingError, match="site 2"):
        plat.uv(tok, 2)
    n_uv = plat.db.query("SELECT COUNT(*) FROM uv")[0][0]
    assert n_uv == 3


def test_trace_is_30khz_with_snippets_and_artefact_blanking() -> None:
    plat = Neuroplatform(preset("tiny", n_neurons=200), seed=4)
    tok = plat.book(list(range(8))).token
    plat.start(tok)
    plat.record(tok, 200)
    plat.tick(tok, 1, [StimParam(index=3, phase_amplitude1=3, phase_amplitude2=3)])
    res = plat.record(tok, 1000, trace=True)
    assert set(res.trace) == set(range(8))
    assert res.trace[0].size == 1000 * 30
    x = res.trace[0][res.trace[0] != 0]
    assert np.allclose(x / 0.195, np.round(x / 0.195), atol=1e-6)  # 0.195 µV ADC step
    ev = res.events
    assert len(ev) > 0
    assert ev.t_ms.min() >= res.start_ms
    # a pulse inside a traced window: its artefact is blanked (zeros), not detected as spikes
    res2 = plat.tick(tok, 1, [StimParam(index=3, phase_amplitude1=3, phase_amplitude2=3)])
    assert res2.n_ms == 1
    from lifelm.wetware.electrodes import detect_trace

    tr = np.stack([res.trace[e] for e in range(8)])
    det = detect_trace(tr, plat.cfg.electrode)
    assert det.snippets is not None
    assert det.snippets.shape == (len(det), 90)  # 3 ms at 30 kHz
    assert np.allclose(det.snippets[:, 30], det.amplitude_uV)  # trough 1 ms into the snippet
    assert (det.amplitude_uV < 0).all()


def test_artefact_is_blanked_in_the_trace() -> None:
    from lifelm.wetware.config import ElectrodeConfig
    from lifelm.wetware.electrodes import detect_trace, synth_trace

    cfg = ElectrodeConfig()
    rng = np.random.default_rng(0)
    gain = np.zeros((2, 1))
    empty = np.empty(0, dtype=np.int64)
    tr = synth_trace(empty, empty, 20, gain, cfg, rng, stim=[(5.0, 0, 3000.0)], blank_ms=1.0)
    assert (tr[:, 150:180] == 0).all()  # blanked for the amp-settle time
    # the artefact tail after blanking is far above the noise on the stimulated channel
    assert np.abs(tr[0, 180:190]).max() > np.abs(tr[1, 180:190]).max()
    # without spikes, the only events are artefact tails right after the blanking (causal
    # filter: nothing before the pulse), and the FinalSpark 10 ms count blank removes them all
    ev = detect_trace(tr, cfg, dynamic=False)
    assert ((ev.t_ms >= 5.0) & (ev.t_ms < 5.0 + 10.0)).all()


def test_dynamic_threshold_rises_with_activity() -> None:
    """FinalSpark FAQ: the MAD threshold, recomputed per window, rises in busy windows (so a burst
    yields fewer events than a fixed threshold would log); in quiet windows it matches the noise."""
    from scipy.stats import spearmanr

    from lifelm.wetware.electrodes import detect_trace, mad_sd

    plat = Neuroplatform(preset("tiny", n_neurons=300), seed=2)
    tok = plat.book(list(range(8))).token
    plat.start(tok)
    res = plat.record(tok, 3000, trace=True)
    cfg = plat.cfg.electrode
    e = int(
        np.argmax([len(detect_trace(res.trace[k][None], cfg, dynamic=False)) for k in range(8)])
    )
    x = res.trace[e]
    win = 250 * 30
    sds = np.array([mad_sd(x[i : i + win]) for i in range(0, x.size, win)])
    fixed = detect_trace(x[None], cfg, dynamic=False)
    counts = np.bincount((fixed.t_ms // 250).astype(int), minlength=sds.size)[: sds.size]
    assert counts.sum() > 0
    assert spearmanr(counts, sds).statistic > 0.3
    assert np.min(sds) == pytest.approx(cfg.noise_uV, rel=0.15)


def test_realtime_clock_pads_to_the_wall_clock() -> None:
    import time

    plat = Neuroplatform(preset("tiny", n_neurons=60, realtime=True), seed=0)
    tok = plat.book([0]).token
    plat.start(tok)
    t0 = time.monotonic()
    plat.record(tok, 300)
    assert time.monotonic() - t0 >= 0.29


def test_stimparam_upload_takes_the_configured_latency() -> None:
    plat = Neuroplatform(preset("tiny", n_neurons=60, upload_latency_s=10.0), seed=0)
    tok = plat.book([0, 1]).token
    plat.start(tok)
    t0 = plat.clock.t_ms
    plat.send_stimparam(tok, [StimParam(index=0), StimParam(index=0, trigger_key=2)])
    assert plat.clock.t_ms - t0 == 10_000  # the ~10 s headstage upload
    assert plat.stimparams[0].trigger_key == 2  # one StimParam per electrode: the last one wins


def test_early_bursting_phase_after_plating() -> None:
    """Notes A1: an initial bursting phase after plating (users wait a few hours)."""
    from lifelm.wetware.analysis import network_bursts

    counts = {}
    for label, days in (("early", 0.0), ("plateau", 1.0)):
        plat = Neuroplatform(preset("tiny", n_neurons=300), seed=5)
        plat.advance_days(days)
        tok = plat.book(list(range(8))).token
        plat.start(tok)
        plat.record(tok, 500)
        sp = plat.record(tok, 15_000).spikes[0]
        counts[label] = network_bursts(sp.times_ms, 300, 15_000).size
    assert counts["early"] > counts["plateau"], counts
