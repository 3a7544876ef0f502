"""ipyparallel 9's own documentation examples, run on minipar with one line changed.

Run it as it is: ``python examples/from_ipyparallel.py``.

Each function below is a snippet from ipyparallel's documentation (the README's first
example, the tutorial's pages on the direct and task interfaces and on the AsyncResult,
the "futures" and "asyncio" usage, the Cluster API) with ``import ipyparallel as ipp``
replaced by ``import minipar as ipp`` and nothing else changed, except where a comment
says so: the tutorial pages assume a cluster started beforehand with ``ipcluster start``
and connect with ``rc = ipp.Client()``; here they receive the ``rc`` of a cluster this
script starts, with two engines (the documentation asks for four).
"""

import asyncio
import os
import time
from concurrent.futures import as_completed

import minipar as ipp


def readme_first_example():
    """The README's and docs' front page: a cluster, a map_async, wait_interactive."""
    task_durations = [1] * 25
    # request a cluster
    with ipp.Cluster() as rc:
        # get a view on the cluster
        view = rc.load_balanced_view()
        # submit the tasks
        asyncresult = view.map_async(time.sleep, task_durations)
        # wait interactively for results
        asyncresult.wait_interactive()
        # retrieve actual results
        result = asyncresult.get()
    # at this point, the cluster processes have been shutdown
    assert result == [None] * 25
    print("front page: 25 tasks done, cluster stopped")


