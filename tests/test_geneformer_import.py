"""Geneformer import: parity with Hugging Face ``BertForMaskedLM`` and Geneformer's tokenization rule.

Each test writes a tiny random ``BertForMaskedLM`` with ``save_pretrained`` and Geneformer-layout
dictionary pickles (V1: no special tokens; V2: ``<cls>``/``<eos>``), then compares LifeLM's
hidden states, tokens and in-silico deletion shifts with ones computed directly from the HF model.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelm.testing.synthetic import synthetic_cells

transformers = pytest.importorskip("transformers")

N_LAYERS = 3


def write_geneformer(
    folder: Path,
    adata,
    *,
    version: str,
    max_position: int,
    seed: int = 0,
    hidden: int = 16,
    scale: float = 0.3,
) -> None:
    """A Geneformer-layout folder: HF weights + token / median / mapping pickles."""
    rng = np.random.default_rng(seed)
    genes = list(adata.var_names)
    extra = ["ENSG99999999901", "ENSG99999999902"]  # in the dictionary, not in the data
    order = rng.permutation(genes + extra)
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == "V2" else [])
    token_dict = {t: i for i, t in enumerate(specials)}
    token_dict.update({g: len(specials) + i for i, g in enumerate(order)})
    medians = {g: float(rng.uniform(0.05, 5.0)) for g in order}
    del medians[genes[3]]  # a gene without a median is not used by Geneformer's tokenizer
    mapping = {g: g for g in order}
    suffix = "_gc30M" if version == "V1" else "_gc104M"
    for stem, obj in (
        ("token_dictionary", token_dict),
        ("gene_median_dictionary", medians),
        ("ensembl_mapping_dict", mapping),
    ):
        (folder / f"{stem}{suffix}.pkl").write_bytes(pickle.dumps(obj))
    cfg = transformers.BertConfig(
        vocab_size=len(token_dict),
        hidden_size=hidden,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_position,
        hidden_act="relu" if version == "V1" else "gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(cfg)
    with torch.no_grad():  # weights far from init, LayerNorms included, so every path matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * scale)
    hf.save_pretrained(folder)


def gf_tokens(adata, folder: Path, *, version: str, max_position: int) -> list[list[int]]:
    """Geneformer's rule, written from its description: count / n_counts * 1e4 / median, descending."""
    suffix = "_gc30M" if version == "V1" else "_gc104M"
    tok = pickle.loads((folder / f"token_dictionary{suffix}.pkl").read_bytes())
    med = pickle.loads((folder / f"gene_median_dictionary{suffix}.pkl").read_bytes())
    cols = [j for j, g in enumerate(adata.var_names) if g in med and g in tok]
    X = np.asarray(adata.X.todense(), dtype=np.float64)
    n_counts = X.sum(1)
    norm = np.array([med[adata.var_names[j]] for j in cols])
    ids = np.array([tok[adata.var_names[j]] for j in cols])
    out = []
    for i in range(adata.n_obs):
        v = X[i, cols] / n_counts[i] * 10_000 / norm
        nz = np.flatnonzero(v)
        ranked = ids[nz][np.argsort(-v[nz], kind="stable")].tolist()
        if version == "V1":
            out.append(ranked[:max_position])
        else:
            out.append([tok["<cls>"], *ranked[: max_position - 2], tok["<eos>"]])
    return out


@functools.cache
def _hf(folder: Path):
    return transformers.BertForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()


def hf_hidden(folder: Path, seqs: list[list[int]], layer: int) -> list[np.ndarray]:
    """hidden_states[layer] per cell from the HF model, padded batch with an attention mask."""
    hf = _hf(folder)
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        hs = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    return [hs[i, : len(s)].numpy() for i, s in enumerate(seqs)]


@pytest.fixture(scope="module")
def cells():
    ad = synthetic_cells(n_cells=12, n_genes=60, n_types=3, mean_library=400.0, seed=3)
    return ad


@pytest.fixture(scope="module", params=[("V1", 32), ("V2", 24)], ids=["V1", "V2"])
def gf(request, tmp_path_factory, cells):
    version, max_position = request.param
    folder = tmp_path_factory.mktemp(f"gf_{version}")
    write_geneformer(folder, cells, version=version, max_position=max_position)
    return folder, version, max_position


