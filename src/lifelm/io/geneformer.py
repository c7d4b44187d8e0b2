"""Read a published Geneformer checkpoint: a Hugging Face ``BertForMaskedLM`` folder + its dictionaries.

The folder holds ``config.json`` (``model_type: bert``) and ``model.safetensors`` or
``pytorch_model.bin``; the dictionaries are Geneformer's pickles:

- ``token_dictionary*.pkl``: Ensembl ID (and ``<pad>``, ``<mask>``; V2 also ``<cls>``, ``<eos>``)
  -> token id, i.e. the row of the word embedding;
- ``gene_median_dictionary*.pkl``: Ensembl ID -> non-zero median of normalised expression over
  the pretraining corpus (Geneformer's tokenizer only keeps genes present in both);
- ``ensembl_mapping_dict*.pkl`` (optional): ID -> ID used to collapse IDs before tokenizing.

A dictionaries folder may hold several versions (Geneformer's package ships ``…_gc30M.pkl`` for V1
and ``…_gc104M.pkl`` for V2); the token dictionary whose size equals the model's ``vocab_size`` is
used, and the median and mapping files with the same suffix. V1 (2,048 positions) has no
``<cls>``/``<eos>``; V2 (4,096) has both. Weights are read with safetensors / ``torch.load``
(``weights_only``), no ``transformers`` needed. ``io`` does not import models: this returns the
weights under :class:`~lifelm.models.bert_encoder.BertEncoder`'s names and its config fields; the
masked-LM head (``cls.predictions.*``) is not kept (no cell task uses it).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifelm._core.errors import LifeLMError

SPECIALS_V2 = ("<cls>", "<eos>")


class GeneformerImportError(LifeLMError, RuntimeError):
    """A folder cannot be read as a Geneformer checkpoint."""


@dataclass
class GeneformerFiles:
    """What a Geneformer folder + dictionaries hold, in LifeLM terms."""

    state: dict[str, torch.Tensor]  # BertEncoder parameter names (token_map not included)
    config: dict[str, Any]  # BertEncoderConfig fields except vocab_size / max_length / token ids
    token_dict: dict[str, int]  # Geneformer token dictionary
    medians: dict[str, float]  # gene median dictionary
    ensembl_mapping: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # which files were read

    @property
    def version(self) -> str:
        """``V2`` when the vocabulary has ``<cls>``/``<eos>``, else ``V1``."""
        return "V2" if all(t in self.token_dict for t in SPECIALS_V2) else "V1"


def is_hf_bert_folder(folder: str | Path) -> bool:
    """True when ``folder/config.json`` is a Hugging Face BERT config (not a LifeLM checkpoint)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return cfg.get("model_type") == "bert"


def _pickle(path: Path) -> dict:
    try:
        obj = pickle.loads(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise GeneformerImportError(f"{path}: not a readable pickle ({err})") from err
    if not isinstance(obj, dict):
        raise GeneformerImportError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _pick_dictionaries(folder: Path, vocab_size: int) -> dict[str, Path]:
    tokens = sorted(folder.glob("token_dictionary*.pkl"))
    if not tokens:
        raise GeneformerImportError(
            f"{folder}: no token_dictionary*.pkl; pass --dictionaries with Geneformer's "
            "token_dictionary, gene_median_dictionary (and ensembl_mapping_dict) pickles"
        )
    sizes = {p: len(_pickle(p)) for p in tokens}
    match = [p for p, n in sizes.items() if n == vocab_size]
    if len(match) != 1:
        found = ", ".join(f"{p.name} ({n})" for p, n in sizes.items())
        raise GeneformerImportError(
            f"{folder}: need exactly one token dictionary with {vocab_size} entries (the model's "
            f"vocab_size); found {found}"
        )
    suffix = match[0].name[len("token_dictionary") :]
    out = {"token_dictionary": match[0]}
    for key, stem in (
        ("gene_medians", "gene_median_dictionary"),
        ("ensembl_mapping", "ensembl_mapping_dict"),
    ):
        cand = folder / f"{stem}{suffix}"
        if not cand.is_file():
            others = sorted(folder.glob(f"{stem}*.pkl"))
            cand = others[0] if len(others) == 1 else cand
        if cand.is_file():
            out[key] = cand
    if "gene_medians" not in out:
        raise GeneformerImportError(
            f"{folder}: no gene_median_dictionary{suffix} next to {match[0].name}"
        )
    return out


def _weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st)), st
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True), pt
    raise GeneformerImportError(f"{folder}: no model.safetensors or pytorch_model.bin")


