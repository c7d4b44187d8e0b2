"""The lab behind one interface: ``run(round_index, genes) -> RoundResult``.

* :class:`SimulatedLab` is an assay oracle over a held-out real screen: each experiment reveals the
  measured score of that one perturbation (one of the data's replicates when the table has them,
  otherwise the gene score plus the controls' spread as measurement noise, otherwise the published
  score exactly). It answers only for the genes it is asked about and records every query.
* :class:`lifelm.lab.plr.PyLabRobotLab` compiles the same round into a PyLabRobot protocol and runs
  it (on the chatterbox simulators in tests); its plate reader's readings are the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError
from lifelm.lab.screens import Screen


@dataclass
class RoundResult:
    """What a lab returns for one round: per-gene results, the protocol it ran, a readable log."""

    table: pd.DataFrame  # columns: gene, score (+ backend extras such as plate, well)
    protocol: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    # vector read-outs (e.g. a Perturb-seq round's expression shifts), saved as responses.npz
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Lab(Protocol):
    """Anything that runs a batch of single-gene perturbations and returns their read-outs."""

    name: str

    def check_pool(self, genes: Sequence[str]) -> None: ...

    def run(self, round_index: int, genes: Sequence[str]) -> RoundResult: ...


class SimulatedLab:
    """Assay oracle answering from a real screen (see the module docstring).

    Parameters
    ----------
    screen
        The held-out screen.
    seed
        Seed of the measurement noise; round ``r`` draws from ``default_rng([seed, r])`` so a
        resumed loop measures exactly what an uninterrupted one would.
    noise_sd
        Override of the measurement noise (score units). ``None``: replicates if the table has
        them, else the controls' sd, else 0.
    """

    name = "simulated"

    def __init__(self, screen: Screen, *, seed: int = 0, noise_sd: float | None = None) -> None:
        if noise_sd is not None and (not np.isfinite(noise_sd) or noise_sd < 0):
            raise InputError(f"noise_sd must be a finite number >= 0 (got {noise_sd})")
        self._screen = screen
        self.seed = int(seed)
        self.noise_sd = noise_sd
        self.queried: list[str] = []

    @property
    def noise_model(self) -> str:
        s = self._screen
        if self.noise_sd is not None:
            return f"gene score + normal noise, sd {self.noise_sd:g} (set by the user)"
        if s.replicates is not None:
            return f"one of the gene's {s.replicates.shape[1]} measured replicates, drawn at random"
        if s.control_scores is not None and len(s.control_scores) >= 2:
            return f"gene score + normal noise with the controls' sd {s.null()[1]:.4g}"
        return "the published gene score exactly (the table has no replicates or controls)"

    def check_pool(self, genes: Sequence[str]) -> None:
        unknown = [g for g in genes if g not in self._screen.index]
        if unknown:
            raise InputError(
                f"the pool has {len(unknown)} genes the screen {self._screen.name} did not measure "
                f"(e.g. {', '.join(unknown[:5])}); the simulated lab can only run measured "
                "perturbations. Drop them from the pool or use a screen that covers them."
            )

    def _gene_rng(self, round_index: int, gene_index: int, well: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(round_index), int(gene_index), int(well)])

    def measure(
        self, round_index: int, genes: Sequence[str], *, wells: Sequence[int] | None = None
    ) -> np.ndarray:
        """Measured scores of ``genes`` in round ``round_index`` (records the query).

        The noise of a gene depends only on (seed, round, gene, well number), never on its
        batch-mates, so the simulated and the PyLabRobot lab measure the same values.
        """
        self.check_pool(genes)
        self.queried.extend(genes)
        s = self._screen
        wells = [0] * len(genes) if wells is None else list(wells)
        _mu, null_sd = s.null()
        out = np.empty(len(genes))
        for k, g in enumerate(genes):
            i = s.index[g]
            rng = self._gene_rng(round_index, i, wells[k])
            if self.noise_sd is not None:
                out[k] = s.scores[i] + (rng.normal(0.0, self.noise_sd) if self.noise_sd else 0.0)
            elif s.replicates is not None:
                reps = s.replicates[i][np.isfinite(s.replicates[i])]
                out[k] = reps[rng.integers(len(reps))]
            elif null_sd > 0:
                out[k] = s.scores[i] + rng.normal(0.0, null_sd)
            else:
                out[k] = s.scores[i]
        return out

    def control_readings(self, round_index: int, n: int) -> np.ndarray:
        """Readings of ``n`` non-targeting control wells (the controls' distribution, else 0 + noise)."""
        rng = np.random.default_rng([self.seed, int(round_index), 29])
        mu, sd = self._screen.null()
        if self.noise_sd is not None:
            sd = self.noise_sd
        return mu + rng.normal(0.0, sd, n) if sd > 0 else np.full(n, mu)

    def run(self, round_index: int, genes: Sequence[str]) -> RoundResult:
        values = self.measure(round_index, genes)
        table = pd.DataFrame({"gene": list(genes), "score": values})
        protocol = {
            "backend": self.name,
            "round": int(round_index),
            "n_experiments": len(genes),
            "assay": f"screen {self._screen.name} ({self._screen.source or 'in memory'})",
            "noise_model": self.noise_model,
            "steps": [
                {"op": "measure", "genes": list(genes), "source": "held-out screen table"},
            ],
        }
        log = (
            f"round {round_index}: simulated assay on screen {self._screen.name}\n"
            f"  {len(genes)} single-gene perturbations measured; noise: {self.noise_model}\n"
        )
        return RoundResult(table=table, protocol=protocol, log=log)
