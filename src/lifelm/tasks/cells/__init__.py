"""User-facing cell functions (scverse call shape): pretrain, embed, annotate."""
