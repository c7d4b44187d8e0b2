"""Masked-gene pretraining of a cell model on one or more h5ad files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from lifelm._core.runfolder import atomic_output
from lifelm._core.runtime import dist_env, get_logger, seed_everything
from lifelm.data.cells.datasets import CellTokens, MaskedGeneCollator
from lifelm.data.cells.tokenizer import RankValueTokenizer, TokenizedCells
from lifelm.data.store.build import CORPUS_FILE
from lifelm.data.store.store import CorpusStore, split_store
from lifelm.io.h5ad import read_h5ad
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells.model_io import sidecar
from lifelm.training.checkpoints import require_checkpoint
from lifelm.training.loop import TrainConfig, TrainResult, train
from lifelm.training.runguard import hold_run_folder

log = get_logger("lifelm.pretrain")
TOKENIZER_FILE = "tokenizer.json"


def _as_adatas(
    data: ad.AnnData | str | Path | Sequence[ad.AnnData | str | Path],
) -> list[ad.AnnData]:
    items = [data] if isinstance(data, ad.AnnData | str | Path) else list(data)
    return [x if isinstance(x, ad.AnnData) else read_h5ad(x, backed=True) for x in items]


def tokenize_corpus(
    adatas: list[ad.AnnData],
    tokenizer: RankValueTokenizer,
    *,
    layer: str | None = None,
    min_genes: int = 10,
) -> tuple[TokenizedCells, dict[str, object]]:
    """Encode every dataset and drop cells with fewer than ``min_genes`` vocabulary genes (counted)."""
    parts = []
    per_dataset: list[dict[str, object]] = []
    dropped_cells = 0
    for adata in adatas:
        cells = tokenizer.encode(adata, layer=layer)
        keep = np.flatnonzero(cells.n_genes >= min_genes)
        dropped = len(cells) - len(keep)
        if dropped:
            log.warning(
                "%s: dropped %d of %d cells with fewer than %d vocabulary genes",
                adata.filename or "AnnData",
                dropped,
                len(cells),
                min_genes,
            )
        dropped_cells += dropped
        per_dataset.append(
            {"source": str(adata.filename or "AnnData"), "n_cells": len(keep), **cells.report}
        )
        parts.append(cells.subset(keep))
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"no cell has at least {min_genes} vocabulary genes; nothing to train on")
    merged = TokenizedCells.concat(parts)
    return merged, {"datasets": per_dataset, "dropped_cells": dropped_cells}


def _store_folder(data: object) -> Path | None:
    """The folder when ``data`` names a finished corpus store (``corpus.json`` inside), else None."""
    if isinstance(data, str | Path) and (Path(data) / CORPUS_FILE).is_file():
        return Path(data)
    return None


# Long only because of its docstring and signature; the body is under 80 lines.
def pretrain(
    data: ad.AnnData | str | Path | Sequence[ad.AnnData | str | Path],
    out_dir: str | Path,
    *,
    preset: str = "small",
    train_config: TrainConfig | None = None,
    max_length: int | None = None,
    layer: str | None = None,
    min_genes: int = 10,
    mask_prob: float = 0.15,
    eval_fraction: float = 0.05,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Pretrain a :class:`~lifelm.models.cell_transformer.CellTransformer` by masked-gene prediction.

    The tokenizer (vocabulary + gene medians) is fitted on the corpus and written to
    ``out_dir/tokenizer.json`` first; a resumed run reads it back so the tokens cannot change.
    A random ``eval_fraction`` of cells (seeded) is held out for the evaluation loss.

    Parameters
    ----------
    data
        AnnData objects or ``.h5ad`` paths (read backed), or the folder of a corpus store built by
        ``lifelm cells corpus build`` (pre-tokenized; its tokenizer is used as is).
    out_dir
        Run folder; the model ends up in ``out_dir/model``.
    preset
        Model size: ``test``, ``tiny``, ``small``, ``geneformer-6l``, ``geneformer-12l``.
    train_config
        Optimisation settings (:class:`~lifelm.training.loop.TrainConfig`).
    max_length
        Context length; defaults to the preset's.
    layer
        Where the raw counts are, if not found automatically.
    min_genes
        Cells with fewer vocabulary genes are dropped (and counted in the log).
    mask_prob
        Fraction of gene tokens to predict.
    eval_fraction
        Fraction of cells held out for the evaluation loss.
    resume
        Continue the run in ``out_dir`` after a kill; an error when ``out_dir`` holds no
        checkpoint, or when the data, settings or model differ from the run's manifest.
    stop_after
        End after this step without the final save, as a kill would (tests of resume).
    """
    out_dir = Path(out_dir)
    cfg = train_config or TrainConfig()
    if resume:
        require_checkpoint(out_dir)  # before any tokenizing: --resume needs a run to continue
    with hold_run_folder(out_dir):  # a second writer is refused before anything is written
        store_dir = _store_folder(data)
        if store_dir is not None:
            spec = _store_spec(store_dir, eval_fraction, cfg.seed)
        else:
            spec = _h5ad_spec(data, out_dir, preset, max_length, layer, min_genes, eval_fraction, cfg.seed, resume)  # fmt: skip
        tokenizer, length = spec.tokenizer, spec.length
        model_cfg = CellTransformerConfig.from_name(
            preset, vocab_size=tokenizer.vocab_size, max_length=length
        )
        seed_everything(cfg.seed)  # the initial weights depend on the seed alone
        model = CellTransformer(model_cfg)
        provenance = {
            **spec.report,
            "n_train_cells": len(spec.train_items),
            "n_eval_cells": len(spec.eval_items) if spec.eval_items is not None else 0,
            "split": f"random {eval_fraction:.0%} of cells held out for eval loss (seed {cfg.seed})",
            "preset": preset,
        }
        collate = MaskedGeneCollator(tokenizer.vocab_size, length, mask_prob)
        return train(
            model,
            spec.train_items,
            config=replace(cfg),
            out_dir=out_dir,
            collate_fn=collate,
            sidecar=sidecar(model_cfg, tokenizer, provenance=provenance),
            resume=resume,
            eval_dataset=spec.eval_items,
            unit="cells",
            inputs=spec.inputs,
            job="cells-pretrain",
            stop_after=stop_after,
        )