def _lifelm_as_gf(cm, adata) -> list[list[int]]:
    """LifeLM's tokens in Geneformer ids, with the special tokens the model adds."""
    tc = cm.tokenizer.encode(adata)
    tmap = cm.trunk.token_map.numpy()
    cfg = cm.trunk.config
    out = []
    for i in range(len(tc)):
        genes = tmap[tc[i]].tolist()
        out.append(genes if cfg.special == "none" else [cfg.bert_cls_id, *genes, cfg.bert_eos_id])
    return out


def test_tokens_follow_geneformer_rule(gf, cells):
    from lifelm.tasks.cells.model_io import load_cell_model

    folder, version, max_position = gf
    cm = load_cell_model(folder)
    ref = gf_tokens(cells, folder, version=version, max_position=max_position)
    ours = _lifelm_as_gf(cm, cells)
    assert ours == ref
    n_genes = cm.tokenizer.encode(cells).n_genes
    assert (n_genes > max_position).any(), "the test data must exercise truncation"
    assert len(cm.tokenizer.genes) == 61  # 62 dictionary genes, one without a median


@pytest.mark.parametrize("layer", [0, N_LAYERS - 1, N_LAYERS])
def test_hidden_states_equal_hf(gf, cells, layer):
    from lifelm.data.cells.datasets import pad_cells
    from lifelm.tasks.cells.import_model import geneformer_cell_model

    folder, version, _ = gf
    cm = geneformer_cell_model(folder, output_layer=layer)
    tc = cm.tokenizer.encode(cells)
    ids = pad_cells([tc[i] for i in range(len(tc))], cm.trunk.config.max_length)
    with torch.no_grad():
        hidden = cm.trunk.encode(ids).numpy()
    ref = hf_hidden(folder, _lifelm_as_gf(cm, cells), layer)
    for i in range(len(tc)):
        n = len(tc[i])
        if version == "V1":
            np.testing.assert_allclose(hidden[i, 1 : 1 + n], ref[i], atol=1e-5, rtol=0)
        else:  # <cls> + genes; <eos> is internal and not returned
            np.testing.assert_allclose(hidden[i, : 1 + n], ref[i][: 1 + n], atol=1e-5, rtol=0)
        assert not hidden[i, 1 + n :].any()


def test_import_roundtrip_and_embedding_rule(gf, cells, tmp_path):
    from lifelm.tasks.cells.embed import embed
    from lifelm.tasks.cells.import_model import import_geneformer
    from lifelm.tasks.cells.model_io import load_cell_model

    folder, version, _ = gf
    out = import_geneformer(folder, tmp_path / "lifelm_model")
    direct, converted = load_cell_model(folder), load_cell_model(out)
    assert converted.tokenizer.hash() == direct.tokenizer.hash()
    a = embed(cells, direct, device="cpu", copy=True).obsm["X_lifelm"]
    b = embed(cells, converted, device="cpu", copy=True).obsm["X_lifelm"]
    np.testing.assert_array_equal(a, b)
    res = embed(cells, converted, device="cpu", copy=True)
    rule = res.uns["lifelm"]["embed"]["embedding"]
    assert f"Geneformer {version}" in rule
    assert "second-to-last" in rule
    # the cell embedding is Geneformer's: mean over genes of hidden_states[n_layers - 1]
    ref = hf_hidden(folder, _lifelm_as_gf(direct, cells), N_LAYERS - 1)
    lo = 0 if version == "V1" else 1
    want = np.stack([h[lo : len(h) - lo].mean(0) for h in ref])
    np.testing.assert_allclose(a, want, atol=1e-5, rtol=0)


def test_cls_pooling_v2_only(gf, cells):
    from lifelm.tasks.cells.embed import embed
    from lifelm.tasks.cells.import_model import geneformer_cell_model

    folder, version, _ = gf
    if version == "V1":
        with pytest.raises(ValueError, match="cls"):
            geneformer_cell_model(folder, pooling="cls")
        return
    cm = geneformer_cell_model(folder, pooling="cls")
    emb = embed(cells, cm, device="cpu", copy=True).obsm["X_lifelm"]
    ref = hf_hidden(folder, _lifelm_as_gf(cm, cells), N_LAYERS - 1)
    np.testing.assert_allclose(emb, np.stack([h[0] for h in ref]), atol=1e-5, rtol=0)


