"""One call from files to loop folders: what ``lifelm lab run`` does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lifelm._core.errors import InputError
from lifelm._core.runfolder import check_output_path
from lifelm.lab.features import (
    ALL_SOURCES,
    SOURCES,
    GeneFeatures,
    combine,
    embedding_features,
    expression_features,
)
from lifelm.lab.loop import LoopConfig, LoopResult, run_loop
from lifelm.lab.screens import Direction, Screen, load_screen

SETTINGS = ("screen", "perturbseq")


def detect_setting(path: str | Path, setting: str | None) -> str:
    """``setting`` if given, else ``perturbseq`` for an ``.h5ad`` and ``screen`` otherwise."""
    if setting is None:
        return "perturbseq" if Path(path).suffix == ".h5ad" else "screen"
    if setting not in SETTINGS:
        raise InputError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    return setting


def parse_subset(items: Sequence[str]) -> dict[str, str]:
    """``["dataset=norman19"]`` -> ``{"dataset": "norman19"}`` (clear error otherwise)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--subset {item!r}: write KEY=VALUE (e.g. dataset=norman19)")
        out[key.strip()] = value.strip()
    return out


def read_pool(path: str | Path, *, perturbations: bool = False) -> list[str]:
    """Candidate genes, one a line (``#`` comments and blank lines skipped); with
    ``perturbations`` pairs are written in canonical order (``B+A`` -> ``A+B``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pool file not found")
    genes = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    genes = [g for g in genes if g]
    if perturbations:
        from lifelm.data.cells.perturbation import canonical_label

        genes = [canonical_label(g) for g in genes]
    return genes


def run_lab(
    screen_path: str | Path,
    out_dir: str | Path,
    *,
    hits: str | Path | None = None,
    direction: Direction = "both",
    strategies: Sequence[str] = ("random", "ucb_thompson"),
    rounds: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    expression: str | Path | None = None,
    model: str | Path | None = None,
    pool: str | Path | None = None,
    backend: str = "simulated",
    positive_control: str | None = None,
    noise_sd: float | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    setting: str | None = None,
    surrogate: str = "forest",
    mc_samples: int = 32,
    perturbation_key: str = "perturbation",
    control: Sequence[str] | None = None,
    subset: Mapping[str, str] | None = None,
    gi_map: str | Path | None = None,
    top_fraction: float = 0.1,
    synergy_quantile: float = 0.1,
) -> dict[str, LoopResult]:
    """Load the screen (a CSV, or a Perturb-seq ``.h5ad`` with ``setting="perturbseq"``), build
    features, run one loop per strategy in ``OUT/<strategy>``."""
    out = check_output_path(out_dir, kind="folder")
    kind = detect_setting(screen_path, setting)
    perturbseq = kind == "perturbseq"
    if not perturbseq and (gi_map is not None or subset or control):
        raise InputError("--gi-map, --subset and --control belong to --setting perturbseq")
    configs = [
        LoopConfig(
            strategy=s,
            rounds=rounds,
            batch_size=batch_size,
            seed=seed,
            backend=backend,
            positive_control=positive_control,
            noise_sd=noise_sd,
            surrogate=surrogate,
            mc_samples=mc_samples,
            feature_sources=ALL_SOURCES if perturbseq else SOURCES,
        )
        for s in dict.fromkeys(strategies)
    ]
    if not configs:
        raise InputError("give at least one strategy")
    screen: Screen
    if perturbseq:
        from lifelm.lab.perturbseq import load_perturbseq

        if hits is not None:
            raise InputError(
                "--hits does not apply to Perturb-seq: the hits are the strongest --top-fraction "
                "of the pool by measured effect"
            )
        screen = load_perturbseq(
            screen_path,
            perturbation_key=perturbation_key,
            control=control,
            subset=subset,
            top_fraction=top_fraction,
            gi_map=gi_map,
            synergy_quantile=synergy_quantile,
        )
    else:
        screen = load_screen(screen_path, hits=hits, direction=direction)
    pool_genes = read_pool(pool, perturbations=perturbseq) if pool is not None else None
    # features describe genes; in the Perturb-seq setting, the targets of each perturbation
    target_genes = screen.genes
    if perturbseq:
        from lifelm.data.cells.perturbation import components

        target_genes = np.asarray(sorted({g for p in screen.genes for g in components(str(p))}))
    parts: list[GeneFeatures] = []
    if expression is not None:
        import anndata as ad

        try:
            adata = ad.read_h5ad(expression)
        except OSError as e:
            raise InputError(f"{expression}: not a readable .h5ad ({e})") from None
        parts.append(expression_features(target_genes, adata))
    if model is not None:
        parts.append(embedding_features(target_genes, model))
    features = combine(*parts) if parts else None
    if perturbseq:
        from lifelm.lab.perturbseq import PerturbScreen, perturbation_features

        assert isinstance(screen, PerturbScreen)
        features = perturbation_features(screen, features)
    inputs = {
        "screen": screen_path,
        "hits": hits,
        "expression": expression,
        "model": model,
        "pool": pool,
        "gi_map": gi_map,
    }
    results = {}
    for cfg in configs:
        results[cfg.strategy] = run_loop(
            screen,
            out / cfg.strategy,
            config=cfg,
            features=features,
            pool=pool_genes,
            resume=resume,
            stop_after=stop_after,
            inputs=inputs,
        )
    return results
