"""Corpus store: streaming medians, sharded build and resume, loader order and resume, SOMA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as ss
import torch
from typer.testing import CliRunner

from conftest import shared_file
from lifelm._core.errors import OutputError
from lifelm._core.runfolder import FolderLockedError, ManifestMismatchError
from lifelm.data.cells.counts import NotCountsError
from lifelm.data.cells.datasets import MaskedGeneCollator
from lifelm.data.cells.tokenizer import RankValueTokenizer, _segment_medians
from lifelm.data.store import build as build_mod
from lifelm.data.store.build import CorpusConfig, CorpusError, build_corpus
from lifelm.data.store.integrity import ShardDamagedError
from lifelm.data.store.medians import GeneHistograms, HistogramSpec
from lifelm.data.store.store import CorpusStore, StoreLoader, block_shuffle
from lifelm.io.h5ad import read_h5ad
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import ItemStream


def test_histogram_medians_are_within_one_percent_of_exact() -> None:
    rng = np.random.default_rng(0)
    n_cells, n_genes = 3000, 40
    counts = rng.negative_binomial(2, 2 / (2 + rng.lognormal(0, 1.5, n_genes)), (n_cells, n_genes))
    x = sp.csr_matrix(counts.astype(np.float64))
    totals = rng.integers(1000, 20000, n_cells).astype(
        np.float64
    )  # library sizes incl. other genes
    hist = GeneHistograms(n_genes)
    for a in range(0, n_cells, 700):  # in blocks, as the builder streams
        hist.add(x[a : a + 700], totals[a : a + 700])
    rows = np.repeat(np.arange(n_cells), np.diff(x.indptr))
    exact = _segment_medians(x.indices.astype(np.int64), x.data * 1e4 / totals[rows], n_genes)
    seen = hist.n_expressed() >= 50
    rel = np.abs(hist.medians()[seen] / exact[seen] - 1)
    assert seen.sum() > 20
    assert np.median(rel) < 0.01, np.median(rel)
    assert rel.max() < 0.03, rel.max()
    np.testing.assert_array_equal(hist.n_expressed(), (counts > 0).sum(0))
    assert HistogramSpec().n_bins == 450


@pytest.fixture(scope="module")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("src")
    paths = []
    for k in range(2):
        a = synthetic_cells(150, 80, n_types=3, seed=k)
        a.obs["donor"] = [f"d{k}{i % 2}" for i in range(a.n_obs)]
        a.write_h5ad(d / f"part{k}.h5ad", compression="gzip")
        paths.append(d / f"part{k}.h5ad")
    return paths


CFG = CorpusConfig(max_length=64, shard_cells=64, chunk_cells=40, min_genes=5)


def test_store_tokens_equal_the_tokenizer_and_keep_metadata(
    two_files: list[Path], tmp_path: Path
) -> None:
    adatas = [read_h5ad(p, backed=True) for p in two_files]
    tok = RankValueTokenizer.fit(adatas, max_length=64)
    build_corpus(two_files, tmp_path / "s", config=CFG, tokenizer=tok)
    store = CorpusStore(tmp_path / "s")
    expected = [tok.encode(a) for a in adatas]
    keep = [np.flatnonzero(e.n_genes >= 5) for e in expected]
    assert len(store) == sum(len(k) for k in keep)
    assert len(store.shards) == 6  # 150 rows → 3 shards of ≤ 64 per file
    flat = [(e, i) for e, k in zip(expected, keep, strict=True) for i in k]
    for g in [0, 1, 63, 64, 149 - 1, len(store) - 1]:
        e, i = flat[g]
        np.testing.assert_array_equal(store.cell(g).astype(np.int64), e[i].astype(np.int64))
    assert store.cell(0).dtype == np.uint16
    ct = store.metadata("cell_type")
    assert ct[0] == adatas[0].obs["cell_type"].iloc[keep[0][0]]
    assert set(store.metadata("donor")) == {"d00", "d01", "d10", "d11"}
    assert set(store.metadata("dataset")) == {"part0", "part1"}
    assert list(store.metadata("row")[:3]) == list(keep[0][:3])
    # the store is smaller than the gzip-compressed sources
    assert store.info["store_bytes"] <= 1.1 * store.info["source_bytes"]


def test_streaming_medians_build_matches_the_exact_vocabulary(
    two_files: list[Path], tmp_path: Path
) -> None:
    build_corpus(two_files, tmp_path / "s", config=CFG)
    tok = CorpusStore(tmp_path / "s").tokenizer()
    exact = RankValueTokenizer.fit([read_h5ad(p, backed=True) for p in two_files], max_length=64)
    np.testing.assert_array_equal(tok.genes, exact.genes)
    rel = np.abs(tok.medians / exact.medians - 1)
    assert np.median(rel) < 0.02, np.median(rel)


def test_killed_build_keeps_finished_shards_and_resumes(
    two_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = build_mod._write_shard
    calls = {"n": 0}

    def dying(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill in the middle of the shards pass
        return real(*args)

    monkeypatch.setattr(build_mod, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(two_files, tmp_path / "s", config=CFG)
    with pytest.raises(CorpusError, match="interrupted"):
        CorpusStore(tmp_path / "s")
    done = sorted((tmp_path / "s" / "shards").glob("s*_p*"))
    assert len(done) == 2
    stamps = {p.name: (p / "tokens.bin").stat().st_mtime_ns for p in done}
    monkeypatch.setattr(build_mod, "_write_shard", real)
    build_corpus(two_files, tmp_path / "s", config=CFG)
    store = CorpusStore(tmp_path / "s")
    assert len(store.shards) == 6
    for name, t in stamps.items():  # finished shards were not rewritten
        assert (tmp_path / "s" / "shards" / name / "tokens.bin").stat().st_mtime_ns == t
    build_corpus(two_files, tmp_path / "t", config=CFG)
    fresh = CorpusStore(tmp_path / "t")
    assert len(fresh) == len(store)
    np.testing.assert_array_equal(fresh.lengths(), store.lengths())
    with pytest.raises(ManifestMismatchError, match="setting sources"):
        build_corpus(two_files[:1], tmp_path / "s", config=CFG)


def test_block_shuffle_is_a_seeded_permutation_with_locality() -> None:
    p = block_shuffle(1000, 3, 0, block_size=10, window_blocks=2)
    assert sorted(p) == list(range(1000))
    np.testing.assert_array_equal(p, block_shuffle(1000, 3, 0, block_size=10, window_blocks=2))
    assert not np.array_equal(p, block_shuffle(1000, 3, 1, block_size=10, window_blocks=2))
    # a window of 20 positions draws from at most 2 blocks of 10 cells
    assert all(len(set(p[a : a + 20] // 10)) <= 2 for a in range(0, 1000, 20))


def test_loader_partitions_ranks_and_resumes_mid_epoch(
    two_files: list[Path], tmp_path: Path
) -> None:
    build_corpus(two_files, tmp_path / "s", config=CFG)
    store = CorpusStore(tmp_path / "s", block_size=8, window_blocks=2)
    collate = MaskedGeneCollator(store.tokenizer().vocab_size, 64)
    loaders = [
        StoreLoader(store, batch_size=8, collate_fn=collate, seed=1, rank=r, world_size=2)
        for r in range(2)
    ]
    seen = [np.concatenate([ld.rank_indices(0, s) for s in range(len(ld))]) for ld in loaders]
    assert not set(seen[0]) & set(seen[1])  # disjoint ranks
    assert len(seen[0]) + len(seen[1]) == len(loaders[0]) * 16
    straight = list(loaders[0])
    resumed = StoreLoader(store, batch_size=8, collate_fn=collate, seed=1, rank=0, world_size=2)
    it = iter(resumed)
    next(it), next(it), next(it)
    state = resumed.state_dict()
    again = StoreLoader(store, batch_size=8, collate_fn=collate, seed=1, rank=0, world_size=2)
    again.load_state_dict(state)
    rest = list(again)
    assert len(rest) == len(straight) - 3
    for a, b in zip(rest, straight[3:], strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert again.state_dict() == {"epoch": 1, "step": 0, "seed": 1}
    # the training loop reads the store's block-shuffled order
    s = ItemStream(len(store), 1, store.epoch_order)
    assert s.indices(0, 16) == list(store.epoch_order(1, 0)[:16])


def test_cli_build_and_info(two_files: list[Path], tmp_path: Path) -> None:
    import typer

    from lifelm.cli.corpus import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer needs two commands to keep the group name
    args = [
        "corpus",
        "build",
        *map(str, two_files),
        "-o",
        str(tmp_path / "s"),
        "--max-length",
        "64",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["n_cells"] > 250
    assert out["disk_ratio"] < 1.1
    res = CliRunner().invoke(app, ["corpus", "info", str(tmp_path / "s")])
    assert json.loads(res.output)["n_shards"] == 2


@pytest.mark.data
def test_streaming_medians_on_real_cells_rank_like_the_exact_ones(tmp_path: Path) -> None:
    path = shared_file("singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad")
    build_corpus([path], tmp_path / "s", config=CorpusConfig(max_length=2048))
    store = CorpusStore(tmp_path / "s")
    tok = store.tokenizer()
    exact = RankValueTokenizer.fit(read_h5ad(path, backed=True))
    np.testing.assert_array_equal(tok.genes, exact.genes)
    rel = np.abs(tok.medians / exact.medians - 1)
    assert np.median(rel) < 0.01, np.median(rel)
    assert np.quantile(rel, 0.99) < 0.05, np.quantile(rel, 0.99)
    cells = exact.encode(read_h5ad(path, backed=True))
    rho = []
    for i in range(0, len(cells), 100):
        x, y = cells[i], store.cell(i)
        pos = {t: k for k, t in enumerate(y)}
        common = [t for t in x if t in pos]
        rho.append(ss.spearmanr(np.arange(len(common)), [pos[t] for t in common]).statistic)
    assert np.median(rho) > 0.99, np.median(rho)
    assert store.info["store_bytes"] <= 1.1 * store.info["source_bytes"]


@pytest.mark.data
def test_soma_experiment_builds_the_same_store_as_its_h5ad(tmp_path: Path) -> None:
    tiledbsoma_io = pytest.importorskip("tiledbsoma.io", reason="tiledbsoma not installed")
    path = shared_file("singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad")
    a = read_h5ad(path)[:300].copy()
    a.write_h5ad(tmp_path / "sub.h5ad")
    tiledbsoma_io.from_anndata(str(tmp_path / "soma"), a, measurement_name="RNA")
    cfg = CorpusConfig(max_length=256)
    build_corpus([tmp_path / "sub.h5ad"], tmp_path / "from_h5ad", config=cfg)
    build_corpus([str(tmp_path / "soma")], tmp_path / "from_soma", config=cfg)
    x, y = CorpusStore(tmp_path / "from_h5ad"), CorpusStore(tmp_path / "from_soma")
    assert len(x) == len(y) > 250
    np.testing.assert_array_equal(x.tokenizer().medians, y.tokenizer().medians)
    for i in range(0, len(x), 7):
        np.testing.assert_array_equal(x.cell(i), y.cell(i))
    np.testing.assert_array_equal(x.metadata("cell_type"), y.metadata("cell_type"))


def test_codon_store_packs_genes_resumably(tmp_path: Path) -> None:
    from lifelm.data.genomes.codons import PAD_ID
    from lifelm.data.genomes.datasets import cds_documents, read_cds_fasta
    from lifelm.data.store.codons import CodonStore, build_codon_store

    rng = np.random.default_rng(0)
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
    fasta = tmp_path / "genes.fasta"
    fasta.write_text(
        "".join(
            f">g{k} gene\n{''.join(rng.choice(codons, rng.integers(40, 300)))}\n" for k in range(60)
        )
    )
    build_codon_store([fasta], tmp_path / "c", row_len=128, shard_docs=25, min_codons=30)
    store = CodonStore(tmp_path / "c")
    assert len(store.info["shards"]) == 3
    docs, _ = cds_documents(read_cds_fasta(fasta))
    rows = [store[i] for i in range(len(store))]
    assert sum(int((r["input_ids"] != PAD_ID).sum()) for r in rows) == sum(len(d) for d in docs)
    r = rows[0]
    assert r["input_ids"].shape == (128,)
    first = r["doc_ids"] >= 0
    # positions restart at each document and count up inside it
    for d in np.unique(r["doc_ids"][first]):
        np.testing.assert_array_equal(
            r["position_ids"][r["doc_ids"] == d], np.arange((r["doc_ids"] == d).sum())
        )
    assert sorted(store.epoch_order(0, 0)) == list(range(len(store)))
    # a kill loses only the unfinished shard: rebuild after removing one and the marker
    import shutil

    shutil.rmtree(tmp_path / "c" / "shards" / "f0000_p00001")
    (tmp_path / "c" / "codons.json").unlink()
    kept = (tmp_path / "c" / "shards" / "f0000_p00000" / "input_ids.bin").stat().st_mtime_ns
    build_codon_store([fasta], tmp_path / "c", row_len=128, shard_docs=25, min_codons=30)
    again = CodonStore(tmp_path / "c")
    assert (tmp_path / "c" / "shards" / "f0000_p00000" / "input_ids.bin").stat().st_mtime_ns == kept
    for i in range(len(store)):
        np.testing.assert_array_equal(again[i]["input_ids"], rows[i]["input_ids"])


def test_split_store_holds_out_disjoint_cells(two_files: list[Path], tmp_path: Path) -> None:
    from lifelm.data.store.store import split_store

    build_corpus(two_files, tmp_path / "s", config=CFG)
    store = CorpusStore(tmp_path / "s", block_size=8)
    train, held = split_store(store, 0.1, seed=0)
    assert held is not None
    assert len(train) + len(held) == len(store)
    assert not set(train.index) & set(held.index)
    assert sorted(train.epoch_order(0, 1)) == list(range(len(train)))
    np.testing.assert_array_equal(train[0][0], store[int(train.index[0])][0])


def test_pretrain_reads_a_corpus_store(tmp_path: Path) -> None:
    """`lifelm cells pretrain STORE` trains from the pre-tokenized store with the store's tokenizer."""
    from lifelm.data.store.build import build_corpus
    from lifelm.tasks.cells.model_io import load_cell_model
    from lifelm.tasks.cells.pretrain import pretrain
    from lifelm.testing.synthetic import synthetic_cells
    from lifelm.training.loop import TrainConfig

    h5 = tmp_path / "cells.h5ad"
    synthetic_cells(120, 60, n_types=3, seed=3).write_h5ad(h5)
    store = build_corpus([str(h5)], tmp_path / "store")
    cfg = TrainConfig(max_steps=3, batch_size=8, warmup_steps=1, checkpoint_every=0, progress=False)
    result = pretrain(store, tmp_path / "run", preset="test", train_config=cfg)
    model = load_cell_model(result.model_dir)
    from lifelm.data.store.store import CorpusStore

    assert model.tokenizer.hash() == CorpusStore(store).tokenizer().hash()
    assert model.config["data"]["store"] == str(store)


