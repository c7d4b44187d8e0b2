"""``lifelm cells …``: pretrain, embed, annotate and evaluate single-cell models.

Thin: each command checks its output path, calls one library function and prints what it did.
perturb/targets live in cells_perturb.py, corpus stores in corpus.py, import-model in
cells_import.py. Output columns: docs/cells.md and docs/cells-annotate.md.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli import cells_import, cells_perturb, corpus
from lifelm.cli.options import (
    BATCH_SIZE,
    COMPILE,
    CPU_JOBS,
    DEVICE,
    H5AD,
    LAYER,
    LR,
    MODEL,
    PRECISION,
    QUANTIZE,
    RESUME,
    SEED,
    STEPS,
    Device,
    Precision,
    Quantize,
)

app = typer.Typer(
    help="Single-cell models: pretrain, embed, annotate, evaluate, perturb, targets, corpus stores.",
    no_args_is_help=True,
)
cells_perturb.register(app)
corpus.register(app)
cells_import.register(app)


class Strategy(StrEnum):
    """How training is distributed under torchrun."""

    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


class AnnotateMethod(StrEnum):
    """Which labels annotate writes."""

    auto = "auto"
    model = "model"
    baseline = "baseline"


class AnnotateMode(StrEnum):
    """How the model learns the reference's labels."""

    finetune = "finetune"
    knn = "knn"


LABEL_MAP = Annotated[
    Path | None,
    typer.Option(
        help="Harmonise labels across studies: a .tsv/.csv (query label, reference label) or a "
        ".json {query label: reference label}; applied to both reference and query labels.",
        exists=True,
        dir_okay=False,
    ),
]


# Long only because typer options are its signature; the body is under 40 lines.
@app.command()
def pretrain(
    data: Annotated[
        list[Path],
        typer.Argument(
            help="One or more .h5ad files with raw counts (read backed), or one corpus store "
            "folder from `lifelm cells corpus build`.",
            exists=True,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: checkpoints/, metrics.jsonl, tokenizer.json, manifest.json and the "
            "final model/.",
        ),
    ],
    preset: Annotated[
        str, typer.Option(help="Model size: test, tiny, small, geneformer-6l, geneformer-12l.")
    ] = "small",
    steps: STEPS = 1000,
    batch_size: BATCH_SIZE = 32,
    lr: LR = 3e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warmup steps.")] = 100,
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per cell incl. [CLS]; default: the preset's.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=0, help="Steps between resumable checkpoints.")
    ] = 200,
    seed: SEED = 0,
    layer: LAYER = None,
    device: DEVICE = Device.auto,
    strategy: Annotated[
        Strategy,
        typer.Option(
            help="Under torchrun: ddp, fsdp (FSDP2, sharded checkpoints) or auto (= ddp)."
        ),
    ] = Strategy.auto,
    resume: RESUME = False,
) -> None:
    """Pretrain a cell model by masked-gene prediction on raw-count h5ad files.

    The tokenizer (vocabulary and gene medians) is fitted on the files, the model is trained
    with AdamW, warmup + cosine and gradient clipping, and checkpoints are written every
    --checkpoint-every steps. Runs unchanged under `torchrun --nproc_per_node N`.
    """
    from lifelm._core.runfolder import check_output_path
    from lifelm._core.runtime import dist_env
    from lifelm.tasks.cells.pretrain import pretrain as run
    from lifelm.training.distributed import shutdown
    from lifelm.training.loop import TrainConfig

    check_output_path(out, kind="folder", need_bytes=50_000_000)  # before any data is read
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device.value,
        strategy=strategy.value,
    )
    result = run(
        data[0] if len(data) == 1 and data[0].is_dir() else data,
        out,
        preset=preset,
        train_config=cfg,
        max_length=max_length,
        layer=layer,
        resume=resume,
    )
    shutdown()
    if not dist_env().is_main:
        return
    summary = {
        "model": str(result.model_dir),
        "step": result.step,
        "train_loss": result.final_loss,
        "eval_loss": result.eval_loss,
    }
    typer.echo(json.dumps(summary))


@app.command()
def embed(
    data: H5AD,
    model: MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad with .obsm['X_lifelm'].")],
    batch_size: Annotated[
        int, typer.Option(min=1, help="Cells per forward pass (does not change results).")
    ] = 64,
    key_added: Annotated[str, typer.Option(help="Name of the .obsm entry.")] = "X_lifelm",
    layer: LAYER = None,
    device: DEVICE = Device.auto,
    quantize: QUANTIZE = Quantize.none,
    compile_: COMPILE = False,
    precision: PRECISION = Precision.auto,
    jobs: CPU_JOBS = 1,
) -> None:
    """Embed every cell with a pretrained model and write the AnnData with .obsm[KEY]."""
    from lifelm._core.errors import naming
    from lifelm._core.runfolder import atomic_output, check_output_path
    from lifelm.io.h5ad import read_h5ad
    from lifelm.tasks.cells.cpu_techniques import CpuTechniques
    from lifelm.tasks.cells.embed import embed as run

    # -o is checked before the long part: a file path ending in .h5ad, writable, with room for
    # a copy of the input plus the embeddings (at most 4 KiB per cell for d_model <= 1024)
    check_output_path(out, suffixes=(".h5ad",), need_bytes=data.stat().st_size)
    adata = read_h5ad(data)
    check_output_path(out, suffixes=(".h5ad",), need_bytes=data.stat().st_size + 4096 * adata.n_obs)
    tech = CpuTechniques(
        quantize=quantize.value,
        compile=compile_,
        precision=precision.value,
        jobs=jobs,
    )
    with naming(data):
        run(
            adata,
            model,
            layer=layer,
            batch_size=batch_size,
            device=device.value,
            key_added=key_added,
            techniques=tech,
        )
    with atomic_output(out) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    typer.echo(
        f"wrote {out} ({adata.n_obs} cells, .obsm['{key_added}'] {adata.obsm[key_added].shape[1]}-d)"
    )


