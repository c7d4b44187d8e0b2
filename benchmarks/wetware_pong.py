"""Pong learning on the simulated organoid: feedback against the no-feedback control, over seeds.

For each seed the *same* organoid (same network, same noise stream up to the first feedback)
plays once with feedback and once without (the control: identical pauses, no feedback
stimulation). Reported per condition: hit rate over the whole game and per window, and the
change from the first to the last window (mean ± sd over seeds); paired by seed, the difference
feedback - control with an exact sign-flip p-value. Nothing is tuned on these numbers: if there
is no effect, the table says so.

Usage::

    PYTHONPATH=src python benchmarks/wetware_pong.py --seeds 5 --duration 240 --neurons 300 \\
        --conditions fep none --out /tmp/wetware_pong.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from lifelm.wetware import LocalSession, Neuroplatform, PongConfig, play_pong, preset


def run_one(condition: str, seed: int, duration: float, neurons: int, window: float) -> dict:
    plat = Neuroplatform(preset("finalspark-4x8", n_sites=1, n_neurons=neurons), seed=seed)
    plat.advance_days(1.0)  # past the early bursting phase
    tok = plat.book(list(range(8))).token
    plat.start(tok)
    t0 = time.perf_counter()
    res = play_pong(
        LocalSession(plat, tok),
        PongConfig(duration_s=duration, feedback=condition, window_s=window),
        seed=seed,
    )
    wall = time.perf_counter() - t0
    plat.stop(tok)
    curve = [c["hit_rate"] for c in res.curve()]
    return {
        "condition": condition,
        "seed": seed,
        "hit_rate": res.hit_rate(),
        "arrivals": len(res.outcomes),
        "mean_rally": res.mean_rally(),
        "curve": curve,
        "change": curve[-1] - curve[0],
        "wall_s": wall,
    }


def sign_flip_p(diffs: np.ndarray) -> float:
    """Exact two-sided paired sign-flip p-value of the mean difference."""
    d = diffs[np.isfinite(diffs)]
    if d.size == 0:
        return float("nan")
    obs = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) for s in itertools.product((1, -1), repeat=d.size)]
    return float(np.mean(np.array(flips) >= obs - 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=240.0, help="simulated seconds per game")
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--neurons", type=int, default=300)
    ap.add_argument("--conditions", nargs="+", default=["fep", "none"])
    ap.add_argument("--out", type=Path, default=Path("wetware_pong.json"))
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        for cond in args.conditions:
            row = run_one(cond, seed, args.duration, args.neurons, args.window)
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        f"Pong, {args.neurons} neurons, {args.duration:.0f} s simulated per game, "
        f"{args.seeds} seeds (mean ± sd over seeds)",
        "",
        "| condition | hit rate | first window | last window | change | mean rally |",
        "|---|---|---|---|---|---|",
    ]
    by = {c: [r for r in rows if r["condition"] == c] for c in args.conditions}
    for c, rs in by.items():

        def ms(v: list[float]) -> str:
            a = np.asarray(v, dtype=float)
            return f"{np.nanmean(a):.3f} ± {np.nanstd(a, ddof=1):.3f}"

        lines.append(
            f"| {c} | {ms([r['hit_rate'] for r in rs])} | {ms([r['curve'][0] for r in rs])} | "
            f"{ms([r['curve'][-1] for r in rs])} | {ms([r['change'] for r in rs])} | "
            f"{ms([r['mean_rally'] for r in rs])} |"
        )
    ctrl = "none" if "none" in by else None
    if ctrl:
        for c in by:
            if c == ctrl:
                continue
            d = np.array(
                [a["hit_rate"] - b["hit_rate"] for a, b in zip(by[c], by[ctrl], strict=True)]
            )
            dc = np.array([a["change"] - b["change"] for a, b in zip(by[c], by[ctrl], strict=True)])
            lines.append("")
            lines.append(
                f"{c} - {ctrl}, paired by seed: hit rate {np.mean(d):+.3f} ± {np.std(d, ddof=1):.3f} "
                f"(sign-flip p = {sign_flip_p(d):.3f}); change over the game "
                f"{np.mean(dc):+.3f} ± {np.std(dc, ddof=1):.3f} (p = {sign_flip_p(dc):.3f})"
            )
    table = "\n".join(lines)
    print(table)
    args.out.write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out)}, "rows": rows, "table": table}, indent=1
        )
    )


if __name__ == "__main__":
    main()
