"""File formats: h5ad, FASTA/GFF, checkpoints. Never imports data, models, training or tasks."""
