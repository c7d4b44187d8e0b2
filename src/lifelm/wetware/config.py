"""Frozen configurations of the simulated organoid neuroplatform, with named presets.

Numbers follow ``WETWARE-NOTES.md`` (A1 hardware, A4 blueprint) where the notes give them;
where they do not, the default is a choice of this simulator and the docstring says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from lifelm.wetware.errors import WetwareError


@dataclass(frozen=True)
class NetworkConfig:
    """One organoid: an Izhikevich network in a sphere sitting on its electrodes.

    Attributes
    ----------
    n_neurons
        Neurons per organoid (the blueprint's 200-2,000; tests use 200-400).
    frac_excitatory
        Excitatory fraction (~80/20 E/I).
    frac_bursting
        Fraction of excitatory cells that are intrinsically bursting (IB) or chattering (CH);
        the rest are regular spiking (RS). Inhibitory cells are fast spiking (FS).
    radius_um
        Organoid radius (a ~0.5 mm sphere).
    flatten
        Height / width of the organoid where it rests on the MEA (an oblate spheroid).
    mean_out_degree
        Mean number of outgoing synapses per neuron (capped at 40 % of ``n_neurons``); the weights
        are scaled by ``100 / degree`` so small test networks keep the same total drive.
    length_constant_um
        Connection probability falls as ``exp(-d / length_constant_um)``.
    conduction_um_per_ms, min_delay_ms, max_delay_ms
        Axonal delay ``min_delay + d / velocity`` (plus jitter), clipped to 1-20 ms (blueprint).
    w_exc, w_inh, w_max
        Initial excitatory / inhibitory synaptic jumps (mV-like Izhikevich current units) and the
        upper bound of plastic excitatory weights.
    tau_syn_ms
        Decay of the synaptic current.
    std_use, std_tau_rec_ms
        Tsodyks-Markram short-term depression of excitatory synapses: fraction of resources used
        per spike and recovery time constant.
    drive_rate_hz, drive_amp
        Spontaneous ("thalamic") Poisson kicks per neuron and their size.
    noise_sd
        Gaussian background current per ms.
    i_max
        Soft saturation of the synaptic current (``i_max * tanh(i / i_max)``).
    """

    n_neurons: int = 1000
    frac_excitatory: float = 0.8
    frac_bursting: float = 0.2
    radius_um: float = 250.0
    flatten: float = 0.5
    mean_out_degree: float = 100.0
    length_constant_um: float = 150.0
    conduction_um_per_ms: float = 50.0
    min_delay_ms: int = 1
    max_delay_ms: int = 20
    w_exc: float = 4.0
    w_inh: float = -4.0
    w_max: float = 6.0
    tau_syn_ms: float = 5.0
    std_use: float = 0.2
    std_tau_rec_ms: float = 6000.0
    drive_rate_hz: float = 1.5
    drive_amp: float = 20.0
    noise_sd: float = 2.0
    i_max: float = 40.0

    def __post_init__(self) -> None:
        if not 20 <= self.n_neurons <= 5000:
            raise WetwareError(
                f"NetworkConfig.n_neurons={self.n_neurons} is outside 20-5000; "
                "use 200-2,000 for an organoid (tests may go down to 20)"
            )
        if not 0.5 <= self.frac_excitatory <= 0.95:
            raise WetwareError(
                f"NetworkConfig.frac_excitatory={self.frac_excitatory} is outside 0.5-0.95"
            )
        if not 1 <= self.min_delay_ms <= self.max_delay_ms <= 50:
            raise WetwareError("NetworkConfig delays must satisfy 1 <= min <= max <= 50 ms")


@dataclass(frozen=True)
class PlasticityConfig:
    """Pair-based STDP into eligibility traces, gated by dopamine (Izhikevich 2007).

    ``tau_plus = tau_minus = 20 ms`` with slight depression dominance (``a_minus > a_plus``),
    eligibility ``tau_c = 1 s``, dopamine ``tau_d = 200 ms``, tonic dopamine ``d_tonic``;
    ``dw/dt = rate * c * d`` for excitatory synapses, applied every ``update_every_ms``.
    """

    enabled: bool = True
    a_plus: float = 1.0
    a_minus: float = 1.5
    tau_plus_ms: float = 20.0
    tau_minus_ms: float = 20.0
    tau_c_ms: float = 1000.0
    tau_d_ms: float = 200.0
    d_tonic: float = 0.01
    rate: float = 0.002
    update_every_ms: int = 10


@dataclass(frozen=True)
class DopamineConfig:
    """Caged dopamine in the medium, released by UV light (blueprint A4.3; values are choices).

    A pulse of ``duration_s`` at ``intensity`` (0-1) photolyses the fraction
    ``1 - exp(-efficiency * duration_s * intensity)`` of the caged pool; the released amount
    reaches the synapses scaled by ``coupling`` (µM at the synapse per µM uncaged) and then decays
    with the synaptic ``tau_d`` (PlasticityConfig) plus washout by the medium flow.
    """

    caged_uM: float = 100.0
    efficiency_per_s: float = 0.02
    coupling: float = 0.25
    washout_per_s: float = 0.5


@dataclass(frozen=True)
class ElectrodeConfig:
    """Recording front end (Intan RHS 32: 30 kHz, 16 bit, 250-5,000 Hz; FAQ thresholds).

    ``current_nA`` is the peak transmembrane current of a spike seen as a point source in a
    medium of conductivity ``sigma_S_per_m`` (V = I / 4πσr, r >= ``min_distance_um``), falling
    off like a dipole beyond ``dipole_um`` (so distant cells add no spurious far-field events).
    ``threshold_sd`` = 6 (FinalSpark logs an event at 6x the noise SD). ``dead_time_ms`` = 3
    (one event per 3 ms window). ``noise_uV`` rms band-limited noise (5-10 µV, blueprint).
    """

    sigma_S_per_m: float = 0.3
    current_nA: float = 10.0
    min_distance_um: float = 10.0
    dipole_um: float = 50.0
    noise_uV: float = 6.0
    threshold_sd: float = 6.0
    dead_time_ms: float = 3.0
    sample_rate_hz: int = 30_000
    adc_step_uV: float = 0.195
    band_hz: tuple[float, float] = (250.0, 5000.0)
    snippet_samples: int = 90
    pitch_um: float = 120.0


@dataclass(frozen=True)
class StimLimits:
    """Validated stimulation ranges (choices of this simulator, CL API caps amplitude at 3 µA).

    ``balance_tolerance`` is the allowed relative charge mismatch of the two phases.
    """

    max_amplitude_uA: float = 5.0
    min_phase_us: float = 20.0
    max_phase_us: float = 1000.0
    max_pulses: int = 100
    balance_tolerance: float = 0.01
    activation_gain: float = 800_000.0  # current units * µm² / nC: threshold distance ∝ sqrt(Q)
    artefact_uV: float = 3000.0
    artefact_tau_ms: float = 0.5


@dataclass(frozen=True)
class LifeConfig:
    """Organoid life cycle: log-normal lifetime (median 6 weeks; ~2 % below 2 weeks, ~6 % past
    100 days: the notes' "two to twelve weeks" with a tail past 100 days), an early bursting
    phase after plating (excitatory efficacy x ``early_excitability`` for ``early_phase_hours``),
    a plateau, and a decline of the spontaneous drive over the last ``decline_frac`` of life."""

    median_lifetime_days: float = 42.0
    lifetime_sigma: float = 0.55
    early_phase_hours: float = 6.0
    early_excitability: float = 1.3
    decline_frac: float = 0.3
    end_activity: float = 0.3


@dataclass(frozen=True)
class PlatformConfig:
    """A platform: ``n_sites`` organoids, each on ``electrodes_per_site`` electrodes.

    ``layout`` is ``"grid"`` (sites without cross-talk, electrodes 2 x 4 under each organoid:
    FinalSpark's 4x8) or ``"line"`` (one long organoid over a line of electrodes: the 1x32 MEA).
    ``upload_latency_s`` models the ~10 s StimParam upload (0 by default for tests).
    ``realtime`` pads every simulated window to the wall clock.
    """

    name: str = "finalspark-4x8"
    n_sites: int = 4
    electrodes_per_site: int = 8
    layout: str = "grid"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    dopamine: DopamineConfig = field(default_factory=DopamineConfig)
    electrode: ElectrodeConfig = field(default_factory=ElectrodeConfig)
    stim: StimLimits = field(default_factory=StimLimits)
    life: LifeConfig = field(default_factory=LifeConfig)
    upload_latency_s: float = 0.0
    realtime: bool = False

    def __post_init__(self) -> None:
        if self.layout not in ("grid", "line"):
            raise WetwareError(f"PlatformConfig.layout={self.layout!r}; use 'grid' or 'line'")
        if not 1 <= self.n_sites <= 16 or not 1 <= self.electrodes_per_site <= 64:
            raise WetwareError("PlatformConfig: 1-16 sites of 1-64 electrodes each")

    @property
    def n_electrodes(self) -> int:
        """Electrodes on the platform, indexed 0 … n-1 like the Neuroplatform API."""
        return self.n_sites * self.electrodes_per_site


PRESETS: dict[str, PlatformConfig] = {
    "finalspark-4x8": PlatformConfig(),
    "line-1x32": PlatformConfig(
        name="line-1x32",
        n_sites=1,
        electrodes_per_site=32,
        layout="line",
        network=NetworkConfig(n_neurons=2000, radius_um=400.0),
    ),
    "tiny": PlatformConfig(
        name="tiny",
        n_sites=1,
        electrodes_per_site=8,
        network=NetworkConfig(n_neurons=300, radius_um=180.0),
        electrode=ElectrodeConfig(pitch_um=90.0),
    ),
}


def preset(name: str, **overrides: Any) -> PlatformConfig:
    """A named platform configuration (``finalspark-4x8``, ``line-1x32``, ``tiny``).

    ``n_neurons=…`` is accepted as a shortcut for the network size.
    """
    if name not in PRESETS:
        raise WetwareError(f"unknown wetware preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    n = overrides.pop("n_neurons", None)
    if n is not None:
        cfg = replace(cfg, network=replace(cfg.network, n_neurons=int(n)))
    return replace(cfg, **overrides) if overrides else cfg
