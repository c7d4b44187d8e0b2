"""The spiking network of one organoid: vectorised numpy Izhikevich neurons, 1 ms steps.

- Neurons: regular spiking (RS), intrinsically bursting (IB) and chattering (CH) excitatory
  cells, fast-spiking (FS) inhibitory cells (Izhikevich 2003 parameters, with jitter).
- Synapses: distance-dependent connection probability, axonal delays in a ring buffer,
  exponentially decaying synaptic current, Tsodyks-Markram depression of excitatory synapses
  (per presynaptic neuron), spontaneous Poisson drive and Gaussian noise. Depression plus
  recurrent excitation gives the synchronised network bursts of organoid MEA recordings.
- Plasticity: pair-based STDP written into eligibility traces ``c`` (tau_c = 1 s) and turned into
  weight change only by dopamine, ``dw/dt = rate * c * d`` (Izhikevich 2007, Cereb. Cortex
  17:2443). STDP uses somatic spike times (the axonal delay is ignored in the pairing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelm.wetware.config import NetworkConfig, PlasticityConfig

# Izhikevich (2003) a, b, c, d per cell type
CELL_TYPES = ("RS", "IB", "CH", "FS")
_ABCD = {
    "RS": (0.02, 0.2, -65.0, 8.0),
    "IB": (0.02, 0.2, -55.0, 4.0),
    "CH": (0.02, 0.2, -50.0, 2.0),
    "FS": (0.1, 0.2, -65.0, 2.0),
}


@dataclass
class StepResult:
    """Spikes of a run: ``times_ms`` (int, relative to the run start) and ``neurons``."""

    times_ms: np.ndarray
    neurons: np.ndarray


class Network:
    """An Izhikevich network of one organoid (state advanced by :meth:`run`).

    Parameters
    ----------
    config
        Network configuration.
    plasticity
        Plasticity configuration (``enabled=False`` freezes the weights).
    rng
        Random generator (all randomness of the network comes from it: determinism under a seed).
    """

    def __init__(
        self, config: NetworkConfig, plasticity: PlasticityConfig, rng: np.random.Generator
    ) -> None:
        self.cfg = config
        self.pl = plasticity
        self.rng = rng
        n = config.n_neurons
        n_exc = round(config.frac_excitatory * n)
        self.n = n
        self.n_exc = n_exc
        self.positions = self._place(n, config.radius_um)
        kinds = np.empty(n, dtype="<U2")
        kinds[:n_exc] = "RS"
        n_burst = round(config.frac_bursting * n_exc)
        burst_idx = rng.choice(n_exc, size=n_burst, replace=False)
        kinds[burst_idx[: n_burst // 2]] = "IB"
        kinds[burst_idx[n_burst // 2 :]] = "CH"
        kinds[n_exc:] = "FS"
        self.kinds = kinds
        abcd = np.array([_ABCD[k] for k in kinds])
        jit = rng.uniform(0.0, 1.0, n)
        self.a = abcd[:, 0] * np.where(kinds == "FS", 1.0 + 0.2 * jit, 1.0)
        self.b = abcd[:, 1] + np.where(kinds == "FS", 0.05 * jit, 0.0)
        self.c = abcd[:, 2] + np.where(kinds == "RS", 5.0 * jit**2, 0.0)
        self.d = abcd[:, 3] - np.where(kinds == "RS", 2.0 * jit**2, 0.0)
        self.excitatory = np.arange(n) < n_exc
        self._build_synapses()
        # state
        self.v = rng.uniform(-70.0, -55.0, n)
        self.u = self.b * self.v
        self.i_syn = np.zeros(n)
        self.depth = config.max_delay_ms + 1
        self.ring = np.zeros((self.depth, n))
        self.ring_flat = self.ring.reshape(-1)  # a view: scatter-adds go into the ring
        self.resources = np.ones(n)  # short-term depression, per presynaptic neuron
        self.x_pre = np.zeros(n)
        self.x_post = np.zeros(n)
        self.elig = np.zeros(self.n_syn)
        self.dopamine = 0.0  # free dopamine above tonic, µM at the synapse
        self.t_ms = 0
        self.drive_scale = 1.0  # spontaneous drive multiplier (life cycle)
        self.exc_gain = 1.0  # excitatory efficacy multiplier (early bursting phase)
        self.plasticity_on = plasticity.enabled
        self._dec_syn = np.exp(-1.0 / config.tau_syn_ms)
        self._dec_plus = np.exp(-1.0 / plasticity.tau_plus_ms)
        self._dec_minus = np.exp(-1.0 / plasticity.tau_minus_ms)
        self._dec_c = np.exp(-plasticity.update_every_ms / plasticity.tau_c_ms)
        self.dopamine_decay_per_ms = 1.0 / plasticity.tau_d_ms

    # ---------------------------------------------------------------- construction
    def _place(self, n: int, radius: float) -> np.ndarray:
        """Uniform positions in a sphere resting on the MEA plane z = 0, flattened in z."""
        direc = self.rng.normal(size=(n, 3))
        direc /= np.linalg.norm(direc, axis=1, keepdims=True)
        r = radius * self.rng.uniform(0.0, 1.0, n) ** (1.0 / 3.0)
        pos = direc * r[:, None]
        pos[:, 2] = (pos[:, 2] + radius) * self.cfg.flatten  # flattened where it rests on the MEA
        return pos

    def _build_synapses(self) -> None:
        cfg, rng, n = self.cfg, self.rng, self.n
        diff = self.positions[:, None, :] - self.positions[None, :, :]
        dist = np.sqrt((diff**2).sum(-1))
        kernel = np.exp(-dist / cfg.length_constant_um)
        np.fill_diagonal(kernel, 0.0)
        degree = min(cfg.mean_out_degree, 0.4 * n)
        p = np.clip(kernel * (degree / kernel.sum(1).mean()), 0.0, 1.0)
        pre, post = np.nonzero(rng.uniform(size=(n, n)) < p)
        d = dist[pre, post]
        delay = cfg.min_delay_ms + d / cfg.conduction_um_per_ms + rng.uniform(0.0, 2.0, d.size)
        self.delay = np.clip(np.round(delay), cfg.min_delay_ms, cfg.max_delay_ms).astype(np.int64)
        scale = 100.0 / degree
        exc = self.excitatory[pre]
        w = np.where(
            exc,
            cfg.w_exc * scale * rng.uniform(0.5, 1.5, pre.size),
            cfg.w_inh * scale * rng.uniform(0.5, 1.5, pre.size),
        )
        self.pre, self.post, self.w = pre, post, w
        self.n_syn = pre.size
        self.w_max = cfg.w_max * scale
        self.plastic = exc
        # synapses are sorted by pre and excitatory neurons come first: plastic ones are a slice
        self.plastic_idx = slice(0, int(np.searchsorted(pre, self.n_exc)))
        self.ptr = np.searchsorted(pre, np.arange(n + 1))  # rows sorted by pre
        order = np.argsort(post, kind="stable")
        self.by_post = order
        self.ptr_post = np.searchsorted(post[order], np.arange(n + 1))

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _ranges(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
        starts, stops = ptr[rows], ptr[rows + 1]
        lens = stops - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        offs = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
        return offs + np.arange(total)

    def synapse_index(self, pre: int, post: int) -> int:
        """Index of the synapse ``pre -> post`` (error if absent)."""
        rows = np.arange(self.ptr[pre], self.ptr[pre + 1])
        hit = rows[self.post[rows] == post]
        if hit.size == 0:
            raise KeyError(f"no synapse {pre} -> {post}")
        return int(hit[0])

    # ---------------------------------------------------------------- dynamics
    # Long only because of its docstring and signature; the body is under 80 lines.
    def run(
        self,
        n_ms: int,
        inject: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        dopamine: dict[int, float] | None = None,
    ) -> StepResult:
        """Advance ``n_ms`` one-millisecond steps.

        Parameters
        ----------
        n_ms
            Steps to run.
        inject
            ``{step: (neuron indices, currents)}``: extra current during that step (stimulation).
        dopamine
            ``{step: µM}``: free dopamine added at that step.
        """
        cfg, pl, rng, n = self.cfg, self.pl, self.rng, self.n
        inject = inject or {}
        dopamine = dopamine or {}
        times: list[np.ndarray] = []
        cells: list[np.ndarray] = []
        p_kick = cfg.drive_rate_hz * 1e-3
        rec = 1.0 / cfg.std_tau_rec_ms
        for step in range(n_ms):
            slot = self.t_ms % self.depth
            self.i_syn *= self._dec_syn
            self.i_syn += self.ring[slot]
            self.ring[slot] = 0.0
            # synaptic input saturates (soft cap): no neuron is driven to fire every ms
            current = cfg.i_max * np.tanh(self.i_syn * (1.0 / cfg.i_max))
            current += cfg.noise_sd * rng.standard_normal(n)
            n_kicks = rng.poisson(n * p_kick * self.drive_scale)
            if n_kicks:
                current[rng.integers(0, n, n_kicks)] += cfg.drive_amp
            if step in inject:
                idx, amp = inject[step]
                np.add.at(current, idx, amp)
            if step in dopamine:
                self.dopamine += dopamine[step]
            v, u = self.v, self.u
            for _ in range(2):  # two 0.5 ms sub-steps for v (Izhikevich's numerics)
                v += 0.5 * (0.04 * v * v + 5.0 * v + 140.0 - u + current)
                np.minimum(v, 30.0, out=v)
            u += self.a * (self.b * v - u)
            fired = np.flatnonzero(v >= 30.0)
            # traces decay
            self.x_pre *= self._dec_plus
            self.x_post *= self._dec_minus
            self.resources += (1.0 - self.resources) * rec
            if fired.size:
                v[fired] = self.c[fired]
                u[fired] += self.d[fired]
                out = self._ranges(self.ptr, fired)
                if out.size:
                    pre = self.pre[out]
                    eff = self.w[out] * np.where(
                        self.excitatory[pre], self.exc_gain * self.resources[pre], 1.0
                    )
                    slots = (self.t_ms + self.delay[out]) % self.depth
                    np.add.at(self.ring_flat, slots * n + self.post[out], eff)
                    if self.plasticity_on:
                        # pre after post: depression
                        self.elig[out] -= pl.a_minus * self.x_post[self.post[out]]
                ex = fired[self.excitatory[fired]]
                self.resources[ex] *= 1.0 - cfg.std_use
                if self.plasticity_on:
                    inn = self.by_post[self._ranges(self.ptr_post, fired)]
                    if inn.size:  # post after pre: potentiation
                        self.elig[inn] += pl.a_plus * self.x_pre[self.pre[inn]]
                self.x_pre[fired] += 1.0
                self.x_post[fired] += 1.0
                times.append(np.full(fired.size, step, dtype=np.int64))
                cells.append(fired)
            self.t_ms += 1
            self.dopamine -= self.dopamine * self.dopamine_decay_per_ms
            if self.plasticity_on and self.t_ms % pl.update_every_ms == 0:
                self._apply_plasticity()
        if times:
            return StepResult(np.concatenate(times), np.concatenate(cells))
        return StepResult(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))

    def _apply_plasticity(self) -> None:
        pl = self.pl
        d = pl.d_tonic + self.dopamine
        m = self.plastic_idx
        w = self.w[m]
        w += (pl.rate * pl.update_every_ms * d) * self.elig[m]
        np.clip(w, 0.0, self.w_max, out=w)
        self.elig *= self._dec_c

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray | float | int]:
        """A copy of the dynamic state (for checks and determinism tests)."""
        return {
            "v": self.v.copy(),
            "u": self.u.copy(),
            "w": self.w.copy(),
            "elig": self.elig.copy(),
            "dopamine": float(self.dopamine),
            "t_ms": int(self.t_ms),
        }
