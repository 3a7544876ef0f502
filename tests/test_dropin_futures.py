"""ipyparallel's AsyncResult, view flags and data publication, and concurrent.futures'
Future contract, against a real cluster (the conftest's: a controller and four engines,
one for the module, each test with a client of its own).

Written from the documented behaviour: ipyparallel 9 (``sync_imports``, ``use_dill``,
the ``label`` flag, ``return_exceptions``, ``datapub.publish_data`` and ``ar.data``) and
``concurrent.futures.Future`` (``running()``, ``cancel()``, ``Executor.shutdown``).
"""

import concurrent.futures as cf
import contextlib
import datetime
import gc
import io
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref

import pytest

import minipar

from .helpers import absent_in_docs, assert_absent_say_so, wait_until


TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)
WAIT_S = 60   # bound on any single wait below


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def fail_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def publish_steps(n, pause):
    from minipar.datapub import publish_data

    for i in range(n):
        publish_data({"step": i, "of": n})
        time.sleep(pause)
    publish_data({"done": True})
    return n


def mark_then_sleep(folder, i, seconds):
    open(os.path.join(folder, str(i)), "w").close()   # "I am running"
    time.sleep(seconds)
    return i


def mark_then_wait(folder, i, go):
    """Leave mark `i` in `folder`, then run until the test makes file `go` (at most
    WAIT_S): still running whenever the test looks, however slow the machine, where a
    sleep of a second or two could end before a loaded test got there."""
    open(os.path.join(folder, str(i)), "w").close()   # "I am running"
    wait_until(lambda: os.path.exists(go), WAIT_S, f"the test's go file {go}")
    return i


@pytest.fixture
def rc(own_client):
    """A client of its own, on the module's cluster: a fresh cluster per test cost more
    than the tests. Its own client, as these tests count and wait for all of a client's
    requests (rc.abort(), rc.wait()); its engines are left as found, each test waiting for
    or aborting what it started. Those run on their own ``cluster`` leave requests running."""
    return own_client


@pytest.fixture
def marks(tmp_path):
    """A folder where running tasks leave a mark (the cluster's files are in tmp_path)."""
    folder = tmp_path / "marks"
    folder.mkdir()
    return str(folder)


# ---------------------------------------------------------------- views

def test_sync_imports_imports_here_and_on_the_engines(rc, capsys):
    dv = rc[:]
    sys.modules.pop("colorsys", None)
    with dv.sync_imports():
        import colorsys  # noqa: F401
        from json import dumps  # noqa: F401
    out = capsys.readouterr().out
    assert "importing colorsys on engine(s)" in out and "from json import dumps" in out
    assert "colorsys" in sys.modules
    assert dv.apply_sync(lambda: (colorsys.__name__, dumps([1]))) == [("colorsys", "[1]")] * 4


def test_sync_imports_raises_a_local_import_error_and_a_remote_one(rc, capsys):
    with pytest.raises(ImportError):
        with rc[:].sync_imports(quiet=True):
            import this_module_does_not_exist_here  # noqa: F401
    with pytest.raises(Exception, match="ModuleNotFoundError|no_such_module"):
        with rc[:].sync_imports(local=False):
            import no_such_module_anywhere  # noqa: F401
    assert "importing no_such_module_anywhere on engine(s)" in capsys.readouterr().out


def test_use_pickle_sends_functions_by_reference_and_use_cloudpickle_restores(rc):
    dv = rc[:]
    try:
        assert dv.use_pickle().get(WAIT_S) == [None] * 4
        assert dv.apply_sync(abs, -2) == [2] * 4   # importable: travels by reference
        with pytest.raises(Exception, match="use_pickle"):
            dv.apply_sync(lambda: 1)
    finally:
        rc.use_cloudpickle().get(WAIT_S)
    assert dv.apply_sync(lambda: 1) == [1] * 4


def test_use_dill_says_clearly_when_dill_is_missing(rc, monkeypatch):
    monkeypatch.setitem(sys.modules, "dill", None)   # hidden: import dill fails
    with pytest.raises(ImportError, match="pip install dill"):
        rc[:].use_dill()
    with pytest.raises(ImportError, match="pip install dill"):
        rc.use_dill()
    assert rc[:].apply_sync(lambda: 2) == [2] * 4   # nothing changed


def test_use_dill_when_installed(rc):
    pytest.importorskip("dill")
    try:
        rc.use_dill().get(WAIT_S)
        y = 3
        assert rc[:].apply_sync(lambda x: x + y, 1) == [4] * 4
    finally:
        rc.use_cloudpickle().get(WAIT_S)


def test_label_flag_in_metadata_and_db_query(rc):
    lv = rc.load_balanced_view()
    lv.set_flags(label="first")
    ar1 = lv.apply_async(abs, -1)
    with lv.temp_flags(label="second"):
        ar2 = lv.map_async(abs, range(6), chunksize=2)
    ar3 = rc[0].apply_async(abs, -3)
    dv = rc[:]
    with dv.temp_flags(label="direct"):
        ar4 = dv.apply_async(abs, -4)
    for ar in (ar1, ar2, ar3, ar4):
        ar.get(WAIT_S)
    assert lv.label == "first"
    assert ar1.metadata["label"] == "first"
    assert [md["label"] for md in ar2.metadata] == ["second"] * 3
    assert ar3.metadata["label"] is None
    assert {r["msg_id"] for r in rc.db_query({"label": "second"})} == set(ar2.msg_ids)
    assert [r["msg_id"] for r in rc.db_query({"label": "first"}, keys=["label"])] == ar1.msg_ids
    assert {r["msg_id"] for r in rc.db_query({"label": "direct"})} == set(ar4.msg_ids)
    with pytest.raises(TypeError):
        with lv.temp_flags(label=3):
            lv.apply_async(abs, 1)


