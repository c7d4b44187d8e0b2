"""HTML report of lab-in-the-loop runs: discovery curves per strategy, genes found per round,
the protocol of each round, and the final ranking with its evidence columns; in the Perturb-seq
setting also the further hit sets (synergistic pairs) and the response model's accuracy on the
untested pool after each round."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from lifelm._core.errors import InputError
from lifelm._core.runfolder import atomic_output


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _runs(folder: Path) -> dict[str, Path]:
    if (folder / "state.json").is_file():
        return {json.loads((folder / "state.json").read_text())["strategy"]: folder}
    runs = {
        d.name: d for d in sorted(folder.iterdir()) if d.is_dir() and (d / "state.json").is_file()
    }
    if not runs:
        raise InputError(f"{folder}: no lab loop found (no state.json here or in its subfolders)")
    return runs


def first_curve_columns(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Curve columns of the first run (all runs of one folder share them)."""
    return list(next(iter(runs.values()))["curve"].columns)


def _table(df: pd.DataFrame, max_rows: int = 30) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)


def write_report(folder: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.html`` for the loop(s) in ``folder`` (one loop, or one subfolder per strategy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lifelm.lab.loop import load_run

    folder = Path(folder)
    runs = {name: load_run(d) for name, d in _runs(folder).items()}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, run in runs.items():
        c = run["curve"]
        ax.plot(c.n_tested, 100 * c.hit_ratio, marker="o", label=name)
    ax.set_xlabel("perturbations tested")
    ax.set_ylabel("hits found (% of the screen's hits in the pool)")
    ax.set_title("Discovery curves")
    ax.legend()
    curves_png = _png(fig)
    plt.close(fig)
    first = next(iter(runs.values()))["state"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>LifeLM lab loop</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #ddd}</style></head><body>",
        "<h1>Lab in the loop</h1>",
        f"<p>Screen <b>{html.escape(first['screen'])}</b> ({html.escape(first['screen_source'])}); hits: "
        f"{html.escape(first['hit_source'])}; direction sought: {first['direction']}; backend: "
        f"{html.escape(first['backend'])}.</p>",
        "<h2>Discovery curves</h2>",
        f"<img alt='discovery curves' src='data:image/png;base64,{curves_png}'>",
        "<h2>Hit ratio after each round</h2>",
    ]
    summary = pd.concat(
        [r["curve"].assign(strategy=n) for n, r in runs.items()], ignore_index=True
    ).pivot(index="round", columns="strategy", values="hit_ratio")
    parts.append(_table(summary.reset_index()))
    extra_sets = [
        c.removesuffix("_ratio")
        for c in first_curve_columns(runs)
        if c.endswith("_ratio") and c != "hit_ratio"
    ]
    for name in extra_sets:
        parts.append(f"<h2>{html.escape(name)}: share found after each round</h2>")
        t = pd.concat(
            [r["curve"].assign(strategy=n) for n, r in runs.items()], ignore_index=True
        ).pivot(index="round", columns="strategy", values=f"{name}_ratio")
        parts.append(_table(t.reset_index()))
    accs = {
        n: r["response_accuracy"] for n, r in runs.items() if r.get("response_accuracy") is not None
    }
    if accs:
        parts.append(
            "<h2>Response model on the untested pool</h2><p>After each round the response "
            "models are refitted on the read-outs of the tested perturbations and scored on the "
            "untested ones against the full data: mean Pearson of the predicted and measured "
            "expression shifts over all genes (and over the top-20 DE genes). "
            "<code>mean_shift</code> is the baseline (the mean of the tested shifts); "
            "<code>lab_model</code> is additive where both singles of a pair were tested, "
            "else linear.</p>"
        )
        for n, acc in accs.items():
            if len(acc):
                wide = acc.pivot(index=["round", "n_tested"], columns="method", values="pearson")
                parts.append(f"<h3>{html.escape(n)}: Pearson (delta)</h3>")
                parts.append(_table(wide.reset_index()))
    for name, run in runs.items():
        parts.append(f"<h2>Strategy: {html.escape(name)}</h2>")
        rows = []
        for rd in run["rounds"]:
            res = rd["results"]
            proto = rd["protocol"]
            found = res.loc[res.hit.astype(bool), "gene"].tolist()
            qc = proto.get("qc") or []
            zp = [q["z_prime"] for q in qc if q.get("z_prime") is not None]
            rows.append(
                {
                    "round": rd["batch"]["round"],
                    "tested": len(res),
                    "hits found": len(found),
                    "genes found": ", ".join(found[:25]) + (" …" if len(found) > 25 else ""),
                    "protocol": f"{proto.get('backend')}: "
                    + (
                        f"{len(proto.get('operations', []))} operations on "
                        f"{len(qc)} plate(s){', Z′ ' + ', '.join(f'{z:.2f}' for z in zp) if zp else ''}"
                        if proto.get("backend") == "pylabrobot"
                        else proto.get("noise_model", "")
                    ),
                    "model": rd["batch"].get("model", ""),
                }
            )
        parts.append(_table(pd.DataFrame(rows), max_rows=1000))
        if run["ranking"] is not None:
            parts.append("<h3>Final ranking (top 30) with evidence columns</h3>")
            parts.append(_table(run["ranking"]))
    parts.append(
        "<p>Protocols of every round: <code>&lt;strategy&gt;/rounds/round_NNN/protocol.json</code> "
        "and <code>protocol.log</code>.</p></body></html>"
    )
    target = Path(path) if path is not None else folder / "report.html"
    with atomic_output(target) as tmp:
        tmp.write_text("\n".join(parts))
    return target
