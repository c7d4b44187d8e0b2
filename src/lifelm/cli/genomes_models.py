"""``lifelm genomes`` model commands: pretrain, finetune, embed, lineages, score, perplexity, generate.

Thin wrappers over ``lifelm.tasks.genomes`` (wired in cli/genomes.py); outputs are TSV (or JSON)
keyed by ``seqName`` so they join to Nextclade's tables (columns: docs/genomes.md).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lifelm._core.choices import one_of
from lifelm.cli.options import (
    AS_JSON,
    BATCH_SIZE,
    DEVICE,
    FASTA,
    LR,
    MODEL,
    OUT_DIR,
    OUT_FILE,
    RESUME,
    SEED,
    STEPS,
    Device,
)

if TYPE_CHECKING:
    from lifelm.training.loop import TrainConfig


class FinetuneMode(StrEnum):
    """How a genome becomes training documents."""

    orf = "orf"
    genome = "genome"


class LineageMethod(StrEnum):
    """Which classifier writes the labels."""

    auto = "auto"
    model = "model"
    hamming_nn = "hamming_nn"
    kmer_logreg = "kmer_logreg"


class Probe(StrEnum):
    """The model's classifier on embeddings."""

    logreg = "logreg"
    knn = "knn"


class EmptyLabels(StrEnum):
    """What an empty label in the reference means."""

    class_ = "class"
    refuse = "refuse"


ANNOTATION = Annotated[
    Path | None,
    typer.Option(
        "--annotation",
        help="ORF annotation (GFF3/GenBank); default SARS-CoV-2.",
        exists=True,
        dir_okay=False,
    ),
]
CONTEXT = Annotated[int, typer.Option("--context", min=2, help="Tokens per window.")]
MODE = Annotated[
    FinetuneMode,
    typer.Option(
        "--mode",
        help="orf: each ORF its own document; genome: one document per genome (GenSLM's "
        "whole-genome context, strided windows if it does not fit).",
    ),
]
WARMUP = Annotated[int, typer.Option("--warmup", min=0, help="Linear warmup steps.")]
CHECKPOINT_EVERY = Annotated[
    int, typer.Option("--checkpoint-every", min=0, help="Steps between resumable checkpoints.")
]


def _train_config(
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    checkpoint_every: int,
    seed: int,
    device: Device,
) -> TrainConfig:
    from lifelm.training.loop import TrainConfig

    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device.value,
    )


def _done(res) -> None:
    typer.echo(
        f"model: {res.model_dir} (step {res.step}, loss {res.final_loss:.4f}, held-out {res.eval_loss})"
    )


def pretrain(
    cds: Annotated[
        list[Path],
        typer.Argument(
            help="CDS FASTA files (.fasta, .gz, .xz), one gene per record, or one codon-store folder.",
            exists=True,
        ),
    ],
    out: OUT_DIR,
    preset: Annotated[
        str, typer.Option(help="Model preset: test, tiny, small, genslm-25m.")
    ] = "tiny",
    row_len: Annotated[int, typer.Option(help="Tokens per packed training row (context).")] = 512,
    held_out: Annotated[
        list[str], typer.Option("--held-out", help="Source genome label kept out (repeatable).")
    ] = [],  # noqa: B006 (typer reads the default)
    max_genes: Annotated[
        int | None, typer.Option(help="Train on a random subset of this many genes.")
    ] = None,
    no_dedupe: Annotated[
        bool, typer.Option("--no-dedupe", help="Keep near-identical genes.")
    ] = False,
    steps: STEPS = 1000,
    batch_size: BATCH_SIZE = 16,
    lr: LR = 1e-3,
    warmup: WARMUP = 100,
    checkpoint_every: CHECKPOINT_EVERY = 200,
    seed: SEED = 0,
    device: DEVICE = Device.auto,
    resume: RESUME = False,
) -> None:
    """Pretrain a codon language model on gene sequences (torchrun-ready); the model goes to OUT/model."""
    from lifelm.tasks.genomes.train import pretrain as run

    res = run(
        cds,
        out,
        preset=preset,
        row_len=row_len,
        held_out_genomes=held_out,
        dedupe=not no_dedupe,
        max_genes=max_genes,
        train_config=_train_config(steps, batch_size, lr, warmup, checkpoint_every, seed, device),
        resume=resume,
        seed=seed,
    )
    _done(res)