def test_deletion_shift_equals_hf(gf, cells):
    from lifelm.tasks.cells.model_io import load_cell_model
    from lifelm.tasks.cells.perturb import ScanConfig, scan_cells

    folder, version, _ = gf
    cm = load_cell_model(folder)
    tc = cm.tokenizer.encode(cells).subset(np.arange(2))
    res = scan_cells(cm, tc, config=ScanConfig(gene_shifts=True), progress=False)
    seqs = _lifelm_as_gf(cm, cells)[:2]
    lo = 0 if version == "V1" else 1

    def genes_hidden(seq):  # {Geneformer token: hidden state} over the genes of a sequence
        h = hf_hidden(folder, [seq], N_LAYERS - 1)[0]
        return dict(zip(seq[lo : len(seq) - lo], h[lo : len(h) - lo], strict=True))

    def cosd(a, b):
        return 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    tmap = cm.trunk.token_map.numpy()
    checked = 0
    for r in range(0, len(res.shift), 7):  # a sample of rows: each needs its own HF forward
        c, gene = int(res.cell[r]), int(tmap[res.target_tokens()[r]])
        orig = genes_hidden(seqs[c])
        pert = genes_hidden([t for t in seqs[c] if t != gene])
        mean_o, mean_p = np.mean(list(orig.values()), 0), np.mean(list(pert.values()), 0)
        assert res.shift[r] == pytest.approx(cosd(mean_o, mean_p), abs=1e-5)
        # every other gene's contextual shift (stored as float16)
        sl = slice(res.gs_offsets[r], res.gs_offsets[r + 1])
        affected = tmap[res.affected[sl]]
        assert sorted(affected.tolist()) == sorted(pert)
        want = [cosd(orig[g], pert[g]) for g in affected]
        np.testing.assert_allclose(
            res.gene_shift[sl].astype(np.float64), want, rtol=2e-3, atol=1e-4
        )
        checked += 1
    assert checked >= 4


def test_errors_name_the_fix(tmp_path, cells):
    from lifelm._core.errors import LifeLMError
    from lifelm.tasks.cells.model_io import load_cell_model

    write_geneformer(tmp_path, cells, version="V1", max_position=32)
    (tmp_path / "token_dictionary_gc30M.pkl").unlink()
    with pytest.raises(LifeLMError, match="token_dictionary"):
        load_cell_model(tmp_path)


def test_cli_import_then_embed_with_cpu_options(tmp_path, cells, capsys):
    import anndata as ad

    from lifelm.cli import main

    gf_dir = tmp_path / "gf"
    gf_dir.mkdir()
    write_geneformer(gf_dir, cells, version="V2", max_position=24)
    h5 = tmp_path / "cells.h5ad"
    cells.write_h5ad(h5)

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    assert run("cells", "import-model", "geneformer", str(gf_dir), "-o", str(tmp_path / "m")) == 0
    assert "Geneformer V2" in capsys.readouterr().out
    out = tmp_path / "emb.h5ad"
    assert (
        run(
            "cells",
            "embed",
            str(h5),
            "-m",
            str(tmp_path / "m"),
            "-o",
            str(out),
            "--quantize",
            "int8",
        )
        == 0
    )
    res = ad.read_h5ad(out)
    assert res.uns["lifelm"]["embed"]["techniques"]["quantize"] == "int8"
    assert np.isfinite(res.obsm["X_lifelm"]).all()
    # a user error is one line, exit 2
    code = run(
        "cells", "embed", str(h5), "-m", str(tmp_path / "m"), "-o", str(out), "--quantize", "int4"
    )
    assert code == 2
    assert "quantize" in capsys.readouterr().err


