"""Writing genome-task tables: checked before the work, written atomically, never half-written.

TSV files may start with ``#`` comment lines (the held-out numbers of ``lineages``); read them
with ``pandas.read_csv(path, sep="\\t", comment="#")``. A summary, when there is one, is also
written as JSON beside the table (``OUT.summary.json``) or, for ``--json`` output, inside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lifelm._core.errors import NumericalError
from lifelm._core.runfolder import atomic_output, check_output_path

TABLE_SUFFIXES = (".tsv", ".txt", ".json", ".tab")


def check_table_path(out: str | Path, *, suffixes: Sequence[str] = ()) -> Path:
    """Refuse a folder, an unwritable place or a wrong extension before any long work."""
    return check_output_path(out, kind="file", suffixes=tuple(suffixes))


def summary_path(out: str | Path) -> Path:
    """Where the JSON summary of table ``out`` goes (``pred.tsv`` -> ``pred.summary.json``)."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def write_table(
    df: pd.DataFrame,
    out: str | Path,
    *,
    as_json: bool = False,
    comments: Sequence[str] = (),
    summary: dict | None = None,
    finite: Sequence[str] = (),
) -> Path:
    """Write ``df`` as TSV (or JSON records) atomically; refuse NaN/inf in the ``finite`` columns."""
    out = check_table_path(out)
    for col in finite:
        bad = pd.to_numeric(df[col], errors="coerce")
        if bad.isna().any() or bad.map(math.isinf).any():
            raise NumericalError(
                f"{out}: column {col!r} has NaN or infinite values in {int(bad.isna().sum())} rows; "
                "nothing was written. Check the inputs of those rows (empty or unaligned genomes)."
            )
    as_json = as_json or out.suffix.lower() == ".json"
    with atomic_output(out) as tmp:
        if as_json:
            records = json.loads(df.to_json(orient="records"))
            payload = {"summary": summary, "rows": records} if summary is not None else records
            tmp.write_text(json.dumps(payload, indent=1))
        else:
            with tmp.open("w") as fh:
                for line in comments:
                    fh.write(f"# {line}\n")
                df.to_csv(fh, sep="\t", index=False)
    if summary is not None and not as_json:
        with atomic_output(summary_path(out)) as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
    return out


def write_embeddings(emb, table: pd.DataFrame, out: str | Path) -> list[Path]:
    """Write genome embeddings: ``.npy`` (matrix) plus ``.tsv`` (names), or one TSV with ``emb_*``.

    Returns the files written.
    """
    import numpy as np

    out = check_table_path(out, suffixes=(*TABLE_SUFFIXES, ".npy"))
    if out.suffix == ".npy":
        with atomic_output(out) as tmp, tmp.open("wb") as fh:
            np.save(fh, emb)
        return [out, write_table(table, out.with_suffix(".tsv"))]
    cols = pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])])
    return [write_table(pd.concat([table, cols], axis=1), out)]


FASTA_SUFFIXES = (".fasta", ".fa", ".fna")


def write_sequences(df: pd.DataFrame, out: str | Path) -> Path:
    """Write generated sequences (``seqName``, ``sequence``) as FASTA, or as a table otherwise."""
    out = check_table_path(out, suffixes=(*TABLE_SUFFIXES, *FASTA_SUFFIXES))
    if out.suffix not in FASTA_SUFFIXES:
        return write_table(df, out)
    with atomic_output(out) as tmp:
        tmp.write_text("".join(f">{r.seqName}\n{r.sequence}\n" for r in df.itertuples()))
    return out


def read_name_list(path: str | Path | None) -> list[str]:
    """Sequence names, one per line (blank lines ignored); empty for ``None``."""
    if path is None:
        return []
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
