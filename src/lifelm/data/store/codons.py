"""The corpus store for codon tokens: packed fixed-length rows, sharded and memory-mapped.

Genes (documents of ``[CLS]`` + codon ids) are packed into rows of ``row_len`` tokens with
:func:`~lifelm.data.genomes.codons.pack_documents` (best-fit decreasing, long genes split) one
shard at a time, and written as ``input_ids.bin`` (uint8: the 69-token GenSLM vocabulary fits)
and ``doc_ids.bin`` (int16, -1 on padding); positions restart at 0 for each document and are
recomputed on read. Shards are written to a temporary folder and renamed, so a killed build keeps
its finished shards; ``codons.json`` is written last. Each shard records the size and SHA-256 of
its files: a resumed build rebuilds a damaged shard, and :class:`CodonStore` refuses one (sizes on
open, SHA-256 when the shard is first read). :class:`CodonStore` returns the items of
:class:`~lifelm.data.genomes.datasets.PackedCodonDataset` (collate with ``collate_packed``) and a
block-shuffled ``epoch_order`` for the training loop.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lifelm._core.progress import track
from lifelm._core.runtime import get_logger
from lifelm.data.genomes.codons import PAD_ID, VOCAB_SIZE, pack_documents, tokenizer_identity
from lifelm.data.store.build import CorpusError, _atomic_json, _size
from lifelm.data.store.integrity import damaged, shard_checksums, shard_problems
from lifelm.data.store.store import block_shuffle

log = get_logger("lifelm.store")
_REBUILD = (
    "Run the same codon-store build again: damaged shards are detected by their checksums "
    "and rebuilt, intact ones are kept."
)

CODON_STORE_FILE = "codons.json"  # written last: marks a finished codon store


def _cds_shards(
    files: list[Path], shard_docs: int, min_codons: int
) -> Iterator[tuple[str, list[np.ndarray]]]:
    from lifelm.data.genomes.datasets import cds_documents, read_cds_fasta

    for i, path in enumerate(files):
        records = read_cds_fasta(path, min_codons=min_codons)
        for part, a in enumerate(range(0, len(records), shard_docs)):
            docs, _ = cds_documents(records[a : a + shard_docs])
            yield f"f{i:04d}_p{part:05d}", docs


def write_packed_shards(
    shards: Iterable[tuple[str, list[np.ndarray]]], out: str | Path, *, row_len: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Pack and write each ``(name, documents)`` shard not yet in ``out/shards`` (resumable)."""
    root = Path(out) / "shards"
    root.mkdir(parents=True, exist_ok=True)
    infos = []
    for name, docs in shards:
        final = root / name
        if (final / "shard.json").is_file():
            try:
                info = json.loads((final / "shard.json").read_text())
                problems = shard_problems(final, info.get("files", {}), full=True)
            except (json.JSONDecodeError, UnicodeDecodeError):
                problems = ["shard.json is not valid JSON"]
            if not problems:
                infos.append(info)
                continue
            log.warning("%s: damaged shard (%s); rebuilding it", final, "; ".join(problems))
        rng = np.random.default_rng([seed, len(infos)])
        packed = pack_documents(docs, row_len, rng=rng)
        tmp = root / f".tmp_{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        packed.input_ids.astype(np.uint8).tofile(tmp / "input_ids.bin")  # (R, L)
        packed.doc_ids.astype(np.int16).tofile(tmp / "doc_ids.bin")  # (R, L)
        info = {
            "name": name,
            "n_rows": len(packed.input_ids),
            "n_docs": len(docs),
            "n_tokens": int((packed.input_ids != PAD_ID).sum()),
            "files": shard_checksums(tmp, ("input_ids.bin", "doc_ids.bin")),
        }
        _atomic_json(tmp / "shard.json", info)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        infos.append(info)
    return infos


