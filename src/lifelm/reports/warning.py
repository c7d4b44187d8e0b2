"""HTML report and output files of the early-warning backtest (``lifelm genomes warn -o DIR``).

The report holds a timeline (every scored lineage's combined risk score against its designation
date, flagged ones marked, the WHO variants' roots labelled and their WHO dates drawn), the
per-variant lead-time table with every method side by side, the false-alarm table and, when
run, the unseen-lineage flagging table.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from lifelm._core.runfolder import atomic_output
from lifelm.tasks.genomes.warning import VARIANTS, WarnResult


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    return df.head(max_rows).to_html(
        index=False, float_format=lambda v: f"{v:.3g}", border=0, na_rep=""
    )


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table of ``df`` (floats rounded to ``digits``; empty cells for NaN)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def variant_matrix(variants: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, one column per method: ``flagged (+lead d)``, ``missed``, or why not."""

    def cell(r: pd.Series) -> str:
        if r["status"] != "flagged":
            return str(r["status"])
        lead = r.get("lead_days_vs_who")
        return f"flagged {r['flag_date']}" + (
            f" ({int(lead):+d} d vs WHO)" if pd.notna(lead) and lead != "" else ""
        )

    v = variants.assign(cell=variants.apply(cell, axis=1))
    m = v.pivot(index="variant", columns="method", values="cell")
    order = [x.name for x in VARIANTS if x.name in m.index]
    cols = [c for c in dict.fromkeys(variants["method"]) if c in m.columns]
    m = m.loc[order, cols].reset_index()
    info = v.drop_duplicates("variant").set_index("variant")
    m.insert(1, "who_date", info.loc[m["variant"], "who_date"].to_numpy())
    m.insert(2, "root_date", info.loc[m["variant"], "root_date"].fillna("").to_numpy())
    return m


def _timeline(result: WarnResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.scores[result.scores["window"] != "start"].copy()
    s["date"] = pd.to_datetime(s["date"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    flag = s["combined_flag"].to_numpy(bool)
    ax.scatter(s["date"][~flag], s["combined"][~flag], s=6, c="#999999", label="not flagged")
    ax.scatter(s["date"][flag], s["combined"][flag], s=10, c="#d62728", label="flagged (combined)")
    thr = s.groupby("window")["combined_threshold"].first()
    ax.step(
        pd.to_datetime(thr.index), thr.to_numpy(), where="post", c="k", lw=0.8, label="threshold"
    )
    for v in VARIANTS:
        hit = s[s["lineage"].isin(v.roots)]
        for _, r in hit.iterrows():
            ax.annotate(
                v.name,
                (r["date"], r["combined"]),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
        if v.who_date and pd.Timestamp(v.who_date) >= s["date"].min():
            ax.axvline(pd.Timestamp(v.who_date), c="#1f77b4", lw=0.6, ls="--")
    ax.set_xlabel("Pango designation date (when the lineage became known)")
    ax.set_ylabel("combined risk score (percentile)")
    ax.set_title("Lineages scored at their cutoff; dashed lines: WHO VOC/VOI dates")
    ax.legend(fontsize=8, loc="lower left")
    png = _png(fig)
    plt.close(fig)
    return png


def write_outputs(
    result: WarnResult,
    out_dir: str | Path,
    *,
    novelty: tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]] | None = None,
) -> Path:
    """Write ``scores.tsv``, ``variants.tsv``, ``alarms.tsv``, ``qc.tsv``, ``summary.json``,
    (``novelty.tsv``, ``novelty_metrics.tsv``) and ``report.html`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "scores.tsv": result.scores,
        "variants.tsv": result.variants,
        "alarms.tsv": result.alarms,
        "qc.tsv": result.qc,
    }
    if novelty is not None:
        files["novelty.tsv"] = novelty[0]
        files["novelty_metrics.tsv"] = novelty[1]
    for name, df in files.items():
        with atomic_output(out / name) as tmp:
            df.to_csv(tmp, sep="\t", index=False)
    summary = {**result.summary, **({"novelty": novelty[2]} if novelty else {})}
    with atomic_output(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=str))
    return write_report(result, out / "report.html", novelty=novelty)


def write_report(
    result: WarnResult,
    path: str | Path,
    *,
    novelty: tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]] | None = None,
) -> Path:
    """Write the HTML report of one backtest."""
    s = result.summary
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>LifeLM early warning</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #ddd}</style></head><body>",
        "<h1>Early warning of variants: walk-forward backtest</h1>",
        f"<p>Model: {html.escape(str(s.get('model', '')))}.</p>",
        "<ul>",
        *(
            f"<li><b>{html.escape(k)}</b>: {html.escape(str(s[k]))}</li>"
            for k in (
                "threshold",
                "combined_definition",
                "grew_definition",
                "oracle",
                "mutation_score",
                "n_known_at_start",
                "n_scored_in_walk",
                "n_windows",
                "n_left_out_undated",
                "n_qc_fail",
            )
            if k in s
        ),
        "</ul>",
        "<h2>Timeline</h2>",
        f"<img alt='timeline' src='data:image/png;base64,{_timeline(result)}'>",
        "<h2>Per-variant flags and lead time (days before the WHO date; negative: after)</h2>",
        "<p>'known at start': designated before the first cutoff, so not testable here. "
        "Oracle columns use Nextclade's retrospective immune-escape / ACE2 scores: a reference, "
        "not a fair baseline.</p>",
        _table(variant_matrix(result.variants)),
        "<h2>Precursors: the variant root's parent flagged when it appeared</h2>",
        _table(
            result.variants.loc[
                result.variants["parent_flag_date"].notna()
                & (result.variants["parent_flag_date"] != ""),
                ["variant", "method", "parent", "parent_flag_date", "parent_lead_days_vs_who"],
            ]
        ),
        "<h2>False alarms and hits by method</h2>",
        _table(result.alarms),
    ]
    if novelty is not None:
        parts += [
            "<h2>Unseen-lineage flagging (GenBank genomes, train before the cutoff)</h2>",
            f"<p>{html.escape(json.dumps({k: novelty[2][k] for k in ('n_train', 'n_query', 'novel_clades', 'calibration') if k in novelty[2]}, default=str))}</p>",
            _table(novelty[1]),
        ]
    top = result.scores[result.scores["window"] != "start"].sort_values("combined", ascending=False)
    cols = [
        "lineage",
        "date",
        "parent",
        "combined",
        "model_surprise",
        "embedding_novelty",
        "mutation_score",
        "new_spike_mutations",
        "nn_distance",
        "combined_flag",
    ]
    parts += [
        "<h2>Highest combined scores</h2>",
        _table(top[[c for c in cols if c in top.columns]], 40),
    ]
    failed = result.qc[result.qc["qc_status"] == "fail"]
    if len(failed):
        parts += ["<h2>Genomes not scored (QC)</h2>", _table(failed)]
    parts.append("</body></html>")
    path = Path(path)
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(parts))
    return path


__all__ = ["markdown_table", "variant_matrix", "write_outputs", "write_report"]
