"""apply_sync round trip on one engine, beside the raw pyzmq relay's (issues 2 and 7).

    python bench/latency.py [--quick]

One no-op `rc[0].apply_sync(f)` at a time through minipar's controller, against the same
4-hop trip through the relay's broker (bench/relay.py), ipyparallel's `apply_sync` when it
is importable and `multiprocessing.Pool(2).apply`. Medians; the ratio column is minipar's
round trip over the relay's and over ipyparallel's.
"""
import _common


def main():
    args = _common.parse_args(__doc__)
    cfg = _common.Config.make(quick=args.quick)
    _common.run_and_print(cfg, ["apply_rtt_us"], "latency: one no-op round trip at a time")


if __name__ == "__main__":
    main()
