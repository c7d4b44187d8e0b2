"""Wetware remote API (FastAPI TestClient, no network) and the two HTTP client styles."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the wetware API needs FastAPI (pip install 'lifelm[serve]')")
from fastapi.testclient import TestClient

from lifelm.wetware import (
    BookingConflictError,
    BookingError,
    ExperimentLockError,
    Neuroplatform,
    OrganoidExpiredError,
    PongConfig,
    StimParam,
    UnbalancedPulseError,
    play_pong,
    preset,
)
from lifelm.wetware.api import create_app
from lifelm.wetware.client import ClosedLoopClient, NeuroplatformClient


@pytest.fixture
def http() -> TestClient:
    plat = Neuroplatform(preset("finalspark-4x8", n_neurons=150), seed=0)
    return TestClient(create_app(plat))


def test_engine_imports_without_fastapi() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import lifelm.wetware as w, lifelm.wetware.client\n"
        "print(w.Neuroplatform.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Neuroplatform" in out.stdout


def test_book_start_trigger_record_uv_and_event_database(http: TestClient) -> None:
    c = NeuroplatformClient(session=http)
    orgs = c.organoids()
    assert len(orgs) == 4
    assert orgs[0]["electrodes"] == list(range(8))
    tok = c.book(list(range(8)), duration_s=600)["token"]
    with pytest.raises(BookingConflictError, match="already booked"):
        c.book([7, 8])
    c.start(tok)
    c.send_stimparam(
        tok, [StimParam(index=1, trigger_key=0, phase_amplitude1=3, phase_amplitude2=3)]
    )
    counts = c.trigger(tok, [0])
    assert counts.shape == (32,)
    rec = c.record(tok, 500)
    assert rec["counts"] == [sum(1 for ch in rec["events"]["channel"] if ch == e) for e in range(8)]
    assert c.uv(tok, 0, duration_s=1.0) > 0
    with pytest.raises(BookingError, match="site 1"):
        c.uv(tok, 1)
    rows = c.events(tok)
    in_rec = [r for r in rows if rec["start_ms"] <= r[0] < rec["start_ms"] + 500]
    assert len(in_rec) == sum(rec["counts"])
    assert len(rows) >= sum(rec["counts"]) + int(counts.sum())
    c.stop(tok)
    # bookings list hides tokens
    listed = http.get("/bookings").json()
    assert listed[0]["electrodes"] == list(range(8))
    assert "token" not in listed[0]


def test_errors_map_to_http_status_and_client_exceptions(http: TestClient) -> None:
    c = NeuroplatformClient(session=http)
    tok = c.book([0, 1])["token"]
    other = c.book([8])["token"]
    assert http.post("/experiments/nope/start").status_code == 404
    c.start(tok)
    r = http.post(f"/experiments/{other}/start")
    assert r.status_code == 409
    with pytest.raises(ExperimentLockError):
        c.start(other)
    bad = StimParam(index=0, phase_amplitude1=2.0, phase_amplitude2=1.0).to_dict()
    r = http.post(f"/experiments/{tok}/tick", json={"ms": 10, "stims": [bad]})
    assert r.status_code == 400
    assert "unbalanced" in r.json()["detail"]
    with pytest.raises(UnbalancedPulseError):
        StimParam.from_dict(bad).validate(http.app.state.platform.cfg.stim)
    r = http.post(
        f"/experiments/{tok}/tick", json={"ms": 10, "stims": [StimParam(index=5).to_dict()]}
    )
    assert r.status_code == 400
    assert "not in this booking" in r.json()["detail"]
    r = http.post(f"/experiments/{tok}/stimparams", json=[{"index": 0, "bogus": 1}])
    assert r.status_code == 400
    c.stop(tok)
    life = c.organoids()[0]["lifetime_days"]
    http.post("/clock/advance", json={"seconds": 3600.0})
    long_tok = c.book([2, 3], duration_s=400 * 86400)["token"]
    http.post("/clock/advance", json={"seconds": life * 86400})
    with pytest.raises(OrganoidExpiredError):
        c.start(long_tok)
    fs = http.post("/organoids/0/replace").json()["fs_id"]
    assert fs != c.organoids()[1]["fs_id"]
    c.start(long_tok)


def test_websocket_stream_sends_live_frames(http: TestClient) -> None:
    c = NeuroplatformClient(session=http)
    tok = c.book(list(range(8)))["token"]
    c.start(tok)
    frames = []
    with http.websocket_connect(f"/experiments/{tok}/stream?frame_ms=100&frames=3") as ws:
        for _ in range(3):
            frames.append(ws.receive_json())
    assert [f["n_ms"] for f in frames] == [100, 100, 100]
    assert frames[1]["start_ms"] == frames[0]["start_ms"] + 100
    assert len(frames[0]["counts"]) == 8


def test_closed_loop_pong_over_http_matches_the_local_run() -> None:
    """The same seed gives the same game whether the loop runs in-process or over HTTP."""
    from lifelm.wetware import LocalSession

    cfg = PongConfig(duration_s=4.0, tick_ms=20, feedback="fep", window_s=2.0)
    results = []
    for remote in (False, True):
        plat = Neuroplatform(preset("tiny", n_neurons=120), seed=3)
        tok = plat.book(list(range(8))).token
        if remote:
            loop = ClosedLoopClient(tok, session=TestClient(create_app(plat)))
            try:
                res = play_pong(loop, cfg, seed=1)
            finally:
                loop.close()
        else:
            plat.start(tok)
            res = play_pong(LocalSession(plat, tok), cfg, seed=1)
        results.append(res)
    assert results[0].outcomes == results[1].outcomes
    assert len(results[0].outcomes) > 0
    assert np.isfinite(results[0].hit_rate())
