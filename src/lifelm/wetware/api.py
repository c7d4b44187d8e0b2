"""The remote API of the simulated neuroplatform: a standalone FastAPI app.

Routes (JSON; errors are ``{"detail": "..."}`` with 400 for refused input, 404 for unknown
tokens, 409 for conflicts: overlapping bookings, the experiment lock, a dead organoid):

- ``GET  /platform``                 configuration summary and simulated time
- ``GET  /organoids``                per site: fs ID, age, alive, electrodes ("elab")
- ``POST /organoids/{site}/replace`` new organoid, new fs ID
- ``POST /organoids/{site}/medium``  medium change (refills the caged dopamine)
- ``POST /clock/advance``            fast-forward simulated time (``{"seconds": …}``)
- ``POST /bookings``                 ``{"electrodes": [...], "duration_s": …}`` -> token
- ``GET  /bookings``, ``DELETE /bookings/{token}``
- ``POST /experiments/{token}/start`` / ``stop``
- ``POST /experiments/{token}/stimparams``  upload StimParams (list of dicts)
- ``POST /experiments/{token}/trigger``     ``{"keys": [...], "count_ms": 200}`` -> counts
- ``POST /experiments/{token}/tick``        ``{"ms": 20, "stims": [...]}`` -> counts, events
- ``POST /experiments/{token}/record``      ``{"window_ms": 1000}`` -> events
- ``POST /experiments/{token}/uv``          ``{"site": 0, "duration_s": 1, "intensity": 1}``
- ``GET  /experiments/{token}/events``      the session's event database
- ``WS   /experiments/{token}/stream``      live frames: ``{"t_ms", "counts", "events"}``

Mount it in the job service later with ``service_app.mount("/wetware", create_app(platform))``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from lifelm.wetware.errors import (
    BookingConflictError,
    ExperimentLockError,
    OrganoidExpiredError,
    UnknownBookingError,
    WetwareError,
)
from lifelm.wetware.platform import Neuroplatform, WindowResult
from lifelm.wetware.stimulation import StimParam


class BookingIn(BaseModel):
    electrodes: list[int]
    duration_s: float = 3600.0
    start_in_s: float = 0.0
    user: str = ""


class TriggerIn(BaseModel):
    keys: list[int]
    count_ms: int = 200
    tag: str = ""


class TickIn(BaseModel):
    ms: int = Field(20, ge=1, le=600_000)
    stims: list[dict[str, Any]] = []


class RecordIn(BaseModel):
    window_ms: int = Field(1000, ge=1, le=600_000)


class UVIn(BaseModel):
    site: int
    duration_s: float = 1.0
    intensity: float = 1.0
    tag: str = ""


class AdvanceIn(BaseModel):
    seconds: float = Field(..., ge=0)


def _status(e: WetwareError) -> int:
    if isinstance(e, UnknownBookingError):
        return 404
    if isinstance(e, ExperimentLockError | OrganoidExpiredError | BookingConflictError):
        return 409
    return 400


def _window(res: WindowResult, electrodes: list[int]) -> dict[str, Any]:
    ev = res.events
    return {
        "start_ms": res.start_ms,
        "n_ms": res.n_ms,
        "electrodes": electrodes,
        "counts": [int(res.counts[e]) for e in electrodes],
        "events": {
            "t_ms": ev.t_ms.round(3).tolist(),
            "channel": ev.channel.tolist(),
            "amplitude_uV": ev.amplitude_uV.round(2).tolist(),
        },
    }


# Long because FastAPI routes are closures over the platform: one nested function per route, each short.
def create_app(platform: Neuroplatform | None = None) -> FastAPI:
    """A FastAPI app serving ``platform`` (a new default platform if None)."""
    plat = platform if platform is not None else Neuroplatform()
    app = FastAPI(title="LifeLM wetware: simulated organoid neuroplatform")
    app.state.platform = plat

    def guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WetwareError as e:
            raise HTTPException(status_code=_status(e), detail=str(e)) from e

    def booked(token: str) -> list[int]:
        b = guard(plat._booking, token, active=False)
        return list(b.electrodes)

    @app.get("/platform")
    def info() -> dict[str, Any]:
        c = plat.cfg
        return {
            "name": c.name,
            "n_sites": c.n_sites,
            "electrodes_per_site": c.electrodes_per_site,
            "n_electrodes": c.n_electrodes,
            "n_neurons": c.network.n_neurons,
            "now_ms": plat.clock.t_ms,
            "now_utc": plat.clock.now().isoformat(),
            "running": plat.running is not None,
        }

    @app.get("/organoids")
    def organoids() -> list[dict[str, Any]]:
        return plat.organoids()

    @app.post("/organoids/{site}/replace")
    def replace(site: int) -> dict[str, Any]:
        return {"fs_id": guard(plat.replace_organoid, site)}

    @app.post("/organoids/{site}/medium")
    def medium(site: int) -> dict[str, Any]:
        guard(plat.medium_change, site)
        return {"ok": True}

    @app.post("/clock/advance")
    def advance(body: AdvanceIn) -> dict[str, Any]:
        guard(plat.advance, body.seconds)
        return {"now_ms": plat.clock.t_ms}

    @app.post("/bookings")
    def book(body: BookingIn) -> dict[str, Any]:
        b = guard(
            plat.book,
            body.electrodes,
            duration_s=body.duration_s,
            start_in_s=body.start_in_s,
            user=body.user,
        )
        return b.to_dict()

    @app.get("/bookings")
    def bookings() -> list[dict[str, Any]]:
        return [
            {k: v for k, v in b.to_dict().items() if k != "token"} for b in plat.bookings.values()
        ]

    @app.delete("/bookings/{token}")
    def cancel(token: str) -> dict[str, Any]:
        guard(plat.cancel, token)
        return {"ok": True}

    @app.post("/experiments/{token}/start")
    def start(token: str) -> dict[str, Any]:
        return {"session": guard(plat.start, token), "electrodes": booked(token)}

    @app.post("/experiments/{token}/stop")
    def stop(token: str) -> dict[str, Any]:
        guard(plat.stop, token)
        return {"ok": True}

    @app.post("/experiments/{token}/stimparams")
    def stimparams(token: str, body: list[dict[str, Any]]) -> dict[str, Any]:
        params = [guard(StimParam.from_dict, d) for d in body]
        guard(plat.send_stimparam, token, params)
        return {"uploaded": len(params)}

    @app.post("/experiments/{token}/trigger")
    def trigger(token: str, body: TriggerIn) -> dict[str, Any]:
        counts = guard(plat.trigger, token, body.keys, count_ms=body.count_ms, tag=body.tag)
        return {"counts": [int(c) for c in counts]}

    @app.post("/experiments/{token}/tick")
    def tick(token: str, body: TickIn) -> dict[str, Any]:
        stims = [guard(StimParam.from_dict, d) for d in body.stims]
        res = guard(plat.tick, token, body.ms, stims)
        return _window(res, booked(token))

    @app.post("/experiments/{token}/record")
    def record(token: str, body: RecordIn) -> dict[str, Any]:
        res = guard(plat.record, token, body.window_ms)
        return _window(res, booked(token))

    @app.post("/experiments/{token}/uv")
    def uv(token: str, body: UVIn) -> dict[str, Any]:
        released = guard(
            plat.uv,
            token,
            body.site,
            duration_s=body.duration_s,
            intensity=body.intensity,
            tag=body.tag,
        )
        return {"released_uM": released}

    @app.get("/experiments/{token}/events")
    def events(
        token: str, start_ms: float | None = None, stop_ms: float | None = None
    ) -> dict[str, Any]:
        guard(plat._booking, token, active=False)
        rows = plat.db.query("SELECT id FROM sessions WHERE token=? ORDER BY id", (token,))
        out: list[list[float]] = []
        for (sid,) in rows:
            out += [list(r) for r in plat.db.events(sid, start_ms, stop_ms)]
        return {"sessions": [r[0] for r in rows], "events": out}

    @app.websocket("/experiments/{token}/stream")
    async def stream(ws: WebSocket, token: str, frame_ms: int = 250, frames: int = 4) -> None:
        """Live frames: each simulates ``frame_ms`` and sends counts and events (then closes)."""
        await ws.accept()
        try:
            electrodes = list(plat.bookings[token].electrodes) if token in plat.bookings else []
            for _ in range(max(1, min(frames, 10_000))):
                try:
                    res = plat.record(token, max(1, min(frame_ms, 10_000)))
                except WetwareError as e:
                    await ws.send_json({"error": str(e)})
                    break
                await ws.send_json(_window(res, electrodes))
        except WebSocketDisconnect:
            return
        await ws.close()

    return app