def test_metadata_keys_read_as_attributes(rc):
    """ipyparallel's metadata is "a dictionary (with attribute access)": md.engine_id."""
    ar = rc.load_balanced_view().apply_async(print, "hi")
    ar.get(WAIT_S)
    md = ar.metadata
    assert md.engine_id == md["engine_id"] in rc.ids and md.stdout == "hi\n"
    assert md.status == "ok" and md.completed >= md.started
    each = rc[:].apply_async(abs, 1)
    each.get(WAIT_S)
    assert [m.engine_id for m in each.metadata] == rc.ids
    with pytest.raises(AttributeError, match="no metadata 'nope'"):
        md.nope


def test_timedelta_measures_between_timestamps_as_ipyparallel(rc):
    """``ar.timedelta(ar.submitted, ar.received)`` (ipyparallel's AsyncResult method, in
    its timing scripts) was an AttributeError: the earliest of the first to the latest of
    the second, or as start_key and end_key pick, for one result's datetimes too."""
    ar = rc[:2].apply_async(time.sleep, 0.2)
    ar.get(WAIT_S)
    span = ar.timedelta(ar.submitted, ar.received)
    assert span == (max(ar.received) - min(ar.submitted)).total_seconds() >= 0.2
    assert ar.timedelta(ar.started, ar.completed, start_key=max, end_key=min) == \
        (min(ar.completed) - max(ar.started)).total_seconds()
    one = rc[0].apply_async(time.sleep, 0.1)
    one.get(WAIT_S)
    assert one.timedelta(one.started, one.completed) == \
        (one.completed - one.started).total_seconds() >= 0.1


def test_metadata_has_ipyparallels_keys(rc):
    """ipyparallel's Metadata always holds its keys ("Metadata keys" in its docs:
    error, execute_input, after, follow, engine_uuid, outputs...): code reading them
    must not get a KeyError. `error` is the request's RemoteError, `after` and `follow`
    the msg_ids its dependencies named, `execute_input` an execute's code, `engine_uuid`
    the engine's id as a str, as db_query answers it."""
    lv = rc.load_balanced_view()
    first = lv.apply_async(abs, -1)
    first.get(WAIT_S)
    with lv.temp_flags(after=[first], follow=minipar.Dependency(first.msg_ids)):
        then = lv.apply_async(abs, -2)
    failed = rc[0].apply_async(lambda: 1 / 0)
    ran = rc[:2].execute("x = 1", block=True)
    assert then.get(WAIT_S) == 2 and [r.data for r in ran.get(WAIT_S)] == [None, None]
    with pytest.raises(minipar.RemoteError):
        failed.get(WAIT_S)
    md = then.metadata
    assert md["after"] == md.follow == first.msg_ids and md["error"] is None
    assert md["execute_input"] is None
    # the str of the engine's id, as rc.db_query answers it
    assert md["engine_uuid"] == str(md["engine_id"]) == str(then.engine_id)
    assert rc.db_query({"msg_id": then.msg_ids[0]}, keys=["engine_uuid"])[0]["engine_uuid"] \
        == md["engine_uuid"]
    assert md["execute_result"] is None and md["outputs"] == []
    assert first.metadata["after"] == first.metadata["follow"] == []
    assert isinstance(failed.metadata["error"], minipar.RemoteError)
    assert failed.metadata.error.ename == "ZeroDivisionError"
    assert failed.error is failed.metadata["error"]   # an AsyncResult reads metadata keys too
    assert [m["execute_input"] for m in ran.metadata] == ["x = 1"] * 2
    assert all(m["error"] is None for m in ran.metadata)


def test_return_exceptions_for_map_and_get(rc):
    lv = rc.load_balanced_view()
    results = lv.map(fail_on_odd, range(6), chunksize=1, return_exceptions=True, block=True)
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 2, 4]
    assert [str(r.evalue) for r in results[1::2]] == ["odd 1", "odd 3", "odd 5"]
    ar = lv.map_async(fail_on_odd, range(6), chunksize=1)
    with pytest.raises(minipar.RemoteError, match="odd 1"):
        ar.get(WAIT_S)
    assert len(ar.get(WAIT_S, return_exceptions=True)) == 6
    # a failed chunk's error stands in for each of its items: the length is the input's
    chunked = lv.map(fail_on_odd, range(6), chunksize=2, return_exceptions=True, block=True)
    assert len(chunked) == 6 and all(isinstance(r, BaseException) for r in chunked)
    direct = rc[:].map(fail_on_odd, [0, 2, 4, 5], return_exceptions=True, block=True)
    assert direct[:3] == [0, 2, 4] and isinstance(direct[3], BaseException)
    one = lv.apply_async(fail_on_odd, 1)
    assert isinstance(one.get(WAIT_S, return_exceptions=True), BaseException)
    assert rc[:].apply_async(fail_on_odd, 1).get(WAIT_S, return_exceptions=True)[0].ename \
        == "ValueError"
    assert lv.apply_async(fail_on_odd, 2).get(WAIT_S, return_exceptions=True) == 2


