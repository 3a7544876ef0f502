"""Why was my run slow? Draw its timeline.

200 tasks of uneven length run on 4 engines, as in real sweeps: most are short, a few
are long. ``ar.timeline("timeline.png")`` (or ``minipar.plot_timeline(ar, ...)``)
draws one row per engine and one bar per task, from when it started to when it ended
on its engine. Gaps are engines waiting; a long bar at the very end is a straggler
that kept the run going while the other engines sat idle (submitting the long tasks
first, or splitting them, shortens the run). Without a file name, the figure is
returned, and a notebook shows it inline.

Needs matplotlib (``pip install matplotlib``). Run it as it is:
``python examples/timeline.py [timeline.png]``.
"""

import random
import sys

import minipar


def work(seconds):
    """Stand-in for a computation of the given length (runs on an engine)."""
    import time

    time.sleep(seconds)
    return seconds


def main():
    filename = sys.argv[1] if len(sys.argv) > 1 else "timeline.png"
    rng = random.Random(42)
    # mostly 10..60 ms, one task in 25 takes 0.3..0.6 s
    durations = [rng.uniform(0.3, 0.6) if rng.random() < 0.04 else rng.uniform(0.01, 0.06)
                 for _ in range(200)]
    with minipar.Cluster(n=4) as rc:
        ar = rc.load_balanced_view().map(work, durations, chunksize=1)
        ar.wait_interactive()
        fig = ar.timeline(filename)
        print(f"{len(ar)} tasks: {ar.serial_time:.2f} s of work in {ar.wall_time:.2f} s on "
              f"{len(rc.ids)} engines ({ar.serial_time / ar.wall_time / len(rc.ids):.0%} busy)")
        print(f"longest task {max(durations):.2f} s; the chart: {filename}")
        print(f"title: {fig.axes[0].get_title()}")


if __name__ == "__main__":
    main()
