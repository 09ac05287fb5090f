"""Run every benchmark: each ``benchmarks/bench_*.py`` module's ``main``.

Usage::

    .venv/bin/python -m benchmarks.run_all            # full benchmarks (slow)
    .venv/bin/python -m benchmarks.run_all --quick    # small data, a smoke test
    .venv/bin/python -m benchmarks.run_all --only decomposition
    .venv/bin/python -m benchmarks.run_all --only mae            # bench_mae (issue 5)

Each benchmark prints its command and table and writes its own section of
``benchmarks/RESULTS.md``. A failing benchmark is reported and the others still run; the
exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names (``bench_*``) of every benchmark in this folder, sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, a smoke test")
    parser.add_argument("--no-write", action="store_true",
                        help="do not update benchmarks/RESULTS.md")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only benchmarks whose name contains one of these")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        names = [n for n in names if any(o in n for o in args.only)]
    if not names:
        print("no benchmark selected", file=sys.stderr)
        return 2
    bench_argv = (["--quick"] if args.quick else []) + (["--no-write"] if args.no_write else [])
    status: list[tuple[str, str, float]] = []
    for name in names:
        print(f"\n=== {name} {' '.join(bench_argv)} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__ or 'benchmarks'}.{name}")
            module.main(list(bench_argv))
            outcome = "ok"
        except Exception:  # noqa: BLE001 - report and carry on with the others
            traceback.print_exc()
            outcome = "FAILED"
        status.append((name, outcome, time.perf_counter() - t0))
    print("\n=== summary ===")
    for name, outcome, seconds in status:
        print(f"{name:40s} {outcome:7s} {seconds:8.1f} s")
    return 0 if all(o == "ok" for _, o, _ in status) else 1


if __name__ == "__main__":
    sys.exit(main())