def test_iterating_a_map_with_return_exceptions_yields_its_errors(rc):
    """ipyparallel's AsyncMapResult iterates as its get() returns: with the map's
    return_exceptions a failed item's error is yielded in its place (for each item of a
    failed chunk) and the iteration goes on, in order or as they finish. It raised the
    first error instead."""
    lv = rc.load_balanced_view()
    for view, kwargs in [(lv, dict(chunksize=1)), (lv, dict(chunksize=2)), (rc[:], {})]:
        ar = view.map_async(fail_on_odd, range(6), return_exceptions=True, **kwargs)
        results = list(ar)
        assert [type(r) for r in results] == [type(r) for r in ar.get(WAIT_S)]
        assert [r for r in results if not isinstance(r, BaseException)] == \
            [r for r in ar.get(WAIT_S) if not isinstance(r, BaseException)]
        assert len(results) == 6 and isinstance(results[1], minipar.RemoteError)
    unordered = list(lv.map_async(fail_on_odd, range(6), chunksize=1, ordered=False,
                                  return_exceptions=True))
    assert sorted(r for r in unordered if not isinstance(r, BaseException)) == [0, 2, 4]
    assert sorted(str(r.evalue) for r in unordered if isinstance(r, BaseException)) == \
        ["odd 1", "odd 3", "odd 5"]
    with pytest.raises(ValueError, match="odd 1"):   # without it: raised, as before
        list(lv.map_async(fail_on_odd, range(6), chunksize=1))


# ---------------------------------------------------------------- data publication

def test_publish_data_updates_ar_data_while_it_runs(rc):
    ar = rc.load_balanced_view().apply_async(publish_steps, 20, 0.1)
    wait_until(lambda: ar.data.get("step", -1) >= 1 or ar.done(), WAIT_S, "no data while running")
    assert not ar.done(), "the data came only with the result"
    assert ar.data["of"] == 20
    assert ar.get(WAIT_S) == 20
    assert ar.data == {"step": 19, "of": 20, "done": True}   # the reply carries the last
    # several requests: one dict each; another client asking later gets it too
    many = rc[:].apply_async(publish_steps, 2, 0)
    many.get(WAIT_S)
    assert many.data == [{"step": 1, "of": 2, "done": True}] * 4
    other = rc.__class__(rc.url_file)
    try:
        later = other.get_result(ar.msg_ids[0])
        assert later.get(WAIT_S) == 20 and later.data == ar.data
    finally:
        other.close()


def test_publish_data_outside_a_task_raises():
    from minipar.datapub import publish_data

    with pytest.raises(RuntimeError, match="inside a task"):
        publish_data({"x": 1})


# ---------------------------------------------------------------- Future contract

def test_running_once_an_engine_started_it(rc, marks, tmp_path):
    lv = rc.load_balanced_view()
    go = tmp_path / "go"
    ar = lv.apply_async(mark_then_wait, marks, "slow", str(go))
    assert not ar.done()
    wait_until(ar.running, WAIT_S, "never running")
    assert ar.metadata["started"] is not None
    assert not ar.cancel(), "a running task cannot be cancelled"
    go.touch()
    assert ar.get(WAIT_S) == "slow"
    assert not ar.running() and ar.done() and not ar.cancelled()
    # a map is running once one of its tasks is
    go.unlink()
    m = lv.map_async(mark_then_wait, [marks] * 4, range(4), [str(go)] * 4, chunksize=1)
    wait_until(m.running, WAIT_S, "the map never running")
    assert not m.cancel()
    go.touch()
    assert m.get(WAIT_S) == [0, 1, 2, 3]
    quick = rc[0].apply_async(abs, -1)   # its reply says it started
    assert quick.get(WAIT_S) == 1 and quick.metadata["started"] is not None
    assert not quick.running()


def test_cancel_false_when_finished_true_when_queued(rc, marks, tmp_path):
    lv = rc.load_balanced_view()
    done = lv.apply_async(abs, -1)
    assert done.get(WAIT_S) == 1
    assert not done.cancel() and not done.cancelled()
    go = tmp_path / "go"
    blockers = [rc[e].apply_async(mark_then_wait, marks, e, str(go)) for e in rc.ids]
    wait_until(lambda: len(os.listdir(marks)) == 4, WAIT_S, "the engines did not start")
    queued = lv.apply_async(sleep_then, 0, "never")
    assert not queued.running()
    assert queued.cancel() and queued.cancelled() and queued.done()
    assert queued.cancel()   # cancel() of a cancelled future is True again
    with pytest.raises(cf.CancelledError):
        queued.result()
    go.touch()
    assert [b.get(WAIT_S) for b in blockers] == rc.ids   # running ones were left alone
    assert rc.wait(timeout=WAIT_S)
    # queued behind a blocker on an engine, its record ends when that engine has said so
    wait_until(lambda: rc.db_query({"msg_id": queued.msg_ids[0]}, ["status"])[0]["status"]
               == "aborted", WAIT_S, "the cancelled task's record aborted")


