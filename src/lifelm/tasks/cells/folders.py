"""Perturb and targets runs into one output folder: read, lock, manifest, compute, write.

These are what ``lifelm cells perturb|targets`` (and the service's jobs) call, so the command
line holds no logic: the folder is locked for one writer, a manifest of the data, the weights
and the settings is written (and checked on ``resume``), and every file lands atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import anndata as ad

from lifelm._core.choices import one_of
from lifelm._core.errors import OutputError
from lifelm._core.runfolder import atomic_output, check_output_path, ensure_manifest, lock_folder
from lifelm.data.cells.perturb_ops import Kind
from lifelm.tasks.cells.cpu_techniques import CpuTechniques


def parse_genes(genes: str | None) -> list[str] | None:
    """``"A,B+C"`` → ``["A", "B+C"]``; ``None``/empty → ``None`` (every gene).

    >>> parse_genes("IFNB1, STAT1+IRF9,")
    ['IFNB1', 'STAT1+IRF9']
    """
    parsed = [g.strip() for g in genes.split(",") if g.strip()] if genes else []
    return parsed or None


@dataclass(frozen=True)
class PerturbRun:
    """Settings of a ``perturb`` run (see :func:`lifelm.tasks.cells.perturb.perturb`)."""

    genes: str | None = None  # comma-separated; None = every expressed gene
    kind: str = "delete"  # delete, overexpress or knockdown
    fraction: float = 1.0
    method: str = "exact"  # exact or screen
    screen: str = "gradient"  # gradient or rank (with method="screen")
    top: int = 50
    max_cells: int | None = None
    gene_shifts: bool = False
    layer: str | None = None
    max_tokens: int = 32_768
    device: str = "auto"
    techniques: CpuTechniques = field(default_factory=CpuTechniques)  # int8, bf16, compile, -j


def perturb_to_folder(
    data: str | Path, model: str | Path, out: str | Path, run: PerturbRun
) -> dict[str, Any]:
    """Scan the cells of ``data`` and write ``perturb_genes.tsv`` (and ``responders.tsv``) to ``out``.

    The resumable scan parts live in ``out/scan`` (locked and manifested by the scan itself).
    Returns the run's ``info`` dict.
    """
    from lifelm.tasks.cells.perturb import perturb

    out = check_output_path(out, kind="folder")
    adata = ad.read_h5ad(data)
    if run.max_cells is not None:
        adata = adata[: run.max_cells].copy()
    perturb(
        adata, model, genes=parse_genes(run.genes),
        kind=one_of(run.kind, get_args(Kind), what="kind"), fraction=run.fraction,
        layer=run.layer, method=one_of(run.method, ("exact", "screen"), what="method"),
        screen=one_of(run.screen, ("gradient", "rank"), what="screen"), top=run.top,
        max_tokens=run.max_tokens, gene_shifts=run.gene_shifts, out_dir=out / "scan",
        device=run.device, techniques=run.techniques,
    )  # fmt: skip
    res = adata.uns["lifelm_perturb"]
    with atomic_output(out / "perturb_genes.tsv") as tmp:
        res["genes"].to_csv(tmp, sep="\t", index=False)
    if "responders" in res:
        with atomic_output(out / "responders.tsv") as tmp:
            res["responders"].to_csv(tmp, sep="\t", index=False)
    return dict(res["info"])


@dataclass(frozen=True)
class TargetsRun:
    """Settings of a ``targets`` run (see :func:`lifelm.tasks.cells.targets.rank_targets`)."""

    label_key: str
    start: str
    goal: str
    kind: str = "overexpress"  # delete, overexpress or knockdown
    fraction: float = 1.0
    genes: str | None = None
    donor_key: str | None = None
    groupby: str | None = None
    method: str = "auto"  # auto, insilico or de
    n_cells: int = 100
    min_detection: float = 0.05
    max_candidates: int = 2000
    n_null: int = 20
    n_permutations: int = 2000
    pairs_top: int = 0
    seed: int = 0
    layer: str | None = None
    max_tokens: int = 32_768  # memory only; not part of the manifest
    device: str = "auto"  # not part of the manifest
    # CPU techniques, as embed; only those that change the numbers (int8, bf16) enter the manifest
    techniques: CpuTechniques = field(default_factory=CpuTechniques)


def targets_to_folder(
    data: str | Path, model: str | Path, out: str | Path, run: TargetsRun, *, resume: bool = False
) -> dict[str, Any]:
    """Rank targets and write ``targets.tsv``, ``report.html`` (and ``pairs.tsv``) to ``out``.

    One writer per folder; ``resume=True`` continues a killed run and is refused when the data,
    the weights or the settings differ from the run's manifest. Returns the result dict
    (``adata.uns["lifelm_targets"]``).
    """
    from lifelm.reports.perturbation import targets_report
    from lifelm.tasks.cells.targets import rank_targets, write_targets

    out, model = check_output_path(out, kind="folder"), Path(model)
    skip = ("max_tokens", "device", "techniques")
    settings = {k: v for k, v in asdict(run).items() if k not in skip}
    settings.update(run.techniques.result_settings())
    settings["genes"] = parse_genes(run.genes)
    inputs = {
        "data": data,
        "model_weights": model / "model.safetensors",
        "model_config": model / "config.json",
    }
    with lock_folder(out):
        if not resume and (out / "scan").exists():
            raise OutputError(
                f"{out}: holds a previous targets run; pass --resume to continue it (same data, "
                "weights and settings) or choose another --out folder."
            )
        ensure_manifest(out, job="cells.targets", inputs=inputs, settings=settings, resume=resume)
        adata = ad.read_h5ad(data)
        rank_targets(
            adata, model, label_key=run.label_key, start=run.start, goal=run.goal,
            kind=one_of(run.kind, get_args(Kind), what="kind"),
            fraction=run.fraction, genes=settings["genes"], donor_key=run.donor_key,
            groupby=run.groupby, method=run.method, n_cells=run.n_cells,
            min_detection=run.min_detection, max_candidates=run.max_candidates, n_null=run.n_null,
            n_permutations=run.n_permutations, pairs_top=run.pairs_top, layer=run.layer,
            max_tokens=run.max_tokens, out_dir=out / "scan", seed=run.seed, device=run.device,
            techniques=run.techniques,
        )  # fmt: skip
        res = adata.uns["lifelm_targets"]
        write_targets(res, out / "targets.tsv")
        if "pairs" in res:
            with atomic_output(out / "pairs.tsv") as tmp:
                res["pairs"].to_csv(tmp, sep="\t", index=False)
        with atomic_output(out / "report.html") as tmp:
            targets_report(res, tmp)
    return res