def build_codon_store(
    cds_fasta: list[str | Path],
    out: str | Path,
    *,
    row_len: int = 1024,
    shard_docs: int = 50_000,
    min_codons: int = 30,
    seed: int = 0,
) -> Path:
    """Pack the genes of CDS FASTA files into a sharded codon store (resumable after a kill).

    Parameters
    ----------
    cds_fasta
        CDS FASTA files (one record per gene, in frame), as read by
        :func:`~lifelm.data.genomes.datasets.read_cds_fasta`. Deduplicate and split by genome
        before building, as for in-memory training.
    out
        Store folder.
    row_len
        Tokens per packed row (the model's context).
    shard_docs
        Genes per shard (bounds memory; the unit of resume).
    min_codons
        Shorter genes are dropped.
    seed
        Shuffles rows within each shard.
    """
    if VOCAB_SIZE > 255:  # pragma: no cover - guards the uint8 layout
        raise CorpusError("codon vocabulary no longer fits uint8")
    out = Path(out)
    files = [Path(f) for f in cds_fasta]
    if not files:
        raise CorpusError("no CDS FASTA files given")
    out.mkdir(parents=True, exist_ok=True)
    shards = track(
        _cds_shards(files, shard_docs, min_codons), description="codon shards", total=None
    )
    infos = write_packed_shards(shards, out, row_len=row_len, seed=seed)
    info = {
        "sources": [str(f) for f in files],
        "row_len": row_len,
        "tokenizer": tokenizer_identity(),
        "shards": infos,
        "n_rows": sum(s["n_rows"] for s in infos),
        "n_docs": sum(s["n_docs"] for s in infos),
        "n_tokens": sum(s["n_tokens"] for s in infos),
        "store_bytes": _size(out / "shards"),
        "source_bytes": sum(_size(f) for f in files),
    }
    _atomic_json(out / CODON_STORE_FILE, info)
    return out


class CodonStore:
    """A finished codon store: ``store[i]`` is one packed row, as ``PackedCodonDataset`` gives."""

    def __init__(self, path: str | Path, *, block_size: int = 64, window_blocks: int = 16) -> None:
        self.path = Path(path)
        if not (self.path / CODON_STORE_FILE).is_file():
            raise CorpusError(
                f"{self.path}: not a finished codon store (no {CODON_STORE_FILE}); run the same "
                "build again to finish it (finished shards are kept)."
            )
        try:
            self.info = json.loads((self.path / CODON_STORE_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(
                f"{self.path / CODON_STORE_FILE}: damaged ({e}). {_REBUILD}"
            ) from None
        for s in self.info["shards"]:  # sizes on open (cheap); SHA-256 when a shard is first read
            problems = shard_problems(
                self.path / "shards" / s["name"], s.get("files", {}), full=False
            )
            if problems:
                raise damaged(self.path, s["name"], problems, _REBUILD)
        self.row_len = int(self.info["row_len"])
        rows = np.array([s["n_rows"] for s in self.info["shards"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(rows)])
        self.block_size, self.window_blocks = block_size, window_blocks
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._maps:
            s = self.info["shards"][k]
            folder = self.path / "shards" / s["name"]
            problems = shard_problems(folder, s.get("files", {}), full=True)
            if problems:
                raise damaged(self.path, s["name"], problems, _REBUILD)
            shape = (s["n_rows"], self.row_len)
            self._maps[k] = (
                np.memmap(folder / "input_ids.bin", dtype=np.uint8, mode="r", shape=shape),
                np.memmap(folder / "doc_ids.bin", dtype=np.int16, mode="r", shape=shape),
            )
        return self._maps[k]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for a store of {len(self)} rows")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        ids, docs = self._shard(k)
        j = i - int(self.starts[k])
        doc = docs[j].astype(np.int64)  # (L,)
        starts = np.flatnonzero(
            np.diff(np.concatenate([[-2], doc])) != 0
        )  # first token of each run
        run_start = np.repeat(starts, np.diff(np.concatenate([starts, [len(doc)]])))
        pos = np.where(doc >= 0, np.arange(len(doc)) - run_start, 0)
        return {"input_ids": ids[j].astype(np.int64), "doc_ids": doc, "position_ids": pos}

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """Block-shuffled permutation of rows for ``epoch`` (read by the training loop)."""
        return block_shuffle(
            len(self), seed, epoch, block_size=self.block_size, window_blocks=self.window_blocks
        )