def test_shutdown_cancel_futures_cancels_only_what_has_not_started(rc, marks, tmp_path):
    ex = rc.executor()
    go = tmp_path / "go"
    running = [ex.submit(mark_then_wait, marks, i, str(go)) for i in range(4)]
    wait_until(lambda: len(os.listdir(marks)) == 4, WAIT_S, "the engines did not start")
    wait_until(lambda: all(f.running() for f in running), WAIT_S, "not running")
    queued = [ex.submit(sleep_then, 60, i) for i in range(8)]

    def go_once_cancelled():   # shutdown(wait=True) cancels, then waits for the running
        try:
            wait_until(lambda: all(f.cancelled() for f in queued), WAIT_S, "the cancel")
        finally:
            go.touch()

    releaser = threading.Thread(target=go_once_cancelled)
    releaser.start()
    ex.shutdown(wait=True, cancel_futures=True)
    releaser.join(WAIT_S)
    assert all(f.cancelled() for f in queued)
    assert sorted(f.result() for f in running) == [0, 1, 2, 3]


def test_cancel_in_a_done_callback_neither_stalls_the_client_nor_lets_them_run(
        rc, marks, tmp_path):
    """The "first one done cancels the rest" pattern: done callbacks run in the client's
    I/O thread, through which the controller's answer to the abort comes, so cancel()
    there sends the abort without waiting for that answer. It waited the client's timeout
    (10 s) per call, all replies held meanwhile, while the queued tasks started."""
    go, first = tmp_path / "go", tmp_path / "first"
    blockers = [rc[e].apply_async(mark_then_wait, marks, e, str(first if e == rc.ids[0] else go))
                for e in rc.ids]
    wait_until(lambda: len(os.listdir(marks)) == 4, WAIT_S, "the engines did not start")
    ex = rc.executor()
    queued = [ex.submit(mark_then_sleep, marks, f"q{i}", 0) for i in range(6)]
    called = threading.Event()
    cancels, took = [], []

    def cancel_the_rest(_):
        began = time.monotonic()
        cancels.extend(f.cancel() for f in queued)
        took.append(time.monotonic() - began)
        called.set()

    blockers[0].add_done_callback(cancel_the_rest)
    first.touch()
    assert called.wait(WAIT_S)
    assert took[0] < 5, f"cancel() in a done callback took {took[0]:.1f} s"
    assert sum(cancels) >= 4, cancels   # engine 0, free, may start one or two meanwhile
    assert rc.queue_status()[rc.ids[0]] is not None   # the client answers at once
    go.touch()
    assert rc.wait(blockers, WAIT_S) and rc.wait(timeout=WAIT_S)
    # one engine 0 started before it said so runs to its end (see the next tests)
    assert len({f"q{i}" for i in range(6)} & set(os.listdir(marks))) <= 2


def _outcome(call):
    """What `call()` returns, or the exception it raises."""
    try:
        return call()
    except Exception as e:
        return e


def test_a_wait_in_a_done_callback_says_why_it_cannot_end(rc):
    """A done callback runs in the I/O thread, the one that would receive what it waits
    for: a wait there (a result, or the controller's answer to a query) raises at once
    saying so. It hung for ever (with a timeout: ended by it, as if the task were slow)."""
    lv = rc.load_balanced_view()
    slow = lv.apply_async(sleep_then, WAIT_S, "slow")
    called = threading.Event()
    seen = []

    def waits(_):
        seen.extend(map(_outcome, (slow.result, lambda: slow.get(0), lambda: rc.wait([slow], 0),
                                   rc.queue_status, lambda: lv.apply_sync(abs, -1))))
        called.set()

    lv.apply_async(abs, -1).add_done_callback(waits)
    assert called.wait(WAIT_S / 2), "a wait in a done callback hung"
    blocked, polled, waited, queried, applied = seen
    assert isinstance(blocked, RuntimeError) and "done callback" in str(blocked)
    assert isinstance(polled, cf.TimeoutError) and waited is False   # a poll is no wait
    assert isinstance(queried, RuntimeError) and "queue_status" in str(queried)
    assert isinstance(applied, RuntimeError)
    # an abort is sent, not waited for: "the first failure aborts the rest" in a callback
    lv.apply_async(abs, -1).add_done_callback(lambda _: slow.abort())
    with pytest.raises(minipar.TaskAborted):
        slow.get(WAIT_S / 2)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_closing_an_executor_map_cancels_the_calls_not_started(rc, marks, chunksize):
    """Executor.map returns a generator, with or without chunks (ProcessPoolExecutor's
    too): close() it, or leave a `with closing(...)` block, and what has not started never
    runs. With chunks it was an itertools.chain, which has no close()."""
    with rc.executor() as ex:
        with contextlib.closing(ex.map(mark_then_sleep, [marks] * 60, range(60),
                                       [0.5] * 60, chunksize=chunksize)) as results:
            assert next(results) == 0
        assert rc.wait(timeout=WAIT_S)
    assert len(os.listdir(marks)) < 40


