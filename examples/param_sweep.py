"""A parameter sweep with the Task interface: one task per parameter pair, with retries.

We sweep the logistic map x -> r x (1 - x) over growth rates `r` and starting points
`x0`, and record where each run settles: a fixed point, a cycle, or chaos. Every
(r, x0) pair is an independent task that ``rc.load_balanced_view()`` gives to
whichever engine is free.

Real sweeps meet flaky failures (a licence server that times out, a cold cache, a
node that hiccups). Here each engine's first task fails with ConnectionError, on
purpose. The view's ``retries`` flag runs a failed task again, on another engine when
one is free; a task's ``metadata["attempts"]`` lists every attempt, failed or not.
With 4 engines at most 4 attempts can fail, so ``retries=4`` always gets through.

Run it as it is: ``python examples/param_sweep.py``.
"""

import collections

import minipar


def settle(r, x0, steps=2000):
    """Run the logistic map and describe its long-term behaviour (runs on an engine)."""
    global warmed_up   # lives in the engine's namespace, between tasks
    if not globals().get("warmed_up"):
        warmed_up = True
        raise ConnectionError("the simulated licence server did not answer")
    x = x0
    for _ in range(steps):
        x = r * x * (1 - x)
    tail = []
    for _ in range(64):
        x = r * x * (1 - x)
        tail.append(round(x, 6))
    period = len(set(tail))
    return "fixed point" if period == 1 else f"cycle of {period}" if period <= 16 else "chaos"


def main():
    rates = [2.8, 3.2, 3.5, 3.55, 3.7, 3.9]
    starts = [0.1, 0.5, 0.9]
    with minipar.Cluster(n=4) as rc:
        lview = rc.load_balanced_view()
        lview.set_flags(retries=len(rc.ids))
        tasks = {(r, x0): lview.apply_async(settle, r, x0) for r in rates for x0 in starts}
        rc.wait(list(tasks.values()), timeout=120)

        print(f"{'r':>5}  " + "  ".join(f"x0={x0:<12}" for x0 in starts))
        for r in rates:
            print(f"{r:>5}  " + "  ".join(f"{tasks[r, x0].get():<15}" for x0 in starts))

        retried = {k: ar.metadata["attempts"] for k, ar in tasks.items()
                   if len(ar.metadata["attempts"]) > 1}
        failures = collections.Counter(a["engine"] for attempts in retried.values()
                                       for a in attempts if a["status"] != "ok")
        print(f"\n{len(tasks)} tasks; {len(retried)} needed a retry; failed attempts per "
              f"engine: {dict(sorted(failures.items()))}")
        for (r, x0), attempts in sorted(retried.items()):
            story = " -> ".join(f"engine {a['engine']}: {a['status']}" for a in attempts)
            print(f"  r={r}, x0={x0}: {story}")


if __name__ == "__main__":
    main()
