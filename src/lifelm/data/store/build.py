"""Build a corpus store: many sources → streaming medians → sharded, pre-tokenized token arrays.

Two passes over the sources, each in row blocks (memory does not grow with the corpus):

1. **medians** (skipped when a tokenizer is given): one task per source fills per-gene
   log-histograms (:mod:`lifelm.data.store.medians`) and saves them to ``stats/``; the merged
   histograms give the vocabulary and the gene medians, written to ``tokenizer.json``.
2. **shards**: one task per ``shard_cells`` rows of a source rank-value encodes them
   (:func:`~lifelm.data.cells.tokenizer.rank_block`) into ``shards/<name>/``: ``tokens.bin``
   (uint16 when the vocabulary fits, else int32), ``offsets.npy``, ``meta.npz`` (per-cell
   metadata codes and the source row) and ``shard.json``.

Every task writes into a hidden temporary folder and renames it when done, so a kill loses at
most the tasks in flight: ``build_corpus`` run again on the same folder keeps finished stats and
shards and does the rest. ``corpus.json`` is written last and marks a finished store. Tasks run in
``workers`` processes (parallel over sources and shards) with a progress bar.

Protection: the store folder is locked while it is built (a second build of it is refused);
``manifest.json`` records the sources' content hashes and the settings, so a resume with other
sources or settings is refused naming the difference; every shard records the size and SHA-256
of its files, checked before a resumed build keeps a shard (a damaged one is rebuilt) and by
:class:`~lifelm.data.store.store.CorpusStore` on load.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifelm._core.errors import LifeLMError
from lifelm._core.progress import make_progress
from lifelm._core.runfolder import (
    MANIFEST_NAME,
    check_output_path,
    ensure_manifest,
    lock_folder,
)
from lifelm._core.runtime import get_logger
from lifelm.data.cells.genes import Species
from lifelm.data.cells.tokenizer import (
    RankValueTokenizer,
    _check_values,
    _checked_mapping,
    rank_block,
    to_vocab_columns,
)
from lifelm.data.store.integrity import HashingWriter, shard_checksums, shard_problems
from lifelm.data.store.medians import GeneHistograms, HistogramSpec, histogram_medians
from lifelm.data.store.sources import METADATA_FIELDS, open_source

log = get_logger("lifelm.store")

STORE_VERSION = 2  # 2: SHA-256 per shard file, manifest.json, lock
CORPUS_FILE = "corpus.json"  # written last: its presence marks a finished store
BUILD_FILE = "build.json"  # sources and settings of a build in progress (checked on resume)
TOKENIZER_FILE = "tokenizer.json"


class CorpusError(LifeLMError, ValueError):
    """A corpus store cannot be built or opened as asked; the message says why and the fix."""


@dataclass(frozen=True)
class CorpusConfig:
    """How a corpus store is built."""

    max_length: int = 2048  # tokens per cell including [CLS]; longer cells are truncated
    shard_cells: int = 65_536  # source rows per shard (the unit of parallelism and resume)
    chunk_cells: int = 8192  # rows read and encoded at a time (bounds memory)
    min_genes: int = 10  # cells with fewer vocabulary genes are dropped (and counted)
    min_cells: int = 1  # a gene enters the vocabulary when expressed in this many cells
    target_sum: float = 10_000.0  # library size that counts are scaled to for the medians
    species: Literal["auto", "homo_sapiens", "mus_musculus"] = "auto"  # gene table to map to
    layer: str | None = None  # where the raw counts are (h5ad layer / SOMA X layer)
    bins_per_decade: int = 50  # median histogram resolution (4.7 % bins, ~1 % median error)
    workers: int = 1  # processes; tasks are sources (pass 1) and shards (pass 2)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------- pass 1: medians
def _source_stats(uri: str, cfg: CorpusConfig, out: str) -> dict[str, Any]:
    """Histogram one source's normalised values per gene; saved to ``out`` (npz)."""
    src = open_source(uri, layer=cfg.layer)
    mapping = _checked_mapping(src.shell, species=cfg.species, min_mapped=0.5)
    genes = mapping.unique_ids()
    local = {g: i for i, g in enumerate(genes)}
    col = np.array([local.get(g, -1) for g in mapping.ids], dtype=np.int64)
    hist = GeneHistograms(
        len(genes), HistogramSpec(bins_per_decade=cfg.bins_per_decade), cfg.target_sum
    )
    for start in range(0, src.n_obs, cfg.chunk_cells):
        block = src.rows(start, min(src.n_obs, start + cfg.chunk_cells))
        _check_values(block, uri, start)
        totals = np.asarray(block.sum(axis=1)).ravel()  # library size over all genes
        hist.add(to_vocab_columns(block, col, len(genes)), totals)
    tmp = f"{out}.tmp{os.getpid()}.npz"
    np.savez_compressed(tmp, genes=genes, counts=hist.counts, n_cells=hist.n_cells)
    os.replace(tmp, out)
    return {"n_cells": src.n_obs, "species": mapping.species, "gencode": mapping.table_version}


