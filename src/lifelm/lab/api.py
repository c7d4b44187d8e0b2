"""One call from files to loop folders: what ``lifelm lab run`` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lifelm._core.errors import InputError
from lifelm._core.runfolder import check_output_path
from lifelm.lab.features import GeneFeatures, combine, embedding_features, expression_features
from lifelm.lab.loop import LoopConfig, LoopResult, run_loop
from lifelm.lab.screens import Direction, load_screen


def read_pool(path: str | Path) -> list[str]:
    """Candidate genes, one a line (``#`` comments and blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pool file not found")
    genes = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [g for g in genes if g]


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
) -> dict[str, LoopResult]:
    """Load the screen, build gene features, run one loop per strategy in ``OUT/<strategy>``."""
    out = check_output_path(out_dir, kind="folder")
    configs = [
        LoopConfig(
            strategy=s,
            rounds=rounds,
            batch_size=batch_size,
            seed=seed,
            backend=backend,
            positive_control=positive_control,
            noise_sd=noise_sd,
        )
        for s in dict.fromkeys(strategies)
    ]
    if not configs:
        raise InputError("give at least one strategy")
    screen = load_screen(screen_path, hits=hits, direction=direction)
    pool_genes = read_pool(pool) if pool is not None else None
    parts: list[GeneFeatures] = []
    if expression is not None:
        import anndata as ad

        try:
            adata = ad.read_h5ad(expression)
        except OSError as e:
            raise InputError(f"{expression}: not a readable .h5ad ({e})") from None
        parts.append(expression_features(screen.genes, adata))
    if model is not None:
        parts.append(embedding_features(screen.genes, model))
    features = combine(*parts) if parts else None
    inputs = {
        "screen": screen_path,
        "hits": hits,
        "expression": expression,
        "model": model,
        "pool": pool,
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
