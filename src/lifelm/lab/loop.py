"""The closed loop: choose a batch, run it in the lab, ingest the results, refit, repeat.

Run folder (one writer, locked)::

    OUT/manifest.json              settings, screen/features/pool digests, input file hashes
    OUT/rounds/round_000/          written atomically once the round's results are in
        batch.json                 chosen genes in order, strategy, model note
        predictions.npz            pool genes, predicted effect and spread, acquisition
        protocol.json, protocol.log  what the lab ran (PyLabRobot operations or the oracle's step)
        results.csv                gene, measured score (+ plate, well), round, hit
        responses.npz              vector read-outs when the lab has them (Perturb-seq: the
                                   measured expression shift of each perturbation)
    OUT/state.json, OUT/curve.csv  rounds done and the discovery curve so far
    OUT/ranking.csv                final evidence ranking (when all rounds are done)

A killed loop resumes at the first round without a folder; each round's randomness derives from
(seed, round) only, so the resumed run ends in the same state as an uninterrupted one.

A *learner* (:class:`Learner`) adds per-round feature columns computed from the read-outs seen
so far (the Perturb-seq setting's response model, :mod:`lifelm.lab.perturbseq`; the GI-map
pair profiles, :mod:`lifelm.lab.gimap`); the loop feeds it each round's ``responses.npz`` and the
tested genes with their measured scores (again on resume), never the hit labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError, OutputError
from lifelm._core.runfolder import atomic_output, ensure_manifest, lock_folder
from lifelm.lab.backends import Lab, SimulatedLab
from lifelm.lab.features import ALL_SOURCES, SOURCES, GeneFeatures, empty_features
from lifelm.lab.screens import Screen
from lifelm.lab.strategies import (
    STRATEGIES,
    SURROGATES,
    Observations,
    Selection,
    effects,
    select_batch,
)

BACKENDS = ("simulated", "pylabrobot")
# settings added after the first release: left out of the manifest at their defaults, so a run
# folder written before they existed still resumes
_NEW_SETTINGS = {"surrogate": "forest", "mc_samples": 32}


class Learner(Protocol):
    """Per-round features from the read-outs seen so far (never from untested perturbations)."""

    def reset(self) -> None: ...

    def observe(self, round_index: int, arrays: Mapping[str, np.ndarray]) -> None: ...

    def features(
        self, train: Sequence[str], pool: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]: ...


@dataclass(frozen=True)
class LoopConfig:
    """Settings of one loop (all recorded in the manifest; a resume with others is refused)."""

    strategy: str = "ucb_thompson"
    rounds: int = 5
    batch_size: int = 128
    seed: int = 0
    feature_sources: tuple[str, ...] = SOURCES
    n_estimators: int = 64
    backend: str = "simulated"
    noise_sd: float | None = None
    positive_control: str | None = None
    surrogate: str = "forest"
    mc_samples: int = 32

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(
                f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}"
            )
        if self.backend not in BACKENDS:
            raise InputError(
                f"unknown lab backend {self.backend!r}; choose from {', '.join(BACKENDS)}"
            )
        if self.rounds < 1 or self.batch_size < 1:
            raise InputError(
                f"rounds and batch size must be ≥ 1 (got {self.rounds}, {self.batch_size})"
            )
        bad = set(self.feature_sources) - set(ALL_SOURCES)
        if bad:
            raise InputError(
                f"unknown feature sources {sorted(bad)}; known: {', '.join(ALL_SOURCES)}"
            )
        if self.surrogate not in SURROGATES:
            raise InputError(
                f"unknown surrogate {self.surrogate!r}; choose from {', '.join(SURROGATES)}"
            )
        if self.mc_samples < 2:
            raise InputError(f"MC-dropout needs at least 2 samples (got {self.mc_samples})")
        object.__setattr__(self, "feature_sources", tuple(self.feature_sources))

    @property
    def budget(self) -> int:
        return self.rounds * self.batch_size


@dataclass
class LoopResult:
    """The state of a loop folder."""

    out_dir: Path
    config: LoopConfig
    batches: list[list[str]]
    results: pd.DataFrame
    curve: pd.DataFrame
    completed: bool
    ranking: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_lab(screen: Screen, config: LoopConfig) -> Lab:
    """The lab of ``config.backend`` over ``screen``."""
    from lifelm.lab.perturbseq import PerturbScreen, PerturbSeqLab

    if isinstance(screen, PerturbScreen):
        if config.backend != "simulated":
            raise InputError(
                "the Perturb-seq setting runs on the simulated lab only: a Perturb-seq round is a "
                "pooled single-cell experiment, not a plate read-out (use --backend simulated)"
            )
        if config.noise_sd is not None:
            raise InputError(
                "--noise-sd does not apply to Perturb-seq: the noise is a bootstrap of the cells"
            )
        return PerturbSeqLab(screen, seed=config.seed)
    assay = SimulatedLab(screen, seed=config.seed, noise_sd=config.noise_sd)
    if config.backend == "pylabrobot":
        from lifelm.lab.plr import PyLabRobotLab

        return PyLabRobotLab(assay, positive_control=config.positive_control)
    return assay


def _check_pool(
    screen: Screen, pool: Sequence[str] | None, lab: Lab, config: LoopConfig
) -> list[str]:
    genes = [str(g) for g in (screen.genes if pool is None else pool)]
    if not genes:
        raise InputError("the pool of candidate genes is empty")
    dup = sorted(g for g, n in Counter(genes).items() if n > 1)
    if dup:
        raise InputError(f"the pool lists genes twice: {', '.join(dup[:5])}")
    lab.check_pool(genes)
    if not screen.hits & set(genes):
        raise InputError(
            f"the pool holds none of the {len(screen.hits)} hits of screen {screen.name}; "
            "a discovery curve needs hits to find. Widen the pool."
        )
    if config.budget > len(genes):
        raise InputError(
            f"budget of {config.rounds} rounds × {config.batch_size} = {config.budget} experiments "
            f"is larger than the pool of {len(genes)} genes; lower --rounds or --batch-size."
        )
    return genes


def _round_dir(out: Path, r: int) -> Path:
    return out / "rounds" / f"round_{r:03d}"


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(items).encode()).hexdigest()


def _load_done(out: Path, config: LoopConfig) -> list[pd.DataFrame]:
    done = []
    for r in range(config.rounds):
        f = _round_dir(out, r) / "results.csv"
        if not f.is_file():
            break
        done.append(pd.read_csv(f, dtype={"gene": str}, float_precision="round_trip"))
    return done


def load_arrays(out: str | Path, r: int) -> dict[str, np.ndarray]:
    """The vector read-outs of round ``r`` (``{}`` when the lab had none)."""
    f = _round_dir(Path(out), r) / "responses.npz"
    if not f.is_file():
        return {}
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _observations(frames: list[pd.DataFrame]) -> Observations:
    if not frames:
        return Observations.empty()
    df = pd.concat(frames, ignore_index=True)
    return Observations(
        tuple(df.gene.astype(str)), df.score.to_numpy(float), df["round"].to_numpy(np.int64)
    )


def _curve(
    frames: list[pd.DataFrame], n_hits_pool: int, sets: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """Discovery curve; ``sets`` (name -> members in the pool) adds ``<name>_found/_in_pool/_ratio``."""
    sets = dict(sets or {})
    rows, found, tested = [], 0, 0
    found_sets = dict.fromkeys(sets, 0)
    for r, df in enumerate(frames):
        found += int(df.hit.sum())
        tested += len(df)
        row = {
            "round": r,
            "n_tested": tested,
            "hits_found": found,
            "hits_in_pool": n_hits_pool,
            "hit_ratio": found / n_hits_pool if n_hits_pool else float("nan"),
        }
        for name, n_in in sets.items():
            found_sets[name] += int(df[name].astype(bool).sum())
            row[f"{name}_found"] = found_sets[name]
            row[f"{name}_in_pool"] = n_in
            row[f"{name}_ratio"] = found_sets[name] / n_in if n_in else float("nan")
        rows.append(row)
    cols = ["round", "n_tested", "hits_found", "hits_in_pool", "hit_ratio"]
    cols += [f"{n}_{k}" for n in sets for k in ("found", "in_pool", "ratio")]
    return pd.DataFrame(rows, columns=cols)


def _write_round(
    out: Path,
    r: int,
    sel: Selection,
    table: pd.DataFrame,
    protocol: dict,
    log: str,
    config: LoopConfig,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> None:
    with atomic_output(_round_dir(out, r)) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "batch.json").write_text(
            json.dumps(
                {"round": r, "strategy": config.strategy, "genes": sel.genes, "model": sel.note},
                indent=1,
            )
        )
        np.savez_compressed(
            tmp / "predictions.npz",
            genes=sel.pool_genes,
            mean=sel.mean,
            sd=sel.sd,
            acquisition=sel.acquisition,
        )
        (tmp / "protocol.json").write_text(json.dumps(protocol, indent=1, default=str))
        (tmp / "protocol.log").write_text(log)
        table.to_csv(tmp / "results.csv", index=False)
        if arrays:
            np.savez_compressed(tmp / "responses.npz", allow_pickle=False, **dict(arrays))


# Long only because of its docstring and signature; the body is under 80 lines.
def run_loop(
    screen: Screen,
    out_dir: str | Path,
    *,
    config: LoopConfig = LoopConfig(),
    features: GeneFeatures | None = None,
    pool: Sequence[str] | None = None,
    lab: Lab | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    inputs: Mapping[str, str | Path | None] | None = None,
    learner: Learner | None = None,
) -> LoopResult:
    """Run (or resume) a discovery loop on ``screen``; see the module docstring for the folder.

    Parameters
    ----------
    screen
        The screen the simulated assay answers from; its hits define the discovery curve.
    out_dir
        The run folder.
    config
        Strategy, rounds, batch size, seed, feature sources, backend.
    features
        Gene features (:mod:`lifelm.lab.features`); ``None``: none (model-driven strategies then
        learn from the ``neighbours`` source only if co-expression columns exist, i.e. not at all).
    pool
        Candidate genes (default: every gene of the screen).
    lab
        A lab object (default: :func:`make_lab` of ``config``).
    resume
        Continue a killed run in ``out_dir`` (refused when inputs or settings differ).
    stop_after
        Stop after this many rounds are done (to test resuming, or to run a loop in pieces).
    inputs
        Input files to hash into the manifest (e.g. the screen and hit files).
    learner
        Per-round features from the read-outs so far (default: the response model for a
        :class:`~lifelm.lab.perturbseq.PerturbScreen`, none otherwise); used when
        ``"response"`` is among ``config.feature_sources``.
    """
    from lifelm.lab.perturbseq import PerturbScreen, ResponseLearner, write_response_accuracy

    out = Path(out_dir)
    lab = lab if lab is not None else make_lab(screen, config)
    if learner is None and isinstance(screen, PerturbScreen):
        learner = ResponseLearner.for_screen(screen)
    if "response" not in config.feature_sources:
        learner = None
    genes = _check_pool(screen, pool, lab, config)
    feats = (features if features is not None else empty_features(genes)).select(
        config.feature_sources
    )
    settings = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if not (k in _NEW_SETTINGS and v == _NEW_SETTINGS[k])
    } | {
        "screen_digest": screen.digest(),
        "features_digest": feats.digest(),
        "pool_digest": _digest(genes),
        "features": list(feats.columns),
    }
    with lock_folder(out):
        if not resume and (out / "rounds").exists() and any((out / "rounds").iterdir()):
            raise OutputError(
                f"{out}: holds rounds of an earlier loop; resume it with --resume or choose "
                "another -o/--out folder."
            )
        ensure_manifest(
            out, job="lab_loop", inputs=dict(inputs or {}), settings=settings, resume=resume
        )
        frames = _load_done(out, config)
        pool_hits = len(screen.hits & set(genes))
        pool_sets = {n: len(set(m) & set(genes)) for n, m in screen.hit_sets.items()}
        tested = {g for f in frames for g in f.gene}
        if learner is not None:
            learner.reset()
            for r in range(len(frames)):
                learner.observe(r, _learner_view(load_arrays(out, r), frames[r]))
        for r in range(len(frames), config.rounds):
            if stop_after is not None and r >= stop_after:
                break
            obs = _observations(frames)
            remaining = [g for g in genes if g not in tested]
            sel = _select(
                config, screen, config.strategy, remaining, feats, obs, learner,
                batch_size=config.batch_size, round_index=r,
            )  # fmt: skip
            res = lab.run(r, sel.genes)
            table = res.table.copy()
            if list(table.gene.astype(str)) != sel.genes:
                raise OutputError(f"round {r}: the lab returned results for other genes than asked")
            if not np.isfinite(table.score.to_numpy(float)).all():
                raise OutputError(f"round {r}: the lab returned missing or non-finite read-outs")
            table["round"] = r
            table["hit"] = table.gene.isin(screen.hits)
            for name, members in screen.hit_sets.items():
                table[name] = table.gene.isin(members)
            _write_round(out, r, sel, table, res.protocol, res.log, config, res.arrays)
            frames.append(table)
            tested |= set(sel.genes)
            if learner is not None:
                learner.observe(r, _learner_view(res.arrays, table))
            curve = _curve(frames, pool_hits, pool_sets)
            _write_state(out, config, curve, screen, lab)
        completed = len(frames) == config.rounds
        curve = _curve(frames, pool_hits, pool_sets)
        if frames:
            _write_state(out, config, curve, screen, lab)
            if isinstance(screen, PerturbScreen):
                write_response_accuracy(
                    screen, out, [load_arrays(out, r) for r in range(len(frames))]
                )
        ranking = None
        if completed:
            ranking = _final_ranking(out, screen, genes, feats, frames, config, learner)
    batches = [list(f.gene.astype(str)) for f in frames]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return LoopResult(out, config, batches, results, curve, completed, ranking)


def _learner_view(arrays: Mapping[str, np.ndarray], table: pd.DataFrame) -> dict[str, np.ndarray]:
    """What a learner may see of a round: the lab's vector read-outs plus the tested genes and
    their measured scores (``tested``, ``score``), never the hit labels."""
    return {
        **dict(arrays),
        "tested": table.gene.astype(str).to_numpy(),
        "score": table.score.to_numpy(float),
    }


def _select(
    config: LoopConfig,
    screen: Screen,
    strategy: str,
    pool: list[str],
    feats: GeneFeatures,
    obs: Observations,
    learner: Learner | None,
    *,
    batch_size: int,
    round_index: int,
) -> Selection:
    """``select_batch`` with the loop's settings (seed, direction, surrogate, features) and the
    learner's per-round features of the tested genes and the pool."""
    extra = None
    if learner is not None and len(obs) > 0:
        x_train, x_pool, _names = learner.features(obs.genes, pool)
        extra = (x_train, x_pool)
    return select_batch(
        strategy,
        pool=pool,
        features=feats,
        obs=obs,
        batch_size=batch_size,
        round_index=round_index,
        seed=config.seed,
        direction=screen.direction,
        use_neighbours="neighbours" in config.feature_sources,
        n_estimators=config.n_estimators,
        surrogate=config.surrogate,
        mc_samples=config.mc_samples,
        extra=extra,
    )


