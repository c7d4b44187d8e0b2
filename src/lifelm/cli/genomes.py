"""``lifelm genomes …``: codon language models of genomes.

Commands are registered from two modules: ``genomes_seq`` (qc, mutations: sequence work) and
``genomes_models`` (pretrain, finetune, embed, lineages, score, generate: model work).
"""

from __future__ import annotations

import typer

from lifelm.cli import genomes_models, genomes_seq

app = typer.Typer(help="Genomes: QC, mutations, codon language models.", no_args_is_help=True)
genomes_seq.register(app)
genomes_models.register(app)
