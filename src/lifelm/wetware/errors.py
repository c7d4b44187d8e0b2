"""Errors of the wetware simulator: each says what was refused, why, and how to fix it."""

from __future__ import annotations

from lifelm._core.errors import InputError, LifeLMError


class WetwareError(LifeLMError):
    """Base class of every refusal by the simulated neuroplatform."""


class StimulationError(WetwareError, InputError):
    """A stimulation parameter outside the validated range."""


class UnbalancedPulseError(StimulationError):
    """A biphasic pulse whose two phases do not carry equal charge (it would corrode the electrode)."""


class BookingError(WetwareError):
    """A booking that overlaps another one, has expired, or does not grant the electrodes used."""


class ExperimentLockError(WetwareError):
    """An experiment that is not running, or another experiment holding the MEA."""


class OrganoidExpiredError(WetwareError):
    """The organoid on a site has died; replace it (a new fs ID is minted) before using the site."""


class UnknownBookingError(BookingError):
    """A token that matches no booking."""


class BookingConflictError(BookingError):
    """A booking that overlaps another booking of the same electrodes."""
