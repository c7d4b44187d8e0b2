"""``lifelm genomes`` model commands: pretrain, finetune, embed, lineages, score, generate, perplexity.

Thin wrappers over ``lifelm.tasks.genomes``; outputs are TSV (or JSON) keyed by ``seqName`` so
they join to Nextclade's tables.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _write(df, out: Path, as_json: bool) -> None:
    from lifelm.tasks.genomes.output import write_table

    write_table(df, out, as_json=as_json)
    typer.echo(f"wrote {len(df)} rows to {out}")


def _check(out: Path) -> None:
    from lifelm.tasks.genomes.output import check_table_path

    check_table_path(out)


def _train_config(steps, batch_size, lr, warmup, checkpoint_every, seed, device):
    from lifelm.training.loop import TrainConfig

    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``genomes`` app."""

    @app.command("pretrain")
    def pretrain_cmd(
        cds: list[Path] = typer.Argument(
            ...,
            help="CDS FASTA files (.fasta, .gz, .xz), one gene per record, or one codon-store folder.",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Run folder; the model goes to OUT/model."
        ),
        preset: str = typer.Option("tiny", help="Model preset: test, tiny, small, genslm-25m."),
        row_len: int = typer.Option(512, help="Tokens per packed training row (context length)."),
        held_out: list[str] = typer.Option(
            [], "--held-out", help="Source genome label kept out of training (repeatable)."
        ),
        max_genes: int | None = typer.Option(
            None, help="Train on a random subset of this many genes."
        ),
        no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep near-identical genes."),
        steps: int = typer.Option(1000, help="Optimizer steps."),
        batch_size: int = typer.Option(16, help="Rows per step per process."),
        lr: float = typer.Option(1e-3, help="Peak learning rate."),
        warmup: int = typer.Option(100, help="Warmup steps."),
        checkpoint_every: int = typer.Option(200, help="Steps between resumable checkpoints."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the newest checkpoint in OUT."
        ),
    ) -> None:
        """Pretrain a codon language model on gene sequences (torchrun-ready)."""
        from lifelm.tasks.genomes.train import pretrain

        res = pretrain(
            cds,
            out,
            preset=preset,
            row_len=row_len,
            held_out_genomes=held_out,
            dedupe=not no_dedupe,
            max_genes=max_genes,
            train_config=_train_config(
                steps, batch_size, lr, warmup, checkpoint_every, seed, device
            ),
            resume=resume,
            seed=seed,
        )
        typer.echo(
            f"model: {res.model_dir} (step {res.step}, loss {res.final_loss:.4f}, held-out {res.eval_loss})"
        )

    @app.command("finetune")
    def finetune_cmd(
        init: Path = typer.Argument(
            ..., help="Checkpoint folder to start from (pretrain's OUT/model or a GenSLM folder)."
        ),
        genomes: Path = typer.Argument(..., help="Genome FASTA (reference-aligned or raw)."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Run folder; the model goes to OUT/model."
        ),
        held_out_list: Path | None = typer.Option(
            None, "--held-out-list", help="File with one seqName per line kept out of training."
        ),
        annotation: Path | None = typer.Option(
            None, help="ORF annotation (GFF3/GenBank); default SARS-CoV-2."
        ),
        mode: str = typer.Option(
            "orf", help="orf: one document per ORF; genome: ORFs joined by [SEP]."
        ),
        row_len: int = typer.Option(1024, help="Tokens per packed training row."),
        steps: int = typer.Option(500, help="Optimizer steps."),
        batch_size: int = typer.Option(8, help="Rows per step per process."),
        lr: float = typer.Option(3e-4, help="Peak learning rate."),
        warmup: int = typer.Option(50, help="Warmup steps."),
        checkpoint_every: int = typer.Option(100, help="Steps between resumable checkpoints."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the newest checkpoint in OUT."
        ),
    ) -> None:
        """Fine-tune a codon model on genomes, ORF by ORF in the reference frame."""
        from lifelm.tasks.genomes.train import finetune

        held = held_out_list.read_text().split("\n") if held_out_list else []
        res = finetune(
            init,
            genomes,
            out,
            held_out=[h.strip() for h in held if h.strip()],
            annotation=annotation,
            mode=mode,
            row_len=row_len,
            train_config=_train_config(
                steps, batch_size, lr, warmup, checkpoint_every, seed, device
            ),
            resume=resume,
            seed=seed,
        )
        typer.echo(
            f"model: {res.model_dir} (step {res.step}, loss {res.final_loss:.4f}, held-out {res.eval_loss})"
        )

    @app.command("embed")
    def embed_cmd(
        model: Path = typer.Argument(..., help="Codon model checkpoint folder."),
        genomes: Path = typer.Argument(..., help="Genome FASTA (reference-aligned or raw)."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Output TSV (seqName + emb_0..emb_D) or .npy."
        ),
        annotation: Path | None = typer.Option(
            None, help="ORF annotation (GFF3/GenBank); default SARS-CoV-2."
        ),
        context: int = typer.Option(1024, help="Tokens per window."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Embed genomes: mean hidden state over real codon tokens (batch-independent)."""
        import numpy as np
        import pandas as pd

        from lifelm.tasks.genomes.codon_lm import default_orfs, load_codon_model, read_genomes
        from lifelm.tasks.genomes.embed import embed_genomes

        _check(out)
        m, _ = load_codon_model(model, device=device)
        seqs, _ = read_genomes(genomes)
        emb, table = embed_genomes(m, seqs, orfs=default_orfs(annotation), context=context)
        if out.suffix == ".npy":
            from lifelm._core.runfolder import atomic_output

            with atomic_output(out) as tmp, tmp.open("wb") as fh:
                np.save(fh, emb)
            _write(table, out.with_suffix(".tsv"), False)
            return
        cols = pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])])
        _write(pd.concat([table, cols], axis=1), out, False)

    @app.command("lineages")
    def lineages_cmd(
        embeddings: Path = typer.Argument(..., help="TSV from `lifelm genomes embed`."),
        labels: Path = typer.Argument(
            ...,
            help="TSV with the sequence names (see --id-column) and label columns: the reference. "
            "Genomes not in it are queries.",
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Output TSV or JSON of predictions."),
        genomes: Path | None = typer.Option(
            None,
            "--genomes",
            help="FASTA of the same genomes: the Hamming-NN and 6-mer baselines are fitted on it "
            "next to the model (strongly advised; without it no baseline is shown).",
        ),
        column: list[str] = typer.Option(
            ["clade"], "--column", help="Label column to predict (repeatable)."
        ),
        id_column: str = typer.Option(
            "seqName", help="Column of LABELS that holds the sequence name."
        ),
        train_list: Path | None = typer.Option(
            None, help="seqNames (one per line) usable as reference; default: all labelled rows."
        ),
        method: str = typer.Option(
            "auto",
            help="auto (best on the held-out part), model, hamming_nn or kmer_logreg.",
        ),
        probe: str = typer.Option("logreg", help="The model's classifier: logreg or knn."),
        min_confidence: float = typer.Option(
            0.5, help="Calibrated probability below which a genome is 'unassigned'."
        ),
        novelty_quantile: float = typer.Option(
            0.99,
            help="Held-out distance quantile of a class beyond which a genome is 'novel'.",
        ),
        holdout: float = typer.Option(
            0.2, help="Share of each class's reference genomes held out to measure accuracy."
        ),
        empty_labels: str = typer.Option(
            "class",
            help="Empty labels: 'class' keeps them as the class '(none)'; 'refuse' stops with an error.",
        ),
        seed: int = typer.Option(0, help="Seed of the held-out split and the probe."),
        as_json: bool = typer.Option(False, "--json", help="Write JSON (summary + rows)."),
    ) -> None:
        """Predict lineage labels with calibrated probabilities, 'unassigned'/'novel' calls and baselines."""
        from lifelm._core.errors import InputError
        from lifelm.tasks.genomes.lineages import LineageConfig, lineages_from_files, summary_lines
        from lifelm.tasks.genomes.output import check_table_path, write_table

        check_table_path(out)
        if empty_labels not in ("class", "refuse"):
            raise InputError(f"--empty-labels must be 'class' or 'refuse', got {empty_labels!r}.")
        if probe not in ("logreg", "knn"):
            raise InputError(f"--probe must be 'logreg' or 'knn', got {probe!r}.")
        cfg = LineageConfig(
            holdout_fraction=holdout,
            min_confidence=min_confidence,
            novelty_quantile=novelty_quantile,
            empty_labels=empty_labels,  # type: ignore[arg-type]
            probe=probe,  # type: ignore[arg-type]
            seed=seed,
        )
        table, summary = lineages_from_files(
            embeddings,
            labels,
            columns=column,
            id_column=id_column,
            genomes=genomes,
            train_list=train_list,
            method=method,
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

    @app.command("score")
    def score_cmd(
        model: Path = typer.Argument(..., help="Codon model checkpoint folder."),
        genomes: Path = typer.Argument(..., help="Genome FASTA (reference-aligned or raw)."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Genome scores TSV; mutations go to OUT with .mutations.tsv."
        ),
        context: int = typer.Option(1024, help="Tokens per window."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        as_json: bool = typer.Option(False, "--json", help="Write JSON records instead of TSV."),
    ) -> None:
        """Genome log-likelihood and, per observed codon substitution, its log-likelihood ratio vs the reference."""
        from lifelm.tasks.genomes.codon_lm import load_codon_model, read_genomes
        from lifelm.tasks.genomes.score import score_genomes

        _check(out)
        m, _ = load_codon_model(model, device=device)
        seqs, _ = read_genomes(genomes)
        gt, mt, _ = score_genomes(m, seqs, context=context)
        _write(gt, out, as_json)
        _write(
            mt, out.with_name(out.stem + ".mutations" + (".json" if as_json else ".tsv")), as_json
        )

    @app.command("perplexity")
    def perplexity_cmd(
        model: Path = typer.Argument(..., help="Codon model checkpoint folder."),
        genomes: Path = typer.Argument(..., help="Held-out genome FASTA."),
        out: Path = typer.Option(..., "--out", "-o", help="Per-ORF perplexity TSV."),
        context: int = typer.Option(1024, help="Tokens per window."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Per-ORF perplexity on held-out genomes (padding and [UNK] excluded)."""
        from lifelm.tasks.genomes.codon_lm import load_codon_model, read_genomes
        from lifelm.tasks.genomes.score import perplexity

        _check(out)
        m, _ = load_codon_model(model, device=device)
        seqs, _ = read_genomes(genomes)
        _write(perplexity(m, seqs, context=context), out, False)

    @app.command("generate")
    def generate_cmd(
        model: Path = typer.Argument(..., help="Codon model checkpoint folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Output FASTA (.fasta) or TSV."),
        n: int = typer.Option(10, help="Sequences to sample."),
        prompt: str = typer.Option("ATG", help="Leading codons."),
        temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
        top_k: int = typer.Option(0, help="Sample among the k likeliest codons (0: all)."),
        min_codons: int = typer.Option(30, help="No stop codon before this many codons."),
        max_codons: int = typer.Option(500, help="Length cap; a stop codon is forced here."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Sample open reading frames (start codon ... stop codon)."""
        from lifelm.tasks.genomes.codon_lm import load_codon_model
        from lifelm.tasks.genomes.generate import generate

        _check(out)
        m, _ = load_codon_model(model, device=device)
        df = generate(
            m,
            n,
            prompt=prompt,
            temperature=temperature,
            top_k=top_k,
            min_codons=min_codons,
            max_codons=max_codons,
            seed=seed,
        )
        if out.suffix in (".fasta", ".fa", ".fna"):
            from lifelm._core.runfolder import atomic_output

            with atomic_output(out) as tmp:
                tmp.write_text("".join(f">{r.seqName}\n{r.sequence}\n" for r in df.itertuples()))
            typer.echo(f"wrote {len(df)} sequences to {out}")
        else:
            _write(df, out, False)
