"""One typed job spec per task, validated at submission with the CLI's own option rules.

A spec names its inputs by dataset name (of the same project) and registered model
(``name:version``); :func:`command` turns a validated spec into the ``lifelm …`` argument list
the worker runs (``python -m lifelm …``, the command a user would type), with every output under
the job's ``out/`` folder, so the same spec gives the same artifacts on every executor.

Ranges and types are checked here (pydantic). Choices (``--kind``, ``--method``, …) are not
listed a second time: a choice field is a plain string, and the server parses the command the
spec builds with the real ``lifelm`` CLI parser before it accepts the job (the CLI layer hands
that parser to the server, see ``Settings.argv_check``), so a spec is refused with the message
the CLI itself would print. Options are written ``--name=value``, so no value is ever read as
an option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DatasetName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.\-]*$")]
ModelRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.\-]*:[0-9]+$", max_length=80)]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.\-]*$", max_length=64)]
Choice = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_\-]*$",
        max_length=32,
        description="One of the CLI option's choices (checked by the CLI's parser at submission).",
    ),
]
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Key = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w .\-]+$")]
Layer = Annotated[str, Field(pattern=r"^[\w.]+$", max_length=64)]
Genes = Annotated[str, Field(min_length=1, max_length=20_000, pattern=r"^[\w.+\-, ]+$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]

# dataset kinds (see datasets.SUFFIXES)
H5AD, FASTA, TABLE, CORPUS = "h5ad", "fasta", "table", "corpus"


class Resources(BaseModel):
    """What the job asks of the executor; budgets are charged seconds × cpus (and × gpus)."""

    model_config = ConfigDict(extra="forbid")
    cpus: int = Field(default=1, ge=1, le=64)
    gpus: int = Field(default=0, ge=0, le=8)
    max_hours: float = Field(
        default=1.0, gt=0, le=168, description="Wall-time limit; also the budget hold."
    )


@dataclass
class Paths:
    """Where the names of a spec live on the server: stored datasets, registered models."""

    datasets: dict[str, str]
    models: dict[str, str]
    bench_data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _opt(flag: str, value: object) -> list[str]:
    """``--flag=value``, or nothing when ``value`` is None."""
    return [] if value is None else [f"{flag}={value}"]


def _many(flag: str, values: list[str] | None) -> list[str]:
    return [f"{flag}={v}" for v in values or []]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: Resources = Field(default_factory=Resources)

    # field name -> dataset kinds it accepts (a list field names several datasets)
    inputs: ClassVar[dict[str, tuple[str, ...]]] = {}
    # fields holding model references
    uses_models: ClassVar[tuple[str, ...]] = ()
    # keep out/ on a new attempt (the task resumes from it); pass --resume where the CLI has it
    resumes: ClassVar[str] = "no"
    # a model folder (relative to the job folder) registered as ``model_name`` on success
    registers_model: ClassVar[str | None] = None
    # how progress is measured: a training run's metrics.jsonl, or the lab loop's rounds
    progress_from: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _paid_for(self) -> _Spec:
        """Worker processes (``jobs``, torchrun ``processes``) need the CPUs the budget pays for."""
        for name in ("jobs", "processes"):
            n = getattr(self, name, 1)
            if n > max(self.resources.cpus, self.resources.gpus):
                raise ValueError(
                    f"{name}={n} needs resources.cpus >= {n} (the budget is charged per CPU)"
                )
        return self

    @property
    def device(self) -> str:
        return "cpu" if self.resources.gpus == 0 else "auto"

    def argv(self, p: Paths, *, resume: bool) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------- cells
class CellsEmbed(_Spec):
    """``lifelm cells embed``: embeddings in ``.obsm[key_added]`` of ``out/embedded.h5ad``."""

    task: Literal["cells.embed"]
    dataset: DatasetName
    model: ModelRef
    batch_size: int = Field(64, ge=1, le=4096)
    key_added: str = Field("X_lifelm", pattern=r"^[A-Za-z_][\w]*$", max_length=64)
    layer: Layer | None = None
    inputs: ClassVar = {"dataset": (H5AD,)}
    uses_models: ClassVar = ("model",)

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "embed", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            "--out=out/embedded.h5ad", f"--batch-size={self.batch_size}",
            f"--key-added={self.key_added}", f"--device={self.device}",
            *_opt("--layer", self.layer),
        ]  # fmt: skip


class CellsAnnotate(_Spec):
    """``lifelm cells annotate``: labels and probabilities in ``out/annotated.h5ad``.

    With ``save_model`` the fine-tuned classifier is kept (``--save out/classifier``) and
    registered under that name.
    """

    task: Literal["cells.annotate"]
    dataset: DatasetName
    model: ModelRef
    reference: DatasetName | None = None
    label_key: Key = "cell_type"
    method: Choice = "auto"
    mode: Choice = "finetune"
    min_confidence: Probability = 0.5
    epochs: float = Field(2.0, gt=0, le=100)
    query_label_key: Key | None = None
    seed: Seed = 0
    layer: Layer | None = None
    save_model: ModelName | None = Field(
        None, description="Register the fine-tuned classifier under this name."
    )
    licence: str = Field("CC-BY-4.0", max_length=64)
    intended_use: str = Field("research", max_length=500)
    inputs: ClassVar = {"dataset": (H5AD,), "reference": (H5AD,)}
    uses_models: ClassVar = ("model",)

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "annotate", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            "--out=out/annotated.h5ad", f"--label-key={self.label_key}",
            f"--method={self.method}", f"--mode={self.mode}",
            f"--min-confidence={self.min_confidence}", f"--epochs={self.epochs}",
            f"--seed={self.seed}", f"--device={self.device}",
            *_opt("--reference", self.reference and p.datasets[self.reference]),
            *_opt("--query-label-key", self.query_label_key),
            *_opt("--layer", self.layer),
            *(["--save=out/classifier"] if self.save_model else []),
        ]  # fmt: skip


class _Training(_Spec):
    model_name: ModelName
    seed: Seed = 0
    processes: int = Field(1, ge=1, le=64, description="torchrun processes (srun under SLURM).")
    licence: str = Field("CC-BY-4.0", max_length=64)
    intended_use: str = Field("research", max_length=500)
    resumes: ClassVar = "flag"
    registers_model: ClassVar = "out/run/model"
    progress_from: ClassVar = "out/run/metrics.jsonl"


def _preset(value: str, module: str) -> str:
    import importlib

    presets = importlib.import_module(f"lifelm.models.{module}").PRESETS
    if value not in presets:
        raise ValueError(f"preset {value!r} is not one of {', '.join(presets)}")
    return value


class CellsPretrain(_Training):
    """``lifelm cells pretrain``: a run folder; the final model is registered as ``model_name``.

    ``datasets`` are raw-count h5ad files, or one corpus store (an uploaded archive or the
    output of a ``cells.corpus.build`` job).
    """

    task: Literal["cells.pretrain"]
    datasets: list[DatasetName] = Field(min_length=1, max_length=64)
    preset: str = Field("small", max_length=32, description="A cell-model preset.")
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65536)
    lr: float = Field(3e-4, gt=0, le=1)
    warmup: int = Field(100, ge=0)
    max_length: int | None = Field(None, ge=8, le=65536)
    checkpoint_every: int = Field(200, ge=1)
    layer: Layer | None = None
    inputs: ClassVar = {"datasets": (H5AD, CORPUS)}

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        return _preset(v, "cell_transformer")

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "pretrain", *(p.datasets[d] for d in self.datasets), "--out=out/run",
            f"--preset={self.preset}", f"--steps={self.steps}", f"--batch-size={self.batch_size}",
            f"--lr={self.lr}", f"--warmup={self.warmup}",
            f"--checkpoint-every={self.checkpoint_every}", f"--seed={self.seed}",
            f"--device={self.device}", *_opt("--max-length", self.max_length),
            *_opt("--layer", self.layer),
            *(["--strategy=ddp"] if self.processes > 1 else []),
            *(["--resume"] if resume else []),
        ]  # fmt: skip


class CellsEvaluate(_Spec):
    """``lifelm cells evaluate``: annotation and embedding scores next to the baselines, as
    ``out/evaluate.json`` (the markdown table is in the log)."""

    task: Literal["cells.evaluate"]
    dataset: DatasetName
    model: ModelRef
    label_key: Key = "cell_type"
    query: DatasetName | None = None
    query_label_key: Key | None = None
    label_map: DatasetName | None = None
    test_fraction: Fraction = 0.2
    finetune_steps: int = Field(0, ge=0, le=1_000_000)
    seed: Seed = 0
    layer: Layer | None = None
    inputs: ClassVar = {"dataset": (H5AD,), "query": (H5AD,), "label_map": (TABLE,)}
    uses_models: ClassVar = ("model",)

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "evaluate", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            f"--label-key={self.label_key}", f"--test-fraction={self.test_fraction}",
            f"--finetune-steps={self.finetune_steps}", f"--seed={self.seed}",
            "--out=out/evaluate.json", f"--device={self.device}",
            *_opt("--query", self.query and p.datasets[self.query]),
            *_opt("--query-label-key", self.query_label_key),
            *_opt("--label-map", self.label_map and p.datasets[self.label_map]),
            *_opt("--layer", self.layer),
        ]  # fmt: skip


class CellsPerturb(_Spec):
    """``lifelm cells perturb``: per-gene shifts in ``out/perturb/perturb_genes.tsv``; a new
    attempt continues after the finished cells."""

    task: Literal["cells.perturb"]
    dataset: DatasetName
    model: ModelRef
    genes: Genes | None = None
    kind: Choice = "delete"
    fraction: float = Field(1.0, gt=0, le=1)
    method: Choice = "exact"
    screen: Choice = "gradient"
    top: int = Field(50, ge=1, le=100_000)
    max_cells: int | None = Field(None, ge=1)
    gene_shifts: bool = False
    layer: Layer | None = None
    max_tokens: int = Field(32_768, ge=1, le=10_000_000)
    inputs: ClassVar = {"dataset": (H5AD,)}
    uses_models: ClassVar = ("model",)
    resumes: ClassVar = "folder"

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "perturb", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            "--out=out/perturb", f"--kind={self.kind}", f"--fraction={self.fraction}",
            f"--method={self.method}", f"--screen={self.screen}", f"--top={self.top}",
            f"--max-tokens={self.max_tokens}", f"--device={self.device}",
            *_opt("--genes", self.genes), *_opt("--max-cells", self.max_cells),
            *(["--gene-shifts"] if self.gene_shifts else []), *_opt("--layer", self.layer),
        ]  # fmt: skip


class CellsTargets(_Spec):
    """``lifelm cells targets``: ranked genes (``out/targets/targets.tsv``) with the DE
    baseline, the permutation test and ``report.html``; a new attempt resumes."""

    task: Literal["cells.targets"]
    dataset: DatasetName
    model: ModelRef
    label_key: Key
    start: Text
    goal: Text
    kind: Choice = "overexpress"
    fraction: float = Field(1.0, gt=0, le=1)
    genes: Genes | None = None
    donor_key: Key | None = None
    groupby: Key | None = None
    method: Choice = "auto"
    n_cells: int = Field(100, ge=1, le=1_000_000)
    min_detection: Probability = 0.05
    max_candidates: int = Field(2000, ge=1, le=100_000)
    n_null: int = Field(20, ge=1, le=10_000)
    n_permutations: int = Field(2000, ge=1, le=1_000_000)
    pairs_top: int = Field(0, ge=0, le=1000)
    seed: Seed = 0
    layer: Layer | None = None
    max_tokens: int = Field(32_768, ge=1, le=10_000_000)
    inputs: ClassVar = {"dataset": (H5AD,)}
    uses_models: ClassVar = ("model",)
    resumes: ClassVar = "flag"

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "cells", "targets", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            "--out=out/targets", f"--label-key={self.label_key}", f"--start={self.start}",
            f"--goal={self.goal}", f"--kind={self.kind}", f"--fraction={self.fraction}",
            f"--method={self.method}", f"--n-cells={self.n_cells}",
            f"--min-detection={self.min_detection}", f"--max-candidates={self.max_candidates}",
            f"--n-null={self.n_null}", f"--n-permutations={self.n_permutations}",
            f"--pairs-top={self.pairs_top}", f"--seed={self.seed}",
            f"--max-tokens={self.max_tokens}", f"--device={self.device}",
            *_opt("--genes", self.genes), *_opt("--donor-key", self.donor_key),
            *_opt("--groupby", self.groupby), *_opt("--layer", self.layer),
            *(["--resume"] if resume else []),
        ]  # fmt: skip


class CellsCorpusBuild(_Spec):
    """``lifelm cells corpus build``: a corpus store in ``out/corpus``, registered on success as
    dataset ``store_name`` (kind corpus), usable as ``cells.pretrain`` input."""

    task: Literal["cells.corpus.build"]
    datasets: list[DatasetName] = Field(min_length=1, max_length=256)
    store_name: DatasetName = Field(description="Dataset name of the store; ends in .corpus.")
    max_length: int = Field(2048, ge=8, le=65536)
    shard_cells: int = Field(65_536, ge=1)
    jobs: int = Field(1, ge=1, le=64)
    min_genes: int = Field(10, ge=0)
    layer: Layer | None = None
    tokenizer_model: ModelRef | None = Field(
        None, description="Use this registered model's tokenizer instead of fitting medians."
    )
    bins_per_decade: int = Field(50, ge=1, le=10_000)
    inputs: ClassVar = {"datasets": (H5AD,)}
    uses_models: ClassVar = ("tokenizer_model",)
    resumes: ClassVar = "folder"

    @field_validator("store_name")
    @classmethod
    def _corpus_suffix(cls, v: str) -> str:
        if not v.endswith(".corpus"):
            raise ValueError(f"store_name {v!r} must end in .corpus")
        return v

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        tok = self.tokenizer_model and f"{p.models[self.tokenizer_model]}/config.json"
        return [
            "cells", "corpus", "build", *(p.datasets[d] for d in self.datasets),
            "--out=out/corpus", f"--max-length={self.max_length}",
            f"--shard-cells={self.shard_cells}", f"--jobs={self.jobs}",
            f"--min-genes={self.min_genes}", f"--bins-per-decade={self.bins_per_decade}",
            *_opt("--layer", self.layer), *_opt("--tokenizer", tok),
        ]  # fmt: skip


# ----------------------------------------------------------------------------- genomes
class _Genomes(_Spec):
    dataset: DatasetName
    jobs: int = Field(1, ge=1, le=64)
    inputs: ClassVar = {"dataset": (FASTA,)}
    command_name: ClassVar[str] = ""

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        name = self.command_name
        return ["genomes", name, p.datasets[self.dataset], f"--out=out/{name}.tsv",
                f"--jobs={self.jobs}"]  # fmt: skip


class GenomesQC(_Genomes):
    """``lifelm genomes qc``: one QC row per genome in ``out/qc.tsv``."""

    task: Literal["genomes.qc"]
    command_name: ClassVar[str] = "qc"


class GenomesMutations(_Genomes):
    """``lifelm genomes mutations``: Nextclade-style calls in ``out/mutations.tsv``."""

    task: Literal["genomes.mutations"]
    command_name: ClassVar[str] = "mutations"


class GenomesPretrain(_Training):
    """``lifelm genomes pretrain``: a codon model from CDS FASTA files (``out/run``), registered
    as ``model_name``."""

    task: Literal["genomes.pretrain"]
    datasets: list[DatasetName] = Field(min_length=1, max_length=64)
    preset: str = Field("tiny", max_length=32, description="A codon-model preset.")
    row_len: int = Field(512, ge=2, le=65536)
    held_out: list[Text] = Field(default_factory=list, max_length=1000)
    max_genes: int | None = Field(None, ge=1)
    dedupe: bool = True
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup: int = Field(100, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    inputs: ClassVar = {"datasets": (FASTA,)}

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        return _preset(v, "codon_transformer")

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "genomes", "pretrain", *(p.datasets[d] for d in self.datasets), "--out=out/run",
            f"--preset={self.preset}", f"--row-len={self.row_len}",
            *_many("--held-out", self.held_out), *_opt("--max-genes", self.max_genes),
            *([] if self.dedupe else ["--no-dedupe"]), f"--steps={self.steps}",
            f"--batch-size={self.batch_size}", f"--lr={self.lr}", f"--warmup={self.warmup}",
            f"--checkpoint-every={self.checkpoint_every}", f"--seed={self.seed}",
            f"--device={self.device}", *(["--resume"] if resume else []),
        ]  # fmt: skip


class GenomesFinetune(_Training):
    """``lifelm genomes finetune``: a codon model fine-tuned on genomes (``out/run``),
    registered as ``model_name``."""

    task: Literal["genomes.finetune"]
    dataset: DatasetName
    model: ModelRef
    held_out_list: DatasetName | None = None
    mode: Choice = "orf"
    row_len: int = Field(1024, ge=2, le=65536)
    steps: int = Field(500, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=65536)
    lr: float = Field(3e-4, gt=0, le=1)
    warmup: int = Field(50, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    inputs: ClassVar = {"dataset": (FASTA,), "held_out_list": (TABLE,)}
    uses_models: ClassVar = ("model",)

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "genomes", "finetune", p.datasets[self.dataset], f"--model={p.models[self.model]}",
            "--out=out/run", f"--mode={self.mode}", f"--row-len={self.row_len}",
            *_opt("--held-out-list", self.held_out_list and p.datasets[self.held_out_list]),
            f"--steps={self.steps}", f"--batch-size={self.batch_size}", f"--lr={self.lr}",
            f"--warmup={self.warmup}", f"--checkpoint-every={self.checkpoint_every}",
            f"--seed={self.seed}", f"--device={self.device}", *(["--resume"] if resume else []),
        ]  # fmt: skip


class _CodonModelRun(_Spec):
    """A codon model read over a FASTA dataset, ORF by ORF or one document per genome."""

    dataset: DatasetName
    model: ModelRef
    context: int = Field(1024, ge=2, le=65536)
    mode: Choice = "orf"
    inputs: ClassVar = {"dataset": (FASTA,)}
    uses_models: ClassVar = ("model",)
    command_name: ClassVar[str] = ""
    out_file: ClassVar[str] = ""

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return ["genomes", self.command_name, p.datasets[self.dataset],
                f"--model={p.models[self.model]}", f"--out=out/{self.out_file}",
                f"--context={self.context}", f"--mode={self.mode}",
                f"--device={self.device}"]  # fmt: skip


class GenomesEmbed(_CodonModelRun):
    """``lifelm genomes embed``: one embedding row per genome in ``out/embeddings.tsv``."""

    task: Literal["genomes.embed"]
    command_name: ClassVar[str] = "embed"
    out_file: ClassVar[str] = "embeddings.tsv"


class GenomesScore(_CodonModelRun):
    """``lifelm genomes score``: genome log-likelihoods (``out/scores.tsv``) and per-substitution
    ratios (``out/scores.mutations.tsv``)."""

    task: Literal["genomes.score"]
    command_name: ClassVar[str] = "score"
    out_file: ClassVar[str] = "scores.tsv"


class GenomesLineages(_Spec):
    """``lifelm genomes lineages``: labels with calibrated probabilities and the baselines in
    ``out/lineages.tsv``, from an embeddings table (e.g. a ``genomes.embed`` artifact uploaded
    as a dataset) and a labels table."""

    task: Literal["genomes.lineages"]
    embeddings: DatasetName
    labels: DatasetName
    genomes: DatasetName | None = None
    columns: list[Key] = Field(default_factory=lambda: ["clade"], min_length=1, max_length=16)
    id_column: Key = "seqName"
    train_list: DatasetName | None = None
    method: Choice = "auto"
    probe: Choice = "logreg"
    min_confidence: Probability = 0.5
    novelty_quantile: Probability = 0.99
    holdout: Fraction = 0.2
    empty_labels: Choice = "class"
    seed: Seed = 0
    inputs: ClassVar = {
        "embeddings": (TABLE,),
        "labels": (TABLE,),
        "genomes": (FASTA,),
        "train_list": (TABLE,),
    }

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "genomes", "lineages", p.datasets[self.embeddings], p.datasets[self.labels],
            "--out=out/lineages.tsv", *_opt("--genomes", self.genomes and p.datasets[self.genomes]),
            *_many("--column", self.columns), f"--id-column={self.id_column}",
            *_opt("--train-list", self.train_list and p.datasets[self.train_list]),
            f"--method={self.method}", f"--probe={self.probe}",
            f"--min-confidence={self.min_confidence}",
            f"--novelty-quantile={self.novelty_quantile}", f"--holdout={self.holdout}",
            f"--empty-labels={self.empty_labels}", f"--seed={self.seed}",
        ]  # fmt: skip


# ------------------------------------------------------------------------- bench, lab
class BenchPerturbation(_Spec):
    """``lifelm bench perturbation``: every perturbation baseline over every split, on the
    benchmark data the server was started with (``lifelm serve --bench-data``)."""

    task: Literal["bench.perturbation"]
    benchmarks: list[Key] | None = Field(
        None, max_length=16, description="Benchmark dataset names (default: the CLI's)."
    )
    seeds: int = Field(3, ge=1, le=100)
    model: ModelRef | None = None
    response_epochs: int = Field(300, ge=1, le=100_000)
    uses_models: ClassVar = ("model",)

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        if p.bench_data is None:
            raise KeyError("this server has no benchmark data (lifelm serve --bench-data DIR)")
        return [
            "bench", "perturbation", f"--data={p.bench_data}", "--out=out/bench",
            *_many("--dataset", self.benchmarks), f"--seeds={self.seeds}",
            *_opt("--model", self.model and p.models[self.model]),
            f"--response-epochs={self.response_epochs}",
        ]  # fmt: skip


class LabRun(_Spec):
    """``lifelm lab run``: one discovery loop per strategy (``out/lab/<strategy>/``: state,
    rounds, ranking) and ``out/lab/report.html``; a new attempt resumes after the last round."""

    task: Literal["lab.run"]
    screen: DatasetName
    hits: DatasetName | None = None
    direction: Choice = "both"
    strategies: list[Choice] = Field(
        default_factory=lambda: ["random", "ucb_thompson"], min_length=1, max_length=16
    )
    rounds: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    expression: DatasetName | None = None
    model: ModelRef | None = None
    pool: DatasetName | None = None
    backend: Choice = "simulated"
    positive_control: Text | None = None
    noise_sd: float | None = Field(None, ge=0)
    seed: Seed = 0
    # the Perturb-seq setting (an h5ad screen) and the model behind the strategies
    setting: Choice | None = None
    surrogate: Choice = "forest"
    mc_samples: int | None = Field(None, ge=2, le=1000)
    perturbation_key: Key | None = None
    control: list[Text] = Field(default_factory=list, max_length=16)
    gi_map: DatasetName | None = None
    top_fraction: float | None = Field(None, gt=0, lt=1)
    inputs: ClassVar = {
        "screen": (TABLE, H5AD),
        "hits": (TABLE,),
        "expression": (H5AD,),
        "pool": (TABLE,),
        "gi_map": (TABLE,),
    }
    uses_models: ClassVar = ("model",)
    resumes: ClassVar = "flag"
    progress_from: ClassVar = "out/lab"

    def argv(self, p: Paths, *, resume: bool) -> list[str]:
        return [
            "lab", "run", p.datasets[self.screen], "--out=out/lab",
            *_opt("--hits", self.hits and p.datasets[self.hits]), f"--direction={self.direction}",
            *_many("--strategy", self.strategies), f"--rounds={self.rounds}",
            f"--batch-size={self.batch_size}",
            *_opt("--expression", self.expression and p.datasets[self.expression]),
            *_opt("--model", self.model and p.models[self.model]),
            *_opt("--pool", self.pool and p.datasets[self.pool]), f"--backend={self.backend}",
            *_opt("--positive-control", self.positive_control),
            *_opt("--noise-sd", self.noise_sd), f"--seed={self.seed}",
            *_opt("--setting", self.setting), f"--surrogate={self.surrogate}",
            *_opt("--mc-samples", self.mc_samples),
            *_opt("--perturbation-key", self.perturbation_key), *_many("--control", self.control),
            *_opt("--gi-map", self.gi_map and p.datasets[self.gi_map]),
            *_opt("--top-fraction", self.top_fraction),
            *(["--resume"] if resume else []),
        ]  # fmt: skip


SPECS: tuple[type[_Spec], ...] = (
    CellsEmbed, CellsAnnotate, CellsPretrain, CellsEvaluate, CellsPerturb, CellsTargets,
    CellsCorpusBuild, GenomesQC, GenomesMutations, GenomesPretrain, GenomesFinetune,
    GenomesEmbed, GenomesScore, GenomesLineages, BenchPerturbation, LabRun,
)  # fmt: skip
JobSpec = Annotated[
    CellsEmbed | CellsAnnotate | CellsPretrain | CellsEvaluate | CellsPerturb | CellsTargets
    | CellsCorpusBuild | GenomesQC | GenomesMutations | GenomesPretrain | GenomesFinetune
    | GenomesEmbed | GenomesScore | GenomesLineages | BenchPerturbation | LabRun,
    Field(discriminator="task"),
]  # fmt: skip
TASKS: tuple[str, ...] = tuple(get_args(s.model_fields["task"].annotation)[0] for s in SPECS)


def input_datasets(spec: BaseModel) -> list[tuple[str, tuple[str, ...]]]:
    """``(dataset name, accepted kinds)`` for every dataset a spec reads."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, kinds in getattr(spec, "inputs", {}).items():
        value = getattr(spec, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v:
                out.append((v, kinds))
    return out


def model_refs(spec: BaseModel) -> list[str]:
    """Registered models (``name:version``) a spec reads."""
    return [v for f in getattr(spec, "uses_models", ()) if (v := getattr(spec, f, None))]


def registered_model(spec: BaseModel) -> tuple[str, str] | None:
    """``(model folder relative to the job folder, model name)`` a successful job registers."""
    if isinstance(spec, CellsAnnotate):
        return ("out/classifier/model", spec.save_model) if spec.save_model else None
    folder = getattr(spec, "registers_model", None)
    return (folder, spec.model_name) if folder and isinstance(spec, _Training) else None


def command(
    spec: BaseModel,
    datasets: dict[str, str],
    models: dict[str, str],
    *,
    resume: bool,
    bench_data: str | None = None,
) -> list[str]:
    """The ``lifelm`` arguments of ``spec`` (paths resolved; outputs relative to the job folder).

    ``datasets`` maps dataset names to stored paths and ``models`` model refs to folders.
    """
    if not isinstance(spec, _Spec):
        raise TypeError(f"no command for {type(spec).__name__}")
    return spec.argv(Paths(datasets, models, bench_data), resume=resume)
