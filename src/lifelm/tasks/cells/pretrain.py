"""Masked-gene pretraining of a cell model on one or more h5ad files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np

from lifelm._core.runtime import dist_env, get_logger, seed_everything
from lifelm.data.cells.datasets import CellTokens, MaskedGeneCollator
from lifelm.data.cells.tokenizer import RankValueTokenizer, TokenizedCells
from lifelm.data.store.build import CORPUS_FILE
from lifelm.data.store.store import CorpusStore, split_store
from lifelm.io.h5ad import read_h5ad
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells.model_io import sidecar
from lifelm.training.loop import TrainConfig, TrainResult, train

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
    parts, report = [], {"datasets": [], "dropped_cells": 0}
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
        report["dropped_cells"] += dropped  # type: ignore[operator]
        report["datasets"].append(  # type: ignore[union-attr]
            {"source": str(adata.filename or "AnnData"), "n_cells": len(keep), **cells.report}
        )
        parts.append(cells.subset(keep))
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"no cell has at least {min_genes} vocabulary genes; nothing to train on")
    merged = TokenizedCells.concat(parts)
    return merged, report


def _store_folder(data: object) -> Path | None:
    """The folder when ``data`` names a finished corpus store (``corpus.json`` inside), else None."""
    if isinstance(data, str | Path) and (Path(data) / CORPUS_FILE).is_file():
        return Path(data)
    return None


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
        Continue the run in ``out_dir`` after a kill.
    """
    out_dir = Path(out_dir)
    cfg = train_config or TrainConfig()
    store_dir = _store_folder(data)
    if store_dir is not None:  # a pre-tokenized corpus store: tokenizer and tokens come with it
        store = CorpusStore(store_dir)
        tokenizer = store.tokenizer()
        length = tokenizer.max_length
        train_items, eval_items = split_store(store, eval_fraction, cfg.seed)
        report: dict[str, object] = {"store": str(store_dir), "n_cells": len(store)}
        n_train, n_eval = len(train_items), (len(eval_items) if eval_items is not None else 0)
    else:
        adatas = _as_adatas(data)  # type: ignore[arg-type]
        tok_path = out_dir / TOKENIZER_FILE
        length = max_length or CellTransformerConfig.from_name(preset, vocab_size=4).max_length
        if resume and tok_path.is_file():
            tokenizer = RankValueTokenizer.from_dict(json.loads(tok_path.read_text()))
        else:
            tokenizer = RankValueTokenizer.fit(adatas, layer=layer, max_length=length)
            if dist_env().is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                tok_path.write_text(json.dumps(tokenizer.to_dict()))
        cells, report = tokenize_corpus(adatas, tokenizer, layer=layer, min_genes=min_genes)
        perm = np.random.default_rng(cfg.seed).permutation(len(cells))
        n_eval = round(eval_fraction * len(cells)) if len(cells) >= 20 else 0
        train_items = CellTokens(cells.subset(np.sort(perm[n_eval:])))
        eval_items = CellTokens(cells.subset(np.sort(perm[:n_eval]))) if n_eval else None
        n_train = len(train_items)
    model_cfg = CellTransformerConfig.from_name(
        preset, vocab_size=tokenizer.vocab_size, max_length=length
    )
    seed_everything(cfg.seed)  # the initial weights depend on the seed alone
    model = CellTransformer(model_cfg)
    provenance = {
        **report,
        "n_train_cells": n_train,
        "n_eval_cells": n_eval,
        "split": f"random {eval_fraction:.0%} of cells held out for eval loss (seed {cfg.seed})",
        "preset": preset,
    }
    collate = MaskedGeneCollator(tokenizer.vocab_size, length, mask_prob)
    return train(
        model,
        train_items,
        config=replace(cfg),
        out_dir=out_dir,
        collate_fn=collate,
        sidecar=sidecar(model_cfg, tokenizer, provenance=provenance),
        resume=resume,
        eval_dataset=eval_items,
        unit="cells",
    )
