"""One typed job spec per task, validated at submission with the CLI's own option rules.

A spec names its inputs by dataset name (of the same project) and registered model
(``name:version``); :func:`command` turns a validated spec into the ``lifelm …`` argument list
the worker runs, with every output under the job's ``out/`` folder, so the same spec gives the
same artifacts on every executor.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DatasetName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.\-]*$")]
ModelRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.\-]*:[0-9]+$", max_length=80)]


class Resources(BaseModel):
    """What the job asks of the executor; budgets are charged seconds × cpus (and × gpus)."""

    model_config = ConfigDict(extra="forbid")
    cpus: int = Field(default=1, ge=1, le=64)
    gpus: int = Field(default=0, ge=0, le=8)
    max_hours: float = Field(
        default=1.0, gt=0, le=168, description="Wall-time limit; also the budget hold."
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: Resources = Field(default_factory=Resources)


class CellsEmbed(_Spec):
    """``lifelm cells embed``: embeddings in ``.obsm[key_added]`` of ``out/embedded.h5ad``."""

    task: Literal["cells.embed"]
    dataset: DatasetName
    model: ModelRef
    batch_size: int = Field(64, ge=1, le=4096)
    key_added: str = Field("X_lifelm", pattern=r"^[A-Za-z_][\w]*$", max_length=64)
    layer: str | None = Field(None, pattern=r"^[\w.]+$", max_length=64)


class CellsAnnotate(_Spec):
    """``lifelm cells annotate``: labels and probabilities in ``out/annotated.h5ad``."""

    task: Literal["cells.annotate"]
    dataset: DatasetName
    model: ModelRef
    reference: DatasetName | None = None
    label_key: str = Field("cell_type", max_length=64, pattern=r"^[\w .\-]+$")
    mode: Literal["finetune", "knn"] = "finetune"
    epochs: float = Field(3.0, gt=0, le=100)
    layer: str | None = Field(None, pattern=r"^[\w.]+$", max_length=64)


class CellsPretrain(_Spec):
    """``lifelm cells pretrain``: a run folder; the final model is registered as ``model_name``."""

    task: Literal["cells.pretrain"]
    datasets: list[DatasetName] = Field(min_length=1, max_length=64)
    model_name: str = Field(pattern=r"^[A-Za-z0-9][\w.\-]*$", max_length=64)
    preset: Literal["test", "tiny", "small", "geneformer-6l", "geneformer-12l"] = "small"
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65536)
    lr: float = Field(3e-4, gt=0, le=1)
    warmup: int = Field(100, ge=0)
    max_length: int | None = Field(None, ge=8, le=65536)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    processes: int = Field(1, ge=1, le=64, description="torchrun processes (srun under SLURM).")
    licence: str = Field("CC-BY-4.0", max_length=64)
    intended_use: str = Field("research", max_length=500)


class _Genomes(_Spec):
    dataset: DatasetName
    jobs: int = Field(1, ge=1, le=64)


class GenomesQC(_Genomes):
    """``lifelm genomes qc``: one QC row per genome in ``out/qc.tsv``."""

    task: Literal["genomes.qc"]


class GenomesMutations(_Genomes):
    """``lifelm genomes mutations``: Nextclade-style calls in ``out/mutations.tsv``."""

    task: Literal["genomes.mutations"]


JobSpec = Annotated[
    CellsEmbed | CellsAnnotate | CellsPretrain | GenomesQC | GenomesMutations,
    Field(discriminator="task"),
]
TASKS = ("cells.embed", "cells.annotate", "cells.pretrain", "genomes.qc", "genomes.mutations")
INPUT_KIND = {
    "cells.embed": "h5ad",
    "cells.annotate": "h5ad",
    "cells.pretrain": "h5ad",
    "genomes.qc": "fasta",
    "genomes.mutations": "fasta",
}


def input_datasets(spec: BaseModel) -> list[str]:
    """Dataset names a spec reads."""
    names = list(getattr(spec, "datasets", None) or [])
    for field in ("dataset", "reference"):
        if getattr(spec, field, None):
            names.append(getattr(spec, field))
    return names


def command(
    spec: _Spec, datasets: dict[str, str], models: dict[str, str], *, resume: bool
) -> list[str]:
    """The ``lifelm`` arguments of ``spec`` (paths resolved; outputs relative to the job folder).

    ``datasets`` maps dataset names to stored paths and ``models`` model refs to folders.
    """
    device = "cpu" if spec.resources.gpus == 0 else "auto"
    if isinstance(spec, CellsEmbed):
        argv = ["cells", "embed", datasets[spec.dataset], "-m", models[spec.model]]
        argv += ["-o", "out/embedded.h5ad", "--batch-size", str(spec.batch_size)]
        argv += ["--key-added", spec.key_added, "--device", device]
        return argv + (["--layer", spec.layer] if spec.layer else [])
    if isinstance(spec, CellsAnnotate):
        argv = ["cells", "annotate", datasets[spec.dataset], "-m", models[spec.model]]
        argv += ["-o", "out/annotated.h5ad", "--label-key", spec.label_key, "--mode", spec.mode]
        argv += ["--epochs", str(spec.epochs), "--device", device]
        if spec.reference:
            argv += ["--reference", datasets[spec.reference]]
        return argv + (["--layer", spec.layer] if spec.layer else [])
    if isinstance(spec, CellsPretrain):
        argv = ["cells", "pretrain", *(datasets[d] for d in spec.datasets), "-o", "out/run"]
        argv += ["--preset", spec.preset, "--steps", str(spec.steps)]
        argv += ["--batch-size", str(spec.batch_size), "--lr", str(spec.lr)]
        argv += ["--warmup", str(spec.warmup), "--checkpoint-every", str(spec.checkpoint_every)]
        argv += ["--seed", str(spec.seed), "--device", device]
        if spec.max_length:
            argv += ["--max-length", str(spec.max_length)]
        if spec.processes > 1:
            argv += ["--strategy", "ddp"]
        return argv + (["--resume"] if resume else [])
    if isinstance(spec, GenomesQC | GenomesMutations):
        name = "qc" if isinstance(spec, GenomesQC) else "mutations"
        return [
            "genomes",
            name,
            datasets[spec.dataset],
            "-o",
            f"out/{name}.tsv",
            "-j",
            str(spec.jobs),
        ]
    raise TypeError(f"no command for {type(spec).__name__}")
