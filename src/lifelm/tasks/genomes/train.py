"""Pretrain a codon model on gene (CDS) corpora, then fine-tune it on genomes, through the shared loop.

Both build packed rows of documents (a gene, or an ORF of a genome, each ``[CLS]`` + codons) and
hand them to ``lifelm.training.loop.train``, which owns DDP, the schedule, checkpoints and resume.
The checkpoint sidecar records the model config, the tokenizer identity and the data provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifelm._core.runtime import get_logger, print0, seed_everything
from lifelm.data.genomes.datasets import (
    PackedCodonDataset,
    cds_documents,
    collate_packed,
    dedupe_cds,
    genome_documents,
    read_cds_fasta,
    split_by_genome,
)
from lifelm.data.store.codons import CODON_STORE_FILE, CodonStore
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.codon_lm import (
    default_orfs,
    load_codon_model,
    model_sidecar,
    read_genomes,
)
from lifelm.training.loop import TrainConfig, TrainResult, train

log = get_logger("lifelm.genomes")


def init_codon_model(preset: str, *, max_length: int, seed: int) -> CodonTransformer:
    """A freshly initialised codon model whose weights depend only on ``preset``, ``max_length`` and ``seed``.

    Torch's global generator is seeded right before the model is built, so ``--seed`` fixes the
    initial weights (and, with the seeded data order of the training loop, the final ones).
    """
    seed_everything(seed)
    return CodonTransformer(CodonTransformerConfig.from_name(preset, max_length=max_length))


# Long only because of its docstring and signature; the body is under 80 lines.
def pretrain(
    cds: Sequence[str | Path],
    out_dir: str | Path,
    *,
    preset: str = "tiny",
    row_len: int = 512,
    held_out_genomes: Sequence[str] = (),
    dedupe: bool = True,
    max_genes: int | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Pretrain a codon model on coding sequences.

    Parameters
    ----------
    cds
        CDS FASTA files (one gene per record, sense strand, in frame), or one codon-store folder
        built by ``lifelm.data.store.codons.build_codon_store`` (then dedupe, held-out genomes and
        ``max_genes`` were decided when the store was built and are not applied again).
    out_dir
        Run folder; the model is written to ``out_dir/model``.
    preset
        Model preset (``test``, ``tiny``, ``small``, ``genslm-25m``).
    row_len
        Tokens per packed row (context length in training).
    held_out_genomes
        Source genomes kept out of training and used for the held-out loss (whole genomes, so
        no gene of a held-out genome is seen; put near-identical strains together).
    dedupe
        Drop exact and near-identical genes (MinHash, Jaccard >= 0.8 on codon 4-grams).
    max_genes
        Use a random subset of this many training genes (after dedupe), for quick runs.
    train_config
        Optimisation settings (:class:`~lifelm.training.loop.TrainConfig`).
    resume
        Continue from the newest checkpoint in ``out_dir``.
    seed
        Seeds the initial weights (before the model is built), the subset and the packing order.
    """
    eval_dataset = None
    dataset: CodonStore | PackedCodonDataset
    if len(cds) == 1 and (Path(cds[0]) / CODON_STORE_FILE).is_file():
        # a codon store: packed rows read from disk in its block-shuffled order
        dataset = CodonStore(cds[0])
        row_len = dataset.row_len
        provenance: dict[str, Any] = {
            "task": "pretrain",
            "store": str(cds[0]),
            "n_rows": len(dataset),
            "row_len": row_len,
        }
        print0(f"pretrain: codon store {cds[0]}, {len(dataset)} rows of {row_len}")
    else:
        records = [r for path in cds for r in read_cds_fasta(path)]
        report = None
        if dedupe:
            records, report = dedupe_cds(records, seed=seed)
            print0(
                f"dedupe: {report.n_in} genes -> {report.n_out} ({report.n_exact} exact, {report.n_near} near)"
            )
        train_recs, held = split_by_genome(records, held_out_genomes)
        if max_genes is not None and max_genes < len(train_recs):
            pick = np.random.default_rng(seed).choice(
                len(train_recs), size=max_genes, replace=False
            )
            train_recs = [train_recs[i] for i in sorted(pick)]
        docs, stats = cds_documents(train_recs)
        dataset = PackedCodonDataset(docs, row_len, seed=seed)
        if held:
            held_docs, _ = cds_documents(held[: max(200, len(held) // 10)])
            eval_dataset = PackedCodonDataset(held_docs, row_len, seed=seed)
        provenance = {
            "task": "pretrain",
            "cds": [str(p) for p in cds],
            "n_genes": len(train_recs),
            "n_tokens": dataset.n_tokens,
            "n_rows": len(dataset),
            "row_len": row_len,
            "unknown_codons": stats.n_unknown,
            "held_out_genomes": list(held_out_genomes),
            "dedupe": asdict(report) if report else None,
        }
        print0(
            f"pretrain: {len(train_recs)} genes, {dataset.n_tokens} codon tokens in {len(dataset)} rows "
            f"of {row_len}; held out {len(held)} genes of {list(held_out_genomes)}"
        )
    model = init_codon_model(preset, max_length=max(row_len, 1024), seed=seed)
    cfg = model.cfg
    return train(
        model,
        dataset,
        config=train_config or TrainConfig(),
        out_dir=out_dir,
        collate_fn=collate_packed,
        sidecar=model_sidecar(cfg, data=provenance),
        resume=resume,
        eval_dataset=eval_dataset,
        unit="rows",
    )


# Long only because of its docstring and signature; the body is under 80 lines.
def finetune(
    init: str | Path,
    genomes: str | Path,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    held_out: Sequence[str] = (),
    annotation: str | Path | None = None,
    mode: Literal["orf", "genome"] = "orf",
    row_len: int = 1024,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    seed: int = 0,
) -> TrainResult:
    """Fine-tune a codon model on whole genomes, ORF by ORF in the reference frame.

    Parameters
    ----------
    init
        Checkpoint folder of the model to start from (``pretrain``'s ``out_dir/model``, or a
        GenSLM GPT-NeoX folder).
    genomes
        FASTA of genomes (reference-aligned, or raw and then aligned with minimap2).
    out_dir
        Run folder; the model is written to ``out_dir/model``.
    names
        Genomes to train on (default: all in the file, minus ``held_out``).
    held_out
        Genomes kept out of training, used for the held-out loss.
    annotation
        GFF3/GenBank of the ORFs (default: SARS-CoV-2's).
    mode
        ``"orf"``: one document per ORF; ``"genome"``: one document per genome, ORFs joined by
        ``[SEP]`` (GenSLM's whole-genome mode; use ``row_len`` up to 10,240 to keep it whole).
    row_len
        Tokens per packed row.
    train_config
        Optimisation settings.
    resume
        Continue from the newest checkpoint in ``out_dir``.
    seed
        Seeds the packing order.
    """
    model, init_cfg = load_codon_model(init, device="cpu")
    seqs, failed = read_genomes(genomes)
    held = set(held_out)
    train_names = [n for n in (names if names is not None else seqs) if n not in held]
    orfs = default_orfs(annotation)
    docs, stats = genome_documents({n: seqs[n] for n in train_names}, orfs, mode=mode)
    dataset = PackedCodonDataset(docs, row_len, seed=seed)
    eval_dataset = None
    if held:
        held_docs, _ = genome_documents(
            {n: seqs[n] for n in held_out if n in seqs}, orfs, mode=mode
        )
        eval_dataset = PackedCodonDataset(held_docs, row_len, seed=seed)
    provenance = {
        "task": "finetune",
        "init": str(init),
        "init_data": init_cfg.get("data"),
        "genomes": str(genomes),
        "n_genomes": len(train_names),
        "n_unaligned_skipped": len(failed),
        "n_held_out": len(held),
        "orfs": [o.name for o in orfs],
        "mode": mode,
        "n_tokens": dataset.n_tokens,
        "unknown_codons": stats.n_unknown,
        "row_len": row_len,
    }
    print0(
        f"finetune: {len(train_names)} genomes, {dataset.n_tokens} codon tokens "
        f"({stats.n_unknown} [UNK]) in {len(dataset)} rows of {row_len}"
    )
    return train(
        model.train(),
        dataset,
        config=train_config or TrainConfig(),
        out_dir=out_dir,
        collate_fn=collate_packed,
        sidecar=model_sidecar(model.cfg, data=provenance),
        resume=resume,
        eval_dataset=eval_dataset,
        unit="rows",
    )
