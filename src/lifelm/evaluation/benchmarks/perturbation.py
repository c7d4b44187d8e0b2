"""``lifelm bench perturbation``: every baseline (and the response model) on every split and dataset.

For each dataset, split kind and seed: build the split, fit every method on the training
conditions, predict each held-out condition, score it against the real cells, and add the
noise ceiling (half of the real cells predicting the other half). Per seed, metrics are averaged
over the held-out conditions; the table reports mean ± sd over seeds.

Per-cell samples for the energy distance: a baseline's samples are the context's control cells
shifted by its predicted delta; a method with ``sample_cells(condition, n)`` gives its own. Cells
are compared in a PCA space (30 PCs) fitted on the training cells of the split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from lifelm._core.progress import track
from lifelm._core.runtime import get_logger
from lifelm.data.cells.perturbation import (
    PerturbationData,
    PerturbationSplit,
    Preset,
    SplitKind,
    components,
    make_split,
    read_perturbation,
    split_condition,
)
from lifelm.evaluation.baselines.perturbation import PerturbationMethod, default_baselines
from lifelm.evaluation.metrics.perturbation import (
    energy_distance,
    noise_ceiling,
    score_predictions,
    top_de_genes,
)

log = get_logger("lifelm.bench.perturbation")
METRICS = ("pearson", "pearson_de", "mse", "mse_de", "de_overlap", "discrimination", "energy")
HIGHER_IS_BETTER = {"pearson": True, "pearson_de": True, "de_overlap": True, "discrimination": True,
                    "mse": False, "mse_de": False, "energy": False}  # fmt: skip
CEILING = "noise_ceiling"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: where it is and which splits make sense for it."""

    name: str  # row label
    path: str  # relative to the shared data root
    preset: Preset  # read_perturbation preset
    splits: tuple[SplitKind, ...]  # split kinds run on it
    subset: tuple[tuple[str, str], ...] = ()  # (obs column, value) filters
    test_fraction: float = 0.25  # share of eligible perturbations held out


DATASETS: dict[str, DatasetSpec] = {
    "norman19": DatasetSpec(
        "norman19",
        "singlecell/perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad",
        "perturbench",
        ("unseen_single", "unseen_combo"),
        subset=(("dataset", "norman19"),),
        test_fraction=0.4,
    ),
    "mcfaline23": DatasetSpec(
        "mcfaline23",
        "singlecell/perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad",
        "perturbench",
        ("unseen_single", "unseen_context"),
        subset=(("dataset", "mcfaline23"),),
        test_fraction=0.34,
    ),
    "papalexi21": DatasetSpec(
        "papalexi21",
        "singlecell/perturbation/papalexi2021_eccite_thp1_sceptre_299genes.h5ad",
        "papalexi",
        ("unseen_single",),
        test_fraction=0.25,
    ),
    "kang18": DatasetSpec(
        "kang18",
        "singlecell/kang2018/kang2018_ifnb_scgen_valid_counts.h5ad",
        "kang",
        ("unseen_context",),
    ),
}


def load_dataset(spec: DatasetSpec, data_root: str | Path) -> PerturbationData:
    """Read and normalise one benchmark dataset."""
    adata = read_perturbation(Path(data_root) / spec.path, spec.preset, subset=dict(spec.subset))
    return PerturbationData.from_anndata(adata, name=spec.name)


def _target_indices(data: PerturbationData, condition: str) -> list[int]:
    index = {g: i for i, g in enumerate(data.genes)}
    return [index[g] for g in components(split_condition(condition)[1]) if g in index]


