"""Validation of in-silico perturbation against real perturbations, next to simple baselines.

Genetic screens (Papalexi 2021 CRISPR knock-out, Norman 2019 CRISPRa): for each target gene X,

- **observed shift**: mean embedding of the real cells with X perturbed minus the mean embedding of
  the control cells (same model);
- **in-silico shift**: mean over sampled control cells of (embedding after deleting X, or moving
  it to rank 1) minus (embedding before);
- **cosine** between the two, and the **retrieval rank** of X: the observed shift of X is compared
  (cosine) with the in-silico shift of every candidate target; rank 1 = X's own prediction is the
  closest.

Baselines, so that the model earns credit only for what it adds:

- **random**: expected rank ``(n + 1) / 2``; and the *wrong-target* cosine (the in-silico shift of
  the other targets against X's observed shift);
- **own expression (embedding)**: the control cells with only X's counts set to the level seen in
  the perturbed cells (no model perturbation operator; the real change of X alone), embedded;
- **own expression (retrieval)**: the target guessed as the candidate whose own measured expression
  changed most in the expected direction in the perturbed cells (down for knock-out, up for
  activation), no model at all.

Kang 2018 (control vs IFN-beta): :func:`~lifelm.tasks.cells.targets.rank_targets` ranks genes whose
overexpression moves control cells toward stimulated ones; the top of the ranking is compared with
MSigDB HALLMARK_INTERFERON_ALPHA_RESPONSE (packaged with its source, see
:func:`interferon_alpha_genes`), next to a random ranking and the own-expression ranking (genes by
their measured log fold change stim vs ctrl).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from sklearn.metrics import roc_auc_score

from lifelm._core.runtime import get_logger
from lifelm.data.cells.perturbation import CONTROL, Preset
from lifelm.tasks.cells.embed import embed_tokens
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.perturb import ScanConfig, resolve_genes, scan_cells
from lifelm.tasks.cells.targets import rank_targets

log = get_logger("lifelm.insilico")


def interferon_alpha_genes() -> dict:
    """MSigDB HALLMARK_INTERFERON_ALPHA_RESPONSE (97 symbols) with its source and licence."""
    text = (
        resources.files("lifelm.resources") / "hallmark_interferon_alpha_response.json"
    ).read_text()
    return json.loads(text)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else np.nan


def _cp10k(x: sp.spmatrix) -> np.ndarray:
    x = sp.csr_matrix(x, dtype=np.float64)
    tot = np.asarray(x.sum(1)).ravel()
    return np.asarray(sp.diags(1e4 / np.maximum(tot, 1)) @ x.todense())


# Long because it runs the model and both no-model baselines on the same targets and cells, side by side, for one table.
def genetic_validation(
    adata: ad.AnnData,
    model: CellModel,
    *,
    kind: Literal["delete", "overexpress"],
    n_control: int = 100,
    max_perturbed: int = 200,
    seed: int = 0,
    max_tokens: int = 32_768,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-target and summary tables for a schema AnnData (one context, single perturbations).

    Parameters
    ----------
    adata
        Schema AnnData (``read_perturbation``): raw counts, ``.obs["perturbation"]``, symbols.
    model
        The cell model.
    kind
        ``delete`` for knock-out / CRISPRi screens, ``overexpress`` for CRISPRa.
    n_control
        Control cells sampled for the in-silico scan and the own-expression baseline.
    max_perturbed
        Perturbed cells per target embedded for the observed shift.
    seed
        Cell sampling.
    """
    rng = np.random.default_rng(seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    singles = sorted({p for p in labels if p != CONTROL and "+" not in p})
    in_vocab, tokens = [], []
    for g in singles:
        try:
            tokens.append(resolve_genes(model, [g])[0])
            in_vocab.append(g)
        except KeyError:
            log.info("target %s is not in the model vocabulary; skipped", g)
    if len(in_vocab) < 2:
        raise ValueError(f"only {len(in_vocab)} targets are in the model vocabulary")
    ctrl_all = np.flatnonzero(labels == CONTROL)
    ctrl = np.sort(rng.choice(ctrl_all, min(n_control, len(ctrl_all)), replace=False))
    cells = model.tokenizer.encode(adata)
    e_ctrl_all = embed_tokens(model, cells.subset(ctrl_all), progress=False)
    mu_ctrl = np.nanmean(e_ctrl_all, 0)
    observed_rows, n_pert = [], []
    for g in in_vocab:
        idx = np.flatnonzero(labels == g)
        if len(idx) > max_perturbed:
            idx = np.sort(rng.choice(idx, max_perturbed, replace=False))
        observed_rows.append(
            np.nanmean(embed_tokens(model, cells.subset(idx), progress=False), 0) - mu_ctrl
        )
        n_pert.append(len(idx))
    observed = np.stack(observed_rows)  # (n_targets, D)
    # in silico: every candidate target in the sampled control cells
    res = scan_cells(
        model, cells.subset(ctrl), tokens,
        config=ScanConfig(kind=kind, keep_embeddings=True, max_tokens=max_tokens),
        progress=progress,
    )  # fmt: skip
    delta = res.perturbed - res.original[res.cell]
    predicted = np.full_like(observed, np.nan)
    n_cells_pred = np.zeros(len(in_vocab), dtype=int)
    for t in range(len(in_vocab)):
        rows = res.target == t
        n_cells_pred[t] = int(rows.sum())
        if rows.any():
            predicted[t] = delta[rows].mean(0)
    # own-expression baseline in embedding space: only X's counts changed, to the perturbed level
    var_index = {g: i for i, g in enumerate(adata.var_names)}
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    cp = _cp10k(x)
    ctrl_counts = x[ctrl].toarray()
    totals = ctrl_counts.sum(1)
    e_ctrl = res.original[np.arange(len(ctrl))]
    own = np.full_like(observed, np.nan)
    lfc = np.full((len(in_vocab), len(in_vocab)), np.nan)  # [observed target, candidate gene]
    for t, g in enumerate(in_vocab):
        pert_idx = np.flatnonzero(labels == g)
        for c, h in enumerate(in_vocab):
            if h in var_index:
                j = var_index[h]
                lfc[t, c] = np.log1p(cp[pert_idx, j].mean()) - np.log1p(cp[ctrl_all, j].mean())
        if g not in var_index:
            continue
        j = var_index[g]
        level = cp[pert_idx, j].mean()  # CP10k of X in the perturbed cells
        mod = ctrl_counts.copy()
        mod[:, j] = np.rint(level * totals / 1e4)  # integer counts, as the tokenizer expects
        a = ad.AnnData(X=sp.csr_matrix(mod), var=adata.var.copy())
        a.obs_names = [f"c{i}" for i in range(a.n_obs)]
        e_mod = embed_tokens(model, model.tokenizer.encode(a), progress=False)
        own[t] = np.nanmean(e_mod - e_ctrl, 0)
    rows = []
    n = len(in_vocab)
    sign = -1.0 if kind == "delete" else 1.0
    for t, g in enumerate(in_vocab):
        sims = np.array([_cos(observed[t], predicted[c]) for c in range(n)])
        sims_own = np.array([_cos(observed[t], own[c]) for c in range(n)])
        expr_score = sign * lfc[t]

        def rank(s: np.ndarray, t: int = t) -> float:
            if not np.isfinite(s[t]):
                return np.nan
            return float(1 + np.sum(np.nan_to_num(s, nan=-np.inf) > s[t]))

        rows.append(
            {
                "target": g,
                "n_perturbed": n_pert[t],
                "n_control_scanned": n_cells_pred[t],
                "cosine_insilico": sims[t],
                "cosine_wrong_target": float(np.nanmean(np.delete(sims, t))),
                "cosine_own_expression": sims_own[t],
                "cosine_own_wrong_target": float(np.nanmean(np.delete(sims_own, t))),
                "rank_insilico": rank(sims),
                "rank_own_expression_embedding": rank(sims_own),
                "rank_own_expression_measured": rank(expr_score),
                "own_lfc": lfc[t, t],
            }
        )
    per = pd.DataFrame(rows)
    n_meas = int(np.isfinite(np.diag(lfc)).sum())
    methods = [
        ("in-silico (model)", "cosine_insilico", "cosine_wrong_target", "rank_insilico",
         int(np.isfinite(predicted[:, 0]).sum())),
        ("own expression -> embedding", "cosine_own_expression", "cosine_own_wrong_target",
         "rank_own_expression_embedding", int(np.isfinite(own[:, 0]).sum())),
        ("own expression, measured (no model)", None, None, "rank_own_expression_measured", n_meas),
    ]  # fmt: skip
    rows = []
    for name, cos_col, wrong_col, rank_col, n_cand in methods:
        ok = per[rank_col].notna()
        rows.append(
            {
                "method": name,
                "targets_scored": int(ok.sum()),
                "candidates": n_cand,
                "mean_cosine": per.loc[ok, cos_col].mean() if cos_col else np.nan,
                "wrong_target_cosine": per.loc[ok, wrong_col].mean() if wrong_col else np.nan,
                "mean_rank": per.loc[ok, rank_col].mean(),
                "random_mean_rank": (n_cand + 1) / 2,
                "top1": (per.loc[ok, rank_col] == 1).mean(),
                "random_top1": 1 / max(n_cand, 1),
            }
        )
    summary = pd.DataFrame(rows)
    return per, summary


def _donors_in_both(
    adata: ad.AnnData, donor_key: str | None, label_key: str, start: str, goal: str
) -> bool:
    """True when every start and goal cell has a donor (else targets tests pseudo-replicates)."""
    if not donor_key or donor_key not in adata.obs:
        return False
    lab = adata.obs[label_key].astype(str)
    cells = adata.obs.loc[lab.isin([str(start), str(goal)]), donor_key]
    return bool(cells.notna().all())


# Long only because of its docstring and signature; the body is under 80 lines.
def kang_validation(
    adata: ad.AnnData,
    model: CellModel,
    *,
    label_key: str = "condition",
    start: str = "ctrl",
    goal: str = "stim",
    n_cells: int = 50,
    max_candidates: int = 1000,
    n_null: int = 20,
    tops: tuple[int, ...] = (20, 50, 100),
    donor_key: str | None = "donor_geo",
    subset: dict[str, str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Overexpression ranking (ctrl -> stim) vs the IFN-alpha hallmark set, with baselines.

    Returns the ranked gene table and a summary (precision at k, hypergeometric p, AUROC) for the
    model, a random ranking (expected values) and the own-expression ranking (measured log fold
    change stim vs ctrl of each candidate). ``subset`` keeps cells with ``.obs[key] == value``
    (e.g. one cell type, so that the ctrl -> stim axis is not a change of cell-type mix).
    """
    for key, value in (subset or {}).items():
        adata = adata[adata.obs[key].astype(str) == value].copy()
    out = rank_targets(
        adata, model, label_key=label_key, start=start, goal=goal, kind="overexpress",
        n_cells=n_cells, max_candidates=max_candidates, n_null=n_null, seed=seed,
        donor_key=donor_key if _donors_in_both(adata, donor_key, label_key, start, goal) else None,
        device=str(next(model.trunk.parameters()).device), copy=True, progress=progress,
    )  # fmt: skip
    if out is None:  # copy=True returns the annotated copy
        raise RuntimeError("rank_targets(copy=True) returned no AnnData")
    table = out.uns["lifelm_targets"]["genes"].copy()
    ifn = set(interferon_alpha_genes()["genes"])
    sym = (
        adata.var["gene_symbol"]
        if "gene_symbol" in adata.var
        else pd.Series(adata.var_names, index=adata.var_names)
    )
    col = {s: i for i, s in enumerate(sym.astype(str))}
    table["ifn_alpha"] = table["gene"].isin(ifn)
    cp = _cp10k(adata.X)
    lab = adata.obs[label_key].astype(str).to_numpy()
    lfc = []
    for g in table["gene"]:
        j = col.get(g)
        lfc.append(
            np.nan
            if j is None
            else np.log1p(cp[lab == goal, j].mean()) - np.log1p(cp[lab == start, j].mean())
        )
    table["measured_lfc"] = lfc
    n, k_ifn = len(table), int(table["ifn_alpha"].sum())
    rows = []
    rankings = {
        "in-silico overexpression (model, by effect)": table["effect"].to_numpy(),
        "own expression, measured lfc (no model)": table["measured_lfc"].to_numpy(),
    }
    y = table["ifn_alpha"].to_numpy()
    for name, score in rankings.items():
        s = np.nan_to_num(score, nan=-np.inf)
        order = np.argsort(-s, kind="stable")
        row = {"method": name, "n_candidates": n, "ifn_in_candidates": k_ifn}
        for k in tops:
            hits = int(y[order[:k]].sum())
            row[f"precision@{k}"] = hits / k
            row[f"hypergeom_p@{k}"] = float(stats.hypergeom.sf(hits - 1, n, k_ifn, k))
        row["auroc"] = (
            float(roc_auc_score(y, np.nan_to_num(score, nan=np.nanmin(score))))
            if 0 < k_ifn < n
            else np.nan
        )
        rows.append(row)
    rand = {"method": "random ranking (expected)", "n_candidates": n, "ifn_in_candidates": k_ifn}
    for k in tops:
        rand[f"precision@{k}"] = k_ifn / n
        rand[f"hypergeom_p@{k}"] = np.nan
    rand["auroc"] = 0.5
    rows.append(rand)
    fdr_hits = table[(table["q"] < 0.05) & (table["effect"] > 0)]
    summary = pd.DataFrame(rows)
    summary["model_fdr05_genes"] = len(fdr_hits)
    summary["model_fdr05_ifn"] = int(fdr_hits["ifn_alpha"].sum())
    return table, summary


def run_all(
    model_dir: str,
    shared_data: str,
    *,
    n_control: int = 100,
    max_perturbed: int = 200,
    kang_cells: int = 50,
    kang_candidates: int = 1000,
    seed: int = 0,
    min_coverage: float | None = None,
    which: tuple[str, ...] = ("papalexi", "norman", "kang"),
    kang_cell_type: str = "CD4T",
) -> str:
    """Papalexi KO, Norman CRISPRa and Kang IFN-beta validations as one Markdown report.

    ``min_coverage`` overrides the tokenizer's vocabulary-coverage floor (stated in the report):
    a PBMC model covers only about a third of the 500 K562 HVGs of the Norman file.
    """
    from pathlib import Path

    from lifelm.data.cells.perturbation import read_perturbation
    from lifelm.tasks.cells.model_io import load_cell_model

    model = load_cell_model(model_dir, device="cpu")
    if min_coverage is not None:
        model.tokenizer.min_coverage = min_coverage
    base = Path(shared_data) / "singlecell"
    parts = [f"model: `{model_dir}`; seed {seed}; vocabulary coverage floor "
             f"{model.tokenizer.min_coverage:.0%}\n"]  # fmt: skip
    runs: list[tuple[str, Path, Preset, dict[str, str] | None, Literal["delete", "overexpress"]]]
    runs = [
        ("Papalexi 2021 ECCITE-seq CRISPR KO (THP-1), in-silico deletion",
         base / "perturbation/papalexi2021_eccite_thp1_sceptre_299genes.h5ad", "papalexi", None, "delete"),
        ("Norman 2019 CRISPRa (K562, PerturBench 500 HVG), in-silico overexpression",
         base / "perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad", "perturbench",
         {"dataset": "norman19"}, "overexpress"),
    ]  # fmt: skip
    for title, path, preset, subset, kind in runs:
        if preset.replace("perturbench", "norman") not in which:
            continue
        adata = read_perturbation(path, preset, subset=subset)
        per, summary = genetic_validation(
            adata, model, kind=kind, n_control=n_control, max_perturbed=max_perturbed, seed=seed
        )
        parts += [
            f"### {title}\n",
            f"{n_control} control cells scanned, <= {max_perturbed} perturbed cells per target.\n",
            _md(summary),
            "\n<details><summary>per target</summary>\n",
            _md(per),
            "\n</details>\n",
        ]
        print("\n".join(parts[-6:]), flush=True)
    if "kang" not in which:
        return "\n".join(parts)
    # scGen's Kang split: cell types for both conditions, so one type can be taken alone
    kang = ad.read_h5ad(base / "kang2018/kang2018_ifnb_scgen_valid_counts.h5ad")
    table, summary = kang_validation(
        kang, model, n_cells=kang_cells, max_candidates=kang_candidates, seed=seed,
        subset={"cell_type": kang_cell_type},
    )  # fmt: skip
    ifn = interferon_alpha_genes()
    parts += [
        "### Kang 2018 IFN-beta: overexpression ctrl -> stim vs HALLMARK_INTERFERON_ALPHA_RESPONSE\n",
        f"kang2018_ifnb_scgen_valid_counts.h5ad, cell type {kang_cell_type} only; "
        f"{kang_cells} control cells, {len(table)} candidates; gene set: {ifn['collection']}, "
        f"{len(ifn['genes'])} genes ({ifn['copied_from']}).\n",
        _md(summary),
        "\nTop 20 of the model's ranking:\n",
        table.head(20)[["rank", "gene", "effect", "effect_ci_low", "effect_ci_high", "p", "q",
                        "ifn_alpha", "measured_lfc"]].pipe(_md),
    ]  # fmt: skip
    return "\n".join(parts)


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (numbers to 3 significant digits)."""

    def fmt(v: object) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if not np.isfinite(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