AT_EXIT = """
import builtins, sys, time, minipar
rc = minipar.Client(sys.argv[1])
lv = rc.load_balanced_view()
results = lv.imap(time.sleep, [0, 30, 30], ordered=False)   # two left running
next(results)
blockers = [lv.apply_async(time.sleep, 5) for _ in range(2)]
queued = [lv.apply_async(abs, -1) for _ in range(3)]
rc.queue_status()   # the burst sent: no flush under way as the interpreter exits
print(*[q.msg_ids[0] for q in queued], flush=True)
if sys.argv[2:] == ["stuck"]:   # as the I/O thread, stopped by finalization in a flush
    import threading
    threading.Thread(target=lambda: (rc._send_lock.acquire(), time.sleep(60)),
                     daemon=True).start()
    time.sleep(0.5)

class AtExit:   # kept in builtins: deleted once the interpreter is finalizing
    def __del__(self):
        began = time.monotonic()
        cancelled = [q.cancel() for q in queued]
        results.close()   # aborts the two still running
        print(all(cancelled), round(time.monotonic() - began, 1), flush=True)

builtins._kept = (AtExit(), rc, queued, results)
"""


def test_a_cancel_at_interpreter_exit_is_sent_without_a_wait(cluster):
    """At exit the client's I/O thread has stopped for good: cancel() and closing an imap
    (a generator finalized then, a __del__) send the abort without waiting for an answer
    that cannot come. Each waited the client's timeout, 10 s."""
    rc = cluster.rc
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", AT_EXIT, cluster.client_file],
                         capture_output=True, text=True, timeout=WAIT_S)
    assert time.monotonic() - began < 20, out.stderr
    ids, summary = out.stdout.splitlines()
    assert summary.split()[0] == "True" and float(summary.split()[1]) < 5, out.stderr
    wait_until(lambda: {r["status"] for r in rc.db_query({"msg_id": {"$in": ids.split()}},
                                                         ["status"])} == {"aborted"},
               WAIT_S, "the tasks cancelled at exit aborted")


