"""Multi-electrode arrays: geometry presets, extracellular signal, noise and spike detection.

Two readouts share the same physics (point-source volume conductor ``V = I / 4πσr``):

- the *event* path (default, fast, used by the closed loop): per 1 ms step, each electrode sees the
  summed peak of the spikes in that step plus noise, and logs an event when it crosses
  ``threshold_sd`` noise SDs, at most one event per ``dead_time_ms`` (the FinalSpark 3 ms window);
- the *trace* path (on request): a 30 kHz trace with spike templates, band-limited noise, stimulus
  artefacts, 16-bit quantisation and a 250-5,000 Hz band-pass, then detection at a dynamic
  MAD-based threshold (recomputed per window) with 3 ms / 90-sample snippets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelm.wetware.config import ElectrodeConfig


def site_electrodes(n: int, layout: str, radius_um: float, pitch_um: float) -> np.ndarray:
    """Electrode centres (n x 3, µm, z = 0) under one organoid centred at the origin.

    ``grid``: two rows (FinalSpark's 8 electrodes per organoid as 2 x 4) at ``pitch_um``;
    ``line``: one row spanning 90 % of the organoid's width (neighbours cross-talk).
    """
    if layout == "line" or n < 4:
        span = 1.8 * radius_um
        x = np.linspace(-span / 2, span / 2, n) if n > 1 else np.zeros(1)
        return np.stack([x, np.zeros(n), np.zeros(n)], axis=1)
    cols = int(np.ceil(n / 2))
    xs = (np.arange(cols) - (cols - 1) / 2) * pitch_um
    pos = [(x, y, 0.0) for y in (-pitch_um / 2, pitch_um / 2) for x in xs]
    return np.array(pos[:n])


def gains(electrodes: np.ndarray, neurons: np.ndarray, cfg: ElectrodeConfig) -> np.ndarray:
    """Peak extracellular amplitude (µV, positive number; the spike is negative) of each neuron
    on each electrode: the point source ``I / (4 π σ r)`` (``r >= min_distance_um``) near the
    cell, falling off like a dipole (``1 / r³``) beyond ``dipole_um``."""
    d = np.sqrt(((electrodes[:, None, :] - neurons[None, :, :]) ** 2).sum(-1))
    r = np.maximum(d, cfg.min_distance_um)
    point = cfg.current_nA * 1e-9 / (4.0 * np.pi * cfg.sigma_S_per_m * r * 1e-6) * 1e6
    return point / (1.0 + (r / cfg.dipole_um) ** 2)


@dataclass
class Events:
    """Detected spike events: times in ms (float), channel (electrode index) and amplitude (µV)."""

    t_ms: np.ndarray
    channel: np.ndarray
    amplitude_uV: np.ndarray
    snippets: np.ndarray | None = None  # (n_events, 90) µV, trace path only

    def __len__(self) -> int:
        return int(self.t_ms.size)


def detect_events(
    spike_t: np.ndarray,
    spike_n: np.ndarray,
    n_ms: int,
    gain: np.ndarray,
    cfg: ElectrodeConfig,
    rng: np.random.Generator,
    blank: np.ndarray | None = None,
) -> Events:
    """The fast event path over one window (times relative to the window start).

    Parameters
    ----------
    spike_t, spike_n
        Spike step and neuron of every spike in the window.
    n_ms
        Window length.
    gain
        ``gains(...)`` of the site's electrodes (E x N).
    blank
        Boolean (E x n_ms): steps where the amplifier is blanked after a stimulus.
    """
    n_el = gain.shape[0]
    sig = np.zeros((n_el, n_ms))
    if spike_t.size:
        contrib = gain[:, spike_n]
        for e in range(n_el):
            sig[e] = np.bincount(spike_t, weights=contrib[e], minlength=n_ms)
    amp = -sig + cfg.noise_uV * rng.standard_normal((n_el, n_ms))
    cross = amp < -cfg.threshold_sd * cfg.noise_uV
    if blank is not None:
        cross &= ~blank
    ts, chs, amps = [], [], []
    dead = cfg.dead_time_ms
    for e in range(n_el):
        idx = np.flatnonzero(cross[e])
        last = -1e9
        for i in idx.tolist():
            if i - last >= dead:
                ts.append(float(i))
                chs.append(e)
                amps.append(float(amp[e, i]))
                last = i
    order = np.lexsort((np.array(chs), np.array(ts))) if ts else np.empty(0, dtype=int)
    return Events(
        np.asarray(ts, dtype=float)[order],
        np.asarray(chs, dtype=np.int64)[order],
        np.asarray(amps, dtype=float)[order],
    )


def spike_template(cfg: ElectrodeConfig) -> np.ndarray:
    """A 3 ms extracellular spike shape (90 samples at 30 kHz), trough -1 at 1 ms."""
    fs = cfg.sample_rate_hz
    t = np.arange(cfg.snippet_samples) / fs * 1e3  # ms
    trough = -np.exp(-0.5 * ((t - 1.0) / 0.15) ** 2)
    rebound = 0.3 * np.exp(-0.5 * ((t - 1.5) / 0.35) ** 2)
    return trough + rebound


def synth_trace(
    spike_t: np.ndarray,
    spike_n: np.ndarray,
    n_ms: int,
    gain: np.ndarray,
    cfg: ElectrodeConfig,
    rng: np.random.Generator,
    stim: list[tuple[float, int, float]] | None = None,
    blank_ms: float = 1.0,
    artefact_tau_ms: float = 0.5,
) -> np.ndarray:
    """A band-passed, quantised 30 kHz trace (E x samples, µV) of one window.

    ``stim`` lists ``(t_ms, electrode, artefact_uV)``: a decaying artefact on that electrode and,
    scaled by 1/distance rank, on the others; the amplifier is blanked for ``blank_ms``.
    """
    from scipy.signal import butter, sosfilt

    fs = cfg.sample_rate_hz
    n_el = gain.shape[0]
    n_s = int(n_ms * fs / 1000)
    raw = np.zeros((n_el, n_s))
    tmpl = spike_template(cfg)
    lead = int(1e-3 * fs)  # template trough at 1 ms
    if spike_t.size:
        onset = ((spike_t + rng.uniform(0.0, 1.0, spike_t.size)) * fs / 1000).astype(np.int64)
        onset -= lead
        k = np.arange(tmpl.size)
        idx = onset[:, None] + k[None, :]
        ok = (idx >= 0) & (idx < n_s)
        for e in range(n_el):
            w = gain[e, spike_n][:, None] * tmpl[None, :]
            raw[e] += np.bincount(idx[ok], weights=w[ok], minlength=n_s)[:n_s]
    blank = np.zeros((n_el, n_s), dtype=bool)
    for t_ms, el, art in stim or []:
        s0 = int(t_ms * fs / 1000)
        if s0 >= n_s:
            continue
        tt = np.arange(n_s - s0) / fs * 1e3
        for e in range(n_el):
            scale = 1.0 if e == el else 0.2 / (1 + abs(e - el))
            raw[e, s0:] += art * scale * np.exp(-tt / artefact_tau_ms)
        blank[:, s0 : s0 + int(blank_ms * fs / 1000)] = True
    sos = butter(2, cfg.band_hz, btype="bandpass", fs=fs, output="sos")
    noise = sosfilt(sos, rng.standard_normal((n_el, n_s)), axis=1)  # causal, like the amplifier
    noise *= cfg.noise_uV / noise.std(axis=1, keepdims=True)  # band-limited, noise_uV rms
    out = sosfilt(sos, raw, axis=1) + noise
    out = np.round(out / cfg.adc_step_uV) * cfg.adc_step_uV  # 16-bit ADC step
    out[blank] = 0.0
    return out


def mad_sd(x: np.ndarray) -> float:
    """Robust noise SD of a trace segment: ``median(|x|) / 0.6745``."""
    return float(np.median(np.abs(x)) / 0.6745)


def detect_trace(
    trace: np.ndarray,
    cfg: ElectrodeConfig,
    *,
    dynamic: bool = True,
    window_ms: float = 1000.0,
) -> Events:
    """Threshold crossings of a 30 kHz trace, with 90-sample snippets.

    ``dynamic=True`` recomputes the noise SD as ``MAD / 0.6745`` in each ``window_ms`` (so spikes
    in a burst raise the threshold, as FinalSpark's FAQ warns); ``dynamic=False`` uses the
    configured noise level. An event is logged at ``threshold_sd`` SDs, one per 3 ms at most.
    """
    fs = cfg.sample_rate_hz
    n_el, n_s = trace.shape
    win = max(1, int(window_ms * fs / 1000))
    dead = int(cfg.dead_time_ms * fs / 1000)
    pre = int(1e-3 * fs)
    ts, chs, amps, snips = [], [], [], []
    for e in range(n_el):
        x = trace[e]
        thr = np.empty(n_s)
        for s0 in range(0, n_s, win):
            seg = x[s0 : s0 + win]
            sd = mad_sd(seg) if dynamic else cfg.noise_uV
            thr[s0 : s0 + win] = -cfg.threshold_sd * max(sd, 1e-9)
        below = x < thr
        onsets = np.flatnonzero(below[1:] & ~below[:-1]) + 1
        last = -(10**12)
        for i in onsets.tolist():
            if i - last < dead:
                continue
            j = min(n_s, i + pre)
            peak = i + int(np.argmin(x[i:j])) if j > i else i
            lo, hi = peak - pre, peak - pre + cfg.snippet_samples
            if lo < 0 or hi > n_s:
                continue
            ts.append(peak / fs * 1e3)
            chs.append(e)
            amps.append(float(x[peak]))
            snips.append(x[lo:hi])
            last = i
    if not ts:
        return Events(np.empty(0), np.empty(0, dtype=np.int64), np.empty(0), np.empty((0, 90)))
    order = np.argsort(np.array(ts), kind="stable")
    return Events(
        np.array(ts)[order],
        np.array(chs, dtype=np.int64)[order],
        np.array(amps)[order],
        np.array(snips)[order],
    )