def direct_interface(rc):
    """Tutorial, "The IPython direct interface"."""
    dview = rc[:]
    dview.block = True
    # parallel map
    serial_result = list(map(lambda x: x ** 10, range(32)))
    parallel_result = dview.map_sync(lambda x: x ** 10, range(32))
    assert serial_result == parallel_result

    # remote function decorators
    @dview.remote(block=True)
    def getpid():
        import os
        return os.getpid()

    pids = getpid()
    assert len(set(pids)) == len(rc.ids) and os.getpid() not in pids

    @dview.parallel(block=True)
    def pmul(A, B):   # the docs multiply numpy arrays: A * B
        return [a * b for a, b in zip(A, B)]

    assert pmul(list(range(8)), list(range(8))) == [i * i for i in range(8)]

    # apply, blocking and not
    dview["a"] = 5
    dview["b"] = 10
    assert dview.apply_sync(lambda x: a + b + x, 27) == [42] * len(rc.ids)  # noqa: F821

    def wait(t):
        import time
        tic = time.time()
        time.sleep(t)
        return time.time() - tic

    ar = dview.apply_async(wait, 0.2)
    assert not ar.ready()
    assert all(t >= 0.2 for t in ar.get())
    ar1 = dview.apply_async(wait, 0.1)
    ar2 = dview.apply_async(wait, 0.2)
    rc.wait([ar1, ar2])
    assert ar1.ready() and ar2.ready()

    # block and targets
    dview.block = False
    ar = dview.apply(lambda: 5)
    assert ar.get() == [5] * len(rc.ids)
    dview.block = True
    rc[0].execute("c = a + b")
    assert rc[0]["c"] == 15

    # push and pull, the dictionary interface
    dview.push(dict(msg="Hi, there"))
    assert dview.pull("msg") == ["Hi, there"] * len(rc.ids)
    dview.push(dict(c="speed"))
    assert dview.pull(("a", "b", "c")) == [[5, 10, "speed"]] * len(rc.ids)
    ar = dview.push(dict(c=1), block=False)
    ar.get()
    dview["d"] = "hello"
    assert dview["d"] == ["hello"] * len(rc.ids)

    # scatter and gather
    dview.scatter("a", range(16))
    assert dview["a"][0] == list(range(16 // len(rc.ids)))
    assert list(dview.gather("a")) == list(range(16))

    # execute, with sync_imports
    with dview.sync_imports():
        import math  # noqa: F401
    dview.execute("x = math.sqrt(16)")
    assert dview["x"] == [4.0] * len(rc.ids)
    print("direct interface: map, remote, parallel, apply, push/pull, scatter/gather ok")


def task_interface(rc):
    """Tutorial, "The IPython task interface" (load balancing, dependencies)."""
    lview = rc.load_balanced_view()
    lview.block = True
    serial_result = list(map(lambda x: x ** 10, range(32)))
    parallel_result = lview.map(lambda x: x ** 10, range(32))
    assert serial_result == parallel_result

    @lview.parallel()
    def f(x):
        return 10.0 * x ** 4

    assert f.map(range(32)) == [10.0 * x ** 4 for x in range(32)]

    # functional dependencies
    @ipp.require("os")
    def mypid():
        return os.getpid()

    assert lview.apply_sync(mypid) != os.getpid()

    @ipp.require(time)
    def naptime(t):
        time.sleep(t)
        return t

    assert lview.apply_sync(naptime, 0.05) == 0.05

    def platform_specific(event):
        import sys
        return sys.platform == event

    @ipp.depend(platform_specific, "linux")
    def linux_only():
        return "linux"

    assert lview.apply_sync(linux_only) == "linux"

    # graph dependencies: after, follow, and temp_flags
    lview.block = False
    ar = lview.apply(naptime, 0.2)
    with lview.temp_flags(after=ar, retries=1):
        ar2 = lview.apply(naptime, 0.01)
    ar2.get()
    assert ar2.metadata["started"] >= ar.metadata["completed"]
    deps = ipp.Dependency([ar.msg_ids[0]], success=True, failure=False)
    with lview.temp_flags(follow=deps):
        ar3 = lview.apply(naptime, 0.01)
    ar3.get()
    assert ar3.metadata["engine_id"] == ar.metadata["engine_id"]
    print("task interface: map, parallel, require, depend, after, follow ok")


def asyncresult_page(rc):
    """Tutorial, "The AsyncResult object": get_dict, metadata, timing, iteration."""
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get_dict()
    rc[:]["pid_map"] = pids
    assert sorted(pids) == sorted(rc.ids)
    assert ar.elapsed > 0 and ar.progress == len(ar) and ar.serial_time >= 0
    assert ar.wall_time >= 0 and ar.metadata[0]["engine_id"] in rc.ids

    # iterable map results (docs/source/examples/itermapresult.py), with a Reference
    dv = rc[:]
    v = rc.load_balanced_view()
    dv.scatter("id", rc.ids, flatten=True)
    assert dv["id"] == rc.ids
    ref = ipp.Reference("id")
    tic = time.time()
    ar = dv.apply(time.sleep, ref)
    for i, r in enumerate(ar):
        print("%i: %.3f" % (i, time.time() - tic))

    def sleep_here(t):
        import time
        time.sleep(t)
        return id, t  # noqa: F821 (the engine's `id`)

    amr = v.map(sleep_here, [0.01 * t for t in range(10)], chunksize=4)
    for i, r in enumerate(amr):
        print("task %i on engine %i: %.3f" % (i, r[0], time.time() - tic))
    print("asyncresult: get_dict, timing, Reference, iterating a map ok")


def futures(rc):
    """Futures in IPython Parallel (examples/Futures.ipynb)."""
    def random_norm(n):
        """Generates a 1xN array and computes its 2-norm"""
        import random
        A = [random.random() for _ in range(n)]   # the notebook uses numpy
        return sum(a * a for a in A) ** 0.5

    f = rc[-1].apply(random_norm, 100)
    assert f.result() > 0
    amr = rc[:].map_async(random_norm, [100] * 4)
    assert len(amr.result()) == 4
    # AsyncResults are Futures: as_completed, and an Executor
    ars = [rc.load_balanced_view().apply_async(random_norm, n) for n in range(1, 5)]
    assert sum(1 for _ in as_completed(ars)) == 4
    ex = rc.load_balanced_view().executor
    assert list(ex.map(lambda x: x * 2, range(8))) == [x * 2 for x in range(8)]
    ex = rc.executor()
    assert ex.submit(pow, 2, 5).result() == 32
    print("futures: result, as_completed, executor ok")


def asyncio_usage(rc):
    """AsyncResults are awaitable, and work with asyncio (wrap_future, gather)."""
    async def main():
        view = rc.load_balanced_view()
        result = await view.apply_async(pow, 3, 2)
        results = await asyncio.gather(*(view.apply_async(pow, 2, i) for i in range(5)))
        wrapped = await asyncio.wrap_future(view.apply_async(os.getpid))
        return result, results, wrapped

    result, results, wrapped = asyncio.run(main())
    assert result == 9 and results == [1, 2, 4, 8, 16] and wrapped != os.getpid()
    print("asyncio: await, gather, wrap_future ok")


def async_with_cluster():
    """``async with ipp.Cluster()``: the cluster's client, from a coroutine."""
    async def main():
        async with ipp.Cluster(n=2) as rc:
            return await rc[:].apply_async(os.getpid)

    pids = asyncio.run(main())
    assert len(pids) == 2 and os.getpid() not in pids
    print("async with Cluster: ok")


def await_start_and_connect():
    """The Cluster API from a coroutine: ``rc = await cluster.start_and_connect()``, then
    ``await cluster.stop_cluster()``."""
    async def main():
        cluster = ipp.Cluster(n=2)   # the docs: ipp.Cluster(n=4)
        rc = await cluster.start_and_connect()
        try:
            return await rc[:].apply_async(os.getpid)
        finally:
            await cluster.stop_cluster()

    pids = asyncio.run(main())
    assert len(pids) == 2 and os.getpid() not in pids
    print("await start_and_connect: ok")


def output_and_progress(rc):
    """Tutorial: output of execute as it happens, and wait_interactive's progress bar."""
    ar = rc[:].execute("print('hello from', 1 + 1)", block=False)
    ar.get()
    ar.display_outputs()
    ar = rc[:].map_async(time.sleep, [0.1] * 6)
    ar.wait_interactive()
    print("outputs and progress: ok")


def main():
    readme_first_example()
    cluster = ipp.Cluster(n=2)   # the docs: ipp.Cluster(n=4)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(n=2)
        direct_interface(rc)
        task_interface(rc)
        asyncresult_page(rc)
        futures(rc)
        asyncio_usage(rc)
        output_and_progress(rc)
    finally:
        cluster.stop_cluster_sync()
    async_with_cluster()
    await_start_and_connect()
    print("every example ran")


if __name__ == "__main__":
    main()
