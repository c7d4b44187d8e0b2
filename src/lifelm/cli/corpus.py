"""``lifelm cells corpus …``: build and inspect sharded, pre-tokenized corpus stores.

Wired into ``lifelm cells`` by :func:`register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

corpus_app = typer.Typer(
    help="Corpus stores: sharded, memory-mapped, pre-tokenized cells for data larger than memory.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``corpus`` commands to a typer app (``lifelm cells``)."""
    app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def build(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Raw-count .h5ad files (read backed) and/or TileDB-SOMA experiment URIs."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store folder to write (or finish).")],
    max_length: Annotated[int, typer.Option(help="Tokens per cell incl. [CLS].")] = 2048,
    shard_cells: Annotated[
        int, typer.Option(help="Source rows per shard: the unit of parallelism and of resume.")
    ] = 65_536,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=1, help="Processes (parallel over sources and shards)."),
    ] = 1,
    min_genes: Annotated[int, typer.Option(help="Drop cells with fewer vocabulary genes.")] = 10,
    layer: Annotated[
        str | None,
        typer.Option(help="h5ad layer or SOMA X layer holding raw counts; found when omitted."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="Use this tokenizer.json (or a model folder's config.json) instead of fitting "
            "medians: for corpora that feed an existing model.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    bins_per_decade: Annotated[
        int, typer.Option(help="Resolution of the streaming median histograms.")
    ] = 50,
) -> None:
    """Build a corpus store: streaming gene medians, then sharded rank-value tokens.

    Re-running the same command after a kill keeps finished shards and does the rest.
    """
    from lifelm.data.cells.tokenizer import RankValueTokenizer
    from lifelm.data.store.build import CorpusConfig, build_corpus
    from lifelm.data.store.store import CorpusStore

    tok = RankValueTokenizer.from_file(tokenizer) if tokenizer is not None else None
    cfg = CorpusConfig(
        max_length=max_length,
        shard_cells=shard_cells,
        workers=jobs,
        min_genes=min_genes,
        layer=layer,
        bins_per_decade=bins_per_decade,
    )
    path = build_corpus(sources, out, config=cfg, tokenizer=tok)
    typer.echo(json.dumps(CorpusStore(path).summary()))


@corpus_app.command("info")
def info(
    store: Annotated[
        Path, typer.Argument(help="A corpus store folder.", exists=True, file_okay=False)
    ],
) -> None:
    """Print a store's size, cells, tokens and disk use as JSON."""
    from lifelm.data.store.store import CorpusStore

    typer.echo(json.dumps(CorpusStore(store).summary()))


@corpus_app.command("synth")
def synth(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Real raw-count .h5ad files to resample.", exists=True, dir_okay=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the synthetic .h5ad files.")],
    cells: Annotated[int, typer.Option(help="Cells in total.")] = 100_000,
    cells_per_file: Annotated[int, typer.Option(help="Cells per output file.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Make a large corpus by resampling real cells (binomially thinned copies) for scaling runs."""
    from lifelm.data.store.synthetic import synthesize_corpus

    paths = synthesize_corpus(sources, out, cells, cells_per_file=cells_per_file, seed=seed)
    typer.echo(json.dumps({"files": [str(p) for p in paths]}))
