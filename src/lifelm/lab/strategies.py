"""Strategies: which untested perturbations to run next.

Every strategy sees only :class:`Observations` (the genes it chose in earlier rounds and their
measured scores), the gene features and the untested pool; never the screen. The model behind the
model-driven strategies is a random-forest ensemble refitted every round on the observed effects;
its trees' spread is the uncertainty.

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

import numpy as np

from lifelm._core.errors import InputError
from lifelm.lab.features import GeneFeatures

STRATEGIES = ("random", "greedy", "uncertainty", "ucb_thompson", "diversity")
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
) -> np.ndarray:
    X = features.align(genes)
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
) -> Selection:
    """Choose ``batch_size`` genes from ``pool`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
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

    from sklearn.ensemble import RandomForestRegressor

    eff = effects(obs.scores, direction, null=null)
    X_train = _design(features, obs.genes, obs, eff, use_neighbours=use_neighbours, training=True)
    X_pool = _design(features, pool_arr, obs, eff, use_neighbours=use_neighbours, training=False)
    rf = RandomForestRegressor(
        n_estimators=n_estimators,
        min_samples_leaf=3,
        max_features=0.5,
        random_state=int(np.random.default_rng([seed, round_index, 2]).integers(2**31 - 1)),
        n_jobs=1,
    )
    rf.fit(X_train, eff)
    per_tree = np.stack([t.predict(X_pool) for t in rf.estimators_])  # (T, n)
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
    note = f"random forest ({n_estimators} trees) on {X_train.shape[1]} features, {len(obs)} observations"
    return Selection([str(g) for g in pool_arr[pick]], pool_arr, mean, sd, acq, note)
