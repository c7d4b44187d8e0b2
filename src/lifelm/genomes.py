"""Genome models: the public Python API (the genome side of :mod:`lifelm.cells`).

Every function takes the data first and returns a pandas table keyed by Nextclade's column names
(``seqName``, ``clade``, ``substitutions``, ``qc.overallStatus`` ...), so results join to a
Nextclade run with ``pd.merge(..., on="seqName")``. One vocabulary throughout: ``sequences`` (a
FASTA path, ``{seqName: sequence}`` or ``(name, sequence)`` pairs), ``model`` (a
:class:`CodonModel` or its folder), ``reference``, ``mode`` (``"orf"`` or ``"genome"``),
``context``, ``device``, ``n_jobs``, ``seed``.

>>> import lifelm.genomes as lg
>>> ref = lg.reference()
>>> len(ref)
29903
>>> muts = lg.mutations({"x": ref[:23402] + "G" + ref[23403:]})
>>> muts.loc[0, ["seqName", "substitutions", "aaSubstitutions"]].tolist()
['x', 'A23403G', 'S:D614G']
>>> model = lg.CodonModel.random("test", seed=0)  # an untrained model, for examples only
>>> table = lg.score_mutations(["A23403G", "C241T"], model, context=4)
>>> table[["substitution", "aaSubstitution", "reason"]].values.tolist()
[['A23403G', 'S:D614G', ''], ['C241T', '', 'non-coding']]

Typical use::

    model = lg.CodonModel.load("runs/sc2/model")
    qc = lg.qc("genomes.fasta")                       # Nextclade's QC columns
    emb = lg.embed("genomes.fasta", model, mode="genome")   # seqName, emb_0 ...
    scores = lg.score("genomes.fasta", model)          # seqName, log_likelihood, ...
    scan = lg.score_mutations(None, model)             # every single-nucleotide change of Wuhan-Hu-1
    result = lg.warn(table, genomes, model=model.module)  # early-warning scores per new lineage
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from lifelm.data.genomes.align import Reference
from lifelm.data.genomes.codons import OrfLike
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes import mutscore
from lifelm.tasks.genomes.codon_lm import (
    checked_genomes,
    default_orfs,
    load_codon_model,
    with_checks,
)
from lifelm.tasks.genomes.mutations import call_mutations
from lifelm.tasks.genomes.qc import genome_qc
from lifelm.tasks.genomes.warning import warn

__all__ = [
    "CodonModel",
    "embed",
    "generate",
    "lineages",
    "mutations",
    "qc",
    "reference",
    "score",
    "score_mutations",
    "warn",
]

Sequences = str | Path | Mapping[str, str] | Iterable[tuple[str, str]]
Mode = Literal["orf", "genome"]
ModelLike = "CodonModel | str | Path"


@dataclass(frozen=True)
class CodonModel:
    """A codon language model and what its checkpoint says about it.

    ``module`` is the :class:`~lifelm.models.codon_transformer.CodonTransformer` (eval mode);
    ``config`` the checkpoint's ``config.json``; ``path`` the folder it came from.
    """

    module: CodonTransformer
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> CodonModel:
        """Load from a checkpoint folder, a run folder (its ``model/``) or a GenSLM folder."""
        module, config = load_codon_model(path, device=device)
        return cls(module, config, Path(path))

    @classmethod
    def random(cls, preset: str = "test", *, seed: int = 0) -> CodonModel:
        """An untrained model of a preset (tests and examples; its scores mean nothing)."""
        torch.manual_seed(seed)
        return cls(CodonTransformer(CodonTransformerConfig.from_name(preset)).eval())

    @property
    def max_length(self) -> int:
        """Longest row the model reads (tokens)."""
        return self.module.cfg.max_length


def _model(model: CodonModel | str | Path, device: str | None) -> CodonTransformer:
    m = model if isinstance(model, CodonModel) else CodonModel.load(model)
    if device is not None:
        m.module.to(device)
    return m.module


def reference() -> str:
    """SARS-CoV-2 Wuhan-Hu-1 (MN908947.3), the coordinates of every table here."""
    return Reference.sarscov2().sequence


def _aligned(sequences: Sequences) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The scorable genomes in reference coordinates, and the checks of every input genome."""
    source = sequences if isinstance(sequences, (str, Path, Mapping)) else dict(sequences)
    return checked_genomes(source, default_orfs())


def qc(sequences: Sequences, *, tree: str | Path | None = None, n_jobs: int = 1) -> pd.DataFrame:
    """Nextclade's QC (good/mediocre/bad with reasons), one row per genome (:func:`genome_qc`)."""
    return genome_qc(sequences, tree=tree, n_jobs=n_jobs)


def mutations(sequences: Sequences, *, n_jobs: int = 1) -> pd.DataFrame:
    """Align to Wuhan-Hu-1 and call mutations in Nextclade's notation and columns."""
    return call_mutations(sequences, n_jobs=n_jobs)


