"""LifeLM: open foundation models of cells and genomes.

The user-facing API lives in two namespaces:

- :mod:`lifelm.cells`: single-cell transcriptome models (pretrain, embed, annotate, evaluate).
- :mod:`lifelm.genomes`: codon language models of genomes (QC, mutations, embed, lineages).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
