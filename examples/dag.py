"""A workflow as a graph of tasks, ordered with ``after`` dependencies.

    fetch_a   fetch_b          two downloads, in parallel
         \\     /
          merge                starts only after both fetches finished
         /     \\
      mean    spread           in parallel again
         \\     /
          report

A task submitted with ``view.temp_flags(after=[...])`` waits in the scheduler until
the tasks it names have finished; the client does not wait, it submits the whole graph
at once. Each step reads its inputs from, and writes its output to, a folder the
engines share (this machine's; on a cluster, a shared filesystem), as build tools do.

Run it as it is: ``python examples/dag.py``.
"""

import os
import pickle
import statistics
import tempfile

import minipar


def fetch(seed):
    import random

    rng = random.Random(seed)
    return [rng.gauss(10.0, 2.0) for _ in range(20_000)]


def merge(a, b):
    return a + b


def mean(xs):
    return statistics.fmean(xs)


def spread(xs):
    return statistics.pstdev(xs)


def report(m, s):
    return f"{m:.3f} +- {s:.3f}"


# name: (function, the steps whose outputs are its inputs, extra arguments)
GRAPH = {
    "fetch_a": (fetch, [], [1]),
    "fetch_b": (fetch, [], [2]),
    "merge": (merge, ["fetch_a", "fetch_b"], []),
    "mean": (mean, ["merge"], []),
    "spread": (spread, ["merge"], []),
    "report": (report, ["mean", "spread"], []),
}


def step(fn, name, inputs, folder, *args):
    """Run one node on an engine: load the inputs, call fn, save the output."""
    values = []
    for i in inputs:
        with open(os.path.join(folder, i + ".pickle"), "rb") as f:
            values.append(pickle.load(f))
    out = fn(*values, *args)
    with open(os.path.join(folder, name + ".pickle"), "wb") as f:
        pickle.dump(out, f)
    return out


def main():
    with minipar.Cluster(n=4) as rc, tempfile.TemporaryDirectory() as folder:
        lview = rc.load_balanced_view()
        submitted = {}
        for name, (fn, inputs, args) in GRAPH.items():   # GRAPH lists parents first
            with lview.temp_flags(after=[submitted[i] for i in inputs]):
                submitted[name] = lview.apply_async(step, fn, name, inputs, folder, *args)
        print("submitted the whole graph; the report says", submitted["report"].get(120))

        t0 = min(ar.metadata["started"] for ar in submitted.values())
        print(f"\n{'step':<8} {'engine':>6} {'start':>7} {'end':>7}   after")
        for name, ar in submitted.items():
            md = ar.metadata
            start, end = ((md[k] - t0).total_seconds() for k in ("started", "completed"))
            print(f"{name:<8} {md['engine_id']:>6} {start:>7.3f} {end:>7.3f}   "
                  f"{', '.join(GRAPH[name][1]) or '-'}")
            for parent in GRAPH[name][1]:   # the scheduler kept the order
                assert md["started"] >= submitted[parent].metadata["completed"]


if __name__ == "__main__":
    main()