def finetune(
    genomes: FASTA,
    model: MODEL,
    out: OUT_DIR,
    held_out_list: Annotated[
        Path | None,
        typer.Option(help="File with one seqName per line kept out of training.", exists=True),
    ] = None,
    annotation: ANNOTATION = None,
    mode: Annotated[
        FinetuneMode, typer.Option(help="orf: one document per ORF; genome: ORFs joined by [SEP].")
    ] = FinetuneMode.orf,
    row_len: Annotated[int, typer.Option(help="Tokens per packed training row.")] = 1024,
    steps: STEPS = 500,
    batch_size: BATCH_SIZE = 8,
    lr: LR = 3e-4,
    warmup: WARMUP = 50,
    checkpoint_every: CHECKPOINT_EVERY = 100,
    seed: SEED = 0,
    device: DEVICE = Device.auto,
    resume: RESUME = False,
) -> None:
    """Fine-tune a codon model (-m: pretrain's OUT/model or a GenSLM folder) on genomes, ORF by ORF."""
    from lifelm.tasks.genomes.output import read_name_list
    from lifelm.tasks.genomes.train import finetune as run

    res = run(
        model,
        genomes,
        out,
        held_out=read_name_list(held_out_list),
        annotation=annotation,
        mode=mode.value,
        row_len=row_len,
        train_config=_train_config(steps, batch_size, lr, warmup, checkpoint_every, seed, device),
        resume=resume,
        seed=seed,
    )
    _done(res)


def embed(
    genomes: FASTA,
    model: MODEL,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output TSV (seqName + emb_0..emb_D) or .npy.")
    ],
    annotation: ANNOTATION = None,
    context: Annotated[
        int | None,
        typer.Option(
            "--context", min=2, help="Tokens per window (default 1024; genome mode: max_length)."
        ),
    ] = None,
    mode: MODE = FinetuneMode.orf,
    device: DEVICE = Device.auto,
) -> None:
    """Embed genomes: mean hidden state over real codon tokens (batch-independent)."""
    from lifelm.tasks.genomes.codon_lm import checked_genomes, default_orfs, load_codon_model
    from lifelm.tasks.genomes.embed import embed_genomes
    from lifelm.tasks.genomes.output import check_table_path, write_embeddings

    check_table_path(out)
    m, _ = load_codon_model(model, device=device.value)
    orfs = default_orfs(annotation)
    seqs, checks = checked_genomes(genomes, orfs)
    emb, table = embed_genomes(m, seqs, orfs=orfs, context=context, mode=mode.value)
    written = write_embeddings(emb, table, out)
    for name, status, reason in checks:
        if status != "ok":
            typer.echo(f"not embedded: {name}: {reason}", err=True)
    typer.echo(f"wrote {len(table)} genomes to {', '.join(map(str, written))}")


