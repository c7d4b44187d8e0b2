"""Evidence-integration target ranking: independent per-gene scores in [0, 1], then aggregates.

Each score is a percentile rank (average ranks for ties, divided by the number of genes that have
that evidence) so 1 = strongest evidence; a gene without that evidence gets NaN, never a guess.

Scores (column ``score:<source>``):

* ``prior_hits``: the measured effect of genes tested in earlier rounds;
* ``predicted_effect``: the loop model's predicted effect of untested genes (random-forest
  ensemble mean on the gene features, refitted on all rounds);
* ``expression``: detected fraction of the gene in the single-cell data the features came from;
* ``differential_expression``: :func:`differential_expression` between two states (Wilcoxon
  rank-sum over cells, or Welch t-test over per-donor pseudobulks when donors are given);
* ``coexpression_centrality``: :func:`coexpression_centrality` around a signature;
* ``in_silico`` / any other: a caller-supplied per-gene score (e.g. ``lifelm cells targets``'
  in-silico perturbation score, or the response model's predicted effect).

Aggregates: ``rank_mean`` (mean of the available scores) and ``learned`` (logistic regression of
"tested and among the top decile of measured effects" on the other scores that cover most tested
genes, fitted on the tested genes only; NaN with a note in ``learned_note`` when fewer than 5
positives exist or no other source scores the tested genes; the loop's predicted effect exists
for untested genes only, so it enters ``rank_mean`` but not ``learned``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from lifelm._core.errors import InputError
from lifelm.lab.features import GeneFeatures


def percentile_score(values: pd.Series, genes: Sequence[str]) -> np.ndarray:
    """Percentile ranks in (0, 1] of ``values`` aligned to ``genes`` (NaN where absent)."""
    v = pd.Series(values, dtype=float).dropna()
    v = v[~v.index.duplicated()]
    out = np.full(len(genes), np.nan)
    if v.empty:
        return out
    r = pd.Series(stats.rankdata(v.to_numpy()) / len(v), index=v.index)
    aligned = r.reindex(list(genes))
    return aligned.to_numpy(float)


def differential_expression(
    adata,
    *,
    key: str,
    groups: tuple[str, str],
    donor_key: str | None = None,
) -> tuple[pd.Series, str]:
    """Per-gene evidence of differential expression between two states (-log10 p; larger = stronger).

    Returns the series (index = gene symbols) and the name of the test used.
    """
    import scipy.sparse as sp

    if key not in adata.obs:
        raise InputError(
            f"obs[{key!r}] not found; available: {', '.join(map(str, adata.obs.columns))}"
        )
    a, b = groups
    lab = adata.obs[key].astype(str).to_numpy()
    for g in (a, b):
        if (lab == g).sum() < 3:
            raise InputError(f"state {g!r} of obs[{key!r}] has fewer than 3 cells")
    X = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    lib = np.asarray(X.sum(axis=1)).ravel()
    lib[lib == 0] = 1
    Xn = sp.diags(1e4 / lib) @ X
    Xn.data = np.log1p(Xn.data)
    genes = np.asarray(adata.var_names).astype(str)
    if donor_key is not None:
        if donor_key not in adata.obs:
            raise InputError(f"obs[{donor_key!r}] (donors) not found")
        donors = adata.obs[donor_key].astype(str).to_numpy()
        pb = {}
        for g in (a, b):
            rows = []
            for d in np.unique(donors[lab == g]):
                m = (lab == g) & (donors == d)
                rows.append(np.asarray(Xn[m].mean(axis=0)).ravel())
            if len(rows) < 2:
                raise InputError(f"state {g!r}: fewer than 2 donors; a pseudobulk test needs ≥ 2")
            pb[g] = np.vstack(rows)
        _, p = stats.ttest_ind(pb[a], pb[b], axis=0, equal_var=False)
        test = f"Welch t-test on per-donor pseudobulk log-normalised means ({donor_key})"
    else:
        A, B = Xn[lab == a].toarray(), Xn[lab == b].toarray()
        _, p = stats.mannwhitneyu(A, B, axis=0, alternative="two-sided")
        test = "Wilcoxon rank-sum over cells (cells are not independent replicates; give donors when present)"
    p = np.where(np.isfinite(p), p, 1.0)
    return pd.Series(-np.log10(np.maximum(p, 1e-300)), index=genes), test


def coexpression_centrality(adata, signature: Sequence[str], *, max_genes: int = 3000) -> pd.Series:
    """Mean |Pearson correlation| of each gene with the signature genes over cells."""
    import scipy.sparse as sp

    genes = np.asarray(adata.var_names).astype(str)
    sig = [g for g in signature if g in set(genes)]
    if len(sig) < 2:
        raise InputError("co-expression centrality needs ≥ 2 signature genes present in the data")
    X = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    lib = np.asarray(X.sum(axis=1)).ravel()
    lib[lib == 0] = 1
    Xn = sp.diags(1e4 / lib) @ X
    Xn.data = np.log1p(Xn.data)
    var = (
        np.asarray(Xn.multiply(Xn).mean(axis=0)).ravel() - np.asarray(Xn.mean(axis=0)).ravel() ** 2
    )
    keep = np.argsort(-var)[:max_genes]
    keep = np.union1d(keep, [int(np.where(genes == g)[0][0]) for g in sig])
    D = Xn[:, keep].toarray()
    D = (D - D.mean(0)) / (D.std(0) + 1e-12)
    S = D[:, [int(np.where(genes[keep] == g)[0][0]) for g in sig]]
    corr = D.T @ S / D.shape[0]
    return pd.Series(np.abs(corr).mean(axis=1), index=genes[keep])


def evidence_table(
    genes: Sequence[str],
    *,
    observed_effect: pd.Series | None = None,
    predicted_effect: pd.Series | None = None,
    features: GeneFeatures | None = None,
    scores: Mapping[str, pd.Series] | None = None,
) -> pd.DataFrame:
    """Per-gene evidence scores, their sources, and the two aggregates (see the module docstring)."""
    genes = [str(g) for g in genes]
    df = pd.DataFrame({"gene": genes})
    cols: dict[str, np.ndarray] = {}
    if observed_effect is not None:
        cols["prior_hits"] = percentile_score(observed_effect, genes)
    if predicted_effect is not None:
        cols["predicted_effect"] = percentile_score(predicted_effect, genes)
    if features is not None and "expression:detected" in features.columns:
        j = features.columns.index("expression:detected")
        present = features.matrix[:, features.columns.index("expression:present")] > 0
        det = pd.Series(np.where(present, features.matrix[:, j], np.nan), index=features.genes)
        cols["expression"] = percentile_score(det, genes)
    for name, s in (scores or {}).items():
        cols[name] = percentile_score(s, genes)
    if not cols:
        raise InputError(
            "no evidence given: pass observed or predicted effects, features or scores"
        )
    for name, v in cols.items():
        df[f"score:{name}"] = v
    M = np.column_stack(list(cols.values()))
    df["n_sources"] = np.isfinite(M).sum(axis=1)
    n = df["n_sources"].to_numpy()
    total = np.where(np.isfinite(M), M, 0.0).sum(axis=1)
    df["rank_mean"] = np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)
    df["learned"], note = _learned(cols, observed_effect, genes)
    df["learned_note"] = note
    df["sources"] = [
        ",".join(n for n, v in cols.items() if np.isfinite(v[i])) for i in range(len(genes))
    ]
    return df.sort_values(
        "rank_mean", ascending=False, na_position="last", kind="stable"
    ).reset_index(drop=True)


def _learned(
    cols: dict[str, np.ndarray], observed: pd.Series | None, genes: list[str]
) -> tuple[np.ndarray, str]:
    from sklearn.linear_model import LogisticRegression

    nan = np.full(len(genes), np.nan)
    if observed is None:
        return nan, "no learned combination: needs observed effects"
    obs = pd.Series(observed, dtype=float).reindex(genes)
    tested = obs.notna().to_numpy()
    # only sources that score most tested genes can be weighed on them (the loop's predicted
    # effect exists for untested genes only, so it cannot enter the learned combination)
    others = {
        k: v
        for k, v in cols.items()
        if k != "prior_hits" and tested.any() and np.isfinite(v[tested]).mean() >= 0.5
    }
    left = sorted(set(cols) - set(others) - {"prior_hits"})
    if not others:
        return nan, "no learned combination: no other source scores the tested genes" + (
            f" (left out: {', '.join(left)})" if left else ""
        )
    y = (obs >= obs.quantile(0.9)).to_numpy() & tested
    if y.sum() < 5 or (tested & ~y).sum() < 5:
        return nan, "no learned combination: fewer than 5 tested hits or non-hits"
    X = np.column_stack([np.nan_to_num(v, nan=0.5) for v in others.values()])
    model = LogisticRegression(max_iter=1000).fit(X[tested], y[tested])
    coef = ", ".join(f"{k} {c:+.2f}" for k, c in zip(others, model.coef_[0], strict=True))
    return model.predict_proba(X)[
        :, 1
    ], f"logistic regression on tested genes (top decile = hit): {coef}"
