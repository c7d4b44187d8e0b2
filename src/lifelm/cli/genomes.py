"""``lifelm genomes …``: genome QC and mutations, and codon language models.

The commands are module-level functions in ``genomes_seq`` (qc, mutations: sequence work) and
``genomes_models`` (pretrain, finetune, embed, lineages, score, perplexity, generate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from lifelm.cli import genomes_models as models
from lifelm.cli import genomes_seq as seq
from lifelm.cli import genomes_warn

app = typer.Typer(help="Genomes: QC, mutations, codon language models.", no_args_is_help=True)
commands: list[tuple[str, Callable[..., Any]]] = [
    ("qc", seq.qc),
    ("mutations", seq.mutations),
    ("pretrain", models.pretrain),
    ("finetune", models.finetune),
    ("embed", models.embed),
    ("score-mutations", models.score_mutations),
    ("lineages", models.lineages),
    ("score", models.score),
    ("perplexity", models.perplexity),
    ("generate", models.generate),
    ("warn", genomes_warn.warn),
]
for name, fn in commands:
    app.command(name)(fn)
