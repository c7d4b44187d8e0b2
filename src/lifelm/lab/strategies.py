"""Strategies: which untested perturbations to run next.

Every strategy sees only :class:`Observations` (the genes it chose in earlier rounds and their
measured scores), the gene features and the untested pool; never the screen. The model behind the
model-driven strategies (the *surrogate*) is refitted every round on the observed effects:

* ``forest`` (default): a random-forest ensemble; its trees' spread is the uncertainty;
* ``mc_dropout``: a small torch MLP (two hidden layers of 64, dropout 0.2) trained on the
  standardised features; at prediction dropout stays on and ``T`` stochastic forward passes
  (default 32) give the mean and the spread (Gal & Ghahramani 2016). Seeded by (seed, round), so
  a resumed loop predicts exactly what an uninterrupted one does.

Either way the model yields ``T`` samples per pool gene (trees or dropout passes): their mean is
the prediction, their sd the uncertainty, and one sample is one Thompson draw.

* ``random``: a uniform draw from the pool (the baseline every other strategy is shown next to);
* ``greedy``: the highest predicted effect;
* ``uncertainty``: the highest ensemble spread (pure exploration);
* ``ucb_thompson``: half the batch by upper confidence bound (mean + ``beta``·sd), half by Thompson
  sampling (each slot takes the best gene of one randomly drawn tree);
* ``diversity``: the ``4 × batch`` best by UCB clustered into ``batch`` k-means clusters over the
  features, the best of each cluster (no two picks from one co-expression module).

Round 0 has nothing to learn from: every strategy draws the same random batch there (seeded by
the loop's seed alone), so strategies are compared on paired first rounds.

The effect of a measured score is ``(score − median) / MAD`` over the observed scores (or over the
lab's negative controls when those are given), taken as ``|z|`` for ``direction="both"``, ``z`` for
``"up"`` and ``−z`` for ``"down"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelm._core.errors import InputError
from lifelm.lab.features import GeneFeatures

STRATEGIES = ("random", "greedy", "uncertainty", "ucb_thompson", "diversity")
SURROGATES = ("forest", "mc_dropout")
N_NEIGHBOURS = 10


@dataclass(frozen=True)
class Observations:
    """What the strategy may know: the genes tested so far, their measured scores and round."""

    genes: tuple[str, ...]
    scores: np.ndarray
    rounds: np.ndarray

    @classmethod
    def empty(cls) -> Observations:
        return cls((), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.genes)


@dataclass(frozen=True)
class Selection:
    """A chosen batch and the model's view of the whole pool at the time."""

    genes: list[str]
    pool_genes: np.ndarray
    mean: np.ndarray  # predicted effect per pool gene (NaN in round 0)
    sd: np.ndarray
    acquisition: np.ndarray
    note: str


def effects(
    scores: np.ndarray, direction: str, *, null: tuple[float, float] | None = None
) -> np.ndarray:
    """Signed or absolute robust z of measured scores (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if null is not None and null[1] > 0:
        center, scale = null
    else:
        center = float(np.median(scores)) if len(scores) else 0.0
        scale = 1.4826 * float(np.median(np.abs(scores - center))) if len(scores) else 1.0
        if not np.isfinite(scale) or scale <= 0:
            scale = float(np.std(scores)) or 1.0
    z = (scores - center) / scale
    if direction == "both":
        return np.abs(z)
    return z if direction == "up" else -z


def neighbour_features(
    space_pool: np.ndarray,
    space_tested: np.ndarray,
    effect_tested: np.ndarray,
    *,
    exclude_self: bool,
) -> np.ndarray:
    """Mean and max effect of each row's nearest tested genes (``neighbours`` source)."""
    from sklearn.neighbors import NearestNeighbors

    n_t = len(space_tested)
    k = min(N_NEIGHBOURS + int(exclude_self), n_t)
    if k <= int(exclude_self) or space_tested.shape[1] == 0:
        return np.zeros((len(space_pool), 2))
    nn = NearestNeighbors(n_neighbors=k).fit(space_tested)
    _, idx = nn.kneighbors(space_pool)
    if exclude_self:
        idx = idx[:, 1:]
    e = effect_tested[idx]
    return np.column_stack([e.mean(axis=1), e.max(axis=1)])


