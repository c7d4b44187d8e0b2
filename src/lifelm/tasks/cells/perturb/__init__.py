"""In-silico perturbation: delete, overexpress or knock down genes in a cell model, fast.

Modules, one job each:

- :mod:`.scan`: the **exact batched scan** (:func:`scan_cells`): every perturbation of every cell
  is a row of a padded batch under a token budget; padding keys are masked, so results do not
  depend on batching; only the trunk runs (no masked-LM head); bf16 on GPU.
- :mod:`.store`: :class:`ScanResult` and the resumable results folder (manifest with content
  hashes, one ``part-*.npz`` per group of cells, a lock while a scan writes).
- :mod:`.screen`: the **first-order screen** (:func:`screen_deletions`, :func:`fast_scan`,
  :func:`topk_recovery`), the CPU fast path: gene gates differentiated in one backward pass per
  cell, then the top candidates recomputed exactly.
- :mod:`.api`: the AnnData API (:func:`perturb`) and the summaries (:func:`summarize`,
  :func:`responders`, :func:`gene_names`, :func:`resolve_genes`).

Shift measures: ``shift`` is the cosine distance between the perturbed and the original cell
embedding (Geneformer's measure); with ``gene_shifts=True`` every other gene's contextual
embedding is compared too (cosine distance at the same gene), which shows which genes respond.
"""

from __future__ import annotations

from lifelm.tasks.cells.perturb.api import (
    gene_names,
    perturb,
    resolve_genes,
    responders,
    summarize,
)
from lifelm.tasks.cells.perturb.scan import (
    Precision,
    ScanConfig,
    ScanPlan,
    Targets,
    scan_cells,
    single_targets,
)
from lifelm.tasks.cells.perturb.screen import fast_scan, screen_deletions, topk_recovery
from lifelm.tasks.cells.perturb.store import ScanFolderMismatchError, ScanResult, load_scan

__all__ = [
    "Precision",
    "ScanConfig",
    "ScanFolderMismatchError",
    "ScanPlan",
    "ScanResult",
    "Targets",
    "fast_scan",
    "gene_names",
    "load_scan",
    "perturb",
    "resolve_genes",
    "responders",
    "scan_cells",
    "screen_deletions",
    "single_targets",
    "summarize",
    "topk_recovery",
]
