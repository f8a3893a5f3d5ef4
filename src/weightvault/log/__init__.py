"""The preservation log: a C2SP transparency log (tlog-tiles, signed-note, tlog-checkpoint,
tlog-cosignature, tlog-proof) of signed preservation statements. See docs/FORMAT.md §12."""
