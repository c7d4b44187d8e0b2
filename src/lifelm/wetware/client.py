"""HTTP clients of the wetware API (they never import the server; any httpx-style session works).

Two styles:

- :class:`NeuroplatformClient`: book, start/stop, upload StimParams, trigger and read counts,
  record, UV, read the event database (FinalSpark Neuroplatform style);
- :class:`ClosedLoopClient`: the tick loop (read -> decide -> stimulate every N ms, CL style),
  with the same ``tick`` / ``uv`` / ``electrodes`` interface as
  :class:`lifelm.wetware.platform.LocalSession`, so a task runs unchanged over HTTP.

Pass ``session=`` to use an existing client (e.g. FastAPI's ``TestClient`` in tests);
otherwise ``base_url`` opens an ``httpx2``/``httpx`` client.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from lifelm.wetware.errors import (
    BookingConflictError,
    BookingError,
    ExperimentLockError,
    OrganoidExpiredError,
    StimulationError,
    UnknownBookingError,
    WetwareError,
)
from lifelm.wetware.stimulation import StimParam


def _http_session(base_url: str) -> Any:
    for name in ("httpx2", "httpx"):  # httpx2 first, the plain httpx as a fallback
        try:
            httpx = importlib.import_module(name)
        except ImportError:
            continue
        return httpx.Client(base_url=base_url, timeout=120.0)
    raise WetwareError("the wetware client needs httpx (pip install 'lifelm[serve]') or session=")


def _raise_for(resp: Any) -> None:
    if resp.status_code < 400:
        return
    try:
        detail = resp.json().get("detail", resp.text)
    except Exception:
        detail = resp.text
    msg = f"wetware server refused the request ({resp.status_code}): {detail}"
    low = str(detail).lower()
    if resp.status_code == 404:
        raise UnknownBookingError(msg)
    if "died" in low:
        raise OrganoidExpiredError(msg)
    if "already booked" in low:
        raise BookingConflictError(msg)
    if "experiment" in low and resp.status_code == 409:
        raise ExperimentLockError(msg)
    if "booking" in low or "electrodes" in low:
        raise BookingError(msg)
    if "stimparam" in low or "pulse" in low:
        raise StimulationError(msg)
    raise WetwareError(msg)


class _Base:
    def __init__(self, base_url: str = "http://127.0.0.1:8765", session: Any = None) -> None:
        self.http = session if session is not None else _http_session(base_url)

    def _post(self, path: str, body: Any = None) -> Any:
        resp = self.http.post(path, json=body if body is not None else {})
        _raise_for(resp)
        return resp.json()

    def _get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        _raise_for(resp)
        return resp.json()


class NeuroplatformClient(_Base):
    """Book, stimulate, read counts (Neuroplatform style), over HTTP.

    Examples
    --------
    >>> np_client = NeuroplatformClient("http://127.0.0.1:8765")  # doctest: +SKIP
    >>> token = np_client.book(list(range(8)))["token"]  # doctest: +SKIP
    """

    def organoids(self) -> list[dict[str, Any]]:
        """Per-site metadata (fs ID, age, alive, electrodes)."""
        return self._get("/organoids")

    def book(self, electrodes: list[int], *, duration_s: float = 3600.0) -> dict[str, Any]:
        """Book electrodes; the returned dict holds the ``token``."""
        return self._post("/bookings", {"electrodes": electrodes, "duration_s": duration_s})

    def start(self, token: str) -> int:
        """Take the experiment lock; return the session ID."""
        return int(self._post(f"/experiments/{token}/start")["session"])

    def stop(self, token: str) -> None:
        """Release the lock."""
        self._post(f"/experiments/{token}/stop")

    def send_stimparam(self, token: str, params: list[StimParam]) -> None:
        """Upload StimParams."""
        self._post(f"/experiments/{token}/stimparams", [p.to_dict() for p in params])

    def trigger(self, token: str, keys: list[int], *, count_ms: int = 200) -> np.ndarray:
        """Fire trigger keys; return spike counts per platform electrode (10 ms blanked)."""
        out = self._post(f"/experiments/{token}/trigger", {"keys": keys, "count_ms": count_ms})
        return np.asarray(out["counts"], dtype=np.int64)

    def record(self, token: str, window_ms: int) -> dict[str, Any]:
        """Record a window: counts per booked electrode and the events."""
        return self._post(f"/experiments/{token}/record", {"window_ms": window_ms})

    def uv(
        self, token: str, site: int, *, duration_s: float = 1.0, intensity: float = 1.0
    ) -> float:
        """Flash UV; return the free dopamine released (µM at the synapse)."""
        body = {"site": site, "duration_s": duration_s, "intensity": intensity}
        return float(self._post(f"/experiments/{token}/uv", body)["released_uM"])

    def events(self, token: str) -> list[list[float]]:
        """The event database rows ``[t_ms, channel, amplitude_uV]`` of this booking's sessions."""
        return self._get(f"/experiments/{token}/events")["events"]


class ClosedLoopClient(_Base):
    """The tick loop over HTTP: ``counts = tick(ms, stims)`` every step.

    Parameters
    ----------
    base_url, session
        Server address, or an existing httpx-style session.
    token
        A booking token whose experiment this client starts (and stops on ``close``).
    """

    def __init__(self, token: str, base_url: str = "http://127.0.0.1:8765", session: Any = None):
        super().__init__(base_url, session)
        self.token = token
        out = self._post(f"/experiments/{token}/start")
        self.electrodes: list[int] = list(out["electrodes"])
        self.now_ms = 0.0

    def tick(self, ms: int, stims: list[StimParam] | None = None) -> np.ndarray:
        """Stimulate now, run ``ms``, return counts on the booked electrodes (booking order)."""
        body = {"ms": ms, "stims": [p.to_dict() for p in stims or []]}
        out = self._post(f"/experiments/{self.token}/tick", body)
        self.now_ms = float(out["start_ms"]) + ms
        return np.asarray(out["counts"], dtype=np.int64)

    def uv(self, site: int, duration_s: float, intensity: float) -> float:
        """Flash UV on a site of the booking."""
        body = {"site": site, "duration_s": duration_s, "intensity": intensity}
        return float(self._post(f"/experiments/{self.token}/uv", body)["released_uM"])

    def close(self) -> None:
        """Stop the experiment (call it in ``finally``)."""
        self._post(f"/experiments/{self.token}/stop")
