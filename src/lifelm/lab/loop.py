"""The closed loop: choose a batch, run it in the lab, ingest the results, refit, repeat.

Run folder (one writer, locked)::

    OUT/manifest.json              settings, screen/features/pool digests, input file hashes
    OUT/rounds/round_000/          written atomically once the round's results are in
        batch.json                 chosen genes in order, strategy, model note
        predictions.npz            pool genes, predicted effect and spread, acquisition
        protocol.json, protocol.log  what the lab ran (PyLabRobot operations or the oracle's step)
        results.csv                gene, measured score (+ plate, well), round, hit
    OUT/state.json, OUT/curve.csv  rounds done and the discovery curve so far
    OUT/ranking.csv                final evidence ranking (when all rounds are done)

A killed loop resumes at the first round without a folder; each round's randomness derives from
(seed, round) only, so the resumed run ends in the same state as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError, OutputError
from lifelm._core.runfolder import atomic_output, ensure_manifest, lock_folder
from lifelm.lab.backends import Lab, SimulatedLab
from lifelm.lab.features import SOURCES, GeneFeatures, empty_features
from lifelm.lab.screens import Screen
from lifelm.lab.strategies import STRATEGIES, Observations, Selection, effects, select_batch

BACKENDS = ("simulated", "pylabrobot")


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
        bad = set(self.feature_sources) - set(SOURCES)
        if bad:
            raise InputError(f"unknown feature sources {sorted(bad)}; known: {', '.join(SOURCES)}")
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


def _observations(frames: list[pd.DataFrame]) -> Observations:
    if not frames:
        return Observations.empty()
    df = pd.concat(frames, ignore_index=True)
    return Observations(
        tuple(df.gene.astype(str)), df.score.to_numpy(float), df["round"].to_numpy(np.int64)
    )


def _curve(frames: list[pd.DataFrame], n_hits_pool: int) -> pd.DataFrame:
    rows, found, tested = [], 0, 0
    for r, df in enumerate(frames):
        found += int(df.hit.sum())
        tested += len(df)
        rows.append(
            {
                "round": r,
                "n_tested": tested,
                "hits_found": found,
                "hits_in_pool": n_hits_pool,
                "hit_ratio": found / n_hits_pool if n_hits_pool else float("nan"),
            }
        )
    return pd.DataFrame(
        rows, columns=["round", "n_tested", "hits_found", "hits_in_pool", "hit_ratio"]
    )


def _write_round(
    out: Path,
    r: int,
    sel: Selection,
    table: pd.DataFrame,
    protocol: dict,
    log: str,
    config: LoopConfig,
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
    """
    out = Path(out_dir)
    lab = lab if lab is not None else make_lab(screen, config)
    genes = _check_pool(screen, pool, lab, config)
    feats = (features if features is not None else empty_features(genes)).select(
        config.feature_sources
    )
    settings = dataclasses.asdict(config) | {
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
        tested = {g for f in frames for g in f.gene}
        for r in range(len(frames), config.rounds):
            if stop_after is not None and r >= stop_after:
                break
            obs = _observations(frames)
            remaining = [g for g in genes if g not in tested]
            sel = select_batch(
                config.strategy,
                pool=remaining,
                features=feats,
                obs=obs,
                batch_size=config.batch_size,
                round_index=r,
                seed=config.seed,
                direction=screen.direction,
                use_neighbours="neighbours" in config.feature_sources,
                n_estimators=config.n_estimators,
            )
            res = lab.run(r, sel.genes)
            table = res.table.copy()
            if list(table.gene.astype(str)) != sel.genes:
                raise OutputError(f"round {r}: the lab returned results for other genes than asked")
            if not np.isfinite(table.score.to_numpy(float)).all():
                raise OutputError(f"round {r}: the lab returned missing or non-finite read-outs")
            table["round"] = r
            table["hit"] = table.gene.isin(screen.hits)
            _write_round(out, r, sel, table, res.protocol, res.log, config)
            frames.append(table)
            tested |= set(sel.genes)
            curve = _curve(frames, pool_hits)
            _write_state(out, config, curve, screen, lab)
        completed = len(frames) == config.rounds
        curve = _curve(frames, pool_hits)
        if frames:
            _write_state(out, config, curve, screen, lab)
        ranking = None
        if completed:
            ranking = _final_ranking(out, screen, genes, feats, frames, config)
    batches = [list(f.gene.astype(str)) for f in frames]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return LoopResult(out, config, batches, results, curve, completed, ranking)


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
) -> pd.DataFrame:
    """Evidence ranking of every pool gene after the last round (written to ranking.csv)."""
    from lifelm.lab.evidence import evidence_table

    obs = _observations(frames)
    tested = set(obs.genes)
    remaining = [g for g in genes if g not in tested]
    pred = None
    if remaining and feats.matrix.shape[1]:
        sel = select_batch(
            "greedy",
            pool=remaining,
            features=feats,
            obs=obs,
            batch_size=1,
            round_index=config.rounds,
            seed=config.seed,
            direction=screen.direction,
            use_neighbours="neighbours" in config.feature_sources,
            n_estimators=config.n_estimators,
        )
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
    return {
        "state": state,
        "curve": pd.read_csv(out / "curve.csv"),
        "rounds": rounds,
        "ranking": ranking,
    }
