"""Organoid life cycle and the simulated clock.

Each organoid gets an ``fs`` ID (FinalSpark style, a new one whenever the organoid on a site is
replaced), a plating time, and a lifetime drawn from a log-normal (median 6 weeks; the notes say
"two to twelve weeks" on MEAs, with organoids living "even more than 100 days"). Its activity
follows an early bursting phase after plating, a plateau and a decline before death.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from lifelm.wetware.config import LifeConfig

DAY_S = 86_400.0
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class SimClock:
    """Simulated platform time in ms since ``EPOCH``; ``realtime=True`` pads to the wall clock."""

    def __init__(self, realtime: bool = False, start_ms: int = 0) -> None:
        self.realtime = realtime
        self.t_ms = int(start_ms)
        self._wall0 = time.monotonic()
        self._sim0 = self.t_ms

    def pace_start(self) -> None:
        """Mark the wall time at which a simulated window starts (real-time mode)."""
        self._wall0 = time.monotonic()
        self._sim0 = self.t_ms

    def advance(self, ms: int) -> None:
        """Move the clock forward; in real-time mode sleep until the wall time since
        :meth:`pace_start` equals the simulated time since then."""
        self.t_ms += int(ms)
        if self.realtime:
            lag = (self.t_ms - self._sim0) / 1000.0 - (time.monotonic() - self._wall0)
            if lag > 0:
                time.sleep(lag)

    def now(self) -> datetime:
        """Current simulated UTC time."""
        return EPOCH + timedelta(milliseconds=self.t_ms)

    @property
    def seconds(self) -> float:
        """Simulated seconds since the epoch."""
        return self.t_ms / 1000.0


@dataclass
class Organoid:
    """One organoid's identity and life."""

    fs_id: str
    site: int
    plated_ms: int
    lifetime_days: float

    @classmethod
    def mint(
        cls, number: int, site: int, now_ms: int, cfg: LifeConfig, rng: np.random.Generator
    ) -> Organoid:
        """A new organoid ``fs<number>`` with a lifetime drawn from the hazard."""
        life = float(np.exp(np.log(cfg.median_lifetime_days) + cfg.lifetime_sigma * rng.normal()))
        return cls(f"fs{number}", site, now_ms, life)

    def age_days(self, now_ms: int) -> float:
        """Days since plating."""
        return (now_ms - self.plated_ms) / 1000.0 / DAY_S

    def alive(self, now_ms: int) -> bool:
        """Whether the organoid is still alive at ``now_ms``."""
        return self.age_days(now_ms) < self.lifetime_days

    def death_ms(self) -> int:
        """Simulated time of death."""
        return self.plated_ms + int(self.lifetime_days * DAY_S * 1000)

    def activity(self, now_ms: int, cfg: LifeConfig) -> float:
        """Spontaneous-drive multiplier: 1 on the plateau, a linear decline before death, 0 dead."""
        age = self.age_days(now_ms)
        if age >= self.lifetime_days:
            return 0.0
        start = self.lifetime_days * (1.0 - cfg.decline_frac)
        if age <= start:
            return 1.0
        frac = (age - start) / (self.lifetime_days - start)
        return 1.0 - frac * (1.0 - cfg.end_activity)

    def excitability(self, now_ms: int, cfg: LifeConfig) -> float:
        """Excitatory efficacy multiplier: raised during the early bursting phase after plating
        (the Neuroplatform docs advise waiting "a few hours" after plating)."""
        return (
            cfg.early_excitability if self.age_days(now_ms) * 24.0 < cfg.early_phase_hours else 1.0
        )


def lifetime_quantiles(cfg: LifeConfig) -> dict[str, float]:
    """Analytic quantities of the log-normal lifetime (days and probabilities)."""
    import math

    def cdf(days: float) -> float:
        z = math.log(days / cfg.median_lifetime_days) / cfg.lifetime_sigma
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    return {
        "median_days": cfg.median_lifetime_days,
        "p_below_14d": cdf(14.0),
        "p_within_2_12_weeks": cdf(84.0) - cdf(14.0),
        "p_beyond_100d": 1.0 - cdf(100.0),
    }
