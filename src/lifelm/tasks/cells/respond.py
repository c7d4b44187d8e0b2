"""Perturbation response prediction with a pretrained cell model (issue 5).

``cell_model_features`` reads what the response model needs from a pretrained cell model: a
vector per gene symbol (rows of the gene embedding table, mapped through GENCODE to the model's
Ensembl vocabulary) and a vector per context (the mean pooled embedding of its control cells).
``PerturbationResponder`` trains :class:`~lifelm.models.response.ResponseModel` on the training
conditions of a split and predicts held-out conditions: the mean change (``predict_delta``) and
per-cell samples (``sample_cells``). It has the same ``fit`` / ``predict_delta`` shape as the
baselines in ``lifelm.evaluation.baselines.perturbation``, so the benchmark runs it beside them.

Training is full-batch over conditions; each step draws a random half of every training
condition's cells for its target (bootstrap pseudobulks), which regularises a model that sees
only tens of conditions. A few hundred steps take seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from lifelm._core.runtime import get_logger, seed_everything
from lifelm.data.cells.genes import gene_table
from lifelm.data.cells.perturbation import (
    PerturbationData,
    components,
    make_condition,
    split_condition,
)
from lifelm.data.cells.tokenizer import N_SPECIAL, TokenizerError
from lifelm.models.response import ResponseModel, ResponseModelConfig
from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
from lifelm.tasks.cells.model_io import CellModel

log = get_logger("lifelm.respond")


@dataclass
class CellModelFeatures:
    """Pretrained representations the response model and the cell-model linear baseline use."""

    gene_vectors: dict[str, np.ndarray]  # gene symbol -> (Dg,) gene embedding row, unit mean norm
    context_vectors: dict[str, np.ndarray]  # context -> (Dc,) mean control-cell embedding
    gene_dim: int  # Dg
    context_dim: int  # Dc


def gene_vectors(model: CellModel, symbols: Sequence[str]) -> dict[str, np.ndarray]:
    """Gene-embedding rows for the symbols the model's vocabulary holds (others are left out)."""
    table = gene_table(model.tokenizer.species)
    weight = model.trunk.gene_embedding.weight.detach().float().cpu().numpy()  # (V, D)
    out = {}
    for s in dict.fromkeys(symbols):
        gid = table.symbol_to_id.get(s)
        idx = model.tokenizer.vocab.get(gid) if gid is not None else None
        if idx is not None:
            out[s] = weight[N_SPECIAL + idx]
    if out:
        norm = np.mean([np.linalg.norm(v) for v in out.values()])
        out = {k: v / max(norm, 1e-12) for k, v in out.items()}
    return out