def test_codon_pretraining_reads_a_codon_store(tmp_path: Path) -> None:
    """`lifelm genomes pretrain STORE` trains the codon model from the packed rows on disk."""
    from lifelm.data.store.codons import build_codon_store
    from lifelm.tasks.genomes.train import pretrain
    from lifelm.training.loop import TrainConfig

    rng = np.random.default_rng(1)
    codons = [
        a + b + c
        for a in "ACGT"
        for b in "ACGT"
        for c in "ACGT"
        if a + b + c not in ("TAA", "TAG", "TGA")
    ]
    fasta = tmp_path / "cds.fasta"
    fasta.write_text(
        "".join(
            f">g{k} gene\nATG{''.join(rng.choice(codons, rng.integers(40, 120)))}TAA\n"
            for k in range(40)
        )
    )
    store = build_codon_store([fasta], tmp_path / "store", row_len=64, shard_docs=20, min_codons=30)
    cfg = TrainConfig(max_steps=2, batch_size=4, warmup_steps=1, checkpoint_every=0, progress=False)
    result = pretrain([store], tmp_path / "run", preset="test", train_config=cfg)
    side = (result.model_dir / "config.json").read_text()
    assert str(store) in side
    assert result.step == 2
    assert np.isfinite(result.final_loss)


# ------------------------------------------------------------ protection of the store folder
def _flip_byte(path: Path, at: int = 0) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


