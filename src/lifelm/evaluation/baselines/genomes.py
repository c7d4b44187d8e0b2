"""Genome classification baselines (Hamming-NN, 6-mer + logistic regression).

They are implemented in :mod:`lifelm.tasks.genomes.baselines`, because ``lifelm genomes
lineages`` fits them on the user's own reference next to the model, and ``tasks`` must not import
``evaluation``. ``evaluation`` (a higher layer) re-exports them here for the benchmarks.
"""

from __future__ import annotations

from lifelm.tasks.genomes.baselines import (
    hamming_distances,
    hamming_nn,
    kmer_logreg,
    kmer_profiles,
)

__all__ = ["hamming_distances", "hamming_nn", "kmer_logreg", "kmer_profiles"]
