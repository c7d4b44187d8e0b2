"""Summary statistics of simulated recordings, the ones checked against organoid ranges."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lifelm.wetware.platform import Neuroplatform
from lifelm.wetware.stimulation import StimParam


def firing_rate_hz(n_spikes: int, n_neurons: int, duration_ms: float) -> float:
    """Mean firing rate per neuron."""
    return n_spikes / n_neurons / (duration_ms / 1000.0)


def network_bursts(
    times_ms: np.ndarray,
    n_neurons: int,
    duration_ms: int,
    *,
    bin_ms: int = 10,
    min_rate_hz: float = 20.0,
    rel_threshold: float = 8.0,
    merge_ms: float = 200.0,
) -> np.ndarray:
    """Onsets (ms) of network bursts: bins whose population rate exceeds both ``min_rate_hz`` and
    ``rel_threshold`` x the median bin rate, with onsets closer than ``merge_ms`` merged."""
    n_bins = max(1, duration_ms // bin_ms)
    counts = np.bincount(np.asarray(times_ms) // bin_ms, minlength=n_bins)[:n_bins]
    rate = counts / n_neurons / (bin_ms / 1000.0)
    thr = max(min_rate_hz, rel_threshold * float(np.median(rate)))
    above = np.flatnonzero(rate > thr)
    onsets: list[float] = []
    last = -np.inf
    for b in above:
        t = float(b * bin_ms)
        if t - last > merge_ms:
            onsets.append(t)
        last = t
    return np.asarray(onsets)


@dataclass
class EvokedResponse:
    """Post-stimulus events by electrode offset and latency, excess over the pre-stimulus baseline.

    ``per_offset[k]``: evoked excess events per trial on the electrode ``k`` positions away (in
    the site's electrode order; 0 = the stimulated electrode) within the analysis window;
    ``latencies_ms``: the times of all events on the stimulated electrode in the window;
    ``latencies_all_ms``: the same on every electrode of the list.
    """

    per_offset: np.ndarray
    latencies_ms: np.ndarray
    latencies_all_ms: np.ndarray
    baseline_per_trial: np.ndarray
    window_ms: tuple[float, float]


def evoked_response(
    platform: Neuroplatform,
    token: str,
    electrodes: list[int],
    *,
    trials: int = 16,
    pulse: StimParam | None = None,
    window_ms: tuple[float, float] = (5.0, 50.0),
    gap_ms: int = 1500,
) -> EvokedResponse:
    """Stimulate each electrode in turn (``trials`` pulses, ``gap_ms`` apart, within the FAQ's
    1-10 s advice when ``gap_ms`` >= 1000) with ``pulse`` (default: the Neuroplatform's default
    StimParam, 1 µA x 100 µs per phase) and count events in ``window_ms`` after each pulse,
    minus the same-length window just before it."""
    n = len(electrodes)
    lo, hi = window_ms
    length = int(np.ceil(hi))
    per = np.zeros(n)
    base = np.zeros(n)
    lat: list[float] = []
    lat_all: list[float] = []
    for k in range(trials):
        e = k % n
        pre = platform.tick(token, length)
        p = replace(pulse, index=electrodes[e]) if pulse else StimParam(index=electrodes[e])
        res = platform.tick(token, length, [p])
        rel = res.events.t_ms - res.start_ms
        rel_pre = pre.events.t_ms - pre.start_ms
        for j, el in enumerate(electrodes):
            off = (j - e) % n
            sel = (res.events.channel == el) & (rel >= lo) & (rel < hi)
            sel_pre = (pre.events.channel == el) & (rel_pre >= lo) & (rel_pre < hi)
            per[off] += sel.sum()
            base[off] += sel_pre.sum()
            lat_all += rel[sel].tolist()
            if off == 0:
                lat += rel[sel].tolist()
        platform.tick(token, gap_ms)
    return EvokedResponse(
        (per - base) / trials, np.asarray(lat), np.asarray(lat_all), base / trials, window_ms
    )
