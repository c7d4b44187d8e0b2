"""HTML reports for in-silico perturbation and target search (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figures(genes: pd.DataFrame, per_cell: pd.DataFrame, top: int) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    names = genes["gene"].head(top).tolist()
    if len(per_cell) and names:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4))
        data = [per_cell.loc[per_cell["gene"] == g, "score"].to_numpy() for g in names]
        null = [per_cell.loc[per_cell["gene"] == g, "null"].to_numpy() for g in names]
        x = np.arange(len(names))
        ax.boxplot(null, positions=x - 0.2, widths=0.35, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#dddddd"})  # fmt: skip
        ax.boxplot(data, positions=x + 0.2, widths=0.35, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#7fb3d5"})  # fmt: skip
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, names, rotation=60, ha="right")
        ax.set_ylabel("shift toward goal (fraction of axis)")
        ax.set_title("Top genes: per-cell shift (blue) vs matched random genes (grey)")
        figs.append(("Shift distributions of the top genes", _png(fig)))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    eff = genes["effect"].to_numpy(dtype=float)
    ax.hist(eff[np.isfinite(eff)], bins=50, color="#7fb3d5")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("effect vs matched null (fraction of start->goal axis)")
    ax.set_ylabel("genes")
    figs.append(("Effect distribution over all candidates", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    p = genes["p"].to_numpy(dtype=float)
    ok = np.isfinite(p) & np.isfinite(eff)
    ax.scatter(eff[ok], -np.log10(np.maximum(p[ok], 1e-300)), s=6,
               c=np.where(genes["q"].to_numpy()[ok] < 0.05, "#c0392b", "#999999"))  # fmt: skip
    ax.set_xlabel("effect")
    ax.set_ylabel("-log10 p")
    ax.set_title("Volcano (red: FDR < 0.05)")
    figs.append(("Volcano plot", _png(fig)))
    plt.close(fig)
    if "de_log2fc" in genes:
        fig, ax = plt.subplots(figsize=(6, 4))
        lfc = genes["de_log2fc"].to_numpy(dtype=float)
        ok = np.isfinite(lfc) & np.isfinite(eff)
        ax.scatter(lfc[ok], eff[ok], s=6, color="#555555")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("DE: pseudobulk log2 fold change, goal - start")
        ax.set_ylabel("in-silico effect")
        ax.set_title("Model ranking vs the differential-expression baseline")
        figs.append(("In-silico effect vs differential expression", _png(fig)))
        plt.close(fig)
    return figs


# Long only because of its docstring and signature; the body is under 80 lines.
def targets_report(result: dict[str, Any], path: str | Path, *, top: int = 20) -> Path:
    """Write an HTML report of a target search (``adata.uns["lifelm_targets"]``).

    Parameters
    ----------
    result
        The dict written by :func:`lifelm.tasks.cells.targets.rank_targets`.
    path
        The ``.html`` file.
    top
        Genes shown in the table and the shift plot.
    """
    genes: pd.DataFrame = result["genes"]
    per_cell: pd.DataFrame = result.get("per_cell", pd.DataFrame())
    params = result.get("params", {})
    figs = _figures(genes, per_cell, top)
    n_sig = int((genes["q"] < 0.05).sum())
    esc = html.escape

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, float_format=lambda v: f"{v:.3g}")

    start, goal = esc(str(params.get("start", ""))), esc(str(params.get("goal", "")))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>LifeLM target search</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px "
        "solid #ddd;text-align:right}.verdict{font-size:17px;padding:8px;background:#f4f4f4}"
        ".warn{color:#a04000}</style></head><body>",
        "<h1>In-silico target search</h1>",
    ]
    if "verdict" in result:
        parts.append(f"<p class='verdict'><b>{esc(str(result['verdict']))}</b></p>")
    parts += [
        f"<p>{esc(str(params.get('kind', '')))} of each candidate in "
        f"{params.get('n_scanned', params.get('n_cells', '?'))} scanned cells; effect = fraction "
        f"of the way from the <b>{start}</b> to the <b>{goal}</b> centroid, minus "
        f"{params.get('n_null', '?')} random genes of matched expression per gene. "
        f"{len(genes)} candidates, {n_sig} at BH FDR &lt; 0.05 in silico"
        + (
            f", {int((genes['de_q'] < 0.05).sum())} by differential expression"
            if "de_q" in genes
            else ""
        )
        + ".</p>",
    ]
    for name, d in result.get("design", {}).items():
        parts.append(f"<p>Test ({esc(str(name))}): {esc(str(d.get('description', '')))}.</p>")
    for w in result.get("warnings", []):
        parts.append(f"<p class='warn'>Warning: {esc(str(w))}</p>")
    comp = result.get("comparison")
    if isinstance(comp, pd.DataFrame) and len(comp):
        parts += [
            "<h2>Which ranking to trust on these data</h2>",
            "<p>Each ranking was computed on one half of the units (donors or pseudo-replicates) "
            "and compared (Spearman) with the expression shift observed in the other half, both "
            f"ways. Mean: in silico {result.get('agreement_insilico', float('nan')):.3f}, "
            f"differential expression {result.get('agreement_de', float('nan')):.3f}; "
            f"the table is ranked by <b>{esc(str(result.get('method', '')))}</b> "
            f"(--method {esc(str(params.get('method', '')))}). "
            f"DE baseline: {esc(str(params.get('de_method', '')))}.</p>",
            table(comp),
        ]
    parts += [
        "<h2>Top genes (ranked by " + esc(str(result.get("method", "effect"))) + ")</h2>",
        table(genes.head(top)),
    ]
    if "rank_de" in genes:
        de_cols = [c for c in ("group", "gene", "rank_de", "de_log2fc", "de_p", "de_q",
                               "rank_insilico", "effect", "q") if c in genes]  # fmt: skip
        parts += [
            "<h2>Differential-expression ranking (baseline)</h2>",
            table(genes.sort_values("rank_de")[de_cols].head(top)),
        ]
    if "pairs" in result and len(result["pairs"]):
        parts += [
            "<h2>Pairs</h2>",
            result["pairs"].head(top).to_html(index=False, float_format=lambda v: f"{v:.3g}"),
        ]
    for title, b64 in figs:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