def cell_model_features(
    model: CellModel | str | Path,
    data: PerturbationData,
    *,
    max_cells: int = 200,
    seed: int = 0,
) -> CellModelFeatures:
    """Gene vectors for measured and target genes; context vectors from control cells only.

    Parameters
    ----------
    model
        A loaded cell model or its checkpoint folder.
    data
        The perturbation dataset (raw counts in ``data.counts``).
    max_cells
        Control cells embedded per context (seeded subsample).
    seed
        Seeds the subsample.
    """
    cm = as_cell_model(model, "cpu")
    if data.counts is None:
        raise ValueError(
            f"{data.name}: raw counts are needed to embed cells (PerturbationData.counts is None)"
        )
    targets = [g for p in np.unique(data.perturbation) for g in components(str(p))]
    genes = gene_vectors(cm, [*data.genes.tolist(), *targets])
    n_target = sum(t in genes for t in set(targets) - set(data.stimuli))
    log.info(
        "%s: %d/%d measured genes and %d/%d target genes have a pretrained vector",
        data.name, sum(g in genes for g in data.genes), len(data.genes), n_target,
        len(set(targets) - set(data.stimuli)),
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    contexts = sorted(set(data.context.tolist()))
    rows, labels = [], []
    for ctx in contexts:
        idx = np.flatnonzero(data.condition == make_condition(ctx, "control"))
        idx = rng.choice(idx, min(len(idx), max_cells), replace=False)
        rows.append(idx)
        labels += [ctx] * len(idx)
    rows_all = np.concatenate(rows)
    adata = ad.AnnData(
        X=data.counts[rows_all],
        obs=pd.DataFrame(index=[f"cell{i}" for i in rows_all]),
        var=pd.DataFrame(index=data.genes),
    )
    tokenizer = cm.tokenizer
    try:
        cells = tokenizer.encode(adata)
    except TokenizerError as err:
        # a panel of a few hundred HVGs can fall below the coverage floor; the context vector is
        # still defined (from fewer genes), so go on and say so rather than drop the dataset
        log.warning(
            "%s: %s; embedding control cells from the genes that are covered", data.name, err
        )
        cells = replace(tokenizer, min_coverage=0.0).encode(adata)
    emb = embed_tokens(cm, cells, progress=False)  # (n, Dc)
    labels_arr = np.array(labels)
    ctx_vec = {c: np.nanmean(emb[labels_arr == c], axis=0) for c in contexts}
    return CellModelFeatures(genes, ctx_vec, cm.trunk.config.d_model, cm.trunk.config.d_model)


@dataclass(frozen=True)
class ResponseTrainConfig:
    """Optimisation of the response model (CPU, seconds)."""

    epochs: int = 300  # full-batch steps over the training conditions
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW weight decay
    scale_weight: float = 0.1  # weight of the log-scale loss beside the delta loss
    d_model: int = 64  # encoder width
    dropout: float = 0.1  # encoder dropout
    seed: int = 0  # init and bootstrap draws


class PerturbationResponder:
    """Train a response model on a split's training conditions; predict held-out ones."""

    def __init__(
        self,
        features: CellModelFeatures,
        config: ResponseTrainConfig | None = None,
        name: str = "lifelm_response",
    ) -> None:
        self.features = features
        self.config = config or ResponseTrainConfig()
        self.name = name

    # ------------------------------------------------------------------ inputs
    def _inputs(self, conditions: Sequence[str]) -> dict[str, torch.Tensor]:
        f, stimuli = self.features, list(self.data.stimuli)
        parsed = [split_condition(c) for c in conditions]
        targets = [[g for g in components(p) if g not in stimuli] for _, p in parsed]
        stims = [[stimuli.index(g) for g in components(p) if g in stimuli] for _, p in parsed]
        t_max, s_max = max(1, *map(len, targets)), max(1, *map(len, stims))
        tv = np.zeros((len(conditions), t_max, f.gene_dim), dtype=np.float32)
        tm = np.zeros((len(conditions), t_max), dtype=np.float32)
        si = np.zeros((len(conditions), s_max), dtype=np.int64)
        sm = np.zeros((len(conditions), s_max), dtype=np.float32)
        for i, (tg, st) in enumerate(zip(targets, stims, strict=True)):
            for j, g in enumerate(tg):
                tv[i, j] = f.gene_vectors.get(g, np.zeros(f.gene_dim))  # unknown target: zeros
                tm[i, j] = 1.0
            si[i, : len(st)] = st
            sm[i, : len(st)] = 1.0
        ctx = np.stack([f.context_vectors[c] for c, _ in parsed]).astype(np.float32)
        ctx = (ctx - self._ctx_mean) / self._ctx_scale
        return {
            "target_vectors": torch.from_numpy(tv),
            "target_mask": torch.from_numpy(tm),
            "stimulus_ids": torch.from_numpy(si),
            "stimulus_mask": torch.from_numpy(sm),
            "context": torch.from_numpy(ctx),
        }

    # ------------------------------------------------------------------ training
    def fit(self, data: PerturbationData, train: Sequence[str]) -> PerturbationResponder:
        """Train on ``train`` conditions (control cells of every context are available)."""
        cfg = self.config
        seed_everything(cfg.seed)
        self.data, f = data, self.features
        missing = sorted({split_condition(c)[0] for c in train} - set(f.context_vectors))
        if missing:
            raise KeyError(
                f"{data.name}: no context vector for {missing}; recompute cell_model_features"
            )
        all_ctx = np.stack(list(f.context_vectors.values()))
        self._ctx_mean = all_ctx.mean(0)
        self._ctx_scale = all_ctx.std() + 1e-6 if len(all_ctx) > 1 else 1.0
        self._ctrl = {c: data.control_cells(c) for c in sorted(set(data.context.tolist()))}
        gf = np.stack([f.gene_vectors.get(g, np.zeros(f.gene_dim)) for g in data.genes])
        self._gene_features = torch.from_numpy(gf.astype(np.float32))  # (G, Dg)
        cells = [data.cells(c) for c in train]
        ctrl = [self._ctrl[split_condition(c)[0]] for c in train]
        full_delta = np.stack([x.mean(0) - c.mean(0) for x, c in zip(cells, ctrl, strict=True)])
        self.model = ResponseModel(
            ResponseModelConfig(
                n_genes=len(data.genes),
                gene_dim=f.gene_dim,
                context_dim=f.context_dim,
                n_stimuli=len(data.stimuli),
                d_model=cfg.d_model,
                dropout=cfg.dropout,
            )
        )
        self.model.prior.copy_(torch.from_numpy(full_delta.mean(0).astype(np.float32)))
        inputs = self._inputs(train)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        eps = 1e-2
        log_scale = np.stack(
            [np.log((x.std(0) + eps) / (c.std(0) + eps)) for x, c in zip(cells, ctrl, strict=True)]
        )
        target_scale = torch.from_numpy(log_scale.astype(np.float32))  # (C, G)
        self.model.train()
        self.final_loss = float("nan")
        for _ in range(cfg.epochs):
            # bootstrap pseudobulk targets: a random half of each condition's cells
            boot = np.stack(
                [
                    x[rng.choice(len(x), max(2, len(x) // 2), replace=False)].mean(0) - c.mean(0)
                    for x, c in zip(cells, ctrl, strict=True)
                ]
            )
            out = self.model(self._gene_features, **inputs)
            loss = torch.nn.functional.mse_loss(
                out["delta"], torch.from_numpy(boot.astype(np.float32))
            )
            loss = loss + cfg.scale_weight * torch.nn.functional.mse_loss(
                out["log_scale"], target_scale
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.final_loss = loss.item()
        self.model.eval()
        return self

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def _forward(self, condition: str) -> dict[str, np.ndarray]:
        out = self.model(self._gene_features, **self._inputs([condition]))
        return {k: v[0].numpy() for k, v in out.items()}

    def predict_delta(self, condition: str) -> np.ndarray:
        """(G,) predicted mean change in log1p(CP10k)."""
        return self._forward(condition)["delta"]

    def sample_cells(self, condition: str, n: int, *, seed: int = 0) -> np.ndarray:
        """(n, G) predicted perturbed cells: control cells of the context, shifted and rescaled."""
        context, _ = split_condition(condition)
        ctrl = self._ctrl[context]
        rng = np.random.default_rng(seed)
        pick = ctrl[rng.choice(len(ctrl), min(n, len(ctrl)), replace=False)]
        out = self._forward(condition)
        mean = ctrl.mean(0)
        cells = mean + out["delta"] + (pick - mean) * np.exp(out["log_scale"])
        return np.clip(cells, 0.0, None)  # log1p expression is never negative
