"""Wetware: a simulated organoid-on-MEA neuroplatform with closed-loop learning tasks.

Layers inside: ``config`` (frozen presets) < ``engine`` (Izhikevich network, STDP, dopamine-gated
plasticity) < ``electrodes``, ``stimulation``, ``dopamine``, ``lifecycle`` < ``platform`` (sites,
bookings, lock, database) < ``pong``, ``analysis``; ``api`` (FastAPI, optional) and ``client``
(HTTP only) sit on top. Importing this package does not import FastAPI.
"""

from __future__ import annotations

from lifelm.wetware.config import PRESETS, NetworkConfig, PlasticityConfig, PlatformConfig, preset
from lifelm.wetware.errors import (
    BookingConflictError,
    BookingError,
    ExperimentLockError,
    OrganoidExpiredError,
    StimulationError,
    UnbalancedPulseError,
    UnknownBookingError,
    WetwareError,
)
from lifelm.wetware.platform import LocalSession, Neuroplatform
from lifelm.wetware.pong import PongConfig, PongResult, play_pong
from lifelm.wetware.stimulation import StimParam, StimPolarity

__all__ = [
    "PRESETS",
    "BookingConflictError",
    "BookingError",
    "ExperimentLockError",
    "LocalSession",
    "NetworkConfig",
    "Neuroplatform",
    "OrganoidExpiredError",
    "PlasticityConfig",
    "PlatformConfig",
    "PongConfig",
    "PongResult",
    "StimParam",
    "StimPolarity",
    "StimulationError",
    "UnbalancedPulseError",
    "UnknownBookingError",
    "WetwareError",
    "play_pong",
    "preset",
]
