"""Quick start: a local cluster of four engines doing real work both ways.

Run it as it is: ``python examples/quickstart.py``.

1. The MultiEngine interface: every engine keeps a namespace; we scatter a range of
   numbers, run code on each engine, and gather the partial results.
2. The Task interface: ``map`` hands Monte Carlo batches to whichever engine is free.
"""

import random
import time

import minipar


def pi_batch(n):
    """Estimate pi from n random points (runs on an engine)."""
    import random

    inside = sum(random.random() ** 2 + random.random() ** 2 <= 1.0 for _ in range(n))
    return 4.0 * inside / n


def main():
    t0 = time.time()
    with minipar.Cluster(n=4) as rc:
        print(f"cluster of {len(rc)} engines ready in {time.time() - t0:.1f} s: ids {rc.ids}")

        dv = rc[:]
        dv.scatter("numbers", range(1, 1001), block=True)
        dv.execute("partial = sum(x * x for x in numbers)", block=True)
        partials = dv.pull("partial", block=True)
        total = sum(partials)
        assert total == sum(x * x for x in range(1, 1001))
        print(f"sum of squares 1..1000 from four engines {partials}: {total}")

        lview = rc.load_balanced_view()
        batches = [20_000] * 40
        estimates = lview.map_sync(pi_batch, batches)
        print(f"pi from {sum(batches):,} points in {len(batches)} tasks: "
              f"{sum(estimates) / len(estimates):.4f}")

        squares = dv.map_sync(lambda x: x ** 2, range(10))
        print("squares on the engines:", squares)
    print(f"done in {time.time() - t0:.1f} s; the cluster is stopped")


if __name__ == "__main__":
    random.seed(0)
    main()
