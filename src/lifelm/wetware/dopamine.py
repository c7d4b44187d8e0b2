"""Dopamine delivered by UV uncaging of a caged pool in the medium (blueprint A4.3).

The values (pool size, photolysis efficiency, coupling to the synapse, washout) are choices of this
simulator: the public Neuroplatform docs contain no UV API and the notes give no dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lifelm.wetware.config import DopamineConfig
from lifelm.wetware.errors import WetwareError


@dataclass
class CagedPool:
    """Caged dopamine of one site's medium (µM)."""

    cfg: DopamineConfig
    caged_uM: float = -1.0

    def __post_init__(self) -> None:
        if self.caged_uM < 0:
            self.caged_uM = self.cfg.caged_uM

    def uv_pulse(self, duration_s: float, intensity: float) -> float:
        """Photolyse part of the pool; return the free dopamine reaching the synapses (µM).

        The uncaged fraction is ``1 - exp(-efficiency · duration · intensity)``; the pool depletes.
        """
        if not 0.0 < duration_s <= 10.0:
            raise WetwareError(f"UV pulse duration_s={duration_s} outside (0, 10] s")
        if not 0.0 < intensity <= 1.0:
            raise WetwareError(f"UV pulse intensity={intensity} outside (0, 1]")
        frac = 1.0 - math.exp(-self.cfg.efficiency_per_s * duration_s * intensity)
        released = self.caged_uM * frac
        self.caged_uM -= released
        return released * self.cfg.coupling

    def medium_change(self) -> None:
        """Fresh medium: the caged pool is full again (free dopamine is washed out by the caller)."""
        self.caged_uM = self.cfg.caged_uM