def fit_streaming_tokenizer(
    stats_files: list[Path], cfg: CorpusConfig, species: Species, gencode: str
) -> RankValueTokenizer:
    """Merge per-source histograms into the corpus vocabulary and medians (one source at a time)."""
    spec = HistogramSpec(bins_per_decade=cfg.bins_per_decade)
    genes = np.unique(
        np.concatenate([np.load(p, allow_pickle=False)["genes"] for p in stats_files])
    )
    counts = np.zeros((len(genes), spec.n_bins), dtype=np.int64)  # (V, bins)
    for p in stats_files:
        with np.load(p, allow_pickle=False) as z:
            counts[np.searchsorted(genes, z["genes"])] += z["counts"]
    n_expr = counts.sum(axis=1)
    medians = histogram_medians(counts, spec)
    keep = (n_expr >= cfg.min_cells) & (medians > 0)
    log.info(
        "vocabulary: %d genes (%d seen in < %d cells dropped)",
        keep.sum(),
        (~keep).sum(),
        cfg.min_cells,
    )
    return RankValueTokenizer(
        genes=genes[keep],
        medians=medians[keep],
        species=species,
        gencode_version=gencode,
        max_length=cfg.max_length,
        target_sum=cfg.target_sum,
    )


# ----------------------------------------------------------------- pass 2: shards
def _write_shard(
    uri: str,
    start: int,
    stop: int,
    tok_path: str,
    cfg: CorpusConfig,
    folder: str,
    source_index: int,
) -> dict[str, Any]:
    """Tokenize rows ``start:stop`` of one source into the shard ``folder`` (atomic rename)."""
    tok = RankValueTokenizer.from_dict(json.loads(Path(tok_path).read_text()))
    src = open_source(uri, layer=cfg.layer)
    mapping = tok.map_dataset(src.shell)
    col = np.array([tok.vocab.get(g, -1) for g in mapping.ids], dtype=np.int64)
    inv_median = 1.0 / tok.medians
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max else np.int32
    final = Path(folder)
    tmp = final.with_name(f".tmp_{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths, rows, dropped, truncated = [], [], 0, 0
    with HashingWriter(tmp / "tokens.bin") as f:
        for a in range(start, stop, cfg.chunk_cells):
            b = min(stop, a + cfg.chunk_cells)
            block = src.rows(a, b)
            _check_values(block, uri, a)
            tokens, offsets, n_genes = rank_block(block, col, inv_median, cfg.max_length - 1)
            keep = n_genes >= cfg.min_genes
            dropped += int((~keep).sum())
            truncated += int((n_genes[keep] > cfg.max_length - 1).sum())
            lens = np.diff(offsets)
            take = np.repeat(keep, lens)  # keep the tokens of kept cells only
            f.write(tokens[take].astype(dtype).tobytes())
            lengths.append(lens[keep])
            rows.append(np.flatnonzero(keep) + a)
    lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    meta = src.metadata(start, stop)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    codes, categories = {}, {}
    for field in METADATA_FIELDS:
        cats, code = np.unique(meta[field][row - start].astype(str), return_inverse=True)
        codes[field] = code.astype(np.int32)
        categories[field] = cats.tolist()
    # numpy's stubs let **kwds collide with the allow_pickle flag; the keys here are array names
    named: dict[str, Any] = {"row": row, **codes}
    np.savez(tmp / "meta.npz", **named)
    files = {"tokens.bin": f.record(), **shard_checksums(tmp, ("offsets.npy", "meta.npz"))}
    info = {
        "name": final.name,
        "source": source_index,
        "rows": [start, stop],
        "n_cells": len(lens),
        "n_tokens": int(lens.sum()),
        "dtype": np.dtype(dtype).name,
        "dropped_cells": dropped,
        "truncated_cells": truncated,
        "categories": categories,
        "files": files,
    }
    _atomic_json(tmp / "shard.json", info)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return info


# -------------------------------------------------------------------- the driver
def _run(
    tasks: list[tuple[Any, ...]], fn: Any, workers: int, description: str, sizes: list[int]
) -> list[Any]:
    """Run ``fn(*task)`` for every task, in ``workers`` processes, with a progress bar over cells."""
    results: list[Any] = [None] * len(tasks)
    with make_progress() as progress:
        bar = progress.add_task(description, total=sum(sizes), info="")
        if workers <= 1:
            for i, t in enumerate(tasks):
                results[i] = fn(*t)
                progress.advance(bar, sizes[i])
        else:
            ctx = get_context("spawn")  # no forked h5py/TileDB handles
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(fn, *t): i for i, t in enumerate(tasks)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    progress.advance(bar, sizes[i])
    return results


def build_corpus(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    config: CorpusConfig | None = None,
    tokenizer: RankValueTokenizer | None = None,
) -> Path:
    """Build (or finish building) a corpus store from ``.h5ad`` files and SOMA experiments.

    Parameters
    ----------
    sources
        ``.h5ad`` paths (read backed) and TileDB-SOMA experiment URIs.
    out
        Store folder. If it holds an unfinished build of the same sources and settings, finished
        median stats and shards are kept and only the rest is done.
    config
        Build settings (:class:`CorpusConfig`).
    tokenizer
        Use this tokenizer's vocabulary and medians (e.g. a pretrained model's) and skip the
        medians pass.

    Returns
    -------
    Path
        The store folder; open it with :class:`~lifelm.data.store.store.CorpusStore`.
    """
    cfg = config or CorpusConfig()
    out = Path(out)
    uris = [str(s) for s in sources]
    if not uris:
        raise CorpusError("no sources given: pass .h5ad files or SOMA experiment URIs")
    source_bytes = sum(_size(Path(u)) for u in uris)
    # a store takes about 2 bytes per kept non-zero count: at least a quarter of the sources
    check_output_path(out, kind="folder", need_bytes=source_bytes // 4)
    with lock_folder(out):  # one writer per store: a second build of it is refused
        return _build_locked(uris, out, cfg, tokenizer, source_bytes)


# Long because the build's two passes, resume bookkeeping and the final atomic write read best in sequence; each pass is a worker function above.
def _build_locked(
    uris: list[str],
    out: Path,
    cfg: CorpusConfig,
    tokenizer: RankValueTokenizer | None,
    source_bytes: int,
) -> Path:
    t0 = time.perf_counter()
    plan: dict[str, Any] = {"version": STORE_VERSION, "sources": uris, "config": asdict(cfg)}
    plan_path = out / BUILD_FILE
    resume = (out / MANIFEST_NAME).is_file()
    if not resume and plan_path.is_file():  # a build started before manifests existed
        old = json.loads(plan_path.read_text())
        same = {k: v for k, v in old["config"].items() if k != "workers"} == {
            k: v for k, v in plan["config"].items() if k != "workers"
        }
        if old["sources"] != uris or not same:
            raise CorpusError(
                f"{out}: holds a build of other sources or settings ({plan_path}); use a new "
                "folder, or delete this one to rebuild."
            )
    elif not resume:
        other = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if other:
            raise CorpusError(
                f"{out}: not empty and not a corpus store (holds {', '.join(sorted(other)[:5])}); "
                "give -o/--out a new or empty folder."
            )
    ensure_manifest(  # on resume: refused, naming the difference, if sources or settings changed
        out,
        job="cells.corpus",
        inputs={f"source {i}": (u if Path(u).exists() else None) for i, u in enumerate(uris)},
        settings={
            "store_version": STORE_VERSION,
            "sources": uris,
            **{k: v for k, v in asdict(cfg).items() if k != "workers"},  # workers: speed only
            "tokenizer_sha256": tokenizer.hash() if tokenizer is not None else None,
        },
        resume=resume,
    )
    if resume or plan_path.is_file():
        log.info("%s: resuming the build (finished stats and shards are kept)", out)
    _atomic_json(plan_path, plan)
    n_rows = []
    for u in uris:  # check every source up front (clear errors before any work), one at a time
        src = open_source(u, layer=cfg.layer)
        n_rows.append(src.n_obs)
        shape = (src.n_obs, src.shell.n_vars)
        src.close()
        if 0 in shape:
            raise CorpusError(
                f"{u}: {shape[0]} cells × {shape[1]} genes, nothing to tokenize; remove it from "
                "the sources or fix the file (was it filtered to nothing?)."
            )  # memory must not grow with the number of sources; workers reopen their own

    tok_path = out / TOKENIZER_FILE
    if tokenizer is not None:
        _atomic_json(tok_path, tokenizer.to_dict())
    elif not tok_path.is_file():
        (out / "stats").mkdir(exist_ok=True)
        stats = [out / "stats" / f"source_{i:04d}.npz" for i in range(len(uris))]
        todo = [i for i, p in enumerate(stats) if not p.is_file()]
        results = _run(
            [(uris[i], cfg, str(stats[i])) for i in todo],
            _source_stats,
            cfg.workers,
            "medians",
            [n_rows[i] for i in todo],
        )
        species = {r["species"] for r in results if r}
        if len(species) > 1:
            raise CorpusError(f"sources mix species {sorted(species)}; build one store per species")
        sp_name: Species
        if species:
            sp_name = species.pop()
        elif cfg.species != "auto":
            sp_name = cfg.species
        else:  # every stats file existed: read the species from the first source
            sp_name = _checked_mapping(
                open_source(uris[0], layer=cfg.layer).shell, species="auto", min_mapped=0.0
            ).species
        gencode = next((r["gencode"] for r in results if r), "")
        tok = fit_streaming_tokenizer(stats, cfg, sp_name, gencode)
        _atomic_json(tok_path, tok.to_dict())

    (out / "shards").mkdir(exist_ok=True)
    tasks, sizes = [], []
    for i, (uri, n) in enumerate(zip(uris, n_rows, strict=True)):
        for part, start in enumerate(range(0, n, cfg.shard_cells)):
            folder = out / "shards" / f"s{i:04d}_p{part:05d}"
            if (folder / "shard.json").is_file() and _shard_intact(folder):
                continue
            tasks.append(
                (uri, start, min(n, start + cfg.shard_cells), str(tok_path), cfg, str(folder), i)
            )
            sizes.append(min(n, start + cfg.shard_cells) - start)
    _run(tasks, _write_shard, cfg.workers, "shards", sizes)

    shards = []
    for p in sorted((out / "shards").glob("s*_p*")):
        s = json.loads((p / "shard.json").read_text())
        s.pop("categories")
        s["files"] = {**s.get("files", {}), **shard_checksums(p, ("shard.json",))}
        shards.append(s)
    if not sum(s["n_cells"] for s in shards):
        raise CorpusError(
            f"{out}: every cell was dropped (fewer than min_genes={cfg.min_genes} vocabulary "
            "genes each), so the store would be empty; lower --min-genes or check the sources."
        )
    store_bytes = sum(_size(out / "shards" / s["name"]) for s in shards)
    info = {
        **plan,
        "tokenizer": TOKENIZER_FILE,
        "shards": shards,
        "n_cells": sum(s["n_cells"] for s in shards),
        "n_tokens": sum(s["n_tokens"] for s in shards),
        "dropped_cells": sum(s["dropped_cells"] for s in shards),
        "source_bytes": source_bytes,
        "store_bytes": store_bytes,
        "build_seconds": time.perf_counter() - t0,
    }
    _atomic_json(out / CORPUS_FILE, info)
    log.info(
        "%s: %d cells, %d tokens in %d shards; %.1f MB (sources %.1f MB, ratio %.2f)",
        out,
        info["n_cells"],
        info["n_tokens"],
        len(shards),
        store_bytes / 1e6,
        source_bytes / 1e6,
        store_bytes / max(1, source_bytes),
    )
    return out


def _shard_intact(folder: Path) -> bool:
    """Whether a finished shard still matches its checksums (a damaged one is logged and redone)."""
    try:
        files = json.loads((folder / "shard.json").read_text()).get("files")
    except (json.JSONDecodeError, UnicodeDecodeError):
        problems = ["shard.json is not valid JSON"]
    else:
        if files is None:  # written before checksums were recorded
            return True
        problems = shard_problems(folder, files, full=True)
    if problems:
        log.warning("%s: damaged shard (%s); rebuilding it", folder, "; ".join(problems))
        return False
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0
