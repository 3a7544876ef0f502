"""The classic ``IPython.kernel`` style: MultiEngineClient and TaskClient.

Scripts written for IPython 0.10 (``from IPython.kernel import client``) run with
``from minipar import client`` in its place, in Python 3 syntax. This is the session
of the old "multiengine interface" and "task interface" documents, in short:

* ``MultiEngineClient``: every engine addressed explicitly; ``execute``, ``push`` and
  ``pull``, the dictionary interface, ``scatter``/``gather``, ``map``, ``@parallel``;
  ``block=False`` gives a ``PendingResult``.
* ``TaskClient``: ``StringTask`` (code, with ``push``/``pull``) and ``MapTask`` (a
  function) run on whichever engine is free; integer task ids, ``barrier``,
  ``get_task_result``, ``retries``.

Run it as it is: ``python examples/classic_kernel.py``.
"""

import minipar
from minipar import client   # was: from IPython.kernel import client


def flaky_square(x):
    """Fails the first time on each engine (the engine's namespace remembers)."""
    global seen
    if not globals().get("seen"):
        seen = True
        raise RuntimeError("first call on this engine fails")
    return x * x


def main():
    with minipar.Cluster(n=4) as rc:
        # ---- the multiengine interface
        mec = client.MultiEngineClient(client=rc)   # or MultiEngineClient(profile=...)
        print("engines:", mec.get_ids())
        mec.execute("import math")
        mec.push(dict(a=5, b=10))
        print("pull a, b:", mec.pull(("a", "b")))
        mec["c"] = 2                                 # the dictionary interface
        print("c on each engine:", mec["c"])
        print(mec.execute("print(a * b * c)"))       # the <Results List>, with stdout

        mec.scatter("x", range(16))
        mec.execute("y = [math.sqrt(v) for v in x]")
        print("gathered:", [round(v, 2) for v in mec.gather("y")][:6], "...")
        print("map:", mec.map(lambda v: v ** 2, range(8)))

        @mec.parallel()                              # applied element-wise, in parallel
        def tenfold(v):
            return 10 * v

        print("@parallel:", tenfold(range(8)))

        pr = mec.execute("import time; time.sleep(0.2); d = 42", block=False)
        print("a PendingResult:", pr)
        pr.get_result()                               # blocks until done
        print("d:", mec.pull("d", targets=0))

        # ---- the task interface
        tc = client.TaskClient(client=rc)
        taskids = [tc.run(client.StringTask("b = a ** 2", push={"a": n}, pull="b"))
                   for n in range(12)]
        tc.barrier(taskids)
        results = [tc.get_task_result(t) for t in taskids]
        print("StringTask results:", [r.ns.b for r in results])
        print("one of them:", results[7], f"(engine {results[7].engineid})")

        tid = tc.run(client.MapTask(flaky_square, args=(9,), retries=len(rc.ids)))
        print("MapTask with retries:", tc.get_task_result(tid, block=True))
        print("tc.map:", tc.map(lambda v: v + 1, range(6)))
        print("queue status:", tc.queue_status())


if __name__ == "__main__":
    main()