def test_damaged_shard_is_refused_on_load_and_rebuilt_on_resume(
    two_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "s"
    build_corpus(two_files, out, config=CFG)
    good = CorpusStore(out)
    want = [np.asarray(good.cell(i)).copy() for i in range(len(good))]
    shard = out / "shards" / "s0001_p00000"
    assert all("sha256" in f for f in good.shards[3]["files"].values())
    # changed bytes (same size): the SHA-256 check when the shard is first read names it
    _flip_byte(shard / "tokens.bin", 10)
    store = CorpusStore(out)
    assert np.array_equal(store.cell(0), want[0])  # other shards read fine
    with pytest.raises(ShardDamagedError, match=r"s0001_p00000.*tokens\.bin.*SHA-256.*build"):
        store.cell(int(store.starts[3]))
    with pytest.raises(ShardDamagedError, match="s0001_p00000"):
        CorpusStore(out).check()
    # a truncated file is caught on open (sizes of every shard file)
    meta = shard / "meta.npz"
    meta.write_bytes(meta.read_bytes()[:20])
    with pytest.raises(ShardDamagedError, match=r"s0001_p00000.*meta\.npz has 20 bytes"):
        CorpusStore(out)
    # the same build command again detects the damage and rebuilds only that shard
    kept = (out / "shards" / "s0000_p00000" / "tokens.bin").stat().st_mtime_ns
    build_corpus(two_files, out, config=CFG)
    again = CorpusStore(out)
    again.check()
    assert (out / "shards" / "s0000_p00000" / "tokens.bin").stat().st_mtime_ns == kept
    for i in range(len(again)):
        np.testing.assert_array_equal(again.cell(i), want[i])


def test_resume_with_other_settings_or_changed_source_is_refused(
    two_files: list[Path], tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "s"
    build_corpus(two_files, out, config=CFG)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"] == "cells.corpus"
    assert len(manifest["inputs"]) == 2
    with pytest.raises(ManifestMismatchError, match=r"setting min_genes: 5 → 7"):
        build_corpus(two_files, out, config=CorpusConfig(**{**CFG.__dict__, "min_genes": 7}))
    # the same file name with other content: the input hash differs
    copy = tmp_path / "c"
    copy.mkdir()
    srcs = [copy / p.name for p in two_files]
    for a, b in zip(two_files, srcs, strict=True):
        shutil.copy(a, b)
    build_corpus(srcs, tmp_path / "s2", config=CFG)
    synthetic_cells(150, 80, n_types=3, seed=9).write_h5ad(srcs[1])
    with pytest.raises(ManifestMismatchError, match=r"input source 1: .*part1\.h5ad"):
        build_corpus(srcs, tmp_path / "s2", config=CFG)
    # workers only change the speed, so a resume with more workers is fine
    build_corpus(two_files, out, config=CorpusConfig(**{**CFG.__dict__, "workers": 1}))


def test_second_writer_and_bad_output_folders_are_refused(
    two_files: list[Path], tmp_path: Path
) -> None:
    from lifelm._core.runfolder import lock_folder

    out = tmp_path / "s"
    with lock_folder(out), pytest.raises(FolderLockedError, match="another LifeLM process"):
        build_corpus(two_files, out, config=CFG)
    junk = tmp_path / "junk"
    junk.write_text("x")
    with pytest.raises(OutputError, match="junk"):
        build_corpus(two_files, junk, config=CFG)
    with pytest.raises(OutputError, match="is a file"):
        build_corpus(two_files, junk / "store", config=CFG)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty and not a corpus store"):
        build_corpus(two_files, busy, config=CFG)
    assert sorted(p.name for p in busy.iterdir() if not p.name.startswith(".")) == ["notes.txt"]


def test_damaged_codon_shard_is_refused_on_load_and_rebuilt(tmp_path: Path) -> None:
    from lifelm.data.store.codons import CodonStore, build_codon_store

    rng = np.random.default_rng(0)
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
    fasta = tmp_path / "genes.fasta"
    fasta.write_text(
        "".join(
            f">g{k} gene\n{''.join(rng.choice(codons, rng.integers(40, 300)))}\n" for k in range(60)
        )
    )
    out = tmp_path / "c"
    build_codon_store([fasta], out, row_len=128, shard_docs=25, min_codons=30)
    want = [CodonStore(out)[i]["input_ids"] for i in range(len(CodonStore(out)))]
    _flip_byte(out / "shards" / "f0000_p00001" / "input_ids.bin", 5)
    store = CodonStore(out)
    with pytest.raises(ShardDamagedError, match=r"f0000_p00001.*input_ids\.bin.*SHA-256"):
        [store[i] for i in range(len(store))]
    (out / "shards" / "f0000_p00000" / "doc_ids.bin").write_bytes(b"")
    with pytest.raises(ShardDamagedError, match=r"f0000_p00000.*doc_ids\.bin has 0 bytes"):
        CodonStore(out)
    build_codon_store([fasta], out, row_len=128, shard_docs=25, min_codons=30)
    again = CodonStore(out)
    for i in range(len(again)):
        np.testing.assert_array_equal(again[i]["input_ids"], want[i])


def test_empty_sources_and_an_empty_store_are_refused(
    two_files: list[Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.h5ad"
    read_h5ad(two_files[0])[:0].copy().write_h5ad(empty)
    with pytest.raises((CorpusError, NotCountsError), match=r"empty\.h5ad: 0 cells × 80 genes"):
        build_corpus([two_files[0], empty], tmp_path / "a", config=CFG)
    strict = CorpusConfig(**{**CFG.__dict__, "min_genes": 10_000})
    with pytest.raises(CorpusError, match="every cell was dropped"):
        build_corpus(two_files, tmp_path / "b", config=strict)
    assert not (tmp_path / "b" / "corpus.json").exists()
