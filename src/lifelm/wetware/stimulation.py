"""Biphasic, charge-balanced stimulation pulses (FinalSpark ``StimParam`` field names).

A pulse is validated before it is accepted: amplitudes and phase durations in range, a pulse train
that fits its period, and equal charge in the two phases (``A1·D1 = A2·D2``); an unbalanced pulse
is refused with :class:`~lifelm.wetware.errors.UnbalancedPulseError`, naming both charges.

Neurons are activated by a distance law (threshold ∝ r², Stoney-style): a pulse of charge ``Q``
(nC, first phase) injects ``gain · Q / r²`` into a neuron at distance ``r`` from the electrode
during the 1 ms step of the pulse; cathodic-first pulses are more effective than anodic-first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from lifelm.wetware.config import StimLimits
from lifelm.wetware.errors import StimulationError, UnbalancedPulseError


class StimPolarity(StrEnum):
    """Which phase comes first."""

    NegativeFirst = "NegativeFirst"
    PositiveFirst = "PositiveFirst"


POLARITY_EFFICACY = {StimPolarity.NegativeFirst: 1.0, StimPolarity.PositiveFirst: 0.7}


@dataclass(frozen=True)
class StimParam:
    """One electrode's stimulation (times in µs, amplitudes in µA, like the Neuroplatform API)."""

    index: int
    trigger_key: int = 0
    polarity: StimPolarity = StimPolarity.NegativeFirst
    phase_duration1: float = 100.0
    phase_duration2: float = 100.0
    phase_amplitude1: float = 1.0
    phase_amplitude2: float = 1.0
    interphase_delay: float = 0.0
    trigger_delay: float = 0.0
    nb_pulse: int = 1
    pulse_train_period: float = 10_000.0
    post_stim_ref_period: float = 1000.0
    post_stim_amp_settle: float = 1000.0
    enable: bool = True

    @property
    def charge_nC(self) -> tuple[float, float]:
        """Charge of the two phases (nC = µA · µs / 1000)."""
        return (
            self.phase_amplitude1 * self.phase_duration1 / 1000.0,
            self.phase_amplitude2 * self.phase_duration2 / 1000.0,
        )

    def validate(self, limits: StimLimits, n_electrodes: int | None = None) -> StimParam:
        """Return ``self`` if every field is in range; raise a clear error otherwise."""
        where = f"StimParam(index={self.index})"
        if n_electrodes is not None and not 0 <= self.index < n_electrodes:
            raise StimulationError(f"{where}: electrode index outside 0-{n_electrodes - 1}")
        if not 0 <= self.trigger_key <= 15:
            raise StimulationError(f"{where}: trigger_key={self.trigger_key} outside 0-15")
        for name in ("phase_amplitude1", "phase_amplitude2"):
            a = getattr(self, name)
            if not 0.0 < a <= limits.max_amplitude_uA:
                raise StimulationError(
                    f"{where}: {name}={a} µA outside (0, {limits.max_amplitude_uA}] µA"
                )
        for name in ("phase_duration1", "phase_duration2"):
            d = getattr(self, name)
            if not limits.min_phase_us <= d <= limits.max_phase_us:
                raise StimulationError(
                    f"{where}: {name}={d} µs outside {limits.min_phase_us}-{limits.max_phase_us} µs"
                )
        if self.interphase_delay < 0 or self.trigger_delay < 0:
            raise StimulationError(f"{where}: delays must be >= 0 µs")
        if not 1 <= self.nb_pulse <= limits.max_pulses:
            raise StimulationError(
                f"{where}: nb_pulse={self.nb_pulse} outside 1-{limits.max_pulses}"
            )
        width = self.phase_duration1 + self.interphase_delay + self.phase_duration2
        if self.nb_pulse > 1 and self.pulse_train_period < width:
            raise StimulationError(
                f"{where}: pulse_train_period={self.pulse_train_period} µs is shorter than one "
                f"pulse ({width} µs)"
            )
        q1, q2 = self.charge_nC
        if abs(q1 - q2) > limits.balance_tolerance * max(q1, q2):
            raise UnbalancedPulseError(
                f"{where}: unbalanced biphasic pulse refused: phase 1 carries {q1:.4g} nC "
                f"({self.phase_amplitude1} µA x {self.phase_duration1} µs), phase 2 {q2:.4g} nC "
                f"({self.phase_amplitude2} µA x {self.phase_duration2} µs); net charge corrodes "
                "the electrode and damages tissue. Make A1·D1 equal A2·D2 "
                f"(within {limits.balance_tolerance:.0%})"
            )
        return self

    def pulse_times_ms(self) -> np.ndarray:
        """Onsets of the pulses relative to the trigger (ms)."""
        k = np.arange(self.nb_pulse)
        return (self.trigger_delay + k * self.pulse_train_period) / 1000.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        d = asdict(self)
        d["polarity"] = self.polarity.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StimParam:
        """Build from JSON fields (unknown fields are refused)."""
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        if extra:
            raise StimulationError(
                f"StimParam: unknown fields {sorted(extra)}; known: {sorted(known)}"
            )
        d: dict[str, Any] = dict(data)  # JSON values; the dataclass fields type them
        if "polarity" in d:
            try:
                d["polarity"] = StimPolarity(d["polarity"])
            except ValueError as e:
                raise StimulationError(
                    f"StimParam.polarity={d['polarity']!r}; use NegativeFirst or PositiveFirst"
                ) from e
        return cls(**d)


def activation_current(
    param: StimParam, electrode_pos: np.ndarray, neuron_pos: np.ndarray, limits: StimLimits
) -> np.ndarray:
    """Current injected into each neuron by one pulse of ``param`` (Izhikevich current units)."""
    d = np.sqrt(((neuron_pos - electrode_pos[None, :]) ** 2).sum(-1))
    r2 = np.maximum(d, 10.0) ** 2
    q = param.charge_nC[0] * POLARITY_EFFICACY[param.polarity]
    return limits.activation_gain * q / r2
