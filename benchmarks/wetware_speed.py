"""Wetware simulation speed: simulated seconds per second, on one core.

Cases (plasticity on, event detection on, organoids past the early bursting phase):

- ``1x<N>``: one organoid of ``--neurons`` (default 1,000) recorded for ``--seconds``;
- ``4x<N>``: the FinalSpark 4x8 platform, all four organoids recorded together;
- ``pong-local``: the closed loop (20 ms ticks: decode, encode, stimulate) on one organoid;
- ``pong-http``: the same loop through the HTTP API (FastAPI TestClient, in-process transport).

Both CPU time of this process (the single-core figure, robust to other load on the machine) and
wall time are reported; ``sim_per_cpu_s >= 1`` means the simulation keeps up with real time on
one dedicated core. BLAS/OpenMP threads are pinned to 1.

Usage::

    PYTHONPATH=src python benchmarks/wetware_speed.py --neurons 1000 --seconds 10 --out speed.json
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform as pyplatform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from lifelm.wetware import LocalSession, Neuroplatform, PongConfig, play_pong, preset  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def _platform(n_sites: int, neurons: int, seed: int) -> tuple[Neuroplatform, str]:
    plat = Neuroplatform(preset("finalspark-4x8", n_sites=n_sites, n_neurons=neurons), seed=seed)
    plat.advance_days(1.0)
    tok = plat.book(list(range(8 * n_sites))).token
    plat.start(tok)
    plat.record(tok, 500)  # warm-up
    return plat, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="simulated seconds per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--http", action="store_true", help="also time the loop over HTTP")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ms = int(args.seconds * 1000)
    rows = []

    def add(case: str, cpu: float, wall: float, extra: dict | None = None) -> None:
        row = {
            "case": case,
            "sim_s": args.seconds,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "sim_per_cpu_s": round(args.seconds / cpu, 2),
            "sim_per_wall_s": round(args.seconds / wall, 2),
        } | (extra or {})
        rows.append(row)
        print(json.dumps(row), flush=True)

    plat, tok = _platform(1, args.neurons, args.seed)
    n_syn = plat.sites[0].net.n_syn
    holder = {}
    cpu, wall = _timed(lambda: holder.setdefault("r", plat.record(tok, ms)))
    rate = holder["r"].spikes[0].times_ms.size / args.neurons / args.seconds
    add(f"1x{args.neurons}", cpu, wall, {"synapses": n_syn, "rate_hz": round(rate, 2)})

    plat4, tok4 = _platform(4, args.neurons, args.seed)
    cpu, wall = _timed(lambda: plat4.record(tok4, ms))
    add(f"4x{args.neurons}", cpu, wall)

    cfg = PongConfig(duration_s=args.seconds, tick_ms=20, feedback="fep")
    plat, tok = _platform(1, args.neurons, args.seed)
    cpu, wall = _timed(lambda: play_pong(LocalSession(plat, tok), cfg, seed=args.seed))
    add(f"pong-local-1x{args.neurons}", cpu, wall, {"tick_ms": 20})

    if args.http:
        from fastapi.testclient import TestClient

        from lifelm.wetware.api import create_app
        from lifelm.wetware.client import ClosedLoopClient

        plat, _ = _platform(1, args.neurons, args.seed)
        plat.stop(plat.running)
        tok = next(iter(plat.bookings))  # the booking of _platform, its experiment stopped
        loop = ClosedLoopClient(tok, session=TestClient(create_app(plat)))
        cpu, wall = _timed(lambda: play_pong(loop, cfg, seed=args.seed))
        loop.close()
        add(f"pong-http-1x{args.neurons}", cpu, wall, {"tick_ms": 20})

    meta = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu": pyplatform.processor() or pyplatform.machine(),
        "python": pyplatform.python_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(meta))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