# Long only because typer options are its signature; the body is under 40 lines.
def lineages(
    embeddings: Annotated[
        Path, typer.Argument(help="TSV from `lifelm genomes embed`.", exists=True, dir_okay=False)
    ],
    labels: Annotated[
        Path,
        typer.Argument(
            help="TSV with the sequence names (see --id-column) and label columns: the reference. "
            "Genomes not in it are queries.",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: OUT_FILE,
    genomes: Annotated[
        Path | None,
        typer.Option(
            "--genomes",
            help="FASTA of the same genomes: the Hamming-NN and 6-mer baselines are fitted on it "
            "next to the model (strongly advised; without it no baseline is shown).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    column: Annotated[
        list[str], typer.Option("--column", help="Label column to predict (repeatable).")
    ] = ["clade"],  # noqa: B006 (typer reads the default)
    id_column: Annotated[str, typer.Option(help="Column of LABELS with the sequence name.")] = (
        "seqName"
    ),
    train_list: Annotated[
        Path | None,
        typer.Option(
            help="seqNames (one per line) usable as reference; default: all labelled rows.",
            exists=True,
        ),
    ] = None,
    method: Annotated[
        LineageMethod, typer.Option(help="auto: the best on the held-out part of the reference.")
    ] = LineageMethod.auto,
    probe: Annotated[
        Probe, typer.Option(help="The model's classifier on embeddings.")
    ] = Probe.logreg,
    min_confidence: Annotated[
        float, typer.Option(help="Calibrated probability below which a genome is 'unassigned'.")
    ] = 0.5,
    novelty_quantile: Annotated[
        float,
        typer.Option(
            help="Held-out distance quantile of a class beyond which a genome is 'novel'."
        ),
    ] = 0.99,
    holdout: Annotated[
        float, typer.Option(help="Share of each class's reference genomes held out for accuracy.")
    ] = 0.2,
    empty_labels: Annotated[
        EmptyLabels,
        typer.Option(help="class: keep empty labels as the class '(none)'; refuse: an error."),
    ] = EmptyLabels.class_,
    seed: SEED = 0,
    as_json: AS_JSON = False,
) -> None:
    """Predict lineage labels with calibrated probabilities, 'unassigned'/'novel' calls and baselines."""
    from lifelm.tasks.genomes.lineages import LineageConfig, lineages_from_files, summary_lines
    from lifelm.tasks.genomes.output import check_table_path, write_table

    check_table_path(out)
    cfg = LineageConfig(
        holdout_fraction=holdout,
        min_confidence=min_confidence,
        novelty_quantile=novelty_quantile,
        empty_labels=one_of(empty_labels.value, ("class", "refuse"), what="--empty-labels"),
        probe=one_of(probe.value, ("logreg", "knn"), what="--probe"),
        seed=seed,
    )
    table, summary = lineages_from_files(
        embeddings,
        labels,
        columns=column,
        id_column=id_column,
        genomes=genomes,
        train_list=train_list,
        method=method.value,
        config=cfg,
    )
    lines = summary_lines(summary)
    write_table(
        table,
        out,
        as_json=as_json,
        comments=lines,
        summary=summary,
        finite=[f"{c}_prob" for c in column],
    )
    for line in lines:
        typer.echo(line)
    typer.echo(f"wrote {len(table)} rows to {out}")


def score(
    genomes: FASTA,
    model: MODEL,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Genome scores TSV; mutations go beside it as OUT.mutations.tsv."
        ),
    ],
    context: Annotated[
        int | None,
        typer.Option(
            "--context", min=2, help="Tokens per window (default 1024; genome mode: max_length)."
        ),
    ] = None,
    mode: MODE = FinetuneMode.orf,
    device: DEVICE = Device.auto,
    as_json: AS_JSON = False,
) -> None:
    """Genome log-likelihood and, per observed codon substitution, its log-likelihood ratio vs the reference."""
    from lifelm.tasks.genomes.codon_lm import checked_genomes, load_codon_model, with_checks
    from lifelm.tasks.genomes.output import check_table_path, write_table
    from lifelm.tasks.genomes.score import score_genomes

    check_table_path(out)
    m, _ = load_codon_model(model, device=device.value)
    seqs, checks = checked_genomes(genomes)
    genome_table, mutation_table, _ = score_genomes(m, seqs, context=context, mode=mode.value)
    genome_table = with_checks(genome_table, checks)
    mutations_out = out.with_name(out.stem + ".mutations" + (".json" if as_json else ".tsv"))
    write_table(genome_table, out, as_json=as_json)
    write_table(mutation_table, mutations_out, as_json=as_json)
    typer.echo(
        f"wrote {len(genome_table)} genomes to {out}, {len(mutation_table)} to {mutations_out}"
    )


def perplexity(
    genomes: FASTA,
    model: MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Per-ORF perplexity TSV.")],
    context: CONTEXT = 1024,
    device: DEVICE = Device.auto,
) -> None:
    """Per-ORF perplexity on held-out genomes (padding and [UNK] excluded)."""
    from lifelm.tasks.genomes.codon_lm import load_codon_model, read_genomes
    from lifelm.tasks.genomes.output import check_table_path, write_table
    from lifelm.tasks.genomes.score import perplexity as run

    check_table_path(out)
    m, _ = load_codon_model(model, device=device.value)
    seqs, _ = read_genomes(genomes)
    table = run(m, seqs, context=context)
    write_table(table, out)
    typer.echo(f"wrote {len(table)} rows to {out}")


def generate(
    model: MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output FASTA (.fasta) or TSV.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Sequences to sample.")] = 10,
    prompt: Annotated[str, typer.Option(help="Leading codons.")] = "ATG",
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (> 0).")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Sample among the k likeliest (0: all).")] = 0,
    min_codons: Annotated[int, typer.Option(help="No stop codon before this many codons.")] = 30,
    max_codons: Annotated[int, typer.Option(help="Length cap; a stop codon is forced here.")] = 500,
    seed: SEED = 0,
    device: DEVICE = Device.auto,
) -> None:
    """Sample open reading frames (start codon ... stop codon)."""
    from lifelm.tasks.genomes.codon_lm import load_codon_model
    from lifelm.tasks.genomes.generate import generate as run
    from lifelm.tasks.genomes.output import (
        FASTA_SUFFIXES,
        TABLE_SUFFIXES,
        check_table_path,
        write_sequences,
    )

    check_table_path(out, suffixes=(*TABLE_SUFFIXES, *FASTA_SUFFIXES))
    m, _ = load_codon_model(model, device=device.value)
    df = run(
        m,
        n,
        prompt=prompt,
        temperature=temperature,
        top_k=top_k,
        min_codons=min_codons,
        max_codons=max_codons,
        seed=seed,
    )
    write_sequences(df, out)
    typer.echo(f"wrote {len(df)} sequences to {out}")