@dataclass(frozen=True)
class _DataSpec:
    """What pretraining reads: tokenizer, context, train/eval items, report and input files."""

    tokenizer: RankValueTokenizer
    length: int
    train_items: Any
    eval_items: Any
    report: dict[str, object]
    inputs: dict[str, Path | None]


def _store_spec(store_dir: Path, eval_fraction: float, seed: int) -> _DataSpec:
    """A pre-tokenized corpus store: tokenizer and tokens come with it."""
    store = CorpusStore(store_dir)
    tokenizer = store.tokenizer()
    train_items, eval_items = split_store(store, eval_fraction, seed)
    return _DataSpec(
        tokenizer=tokenizer,
        length=tokenizer.max_length,
        train_items=train_items,
        eval_items=eval_items,
        report={"store": str(store_dir), "n_cells": len(store)},
        inputs={"data": store_dir},
    )


def _h5ad_spec(
    data: ad.AnnData | str | Path | Sequence[ad.AnnData | str | Path],
    out_dir: Path,
    preset: str,
    max_length: int | None,
    layer: str | None,
    min_genes: int,
    eval_fraction: float,
    seed: int,
    resume: bool,
) -> _DataSpec:
    """AnnData / h5ad inputs: fit (or, on resume, read back) the tokenizer, tokenize, split."""
    adatas = _as_adatas(data)
    tok_path = out_dir / TOKENIZER_FILE
    length = max_length or CellTransformerConfig.from_name(preset, vocab_size=4).max_length
    if resume and tok_path.is_file():
        tokenizer = RankValueTokenizer.from_dict(json.loads(tok_path.read_text()))
    else:
        tokenizer = RankValueTokenizer.fit(adatas, layer=layer, max_length=length)
        if dist_env().is_main:
            with atomic_output(tok_path) as tmp:
                tmp.write_text(json.dumps(tokenizer.to_dict()))
    cells, report = tokenize_corpus(adatas, tokenizer, layer=layer, min_genes=min_genes)
    digest = hashlib.sha256(cells.offsets.tobytes() + cells.tokens.tobytes()).hexdigest()
    report["tokens_sha256"] = digest  # the data as trained on, also for in-memory AnnData
    perm = np.random.default_rng(seed).permutation(len(cells))
    n_eval = round(eval_fraction * len(cells)) if len(cells) >= 20 else 0
    files = [a.filename for a in adatas]
    return _DataSpec(
        tokenizer=tokenizer,
        length=length,
        train_items=CellTokens(cells.subset(np.sort(perm[n_eval:]))),
        eval_items=CellTokens(cells.subset(np.sort(perm[:n_eval]))) if n_eval else None,
        report=report,
        inputs={f"data[{i}]": Path(f) if f else None for i, f in enumerate(files)},
    )