def _design(
    features: GeneFeatures,
    genes: Sequence[str] | np.ndarray,
    obs: Observations,
    eff: np.ndarray,
    *,
    use_neighbours: bool,
    training: bool,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    X = features.align(genes)
    if extra is not None and extra.shape[1]:
        X = np.hstack([X, extra])
    if use_neighbours and len(obs):
        space = features.select(["coexpression", "embedding"])
        if space.matrix.shape[1]:
            nb = neighbour_features(
                space.align(genes), space.align(obs.genes), eff, exclude_self=training
            )
            X = np.hstack([X, nb])
    if X.shape[1] == 0:
        X = np.zeros((len(genes), 1))
    return X


# Long only because of its docstring and signature; the body is under 80 lines.
def select_batch(
    strategy: str,
    *,
    pool: Sequence[str],
    features: GeneFeatures,
    obs: Observations,
    batch_size: int,
    round_index: int,
    seed: int,
    direction: str = "both",
    null: tuple[float, float] | None = None,
    use_neighbours: bool = True,
    n_estimators: int = 64,
    beta: float = 1.0,
    surrogate: str = "forest",
    mc_samples: int = 32,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> Selection:
    """Choose ``batch_size`` genes from ``pool`` (see the module docstring).

    ``extra`` holds per-round feature columns computed outside (e.g. the response model's
    predicted effect in the Perturb-seq setting): ``(rows for obs.genes, rows for pool)``.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if surrogate not in SURROGATES:
        raise InputError(f"unknown surrogate {surrogate!r}; choose from {', '.join(SURROGATES)}")
    pool_arr = np.asarray(pool, dtype=str)
    n = len(pool_arr)
    if batch_size > n:
        raise InputError(f"batch of {batch_size} asked from a pool of {n} untested genes")
    nan = np.full(n, np.nan)
    if strategy == "random" or round_index == 0 or len(obs) < 4:
        rng = np.random.default_rng([seed, round_index])
        pick = rng.choice(n, size=batch_size, replace=False)
        note = (
            "random draw" if strategy == "random" else "random first round (nothing observed yet)"
        )
        return Selection([str(g) for g in pool_arr[pick]], pool_arr, nan, nan, nan, note)

    eff = effects(obs.scores, direction, null=null)
    ex_train, ex_pool = extra if extra is not None else (None, None)
    X_train = _design(
        features, obs.genes, obs, eff, use_neighbours=use_neighbours, training=True, extra=ex_train
    )
    X_pool = _design(
        features, pool_arr, obs, eff, use_neighbours=use_neighbours, training=False, extra=ex_pool
    )
    model_seed = int(np.random.default_rng([seed, round_index, 2]).integers(2**31 - 1))
    if surrogate == "forest":
        per_tree = forest_samples(X_train, eff, X_pool, n_estimators=n_estimators, seed=model_seed)
        model_note = f"random forest ({n_estimators} trees)"
    else:
        per_tree = mc_dropout_samples(X_train, eff, X_pool, n_samples=mc_samples, seed=model_seed)
        model_note = f"MC-dropout MLP ({mc_samples} passes)"
    mean, sd = per_tree.mean(axis=0), per_tree.std(axis=0)
    rng = np.random.default_rng([seed, round_index, 3])
    jitter = rng.uniform(0, 1e-9, n)  # random tie-breaking, never pool order
    if strategy == "greedy":
        acq = mean + jitter
        pick = np.argsort(-acq)[:batch_size]
    elif strategy == "uncertainty":
        acq = sd + jitter
        pick = np.argsort(-acq)[:batch_size]
    elif strategy == "ucb_thompson":
        acq = mean + beta * sd + jitter
        n_ucb = batch_size - batch_size // 2
        chosen = list(np.argsort(-acq)[:n_ucb])
        taken = np.zeros(n, dtype=bool)
        taken[chosen] = True
        for _ in range(batch_size - n_ucb):
            t = rng.integers(per_tree.shape[0])
            draw = np.where(taken, -np.inf, per_tree[t] + jitter)
            j = int(np.argmax(draw))
            chosen.append(j)
            taken[j] = True
        pick = np.asarray(chosen)
    else:  # diversity
        from sklearn.cluster import KMeans

        acq = mean + beta * sd + jitter
        cand = np.argsort(-acq)[: min(n, 4 * batch_size)]
        Z = X_pool[cand]
        Z = (Z - Z.mean(axis=0)) / (Z.std(axis=0) + 1e-9)
        n_clusters = min(batch_size, len(np.unique(Z, axis=0)))
        labels = KMeans(
            n_clusters=n_clusters, n_init=1, random_state=int(rng.integers(2**31 - 1))
        ).fit_predict(Z)
        chosen = []
        for c in range(n_clusters):
            members = cand[labels == c]
            if len(members):
                chosen.append(int(members[np.argmax(acq[members])]))
        in_batch = set(chosen)
        for j in cand:
            if len(chosen) >= batch_size:
                break
            if int(j) not in in_batch:
                chosen.append(int(j))
                in_batch.add(int(j))
        pick = np.asarray(chosen[:batch_size])
    note = f"{model_note} on {X_train.shape[1]} features, {len(obs)} observations"
    return Selection([str(g) for g in pool_arr[pick]], pool_arr, mean, sd, acq, note)


def forest_samples(
    X_train: np.ndarray, y: np.ndarray, X_pool: np.ndarray, *, n_estimators: int, seed: int
) -> np.ndarray:
    """(trees, pool) predictions of a random forest fitted on ``(X_train, y)``."""
    from sklearn.ensemble import RandomForestRegressor

    rf = RandomForestRegressor(
        n_estimators=n_estimators, min_samples_leaf=3, max_features=0.5, random_state=seed, n_jobs=1
    )
    rf.fit(X_train, y)
    return np.stack([t.predict(X_pool) for t in rf.estimators_])


def mc_dropout_samples(
    X_train: np.ndarray,
    y: np.ndarray,
    X_pool: np.ndarray,
    *,
    n_samples: int = 32,
    seed: int = 0,
    hidden: int = 64,
    dropout: float = 0.2,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> np.ndarray:
    """(n_samples, pool) predictions of an MLP with dropout kept on at prediction (MC-dropout).

    Features and target are standardised on the training rows; full-batch Adam; everything is
    drawn from a torch generator forked from ``seed``, so the global RNG is left untouched and
    the same seed gives the same samples.
    """
    import torch

    if n_samples < 2:
        raise InputError(f"MC-dropout needs at least 2 samples (got {n_samples})")
    mu, sd = X_train.mean(axis=0), X_train.std(axis=0) + 1e-9
    y_mu, y_sd = float(y.mean()), float(y.std()) or 1.0
    xt = torch.tensor((X_train - mu) / sd, dtype=torch.float32)
    yt = torch.tensor((y - y_mu) / y_sd, dtype=torch.float32)[:, None]
    xp = torch.tensor((X_pool - mu) / sd, dtype=torch.float32)
    threads = torch.get_num_threads()
    # a net this small gains nothing from threads, and on a busy machine they cost 10-20x
    torch.set_num_threads(1)
    try:
        return (
            _mc_dropout(xt, yt, xp, n_samples, seed, hidden, dropout, epochs, lr, weight_decay)
            * y_sd
            + y_mu
        )
    finally:
        torch.set_num_threads(threads)


def _mc_dropout(
    xt: Any,
    yt: Any,
    xp: Any,
    n_samples: int,
    seed: int,
    hidden: int,
    dropout: float,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> np.ndarray:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(xt.shape[1], hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 1),
        )
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        net.train()
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(xt), yt)
            loss.backward()
            opt.step()
        net.train()  # dropout stays on: each pass is one sample of the approximate posterior
        with torch.no_grad():
            out = torch.stack([net(xp)[:, 0] for _ in range(n_samples)])
    return out.numpy().astype(np.float64)
