"""The simple perturbation baselines every response model is shown next to.

Each baseline is fitted on the training conditions of a split and predicts the *delta* (perturbed
minus control pseudobulk, log1p CP10k) of a held-out condition ``context|perturbation``; the
prediction for the population is ``control mean of the context + delta``, and per-cell samples
are the context's control cells shifted by the delta. ``predict_delta`` returns ``None`` where a
baseline does not apply (additive on a single perturbation).

- ``ControlMean``: no change (delta 0).
- ``TrainMean``: the mean delta of the training perturbations (of the same context when it has
  any), the "mean baseline" that GEARS and scGPT do not beat on unseen singles.
- ``Additive``: for ``A+B``, delta(A) + delta(B) from the training singles of the same context.
- ``Linear``: Ahlmann-Eltze, Huber & Anders (Nat Methods 2025): ``Y = G W P^T + b`` with gene
  embeddings G (top-K PCs of the training deltas, genes as rows), perturbation embeddings P (sum
  of the embeddings of the target genes; a combination sums its genes), and b the mean training
  delta; W is the closed-form ridge solution. Target genes come from G when the gene is measured,
  or from an external table (``gene_embeddings=``), which is how the cell-model variant plugs in
  the pretrained model's gene embeddings. When the data have several contexts, P also holds a
  context embedding (PCs of the contexts' control means), so the model can move an effect to an
  unseen context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from sklearn.decomposition import PCA

from lifelm.data.cells.perturbation import PerturbationData, components, split_condition


class PerturbationMethod(Protocol):
    """What the benchmark scores: a baseline here, or a model-based method of the tasks layer."""

    name: str

    def fit(self, data: PerturbationData, train: Sequence[str]) -> object:
        """Fit on the training condition ids of ``data``."""
        ...

    def predict_delta(self, condition: str) -> np.ndarray | None:
        """(G,) predicted delta, or ``None`` when the method does not apply."""
        ...


class PerturbationBaseline:
    """Interface: ``fit(data, train)`` then ``predict_delta(condition)``."""

    name = "baseline"

    def fit(self, data: PerturbationData, train: Sequence[str]) -> PerturbationBaseline:
        """Fit on the training condition ids of ``data``."""
        self.data = data
        self.train = list(train)
        self.train_deltas = (
            data.deltas(self.train) if self.train else np.zeros((0, len(data.genes)))
        )
        self._row = {c: i for i, c in enumerate(self.train)}
        return self

    def predict_delta(self, condition: str) -> np.ndarray | None:
        """(G,) predicted delta, or ``None`` when the baseline does not apply."""
        raise NotImplementedError


class ControlMean(PerturbationBaseline):
    """No change: the perturbed population equals the control population."""

    name = "control_mean"

    def predict_delta(self, condition: str) -> np.ndarray:
        return np.zeros(len(self.data.genes), dtype=np.float32)


class TrainMean(PerturbationBaseline):
    """Mean training delta, of the same context when that context has training perturbations."""

    name = "train_mean"

    def predict_delta(self, condition: str) -> np.ndarray:
        context, _ = split_condition(condition)
        rows = [i for i, c in enumerate(self.train) if split_condition(c)[0] == context]
        rows = rows or list(range(len(self.train)))
        return self.train_deltas[rows].mean(axis=0)


class Additive(PerturbationBaseline):
    """delta(A+B) = delta(A) + delta(B), from training singles of the same context."""

    name = "additive"

    def predict_delta(self, condition: str) -> np.ndarray | None:
        context, pert = split_condition(condition)
        parts = components(pert)
        if len(parts) < 2:
            return None
        keys = [f"{context}|{g}" for g in parts]
        if any(k not in self._row for k in keys):
            return None
        return np.sum([self.train_deltas[self._row[k]] for k in keys], axis=0)


class Linear(PerturbationBaseline):
    """Ahlmann-Eltze et al. 2025 linear model, ``Y = G W P^T + b`` (see module docstring).

    Parameters
    ----------
    n_components
        K, the size of the gene and perturbation embeddings (10 in the paper).
    ridge
        lambda of the closed-form ridge (0.1 in the paper).
    gene_embeddings
        Optional symbol -> vector table for target genes (e.g. a pretrained cell model's gene
        embeddings). When given it replaces G's rows for the perturbation embedding.
    name
        Row name in result tables.
    """

    def __init__(
        self,
        n_components: int = 10,
        ridge: float = 0.1,
        gene_embeddings: Mapping[str, np.ndarray] | None = None,
        name: str = "linear",
    ) -> None:
        self.n_components = n_components
        self.ridge = ridge
        self.gene_embeddings = gene_embeddings
        self.name = name

    def fit(self, data: PerturbationData, train: Sequence[str]) -> Linear:
        super().fit(data, train)
        y = self.train_deltas.T.astype(np.float64)  # (G, C) genes x training conditions
        self.b = y.mean(axis=1, keepdims=True)  # (G, 1)
        k = max(1, min(self.n_components, y.shape[1] - 1, y.shape[0] - 1))
        self.gene_emb = (
            PCA(n_components=k).fit_transform(y - self.b)
            if y.shape[1] > 1
            else np.zeros((y.shape[0], 1))
        )  # (G, K)
        self._gene_index = {g: i for i, g in enumerate(data.genes)}
        contexts = sorted(set(data.context.tolist()))
        self._ctx_emb: dict[str, np.ndarray] = {}
        if len(contexts) > 1:
            means = np.stack([data.control_mean(c) for c in contexts])  # (n_ctx, G)
            kc = min(self.n_components, len(contexts) - 1)
            z = PCA(n_components=kc).fit_transform(means)
            self._ctx_emb = {c: z[i] for i, c in enumerate(contexts)}
        p = np.stack([self._features(c) for c in self.train])  # (C, F)
        self._scale = (
            np.sqrt((p**2).mean(axis=0)) + 1e-8
        )  # unit RMS per feature: one lambda fits all
        p = p / self._scale
        g = self.gene_emb
        lam = self.ridge
        left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ (y - self.b))  # (K, C)
        self.w = left @ p @ np.linalg.inv(p.T @ p + lam * np.eye(p.shape[1]))  # (K, F)
        return self

    def _target_embedding(self, gene: str) -> np.ndarray:
        if self.gene_embeddings is not None:
            dim = len(next(iter(self.gene_embeddings.values())))
            return np.asarray(self.gene_embeddings.get(gene, np.zeros(dim)), dtype=np.float64)
        i = self._gene_index.get(gene)
        return self.gene_emb[i] if i is not None else np.zeros(self.gene_emb.shape[1])

    def _features(self, condition: str) -> np.ndarray:
        context, pert = split_condition(condition)
        genes = [g for g in components(pert) if g not in self.data.stimuli]
        dim = len(self._target_embedding("\0"))
        pert_vec = (
            np.sum([self._target_embedding(g) for g in genes], axis=0) if genes else np.zeros(dim)
        )
        stim = np.array([float(s in components(pert)) for s in self.data.stimuli])
        ctx = self._ctx_emb.get(context, np.zeros(0))
        return np.concatenate([pert_vec, stim, ctx])

    def predict_delta(self, condition: str) -> np.ndarray:
        p = self._features(condition) / self._scale  # (F,)
        return (self.gene_emb @ self.w @ p + self.b[:, 0]).astype(np.float32)


def default_baselines() -> list[PerturbationBaseline]:
    """The four baselines of issue 5, in table order."""
    return [ControlMean(), TrainMean(), Additive(), Linear()]
