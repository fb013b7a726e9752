"""Run every benchmark module and write ``<out>/<name>.json`` plus ``<out>/summary.json``.

Usage: ``python -m benchmarks [--out DIR] [--quick] [--only ingest,quantify]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import time
import traceback
from pathlib import Path

import benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min each)")
    parser.add_argument("--only", default="", help="comma-separated stage names")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    summary: dict[str, object] = {}
    failed = 0
    for name in names:
        stage = name.removeprefix("bench_")
        if only and stage not in only:
            continue
        print(f"== {stage}", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            result = module.run(args.out / stage, args.quick)
        except Exception:  # report and go on to the next benchmark
            failed += 1
            result = {"error": traceback.format_exc()}
        result = {"wall_s": round(time.perf_counter() - t0, 2), **result}
        (args.out / f"{stage}.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str), flush=True)
        summary[stage] = result
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
