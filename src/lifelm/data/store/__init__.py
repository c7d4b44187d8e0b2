"""lifelm.data.store: sharded, pre-tokenized corpora for data larger than memory.

- :func:`~lifelm.data.store.build.build_corpus` — sources (``.h5ad`` backed, TileDB-SOMA) →
  streaming medians → memory-mapped token shards with per-cell metadata; resumable, parallel.
- :class:`~lifelm.data.store.store.CorpusStore` — a map-style dataset over a store, with
  block-shuffled epochs; :class:`~lifelm.data.store.store.StoreLoader` — per-rank, resumable.
- :func:`~lifelm.data.store.synthetic.synthesize_corpus` — big corpora by resampling real cells.
"""
