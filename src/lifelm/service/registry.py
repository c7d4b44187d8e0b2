"""Model cards for the registry: what a registered model is, how it was trained, how it did."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

OBJECTIVES = {
    "cell_transformer": "masked-gene prediction (nats)",
    "codon_transformer": "next-codon prediction (nats)",
    "cell_classifier": "cell-type cross-entropy (nats)",
}


def n_parameters(model_dir: Path) -> int:
    """Parameter count read from the safetensors header (no tensor is loaded)."""
    raw = (model_dir / "model.safetensors").read_bytes()[:8]
    size = int.from_bytes(raw, "little")
    with open(model_dir / "model.safetensors", "rb") as fh:
        fh.seek(8)
        header = json.loads(fh.read(size))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def model_card(
    model_dir: Path, run_dir: Path, spec: dict, inputs: dict[str, str], job_id: int
) -> dict[str, Any]:
    """The card of a model trained by job ``job_id``.

    The held-out loss (masked-gene prediction for cell models, next-codon prediction for codon
    models) is shown next to its simple baseline: the uniform guess over the vocabulary
    (``ln V`` nats), the loss of a model that learned nothing.
    """
    config = json.loads((model_dir / "config.json").read_text())
    vocab = int(config["model"].get("vocab_size", 0))
    tokenizer = config.get("tokenizer", {})
    return {
        "architecture": config.get("model_type"),
        "config": config.get("model"),
        "parameters": n_parameters(model_dir),
        "tokenizer": {
            "kind": tokenizer.get("kind"),
            "sha256": tokenizer.get("sha256"),
            "species": tokenizer.get("species"),
            "gencode_version": tokenizer.get("gencode_version"),
        },
        "training_data": [{"dataset": k, "sha256": v} for k, v in sorted(inputs.items())],
        "training": {"steps": config.get("step"), "preset": spec.get("preset"), "job": job_id},
        "metrics": {
            "objective": OBJECTIVES.get(str(config.get("model_type")), "training loss"),
            "eval_loss": config.get("eval_loss"),
            "baseline_uniform_guess_loss": math.log(vocab) if vocab > 1 else None,
            "split": config.get("data", {}).get("split"),
        },
        "licence": spec.get("licence"),
        "intended_use": spec.get("intended_use"),
        "lifelm_version": config.get("lifelm_version"),
    }