def embed(
    sequences: Sequences,
    model: CodonModel | str | Path,
    *,
    mode: Mode = "orf",
    context: int | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """One embedding per genome: ``seqName``, ``qc.scoreStatus``, ``qc.scoreReasons``,
    ``n_codons``, ``n_unknown``, ``n_deleted``, ``emb_0`` ... (NaN for genomes that fail the
    scoring checks: not aligned, another virus, N-rich). ``mode="genome"``: GenSLM's
    whole-genome context (:mod:`lifelm.tasks.genomes.embed`)."""
    from lifelm.tasks.genomes.embed import embed_genomes

    seqs, checks = _aligned(sequences)
    emb, table = embed_genomes(
        _model(model, device), seqs, mode=mode, context=context, progress=False
    )
    cols = pd.DataFrame(emb.astype(np.float64), columns=[f"emb_{i}" for i in range(emb.shape[1])])
    return with_checks(pd.concat([table, cols], axis=1), checks)


def score(
    sequences: Sequences,
    model: CodonModel | str | Path,
    *,
    mode: Mode = "orf",
    context: int | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Genome log-likelihood under the model: ``seqName``, ``qc.scoreStatus``,
    ``qc.scoreReasons``, ``log_likelihood``, ``n_scored``, ``mean_log_likelihood``,
    ``perplexity`` (NaN for genomes that fail the scoring checks)."""
    from lifelm.tasks.genomes.score import score_genomes

    seqs, checks = _aligned(sequences)
    table, _, _ = score_genomes(
        _model(model, device), seqs, mode=mode, context=context, progress=False
    )
    return with_checks(table, checks)


def score_mutations(
    substitutions: Sequence[str] | None,
    model: CodonModel | str | Path,
    *,
    reference: str | None = None,
    level: Literal["nt", "aa"] = "nt",
    region: tuple[int, int] | None = None,
    orfs: Sequence[OrfLike] | None = None,
    consensus: Sequence[str] | None = None,
    rates: pd.DataFrame | None = None,
    context: int = 32,
    method: mutscore.Method = "full",
    device: str | None = None,
) -> pd.DataFrame:
    """Zero-shot codon-model scores of substitutions, next to the simple baselines.

    Parameters
    ----------
    substitutions
        Nextclade-style changes (``"A23403G"``), or ``None`` for every single-nucleotide change
        of the coding positions of ``reference`` (within ``region``).
    model
        The codon model.
    reference
        The genome they are changes of, in Wuhan-Hu-1 coordinates (a lineage consensus with
        ``-`` for deletions works); ``None``: Wuhan-Hu-1.
    level
        ``"nt"``: one row per substitution; ``"aa"``: one row per amino-acid change reachable by
        one nucleotide change, scored by its best path.
    region, orfs
        Restrict the scan (``region`` = 1-based inclusive positions).
    consensus
        Lineage consensus genomes (aligned) for the ``conservation`` baseline.
    rates
        Bloom & Neher's ``synonymous_rates_by_clade.csv`` for the ``mutation_prior`` baseline.
    context
        Codons of context on each side (``mutscore``).
    method
        ``"full"`` or ``"left"`` log-likelihood ratio (``mutscore``).
    device
        Where to compute.

    Returns
    -------
    DataFrame
        ``substitution``, ``position``, ``ref``, ``alt``, ``orf``, ``aaSubstitution``,
        ``synonymous``, ``llr``, ``llr_left``, ``codon_matrix``, ``blosum62``,
        ``conservation``, ``mutation_prior``, ``reason`` (why a score is NaN; ``""`` if scored).
        Higher = more tolerated, for the model and every baseline.
    """
    ref = Reference.sarscov2().sequence if reference is None else reference
    orfs = default_orfs() if orfs is None else list(orfs)
    subs = (
        mutscore.all_substitutions(ref, orfs=orfs, region=region)
        if substitutions is None
        else list(substitutions)
    )
    table = mutscore.substitution_table(
        _model(model, device),
        ref,
        subs,
        context_codons=context,
        orfs=orfs,
        need_full=method == "full",
    )
    table = mutscore.add_baselines(table, consensus=consensus, rates=rates)
    if level == "aa":
        return mutscore.aa_table(table)
    return mutscore.per_substitution(table)


def lineages(
    embeddings: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    columns: Sequence[str] = ("clade",),
    sequences: Mapping[str, str] | None = None,
    train: Sequence[bool] | None = None,
    method: str = "auto",
) -> pd.DataFrame:
    """Lineage labels with calibrated probabilities, ``unassigned``/``novel`` calls and the
    Hamming-NN / 6-mer baselines (``lifelm.tasks.genomes.lineages``); the summary (held-out
    accuracy of every method) is in ``table.attrs["summary"]``.

    ``embeddings`` is :func:`embed`'s table; ``labels`` has ``seqName`` and the ``columns``.
    """
    from lifelm.tasks.genomes.lineages import lineages as run

    lab = labels.set_index("seqName").reindex(embeddings["seqName"]).reset_index()
    emb_cols = [c for c in embeddings.columns if c.startswith("emb_")]
    seqs = None if sequences is None else [sequences[n] for n in embeddings["seqName"]]
    table, summary = run(
        embeddings[emb_cols].to_numpy(),
        lab,
        train=None if train is None else np.asarray(train, dtype=bool),
        columns=columns,
        sequences=seqs,
        method=method,
    )
    table.attrs["summary"] = summary
    return table


def generate(
    model: CodonModel | str | Path,
    n: int = 1,
    *,
    prompt: str = "ATG",
    temperature: float = 1.0,
    top_k: int = 0,
    max_codons: int = 500,
    seed: int = 0,
    device: str | None = None,
) -> pd.DataFrame:
    """Sample ``n`` open reading frames (``seqName``, ``sequence``, ``n_codons``, ``stopped``,
    ``mean_log_likelihood``) with the key/value cache; ``top_k=1`` is greedy."""
    from lifelm.tasks.genomes.generate import generate as run

    return run(
        _model(model, device),
        n,
        prompt=prompt,
        temperature=temperature,
        top_k=top_k,
        max_codons=max_codons,
        seed=seed,
    )
