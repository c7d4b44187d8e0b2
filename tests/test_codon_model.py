"""Codon transformer: presets, causality, packing masks, loss on real tokens, GPT-NeoX parity."""

from __future__ import annotations

import pytest
import torch

from lifelm.models.codon_transformer import (
    CLS_ID,
    PAD_ID,
    PRESETS,
    UNK_ID,
    CodonTransformer,
    CodonTransformerConfig,
    apply_rotary,
    rotary_cos_sin,
    target_mask,
)
from lifelm.models.presets import UnknownPresetError


def _model(**overrides: object) -> CodonTransformer:
    torch.manual_seed(0)
    return CodonTransformer(CodonTransformerConfig.from_name("test", **overrides)).eval()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name: str) -> None:
    cfg = CodonTransformerConfig.from_name(name)
    assert cfg.d_model % cfg.n_heads == 0
    assert CodonTransformerConfig.from_dict(cfg.to_dict()) == cfg
    if name == "test":
        out = CodonTransformer(cfg)(input_ids=torch.randint(5, 69, (2, 6)))
        assert out["logits"].shape == (2, 6, 69)
    if name == "genslm-25m":
        assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff) == (8, 512, 8, 2048)


def test_unknown_preset_and_fields_are_errors() -> None:
    with pytest.raises(
        UnknownPresetError, match="unknown codon model preset 'huge'; choose one of test"
    ):
        CodonTransformerConfig.from_name("huge")
    with pytest.raises(ValueError, match="unknown codon model config fields"):
        CodonTransformerConfig.from_dict({"d_model": 32, "wings": 2})


@pytest.mark.parametrize("variant", [{}, {"parallel_residual": False}, {"tie_embeddings": True}])
def test_causal_future_tokens_do_not_change_the_past(variant: dict) -> None:
    model = _model(**variant)
    x = torch.randint(5, 69, (1, 12))
    y = x.clone()
    y[0, 8:] = torch.randint(5, 69, (4,))
    with torch.no_grad():
        a, b = model.hidden_states(x), model.hidden_states(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rotary_is_relative() -> None:
    """q·k after rotation depends only on the position difference."""
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def dot(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rotary_cos_sin(torch.tensor([[pq]]), 8, 10_000.0, torch.float32)
        ck, sk = rotary_cos_sin(torch.tensor([[pk]]), 8, 10_000.0, torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(dot(5, 2), dot(13, 10))
    assert not torch.allclose(dot(5, 2), dot(5, 4))


def test_packed_rows_equal_separate_documents() -> None:
    """Two genes packed in one row give the same states and loss as each alone."""
    model = _model()
    a, b = torch.randint(5, 69, (5,)), torch.randint(5, 69, (7,))
    a[0] = b[0] = CLS_ID
    row = torch.cat([a, b, torch.full((4,), PAD_ID)])[None]  # (1, 16)
    doc = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 4])
    pos = torch.tensor([list(range(5)) + list(range(7)) + [0] * 4])
    with torch.no_grad():
        packed = model.hidden_states(row, doc, pos)
        alone_a, alone_b = model.hidden_states(a[None]), model.hidden_states(b[None])
        torch.testing.assert_close(packed[:, :5], alone_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[:, 5:12], alone_b, atol=1e-5, rtol=1e-5)
        loss_packed = model(input_ids=row, doc_ids=doc, position_ids=pos)
        la, lb = model(input_ids=a[None]), model(input_ids=b[None])
    # 4 + 6 targets: the mean over both equals the token-weighted mean of the separate losses
    assert int(loss_packed["n_tokens"]) == 10
    expected = (la["loss"] * 4 + lb["loss"] * 6) / 10
    torch.testing.assert_close(loss_packed["loss"], expected, atol=1e-5, rtol=1e-5)


def test_loss_ignores_padding_and_unknown() -> None:
    model = _model()
    x = torch.randint(5, 69, (1, 8))
    x[0, 0] = CLS_ID
    padded = torch.cat([x, torch.full((1, 5), PAD_ID)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x)["loss"], model(input_ids=padded)["loss"])
    with_unk = x.clone()
    with_unk[0, 4] = UNK_ID
    assert target_mask(with_unk, None).sum() == 6  # 7 targets minus the [UNK] one
    assert target_mask(padded, None).sum() == 7


def test_embedding_excludes_padding() -> None:
    model = _model()
    x = torch.randint(5, 69, (1, 9))
    x[0, 0] = CLS_ID
    padded = torch.cat([x, torch.full((1, 6), PAD_ID)], dim=1)
    torch.testing.assert_close(model.embed_mean(x), model.embed_mean(padded), atol=1e-6, rtol=1e-5)


def test_fixed_seed_regression_value() -> None:
    """Guards against silent changes of init or forward numerics."""
    model = _model()
    x = torch.arange(5, 25).remainder(64).add(5)[None]
    with torch.no_grad():
        loss = float(model(input_ids=x)["loss"])
    assert loss == pytest.approx(4.2562, abs=2e-3)


def test_one_training_step_lowers_the_loss_on_a_repeated_batch() -> None:
    model = _model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(5, 69, (4, 16))
    losses = []
    for _ in range(3):
        loss = model(input_ids=x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_gpt_neox_checkpoint_loads_with_identical_logits(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from lifelm.tasks.genomes.codon_lm import load_codon_model

    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=69,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        rotary_pct=0.25,
        max_position_embeddings=64,
    )
    hf = transformers.GPTNeoXForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours, sidecar = load_codon_model(tmp_path)
    x = torch.randint(5, 69, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x)["logits"], hf(x).logits, atol=1e-5, rtol=1e-4)
    assert sidecar["model"]["parallel_residual"] is True


def test_checkpoints_with_the_old_field_names_still_load() -> None:
    old = {"name": "tiny", "n_layers": 4, "hidden": 128, "n_heads": 4, "ffn": 512, "max_len": 512}
    old |= {"norm": "layernorm", "activation": "gelu", "bias": True}
    cfg = CodonTransformerConfig.from_dict(old)
    assert (cfg.d_model, cfg.d_ff, cfg.max_length) == (128, 512, 512)
    with pytest.raises(ValueError, match="activation='swiglu' is no longer supported"):
        CodonTransformerConfig.from_dict({**old, "activation": "swiglu"})