def run_split(
    data: PerturbationData,
    split: PerturbationSplit,
    methods: Sequence[PerturbationMethod],
    *,
    k: int = 20,
    n_boot: int = 5,
    n_pcs: int = 30,
    max_cells: int = 300,
) -> pd.DataFrame:
    """Score every method and the noise ceiling on one split.

    Returns
    -------
    One row per (method, test condition) with the columns of ``METRICS`` plus ``dataset``,
    ``split``, ``seed``, ``method``, ``condition``.
    """
    rng = np.random.default_rng(split.seed)
    test = list(split.test)
    pert_cells = [data.cells(c) for c in test]
    ctrl_cells = [data.control_cells(split_condition(c)[0]) for c in test]
    true = np.stack([p.mean(0) - c.mean(0) for p, c in zip(pert_cells, ctrl_cells, strict=True)])
    de = [top_de_genes(p, c, k) for p, c in zip(pert_cells, ctrl_cells, strict=True)]
    exclude = [_target_indices(data, c) for c in test]
    # PCA for cell-level distances, fitted on training cells only (controls + training conditions)
    cond = data.condition
    train_mask = np.isin(cond, list(split.train)) | (data.perturbation == "control")
    fit_rows = np.flatnonzero(train_mask)
    fit_rows = rng.choice(fit_rows, min(len(fit_rows), 5000), replace=False)
    pca = PCA(n_components=min(n_pcs, len(data.genes) - 1, len(fit_rows) - 1), random_state=0)
    pca.fit(data.x[fit_rows])
    real_emb = [pca.transform(p) for p in pert_cells]

    rows = []
    base = {"dataset": data.name, "split": split.kind, "seed": split.seed}
    for method in methods:
        method.fit(data, split.train)
        preds = [method.predict_delta(c) for c in test]
        ok = [i for i, p in enumerate(preds) if p is not None]
        kept = [p for p in preds if p is not None]
        if not ok:
            continue
        scores = score_predictions(
            np.stack(kept),
            true[ok],
            [de[i] for i in ok],
            exclude=[exclude[i] for i in ok],
        )
        for j, i in enumerate(ok):
            if hasattr(method, "sample_cells"):
                cells = method.sample_cells(test[i], max_cells)
            else:
                cells = ctrl_cells[i] + preds[i]  # (m, G) control cells shifted by the delta
            energy = energy_distance(
                pca.transform(cells), real_emb[i], max_cells=max_cells, seed=split.seed
            )
            rows.append({**base, "method": method.name, "condition": test[i],
                         **{m: scores[m][j] for m in scores}, "energy": energy})  # fmt: skip
    ceiling = noise_ceiling(
        pert_cells, ctrl_cells, k=k, n_boot=n_boot, embed=real_emb, exclude=exclude, seed=split.seed
    )
    for i, c in enumerate(test):
        rows.append(
            {**base, "method": CEILING, "condition": c, **{m: ceiling[m][i] for m in ceiling}}
        )
    return pd.DataFrame(rows)