class ScoreMethod(StrEnum):
    """Which log-likelihood ratio is the model's score."""

    full = "full"
    left = "left"


def _region(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    a, sep, b = text.partition("-")
    if not sep or not a.isdigit() or not b.isdigit():
        raise typer.BadParameter(f"{text!r}: give START-END (1-based, inclusive), e.g. 21563-25384")
    return int(a), int(b)


# Long only because typer options are its signature; the body is under 40 lines.
def score_mutations(
    model: MODEL,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Nucleotide table (TSV/JSON); the amino-acid view goes beside it as OUT.aa.tsv.",
        ),
    ],
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Reference FASTA in Wuhan-Hu-1 coordinates (default: MN908947.3).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    lineage: Annotated[
        str | None,
        typer.Option(
            "--lineage", help="Use this lineage's genome in --consensus as the reference."
        ),
    ] = None,
    consensus: Annotated[
        Path | None,
        typer.Option(
            "--consensus",
            help="Aligned lineage consensus genomes (e.g. pango_consensus_genome_nuc.fasta.xz): "
            "the conservation baseline and --lineage.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    consensus_dates: Annotated[
        Path | None,
        typer.Option(
            "--consensus-dates",
            help="TSV with lineage and designation_date (e.g. lineage_labels.tsv) for --as-of.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Conservation from lineages designated before this date."),
    ] = None,
    rates: Annotated[
        Path | None,
        typer.Option(
            "--rates",
            help="synonymous_rates_by_clade.csv (Bloom & Neher) for the mutation-count prior.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    substitutions: Annotated[
        Path | None,
        typer.Option(
            "--substitutions",
            help="File with one substitution per line (A23403G); default: every single change.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="START-END positions to scan (1-based).")
    ] = None,
    orf: Annotated[
        list[str], typer.Option("--orf", help="Only this ORF (repeatable), e.g. S.")
    ] = [],  # noqa: B006 (typer reads the default)
    annotation: ANNOTATION = None,
    context: Annotated[
        int, typer.Option("--context", min=1, help="Codons of context on each side.")
    ] = 32,
    method: Annotated[
        ScoreMethod, typer.Option(help="full: whole-window ratio; left: the codon's own term.")
    ] = ScoreMethod.full,
    device: DEVICE = Device.auto,
    as_json: AS_JSON = False,
) -> None:
    """Score every single-nucleotide (and amino-acid) change of a reference with the codon model, next to baselines."""
    from lifelm.tasks.genomes.codon_lm import load_codon_model
    from lifelm.tasks.genomes.mutscore import ScanInputs, scan_from_files
    from lifelm.tasks.genomes.output import check_table_path, write_table

    check_table_path(out)
    inputs = ScanInputs(
        reference=None if reference is None else str(reference),
        lineage=lineage,
        consensus=None if consensus is None else str(consensus),
        consensus_dates=None if consensus_dates is None else str(consensus_dates),
        as_of=as_of,
        rates=None if rates is None else str(rates),
        substitutions=None if substitutions is None else str(substitutions),
        region=_region(region),
        orf_names=tuple(orf),
        annotation=None if annotation is None else str(annotation),
    )
    m, _ = load_codon_model(model, device=device.value)
    nt, aa, lines = scan_from_files(
        m,
        inputs,
        context_codons=context,
        method=one_of(method.value, ("full", "left"), what="--method"),
    )
    aa_out = out.with_name(out.stem + ".aa" + (".json" if as_json else ".tsv"))
    write_table(nt, out, as_json=as_json, comments=lines)
    write_table(aa, aa_out, as_json=as_json, comments=lines, finite=["llr_left"])
    for line in lines:
        typer.echo(line)
    typer.echo(f"wrote {len(nt)} substitutions to {out}, {len(aa)} amino-acid changes to {aa_out}")
