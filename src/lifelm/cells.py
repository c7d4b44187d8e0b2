"""Single-cell models: the public Python API.

>>> import lifelm.cells as lc
>>> adata = lc.synthetic_cells(n_cells=200, n_genes=300)
>>> adata.n_obs
200

Typical use::

    model_dir = lc.pretrain("cells.h5ad", "runs/pbmc", preset="small").model_dir
    lc.embed(adata, model_dir)                                 # .obsm["X_lifelm"]
    lc.annotate(query, model_dir, reference=adata, label_key="cell_type")  # .obs["lifelm_cell_type"]
"""

from __future__ import annotations

from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.evaluation.benchmarks.annotation import run_annotation_benchmark as evaluate
from lifelm.io.h5ad import read_h5ad as read
from lifelm.tasks.cells.annotate import annotate, train_annotator
from lifelm.tasks.cells.embed import embed
from lifelm.tasks.cells.model_io import load_cell_model as load_model
from lifelm.tasks.cells.perturb import perturb
from lifelm.tasks.cells.pretrain import pretrain
from lifelm.tasks.cells.targets import rank_targets
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import TrainConfig

__all__ = [
    "RankValueTokenizer",
    "TrainConfig",
    "annotate",
    "embed",
    "evaluate",
    "load_model",
    "perturb",
    "pretrain",
    "rank_targets",
    "read",
    "synthetic_cells",
    "train_annotator",
]
