"""Issue 17's scale benchmark in one command: bulk indexing, then sharded serving.

Runs ``scale_index.py`` (one process vs ``--engine ray`` with 1 and 2 workers, checksums, the 8.8M
projection) and then ``scale_serve.py`` (p50/p99 through the coordinator with 1, 2, 4 shards vs one
server at concurrency 1 and 32), each as its own process so one's Ray instance and memory never
colour the other's numbers. Results: benchmarks/results/scale_index.md and scale_serve.md.

    python benchmarks/scale.py                       # 2,000 docs indexed; 1M synthetic docs served
    python benchmarks/scale.py --quick               # 400 docs indexed; 20,000 served (minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    steps = [
        ["scale_index.py", *(["--docs", "400", "--rounds", "1"] if args.quick else [])],
        ["scale_serve.py", *(["--docs", "20000", "--seconds", "4"] if args.quick else [])],
    ]
    for script, *flags in steps:
        print(f"== {script} {' '.join(flags)}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *flags])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
