"""HTML report of a cell-type annotation: what to believe, with the evidence (figures as base64 PNG).

Built from the AnnData that :func:`lifelm.cells.annotate` wrote (``.obs`` columns and
``.uns["lifelm"]["annotate"]``), optionally with an evaluation table next to it:

- the verdict: which method to use, and why (held-out reference accuracy, model vs baselines);
- model vs baselines on held-out reference cells (accuracy, macro-F1, ECE before/after scaling);
- the query, when it has labels: accuracy over all cells, over mapped cells, abstention rate,
  classes the reference lacks;
- UMAP coloured by true and predicted labels; confusion matrix; reliability diagrams.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from lifelm._core.runfolder import atomic_output


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def verdict(info: dict[str, Any]) -> str:
    """One sentence: which method to use for this reference, from the held-out comparison."""
    held = info.get("holdout")
    if not held:
        return (
            "No reference was given, so neither calibration nor the baseline could be checked: "
            "do not rely on these labels without a held-out comparison."
        )
    base, maj = held["logreg_pca"]["accuracy"], held["majority"]["accuracy"]
    model = held.get("model", {}).get("accuracy")
    if max(base, model if model is not None else -1.0) <= maj:
        return (
            f"No method beats the majority class on held-out reference cells ({maj:.3f}): "
            "do not use these labels."
        )
    if model is not None and model > base:
        return (
            f"Use the model: it beats logistic regression on PCA on held-out reference cells "
            f"({model:.3f} vs {base:.3f}; majority {maj:.3f})."
        )
    if model is None:
        return f"Use logistic regression on PCA ({base:.3f} held-out accuracy; majority {maj:.3f})."
    return (
        f"Use logistic regression on PCA (lifelm cells annotate --method baseline): it beats the "
        f"model on held-out reference cells ({base:.3f} vs {model:.3f}; majority {maj:.3f})."
    )


def _table(df: pd.DataFrame) -> str:
    return df.to_html(float_format=lambda v: f"{v:.3f}", border=0, classes="t", na_rep="–")


def _holdout_table(info: dict[str, Any]) -> pd.DataFrame:
    held = info["holdout"]
    rows = {}
    for key, name in (("majority", "majority class"), ("logreg_pca", "PCA + logistic regression"), ("model", f"LifeLM ({info.get('mode', '')})")):  # fmt: skip
        if key in held:
            h = held[key]
            rows[name] = {
                "accuracy": h["accuracy"],
                "macro_f1": h.get("macro_f1", np.nan),
                "ECE before": h.get("ece_before", np.nan),
                "ECE after temperature (cross-fitted)": h.get("ece_scaled", np.nan),
                "temperature used": h.get("temperature", np.nan),
            }
    return pd.DataFrame(rows).T


def _query_table(info: dict[str, Any]) -> pd.DataFrame | None:
    q = info.get("query")
    if not q:
        return None
    rows = {}
    names = {"majority": "majority class", "baseline": "PCA + logistic regression",
             "model": "LifeLM", "used": f"written labels ({info['method']})"}  # fmt: skip
    for key, name in names.items():
        if key in q:
            rows[name] = {
                f"accuracy (all {q['n']})": q[key]["accuracy"],
                f"accuracy (mapped {q['n_mapped']})": q[key]["accuracy_mapped"],
                "accuracy (assigned, mapped)": q[key]["accuracy_assigned_mapped"],
                "Unassigned": q[key]["unassigned_fraction"],
            }
    return pd.DataFrame(rows).T


def draw_confusion(
    ax: Any,
    counts: np.ndarray,
    true: list[str],
    predicted: list[str],
    *,
    true_label: str = "true",
) -> None:
    """Draw a confusion matrix on a matplotlib axis: rows true, columns predicted, shaded by the
    row fraction, each non-zero cell labelled with its count."""
    m = np.asarray(counts, dtype=float)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(m.shape[1]), predicted, rotation=60, ha="right")
    ax.set_yticks(range(m.shape[0]), true)
    ax.set_xlabel("predicted")
    ax.set_ylabel(true_label)


def _scatter(ax: Any, xy: np.ndarray, labels: pd.Series, title: str, colors: dict) -> None:
    for c in sorted(pd.unique(labels.astype(str))):
        m = (labels.astype(str) == c).to_numpy()
        ax.scatter(xy[m, 0], xy[m, 1], s=3, color=colors[c], label=f"{c} ({m.sum()})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=3, loc="best", frameon=False)


def _figures(
    adata: ad.AnnData, info: dict[str, Any], truth_key: str | None, umap: np.ndarray | None
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = info["key_added"]
    figs: list[tuple[str, str]] = []
    if umap is not None:
        panels = [(adata.obs[truth_key], f"true labels ({truth_key})")] if truth_key else []
        panels.append((adata.obs[key], f"predicted ({info['method']}, with Unassigned)"))
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5))
        # one colour per label name across both panels; Unassigned in grey
        names = sorted({str(v) for lab, _ in panels for v in pd.unique(lab.astype(str))})
        cmap = matplotlib.colormaps["tab20"]
        colors: dict[str, str | tuple[float, float, float, float]] = {
            c: cmap(i % 20) for i, c in enumerate(n for n in names if n != "Unassigned")
        }
        colors["Unassigned"] = "#bbbbbb"
        for ax, (lab, title) in zip(np.atleast_1d(axes), panels, strict=True):
            _scatter(ax, umap, lab, title, colors)
        figs.append(("UMAP of the query cells", _png(fig)))
        plt.close(fig)
    conf = info.get("query", {}).get("confusion")
    if conf:
        m = np.asarray(conf["counts"], dtype=float)
        fig, ax = plt.subplots(figsize=(1 + 0.6 * m.shape[1], 1 + 0.5 * m.shape[0]))
        draw_confusion(
            ax, m, conf["true"], conf["predicted"], true_label="true (after the label map)"
        )
        figs.append(
            ("Confusion matrix on the query (rows: true; shading: row fraction)", _png(fig))
        )
        plt.close(fig)
    held = info.get("holdout", {})
    curves = [(k, held[k]) for k in ("logreg_pca", "model") if k in held]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 4), squeeze=False)
        for ax, (k, h) in zip(axes[0], curves, strict=True):
            ax.plot([0, 1], [0, 1], color="k", lw=0.5)
            scaled = h.get("reliability_scaled", h["reliability"])
            used = "" if h.get("temperature_applied", True) else ", not applied"
            t_fit = h.get("temperature_fitted", h["temperature"])
            for rel, label, style in ((h["reliability_before"], f"before (ECE {h['ece_before']:.3f})", "o--"), (scaled, f"T={t_fit:.2f}, cross-fitted (ECE {h.get('ece_scaled', h['ece']):.3f}{used})", "s-")):  # fmt: skip
                c = np.asarray(rel["confidence"], dtype=float)
                a = np.asarray(rel["accuracy"], dtype=float)
                ok = np.isfinite(c) & np.isfinite(a)
                ax.plot(c[ok], a[ok], style, ms=4, label=label)
            ax.set_xlabel("confidence (probability of the predicted class)")
            ax.set_ylabel("accuracy")
            ax.set_title("LifeLM" if k == "model" else "PCA + logistic regression")
            ax.legend(fontsize=7)
        figs.append(("Reliability on held-out reference cells", _png(fig)))
        plt.close(fig)
    return figs


# Long only because of its docstring and signature; the body is under 80 lines.
def write_annotation_report(
    adata: ad.AnnData,
    path: str | Path,
    *,
    truth_key: str | None = None,
    umap: np.ndarray | None = None,
    evaluation: pd.DataFrame | None = None,
    title: str = "LifeLM cell-type annotation",
    notes: list[str] | None = None,
) -> Path:
    """Write the HTML report of an annotated AnnData.

    Parameters
    ----------
    adata
        Query cells annotated by :func:`lifelm.cells.annotate`.
    path
        Output ``.html`` file (written atomically).
    truth_key
        ``.obs`` column with the query's true labels, for the left UMAP panel.
    umap
        2-D coordinates of the query cells (default ``adata.obsm["X_umap"]`` when present).
    evaluation
        An extra table (e.g. ``lifelm.cells.evaluate(...).table``) shown as is.
    title, notes
        Page title and free-text lines shown under the verdict (data source, model).
    """
    info = adata.uns["lifelm"]["annotate"]
    if umap is None and "X_umap" in adata.obsm:
        umap = np.asarray(adata.obsm["X_umap"])[:, :2]
    parts = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        ".t td,.t th{padding:2px 8px;text-align:right}.verdict{font-size:1.2em;"
        "background:#eef5ee;padding:0.6em;border-left:4px solid #3a3}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='verdict'>{html.escape(verdict(info))}</p>",
    ]
    for line in notes or []:
        parts.append(f"<p>{html.escape(line)}</p>")
    if "holdout" in info:
        parts.append("<h2>Held-out reference cells: model next to baselines</h2>")
        parts.append(f"<p>{html.escape(info['split'])}</p>")
        parts.append(_table(_holdout_table(info)))
    parts.append("<h2>Query</h2>")
    parts.append(
        f"<p>{info['n_cells']} cells; labels written by <b>{html.escape(info['method'])}</b> "
        f"(requested: {html.escape(info['method_requested'])}). Unassigned below calibrated "
        f"probability {info['settings']['min_confidence']:g}: {info['unassigned_cells']} "
        f"({info['unassigned_fraction']:.1%})."
        + (
            f" Far from every reference class (novel): {info['novel_cells']} "
            f"({info['novel_fraction']:.1%}; about {info['novelty_expected_fraction']:.0%} of "
            "cells like the reference are flagged by chance)."
            if "novel_cells" in info
            else ""
        )
        + "</p>"
    )
    qt = _query_table(info)
    if qt is not None:
        parts.append(_table(qt))
        unm = dict(zip(*info["query"]["unmapped"].values(), strict=True))
        if unm:
            parts.append(
                "<p>Query classes the reference does not have (counted as errors in 'all'): "
                + html.escape(", ".join(f"{k}: {v}" for k, v in unm.items()))
                + "</p>"
            )
    if evaluation is not None:
        parts.append("<h2>Evaluation table</h2>")
        parts.append(_table(evaluation))
    for caption, png in _figures(adata, info, truth_key, umap):
        parts.append(f"<h3>{html.escape(caption)}</h3><img src='data:image/png;base64,{png}'/>")
    parts.append(
        f"<p style='color:#666'>Model: {html.escape(str(info.get('model') or 'none'))}; "
        f"tokenizer {html.escape(str(info.get('tokenizer_sha256', ''))[:12])}</p></body></html>"
    )
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
