"""Import a published Geneformer checkpoint as a LifeLM cell model (``lifelm cells import-model``).

The Hugging Face ``BertForMaskedLM`` folder and its dictionaries (:mod:`lifelm.io.geneformer`)
become a :class:`~lifelm.models.bert_encoder.BertEncoder` plus a
:class:`~lifelm.data.cells.tokenizer.RankValueTokenizer` that reproduces Geneformer's tokens:

- vocabulary = the token dictionary's genes that have a positive gene median, in token-id order
  (Geneformer's tokenizer only uses genes present in both dictionaries);
- ranking = ``count / median`` descending (Geneformer: ``count / n_counts * 10,000 / median``; the
  per-cell scale does not change the order);
- truncation = 2,048 genes for V1 (no special tokens), 4,094 genes between ``<cls>`` and ``<eos>``
  for V2 (4,096 tokens). LifeLM's tokenizer counts a ``[CLS]`` slot in ``max_length``; the model maps
  LifeLM ids to Geneformer ids (``token_map``), drops that slot for V1 and adds ``<eos>`` for V2.

Differences that remain, stated rather than hidden: dataset genes are matched through LifeLM's
GENCODE mapping (symbols or Ensembl IDs), not Geneformer's ``ensembl_mapping_dict`` (its
non-identity entries are counted in the checkpoint's ``data``); values that tie in float32 are
ordered by vocabulary index (Geneformer's ``argsort`` order is unspecified for ties).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lifelm._core.runtime import get_logger
from lifelm.data.cells.tokenizer import CLS, MASK, N_SPECIAL, PAD, RankValueTokenizer
from lifelm.io.checkpoint import save_checkpoint
from lifelm.io.geneformer import GeneformerFiles, GeneformerImportError, read_geneformer
from lifelm.models.bert_encoder import BertEncoder, BertEncoderConfig
from lifelm.tasks.cells.model_io import BERT_MODEL, CellModel

log = get_logger("lifelm.import")

# Imported vocabularies cover Geneformer's ~20-25k genes; a dataset with many non-coding or
# unmapped genes can have less than half of its columns in it and still be well covered.
IMPORTED_MIN_COVERAGE = 0.25


def _tokenizer(
    gf: GeneformerFiles, max_position: int
) -> tuple[RankValueTokenizer, np.ndarray, dict]:
    """Tokenizer over the usable genes and the LifeLM id -> Geneformer id map."""
    genes = sorted((tid, g) for g, tid in gf.token_dict.items() if not g.startswith("<"))
    usable = [(tid, g) for tid, g in genes if gf.medians.get(g, 0.0) > 0]
    if not usable:
        raise GeneformerImportError(
            f"{gf.files.get('token_dictionary')}: no gene has a positive median in "
            f"{gf.files.get('gene_medians')}"
        )
    ids = np.array([g for _, g in usable])
    species: Literal["homo_sapiens", "mus_musculus"] = (
        "mus_musculus" if np.mean([g.startswith("ENSMUSG") for g in ids]) > 0.5 else "homo_sapiens"
    )
    v2 = gf.version == "V2"
    tok = RankValueTokenizer(
        genes=ids,
        medians=np.array([gf.medians[g] for g in ids]),
        species=species,
        gencode_version="",
        max_length=max_position - 1 if v2 else max_position + 1,
        min_coverage=IMPORTED_MIN_COVERAGE,
    )
    token_map = np.zeros(tok.vocab_size, dtype=np.int64)
    token_map[PAD] = gf.token_dict["<pad>"]
    token_map[MASK] = gf.token_dict["<mask>"]
    token_map[CLS] = gf.token_dict["<cls>"] if v2 else gf.token_dict["<pad>"]
    token_map[N_SPECIAL:] = [tid for tid, _ in usable]
    report = {
        "genes_in_token_dictionary": len(genes),
        "genes_without_median": len(genes) - len(usable),
        "ensembl_mapping_non_identity": sum(k != v for k, v in gf.ensembl_mapping.items()),
    }
    return tok, token_map, report


def geneformer_cell_model(
    folder: str | Path,
    *,
    dictionaries: str | Path | None = None,
    output_layer: int | None = None,
    pooling: str = "mean",
) -> CellModel:
    """Build a LifeLM cell model from a Geneformer Hugging Face folder (nothing is written).

    Parameters
    ----------
    folder
        ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` of a ``BertForMaskedLM``.
    dictionaries
        Folder with the token / gene-median (/ Ensembl-mapping) pickles; default ``folder``.
    output_layer
        Hidden-states index the embeddings come from: 0 = embedding output, ``n_layers`` = last
        layer. Default ``n_layers - 1``, Geneformer's ``emb_layer=-1`` (second-to-last layer).
    pooling
        ``mean`` (mean over genes, Geneformer's "cell" embedding) or ``cls`` (V2's ``<cls>`` state).
    """
    gf = read_geneformer(folder, dictionaries)
    tok, token_map, report = _tokenizer(gf, gf.config["max_position"])
    n_layers = gf.config["n_layers"]
    v2 = gf.version == "V2"
    cfg = BertEncoderConfig(
        vocab_size=tok.vocab_size,
        max_length=tok.max_length,
        special="cls_eos" if v2 else "none",
        bert_pad_id=gf.token_dict["<pad>"],
        bert_cls_id=gf.token_dict["<cls>"] if v2 else -1,
        bert_eos_id=gf.token_dict["<eos>"] if v2 else -1,
        output_layer=n_layers - 1 if output_layer is None else int(output_layer),
        pooling=pooling,
        **gf.config,
    )
    net = BertEncoder(cfg)
    state: dict[str, Any] = dict(gf.state)
    state["token_map"] = torch.from_numpy(token_map)
    net.load_state_dict(state, strict=True)
    net.eval()
    config: dict[str, Any] = {
        "model_type": BERT_MODEL,
        "model": cfg.to_dict(),
        "tokenizer": tok.to_dict(),
        "data": {
            "source": "geneformer",
            "geneformer_version": gf.version,
            "embedding": embedding_rule(cfg, gf.version),
            "files": gf.files,
            **report,
        },
    }
    log.info(
        "Geneformer %s: %d layers, %d genes (%d without a median dropped); %s",
        gf.version,
        n_layers,
        len(tok.genes),
        report["genes_without_median"],
        config["data"]["embedding"],
    )
    return CellModel(net, tok, config, Path(folder))


def embedding_rule(cfg: BertEncoderConfig, version: str = "") -> str:
    """One line saying which embedding a Geneformer model gives (written into every output)."""
    layer = f"hidden_states[{cfg.output_layer}] of {cfg.n_layers} layers"
    if cfg.output_layer == cfg.n_layers - 1:
        layer += " (second-to-last layer, Geneformer's default emb_layer=-1)"
    elif cfg.output_layer == cfg.n_layers:
        layer += " (last layer, Geneformer's emb_layer=0)"
    how = "<cls> token state" if cfg.pooling == "cls" else "mean over gene tokens"
    return f"Geneformer {version} {how} of {layer}".replace("  ", " ")


def import_geneformer(
    folder: str | Path,
    out: str | Path,
    *,
    dictionaries: str | Path | None = None,
    output_layer: int | None = None,
    pooling: str = "mean",
) -> Path:
    """Convert a Geneformer folder into a LifeLM checkpoint folder (``model.safetensors`` + ``config.json``).

    Arguments as :func:`geneformer_cell_model`; ``out`` is the folder to write (weights and config
    are written atomically). Returns ``out``.
    """
    cm = geneformer_cell_model(
        folder, dictionaries=dictionaries, output_layer=output_layer, pooling=pooling
    )
    return save_checkpoint(out, cm.network.state_dict(), cm.config)
