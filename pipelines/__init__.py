"""The science: one package per stage (synth, ingest, segment, quantify, aggregate, stats,
report).  Each stage is pure kernels plus one thin wrapper for Dask."""
