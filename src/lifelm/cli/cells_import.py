"""``lifelm cells import-model``: bring a published checkpoint into LifeLM's folder format.

Wire with ``register(app)`` on the ``cells`` Typer app. Thin: every option maps to a task argument.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Family(StrEnum):
    """Published model families that can be imported."""

    geneformer = "geneformer"


class Pooling(StrEnum):
    """Which cell embedding an imported Geneformer gives."""

    mean = "mean"
    cls = "cls"


def import_model(
    family: Annotated[Family, typer.Argument(help="Model family (geneformer).")],
    folder: Annotated[
        Path,
        typer.Argument(
            help="Hugging Face BertForMaskedLM folder (config.json + model.safetensors or "
            "pytorch_model.bin).",
            exists=True,
            file_okay=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="LifeLM checkpoint folder to write.")],
    dictionaries: Annotated[
        Path | None,
        typer.Option(
            help="Folder with token_dictionary*.pkl, gene_median_dictionary*.pkl (and "
            "ensembl_mapping_dict*.pkl); default: FOLDER.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    emb_layer: Annotated[
        int | None,
        typer.Option(
            help="hidden_states index of the embeddings (0 = embedding output, n_layers = last). "
            "Default n_layers - 1, Geneformer's emb_layer=-1."
        ),
    ] = None,
    pooling: Annotated[
        Pooling, typer.Option(help="mean over genes, or the <cls> state (V2 only).")
    ] = Pooling.mean,
) -> None:
    """Convert a published Geneformer checkpoint (V1 or V2) into a LifeLM cell-model folder."""
    from lifelm.tasks.cells.import_model import import_geneformer
    from lifelm.tasks.cells.model_io import load_cell_model

    path = import_geneformer(
        folder, out, dictionaries=dictionaries, output_layer=emb_layer, pooling=pooling.value
    )
    cm = load_cell_model(path)
    data = cm.config["data"]
    typer.echo(
        f"wrote {path}: Geneformer {data['geneformer_version']}, {len(cm.tokenizer.genes)} genes, "
        f"{cm.tokenizer.max_length} token slots; embeddings: {data['embedding']}"
    )


def register(app: typer.Typer) -> None:
    """Add ``import-model`` to the ``cells`` app."""
    app.command("import-model")(import_model)
