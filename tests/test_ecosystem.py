"""minipar in the ecosystem, each integration against the real library: the
concurrent.futures Executor, asyncio, progress bars (tqdm and the plain one), output
streamed while tasks run, timelines (matplotlib) and the joblib backend.

The cluster is the conftest's ``shared_cluster``: a controller and four engines started
with ``python -m`` once for the module, stopped by pid after its last test. ``async with
Cluster`` starts its own, and records its pids with test_launcher's ``pids`` fixture,
which kills any left behind.
"""

import asyncio
import concurrent.futures as cf
import io
import os
import sys
import time
import warnings

import pytest

import minipar
from minipar import integrations
from minipar.launcher import Cluster

from .helpers import wait_until
from .test_launcher import CTL_ARGS, minipar_dir, pids  # noqa: F401 (fixtures)

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)
WAIT_S = 60   # bound on any single wait below; the module TIMEOUT bounds the test


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster: no test here kills, stops or reconfigures an engine, and
    what one leaves running it cancels (aborted on the engine)."""
    return shared_cluster.rc


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def getpid_of(x):
    return os.getpid(), x * x


def mark_then_sleep(folder, i):
    open(os.path.join(folder, str(i)), "w").close()   # "I am running"
    time.sleep(60)


@pytest.fixture
def no_tqdm(monkeypatch):
    """tqdm as if not installed: ``from tqdm.auto import tqdm`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


# ---------------------------------------------------------------- executor

def test_executor_futures_work_with_wait_and_as_completed(rc):
    with rc.executor() as ex:
        assert isinstance(ex, cf.Executor)
        fs = [ex.submit(sleep_then, 0.01 * (i % 3), i) for i in range(12)]
        done, not_done = cf.wait(fs, timeout=WAIT_S)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=WAIT_S)) == list(range(12))
        first = ex.submit(sleep_then, 0, "fast")
        done, _ = cf.wait([first, ex.submit(sleep_then, 30, "slow")], timeout=WAIT_S,
                          return_when=cf.FIRST_COMPLETED)
        assert first in done
        ex.shutdown(wait=False, cancel_futures=True)   # the slow one is not waited for
    rc.abort()   # which cancel_futures lets run on: not for the tests after this one


def test_executor_keywords_and_errors(rc):
    ex = rc[:].executor
    assert ex.submit(dict, fn=1, f=2, args=3).result(WAIT_S) == {"fn": 1, "f": 2, "args": 3}
    with pytest.raises(ZeroDivisionError):
        ex.submit(lambda: 1 / 0).result(WAIT_S)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(abs, -1)


def test_direct_view_executor_keeps_its_targets(rc):
    with rc[[1, 2]].executor as ex:
        fs = [ex.submit(sleep_then, 0.01, i) for i in range(16)]
        cf.wait(fs, timeout=WAIT_S)
    assert {f.engine_id for f in fs} <= {1, 2}
    assert [f.result() for f in fs] == list(range(16))


def test_executor_map_in_order_with_chunks_and_timeout(rc):
    with rc.load_balanced_view().executor as ex:
        assert list(ex.map(pow, range(20), [2] * 20)) == [i * i for i in range(20)]
        assert list(ex.map(pow, range(20), [2] * 20, chunksize=6)) == [i * i for i in range(20)]
        results = ex.map(sleep_then, [30], [None], timeout=0.5)
        with pytest.raises(cf.TimeoutError):
            next(results)
        with pytest.raises(ValueError):
            ex.map(abs, [1], chunksize=0)
        rc.abort()   # the sleep started: cancel lets it run on, shutdown would wait for it
        ex.shutdown(cancel_futures=True)


def test_executor_shutdown_cancels_futures_and_frees_the_engines(rc, tmp_path):
    ex = rc.executor()
    running = [ex.submit(mark_then_sleep, str(tmp_path), i) for i in range(4)]
    # each engine is in the middle of one, and said so
    wait_until(lambda: len(os.listdir(tmp_path)) == 4, WAIT_S, "a task running on each engine")
    wait_until(lambda: all(f.running() for f in running), WAIT_S, "the engines said they started")
    queued = [ex.submit(sleep_then, 60, i) for i in range(20)]
    # as concurrent.futures documents it: only what has not started is cancelled
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not any(f.cancel() or f.cancelled() for f in running)
    with pytest.raises(cf.CancelledError):
        queued[0].result()
    rc.abort(running)   # abort() still interrupts running tasks
    # the queued ones aborted on the engines too: they are free again well before the
    # sleeps would end
    assert rc[:].apply_async(abs, -3).get(WAIT_S) == [3, 3, 3, 3]
    assert not rc.queue_status()["unassigned"]


def test_a_reply_that_comes_as_a_result_is_cancelled_leaves_it_cancelled(rc):
    """One engine's apply and a load-balanced task: the result is the request's own
    future, which the client's I/O thread settles when the reply comes. A reply that
    comes just as it is cancelled (set here by hand, as that thread would) is dropped."""
    for ar in (rc[0].apply_async(sleep_then, 30, 1),
               rc.load_balanced_view().apply_async(sleep_then, 30, 1)):
        assert ar.cancel()
        ar.set_result("late")
        ar.set_exception(RuntimeError("late"))
        assert ar.cancelled() and ar.done()
        with pytest.raises(cf.CancelledError):
            ar.result()
    # cancel() interrupts neither if its engine had started it; rc.abort() does (warning
    # if the cancel came first for both): the engines are free well before the sleeps end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rc.abort()
    assert rc[:].apply_async(abs, -3).get(WAIT_S / 6) == [3] * len(rc)


def test_cancel_after_the_result_is_false(rc):
    ar = rc.load_balanced_view().apply_async(abs, -1)
    assert ar.get(WAIT_S) == 1
    assert not ar.cancel()
    assert ar.result() == 1


# ---------------------------------------------------------------- asyncio

def test_asyncio_gathers_100_tasks(rc):
    lview = rc.load_balanced_view()

    async def main():
        ars = [lview.apply_async(pow, i, 2) for i in range(100)]
        results = await asyncio.wait_for(asyncio.gather(*ars), WAIT_S)
        wrapped = await asyncio.wrap_future(lview.apply_async(abs, -7))
        direct = await rc[:].apply_async(abs, -1)
        return results, wrapped, direct

    results, wrapped, direct = asyncio.run(main())
    assert results == [i * i for i in range(100)]
    assert wrapped == 7
    assert direct == [1, 1, 1, 1]


def test_a_coroutine_awaits_wait_for_engines_block_false(rc):
    """``await rc.wait_for_engines(n, block=False)``, as ipyparallel's Cluster docs write it
    (start_and_connect's), gives the ids without blocking the event loop; it raised
    TypeError: object Future can't be used in 'await' expression. asyncio.wrap_future
    around it (what ipyparallel's code does) still works, as does its result()."""
    async def main():
        ids = await rc.wait_for_engines(4, block=False)
        wrapped = await asyncio.wrap_future(rc.wait_for_engines(4, block=False))
        with pytest.raises(minipar.TimeoutError, match="wanted 5"):
            await rc.wait_for_engines(5, timeout=0.1, block=False)
        return ids, wrapped

    assert asyncio.run(main()) == ([0, 1, 2, 3], [0, 1, 2, 3])
    assert rc.wait_for_engines(4, block=False).result(WAIT_S) == [0, 1, 2, 3]


def test_asyncio_wait_takes_async_results(rc):
    """``done, pending = await asyncio.wait(ars, return_when=FIRST_COMPLETED)``, a common
    asyncio idiom, with AsyncResults: Python 3.11's asyncio.wait adds its callback to each
    as to an asyncio future; run in the client's I/O thread, it woke no loop, so the wait
    hung (here: until the module's timeout), and then it failed: 'AsyncResult' object has
    no attribute 'remove_done_callback'."""
    lview = rc.load_balanced_view()

    async def main():
        quick = [lview.apply_async(abs, -i) for i in range(3)]
        done, pending = await asyncio.wait(quick)   # no timeout: a timer would wake the loop
        assert done == set(quick) and not pending
        slow, first = rc[0].apply_async(time.sleep, 60), rc[1].apply_async(abs, -1)
        try:
            done, pending = await asyncio.wait([slow, first],
                                               return_when=asyncio.FIRST_COMPLETED)
            assert done == {first} and pending == {slow}
            assert slow.remove_done_callback(print) == 0   # asyncio's are gone already
        finally:
            slow.abort()
        return [f.result() for f in quick]

    assert asyncio.run(main()) == [0, 1, 2]


def test_await_raises_the_remote_error(rc):
    async def main():
        return await rc.load_balanced_view().apply_async(lambda: 1 / 0)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(main())


def test_cluster_async_with(pids):  # noqa: F811 - the fixture
    cluster = Cluster(n=2, controller_args=CTL_ARGS)

    async def main():
        async with cluster as rc:
            pids.add_cluster(cluster, rc)
            return await rc[:].apply_async(abs, -2)

    try:
        assert asyncio.run(main()) == [2, 2]
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


# ---------------------------------------------------------------- progress

def test_wait_interactive_plain_bar_reads_done_total_rate_and_time_left(rc, capsys, no_tqdm):
    ar = rc.load_balanced_view().map(sleep_then, [0.1] * 12, range(12), chunksize=1)
    assert ar.wait_interactive(interval=0.02, timeout=WAIT_S) is None and ar.done()
    err = capsys.readouterr().err
    frames = err.split("\r")
    last = frames[-1].strip()
    assert last.startswith("sleep_then: 100%|") and "12/12 [" in last, err
    assert "tasks/s]" in last
    assert err.endswith("\n")
    # drawn in place several times, with the time left once the rate is known
    assert len(frames) > 3
    assert any("/12 [" in f and "<00:" in f for f in frames[1:]), err


def test_wait_interactive_uses_tqdm(rc, capsys):
    import tqdm  # noqa: F401 - installed in CI: the bar below is tqdm's

    ar = rc.load_balanced_view().map(sleep_then, [0.05] * 8, range(8), chunksize=1)
    assert ar.wait_interactive(interval=0.02, timeout=WAIT_S) is None and ar.done()
    err = capsys.readouterr().err
    assert "8/8" in err and "tasks/s" in err and "100%" in err, err


def test_wait_interactive_timeout(rc, no_tqdm, capsys):
    ar = rc.load_balanced_view().apply_async(sleep_then, 30, None)
    assert ar.wait_interactive(interval=0.05, timeout=0.3) is None and not ar.done()
    assert "0/1" in capsys.readouterr().err
    ar.abort()


def test_wait_for_engines_shows_a_bar_when_asked(local_cluster, capsys, no_tqdm):
    rc = local_cluster.client()
    local_cluster.start_engines(2)
    assert rc.wait_for_engines(2, timeout=WAIT_S, progress=True) == [0, 1]
    err = capsys.readouterr().err
    assert "engines: 100%|" in err and "2/2" in err, err
    rc.wait_for_engines(2, timeout=WAIT_S)   # not interactive here (captured): silent
    assert capsys.readouterr().err == ""


def test_serial_and_wall_time(rc):
    ar = rc.load_balanced_view().map(sleep_then, [0.2] * 8, range(8), chunksize=1)
    ar.wait(WAIT_S)
    assert ar.progress == len(ar) == 8
    assert ar.serial_time >= 8 * 0.2       # each task slept 0.2 s at least
    assert ar.wall_time >= 0.2
    assert ar.elapsed >= ar.wall_time - 1e-6


# ---------------------------------------------------------------- output

LONG = "x" * 150_000   # more than one stream message holds: sent in pieces


def chatty(flag):
    print("first line")   # no flush: the engine streams on its own
    print(LONG)
    print("to stderr", file=sys.stderr)
    wait_until(lambda: os.path.exists(flag), 60, "the test's go flag")   # on the engine
    print("last line")
    return "done"


def test_output_streams_while_the_task_runs_and_is_not_duplicated(rc, tmp_path):
    flag = tmp_path / "go"
    ar = rc.load_balanced_view().apply_async(chatty, str(flag))

    def streamed():
        # the task ends only when the flag exists, which is written once the output is seen
        assert not ar.done(), ar.get()
        return LONG in ar.stdout and "to stderr" in ar.stderr

    wait_until(streamed, WAIT_S, "the output streamed while the task runs")
    assert ar.engine_id in rc.ids   # known from the stream, before the reply
    flag.write_text("")
    assert ar.get(WAIT_S) == "done"
    # the final output replaced the stream
    assert ar.stdout == "first line\n" + LONG + "\nlast line\n"
    assert ar.stderr == "to stderr\n"


def leave_a_thread_that_prints(flag):
    import threading

    def later():   # once the test has seen the task end
        wait_until(lambda: os.path.exists(flag), 60, "the test's go flag")   # on the engine
        print("printed after the task")
        print("and to stderr", file=sys.stderr, flush=True)

    threading.Thread(target=later, daemon=True).start()
    print("in the task")
    return "done"


def test_what_a_tasks_thread_prints_after_it_returned_is_added_to_its_output(rc, tmp_path):
    """What a thread a task started printed after the task had returned went to its
    engine's log alone: its client never saw it. As in ipyparallel (whose engines send it
    with the last request's header), it is added to that task's output, ar.stdout growing
    after the task finished; the engine's next task gets none of it."""
    flag = tmp_path / "go"
    ar = rc[0].apply_async(leave_a_thread_that_prints, str(flag))
    assert ar.get(WAIT_S) == "done"
    assert (ar.stdout, ar.stderr) == ("in the task\n", "")
    flag.write_text("")
    wait_until(lambda: ar.stderr, WAIT_S, "the thread's output after the task")
    assert ar.stdout == "in the task\nprinted after the task\n"
    assert ar.stderr == "and to stderr\n"
    after = rc[0].apply_async(print, "the next task")
    assert after.get(WAIT_S) is None
    assert (after.stdout, after.stderr) == ("the next task\n", "")


MANY_LINES = 100_000   # 200,000 writes: a string added to at each cost the engine minutes


def prolix(flag):
    for _ in range(MANY_LINES):
        print("y" * 99)
    wait_until(lambda: os.path.exists(flag), 60, "the test's go flag")   # on the engine
    return "done"


def test_many_small_writes_stream_promptly(rc, tmp_path):
    flag = tmp_path / "go"
    ar = rc.load_balanced_view().apply_async(prolix, str(flag))
    # 100 characters a line: all of it streamed while the task waits for the flag
    wait_until(lambda: len(ar.stdout) == 100 * MANY_LINES, WAIT_S,
               "the output of 100,000 prints streamed while the task runs")
    flag.write_text("")
    assert ar.get(WAIT_S) == "done"


def voluble(flag):
    for _ in range(400):
        print("z" * 249_999)   # 100 MB in all, in 250 kB writes
    wait_until(lambda: os.path.exists(flag), 60, "the test's go flag")   # on the engine
    return "done"


def test_a_long_output_reaches_the_client_promptly(rc, tmp_path):
    # the client added each 64 KiB piece to the text so far: 100 MB took it 34 s here,
    # against 1.5 s now (the bound: 20 times that)
    flag = tmp_path / "go"
    ar = rc.load_balanced_view().apply_async(voluble, str(flag))
    wait_until(lambda: len(ar.stdout) == 100_000_000, 30,
               "100 MB of output streamed while the task runs")
    assert ar.metadata["stdout"] == "z" * 249_999 + "\n" + ar.stdout[250_000:]
    flag.write_text("")
    assert ar.get(WAIT_S) == "done" and len(ar.stdout) == 100_000_000   # once, not twice


def talk(n):
    for i in range(n):
        print(f"line {i}")
        time.sleep(0.05)
    print("oops", file=sys.stderr)
    print("no newline at the end", end="")


def test_stream_output_prefixes_each_line_once(rc):
    ar = rc[[0, 2]].apply_async(talk, 3)
    out = io.StringIO()
    assert ar.stream_output(interval=0.02, timeout=WAIT_S, file=out)
    lines = out.getvalue().splitlines()
    for eid in (0, 2):
        assert [x for x in lines if x.startswith(f"[stdout:{eid}]")] == [
            f"[stdout:{eid}] line 0", f"[stdout:{eid}] line 1", f"[stdout:{eid}] line 2",
            f"[stdout:{eid}] no newline at the end"]
        assert f"[stderr:{eid}] oops" in lines
    assert len(lines) == 10


def logs(configure):
    import logging

    if configure:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    logging.getLogger("mylib").warning("careful")
    logging.getLogger("__main__").warning("from a script")   # its getLogger(__name__)
    logging.getLogger("mylib").info("detail")
    return "done"


def test_what_a_task_logs_reaches_its_stderr_as_in_ipyparallel(local_cluster):
    """What a task logged (a library's warnings, say) went to the engine's log file, not
    to the client: the engine had set up the root logger for its own lines. As in
    ipyparallel and a notebook, it now reaches the task's stderr: by logging's last
    resort (WARNING and above) until a task sets logging up, then as that set it, in
    later tasks too; the engine's own lines stay in its log."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, WAIT_S)
    first, configured, later = (rc[eid].apply_async(logs, c) for c in (False, True, False))
    assert [ar.get(WAIT_S) for ar in (first, configured, later)] == ["done"] * 3
    assert first.stderr == "careful\nfrom a script\n"
    assert configured.stderr == later.stderr == (
        "WARNING:mylib:careful\nWARNING:__main__:from a script\nINFO:mylib:detail\n")
    log = local_cluster.output("engine0")
    assert "registered as engine" in log and "careful" not in log and "script" not in log


def test_display_outputs(rc, capsys):
    ar = rc[:].execute("print('hi'); import sys; print('warn', file=sys.stderr)")
    ar.wait(WAIT_S)
    ar.display_outputs()
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"[stdout:{e}] hi" for e in rc.ids]
    assert err.splitlines() == [f"[stderr:{e}] warn" for e in rc.ids]


def shows_html():
    before = "IPython" in sys.modules
    from IPython.display import HTML, display

    display(HTML("<b>bold</b>"), {"k": 1})
    print("printed")
    return before


def test_ipython_display_in_a_task_is_display_data_in_ar_outputs(local_cluster):
    """``IPython.display.display(obj)`` in a task printed the object's str (IPython's
    display prints where no shell runs): ``<IPython.core.display.HTML object>``, its
    html lost. As in ipyparallel, each object's display data (text/plain and its other
    mime types) goes to ``ar.outputs``, which display_outputs() shows; the engine imports
    IPython only once a task does, as this one (its first) does."""
    pytest.importorskip("IPython")
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, WAIT_S)
    ar = rc[eid].apply_async(shows_html)
    assert ar.get(WAIT_S) is False   # IPython not imported by the engine before the task
    assert ar.stdout == "printed\n"
    assert ar.outputs == [
        {"data": {"text/plain": "<IPython.core.display.HTML object>",
                  "text/html": "<b>bold</b>"}, "metadata": {}},
        {"data": {"text/plain": "{'k': 1}"}, "metadata": {}}]
    shown = io.StringIO()
    ar.display_outputs(file=shown)
    # one engine's result (rc[eid]): no [stdout:0] nor [output:0], as ipyparallel's
    assert shown.getvalue() == "printed\n<IPython.core.display.HTML object>\n{'k': 1}\n"
    ar = rc[[eid]].apply_async(shows_html)   # a list of one: prefixed
    ar.get(WAIT_S)
    shown = io.StringIO()
    ar.display_outputs(file=shown)
    assert shown.getvalue() == (f"[stdout:{eid}] printed\n[output:{eid}]\n"
                                "<IPython.core.display.HTML object>\n{'k': 1}\n")


# ---------------------------------------------------------------- timelines

def test_timeline_png_and_svg_show_engines_tasks_and_totals(rc, tmp_path):
    ar = rc.load_balanced_view().map(sleep_then, [0.02, 0.1] * 10, range(20), chunksize=1)
    ar.wait(WAIT_S)
    png = tmp_path / "t.png"
    fig = ar.timeline(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"engine {e}" for e in rc.ids]
    assert len(ax.patches) == 20                         # one bar per task
    assert "20 tasks on 4 engines" in ax.get_title()
    assert ax.get_xlabel().startswith("seconds")
    svg = tmp_path / "t.svg"
    minipar.plot_timeline(ar, str(svg), title="my run")
    assert b"<svg" in svg.read_bytes()[:500]


def test_timeline_without_a_file_and_with_failures(rc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lview = rc.load_balanced_view()
    ok = lview.map(sleep_then, [0.01] * 4, range(4), chunksize=1)
    bad = lview.apply_async(lambda: 1 / 0)
    cf.wait([ok, bad], timeout=WAIT_S)
    fig = minipar.plot_timeline([ok, bad])
    try:
        ax = fig.axes[0]
        assert len(ax.patches) == 5
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["task", "failed attempt"]
    finally:
        plt.close(fig)


def test_timeline_needs_matplotlib_and_says_so(rc, monkeypatch):
    ar = rc.load_balanced_view().apply_async(abs, -1)
    ar.wait(WAIT_S)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        ar.timeline()


# ---------------------------------------------------------------- joblib (no scikit-learn)

def test_joblib_backend_runs_on_the_engines(rc):
    import joblib

    minipar.register_joblib_backend("minipar-test", view=rc.load_balanced_view())
    with joblib.parallel_backend("minipar-test"):
        assert joblib.effective_n_jobs(-1) == 4
        out = joblib.Parallel()(joblib.delayed(getpid_of)(i) for i in range(50))
        gen = joblib.Parallel(return_as="generator")(joblib.delayed(abs)(-i) for i in range(10))
        assert list(gen) == list(range(10))
    assert [sq for _, sq in out] == [i * i for i in range(50)]
    engine_pids = set(rc[:].apply_sync(os.getpid))
    assert {pid for pid, _ in out} <= engine_pids
    assert os.getpid() not in engine_pids


def test_joblib_errors_propagate_and_view_registration(rc):
    import joblib

    rc[[1, 3]].register_joblib_backend("minipar-direct")
    with joblib.parallel_backend("minipar-direct"):
        assert joblib.effective_n_jobs() == 2
        pids_seen = joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(20))
        with pytest.raises(ZeroDivisionError):
            joblib.Parallel()(joblib.delayed(divmod)(1, i) for i in (3, 2, 0, 1))
    assert set(pids_seen) <= set(rc[[1, 3]].apply_sync(os.getpid))


# ---------------------------------------------------------------- optional libraries

def test_integrations_stay_silent_without_their_libraries(tmp_path):
    """Without joblib, tqdm and matplotlib, ``import minipar`` works and nothing of
    them is imported; the progress bar falls back to the plain one."""
    code = (
        "import sys\n"
        "for m in ('joblib', 'tqdm', 'matplotlib'): sys.modules[m] = None\n"
        "import minipar\n"
        "from minipar import integrations\n"
        "assert minipar.plot_timeline and minipar.register_joblib_backend\n"
        "assert isinstance(integrations._progress_bar(3, 'x', 'tasks'), integrations._TextBar)\n"
        "print('ok')\n")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=WAIT_S, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert "x:   0%|" in r.stderr


def test_plain_bar_format():
    out = io.StringIO()
    bar = integrations._TextBar(4, "map", "tasks", file=out)
    bar.update(2)
    bar.close()
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("map:  50%|############            | 2/4 [00:00<")
    assert line.rstrip().endswith("tasks/s]") and out.getvalue().endswith("\n")
