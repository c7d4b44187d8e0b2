"""A DishBrain-like Pong game played by an organoid through the closed-loop tick interface.

Game (Kagan et al. 2022, Neuron 110:3952, as summarised in WETWARE-NOTES A2): a single paddle on
the left wall of a unit square; the ball bounces off the other walls.

- Sensory encoding: the ball's height is place-coded by *which* sensory electrode is stimulated,
  its distance to the paddle rate-coded at 4-40 Hz (near = fast).
- Motor decoding: the paddle moves by the difference of the normalised spike counts of the
  "up" and "down" motor electrodes in each tick (each normalised by its running mean, so an
  electrode that simply sees more cells does not push the paddle one way).
- Feedback (``feedback=``):
  ``"fep"``: a hit is followed by *predictable* stimulation (all sensory electrodes, 100 Hz,
  100 ms), a miss by *unpredictable* stimulation (random sensory electrodes at random times,
  5 Hz on average for 4 s); ``"dopamine"``: a hit releases dopamine by UV uncaging, a miss gets
  the unpredictable stimulation; ``"none"``: the control, the same pauses without any feedback
  (DishBrain's stimulus-without-feedback condition).

Works over any object with ``tick(ms, stims) -> counts`` and ``uv(site, duration_s, intensity)``
and ``electrodes`` (booking order): :class:`lifelm.wetware.platform.LocalSession` or
:class:`lifelm.wetware.client.ClosedLoopClient`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from lifelm.wetware.errors import WetwareError
from lifelm.wetware.stimulation import StimParam

FEEDBACKS = ("fep", "dopamine", "none")


class ClosedLoop(Protocol):
    """What a Pong player needs from a running experiment."""

    electrodes: list[int]

    def tick(self, ms: int, stims: list[StimParam] | None = None) -> np.ndarray: ...

    def uv(self, site: int, duration_s: float, intensity: float) -> float: ...


@dataclass(frozen=True)
class PongConfig:
    """Game, encoding and feedback settings (indices are positions in the booking's electrodes)."""

    duration_s: float = 120.0
    tick_ms: int = 20
    feedback: str = "fep"
    sensory: tuple[int, ...] = (0, 1, 2, 3)
    motor_up: tuple[int, ...] = (4, 5)
    motor_down: tuple[int, ...] = (6, 7)
    paddle_height: float = 0.3
    ball_speed: float = 1.0  # field widths per second
    paddle_gain: float = 0.02  # field heights per tick per unit of normalised count difference
    amplitude_uA: float = 1.5
    phase_us: float = 200.0
    rate_far_hz: float = 4.0
    rate_near_hz: float = 40.0
    predictable_hz: float = 100.0
    predictable_ms: int = 100
    unpredictable_hz: float = 5.0
    unpredictable_ms: int = 4000
    uv_duration_s: float = 0.5
    uv_intensity: float = 1.0
    window_s: float = 30.0

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACKS:
            raise WetwareError(f"PongConfig.feedback={self.feedback!r}; choose one of {FEEDBACKS}")
        if self.tick_ms < 1 or self.duration_s <= 0:
            raise WetwareError("PongConfig: tick_ms >= 1 and duration_s > 0")


@dataclass
class PongResult:
    """Outcome of one game: every rally end (time, hit) and summary curves per window."""

    config: dict[str, Any]
    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    rallies: list[int] = field(default_factory=list)

    def hit_rate(self) -> float:
        """Fraction of ball arrivals that were hit (NaN if the ball never arrived)."""
        if not self.outcomes:
            return float("nan")
        return float(np.mean([h for _, h in self.outcomes]))

    def curve(self, window_s: float | None = None) -> list[dict[str, float]]:
        """Hit rate per window of play time."""
        w = window_s or float(self.config["window_s"])
        n = int(np.ceil(float(self.config["duration_s"]) / w))
        out = []
        for k in range(n):
            sel = [h for t, h in self.outcomes if k * w <= t < (k + 1) * w]
            rate = float(np.mean(sel)) if sel else float("nan")
            out.append({"t0_s": k * w, "arrivals": len(sel), "hit_rate": rate})
        return out

    def mean_rally(self) -> float:
        """Mean hits per rally (a rally ends with a miss)."""
        return float(np.mean(self.rallies)) if self.rallies else float("nan")


def _pulse(index: int, delay_ms: float, cfg: PongConfig) -> StimParam:
    return StimParam(
        index=index,
        phase_amplitude1=cfg.amplitude_uA,
        phase_amplitude2=cfg.amplitude_uA,
        phase_duration1=cfg.phase_us,
        phase_duration2=cfg.phase_us,
        trigger_delay=max(0.0, delay_ms) * 1000.0,
    )


# Long only because of its docstring and signature; the body is under 80 lines.
def play_pong(loop: ClosedLoop, config: PongConfig, *, seed: int = 0, site: int = 0) -> PongResult:
    """Play Pong for ``config.duration_s`` of simulated time; return the outcomes.

    Parameters
    ----------
    loop
        A running experiment with the tick interface (local or over HTTP).
    config
        Game and feedback settings.
    seed
        Seed of the game's own randomness (ball launch angles, unpredictable stimulation).
    site
        The site flashed with UV in ``feedback="dopamine"``.
    """
    cfg = config
    els = list(loop.electrodes)
    need = max(cfg.sensory + cfg.motor_up + cfg.motor_down) + 1
    if len(els) < need:
        raise WetwareError(f"Pong needs {need} booked electrodes, the booking has {len(els)}")
    rng = np.random.default_rng(seed)
    sensory = [els[i] for i in cfg.sensory]
    up = list(cfg.motor_up)
    down = list(cfg.motor_down)
    dt = cfg.tick_ms / 1000.0
    n_ticks = int(cfg.duration_s / dt)
    res = PongResult(asdict(cfg) | {"seed": seed})

    def launch() -> tuple[float, float, float, float]:
        ang = rng.uniform(-np.pi / 3, np.pi / 3)
        return (
            0.9,
            rng.uniform(0.1, 0.9),
            -np.cos(ang) * cfg.ball_speed,
            np.sin(ang) * cfg.ball_speed,
        )

    bx, by, vx, vy = launch()
    paddle = 0.5
    mean_up = mean_down = 1.0
    phase = 0.0
    pending: list[list[StimParam]] = []  # feedback stimulation, one list per tick
    rally = 0
    for k in range(n_ticks):
        t = k * dt
        stims: list[StimParam] = []
        if pending:
            stims = pending.pop(0)
        else:
            # sensory encoding: place (which electrode) and rate (how close)
            e = sensory[min(len(sensory) - 1, int(by * len(sensory)))]
            rate = cfg.rate_far_hz + (cfg.rate_near_hz - cfg.rate_far_hz) * (1.0 - bx)
            phase += rate * dt
            while phase >= 1.0:
                phase -= 1.0
                stims.append(_pulse(e, rng.uniform(0, cfg.tick_ms - 1), cfg))
        counts = loop.tick(cfg.tick_ms, stims).astype(float)
        if pending:  # paused during feedback
            continue
        cu, cd = counts[up].sum(), counts[down].sum()
        mean_up += 0.01 * (cu - mean_up)
        mean_down += 0.01 * (cd - mean_down)
        move = cu / max(mean_up, 0.1) - cd / max(mean_down, 0.1)
        paddle = float(np.clip(paddle + cfg.paddle_gain * move, 0.0, 1.0))
        bx += vx * dt
        by += vy * dt
        if by < 0 or by > 1:
            vy = -vy
            by = float(np.clip(by, 0, 1))
        if bx >= 1:
            vx = -abs(vx)
        if bx > 0:
            continue
        hit = abs(by - paddle) <= cfg.paddle_height / 2
        res.outcomes.append((t, bool(hit)))
        if hit:
            rally += 1
            vx = abs(vx)
            bx = 0.0
            pending = _feedback_hit(cfg, sensory, loop, site)
        else:
            res.rallies.append(rally)
            rally = 0
            pending = _feedback_miss(cfg, sensory, rng)
            bx, by, vx, vy = launch()
    return res


def _ticks(cfg: PongConfig, ms: int) -> int:
    return max(1, int(np.ceil(ms / cfg.tick_ms)))


def _feedback_hit(
    cfg: PongConfig, sensory: list[int], loop: ClosedLoop, site: int
) -> list[list[StimParam]]:
    if cfg.feedback == "none":
        return [[] for _ in range(_ticks(cfg, cfg.predictable_ms))]
    if cfg.feedback == "dopamine":
        loop.uv(site, cfg.uv_duration_s, cfg.uv_intensity)
        return [[] for _ in range(_ticks(cfg, cfg.predictable_ms))]
    out: list[list[StimParam]] = [[] for _ in range(_ticks(cfg, cfg.predictable_ms))]
    period = 1000.0 / cfg.predictable_hz
    t = 0.0
    while t < cfg.predictable_ms:
        k = int(t // cfg.tick_ms)
        out[k] += [_pulse(e, t - k * cfg.tick_ms, cfg) for e in sensory]
        t += period
    return out


def _feedback_miss(
    cfg: PongConfig, sensory: list[int], rng: np.random.Generator
) -> list[list[StimParam]]:
    out: list[list[StimParam]] = [[] for _ in range(_ticks(cfg, cfg.unpredictable_ms))]
    if cfg.feedback == "none":
        return out
    n = rng.poisson(cfg.unpredictable_hz * cfg.unpredictable_ms / 1000.0)
    for t in np.sort(rng.uniform(0, cfg.unpredictable_ms, n)):
        k = int(t // cfg.tick_ms)
        out[k].append(_pulse(int(rng.choice(sensory)), t - k * cfg.tick_ms, cfg))
    return out


def run_local(
    config: PongConfig,
    *,
    platform: str = "finalspark-4x8",
    n_neurons: int | None = None,
    seed: int = 0,
    age_days: float = 1.0,
) -> PongResult:
    """Book site 0 of a fresh in-process platform (organoid aged ``age_days``) and play a game."""
    from lifelm.wetware.config import preset
    from lifelm.wetware.platform import LocalSession, Neuroplatform

    overrides: dict[str, object] = {"n_sites": 1}
    if n_neurons is not None:
        overrides["n_neurons"] = n_neurons
    plat = Neuroplatform(preset(platform, **overrides), seed=seed)
    plat.advance_days(age_days)
    tok = plat.book(plat.site_electrodes(0)).token
    plat.start(tok)
    try:
        return play_pong(LocalSession(plat, tok), config, seed=seed)
    finally:
        plat.stop(tok)
