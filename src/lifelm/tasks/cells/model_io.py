"""Load and save cell models from checkpoint folders (``model.safetensors`` + ``config.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifelm._core.runtime import resolve_device
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.io.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from lifelm.io.geneformer import is_hf_bert_folder
from lifelm.models.bert_encoder import BertEncoder, BertEncoderConfig
from lifelm.models.cell_transformer import (
    CellClassifier,
    CellClassifierConfig,
    CellTransformer,
    CellTransformerConfig,
)

CELL_MODEL = "cell_transformer"
CELL_CLASSIFIER = "cell_classifier"
BERT_MODEL = "geneformer_bert"  # an imported Geneformer encoder (lifelm.models.bert_encoder)


@dataclass
class CellModel:
    """A loaded cell model: the network, its tokenizer and the rest of its config."""

    network: CellTransformer | CellClassifier | BertEncoder
    tokenizer: RankValueTokenizer
    config: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def trunk(self) -> CellTransformer | BertEncoder:
        net = self.network
        return net.trunk if isinstance(net, CellClassifier) else net

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes", []))

    @property
    def is_classifier(self) -> bool:
        return isinstance(self.network, CellClassifier)

    def to(self, device: str | torch.device) -> CellModel:
        self.network.to(resolve_device(device))
        return self


def sidecar(
    trunk_cfg: CellTransformerConfig | BertEncoderConfig,
    tokenizer: RankValueTokenizer,
    *,
    head: CellClassifierConfig | None = None,
    classes: list[str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content that rebuilds a cell model from its folder alone."""
    out: dict[str, Any] = {
        "model_type": CELL_CLASSIFIER if head else CELL_MODEL,
        "model": trunk_cfg.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "data": provenance or {},
    }
    if isinstance(trunk_cfg, BertEncoderConfig):  # a classifier over an imported Geneformer
        out["trunk"] = BERT_MODEL
    if head is not None:
        out["head"] = {"n_classes": head.n_classes, "hidden": head.hidden, "dropout": head.dropout}
        out["classes"] = list(classes or [])
    return out


def load_cell_model(
    folder: str | Path, *, device: str = "cpu", dictionaries: str | Path | None = None
) -> CellModel:
    """Rebuild a cell model (pretrained trunk or fine-tuned classifier) from its folder.

    Parameters
    ----------
    folder
        A folder written by ``lifelm cells pretrain`` (``…/model``), ``annotate --save`` or
        ``cells import-model``, or a Geneformer Hugging Face folder (then see ``dictionaries``).
    device
        Where to put the weights.
    dictionaries
        For a Geneformer Hugging Face folder: the folder with its dictionary pickles (default:
        ``folder`` itself).
    """
    if is_hf_bert_folder(folder):
        from lifelm.tasks.cells.import_model import geneformer_cell_model

        return geneformer_cell_model(folder, dictionaries=dictionaries).to(device)
    cfg = read_config(folder)
    kind = cfg.get("model_type")
    if kind == BERT_MODEL:
        state, _ = load_checkpoint(folder)
        return _load_bert(folder, state, cfg).to(device)
    if kind not in (CELL_MODEL, CELL_CLASSIFIER):
        raise CheckpointError(
            f"{Path(folder) / 'config.json'}: model_type {kind!r} is not a LifeLM cell model "
            f"({CELL_MODEL!r} or {CELL_CLASSIFIER!r}); pass a folder written by "
            "`lifelm cells pretrain` (…/model) or `lifelm cells annotate --save`."
        )
    try:
        tokenizer = RankValueTokenizer.from_dict(cfg["tokenizer"])
        bert = cfg.get("trunk") == BERT_MODEL
        trunk_cfg = (BertEncoderConfig if bert else CellTransformerConfig)(**cfg["model"])
        head_cfg = CellClassifierConfig(**cfg["head"]) if kind == CELL_CLASSIFIER else None
    except (KeyError, TypeError, ValueError) as e:
        field_name = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(
            f"{Path(folder) / 'config.json'}: incomplete or edited cell-model config "
            f"({type(e).__name__}: {field_name}). The file must be the one LifeLM wrote with "
            "these weights: copy the checkpoint folder again or use another checkpoint."
        ) from e
    state, _ = load_checkpoint(folder)
    if trunk_cfg.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{folder}: model vocab_size {trunk_cfg.vocab_size} != tokenizer vocabulary "
            f"{tokenizer.vocab_size}; the checkpoint is inconsistent"
        )
    trunk: CellTransformer | BertEncoder
    if isinstance(trunk_cfg, BertEncoderConfig):
        trunk = BertEncoder(trunk_cfg)
    else:
        trunk = CellTransformer(trunk_cfg)
    network: CellTransformer | CellClassifier | BertEncoder = trunk
    if head_cfg is not None:  # kind == CELL_CLASSIFIER
        network = CellClassifier(trunk, head_cfg)
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensor shapes differ from the config
        raise CheckpointError(
            f"{folder}: weights do not fit the config ({str(e).splitlines()[-1].strip()[:200]}); "
            "config.json and model.safetensors come from different models: copy the folder again."
        ) from e
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    network.eval()
    return CellModel(network, tokenizer, cfg, Path(folder)).to(device)


def _load_bert(folder: str | Path, state: dict, cfg: dict[str, Any]) -> CellModel:
    """An imported Geneformer encoder from a LifeLM checkpoint folder (``cells import-model``)."""
    tokenizer = RankValueTokenizer.from_dict(cfg["tokenizer"])
    bert_cfg = BertEncoderConfig(**cfg["model"])
    if bert_cfg.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{folder}: model vocab_size {bert_cfg.vocab_size} != tokenizer vocabulary "
            f"{tokenizer.vocab_size}; the checkpoint is inconsistent"
        )
    network = BertEncoder(bert_cfg)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    network.eval()
    return CellModel(network, tokenizer, cfg, Path(folder))


def save_cell_model(model: CellModel, folder: str | Path) -> Path:
    """Write a cell model to ``folder`` (weights + config)."""
    return save_checkpoint(folder, model.network.state_dict(), model.config)
