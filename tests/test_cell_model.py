"""CellTransformer: shapes, masking, determinism of embeddings, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelm.data.cells.datasets import MaskedGeneCollator, pad_cells
from lifelm.data.cells.tokenizer import CLS, MASK, N_SPECIAL, PAD
from lifelm.models.cell_transformer import (
    PRESETS,
    CellClassifier,
    CellClassifierConfig,
    CellTransformer,
    CellTransformerConfig,
)
from lifelm.models.presets import UnknownPresetError

V = 60


def _model(seed: int = 0) -> CellTransformer:
    torch.manual_seed(seed)
    return CellTransformer(CellTransformerConfig.from_name("test", vocab_size=V)).eval()


def _cells(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.arange(N_SPECIAL, V))[: rng.integers(3, 40)] for _ in range(n)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name: str) -> None:
    cfg = CellTransformerConfig.from_name(name, vocab_size=100)
    assert cfg.d_model % cfg.n_heads == 0
    if name in ("test", "tiny"):
        out = CellTransformer(cfg)(torch.full((1, 5), N_SPECIAL))
        assert out["hidden"].shape == (1, 5, cfg.d_model)


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(
        UnknownPresetError, match="unknown cell model preset 'huge'; choose one of test"
    ):
        CellTransformerConfig.from_name("huge", vocab_size=10)


def test_embedding_ignores_batch_mates_and_batch_size() -> None:
    model = _model()
    cells = _cells(9)
    alone = torch.cat([model.embed(pad_cells([c], 256)) for c in cells])
    together = model.embed(pad_cells(cells, 256))
    shuffled = model.embed(pad_cells(cells[::-1], 256)).flip(0)
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, shuffled, atol=1e-5, rtol=1e-5)


def test_padding_does_not_leak_into_real_tokens() -> None:
    model = _model()
    ids = pad_cells(_cells(1), 256)
    wide = torch.cat([ids, torch.full((1, 16), PAD)], 1)
    h1 = model.encode(ids)
    h2 = model.encode(wide)[:, : ids.shape[1]]
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_masked_loss_counts_only_masked_positions() -> None:
    model = _model()
    collate = MaskedGeneCollator(V, 256, mask_prob=0.3)
    batch = collate([(c, -1) for c in _cells(4)], torch.Generator().manual_seed(0))
    assert (batch["labels"][batch["input_ids"] == PAD] == -100).all()
    assert (batch["labels"][:, 0] == -100).all()  # [CLS] never predicted
    assert (batch["input_ids"][:, 0] == CLS).all()
    assert (batch["input_ids"] == MASK).any()
    out = model(**batch)
    where = batch["labels"] != -100
    logits = model.mlm_logits(out["hidden"][where])
    ref = torch.nn.functional.cross_entropy(logits, batch["labels"][where])
    torch.testing.assert_close(out["loss"], ref)
    assert int(out["n_masked"]) == int(where.sum())


def test_collate_is_reproducible_from_the_generator() -> None:
    collate = MaskedGeneCollator(V, 256)
    items = [(c, -1) for c in _cells(5)]
    a = collate(items, torch.Generator().manual_seed(3))
    b = collate(items, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_long_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds max_length"):
        _model()(torch.full((1, 300), N_SPECIAL))


def test_fixed_seed_regression_value() -> None:
    """Guards against silent changes to init or forward (update deliberately if the model changes)."""
    model = _model(seed=0)
    ids = pad_cells(_cells(2, seed=1), 256)
    with torch.no_grad():
        emb = model.embed(ids)
    assert emb[:, :3].flatten().tolist() == pytest.approx(REGRESSION, abs=1e-4)


REGRESSION = [-0.09221, -0.29573, -0.0132, 0.11529, -0.12064, -0.27005]


def test_classifier_loss_and_logits() -> None:
    clf = CellClassifier(_model(), CellClassifierConfig(n_classes=3)).eval()
    ids = pad_cells(_cells(4), 256)
    out = clf(ids, labels=torch.tensor([0, 1, 2, 0]))
    assert out["logits"].shape == (4, 3)
    assert out["loss"].ndim == 0


def test_length_batches_cover_every_cell_once_within_the_token_budget() -> None:
    from lifelm.data.cells.datasets import length_batches

    lengths = np.array([2000, 5, 7, 1500, 3, 9, 10, 4])
    batches = length_batches(lengths, batch_size=4, max_tokens=4000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * (lengths[b].max() + 1) <= 4000
    assert batches[0].tolist() == [0]  # the longest cell alone
