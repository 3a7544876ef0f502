"""No-op tasks per second and map items per second (issues 3 and 7).

    python bench/throughput.py [--quick]

Load-balanced and direct-view rates for 5,000 no-op tasks submitted at once on 2 engines,
`map` with chunksize 1 (load-balanced) and with automatic chunks (the direct view's block
partition), beside the relay's pipelined round trips (1,000 in flight) and
`multiprocessing.Pool(2)` (`apply_async` and `map`). Best of several runs, except
ipyparallel's (one run: it is slow).
"""
import _common

KEYS = ["lb_tasks_per_s", "dv_tasks_per_s", "map1_items_per_s", "map_auto_items_per_s"]


def main():
    args = _common.parse_args(__doc__)
    cfg = _common.Config.make(quick=args.quick)
    _common.run_and_print(cfg, KEYS, "throughput: no-op tasks and map items per second")


if __name__ == "__main__":
    main()
