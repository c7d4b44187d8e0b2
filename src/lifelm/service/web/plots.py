"""Pictures of results, drawn on the server as SVG with matplotlib (no JavaScript charting).

Each function returns SVG text. Expensive ones (the UMAP of an embedding) cache what they
computed in the job's folder (``<job>/web/``, beside ``out/`` so the job's artifacts stay what
the job wrote).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figure(w: float, h: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: readable, searchable, scalable
    return plt.subplots(figsize=(w, h))


def budget_svg(entries: list[dict[str, Any]], budget: dict[str, float]) -> str:
    """CPU hours charged over time (the ledger, cumulative) against the project's budget."""
    fig, ax = _figure(6.4, 2.6)
    import datetime as dt

    times = [dt.datetime.fromisoformat(e["at"].rstrip("Z")) for e in entries if e.get("at")]
    used = np.cumsum([float(e["cpu_hours"]) for e in entries if e.get("at")])
    if times:
        # from nothing charged just before the first entry, up to now
        now = max(dt.datetime.now(dt.UTC).replace(tzinfo=None), times[-1])
        pad = max((now - times[0]) * 0.05, dt.timedelta(minutes=2))
        xs = [times[0] - pad, *times, now]
        ys = [0.0, *used, float(used[-1])]
        ax.step(xs, ys, where="post", color="#1f5fa8", label="CPU hours charged")
        ax.plot(times, used, "o", color="#1f5fa8", markersize=3)
        ax.set_xlim(xs[0], now + pad)
        ax.annotate(f"{used[-1]:.3g} h charged", (now, float(used[-1])), textcoords="offset points",
                    xytext=(-4, 6), ha="right", fontsize=8, color="#1f5fa8")  # fmt: skip
    ax.axhline(budget["cpu_hours"], color="#b3261e", linestyle="--", label="budget")
    if budget.get("cpu_hours_held"):
        top = (used[-1] if len(used) else 0.0) + budget["cpu_hours_held"]
        ax.axhline(top, color="#8a6d00", linestyle=":", label="charged + held by queued/running")
    ax.set_ylabel("CPU hours")
    ax.set_ylim(0, max(budget["cpu_hours"], float(used[-1]) if len(used) else 0.0) * 1.1 or 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    if not times:
        ax.text(0.5, 0.5, "nothing charged yet", transform=ax.transAxes, ha="center")
        ax.set_xticks([])
    fig.autofmt_xdate()
    return _svg(fig)


def loss_svg(metrics: Path, baseline: float | None) -> str:
    """Training loss per logged step (and held-out loss), next to the uniform-guess baseline."""
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    fig, ax = _figure(6.4, 3.0)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
    held = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r and "step" in r]
    if train:
        ax.plot(*zip(*train, strict=True), color="#1f5fa8", label="training loss")
    if held:
        ax.plot(*zip(*held, strict=True), "s", color="#2e7d32", label="held-out loss")
    if baseline:
        ax.axhline(
            baseline, color="#b3261e", linestyle="--", label=f"uniform guess ln V = {baseline:.2f}"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("masked-gene loss (nats)")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)


def confusion_svg(table: Any) -> str:
    """Row-normalised confusion matrix (``table``: a pandas crosstab, true × predicted)."""
    from lifelm.reports.annotation import draw_confusion

    m = table.to_numpy(dtype=float)
    fig, ax = _figure(1.5 + 0.55 * m.shape[1], 1.2 + 0.45 * m.shape[0])
    draw_confusion(ax, m, [str(r) for r in table.index], [str(c) for c in table.columns])
    return _svg(fig)


def umap_coordinates(h5ad: Path, key: str, cache: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """UMAP of ``.obsm[key]`` (cells with a non-finite embedding left out), cached in ``cache``.

    Returns the coordinates, the mask of cells drawn and the ``.obs`` table.
    """
    import anndata as ad

    adata = ad.read_h5ad(h5ad)
    if key not in adata.obsm:
        raise KeyError(f"{h5ad.name} has no .obsm[{key!r}] (has {list(adata.obsm)})")
    emb = np.asarray(adata.obsm[key], dtype=np.float32)
    ok: np.ndarray = np.asarray(np.isfinite(emb).all(axis=1), dtype=bool)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"umap_{key}.npy"
    if path.is_file():
        xy = np.load(path)
        if len(xy) == int(ok.sum()):
            return xy, ok, adata.obs
    import scanpy as sc

    sub = ad.AnnData(obs=adata.obs.iloc[np.flatnonzero(ok)].copy())
    sub.obsm["rep"] = emb[ok]
    n = sub.n_obs
    sc.pp.neighbors(sub, use_rep="rep", n_neighbors=max(2, min(15, n - 1)), random_state=0)
    sc.tl.umap(sub, random_state=0)
    xy = np.asarray(sub.obsm["X_umap"], dtype=np.float32)
    tmp = cache / f".umap_{key}.npy.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, xy)
    tmp.replace(path)
    return xy, ok, adata.obs


def umap_svg(h5ad: Path, key: str, color: str | None, cache: Path) -> str:
    """The UMAP coloured by ``.obs[color]`` (categories get a legend, numbers a colour bar)."""
    name = "".join(c if c in _SAFE else "_" for c in (color or "none"))
    out = cache / f"umap_{key}__{name}.svg"
    if out.is_file() and out.stat().st_mtime >= h5ad.stat().st_mtime:
        return out.read_text()
    xy, ok, obs = umap_coordinates(h5ad, key, cache)
    fig, ax = _figure(6.0, 4.8)
    if color and color in obs.columns:
        values = obs[color].iloc[np.flatnonzero(ok)]
        numeric = values.dtype.kind in "iuf" and values.nunique() > 20
        if numeric:
            sc_ = ax.scatter(
                xy[:, 0], xy[:, 1], c=values.to_numpy(dtype=float), s=6, cmap="viridis"
            )
            fig.colorbar(sc_, ax=ax, label=color)
        else:
            import matplotlib

            labels = values.astype(str).to_numpy()
            cats = sorted(set(labels))
            cmap = matplotlib.colormaps["tab20"]
            for i, c in enumerate(cats[:40]):
                m = labels == c
                ax.scatter(
                    xy[m, 0], xy[m, 1], s=6, color=cmap(i % 20), label=f"{c} ({int(m.sum())})"
                )
            ax.legend(fontsize=6, markerscale=2, frameon=False, loc="center left",
                      bbox_to_anchor=(1.0, 0.5), title=color)  # fmt: skip
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, color="#1f5fa8")
    dropped = int((~ok).sum())
    note = f"; {dropped} cells without a finite embedding not drawn" if dropped else ""
    ax.set_title(f"UMAP of .obsm['{key}'] ({len(xy)} cells{note})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    svg = _svg(fig)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(svg)
    tmp.replace(out)
    return svg


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number (for templates)."""
    return isinstance(x, int | float) and math.isfinite(x)
