"""The one CLI vocabulary: option types shared by every ``lifelm`` command.

Every command spells the same thing the same way: ``-m/--model`` a checkpoint folder,
``-o/--out`` the output, ``--device``, ``--layer``, ``-j/--jobs``, ``--seed``, ``--steps``,
``--json``, ``--resume``; the CPU techniques of cell inference (``--quantize``, ``--precision``,
``--compile``, ``-j/--jobs``) are spelled once here for ``embed``, ``perturb`` and ``targets``. Choices are ``Enum``/``Literal`` so ``--help`` lists them and typer
refuses anything else before a command runs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Device(StrEnum):
    """Where to compute."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Quantize(StrEnum):
    """Weight quantisation for CPU inference."""

    none = "none"
    int8 = "int8"


class Precision(StrEnum):
    """Compute precision for inference."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


H5AD = Annotated[
    Path,
    typer.Argument(
        help="An .h5ad file with raw counts (X, layers['counts'] or .raw).",
        exists=True,
        dir_okay=False,
    ),
]
FASTA = Annotated[
    Path,
    typer.Argument(help="FASTA of genomes (plain, .gz, .xz or .bz2).", exists=True, dir_okay=False),
]
MODEL = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        help="Model checkpoint folder (model.safetensors + config.json), e.g. runs/x/model.",
        exists=True,
        file_okay=False,
    ),
]
OPTIONAL_MODEL = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model checkpoint folder (model.safetensors + config.json).",
        exists=True,
        file_okay=False,
    ),
]
OUT_FILE = Annotated[Path, typer.Option("--out", "-o", help="Output file.")]
OUT_DIR = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DEVICE = Annotated[Device, typer.Option("--device", help="auto (CUDA if present), cpu or cuda.")]
LAYER = Annotated[
    str | None,
    typer.Option(
        "--layer",
        help="Where the raw counts are: a layer name, 'X' or 'raw'. Found automatically when omitted.",
    ),
]
JOBS = Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")]
SEED = Annotated[int, typer.Option("--seed", help="Random seed (data order, sampling, init).")]
STEPS = Annotated[int, typer.Option("--steps", min=0, help="Optimizer steps.")]
BATCH_SIZE = Annotated[int, typer.Option("--batch-size", min=1, help="Items per step per process.")]
LR = Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate.")]
AS_JSON = Annotated[bool, typer.Option("--json", help="Write JSON records instead of TSV.")]
RESUME = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --out from its last checkpoint after a kill "
        "(refused if the inputs or settings differ).",
    ),
]
# CPU techniques of cell inference (lifelm.tasks.cells.cpu_techniques): embed, perturb, targets
QUANTIZE = Annotated[
    Quantize, typer.Option(help="int8: dynamic int8 linear layers (CPU; lossy, measured).")
]
COMPILE = Annotated[
    bool, typer.Option("--compile", help="torch.compile the forward (compiles first).")
]
PRECISION = Annotated[
    Precision, typer.Option(help="bf16 on CPU needs AVX-512 BF16/AMX (else fp32, said).")
]
CPU_JOBS = Annotated[
    int, typer.Option("--jobs", "-j", min=1, help="Worker processes pinned to disjoint cores.")
]