def test_screen_interface_on_imported_model(gf, cells):
    """The first-order screen's hooks (inputs_embeds, gate, position_shift) in LifeLM's layout."""
    from lifelm.data.cells.datasets import pad_cells
    from lifelm.tasks.cells.model_io import load_cell_model
    from lifelm.tasks.cells.perturb import fast_scan, scan_cells

    folder = gf[0]
    cm = load_cell_model(folder)
    trunk = cm.trunk
    tc = cm.tokenizer.encode(cells)
    ids = pad_cells([tc[i] for i in range(3)], trunk.config.max_length)
    with torch.no_grad():
        plain = trunk.embed(ids)
        x0 = trunk.input_embedding(ids)
        gated = trunk.embed(ids, inputs_embeds=x0, gate=torch.ones(ids.shape))
        np.testing.assert_allclose(gated.numpy(), plain.numpy(), atol=1e-6)
        # moving the gene at LifeLM position 3 up to 2 changes its input by position_shift(2, 3)
        moved = ids.clone()
        moved[:, 2], moved[:, 3] = ids[:, 3], ids[:, 2]
        diff = trunk.input_embedding(moved)[:, 2] - x0[:, 3]
        np.testing.assert_allclose(
            diff.numpy(), trunk.position_shift(2, 3).expand(3, -1).numpy(), atol=1e-6
        )
    table = trunk.gene_embedding.weight  # LifeLM ids -> Geneformer rows (used by `respond`)
    np.testing.assert_array_equal(
        table[5].numpy(), trunk.word_embeddings.weight[trunk.token_map[5]].detach().numpy()
    )
    one = tc.subset(np.array([0]))
    res, est = fast_scan(cm, one, top=5, progress=False)
    assert np.isfinite(est[0]).all()
    assert len(est[0]) == len(one[0])
    exact = scan_cells(cm, one, progress=False)
    by_gene = dict(zip(exact.target_tokens().tolist(), exact.shift.tolist(), strict=True))
    for tok_, shift in zip(res.target_tokens().tolist(), res.shift.tolist(), strict=True):
        assert shift == pytest.approx(by_gene[tok_], abs=1e-6)


def test_finetune_annotator_on_imported_model(tmp_path, cells):
    """annotate --mode finetune trains a head over the imported encoder and reloads it."""
    from lifelm.tasks.cells.annotate import train_annotator
    from lifelm.tasks.cells.import_model import import_geneformer
    from lifelm.training.loop import TrainConfig

    gf_dir = tmp_path / "gf"
    gf_dir.mkdir()
    write_geneformer(gf_dir, cells, version="V1", max_position=32)
    folder = import_geneformer(gf_dir, tmp_path / "m")
    cfg = TrainConfig(
        max_steps=40, batch_size=4, lr=3e-3, warmup_steps=0, checkpoint_every=0, log_every=1
    )
    clf = train_annotator(
        cells,
        folder,
        label_key="cell_type",
        out_dir=tmp_path / "run",
        train_config=cfg,
        device="cpu",
    )
    assert clf.is_classifier
    assert type(clf.trunk).__name__ == "BertEncoder"
    assert clf.classes == sorted(cells.obs["cell_type"].astype(str).unique())


def test_dictionary_folder_with_both_versions(tmp_path, cells):
    """Geneformer's package keeps gc30M and gc104M pickles side by side: the size picks the right one."""
    import shutil

    from lifelm._core.errors import LifeLMError
    from lifelm.tasks.cells.model_io import load_cell_model

    v1, v2, dicts = tmp_path / "v1", tmp_path / "v2", tmp_path / "dicts"
    for d in (v1, v2, dicts):
        d.mkdir()
    write_geneformer(v1, cells, version="V1", max_position=32)
    write_geneformer(v2, cells, version="V2", max_position=24)
    for p in [*v1.glob("*.pkl"), *v2.glob("*.pkl")]:
        shutil.copy(p, dicts / p.name)
    m1 = load_cell_model(v1, dictionaries=dicts)
    m2 = load_cell_model(v2, dictionaries=dicts)
    assert m1.config["data"]["geneformer_version"] == "V1"
    assert m1.config["data"]["files"]["gene_medians"].endswith("gene_median_dictionary_gc30M.pkl")
    assert m2.config["data"]["geneformer_version"] == "V2"
    assert m2.config["data"]["files"]["token_dictionary"].endswith("token_dictionary_gc104M.pkl")
    # two token dictionaries of the model's size: ambiguous, refused with both names
    shutil.copy(dicts / "token_dictionary_gc30M.pkl", dicts / "token_dictionary_copy.pkl")
    with pytest.raises(LifeLMError, match="exactly one token dictionary"):
        load_cell_model(v1, dictionaries=dicts)
