"""LifeLM: open foundation models of cells and genomes.

The user-facing API:

- :mod:`lifelm.cells`: single-cell transcriptome models (pretrain, embed, annotate, evaluate,
  perturb, rank_targets).
- :mod:`lifelm.tasks.genomes`: genomes (QC, mutations) and codon language models (pretrain,
  finetune, embed, lineages, score, generate).
- the ``lifelm`` command line (``lifelm --help``).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