def _write_state(
    out: Path, config: LoopConfig, curve: pd.DataFrame, screen: Screen, lab: Lab
) -> None:
    state = {
        "rounds_done": len(curve),
        "rounds": config.rounds,
        "strategy": config.strategy,
        "backend": getattr(lab, "name", type(lab).__name__),
        "screen": screen.name,
        "screen_source": screen.source,
        "hit_source": screen.hit_source,
        "direction": screen.direction,
        "curve": curve.to_dict(orient="records"),
    }
    with atomic_output(out / "state.json") as tmp:
        tmp.write_text(json.dumps(state, indent=1))
    with atomic_output(out / "curve.csv") as tmp:
        curve.to_csv(tmp, index=False)


def _final_ranking(
    out: Path,
    screen: Screen,
    genes: list[str],
    feats: GeneFeatures,
    frames: list[pd.DataFrame],
    config: LoopConfig,
    learner: Learner | None = None,
) -> pd.DataFrame:
    """Evidence ranking of every pool gene after the last round (written to ranking.csv)."""
    from lifelm.lab.evidence import evidence_table

    obs = _observations(frames)
    tested = set(obs.genes)
    remaining = [g for g in genes if g not in tested]
    pred = None
    if remaining and (feats.matrix.shape[1] or learner is not None):
        sel = _select(
            config, screen, "greedy", remaining, feats, obs, learner,
            batch_size=1, round_index=config.rounds,
        )  # fmt: skip
        pred = pd.Series(sel.mean, index=sel.pool_genes)
    observed = pd.Series(effects(obs.scores, screen.direction), index=list(obs.genes))
    table = evidence_table(genes, observed_effect=observed, predicted_effect=pred, features=feats)
    with atomic_output(out / "ranking.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def load_run(out_dir: str | Path) -> dict[str, Any]:
    """Read a loop folder back: state, curve, per-round results and protocols (for reports)."""
    out = Path(out_dir)
    if not (out / "state.json").is_file():
        raise InputError(f"{out}: no state.json; not a lab loop folder (or no round finished yet)")
    state = json.loads((out / "state.json").read_text())
    rounds = []
    for d in sorted((out / "rounds").glob("round_*")):
        if d.name.startswith("."):
            continue
        rounds.append(
            {
                "dir": d,
                "batch": json.loads((d / "batch.json").read_text()),
                "results": pd.read_csv(
                    d / "results.csv", dtype={"gene": str}, float_precision="round_trip"
                ),
                "protocol": json.loads((d / "protocol.json").read_text()),
            }
        )
    ranking = pd.read_csv(out / "ranking.csv") if (out / "ranking.csv").is_file() else None
    acc = out / "response_accuracy.csv"
    return {
        "state": state,
        "curve": pd.read_csv(out / "curve.csv"),
        "rounds": rounds,
        "ranking": ranking,
        "response_accuracy": pd.read_csv(acc) if acc.is_file() else None,
    }
