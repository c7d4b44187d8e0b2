"""Simple baselines for genome classification that every codon-model number is shown next to.

* :func:`hamming_nn`: nearest neighbour by Hamming distance on reference-aligned genomes, counting
  only sites where both genomes have A/C/G/T (``N``, ambiguity codes and ``-`` are ignored), as a
  fraction of the compared sites. Computed on the variable sites only (one-hot matrix products),
  which gives the same neighbours as the full genome: invariant sites never differ.
* :func:`kmer_logreg`: 6-mer frequency profiles of the ungapped genome (k-mers with a non-ACGT
  base skipped) and a multinomial logistic regression (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

_CODE = np.full(256, 4, dtype=np.uint8)  # A C G T -> 0..3, anything else -> 4 (ignored)
for _i, _b in enumerate("ACGT"):
    _CODE[ord(_b)] = _i
    _CODE[ord(_b.lower())] = _i


def _encode(seqs: Sequence[str]) -> np.ndarray:
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(
            f"Hamming distance needs reference-aligned genomes of one length; got lengths "
            f"{sorted(lengths)[:5]}. Align first (lifelm.data.genomes.align.aligned_to_reference)."
        )
    return np.stack([_CODE[np.frombuffer(s.encode("latin-1"), dtype=np.uint8)] for s in seqs])


def hamming_distances(train: Sequence[str], test: Sequence[str]) -> np.ndarray:
    """``(n_test, n_train)`` mismatch fraction over sites where both genomes have A/C/G/T."""
    a, b = _encode(test), _encode(train)
    both = np.concatenate([a, b])
    called = both < 4
    # a site is variable when two called bases differ anywhere
    first = np.where(called, both, 255).min(0)
    last = np.where(called, both, 0).max(0)
    var = np.flatnonzero((first != last) & (first != 255))
    a, b = a[:, var], b[:, var]
    oh_a = np.stack([(a == k) for k in range(4)], axis=-1).reshape(len(a), -1).astype(np.float32)
    oh_b = np.stack([(b == k) for k in range(4)], axis=-1).reshape(len(b), -1).astype(np.float32)
    matches = oh_a @ oh_b.T  # (n_test, n_train) sites with the same base
    valid = (a < 4).astype(np.float32) @ (b < 4).astype(np.float32).T  # sites called in both
    # invariant sites called in both add to the denominator: count them per pair
    inv = np.setdiff1d(np.arange(called.shape[1]), var)
    ca, cb = called[: len(test)][:, inv], called[len(test) :][:, inv]
    valid_inv = ca.astype(np.float32) @ cb.astype(np.float32).T
    return (valid - matches) / np.maximum(valid + valid_inv, 1.0)


def hamming_nn(train: Sequence[str], labels: Sequence[str], test: Sequence[str]) -> np.ndarray:
    """Label of the nearest training genome by Hamming distance (first one on ties)."""
    d = hamming_distances(train, test)
    return np.asarray(labels)[d.argmin(1)]


def kmer_profiles(seqs: Sequence[str], k: int = 6) -> np.ndarray:
    """``(n, 4**k)`` k-mer frequencies of each ungapped sequence (k-mers with N etc. skipped)."""
    out = np.zeros((len(seqs), 4**k), dtype=np.float32)
    for i, s in enumerate(seqs):
        codes = _CODE[np.frombuffer(s.replace("-", "").encode("latin-1"), dtype=np.uint8)].astype(
            np.int64
        )
        if len(codes) < k:
            continue
        n = len(codes) - k + 1
        idx = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)
        for j in range(k):
            window = codes[j : j + n]
            idx = idx * 4 + np.minimum(window, 3)
            bad |= window > 3
        counts = np.bincount(idx[~bad], minlength=4**k)
        out[i] = counts / max(counts.sum(), 1)
    return out


def kmer_logreg(
    train: Sequence[str],
    labels: Sequence[str],
    test: Sequence[str],
    *,
    k: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """Predict labels of ``test`` from k-mer profiles with a standardised logistic regression."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(kmer_profiles(train, k), np.asarray(labels))
    return clf.predict(kmer_profiles(test, k))
