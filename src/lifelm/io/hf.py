"""Read a GenSLM-format checkpoint (a local Hugging Face GPT-NeoX folder) into LifeLM's codon model.

GenSLM publishes GPT-NeoX models over the 69-token codon vocabulary. This module loads such a
folder with ``transformers`` (an optional dependency: ``pip install lifelm[hf]``; nothing is
downloaded, ``local_files_only`` is forced) and renames its weights to the parameter names of
``lifelm.models.codon_transformer.CodonTransformer``, returning config fields for it. It does not
import the model (``io`` sits below ``models``); ``lifelm.tasks.genomes.codon_lm`` builds it.

The one non-trivial mapping is the fused QKV projection: GPT-NeoX lays its rows out per head as
``(H, [q, k, v], head_dim)``; ours is ``([q, k, v], H, head_dim)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lifelm._core.errors import LifeLMError

GENSLM_VOCAB_SIZE = 69


class HFImportError(LifeLMError, RuntimeError):
    """A Hugging Face folder cannot be read as a GenSLM codon model."""


def _check_vocab(folder: Path, vocab: list[str] | None) -> None:
    """When the folder ships a tokenizer file, its codon ids must equal ours."""
    if vocab is None:
        return
    for name in ("tokenizer.json", "codon_wordlevel_69vocab.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        mapping = data.get("model", {}).get("vocab", data if isinstance(data, dict) else {})
        theirs = {tok: int(i) for tok, i in mapping.items() if isinstance(i, int)}
        bad = [t for i, t in enumerate(vocab) if theirs.get(t) != i]
        if bad:
            raise HFImportError(
                f"{path}: token ids differ from GenSLM's 69-token codon vocabulary for {bad[:5]}; "
                "this checkpoint (e.g. the 71-id BOS/EOS variant) would be misread."
            )


# Long only because of its docstring and signature; the body is under 80 lines.
def read_gpt_neox(
    folder: str | Path, *, vocab: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a local GPT-NeoX folder and map it to codon-transformer weights.

    Parameters
    ----------
    folder
        Folder with ``config.json`` (``model_type: gpt_neox``) and weights
        (``model.safetensors`` or ``pytorch_model.bin``).
    vocab
        Our vocabulary, to compare with a tokenizer file in the folder when there is one.

    Returns
    -------
    state_dict
        Weights under ``CodonTransformer``'s parameter names.
    config
        Fields for ``CodonTransformerConfig`` (GPT-NeoX switches set: LayerNorm with bias, GELU,
        parallel residual as configured, untied head).
    """
    folder = Path(folder)
    try:
        from transformers import GPTNeoXForCausalLM
    except ImportError as err:
        raise HFImportError(
            "reading a GenSLM/GPT-NeoX folder needs `transformers`: pip install 'lifelm[hf]'"
        ) from err
    try:
        hf = GPTNeoXForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise HFImportError(f"{folder}: not a loadable GPT-NeoX folder ({err})") from err
    c = hf.config
    if c.vocab_size != GENSLM_VOCAB_SIZE:
        raise HFImportError(
            f"{folder}/config.json: vocab_size {c.vocab_size}, expected {GENSLM_VOCAB_SIZE} "
            "(GenSLM's codon vocabulary); other tokenizers are not supported."
        )
    act = getattr(c, "hidden_act", "gelu")
    if act != "gelu":
        raise HFImportError(f"{folder}/config.json: hidden_act {act!r}; only exact 'gelu' maps 1:1")
    _check_vocab(folder, vocab)
    rope = getattr(c, "rope_parameters", None) or {}
    fraction = rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
    base = rope.get("rope_theta", getattr(c, "rotary_emb_base", 10_000.0))
    H, D = c.num_attention_heads, c.hidden_size
    hd = D // H
    fields = {
        "name": f"gpt-neox:{folder.name}",
        "vocab_size": c.vocab_size,
        "n_layers": c.num_hidden_layers,
        "d_model": D,
        "n_heads": H,
        "d_ff": c.intermediate_size,
        "rotary_fraction": float(fraction),
        "rotary_base": float(base),
        "max_length": int(c.max_position_embeddings),
        "norm_eps": float(c.layer_norm_eps),
        "parallel_residual": bool(c.use_parallel_residual),
        "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
    }
    if int(hd * float(fraction)) % 2:
        raise HFImportError(f"{folder}: rotary dims {int(hd * fraction)} must be even")

    src = hf.state_dict()
    head = src.get("embed_out.weight", src.get("lm_head.weight"))
    if head is None:
        raise HFImportError(f"{folder}: no output head (embed_out.weight or lm_head.weight)")
    out: dict[str, torch.Tensor] = {
        "embed.weight": src["gpt_neox.embed_in.weight"],
        "norm.weight": src["gpt_neox.final_layer_norm.weight"],
        "norm.bias": src["gpt_neox.final_layer_norm.bias"],
        "head.weight": head,
    }
    for i in range(c.num_hidden_layers):
        p, q = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        w = src[p + "attention.query_key_value.weight"]  # (H*3*hd, D), per-head [q, k, v]
        b = src[p + "attention.query_key_value.bias"]
        out[q + "attn.qkv.weight"] = w.view(H, 3, hd, D).transpose(0, 1).reshape(3 * D, D)
        out[q + "attn.qkv.bias"] = b.view(H, 3, hd).transpose(0, 1).reshape(3 * D)
        pairs = {
            "norm1": "input_layernorm",
            "norm2": "post_attention_layernorm",
            "attn.out": "attention.dense",
            "mlp.up": "mlp.dense_h_to_4h",
            "mlp.down": "mlp.dense_4h_to_h",
        }
        for ours, theirs in pairs.items():
            out[q + ours + ".weight"] = src[p + theirs + ".weight"]
            out[q + ours + ".bias"] = src[p + theirs + ".bias"]
    return {k: v.detach().clone() for k, v in out.items()}, fields