def test_an_exit_whose_client_lock_stays_held_ends_saying_what_was_not_aborted(cluster):
    """Finalization stops a daemon thread where it stands: the I/O thread stopped in a
    flush keeps the client's send lock for ever, and a cancel() at exit waited for it for
    ever (the process never ended). It waits a second, once, and says what ran on."""
    out = subprocess.run([sys.executable, "-c", AT_EXIT, cluster.client_file, "stuck"],
                         capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0 and out.stdout.splitlines()[1].split()[0] == "True", out
    assert "the abort of 1 requests could not be sent" in out.stderr, out.stderr


def test_the_waits_that_slipped_through_in_a_done_callback_raise_too(rc, marks):
    """rc.wait(jobs) and a wait on one of ar.futures in a done callback raise at once, as
    ar.result() there does (they waited out their timeout); a blocking call (apply_sync,
    map_sync, a blocking view's apply, execute, push or scatter, a classic client's) there
    raises before it sends, so its task never runs (it raised only once the task was sent:
    execute's code ran, push's names were set)."""
    lv = rc.load_balanced_view()
    slow = lv.map_async(sleep_then, [WAIT_S] * 2, ["slow"] * 2, chunksize=1)
    called = threading.Event()
    seen = []

    def waits(_):
        blocking = rc.load_balanced_view(block=True)
        seen.extend(map(_outcome, (
            lambda: rc.wait([slow], 5), lambda: rc.wait(timeout=5),
            lambda: slow.futures[0].result(5), lambda: slow.futures[1].exception(),
            lambda: slow.exception(5), lambda: lv.apply_sync(mark_then_sleep, marks, "sync", 0),
            lambda: lv.map_sync(mark_then_sleep, [marks], ["map"], [0]),
            lambda: blocking.apply(mark_then_sleep, marks, "flag", 0),
            lambda: rc[:].execute(f"open({marks!r} + '/execute', 'w').close()", block=True),
            lambda: rc[:].push({"pushed_in_a_callback": 1}, block=True),
            lambda: rc.direct_view(block=True).scatter("scattered_in_a_callback", [1, 2]),
            lambda: minipar.MultiEngineClient(client=rc).execute(
                f"open({marks!r} + '/classic', 'w').close()"),
            lambda: minipar.TaskClient(client=rc).map(mark_then_sleep, [marks], ["tc"], [0]),
            lambda: rc.wait([slow], 0), lambda: slow.futures[0].done())))
        called.set()

    lv.apply_async(abs, -1).add_done_callback(waits)
    assert called.wait(3), "a wait in a done callback waited out its timeout"
    *raised, polled, done = seen
    assert all(isinstance(e, RuntimeError) and "done callback" in str(e) for e in raised), seen
    assert polled is False and done is False   # a poll is no wait
    assert lv.apply_async(abs, -2).get(WAIT_S) == 2   # the client still works
    assert os.listdir(marks) == [], "a blocking call in a callback sent its task"
    slow.abort()   # then the engines answer keys()
    names = [n for ns in rc[:].keys(block=True) for n in ns if n.endswith("_callback")]
    assert names == [], "a blocking push or scatter in a callback was sent"


def test_stdlib_wait_and_as_completed_in_a_done_callback_raise_at_once(rc, marks, tmp_path):
    """concurrent.futures.wait and as_completed on minipar futures in a done callback waited
    out their timeout (without one: for ever, the client's replies held): the I/O thread
    that runs callbacks is the one that would settle those futures. They raise at once, as
    ar.result() there does; on futures all done (the callback's own too) they return, as
    a wait with one done and return_when=FIRST_COMPLETED does, and minipar's polls (timeout
    0) still answer."""
    lv = rc.load_balanced_view()
    rc[:].push({"gathered_after_a_callback": [1]}, block=True)
    slow = lv.apply_async(sleep_then, WAIT_S, "slow")
    fut = rc.executor().submit(sleep_then, WAIT_S, None)
    wait_until(lambda: slow.running() and fut.running(), WAIT_S, "the slow tasks to start")
    # a gather's result is computed from its pulls' (a _Derived): two wait behind those tasks
    gathered = rc[:].gather("gathered_after_a_callback", block=False)
    done = lv.apply_async(abs, -3)
    assert done.get(WAIT_S) == 3
    called = threading.Event()
    seen = []

    def first_failure_polled():
        return slow.get(0, return_when=cf.FIRST_EXCEPTION)

    def waits(own):
        seen.extend(map(_outcome, (
            lambda: cf.wait([slow, done], timeout=10),
            lambda: cf.wait([slow.futures[0]], 10, cf.FIRST_EXCEPTION),
            lambda: cf.wait([fut], timeout=10),
            lambda: cf.wait([gathered, done], timeout=10),
            lambda: next(cf.as_completed([done, slow], timeout=10)),
            lambda: next(cf.as_completed([fut, own], timeout=10)),
            lambda: cf.wait([slow, done], 10, cf.FIRST_COMPLETED).done,
            lambda: [f.result() for f in cf.as_completed([own, done], 10)],
            lambda: cf.wait([done, own], timeout=10).not_done,
            # minipar's polls, made with concurrent.futures.wait, are still polls there
            lambda: (slow.wait(0), slow.wait(0, cf.FIRST_COMPLETED).not_done == {slow},
                     rc.wait([slow], 0), type(_outcome(first_failure_polled))))))
        called.set()

    go = tmp_path / "go"   # the callback is added while its task runs: it runs in the I/O thread
    lv.apply_async(mark_then_wait, marks, "trigger", str(go)).add_done_callback(waits)
    go.touch()
    assert called.wait(8), "a stdlib wait in a done callback waited out its timeout"
    *raised, first, all_done, none_left, polls = seen
    assert polls == (False, True, False, minipar.TimeoutError)
    assert all(isinstance(e, RuntimeError) and "in a done callback" in str(e)
               and "concurrent.futures.wait or as_completed" in str(e) for e in raised), seen
    assert first == {done} and sorted(all_done, key=str) == [3, "trigger"] and not none_left
    rc.abort([slow, fut])   # the waits refused left nothing behind: these end as ever
    assert cf.wait([slow, fut, gathered], WAIT_S).not_done == set()
    assert gathered.result() == [1] * len(rc.ids)
    assert [f.exception() is not None for f in cf.as_completed([slow], WAIT_S)] == [True]
    assert lv.apply_async(abs, -2).get(WAIT_S) == 2


def test_a_timeout_of_result_or_exception_says_what_is_outstanding(rc):
    """ar.result(t) and ar.exception(t), an Executor's futures' too, raised a TimeoutError
    with no message at all; they say, as ar.get(t) does, how many requests are left."""
    ar = rc.load_balanced_view().map_async(sleep_then, [WAIT_S] * 2, [None] * 2, chunksize=1)
    fut = rc.executor().submit(sleep_then, WAIT_S, None)
    for wait, n in ((ar.result, 2), (ar.exception, 2), (fut.result, 1), (fut.exception, 1)):
        with pytest.raises(cf.TimeoutError, match=fr"^result not ready after 0\.1 s \({n} of "
                                                  fr"{n} requests outstanding\)$"):
            wait(0.1)
    rc.abort([ar, fut])


def test_abort_of_a_finished_result_raises_as_ipyparallels(rc):
    """ipyparallel's ar.abort() raises RuntimeError once the result is ready; minipar's
    returned None, a warning saying nothing was aborted. cancel() still says False."""
    for view in (rc[0], rc.load_balanced_view()):
        ar = view.apply_async(abs, -1)
        assert ar.get(WAIT_S) == 1
        with pytest.raises(RuntimeError, match="done already.*ar.cancel"):
            ar.abort()
        assert ar.cancel() is False and ar.get() == 1


def test_abort_still_interrupts_a_running_task(rc):
    ar = rc.load_balanced_view().apply_async(sleep_then, 60, None)
    wait_until(ar.running, WAIT_S, "never running")
    ar.abort()
    with pytest.raises(Exception, match="abort"):
        ar.get(WAIT_S)


def test_what_cancel_asks_never_interrupts_a_request_that_started(rc, marks, tmp_path):
    """cancel() aborts with queued_only: a request its engine started before the client
    heard so (running() still False for up to STREAM_INTERVAL_S) runs to its end, while
    the one queued behind it never starts. abort() interrupts both."""
    from minipar.asyncresult import _abort_quietly

    for queued_only, outcome in ((True, "ok"), (False, "aborted")):
        go = tmp_path / f"go-{queued_only}"
        started = rc[0].apply_async(mark_then_wait, marks, queued_only, str(go))
        behind = rc[0].apply_async(sleep_then, 0, "never")
        wait_until(lambda: str(queued_only) in os.listdir(marks), WAIT_S, "never started")
        _abort_quietly(rc, [started, behind], queued_only)
        go.touch()   # the abort answered once the engine marked it: `behind` never starts
        assert rc.wait([started, behind], WAIT_S)
        records = rc.db_query({"msg_id": {"$in": started.msg_ids + behind.msg_ids}},
                              ["msg_id", "status"])
        assert {r["msg_id"]: r["status"] for r in records} == \
            {started.msg_ids[0]: outcome, behind.msg_ids[0]: "aborted"}


def test_a_timeout_not_a_number_is_a_type_error_and_a_negative_one_is_no_limit(rc):
    lv = rc.load_balanced_view()
    done = rc[:].apply_async(abs, -1)
    assert done.get(None) == [1] * 4   # None: no limit, as before
    pending = lv.apply_async(sleep_then, 60, None)   # after: it keeps an engine busy
    out = io.StringIO()

    def waits(ar, timeout):   # every wait that takes a timeout
        return [lambda: ar.get(timeout), lambda: ar.get_dict(timeout), lambda: ar.wait(timeout),
                lambda: ar.stream_output(0.01, timeout, out).wait(),
                lambda: ar.wait_interactive(0.01, timeout), lambda: rc.wait(ar, timeout),
                lambda: lv.wait(ar, timeout=timeout)]

    for bad in ("5", [5], True):
        for ar in (pending, done):   # also where there is nothing to wait for
            for call in waits(ar, bad):
                with pytest.raises(TypeError, match=r"timeout must be a number of seconds "
                                                    r"or None, not (str|list|bool)"):
                    call()
    for call in waits(pending, float("nan")):
        with pytest.raises(ValueError, match="timeout=nan"):
            call()
    for forever in (-1, -0.5):   # ipyparallel's timeout=-1: no limit, as None
        assert [call() for call in waits(done, forever)] == \
            [[1] * 4, {e: 1 for e in rc.ids}, True, True, None, True, True]
    with cf.ThreadPoolExecutor(7) as pool:
        waiting = [pool.submit(call) for call in waits(pending, -1)]
        assert len(cf.wait(waiting, timeout=0.5).not_done) == 7   # none gave up at once
        pending.abort()
        assert not cf.wait(waiting, timeout=WAIT_S).not_done
    assert [type(w.exception()).__name__ for w in waiting[:2]] == ["TaskAborted"] * 2
    assert [w.result() for w in waiting[2:]] == [True, True, None, True, True]


def test_a_name_ipyparallel_has_and_minipar_leaves_out_says_what_to_use_on_a_result(rc):
    """ar.join, ar.owner (every name docs/ipyparallel.rst calls absent on AsyncResult) were a
    bare AttributeError; metadata keys, private names and typos read as before."""
    one, each = rc[0].apply_async(abs, -1), rc[:].apply_async(abs, -1)
    assert one.get(WAIT_S) == 1 and each.get(WAIT_S) == [1] * 4
    for name, says in (("join", r"keep the AsyncResult you split\(\)"),
                       ("owner", "not needed: the client caches no results")):
        with pytest.raises(AttributeError, match=rf"^'AsyncResult' object has no attribute "
                                                 rf"'{name}': minipar leaves ipyparallel's "
                                                 rf"out; {says}"):
            getattr(one, name)
    names = absent_in_docs("AsyncResult")
    assert {"join", "owner"} <= set(names)
    for ar in (one, each):
        assert_absent_say_so(ar, "AsyncResult", names)
        with pytest.raises(TypeError, match="AsyncResult cannot be sent to the engines"):
            pickle.dumps(ar)
    assert one.engine_id == 0 and each.engine_id == rc.ids   # metadata keys still read


def test_a_dropped_finished_result_is_freed(rc):
    lv = rc.load_balanced_view()
    for make in (lambda: lv.apply_async(abs, -1), lambda: rc[0].apply_async(abs, -1),
                 lambda: rc[:].apply_async(abs, -1), lambda: lv.map_async(abs, range(10))):
        ar = make()
        ar.get(WAIT_S)
        ref = weakref.ref(ar)
        del ar
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())


