"""The scheduler alone: CPU per plain task (submit + finished) by the number of engines.

    python bench/sched.py [N ...] [--tasks T] [--old TREE]

Drives ``minipar.scheduler.Scheduler`` (leastload, automatic hwm) in a loop, no sockets:
each task is submitted, and the oldest running one is replied to whenever more than a
`window` of them run. Two regimes: *saturated*, more tasks in flight than the engines
take (tasks queue in the scheduler), and *unsaturated*, one in flight per engine (every
task goes straight to an engine). The cost of a task should not grow with the engines
(issue "scale with the cores"), so each figure is printed with its ratio to the first N.
`--old TREE` (a folder holding an older minipar/) runs that tree's scheduler too, in
turns with this one, and prints new/old. Best of 5 runs each.
"""
import argparse
import collections
import importlib.util
import os
import time

import _common


def load(tree):
    """`tree`/minipar/scheduler.py as a module of its own (it imports minipar's protocol
    and dependency, which every version since the split has)."""
    spec = importlib.util.spec_from_file_location(
        f"sched_{abs(hash(tree))}", os.path.join(tree, "minipar", "scheduler.py"),
        submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "minipar"
    spec.loader.exec_module(module)
    return module


def per_task_us(scheduler, engines, window, tasks):
    s = scheduler.Scheduler()
    for e in range(engines):
        s.engine_added(e, 0.0)
    running = collections.deque()
    t0 = time.process_time()
    for k in range(tasks):
        running.extend(d[1:] for d in s.submit({"msg_id": f"t{k}"}, 0.0) if d[0] == "run")
        while len(running) > window or (k == tasks - 1 and running):
            msg_id, engine = running.popleft()
            running.extend(d[1:] for d in s.finished(msg_id, engine, "ok", 0.0, 1e-4)
                           if d[0] == "run")
    return (time.process_time() - t0) / tasks * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ns", nargs="*", type=int, default=[2, 8, 32, 64, 256])
    p.add_argument("--tasks", type=int, default=30_000)
    p.add_argument("--old", metavar="TREE", help="an older tree to compare, in turns")
    opts = p.parse_args()
    trees = {"new": load(_common.ROOT)}
    if opts.old:
        trees["old"] = load(os.path.abspath(opts.old))
    first = {}
    print(f"{'engines':>7} {'regime':<11} " + " ".join(f"{t + ' µs':>8}" for t in trees)
          + f" {'/first N':>8}" + (f" {'new/old':>8}" if opts.old else ""))
    for n in opts.ns:
        for regime, window in (("saturated", n * 64 + 1000), ("unsaturated", n)):
            best = {t: float("inf") for t in trees}
            for _ in range(5):
                for t, module in trees.items():
                    best[t] = min(best[t], per_task_us(module, n, window, opts.tasks))
            first.setdefault(regime, best["new"])
            line = f"{n:>7} {regime:<11} " + " ".join(f"{best[t]:>8.1f}" for t in trees)
            line += f" {best['new'] / first[regime]:>8.2f}"
            if opts.old:
                line += f" {best['new'] / best['old']:>8.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
