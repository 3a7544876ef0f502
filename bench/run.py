"""The whole suite: one table of every figure with its anchors and goal (issue 7).

    python bench/run.py [--quick] [--json PATH]

Runs the raw pyzmq relay, multiprocessing.Pool(2), minipar and ipyparallel (only when it
is importable; this script installs nothing: `pip install ipyparallel` to compare) and
prints figure | relay | minipar | ipyparallel | multiprocessing | ratio | goal | met?.
`--quick` does fewer repetitions and finishes in under a minute. The table is also written
as JSON (default bench/results.json, not committed) for comparison across commits.
"""
import json
import time

import _common


def main():
    args = _common.parse_args(__doc__, json_option=True)
    cfg = _common.Config.make(quick=args.quick)
    keys = [f.key for f in _common.FIGURES]
    started = time.time()
    results, rows = _common.run_and_print(cfg, keys, "minipar benchmark suite")
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "quick": cfg.quick, "environment": _common.environment(),
              "config": vars(cfg), "rows": rows, "raw": results}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"table written to {args.json}")


if __name__ == "__main__":
    main()