def test_a_held_result_leaves_the_collector_few_objects(rc, marks, tmp_path):
    """A burst of quick tasks holds a result per task, and the garbage collector walks
    every object they keep: a result's objects it tracks must be few (a Future's
    threading.Condition alone was eight, the metadata's empty lists four more). What
    they are for still works: waiting on them, callbacks, and every metadata key."""
    lv, view = rc.load_balanced_view(), rc[0]
    for make in (lambda: lv.apply_async(abs, -1), lambda: view.apply_async(abs, -1)):
        make().get(WAIT_S)
        gc.collect()
        before = len(gc.get_objects())
        held = [make() for _ in range(200)]
        assert all(ar.get(WAIT_S) == 1 for ar in held)
        gc.collect()
        assert (len(gc.get_objects()) - before) / len(held) < 8
    go = tmp_path / "go"
    pending = lv.apply_async(mark_then_wait, marks, "late", str(go))
    called = []
    pending.add_done_callback(called.append)
    assert not cf.wait([pending], timeout=0.01).done
    go.touch()
    assert pending.get(WAIT_S) == "late"
    assert called == [pending] and list(cf.as_completed([pending], WAIT_S)) == [pending]
    assert pending.metadata["attempts"] == pending.metadata.outputs == [] == held[0].after
    # every attribute concurrent.futures reads, on the Pythons to come too (its callbacks'
    # list is a class attribute until the first is added)
    assert set(vars(cf.Future())) <= set(vars(held[0])) | {"_done_callbacks"}


