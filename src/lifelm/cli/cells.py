"""``lifelm cells …``: pretrain, embed, annotate and evaluate single-cell models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli import cells_import, cells_perturb, corpus

app = typer.Typer(
    help="Single-cell models: pretrain, embed, annotate, evaluate.", no_args_is_help=True
)

H5AD = Annotated[
    Path,
    typer.Argument(
        help="An .h5ad file with raw counts (X, layers['counts'] or .raw).",
        exists=True,
        dir_okay=False,
    ),
]
MODEL = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint folder (model.safetensors + config.json), e.g. runs/x/model.",
        exists=True,
        file_okay=False,
    ),
]
LAYER = Annotated[
    str | None,
    typer.Option(
        help="Where the raw counts are: a layer name, 'X' or 'raw'. Found automatically when omitted."
    ),
]
DEVICE = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")]


# commands defined in their own modules: perturb/targets (in-silico perturbation), corpus (stores)
cells_perturb.register(app)
corpus.register(app)
cells_import.register(app)  # import-model (published checkpoints)


def _train_config(**kw: object):
    from lifelm.training.loop import TrainConfig

    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


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
            help="Run folder: checkpoints/, metrics.jsonl, tokenizer.json and the final model/.",
        ),
    ],
    preset: Annotated[
        str, typer.Option(help="Model size: test, tiny, small, geneformer-6l, geneformer-12l.")
    ] = "small",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Cells per process per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    warmup: Annotated[int, typer.Option(help="Linear warmup steps.")] = 100,
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per cell incl. [CLS]; default: the preset's.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between resumable checkpoints.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed for data order, masking and init.")] = 0,
    layer: LAYER = None,
    device: DEVICE = "auto",
    strategy: Annotated[
        str,
        typer.Option(
            help="Under torchrun: ddp, fsdp (FSDP2, sharded checkpoints) or auto (= ddp)."
        ),
    ] = "auto",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out from its last checkpoint after a kill."
        ),
    ] = False,
) -> None:
    """Pretrain a cell model by masked-gene prediction on raw-count h5ad files.

    The tokenizer (vocabulary and gene medians) is fitted on the files, the model is trained
    with AdamW, warmup + cosine and gradient clipping, and checkpoints are written every
    --checkpoint-every steps. Runs unchanged under `torchrun --nproc_per_node N`.
    """
    from lifelm._core.runtime import dist_env
    from lifelm.tasks.cells.pretrain import pretrain as run
    from lifelm.training.distributed import shutdown

    cfg = _train_config(
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
        strategy=strategy,
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
    typer.echo(
        json.dumps(
            {
                "model": str(result.model_dir),
                "step": result.step,
                "train_loss": result.final_loss,
                "eval_loss": result.eval_loss,
            }
        )
    )


@app.command()
def embed(
    data: H5AD,
    model: MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad with .obsm['X_lifelm'].")],
    batch_size: Annotated[
        int, typer.Option(help="Cells per forward pass (does not change results).")
    ] = 64,
    key_added: Annotated[str, typer.Option(help="Name of the .obsm entry.")] = "X_lifelm",
    layer: LAYER = None,
    device: DEVICE = "auto",
    quantize: Annotated[
        str, typer.Option(help="none, or int8: dynamic int8 linear layers (CPU; lossy).")
    ] = "none",
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the forward (compiles first).")
    ] = False,
    precision: Annotated[
        str, typer.Option(help="auto, fp32 or bf16 (CPU: needs AVX-512 BF16/AMX, else fp32).")
    ] = "auto",
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Worker processes pinned to disjoint cores.")
    ] = 1,
) -> None:
    """Embed every cell with a pretrained model and write the AnnData with .obsm[KEY]."""
    from lifelm.io.h5ad import read_h5ad
    from lifelm.tasks.cells.cpu_techniques import CpuTechniques
    from lifelm.tasks.cells.embed import embed as run

    adata = read_h5ad(data)
    tech = CpuTechniques(quantize=quantize, compile=compile_, precision=precision, jobs=jobs)
    run(
        adata,
        model,
        layer=layer,
        batch_size=batch_size,
        device=device,
        key_added=key_added,
        techniques=tech,
    )
    adata.write_h5ad(out, compression="gzip")
    typer.echo(
        f"wrote {out} ({adata.n_obs} cells, .obsm['{key_added}'] {adata.obsm[key_added].shape[1]}-d)"
    )


@app.command()
def annotate(
    data: H5AD,
    model: MODEL,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output .h5ad with .obs[KEY] and .obs[KEY_probability]."),
    ],
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Labelled .h5ad to learn from (needed unless --model is already a classifier).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="Label column in the reference's .obs.")
    ] = "cell_type",
    mode: Annotated[
        str,
        typer.Option(
            help="finetune (train a head end to end) or knn (few labels; frozen embeddings)."
        ),
    ] = "finetune",
    epochs: Annotated[float, typer.Option(help="Fine-tuning passes over the reference.")] = 3.0,
    save: Annotated[
        Path | None,
        typer.Option(help="Keep the fine-tuned classifier in this folder (reusable as --model)."),
    ] = None,
    key_added: Annotated[str, typer.Option(help="Name of the .obs column.")] = "lifelm_cell_type",
    layer: LAYER = None,
    device: DEVICE = "auto",
) -> None:
    """Predict cell types for a query dataset, learning labels from a reference if needed."""
    from lifelm.io.h5ad import read_h5ad
    from lifelm.tasks.cells.annotate import annotate as run
    from lifelm.tasks.cells.annotate import train_annotator
    from lifelm.tasks.cells.model_io import load_cell_model

    if mode not in ("finetune", "knn"):
        raise typer.BadParameter("--mode must be finetune or knn")
    adata = read_h5ad(data)
    annotator = load_cell_model(model, device="cpu")
    if not annotator.is_classifier:
        if reference is None:
            raise typer.BadParameter("--reference is needed: --model has no classification head")
        annotator = train_annotator(
            read_h5ad(reference),
            annotator,
            label_key=label_key,
            mode=mode,
            epochs=epochs,
            out_dir=save,
            layer=layer,
            device=device,
        )  # type: ignore[assignment,arg-type]
    run(adata, annotator, layer=layer, key_added=key_added, device=device)
    adata.write_h5ad(out, compression="gzip")
    counts = adata.obs[key_added].value_counts().head(10).to_dict()
    typer.echo(f"wrote {out}; predicted labels: {counts}")


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
    seed: Annotated[int, typer.Option(help="Split and baseline seed.")] = 0,
    finetune_steps: Annotated[
        int, typer.Option(help="Also fine-tune a classifier for this many steps (0 = skip).")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the tables as JSON here.")
    ] = None,
    layer: LAYER = None,
    device: DEVICE = "auto",
) -> None:
    """Score annotation and embedding quality next to majority-class and PCA+logistic-regression baselines."""
    from lifelm.evaluation.benchmarks.annotation import run_annotation_benchmark
    from lifelm.io.h5ad import read_h5ad

    ft = (
        _train_config(
            max_steps=finetune_steps,
            batch_size=32,
            lr=1e-4,
            warmup_steps=min(50, finetune_steps // 10),
            checkpoint_every=0,
        )
        if finetune_steps
        else None
    )
    bench = run_annotation_benchmark(
        read_h5ad(data),
        model,
        label_key=label_key,
        query=read_h5ad(query) if query else None,
        query_label_key=query_label_key,
        test_fraction=test_fraction,
        seed=seed,
        finetune=ft,
        layer=layer,
        device=device,
    )
    typer.echo(bench.to_markdown())
    if out:
        out.write_text(
            json.dumps(
                {
                    "split": bench.split,
                    "table": bench.table.reset_index().to_dict("records"),
                    "embedding": bench.embedding.reset_index().to_dict("records"),
                    **bench.info,
                },
                indent=2,
            )
        )
