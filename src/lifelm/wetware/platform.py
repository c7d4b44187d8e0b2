"""The simulated neuroplatform: organoid sites on an MEA, bookings, the experiment lock,
stimulation, recording, UV-uncaged dopamine, life cycle, and an event database.

The behaviour follows the FinalSpark Neuroplatform's concepts (WETWARE-NOTES A1): a booking token
grants electrodes for a time slot; ``start()`` takes the MEA's lock and fails while another
experiment runs; ``trigger()`` fires the StimParams bound to trigger keys and returns spike
counts of the window after the trigger with the first 10 ms blanked; the database holds events,
triggers, pulses and UV flashes. ``tick()`` is the closed-loop (CL-style) step: stimulate now,
run ``ms``, return the counts and events.

Only the sites named by the running booking are simulated; other sites skip the time (their
network state does not advance, their age does). One experiment runs at a time per platform.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

import numpy as np

from lifelm.wetware.config import PlatformConfig, preset
from lifelm.wetware.db import EventDB
from lifelm.wetware.dopamine import CagedPool
from lifelm.wetware.electrodes import (
    Events,
    detect_events,
    detect_trace,
    gains,
    site_electrodes,
    synth_trace,
)
from lifelm.wetware.engine import Network, StepResult
from lifelm.wetware.errors import (
    BookingConflictError,
    BookingError,
    ExperimentLockError,
    OrganoidExpiredError,
    StimulationError,
    UnknownBookingError,
    WetwareError,
)
from lifelm.wetware.lifecycle import DAY_S, Organoid, SimClock
from lifelm.wetware.stimulation import StimParam, activation_current

COUNT_BLANK_MS = 10.0  # read_count ignores the first 10 ms after a trigger (FinalSpark)


class Site:
    """One organoid on its electrodes: network, electrode gains, caged dopamine, pending pulses."""

    def __init__(self, index: int, cfg: PlatformConfig, rng: np.random.Generator) -> None:
        self.index = index
        self.cfg = cfg
        self.rng = rng
        self.pool = CagedPool(cfg.dopamine)
        self.electrode_pos = site_electrodes(
            cfg.electrodes_per_site, cfg.layout, cfg.network.radius_um, cfg.electrode.pitch_um
        )
        self.organoid: Organoid | None = None
        self.pending: list[tuple[float, int, StimParam]] = []  # (abs ms, local electrode, param)
        self._act_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.new_network()

    def new_network(self) -> None:
        """A fresh network (a new organoid)."""
        self.net = Network(self.cfg.network, self.cfg.plasticity, self.rng)
        self.net.dopamine_decay_per_ms = (
            1.0 / self.cfg.plasticity.tau_d_ms + self.cfg.dopamine.washout_per_s / 1000.0
        )
        self.gain = gains(self.electrode_pos, self.net.positions, self.cfg.electrode)
        self._act_cache.clear()
        self.pending.clear()

    def _activation(self, local: int, param: StimParam) -> tuple[np.ndarray, np.ndarray]:
        key = (local, param.charge_nC[0], param.polarity)  # the delay does not matter here
        if key not in self._act_cache:
            cur = activation_current(
                param, self.electrode_pos[local], self.net.positions, self.cfg.stim
            )
            idx = np.flatnonzero(cur > 1.0)
            self._act_cache[key] = (idx, cur[idx])
        return self._act_cache[key]

    def run(
        self,
        start_ms: float,
        n_ms: int,
        dopamine: dict[int, float] | None = None,
        trace: bool = False,
    ) -> tuple[StepResult, Events, np.ndarray | None]:
        """Simulate ``n_ms`` from absolute ``start_ms``; return spikes, events (window-relative
        times, local channels) and, if asked, the 30 kHz trace."""
        inject: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        n_el = self.electrode_pos.shape[0]
        blank = np.zeros((n_el, n_ms), dtype=bool)
        stim_marks: list[tuple[float, int, float]] = []
        keep = []
        for t_abs, local, param in self.pending:
            rel = t_abs - start_ms
            if rel >= n_ms:
                keep.append((t_abs, local, param))
                continue
            step = max(0, int(rel))
            idx, cur = self._activation(local, param)
            if step in inject:
                i0, c0 = inject[step]
                inject[step] = (np.concatenate([i0, idx]), np.concatenate([c0, cur]))
            else:
                inject[step] = (idx, cur)
            settle = int(np.ceil(param.post_stim_amp_settle / 1000.0))
            blank[:, step : step + max(1, settle)] = True
            stim_marks.append((rel, local, self.cfg.stim.artefact_uV * param.phase_amplitude1))
        self.pending = keep
        spikes = self.net.run(n_ms, inject=inject, dopamine=dopamine)
        ev = detect_events(
            spikes.times_ms, spikes.neurons, n_ms, self.gain, self.cfg.electrode, self.rng, blank
        )
        tr = None
        if trace:
            tr = synth_trace(
                spikes.times_ms,
                spikes.neurons,
                n_ms,
                self.gain,
                self.cfg.electrode,
                self.rng,
                stim=stim_marks,
                artefact_tau_ms=self.cfg.stim.artefact_tau_ms,
            )
        return spikes, ev, tr


@dataclass
class Booking:
    """A token granting electrodes for a time slot (simulated ms since the epoch)."""

    token: str
    electrodes: tuple[int, ...]
    start_ms: int
    end_ms: int
    user: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {
            "token": self.token,
            "electrodes": list(self.electrodes),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "user": self.user,
        }


@dataclass
class WindowResult:
    """One simulated window: events (absolute ms, global channel) and counts per electrode."""

    start_ms: float
    n_ms: int
    events: Events
    counts: np.ndarray  # length n_electrodes of the platform
    spikes: dict[int, StepResult] = field(default_factory=dict)  # per site, for analysis
    trace: dict[int, np.ndarray] = field(default_factory=dict)  # global electrode -> µV


class Neuroplatform:
    """The simulated platform (thread-safe: every public call holds one lock).

    Parameters
    ----------
    config
        A :class:`PlatformConfig` or a preset name (default ``finalspark-4x8``).
    seed
        Seed of every random draw (networks, noise, lifetimes): same seed, same results.
    db
        SQLite path of the event database (default in memory).
    """

    def __init__(
        self,
        config: PlatformConfig | str = "finalspark-4x8",
        *,
        seed: int = 0,
        db: str = ":memory:",
    ) -> None:
        self.cfg = preset(config) if isinstance(config, str) else config
        self.seed = seed
        self.clock = SimClock(self.cfg.realtime)
        self.db = EventDB(db)
        self._lock = threading.RLock()
        self._seq = np.random.SeedSequence(seed)
        self._next_fs = 400
        self.sites: list[Site] = []
        for s in range(self.cfg.n_sites):
            site = Site(s, self.cfg, np.random.default_rng(self._seq.spawn(1)[0]))
            self.sites.append(site)
            self._mint(site)
        self.bookings: dict[str, Booking] = {}
        self.running: str | None = None
        self.session: int | None = None
        self.stimparams: dict[int, StimParam] = {}

    # ------------------------------------------------------------ organoids
    def _mint(self, site: Site) -> None:
        site.organoid = Organoid.mint(
            self._next_fs, site.index, self.clock.t_ms, self.cfg.life, site.rng
        )
        self._next_fs += 1
        o = site.organoid
        self.db.execute(
            "INSERT INTO organoids VALUES (?,?,?,?,NULL)",
            (o.fs_id, o.site, o.plated_ms, o.lifetime_days),
        )

    def replace_organoid(self, site: int) -> str:
        """Put a new organoid on ``site`` (a new network and a new fs ID); return the ID."""
        with self._lock:
            s = self._site(site)
            old = s.organoid
            if old is not None:
                self.db.execute(
                    "UPDATE organoids SET replaced_ms=? WHERE fs_id=?", (self.clock.t_ms, old.fs_id)
                )
            s.new_network()
            s.pool.medium_change()
            self._mint(s)
            assert s.organoid is not None
            return s.organoid.fs_id

    def organoids(self) -> list[dict[str, object]]:
        """Metadata per site (the "elab" view): fs ID, age, alive, expected death."""
        now = self.clock.t_ms
        out = []
        for s in self.sites:
            o = s.organoid
            assert o is not None
            out.append(
                {
                    "site": s.index,
                    "fs_id": o.fs_id,
                    "electrodes": self.site_electrodes(s.index),
                    "age_days": round(o.age_days(now), 4),
                    "alive": o.alive(now),
                    "activity": round(o.activity(now, self.cfg.life), 4),
                    "lifetime_days": round(o.lifetime_days, 2),
                    "n_neurons": s.net.n,
                    "caged_dopamine_uM": round(s.pool.caged_uM, 4),
                }
            )
        return out

    def site_electrodes(self, site: int) -> list[int]:
        """Global electrode indices of a site."""
        k = self.cfg.electrodes_per_site
        return list(range(site * k, (site + 1) * k))

    def _site(self, site: int) -> Site:
        if not 0 <= site < len(self.sites):
            raise WetwareError(f"site {site} does not exist (0-{len(self.sites) - 1})")
        return self.sites[site]

    def site_of(self, electrode: int) -> int:
        """The site an electrode belongs to."""
        if not 0 <= electrode < self.cfg.n_electrodes:
            raise BookingError(f"electrode {electrode} outside 0-{self.cfg.n_electrodes - 1}")
        return electrode // self.cfg.electrodes_per_site

    # ------------------------------------------------------------ time
    def advance(self, seconds: float) -> None:
        """Fast-forward the clock without simulating the networks (organoids age, may die)."""
        if seconds < 0:
            raise WetwareError("advance(seconds) needs seconds >= 0")
        with self._lock:
            self.clock.t_ms += int(seconds * 1000)

    def advance_days(self, days: float) -> None:
        """Fast-forward by days."""
        self.advance(days * DAY_S)

    # ------------------------------------------------------------ bookings and the lock
    def book(
        self,
        electrodes: list[int],
        *,
        duration_s: float = 3600.0,
        start_in_s: float = 0.0,
        user: str = "",
    ) -> Booking:
        """Book electrodes for ``[now + start_in_s, + duration_s)``; refuse overlapping bookings."""
        with self._lock:
            els = tuple(sorted({int(e) for e in electrodes}))
            if not els or len(els) != len(electrodes):
                raise BookingError("a booking needs distinct electrode indices, at least one")
            for e in els:
                self.site_of(e)
            if duration_s <= 0 or start_in_s < 0:
                raise BookingError("a booking needs duration_s > 0 and start_in_s >= 0")
            start = self.clock.t_ms + int(start_in_s * 1000)
            end = start + int(duration_s * 1000)
            for b in self.bookings.values():
                shared = set(b.electrodes) & set(els)
                if shared and b.start_ms < end and start < b.end_ms:
                    raise BookingConflictError(
                        f"booking refused: electrodes {sorted(shared)} are already booked from "
                        f"{b.start_ms / 1000:.0f} s to {b.end_ms / 1000:.0f} s (simulated); "
                        "pick other electrodes or a later slot"
                    )
            bk = Booking(secrets.token_urlsafe(12), els, start, end, user)
            self.bookings[bk.token] = bk
            return bk

    def cancel(self, token: str) -> None:
        """Cancel a booking (stopping its experiment if running)."""
        with self._lock:
            self._booking(token, active=False)
            if self.running == token:
                self.stop(token)
            del self.bookings[token]

    def _booking(self, token: str, active: bool = True) -> Booking:
        b = self.bookings.get(token)
        if b is None:
            raise UnknownBookingError("unknown booking token; book electrodes first")
        if active:
            now = self.clock.t_ms
            if now < b.start_ms:
                raise BookingError(
                    f"booking starts at {b.start_ms / 1000:.0f} s; now {now / 1000:.0f} s"
                )
            if now >= b.end_ms:
                raise BookingError(
                    f"booking expired at {b.end_ms / 1000:.0f} s (now {now / 1000:.0f} s); book again"
                )
        return b

    def _check_alive(self, b: Booking) -> list[Site]:
        sites = [self.sites[i] for i in sorted({self.site_of(e) for e in b.electrodes})]
        for s in sites:
            assert s.organoid is not None
            if not s.organoid.alive(self.clock.t_ms):
                raise OrganoidExpiredError(
                    f"organoid {s.organoid.fs_id} on site {s.index} died at day "
                    f"{s.organoid.lifetime_days:.1f}; call replace_organoid({s.index}) (a new fs ID)"
                )
        return sites

    def start(self, token: str) -> int:
        """Take the experiment lock; return the session ID of the event database."""
        with self._lock:
            b = self._booking(token)
            if self.running is not None and self.running != token:
                raise ExperimentLockError(
                    "another experiment is running on this MEA; wait for it to stop"
                )
            if self.running == token:
                assert self.session is not None
                return self.session
            sites = self._check_alive(b)
            fs = [s.organoid.fs_id for s in sites if s.organoid is not None]
            self.running = token
            self.session = self.db.new_session(token, list(b.electrodes), fs, self.clock.t_ms)
            return self.session

    def stop(self, token: str) -> None:
        """Release the experiment lock (safe to call twice, like ``exp.stop()`` in ``finally``)."""
        with self._lock:
            self._booking(token, active=False)
            if self.running == token:
                self.db.execute(
                    "UPDATE sessions SET stopped_ms=? WHERE id=?", (self.clock.t_ms, self.session)
                )
                self.running = None
                self.stimparams = {}

    def _running(self, token: str) -> Booking:
        b = self._booking(token)
        if self.running != token:
            raise ExperimentLockError(
                "this booking's experiment is not running; call start() first"
            )
        return b

    def _check_electrodes(self, b: Booking, electrodes: list[int]) -> None:
        bad = sorted(set(electrodes) - set(b.electrodes))
        if bad:
            raise BookingError(
                f"electrodes {bad} are not in this booking (granted: {list(b.electrodes)})"
            )

    # ------------------------------------------------------------ stimulation
    def send_stimparam(self, token: str, params: list[StimParam]) -> None:
        """Upload StimParams (one per electrode; a second one for an electrode replaces the first).

        Advances the clock by the configured upload latency (~10 s on the real headstage).
        """
        with self._lock:
            b = self._running(token)
            for p in params:
                p.validate(self.cfg.stim, self.cfg.n_electrodes)
            self._check_electrodes(b, [p.index for p in params])
            for p in params:
                self.stimparams[p.index] = p
            self.advance(self.cfg.upload_latency_s)

    def _queue(self, params: list[StimParam], at_ms: float) -> None:
        rows = []
        for p in params:
            if not p.enable:
                continue
            site = self.sites[self.site_of(p.index)]
            local = p.index % self.cfg.electrodes_per_site
            for t in p.pulse_times_ms():
                site.pending.append((at_ms + float(t), local, p))
            rows.append(
                (
                    self.session,
                    at_ms + p.trigger_delay / 1000.0,
                    p.index,
                    p.charge_nC[0],
                    p.nb_pulse,
                )
            )
        self.db.execute("INSERT INTO stims VALUES (?,?,?,?,?)", rows)

    def trigger(
        self, token: str, keys: list[int], *, count_ms: int = 200, tag: str = ""
    ) -> np.ndarray:
        """Fire every uploaded StimParam bound to ``keys``, run ``count_ms`` and return the spike
        counts per electrode (all platform electrodes; the first 10 ms after the trigger blanked)."""
        with self._lock:
            b = self._running(token)
            if any(not 0 <= k <= 15 for k in keys):
                raise StimulationError(f"trigger keys {keys} outside 0-15")
            now = float(self.clock.t_ms)
            params = [p for p in self.stimparams.values() if p.trigger_key in keys]
            if not params:
                raise StimulationError(
                    f"no StimParam is bound to trigger keys {keys}; send_stimparam() first"
                )
            self._queue(params, now)
            self.db.execute(
                "INSERT INTO triggers VALUES (?,?,?,?)", [(self.session, now, k, tag) for k in keys]
            )
            res = self._simulate(b, count_ms)
            keep = res.events.t_ms >= now + COUNT_BLANK_MS
            return np.bincount(res.events.channel[keep], minlength=self.cfg.n_electrodes)

    def tick(self, token: str, ms: int, stims: list[StimParam] | None = None) -> WindowResult:
        """Closed-loop step: queue ``stims`` now (their ``trigger_delay`` places them inside the
        tick), simulate ``ms`` and return the window's events and counts."""
        with self._lock:
            b = self._running(token)
            stims = stims or []
            for p in stims:
                p.validate(self.cfg.stim, self.cfg.n_electrodes)
            self._check_electrodes(b, [p.index for p in stims])
            self._queue(stims, float(self.clock.t_ms))
            return self._simulate(b, ms)

    def record(self, token: str, window_ms: int, *, trace: bool = False) -> WindowResult:
        """Record ``window_ms`` of activity; ``trace=True`` also returns the 30 kHz trace (booked
        electrodes), and its events come from MAD-threshold detection on that trace."""
        with self._lock:
            b = self._running(token)
            return self._simulate(b, window_ms, trace=trace)

    def uv(
        self,
        token: str,
        site: int,
        *,
        duration_s: float = 1.0,
        intensity: float = 1.0,
        tag: str = "",
    ) -> float:
        """Flash UV over a booked site: uncage dopamine now; return the free µM at the synapses."""
        with self._lock:
            b = self._running(token)
            if site not in {self.site_of(e) for e in b.electrodes}:
                raise BookingError(f"site {site} is not covered by this booking's electrodes")
            s = self._site(site)
            released = s.pool.uv_pulse(duration_s, intensity)
            s.net.dopamine += released
            self.db.execute(
                "INSERT INTO uv VALUES (?,?,?,?,?,?,?)",
                (self.session, self.clock.t_ms, site, duration_s, intensity, released, tag),
            )
            return released

    def medium_change(self, site: int) -> None:
        """Replace the medium: the caged pool is refilled and free dopamine washed out."""
        with self._lock:
            s = self._site(site)
            s.pool.medium_change()
            s.net.dopamine = 0.0

    # ------------------------------------------------------------ simulation
    def _simulate(self, b: Booking, n_ms: int, trace: bool = False) -> WindowResult:
        if not 1 <= n_ms <= 600_000:
            raise WetwareError(f"window of {n_ms} ms outside 1-600,000 ms")
        sites = self._check_alive(b)
        self.clock.pace_start()
        start = float(self.clock.t_ms)
        ts, chs, amps = [], [], []
        spikes: dict[int, StepResult] = {}
        traces: dict[int, np.ndarray] = {}
        k = self.cfg.electrodes_per_site
        booked = set(b.electrodes)
        for s in sites:
            assert s.organoid is not None
            s.net.drive_scale = s.organoid.activity(self.clock.t_ms, self.cfg.life)
            s.net.exc_gain = s.organoid.excitability(self.clock.t_ms, self.cfg.life)
            sp, ev, tr = s.run(start, n_ms, trace=trace)
            spikes[s.index] = sp
            if tr is not None:
                ev = detect_trace(tr, self.cfg.electrode)
                for local in range(k):
                    if s.index * k + local in booked:
                        traces[s.index * k + local] = tr[local]
            glob = ev.channel + s.index * k
            keep = np.isin(glob, list(booked))
            ts.append(ev.t_ms[keep] + start)
            chs.append(glob[keep])
            amps.append(ev.amplitude_uV[keep])
        t = np.concatenate(ts)
        ch = np.concatenate(chs).astype(np.int64)
        amp = np.concatenate(amps)
        order = np.argsort(t, kind="stable")
        events = Events(t[order], ch[order], amp[order])
        if self.session is not None:
            self.db.add_events(self.session, events.t_ms, events.channel, events.amplitude_uV)
        self.clock.advance(n_ms)
        counts = np.bincount(events.channel, minlength=self.cfg.n_electrodes)
        return WindowResult(start, n_ms, events, counts, spikes, traces)


class LocalSession:
    """A running experiment on an in-process platform, with the closed-loop tick interface
    (the same methods as :class:`lifelm.wetware.client.ClosedLoopClient`)."""

    def __init__(self, platform: Neuroplatform, token: str) -> None:
        self.platform = platform
        self.token = token
        self.electrodes = list(platform.bookings[token].electrodes)

    def tick(self, ms: int, stims: list[StimParam] | None = None) -> np.ndarray:
        """Stimulate, run ``ms``, return spike counts on the booked electrodes (booking order)."""
        res = self.platform.tick(self.token, ms, stims)
        return res.counts[self.electrodes]

    def uv(self, site: int, duration_s: float, intensity: float) -> float:
        """Flash UV on a site."""
        return self.platform.uv(self.token, site, duration_s=duration_s, intensity=intensity)

    @property
    def now_ms(self) -> float:
        """Simulated time."""
        return float(self.platform.clock.t_ms)