def run_benchmark(
    data_root: str | Path,
    *,
    datasets: Sequence[str] = tuple(DATASETS),
    seeds: Sequence[int] = (0, 1, 2),
    extra_methods: Callable[[PerturbationData], list[PerturbationMethod]] | None = None,
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Run every method on every (dataset, split, seed); write ``results.csv`` and splits under ``out``.

    Parameters
    ----------
    data_root
        The shared data folder (holding ``singlecell/``).
    datasets
        Names from ``DATASETS``.
    seeds
        Split seeds (>= 3 for a table with a spread).
    extra_methods
        Called per dataset to make further methods (the cell-model linear baseline, the
        response model); fitted afresh on each split.
    out
        Folder for ``results.csv`` and ``splits/*.json``.

    Returns
    -------
    Per (method, condition, seed) metric rows.
    """
    frames = []
    jobs = [
        (name, kind, seed) for name in datasets for kind in DATASETS[name].splits for seed in seeds
    ]
    cache: dict[str, PerturbationData] = {}
    for name, kind, seed in track(jobs, description="perturbation benchmark", total=len(jobs)):
        spec = DATASETS[name]
        if name not in cache:
            cache[name] = load_dataset(spec, data_root)
        data = cache[name]
        split = make_split(data, kind, seed=seed, test_fraction=spec.test_fraction)
        if out is not None:
            split.save(Path(out) / "splits" / f"{name}_{kind}_seed{seed}.json")
        methods: list[PerturbationMethod] = [*default_baselines()]
        if extra_methods is not None:
            methods += extra_methods(data)
        log.info("%s %s seed %d: %s", name, kind, seed, split.note)
        frames.append(run_split(data, split, methods))
    results = pd.concat(frames, ignore_index=True)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        results.to_csv(Path(out) / "results.csv", index=False)
    return results


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over held-out conditions per seed, then mean and sd over seeds.

    Returns
    -------
    One row per (dataset, split, method) with ``<metric>_mean``, ``<metric>_sd`` and ``n_seeds``.
    """
    metrics = [m for m in METRICS if m in results]
    per_seed = results.groupby(["dataset", "split", "method", "seed"], sort=False)[metrics].mean()
    agg = per_seed.groupby(level=[0, 1, 2], sort=False).agg(["mean", "std"])
    agg.columns = [f"{m}_{s.replace('std', 'sd')}" for m, s in agg.columns]
    agg["n_seeds"] = per_seed.groupby(level=[0, 1, 2], sort=False).size()
    return agg.reset_index()


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
    """A markdown table with ``mean ± sd`` cells; the best non-ceiling method per block is bold."""
    cols = [m for m in metrics if f"{m}_mean" in summary]
    arrows = {m: "↑" if HIGHER_IS_BETTER[m] else "↓" for m in cols}
    lines = [
        "| dataset | split | method | " + " | ".join(f"{m} {arrows[m]}" for m in cols) + " |",
        "|" + "---|" * (3 + len(cols)),
    ]
    for (ds, sp), block in summary.groupby(["dataset", "split"], sort=False):
        models = block[block["method"] != CEILING]
        best = {}
        for m in cols:
            vals = models[f"{m}_mean"]
            if vals.notna().any():
                best[m] = vals.idxmax() if HIGHER_IS_BETTER[m] else vals.idxmin()
        for idx, row in block.iterrows():
            cells = []
            for m in cols:
                mean, sd = row[f"{m}_mean"], row[f"{m}_sd"]
                text = "n/a" if pd.isna(mean) else f"{mean:.3f} ± {0.0 if pd.isna(sd) else sd:.3f}"
                cells.append(f"**{text}**" if best.get(m) == idx else text)
            lines.append(f"| {ds} | {sp} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(
    summary: pd.DataFrame,
    path: str | Path,
    metrics: Sequence[str] = ("pearson", "pearson_de", "discrimination", "energy"),
) -> Path:
    """Bar charts (mean ± sd over seeds) per dataset/split for a few metrics; PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(summary.groupby(["dataset", "split"], sort=False))
    fig, axes = plt.subplots(
        len(metrics), len(blocks), figsize=(3.2 * len(blocks), 2.6 * len(metrics)), squeeze=False
    )
    for j, ((ds, sp), block) in enumerate(blocks):
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            ax.bar(range(len(block)), block[f"{m}_mean"].fillna(0), yerr=block[f"{m}_sd"].fillna(0),
                   color=["0.6" if x == CEILING else "C0" for x in block["method"]])  # fmt: skip
            ax.set_xticks(range(len(block)), block["method"], rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{ds} {sp}" if i == 0 else "", fontsize=8)
            if j == 0:
                ax.set_ylabel(m)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def model_methods(
    model: str | Path, *, response_epochs: int = 300
) -> Callable[[PerturbationData], list[PerturbationMethod]]:
    """Methods that need the pretrained cell model: the cell-model linear baseline and the response model.

    The cell model's features are computed once per dataset (from control cells only, so no
    held-out perturbed cell is embedded) and reused across splits and seeds.
    """
    from lifelm.evaluation.baselines.perturbation import Linear
    from lifelm.tasks.cells.embed import as_cell_model
    from lifelm.tasks.cells.respond import (
        CellModelFeatures,
        PerturbationResponder,
        ResponseTrainConfig,
        cell_model_features,
    )

    cm = as_cell_model(model, "cpu")
    cache: dict[str, CellModelFeatures] = {}

    def make(data: PerturbationData) -> list[PerturbationMethod]:
        if data.name not in cache:
            cache[data.name] = cell_model_features(cm, data)
        feats = cache[data.name]
        return [
            Linear(gene_embeddings=feats.gene_vectors, name="linear_cellmodel"),
            PerturbationResponder(feats, ResponseTrainConfig(epochs=response_epochs)),
        ]

    return make


def run_cli(
    data_root: str | Path,
    out: str | Path,
    *,
    datasets: Sequence[str] = tuple(DATASETS),
    seeds: int = 3,
    model: str | Path | None = None,
    response_epochs: int = 300,
) -> str:
    """Everything ``lifelm bench perturbation`` does: run, summarise, write table and plot."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")
    extra = model_methods(model, response_epochs=response_epochs) if model is not None else None
    results = run_benchmark(
        data_root, datasets=datasets, seeds=range(seeds), extra_methods=extra, out=out
    )
    summary = summarize(results)
    summary.to_csv(Path(out) / "summary.csv", index=False)
    table = markdown_table(summary)
    (Path(out) / "table.md").write_text(table)
    plot_summary(summary, Path(out) / "summary.png")
    return table
