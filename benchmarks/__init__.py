"""Benchmarks (``make bench``): each ``bench_<stage>.py`` exposes ``run(out_dir, quick) -> dict``
of measured figures, each measured in the same run against the baseline its issue names."""
