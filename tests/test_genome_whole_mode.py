"""Whole-genome mode (one document per genome, strided windows) and the key/value cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelm.data.genomes.codons import CLS_ID, SEP_ID
from lifelm.io.annotation import Orf
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.codon_lm import genome_document, strided_windows, tokenize_genome
from lifelm.tasks.genomes.embed import embed_genomes
from lifelm.tasks.genomes.generate import generate
from lifelm.tasks.genomes.score import score_genomes

ORFS = [Orf("a", ((1, 150),)), Orf("b", ((160, 390),)), Orf("c", ((391, 600),))]


def _model(**kw: object) -> CodonTransformer:
    torch.manual_seed(0)
    return CodonTransformer(CodonTransformerConfig.from_name("test", init_std=0.3, **kw)).eval()


def _genomes(n: int, seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        s = list(rng.choice(list("ACGT"), 620))
        if i % 2:  # some N and a deleted codon: rows of other lengths
            s[30:36] = "NNNNNN"
            s[200:203] = "---"
        out[f"g{i}"] = "".join(s)
    return out


@pytest.mark.parametrize(
    ("n", "context", "overlap"), [(10, 4, 2), (9, 4, 0), (3, 8, 4), (57, 16, 5)]
)
def test_strided_windows_own_every_token_once(n: int, context: int, overlap: int) -> None:
    wins = strided_windows(n, context, overlap)
    owned = np.concatenate([np.arange(own, end) for _, end, own in wins])
    np.testing.assert_array_equal(owned, np.arange(n))
    assert all(end - start <= context for start, end, _ in wins)
    assert all(own - start >= overlap for start, _, own in wins[1:])


def test_genome_document_joins_orfs_with_sep() -> None:
    tok = tokenize_genome(_genomes(1)["g0"], ORFS)
    doc = genome_document(tok)
    assert doc.ids[0] == CLS_ID
    assert [int(doc.ids[o]) for o in doc.orf_offsets[1:]] == [SEP_ID, SEP_ID]
    assert len(doc.ids) == sum(len(d) for d in tok.docs)


@pytest.mark.parametrize("context", [None, 48])  # whole document in one row / strided windows
def test_genome_embedding_does_not_depend_on_the_batch(context: int | None) -> None:
    model = _model()
    genomes = _genomes(4)
    together, _ = embed_genomes(
        model, genomes, orfs=ORFS, mode="genome", context=context, progress=False
    )
    for i, (name, seq) in enumerate(genomes.items()):
        alone, table = embed_genomes(
            model, {name: seq}, orfs=ORFS, mode="genome", context=context, progress=False
        )
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)
    assert table["n_codons"].iat[0] > 0
    assert not np.allclose(together[0], together[2], atol=1e-3)  # genomes differ


def test_genome_mode_scores_every_codon_from_its_whole_left_context() -> None:
    model = _model()
    seq = _genomes(1)["g0"]
    gt, _, ot = score_genomes(model, {"x": seq}, orfs=ORFS, mode="genome", progress=False)
    doc = torch.from_numpy(genome_document(tokenize_genome(seq, ORFS)).ids)[None]
    logp, _ = model.token_logprobs(doc)
    tgt = doc[0, 1:]
    codon = tgt >= 5  # not [SEP]: ORF boundaries are not codons
    expect = float(logp[0, :-1].gather(1, tgt[:, None])[:, 0][codon].sum())
    assert gt["log_likelihood"].iat[0] == pytest.approx(expect, abs=1e-3)
    assert gt["n_scored"].iat[0] == int(codon.sum())
    # strided windows only lose context, never codons
    gs, _, _ = score_genomes(
        model, {"x": seq}, orfs=ORFS, mode="genome", context=40, overlap=20, progress=False
    )
    assert gs["n_scored"].iat[0] == gt["n_scored"].iat[0]
    assert set(ot["orf"]) == {"a", "b", "c"}


def test_decode_with_cache_equals_the_full_forward() -> None:
    model = _model()
    x = torch.randint(5, 69, (3, 20))
    full = model.head(model.hidden_states(x))
    a, past = model.decode(x[:, :12])
    b, past = model.decode(x[:, 12:15], past)
    c, _ = model.decode(x[:, 15:16], past)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full[:, :16], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("top_k", [1, 0])  # greedy, and sampling with the same seed
def test_generation_with_cache_equals_generation_without(top_k: int) -> None:
    model = _model(max_length=20)  # rows longer than max_length fall back to recomputing
    kw = {"top_k": top_k, "min_codons": 5, "max_codons": 30, "seed": 3}
    with_cache = generate(model, 3, use_cache=True, **kw)
    without = generate(model, 3, use_cache=False, **kw)
    assert with_cache["sequence"].tolist() == without["sequence"].tolist()
    np.testing.assert_allclose(
        with_cache["mean_log_likelihood"], without["mean_log_likelihood"], atol=1e-4
    )
