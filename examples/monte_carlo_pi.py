"""Monte Carlo pi with ``map``: the classic embarrassingly parallel computation.

Throw random darts at the unit square: the fraction landing inside the quarter circle
of radius 1 approaches pi/4. Every batch of darts is independent, so the batches are
spread over the engines three ways, each a one-line change:

1. ``lview.map`` (the Task interface): batches go to whichever engine is free, with a
   progress bar while they run;
2. ``dv.map`` (the MultiEngine interface): each engine takes one contiguous block;
3. ``rc.executor()``: the standard ``concurrent.futures`` interface.

Run it as it is: ``python examples/monte_carlo_pi.py [--engines 4] [--darts 2000000]``.
"""

import argparse
import math
import time

import minipar


def darts_inside(n, seed):
    """How many of `n` random points in the unit square fall inside the quarter circle
    (runs on an engine; a seed per batch makes the run reproducible)."""
    import random

    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


def report(how, inside, darts, seconds):
    pi = 4.0 * inside / darts
    print(f"{how:<24} pi ~ {pi:.5f}  (error {abs(pi - math.pi):.5f}, {seconds:.2f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--darts", type=int, default=2_000_000)
    p.add_argument("--batches", type=int, default=32)
    args = p.parse_args()
    per_batch = args.darts // args.batches
    sizes, seeds = [per_batch] * args.batches, range(args.batches)
    darts = per_batch * args.batches

    with minipar.Cluster(n=args.engines) as rc:
        print(f"{len(rc.ids)} engines, {darts:,} darts in {args.batches} batches")

        lview = rc.load_balanced_view()
        ar = lview.map(darts_inside, sizes, seeds, chunksize=1)
        ar.wait_interactive()            # a progress bar on stderr
        report("load-balanced map", sum(ar.get()), darts, ar.wall_time)
        print(f"{'':<24} {ar.serial_time:.2f} s of computing in {ar.wall_time:.2f} s: "
              f"{ar.serial_time / ar.wall_time:.1f} engines busy on average")

        t0 = time.time()
        inside = sum(rc[:].map_sync(darts_inside, sizes, seeds))
        report("direct map (blocks)", inside, darts, time.time() - t0)

        t0 = time.time()
        with rc.executor() as ex:
            inside = sum(ex.map(darts_inside, sizes, seeds))
        report("concurrent.futures", inside, darts, time.time() - t0)


if __name__ == "__main__":
    main()