def test_map_len_and_progress_count_items(rc, monkeypatch, capsys):
    ar = rc.load_balanced_view().map_async(abs, range(50), chunksize=7)
    assert len(ar) == 50
    ar.get(WAIT_S)
    assert ar.progress == 50 and len(ar.msg_ids) == 8
    monkeypatch.setitem(sys.modules, "tqdm", None)   # the plain bar, on stderr
    capsys.readouterr()
    assert ar.wait_interactive(interval=0.01, timeout=WAIT_S) is None and ar.done()
    assert "50/50" in capsys.readouterr().err
    direct = rc[:].map_async(abs, range(50))
    direct.get(WAIT_S)
    assert len(direct) == 50 and direct.progress == 50


def test_module_level_use_pickle_changes_this_process_only(rc, monkeypatch):
    import minipar

    dv = rc[:]
    engines_serializer = "__import__('minipar.protocol').protocol._by_value.__name__"
    try:
        assert minipar.use_pickle() is None
        with pytest.raises(Exception, match="use_pickle"):
            dv.apply_sync(lambda: 1)     # refused here, before it leaves
        # eval travels by reference; the engines still send by value with cloudpickle
        assert dv.apply_sync(eval, engines_serializer) == ["cloudpickle"] * 4
    finally:
        minipar.use_cloudpickle()
    assert dv.apply_sync(lambda: 1) == [1] * 4
    monkeypatch.setitem(sys.modules, "dill", None)   # hidden: import dill fails
    with pytest.raises(ImportError, match="pip install dill"):
        minipar.use_dill()
    assert dv.apply_sync(lambda: 2) == [2] * 4      # nothing changed


def test_results_and_metadata_by_index_and_attribute_as_ipyparallel(rc, marks, tmp_path):
    go = tmp_path / "go"
    ar = rc[:].apply_async(mark_then_wait, marks, 3, str(go))
    for too_soon in (lambda: ar[0], lambda: ar.wall_time, lambda: ar.serial_time):
        with pytest.raises(minipar.TimeoutError, match="not ready"):   # not a made-up 0
            too_soon()
    go.touch()
    assert ar.get(30) == [3, 3, 3, 3]
    assert ar[0] == 3 and ar[1:3] == [3, 3] and ar[-1] == 3
    assert ar["engine_id"] == ar.engine_id == [0, 1, 2, 3]
    assert all(s <= c for s, c in zip(ar.started, ar.completed))
    assert ar.submitted == ar["submitted"] and len(ar.received) == 4
    assert ar.wall_time >= ar.serial_time / 4 > 0
    one = rc[1].apply_async(sleep_then, 0, "x")
    assert one.get(30) == "x" and one[0] == "x" and one.engine_id == one["engine_id"] == 1
    assert isinstance(one.completed, datetime.datetime)   # as ipyparallel's
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        one.nonesuch
    mapped = rc.load_balanced_view().map_async(sleep_then, [0] * 6, range(6))
    assert mapped.get(30) == list(range(6)) and mapped[2:4] == [2, 3]


def test_abort_of_all_reaches_a_cancelled_request_its_engine_runs_on(rc, marks):
    """What cancel() leaves when the engine started the request before cancel's abort
    came (made here by cancelling only locally, with no abort sent): the future is
    cancelled and the request runs on. ``rc.abort()``, every unfinished request of this
    client, interrupts it too: its reply has not come."""
    ar = rc[0].apply_async(mark_then_sleep, marks, 0, WAIT_S)
    assert ar._cancel_local() and ar.cancelled()
    wait_until(lambda: os.listdir(marks), WAIT_S, "the request started")
    assert rc.abort() == 1
    assert rc[0].apply_async(abs, -1).get(WAIT_S / 6) == 1   # not when the sleep ends


def test_abort_after_a_cancel_interrupts_what_the_cancel_let_run(rc, marks):
    """cancel() asks the engine to drop the request only if it has not started (sent here
    by hand once it has, as when the engine started it before saying so); ar.abort()
    afterwards interrupts it, load-balanced as direct: the scheduler asks the engine again."""
    from minipar.asyncresult import _abort_quietly

    for i, view in enumerate((rc.load_balanced_view(), rc[0])):
        ar = view.apply_async(mark_then_sleep, marks, i, WAIT_S)
        wait_until(lambda: str(i) in os.listdir(marks), WAIT_S, "the request started")
        _abort_quietly(rc, [ar], queued_only=True)
        ar.abort()
        with pytest.raises(minipar.RemoteError, match="TaskAborted|abort"):
            ar.get(WAIT_S / 6)   # not when the sleep ends