# Long only because of its docstring and signature; the body is under 80 lines.
def read_geneformer(folder: str | Path, dictionaries: str | Path | None = None) -> GeneformerFiles:
    """Read a Geneformer ``BertForMaskedLM`` folder and its dictionaries.

    Parameters
    ----------
    folder
        The Hugging Face folder (``config.json`` + weights).
    dictionaries
        Folder with the dictionary pickles; defaults to ``folder`` itself.
    """
    folder = Path(folder)
    dictionaries = Path(dictionaries) if dictionaries is not None else folder
    if not is_hf_bert_folder(folder):
        raise GeneformerImportError(f"{folder}/config.json: missing or not model_type 'bert'")
    c = json.loads((folder / "config.json").read_text())
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise GeneformerImportError(
            f"{folder}/config.json: position_embedding_type {c['position_embedding_type']!r}; "
            "only 'absolute' (Geneformer's) is supported"
        )
    act = c.get("hidden_act", "gelu")
    if act not in ("relu", "gelu"):
        raise GeneformerImportError(
            f"{folder}/config.json: hidden_act {act!r}; only relu/gelu map 1:1"
        )
    required = (
        "num_hidden_layers", "vocab_size", "hidden_size", "num_attention_heads",
        "intermediate_size", "max_position_embeddings",
    )  # fmt: skip
    missing = [k for k in required if k not in c]
    if missing:
        raise GeneformerImportError(
            f"{folder}/config.json: a Hugging Face BERT config without {', '.join(missing)}; "
            "pass a folder with the complete model (config.json as saved by save_pretrained)."
        )
    n_layers = int(c["num_hidden_layers"])
    cfg = {
        "bert_vocab_size": int(c["vocab_size"]),
        "n_layers": n_layers,
        "d_model": int(c["hidden_size"]),
        "n_heads": int(c["num_attention_heads"]),
        "d_ff": int(c["intermediate_size"]),
        "max_position": int(c["max_position_embeddings"]),
        "activation": act,
        "norm_eps": float(c.get("layer_norm_eps", 1e-12)),
        "type_vocab_size": int(c.get("type_vocab_size", 2)),
    }
    raw, wpath = _weights(folder)
    src = {k.removeprefix("bert."): v for k, v in raw.items()}
    names = {
        "word_embeddings.weight": "embeddings.word_embeddings.weight",
        "position_embeddings.weight": "embeddings.position_embeddings.weight",
        "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embed_norm.weight": "embeddings.LayerNorm.weight",
        "embed_norm.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(n_layers):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    missing = [theirs for theirs in names.values() if theirs not in src]
    if missing:
        raise GeneformerImportError(
            f"{wpath}: weights missing for {missing[:5]} (not a BERT encoder?)"
        )
    state = {ours: src[theirs].detach().float().clone() for ours, theirs in names.items()}
    files = _pick_dictionaries(dictionaries, cfg["bert_vocab_size"])
    token_dict = _pickle(files["token_dictionary"])
    medians = _pickle(files["gene_medians"])
    mapping = _pickle(files["ensembl_mapping"]) if "ensembl_mapping" in files else {}
    for tok in ("<pad>", "<mask>"):
        if tok not in token_dict:
            raise GeneformerImportError(f"{files['token_dictionary']}: no {tok} entry")
    if max(token_dict.values()) >= cfg["bert_vocab_size"]:
        raise GeneformerImportError(
            f"{files['token_dictionary']}: token ids reach {max(token_dict.values())}, "
            f"beyond the model's vocab_size {cfg['bert_vocab_size']}"
        )
    return GeneformerFiles(
        state=state,
        config=cfg,
        token_dict={str(k): int(v) for k, v in token_dict.items()},
        medians={str(k): float(v) for k, v in medians.items()},
        ensembl_mapping={str(k): str(v) for k, v in mapping.items()},
        files={"weights": str(wpath), **{k: str(v) for k, v in files.items()}},
    )