# Long only because typer options are its signature; the body is under 40 lines.
@app.command()
def annotate(
    data: H5AD,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output .h5ad with .obs[KEY], KEY_probability, KEY_novel, KEY_model, KEY_baseline.",
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Pretrained model folder (e.g. runs/x/model), or a fine-tuned classifier "
            "(used as is, no reference). Optional with --method baseline.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Labelled .h5ad to learn from; also used to fit the PCA+logreg baseline, "
            "calibrate and compare on a held-out part.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="Label column in the reference's .obs.")
    ] = "cell_type",
    method: Annotated[
        AnnotateMethod,
        typer.Option(
            help="Which labels to write: auto (whichever was more accurate on held-out "
            "reference cells), model, or baseline (logistic regression on PCA)."
        ),
    ] = AnnotateMethod.auto,
    mode: Annotated[
        AnnotateMode,
        typer.Option(
            help="How the model learns: finetune (head from a linear probe, then end to end) or "
            "knn (frozen embeddings)."
        ),
    ] = AnnotateMode.finetune,
    min_confidence: Annotated[
        float,
        typer.Option(help="Cells with a calibrated probability below this are 'Unassigned'."),
    ] = 0.5,
    novelty_quantile: Annotated[
        float,
        typer.Option(
            help="Flag cells farther from the reference than this quantile of held-out "
            "reference cells (in PCA space) as novel."
        ),
    ] = 0.99,
    holdout_fraction: Annotated[
        float, typer.Option(help="Reference cells held out for calibration and the comparison.")
    ] = 0.2,
    label_map: LABEL_MAP = None,
    query_label_key: Annotated[
        str | None,
        typer.Option(help="Label column of the query, to score it (classes it lacks are counted)."),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning passes over the reference.")] = 2.0,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 5e-4).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Fine-tuning cells per step (default 32).")
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Keep the fine-tuned classifier in this folder (reusable as --model)."),
    ] = None,
    key_added: Annotated[str, typer.Option(help="Name of the .obs column.")] = "lifelm_cell_type",
    seed: SEED = 0,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Also write .uns['lifelm']['annotate'] as JSON here."),
    ] = None,
    layer: LAYER = None,
    device: DEVICE = Device.auto,
) -> None:
    """Predict cell types with calibrated probabilities, abstention and the baseline beside the model.

    Cells below --min-confidence are 'Unassigned', cells far from every reference class are
    flagged novel, and the PCA+logreg baseline is fitted on the same reference and compared on
    held-out cells (columns: docs/cells-annotate.md).
    """
    from lifelm._core.runfolder import atomic_output, check_output_path
    from lifelm.cells import annotate as run
    from lifelm.cells import annotation_summary, read_label_map, write_json
    from lifelm.io.h5ad import read_h5ad

    check_output_path(out, kind="file", suffixes=(".h5ad",))
    if summary:
        check_output_path(summary, kind="file")
    adata = read_h5ad(data)
    run(
        adata,
        model,
        reference=reference,
        label_key=label_key,
        method=method.value,
        mode=mode.value,
        min_confidence=min_confidence,
        novelty_quantile=novelty_quantile,
        holdout_fraction=holdout_fraction,
        label_map=read_label_map(label_map) if label_map else None,
        query_label_key=query_label_key,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        out_dir=save,
        layer=layer,
        key_added=key_added,
        seed=seed,
        device=device.value,
    )
    info = adata.uns["lifelm"]["annotate"]
    with atomic_output(out) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    if summary:
        write_json(info, summary)
    typer.echo(f"wrote {out}")
    for line in annotation_summary(info):
        typer.echo(line)


@app.command()
def evaluate(
    data: H5AD,
    model: MODEL,
    label_key: Annotated[str, typer.Option(help="Label column in .obs.")] = "cell_type",
    query: Annotated[
        Path | None,
        typer.Option(
            help="Held-out .h5ad from another study (else a stratified split of DATA).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    query_label_key: Annotated[
        str | None, typer.Option(help="Label column of the query (default: --label-key).")
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="Held-out fraction when splitting DATA.")
    ] = 0.2,
    seed: SEED = 0,
    finetune_steps: Annotated[
        int,
        typer.Option(min=0, help="Also fine-tune a classifier for this many steps (0 = skip)."),
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the tables as JSON here.")
    ] = None,
    label_map: LABEL_MAP = None,
    layer: LAYER = None,
    device: DEVICE = Device.auto,
) -> None:
    """Score annotation and embedding quality next to majority-class and PCA+logistic-regression baselines."""
    from lifelm._core.runfolder import check_output_path
    from lifelm.cells import write_json
    from lifelm.evaluation.benchmarks.annotation import read_label_map, run_annotation_benchmark
    from lifelm.io.h5ad import read_h5ad
    from lifelm.training.loop import TrainConfig

    if out:
        check_output_path(out, kind="file")
    finetune = None
    if finetune_steps:
        finetune = TrainConfig(
            max_steps=finetune_steps,
            batch_size=32,
            lr=1e-4,
            warmup_steps=min(50, finetune_steps // 10),
            checkpoint_every=0,
        )
    bench = run_annotation_benchmark(
        read_h5ad(data),
        model,
        label_key=label_key,
        query=read_h5ad(query) if query else None,
        query_label_key=query_label_key,
        test_fraction=test_fraction,
        seed=seed,
        finetune=finetune,
        layer=layer,
        label_map=read_label_map(label_map) if label_map else None,
        device=device.value,
    )
    typer.echo(bench.to_markdown())
    if out:
        write_json(bench.to_dict(), out)
