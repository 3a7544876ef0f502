"""The Task interface end to end: a LoadBalancedView on a real controller and engines
(see conftest), dependencies, retries, recovery, time limits, engine loss, control and
queries (the task-record stores on their own: test_records.py).

Functions sent to engines live at module level here: engines import this module by name
(they run with the project root on their path), except where a test needs them by value.
"""

import itertools
import logging
import os
import pathlib
import random
import re
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import minipar
from minipar import errors, protocol, records
from minipar.dependency import Dependency

from .conftest import START_TIMEOUT_S, LocalCluster, _env
from .helpers import wait_until

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster, for the tests that leave it as they found it (each waits
    for or aborts what it started); the one that kills an engine takes ``cluster``."""
    return shared_cluster.rc

ROOT = str(pathlib.Path(__file__).resolve().parent.parent)


# ---------------------------------------------------------------- engine-side helpers

def square(x):
    return x * x


def add(x, y=0):
    return x + y


def touch(folder, name):
    (folder / str(name)).touch()


def pid():
    return os.getpid()


def nap(x, seconds):
    time.sleep(seconds)
    return x


def held(x, go):
    """Return `x` once the test has made file `go` (at most TIMEOUT s): still running
    whenever the test looks, however loaded the machine."""
    wait_until(lambda: os.path.exists(go), TIMEOUT, f"the test's go file {go}")
    return x


def _in_flight(rc):
    """How many tasks the controller has unassigned, queued on engines or running."""
    status = rc.queue_status()
    return status["unassigned"] + sum(s["queue"] + s["tasks"] for s in status.values()
                                      if isinstance(s, dict))


def _once_warned(warned, action, *args):
    """Call action(*args) in another thread once `warned` (a pytest.warns) holds a
    RuntimeWarning: while a wait that warns as it begins is waiting, where a timer could
    fire before it began on a loaded machine. After TIMEOUT / 4 s it acts all the same,
    so that the wait ends and pytest.warns reports the warning missing."""
    def act():
        try:
            wait_until(lambda: any(issubclass(w.category, RuntimeWarning) for w in warned),
                       TIMEOUT / 4, "the wait's warning")
        finally:
            action(*args)

    threading.Thread(target=act, daemon=True).start()


def always_fails(x):
    raise ValueError(f"always fails ({x})")


def fails_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def fallback(x):
    return ("recovered", x)


def role_is(role):
    return os.environ.get("MINIPAR_TEST_ROLE") == role


@minipar.require("special_mod")
def special_value(x):
    # special_mod is not importable here; @require imports it on the engine
    return special_mod.VALUE + x, os.getpid()  # noqa: F821


@minipar.require("special_mod_nobody_has")
def needs_missing_module():
    return "never"


@minipar.depend(role_is, "special")
def on_special(x):
    return x, os.getpid()


def on_any(x):
    return x, os.getpid()


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def lview(rc):
    return rc.load_balanced_view()


@pytest.fixture
def make_cluster(tmp_path):
    """LocalCluster(s) with controller arguments; all stopped afterwards."""
    made = []

    def make(controller_args=(), engines=0, sub="c"):
        path = tmp_path / sub
        path.mkdir(exist_ok=True)
        c = LocalCluster(path, controller_args)
        made.append(c)
        if engines:
            c.start_engines(engines)
            c.rc = c.client()
            c.rc.wait_for_engines(engines, START_TIMEOUT_S)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


def engine_env(path=None, **variables):
    """An engine's environment: this project, `path` and `variables` added."""
    env = dict(os.environ, **variables)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([path] if path else []))
    return env


def engine_pids(rc, ids):
    """The pids of engines `ids`, asked of the engines themselves."""
    return {eid: rc[eid].apply_sync(pid) for eid in ids}


# ---------------------------------------------------------------- the view

def test_apply_map_and_decorators(lview):
    assert lview.apply_sync(add, 2, y=3) == 5
    ar = lview.apply_async(square, 7)
    assert ar.get(TIMEOUT) == 49 and ar.engine_id in lview.client.ids
    assert lview.map_sync(square, range(10)) == [x * x for x in range(10)]
    assert lview.map_sync(add, range(5), range(5), chunksize=2) == [0, 2, 4, 6, 8]
    ar = lview.map_async(square, range(20), chunksize=1, ordered=False)
    assert sorted(ar) == sorted(x * x for x in range(20))
    assert ar.get(TIMEOUT) == [x * x for x in range(20)]   # get() keeps input order
    assert len(ar.msg_ids) == 20

    @lview.remote(block=True)
    def remote_double(x):
        return 2 * x

    @lview.parallel(block=True)
    def parallel_len(xs):
        return [len(xs)]

    assert remote_double(21) == 42
    assert sum(parallel_len(list(range(40)))) == 40        # blocks of the sequence


def test_engines_that_register_after_a_map_is_sent_share_its_work(local_cluster, tmp_path):
    """A map sent before its engines registered (a script run right after the cluster's
    start; a batch system starting engines as nodes free up) was cut into chunks for the
    engines registered then, four for none: the engines that came later got none of it.
    Its automatic chunks are now at least MAP_MIN_CHUNKS, so as with ipyparallel's one task
    per item, every engine that registers takes a share."""
    rc = local_cluster.client()
    go = str(tmp_path / "go")
    ar = rc.load_balanced_view().map_async(held, range(10), [go] * 10)
    local_cluster.start_engines(5)
    rc.wait_for_engines(5, START_TIMEOUT_S)
    try:   # each engine holds one of its tasks (the others queued, or taken back for it)
        wait_until(lambda: sum(1 for s in rc.queue_status().values()
                               if isinstance(s, dict) and s["tasks"]) == 5,
                   START_TIMEOUT_S, "a task of the map on each of the 5 engines")
    finally:
        pathlib.Path(go).touch()
    assert ar.get(TIMEOUT) == list(range(10))
    assert sorted(set(ar.engine_id)) == rc.ids == [0, 1, 2, 3, 4]


def test_parallel_takes_the_maps_chunksize_ordered_and_return_exceptions(lview):
    @lview.parallel(block=True, chunksize=3, ordered=False)
    def chunk_lens(xs):
        return [len(xs)]

    assert chunk_lens(list(range(8))) == [3, 3, 2]           # a task per 3 items

    checked = lview.parallel(block=True, chunksize=2, return_exceptions=True)(fails_on_three)
    out = checked.map(range(6))
    assert out[:2] + out[4:] == [0, 1, 4, 5]
    assert [type(e).__name__ for e in out[2:4]] == ["ValueError"] * 2   # the chunk's error
    with pytest.raises(ValueError, match=r"dist='c': give 'b' \(contiguous blocks\) or 'r'"):
        lview.parallel(dist="c")(square)
    # a call hands each task a part of each sequence: their lengths must be equal
    with pytest.raises(ValueError, match=r"equal length, but have \[3, 2\]"):
        lview.parallel(block=True)(add)([1, 2, 3], [1, 2])
    assert lview.parallel(block=True)(add).map([1, 2, 3], [10, 20]) == [11, 22]   # as map


def test_a_maps_tasks_leave_a_hundred_to_a_message(lview, monkeypatch, tmp_path):
    """map sends its tasks as batches of client.TOGETHER, not one message each; a task
    that cannot be pickled fails the call, and the ones made before it still run."""
    rc = lview.client
    sent = []
    send = protocol.send
    monkeypatch.setattr(protocol, "send", lambda sock, frames: (
        sent.append(1) if sock is rc._sender else None, send(sock, frames)))
    ar = lview.map_async(square, range(250), chunksize=1)
    assert len(sent) == 3 and len(ar.msg_ids) == 250
    assert ar.get(TIMEOUT) == [x * x for x in range(250)]
    marks = tmp_path / "marks"
    marks.mkdir()
    with pytest.raises(minipar.SerializationError):
        lview.map_sync(touch, [marks] * 3, [1, 2, threading.Lock()], chunksize=1)
    wait_until(lambda: sorted(p.name for p in marks.iterdir()) == ["1", "2"], TIMEOUT,
               "the tasks made before the bad one to run")


def test_flags_are_not_keywords_of_apply(lview):
    def show(**kwargs):
        return kwargs

    # keywords of apply are the function's own, even when named like a flag
    assert lview.apply_sync(show, retries=5, after="x") == {"retries": 5, "after": "x"}
    with lview.temp_flags(retries=3, time_limit=10):
        assert (lview.retries, lview.time_limit) == (3, 10)
    assert (lview.retries, lview.time_limit) == (0, None)
    lview.set_flags(block=True, timeout=5)
    assert lview.apply(square, 3) == 9
    with pytest.raises(KeyError):
        lview.set_flags(retrys=1)


def test_imap_is_lazy_and_bounded(rc, lview):
    pulled = []

    def numbers():
        for i in range(40):
            pulled.append(i)
            yield i

    it = lview.imap(square, numbers(), max_outstanding=3)
    assert pulled == []                      # nothing read before a result is asked for
    assert next(it) == 0
    assert len(pulled) <= 3
    assert list(it) == [x * x for x in range(1, 40)]
    assert sorted(lview.imap(add, range(10), range(10), ordered=False)) == \
        [2 * x for x in range(10)]
    # stopping early aborts what is still in flight (three naps of a minute: only an
    # abort ends them in time), and the engines carry on
    it = lview.imap(nap, range(100), [0] + [60] * 99, max_outstanding=4)
    assert next(it) == 0
    it.close()
    wait_until(lambda: _in_flight(rc) == 0, 30, "the tasks in flight to be aborted")
    assert rc[:].apply_sync(square, 5) == [25] * len(rc.ids)


def test_ctrl_c_while_imap_waits_aborts_every_task_in_flight(rc, lview):
    """A Ctrl-C while imap waits for its next result aborts all it has in flight, the task
    it waits on too (one change dropped that one from its list before the wait: it ran on,
    a minute here)."""
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)   # as at a terminal
    main, n = threading.get_ident(), len(rc.ids)

    def press_ctrl_c():   # once imap waits: it sends only when a result is asked for
        wait_until(lambda: _in_flight(rc) == n, START_TIMEOUT_S, "the naps running")
        signal.pthread_kill(main, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(lview.imap(nap, range(n), [60] * n))
    finally:
        presser.join(START_TIMEOUT_S)
        signal.signal(signal.SIGINT, handler)
    wait_until(lambda: _in_flight(rc) == 0, 30, "every task in flight aborted")
    assert not rc.outstanding


# ---------------------------------------------------------------- graph dependencies

def test_random_dag_of_300_tasks_runs_each_after_its_dependencies(rc, lview):
    rng = random.Random(3)
    deps = {0: []}
    for i in range(1, 300):
        deps[i] = sorted(rng.sample(range(max(0, i - 30), i), rng.randint(0, min(3, i))))
    ars = []
    for i in range(300):
        with lview.temp_flags(after=[ars[j] for j in deps[i]] or None):
            ars.append(lview.apply_async(nap, i, rng.random() * 0.004))
    assert [ar.get(TIMEOUT) for ar in ars] == list(range(300))
    ids = [ar.msg_ids[0] for ar in ars]
    records = {r["msg_id"]: r for r in rc.db_query({"msg_id": {"$in": ids}},
                                                    keys=["started", "completed", "header"])}
    assert len(records) == 300
    edges = 0
    for i in range(300):
        child = records[ids[i]]
        assert sorted(child["header"]["after"]["ids"] if deps[i] else []) == \
            sorted(ids[j] for j in deps[i])
        for j in deps[i]:
            parent = records[ids[j]]
            assert child["started"] >= parent["completed"], (i, j)
            assert ars[i].metadata["started"] >= ars[j].metadata["completed"], (i, j)
            edges += 1
    assert edges > 300


def test_follow_runs_tasks_on_the_engine_of_their_dependency(rc, lview):
    for target in rc.ids[:2]:
        with lview.temp_flags(targets=[target]):
            first = lview.apply_async(pid)
        first.get(TIMEOUT)
        with lview.temp_flags(follow=first):
            followers = [lview.apply_async(pid) for _ in range(8)]
        assert {ar.get(TIMEOUT) for ar in followers} == {first.get()}
        assert {ar.engine_id for ar in followers} == {target}
    # follow any one of two tasks on different engines: one of those two engines
    a, b = rc.ids[:2]
    with lview.temp_flags(targets=[a]):
        ta = lview.apply_async(pid)
    with lview.temp_flags(targets=[b]):
        tb = lview.apply_async(pid)
    with lview.temp_flags(follow=Dependency([ta, tb], all=False)):
        ars = [lview.apply_async(pid) for _ in range(6)]
    assert {ar.get(TIMEOUT) for ar in ars} <= {ta.get(), tb.get()}
    assert {ar.engine_id for ar in ars} <= {a, b}


def test_apply_with_flags_as_the_task_document_shows(rc, lview, tmp_path):
    """The seed's task interface document: ``lview.apply_with_flags(f3, after=[ar, ar2])``
    and ``lview.apply_with_flags(f3, follow=[ar], timeout=2.5)``: the flags hold for that
    call alone, `block` is the view's unless given. It stopped with an AttributeError."""
    lview.block = False
    go = tmp_path / "go"
    ar = lview.apply_async(held, os.getpid(), str(go))
    ar2 = lview.apply_async(pid)
    ar3 = lview.apply_with_flags(add, (2,), {"y": 3}, after=[ar, ar2])
    ar4 = lview.apply_with_flags(pid, follow=[ar2], timeout=2.5)
    assert lview.after is None and lview.follow is None and lview.timeout is None
    assert ar4.get(TIMEOUT) == ar2.get(TIMEOUT)   # on ar2's engine
    assert not ar3.done()   # after ar, held
    go.touch()
    assert ar3.get(TIMEOUT) == 5
    assert ar3.metadata["started"] >= ar.metadata["completed"]
    assert lview.apply_with_flags(square, [4], block=True, retries=1) == 16
    with pytest.raises(KeyError, match="unknown flag"):
        lview.apply_with_flags(square, [4], whenever=True)


def test_impossible_dependencies_fail_at_once(rc, lview):
    failed = lview.apply_async(always_fails, 1)
    good = lview.apply_async(square, 2)
    with pytest.raises(ValueError):
        failed.get(TIMEOUT)
    good.get(TIMEOUT)
    cases = [
        ({"after": failed}, minipar.ImpossibleDependency),
        ({"after": Dependency([failed, good], all=True)}, minipar.ImpossibleDependency),
        ({"after": Dependency([failed], all=False)}, minipar.ImpossibleDependency),
        ({"follow": failed}, minipar.ImpossibleDependency),
        ({"after": ["0123456789abcdef-0"]}, minipar.InvalidDependency),   # a msg_id of
        ({"follow": "0123456789abcdef-0"}, minipar.InvalidDependency),    # no task
    ]
    ars = []
    for flags, _ in cases:   # all sent first: the unknown ids' UNKNOWN_GRACE_S runs once
        with lview.temp_flags(**flags):
            ars.append(lview.apply_async(square, 3))
    for ar, (_, error) in zip(ars, cases):
        with pytest.raises(error):
            ar.get(TIMEOUT)
    # follow, all=True, over tasks that ran on two different engines
    a, b = rc.ids[:2]
    with lview.temp_flags(targets=[a]):
        ta = lview.apply_async(square, 1)
    with lview.temp_flags(targets=[b]):
        tb = lview.apply_async(square, 1)
    ta.get(TIMEOUT), tb.get(TIMEOUT)
    with lview.temp_flags(follow=[ta, tb]):
        with pytest.raises(minipar.ImpossibleDependency):
            lview.apply_async(square, 1).get(TIMEOUT)
    # what failure=True allows does run: a clean-up task after a failure
    with lview.temp_flags(after=Dependency([failed], success=False, failure=True)):
        assert lview.apply_sync(square, 4) == 16
    with lview.temp_flags(after=Dependency([failed, good], success=True, failure=True)):
        assert lview.apply_sync(square, 5) == 25


def test_a_dependency_on_another_clients_task_just_submitted_holds(rc, lview):
    # each client sends on its own socket, so a task of one client can reach the
    # controller after another client's dependent naming it: that was InvalidDependency
    # about one time in four
    other = minipar.Client(rc.url_file)
    try:
        view = other.load_balanced_view()
        for i in range(100):
            first = lview.apply_async(square, i)
            with view.temp_flags(after=first):
                assert view.apply_sync(add, i, 1) == i + 1
    finally:
        other.close()


@pytest.mark.parametrize("flag", ["after", "follow"])
def test_a_direct_request_is_no_dependency_whether_running_or_finished(rc, lview, flag):
    # as the docs say, dependencies work only among load-balanced tasks; a direct
    # request's msg_id is refused alike while it runs and once it has finished (the
    # outcome no longer depends on how quickly it ran), naming what it is. The controller
    # knows it, so it says so, where it called it unknown after waiting UNKNOWN_GRACE_S
    # for a task of that id to come
    eid = rc.ids[0]
    done = rc[eid].apply_async(square, 2)
    done.get(TIMEOUT)
    running = rc[eid].apply_async(nap, 1, 30)
    try:
        for direct in (done, running):
            with lview.temp_flags(**{flag: direct}):
                ar = lview.apply_async(square, 3)
            with pytest.raises(minipar.InvalidDependency, match=rf"depends on direct "
                               rf"request\(s\) \['{direct.msg_ids[0]}'\].*load-balanced"):
                ar.get(TIMEOUT)
    finally:
        running.abort()


@pytest.mark.parametrize("flag", ["after", "follow"])
def test_a_wrong_after_or_follow_is_refused_when_set(lview, flag):
    done = lview.apply_async(square, 1)
    done.get(TIMEOUT)
    wrong = [(5, TypeError, "not int 5"), (object(), TypeError, "not object"),
             ({"ids": done.msg_ids}, TypeError, "not dict"),
             ([done, 5], TypeError, "not int"),
             ("x", ValueError, "'x' is no msg_id"),
             (Dependency([done, "not-an-id"]), ValueError, "'not-an-id' is no msg_id")]
    for value, error, why in wrong:
        for set_it in (lambda: setattr(lview, flag, value),
                       lambda: lview.set_flags(retries=3, **{flag: value}),
                       lambda: lview.temp_flags(retries=3, **{flag: value}).__enter__()):
            with pytest.raises(error, match=rf"^{flag}\b.*{why}") as e:
                set_it()
            if error is TypeError:
                assert "a Dependency, a msg_id, an AsyncResult" in str(e.value)
            assert getattr(lview, flag) is None and lview.retries == 0   # none left changed
    for right in (done, done.msg_ids[0], [done], Dependency([done]), None):
        with lview.temp_flags(**{flag: right}):
            assert lview.apply_sync(square, 2) == 4


def test_retries_must_be_a_count_when_set(lview):
    for value, error in ((-1, ValueError), ("2", TypeError), (1.5, TypeError),
                         (None, TypeError), (True, TypeError)):
        for set_it in (lambda: setattr(lview, "retries", value),
                       lambda: lview.set_flags(time_limit=5, retries=value),
                       lambda: lview.temp_flags(retries=value).__enter__()):
            with pytest.raises(error, match=r"^retries=.*: give a count, an int >= 0"):
                set_it()
            assert lview.retries == 0 and lview.time_limit is None   # none left changed
    with lview.temp_flags(retries=2):
        assert lview.apply_sync(square, 3) == 9


def test_dependency_timeout(lview):
    slow = lview.apply_async(nap, "slow", 60)
    with lview.temp_flags(after=slow, timeout=0.5):
        waiting = lview.apply_async(square, 2)
    with pytest.raises(minipar.DependencyTimeout):
        waiting.get(TIMEOUT)
    assert not slow.done()
    slow.abort()
    with pytest.raises(minipar.TaskAborted):
        slow.get(TIMEOUT)


@pytest.mark.parametrize("flag", ["timeout", "time_limit"])
def test_a_negative_timeout_or_time_limit_is_refused_at_once(rc, lview, flag):
    for never in (-1, -0.5, float("nan")):
        for set_it in (lambda: setattr(lview, flag, never),
                       lambda: lview.set_flags(retries=3, **{flag: never}),
                       lambda: lview.temp_flags(retries=3, **{flag: never}).__enter__()):
            with pytest.raises(ValueError, match=rf"{flag}=(-1|-0.5|nan): give the seconds"):
                set_it()
            assert getattr(lview, flag) is None and lview.retries == 0   # none left changed
    with pytest.raises(TypeError, match=rf"{flag}='5': give the seconds"):
        setattr(lview, flag, "5")
    for no_limit in (0, None):   # as before: no limit
        with lview.temp_flags(**{flag: no_limit}):
            assert lview.apply_sync(square, 2) == 4
    # a client that skips the check: the controller refuses the task, with a final state
    for never in (-1, float("nan")):
        setattr(lview, "_" + flag, never)
        ar = lview.apply_async(square, 3)
        with pytest.raises(ValueError, match=rf"refused: `{flag}` must be >= 0"):
            ar.get(TIMEOUT)
        assert rc.db_query({"msg_id": ar.msg_ids[0]}, ["status"])[0]["status"] == "error"
    setattr(lview, "_" + flag, None)
    assert lview.apply_sync(square, 4) == 16   # and it goes on serving


def test_a_request_naming_its_own_attempt_is_refused_not_left_pending(rc, lview):
    # the engine's reply echoes a request's attempt, which the controller matches against
    # the tries it made: a client's own number left the task pending for ever as stale
    for where in ({"lb": True}, {"engine_id": rc.ids[0]}):
        f = rc.send_apply(square, (3,), {}, attempt=2, **where)
        with pytest.raises(ValueError, match="refused: `attempt` is the controller's"):
            f.result(TIMEOUT)
    assert lview.apply_sync(square, 4) == 16   # and it goes on serving


def test_dependency_set_semantics():
    d = Dependency(["a", "b"])
    assert d.as_dict() == {"dependencies": ["a", "b"], "all": True, "success": True,
                           "failure": False}
    assert not d.check({"a"}) and d.check({"a", "b"})
    assert d.unreachable({"a"}, {"b"}) and not d.unreachable({"a"}, set())
    anyone = Dependency(["a", "b"], all=False)
    assert anyone.check({"b"}) and not anyone.unreachable(set(), {"a"})
    assert anyone.unreachable(set(), {"a", "b"})
    cleanup = Dependency(["a"], success=False, failure=True)
    assert cleanup.check(set(), {"a"}) and cleanup.unreachable({"a"}, set())
    assert Dependency([]).check(set())
    with pytest.raises(ValueError):
        Dependency(["a"], success=False, failure=False)


def test_a_dependency_made_from_its_as_dict_is_the_same_as_ipyparallels(rc, lview):
    # ipyparallel's as_dict() names the ids "dependencies", and Dependency() takes that
    # dict back: minipar's named them "ids" and iterated the dict, making a dependency on
    # the msg_ids 'all', 'failure', 'ids' and 'success', which an after= then refused
    failed = lview.apply_async(always_fails, 1)
    with pytest.raises(minipar.RemoteError):
        failed.get(TIMEOUT)
    cleanup = Dependency(failed, success=False, failure=True)
    as_dict = cleanup.as_dict()
    assert as_dict == {"dependencies": failed.msg_ids, "all": True, "success": False,
                       "failure": True}
    again = Dependency(as_dict)
    assert again == cleanup == set(failed.msg_ids)
    assert (again.all, again.success, again.failure) == (True, False, True)
    assert Dependency(as_dict, failure=False).failure   # the dict's flags win, as there
    with lview.temp_flags(after=again):   # met: the task it names failed
        assert lview.apply_async(square, 5).get(TIMEOUT) == 25
    with lview.temp_flags(after=Dependency(Dependency(failed).as_dict())):
        with pytest.raises(minipar.ImpossibleDependency):   # success only: never met
            lview.apply_async(square, 6).get(TIMEOUT)


def test_dependency_check_takes_failed_none_as_ipyparallels(lview):
    # ipyparallel's check() and unreachable() default `failed` to None, and code passes
    # None for "nothing failed": minipar's took only an iterable, a TypeError for None
    done = lview.apply_async(square, 2)
    assert done.get(TIMEOUT) == 4
    ok, anyone = Dependency(done), Dependency([*done.msg_ids, "ab-1"], all=False)
    assert ok.check(set(done.msg_ids), None) and anyone.check(done.msg_ids, None)
    assert not ok.unreachable(done.msg_ids, None)
    assert Dependency(done, success=False, failure=True).unreachable(done.msg_ids, None)


# ---------------------------------------------------------------- functional dependencies

def test_functional_dependencies_run_locally():
    assert minipar.dependent(square, lambda: None)(3) == 9   # anything but False: met
    with pytest.raises(minipar.UnmetDependency):
        minipar.dependent(square, lambda flag: flag, False)(3)
    with pytest.raises(minipar.UnmetDependency):
        needs_missing_module()
    # @require imports into the namespace the function runs in (an engine's, for
    # interactive functions), and defines the objects it names there
    ns = {}
    exec("def uses_json(): return json.dumps([helper()])", ns)
    assert minipar.require("json", square, helper=lambda: 2)(ns["uses_json"])() == "[2]"
    assert ns["json"].__name__ == "json" and ns["square"] is square
    stacked = minipar.require("json")(minipar.depend(lambda: True)(ns["uses_json"]))
    assert stacked() == "[2]"


@pytest.fixture
def mixed_cluster(local_cluster, tmp_path):
    """Two engines that can import `special_mod` (role "special"), two that cannot."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "special_mod.py").write_text("VALUE = 1000\n")
    special = local_cluster.start_engines(
        2, env=engine_env(str(mods), MINIPAR_TEST_ROLE="special"))
    plain = local_cluster.start_engines(2, env=engine_env(MINIPAR_TEST_ROLE="plain"))
    rc = local_cluster.client()
    rc.wait_for_engines(4, START_TIMEOUT_S)
    local_cluster.rc = rc
    local_cluster.special_pids = {p.pid for p in special}
    local_cluster.plain_pids = {p.pid for p in plain}
    return local_cluster


def test_require_routes_tasks_only_to_engines_that_can_import(mixed_cluster):
    c = mixed_cluster
    lview = c.rc.load_balanced_view()
    ars = [lview.apply_async(special_value, i) for i in range(24)]
    results = [ar.get(TIMEOUT) for ar in ars]
    assert [v for v, _ in results] == [1000 + i for i in range(24)]
    assert {p for _, p in results} <= c.special_pids
    unmet = [a for ar in ars for a in ar.metadata.get("attempts") or () if a["status"] == "unmet"]
    assert all(a["ename"] == "UnmetDependency" for a in unmet)
    # a map of a required function too: each chunk on an engine that has the module
    assert [v for v, _ in lview.map_sync(special_value, range(8), chunksize=2)] == \
        [1000 + i for i in range(8)]
    # nobody can import it: tried once on each engine, then impossible
    ar = lview.apply_async(needs_missing_module)
    with pytest.raises(minipar.ImpossibleDependency):
        ar.get(TIMEOUT)
    assert len({a["engine"] for a in ar.metadata["attempts"]}) == 4


def test_depend_and_dependent_route_by_the_check(mixed_cluster):
    c = mixed_cluster
    lview = c.rc.load_balanced_view()
    special = [lview.apply_async(on_special, i) for i in range(12)]
    plain = [lview.apply_async(minipar.dependent(on_any, role_is, "plain"), i)
             for i in range(12)]
    assert {ar.get(TIMEOUT)[1] for ar in special} <= c.special_pids
    assert {ar.get(TIMEOUT)[1] for ar in plain} <= c.plain_pids
    with pytest.raises(minipar.ImpossibleDependency):
        lview.apply_sync(minipar.dependent(on_any, role_is, "nobody"), 1)


def test_require_and_depend_take_functions_and_keywords_named_f_df_or_ns(rc):
    """Teaching scripts name their functions f: ``@require(f)`` defines f where the
    task runs, and a check's keywords (``@depend(check, f=...)``, ``dependent(task,
    check, df=...)``) are the check's own, as ipyparallel's (``_wrapped_f``). They were
    a TypeError: "got multiple values for argument 'f'"."""
    lview = rc.load_balanced_view()

    def f():
        return 1

    def df():
        return 2

    def ns():
        return 3

    def uses_them():
        return f() + df() + ns()

    assert lview.apply_sync(minipar.require(f, df, ns)(uses_them)) == 6

    def check(f, df=0, ns=0):
        return f + df + ns == 3

    def task(x):
        return x * 10

    assert lview.apply_sync(minipar.depend(check, f=1, df=2)(task), 4) == 40
    assert lview.apply_sync(minipar.dependent(task, check, f=1, ns=2), 5) == 50
    assert lview.apply_sync(minipar.require("math", f=f)(uses_them)) == 6


# ---------------------------------------------------------------- time, failure, recovery

def test_time_limit_interrupts_a_task_and_the_engine_serves_the_next(lview):
    with lview.temp_flags(time_limit=1):
        ar = lview.apply_async(time.sleep, 60)
    with pytest.raises(minipar.TaskTimeout):
        ar.get(TIMEOUT)
    eid = ar.engine_id
    with lview.temp_flags(targets=[eid]):
        assert lview.apply_sync(square, 6) == 36
    # a limit is per task: one that finishes in time is not touched
    with lview.temp_flags(time_limit=30):
        assert lview.apply_sync(nap, "quick", 0.01) == "quick"


def _note_then(path, what):
    """Add a line to `path`, then sleep 60 s ("sleep") or raise ("raise")."""
    import time

    with open(path, "a") as f:
        f.write("ran\n")
    if what == "raise":
        raise ValueError("fails on every engine")
    time.sleep(60)


def test_retries_run_a_failed_task_again_but_not_one_past_its_time_limit(lview, tmp_path):
    """As README's flags say: a task that raises runs again (1 + retries times), one past
    its time_limit fails with TaskTimeout at once (it would time out again)."""
    raised, slept = tmp_path / "raised", tmp_path / "slept"
    with lview.temp_flags(retries=2, time_limit=1):
        failing, timed = (lview.apply_async(_note_then, str(raised), "raise"),
                          lview.apply_async(_note_then, str(slept), "sleep"))
    with pytest.raises(minipar.RemoteError, match="fails on every engine"):
        failing.get(TIMEOUT)
    with pytest.raises(minipar.TaskTimeout):
        timed.get(TIMEOUT)
    assert raised.read_text() == "ran\n" * 3 and slept.read_text() == "ran\n"
    assert timed.metadata["attempts"] == []   # one attempt, its own
    tried = failing.metadata["attempts"]
    assert [a["status"] for a in tried] == ["error"] * 3 and len({a["engine"] for a in tried}) == 3


def test_killed_engine_loses_none_of_2000_tasks_with_retries(cluster):
    rc = cluster.rc
    lview = rc.load_balanced_view()
    with lview.temp_flags(retries=1):
        ar = lview.map_async(nap, range(2000), [0.004] * 2000, chunksize=1)
    wait_until(lambda: ar.progress >= 400, TIMEOUT / 2, "400 of the 2000 tasks done")
    assert not ar.done()
    victim = cluster.engines[1]
    victim.send_signal(signal.SIGKILL)
    assert ar.get(TIMEOUT) == list(range(2000))
    victim.wait(10)
    wait_until(lambda: len(rc.ids) <= 3, TIMEOUT / 4, "the killed engine gone from rc.ids")
    assert len(rc.ids) == 3
    # the tasks caught on the dead engine ran again elsewhere
    retried = [md["attempts"] for md in ar.metadata if len(md["attempts"]) > 1]
    assert retried, "no task was caught on the killed engine, 1,600 tasks before the end"
    assert len({a[0]["engine"] for a in retried}) == 1
    for attempts in retried:
        assert [a["status"] for a in attempts] == ["engine_died", "ok"]
        assert attempts[1]["engine"] != attempts[0]["engine"]


def test_tasks_left_with_no_engine_say_why_they_wait_and_still_wait(local_cluster, caplog,
                                                                     monkeypatch, tmp_path):
    """Every engine killed while tasks are queued: they wait for one, by design, but a
    get's TimeoutError, a wait without a timeout and the client's log (once the last
    engine has been gone a while) say so, which engine left last and what to do. Before,
    a TimeoutError said only how many requests were outstanding, and a wait hung in silence."""
    monkeypatch.setattr(minipar.asyncresult, "NO_ENGINES_WARN_S", 0.5)
    engines = local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    direct = rc[rc.ids[0]].apply_async(nap, 1, 60)   # a direct request still fails
    go = tmp_path / "go"   # none ends before the engines are killed, however loaded the machine
    ar = rc.load_balanced_view().map_async(held, range(6), [str(go)] * 6)
    with caplog.at_level(logging.WARNING, logger="minipar.asyncresult"):
        for p in engines:
            p.kill()
            p.wait(10)
        with pytest.raises(errors.EngineError, match="died before answering"):
            direct.get(TIMEOUT)
        wait_until(lambda: rc.ids == [], TIMEOUT / 4, "the killed engines gone from rc.ids")
        with pytest.raises(TimeoutError, match=r"requests outstanding\): no engine is "
                           r"registered; the tasks wait for one: start engines .* or abort "
                           r"them \(rc\.abort\(\)\)\. The last one, [01], left at "
                           r"\d\d:\d\d:\d\d: died \(engine pid \d+ on "):
            ar.get(0.1)
        wait_until(lambda: "requests are outstanding, and no engine is registered; the tasks "
                   "wait for one" in caplog.text, TIMEOUT / 4, "the client's warning")
    go.touch()
    with pytest.warns(RuntimeWarning, match="no engine is registered; the tasks wait") as warned:
        _once_warned(warned, local_cluster.start_engines, 1)
        assert ar.wait()   # for the engine started: tasks still wait for one, as before
    results = ar.get(return_exceptions=True)   # those on the engines killed: EngineError
    assert any(r == i for i, r in enumerate(results))
    assert all(r == i or isinstance(r, errors.EngineError) for i, r in enumerate(results))


def test_a_wait_with_no_engine_ever_registered_says_so(local_cluster):
    """No engine started yet: a get's TimeoutError and an Executor.map's, a Ctrl-C in a get
    and the wait of a ``with`` executor say that none was, and what to do; the tasks still
    run once one comes. Before, the first said only "1 of 1 requests outstanding", the
    others nothing: a wait without a timeout hung in silence."""
    rc = local_cluster.client()
    ar = rc.load_balanced_view().apply_async(square, 3)
    why = (r"no engine is registered; the tasks wait for one: start engines \(rc.wait_for_"
           r"engines\(n\) waits for them\) or abort them \(rc.abort\(\)\)\. None was since "
           "this client connected")
    with pytest.raises(TimeoutError, match=r"\(1 of 1 requests outstanding\): " + why):
        ar.get(0.1)
    with pytest.raises(TimeoutError, match=why):
        list(rc.executor().map(square, [4], timeout=0.1))
    with pytest.warns(RuntimeWarning, match=why) as warned, \
            pytest.raises(KeyboardInterrupt) as info:
        _once_warned(warned, os.kill, os.getpid(), signal.SIGINT)
        ar.get()   # it warns as it starts, then waits
    if sys.version_info >= (3, 11):   # exceptions' notes
        assert re.match(why, info.value.__notes__[0])
    with pytest.warns(RuntimeWarning, match=why) as warned, rc.executor() as ex:
        later = ex.submit(square, 5)
        _once_warned(warned, local_cluster.start_engines, 1)   # as the with's end waits
    assert (ar.get(TIMEOUT), later.result(TIMEOUT)) == (9, 25)


def test_the_controller_says_once_that_tasks_wait_with_no_engine_ever_registered(
        local_cluster):
    """Tasks submitted before any engine registered waited in silence on the controller's
    side: its log, where a user looks when nothing happens, said nothing. After
    NO_ENGINES_SAY_S it says, once and not per task, how many wait and how to start
    engines."""
    view = local_cluster.client().load_balanced_view()
    ars = [view.apply_async(square, i) for i in range(3)]
    said = "3 task(s) waited 10 s and no engine has registered yet: start engines (`python -m "
    wait_until(lambda: said in local_cluster.output("controller"), START_TIMEOUT_S,
               "the controller to say that no engine has registered")
    assert f"--file {local_cluster.engine_file}`" in local_cluster.output("controller")
    ars.append(view.apply_async(square, 3))
    local_cluster.start_engines(1)
    assert [ar.get(TIMEOUT) for ar in ars] == [0, 1, 4, 9]
    assert local_cluster.output("controller").count("no engine has registered yet") == 1


def test_recovery_runs_when_retries_are_exhausted(lview):
    with lview.temp_flags(retries=2, recovery=fallback):
        ar = lview.apply_async(always_fails, 7)
    assert ar.get(TIMEOUT) == ("recovered", 7)
    attempts = ar.metadata["attempts"]
    assert [a["status"] for a in attempts] == ["error"] * 3
    assert {a["ename"] for a in attempts} == {"ValueError"}
    assert len({a["engine"] for a in attempts}) == 3   # elsewhere each time
    # a task that succeeds never runs its recovery
    with lview.temp_flags(recovery=fallback):
        assert lview.apply_sync(square, 3) == 9
    # a chain: the first recovery fails too, the second answers
    with lview.temp_flags(recovery=[always_fails, fallback]):
        assert lview.apply_sync(always_fails, 1) == ("recovered", 1)
    # per chunk of a map, element-wise
    with lview.temp_flags(recovery=fallback):
        assert lview.map_sync(fails_on_three, range(6), chunksize=2) == \
            [0, 1, ("recovered", 2), ("recovered", 3), 4, 5]


def test_recovery_task_by_reference_and_refused_ones(lview):
    spare = lview.recovery_task(add, 40, 2)
    with lview.temp_flags(recovery=spare):
        ar = lview.apply_async(always_fails, 0)
    assert ar.get(TIMEOUT) == 42
    assert ar.metadata["recovered_by"] == spare.msg_ids[0]
    assert spare.get(TIMEOUT) == 42
    # an ordinary task cannot be a recovery task, nor can one recover two tasks
    ordinary = lview.apply_async(square, 1)
    with lview.temp_flags(recovery=ordinary):
        with pytest.raises(minipar.InvalidDependency):
            lview.apply_sync(always_fails, 0)
    shared = lview.recovery_task(add, 1)
    with lview.temp_flags(recovery=shared):
        first = lview.apply_async(nap, 1, 0.5)
        with pytest.raises(minipar.InvalidDependency):
            lview.apply_sync(always_fails, 0)
    assert first.get(TIMEOUT) == 1
    with pytest.raises(minipar.TaskAborted):   # never needed: ended without running
        shared.get(TIMEOUT)


# ---------------------------------------------------------------- control and queries

def test_abort_queued_and_running_tasks(rc):
    eid = rc.ids[0]
    lview = rc.load_balanced_view(targets=[eid])
    ars = [lview.apply_async(nap, i, 60) for i in range(4)]   # hwm 2: two wait here
    status = rc.queue_status()
    assert status[eid]["tasks"] == 2 and status["unassigned"] == 2
    for ar in ars[:1:-1]:      # queued here: they fail at once
        ar.abort()
        with pytest.raises(minipar.TaskAborted):
            ar.get(TIMEOUT)
    rc.abort(ars[:2])          # the running one is interrupted, the next refused
    for ar in ars[:2]:
        with pytest.raises(minipar.TaskAborted):
            ar.get(TIMEOUT)
    assert lview.apply_sync(square, 4) == 16
    assert rc.queue_status()[eid]["tasks"] == 0
    # aborted in the scheduler's queue or on the engine, each reads as aborted
    recs = rc.db_query({"msg_id": {"$in": [ar.msg_ids[0] for ar in ars]}}, keys=["status"])
    assert [r["status"] for r in recs] == ["aborted"] * 4
    assert [ar.metadata["status"] for ar in ars] == ["aborted"] * 4


def test_a_direct_request_aborted_while_queued_behind_a_running_one_fails_at_once(
        rc, tmp_path):
    """A DirectView request queued on an engine behind a running one and aborted (or
    cancelled) failed only when the running one ended and the engine came to refuse it:
    the abort returned at once, its result waited. It fails at once now and never runs;
    the running one goes on."""
    eid = rc.ids[0]
    go = tmp_path / "go"
    running = rc[eid].apply_async(held, "ran", str(go))
    try:
        wait_until(running.running, TIMEOUT, "the first request to start")
        queued = [rc[eid].apply_async(touch, tmp_path, i) for i in range(2)]
        assert queued[1].cancel()   # done here at once: its record too, now
        assert rc.db_query({"msg_id": queued[1].msg_ids[0]}, ["status"]) == [
            {"msg_id": queued[1].msg_ids[0], "status": "aborted"}]
        queued[0].abort()
        with pytest.raises(minipar.TaskAborted, match="aborted before it started"):
            queued[0].get(START_TIMEOUT_S)
        assert not running.done()
    finally:
        go.touch()
    assert running.get(TIMEOUT) == "ran"
    assert rc[eid].apply_sync(square, 4) == 16   # after the aborted ones, had they run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go"]


def test_queue_status_counts_direct_and_load_balanced_work(rc):
    eid = rc.ids[0]
    finished = rc[eid].apply_async(square, 2)
    finished.get(TIMEOUT)
    direct = rc[eid].apply_async(nap, "direct", 60)
    lview = rc.load_balanced_view(targets=[eid])
    tasks = [lview.apply_async(nap, i, 60) for i in range(3)]
    status = rc.queue_status()
    assert status[eid]["queue"] == 1 and status[eid]["tasks"] == 2
    assert status["unassigned"] == 1
    assert set(status) == set(rc.ids) | {"unassigned"}
    assert rc.queue_status(targets=[eid]).keys() == {eid, "unassigned"}
    # one engine's id, as ipyparallel: that engine's counts (a view on it asks so too)
    assert rc.queue_status(eid) == rc[eid].queue_status() == status[eid]
    # verbose, as ipyparallel: the msg_ids themselves, oldest task first
    ids = rc.queue_status(eid, verbose=True)
    assert ids["queue"] == direct.msg_ids
    assert ids["tasks"] == tasks[0].msg_ids + tasks[1].msg_ids
    assert rc.queue_status(verbose=True)["unassigned"] == tasks[2].msg_ids
    assert finished.msg_ids[0] in ids["completed"]
    assert len(ids["completed"]) <= status[eid]["completed"]
    rc.abort([direct, *tasks])
    for ar in [direct, *tasks]:
        with pytest.raises(minipar.TaskAborted):
            ar.get(TIMEOUT)
    assert rc.queue_status()[eid]["completed"] >= 1


def test_resubmit_and_result_status(rc, lview):
    ar = lview.apply_async(square, 9)
    assert ar.get(TIMEOUT) == 81
    slow = lview.apply_async(nap, "slow", 60)
    status = rc.result_status([ar, slow])
    assert status == {"pending": slow.msg_ids, "completed": ar.msg_ids}
    assert rc.result_status(ar, status_only=False)[ar.msg_ids[0]] == 81
    with pytest.raises(KeyError):
        rc.result_status("no-such-msg-id")
    with pytest.raises(ValueError):
        rc.resubmit(slow)            # still pending
    # done with: it would keep its engine, any of them, busy for a minute, and the
    # direct request below waits behind it there
    slow.abort()
    with pytest.raises(minipar.TaskAborted):
        slow.get(TIMEOUT)

    again = rc.resubmit(ar)
    assert again.get(TIMEOUT) == [81] and again.msg_ids != ar.msg_ids   # a list, as ipp's
    rec, = rc.db_query({"msg_id": again.msg_ids[0]}, keys=["header", "lb"])
    assert rec["header"]["resubmitted"] == ar.msg_ids[0] and rec["lb"]
    mapped = lview.map_async(square, range(6), chunksize=2)
    assert rc.resubmit(mapped.get(TIMEOUT) and mapped).get(TIMEOUT) == [[0, 1], [4, 9],
                                                                         [16, 25]]
    direct = rc[rc.ids[-1]].apply_async(pid)
    direct.get(TIMEOUT)
    redo = rc.resubmit(direct.msg_ids[0])
    assert redo.get(TIMEOUT) == [direct.get(TIMEOUT)]   # direct: the same engine again
    with pytest.raises(KeyError):
        rc.resubmit("no-such-msg-id")


class _Interrupts:
    def __reduce__(self):   # Ctrl-C, as it lands while a map is being sent
        raise KeyboardInterrupt


def test_a_map_interrupted_midway_through_its_submission_leaves_nothing_running(rc, lview):
    """Ctrl-C after its first chunks left (held to go together): the call returns no
    AsyncResult to abort them with, so it aborts them itself. (An error there, as an
    unpicklable item, leaves them running: see test_a_maps_tasks_leave_a_hundred...)"""
    with pytest.raises(KeyboardInterrupt):
        lview.map_async(time.sleep, [30, 30, _Interrupts()], chunksize=1)
    wait_until(lambda: _in_flight(rc) == 0, 20, "the submitted chunks to be aborted")


def _ctrl_c_after_the_send(n):
    """A trace function that raises KeyboardInterrupt at the n-th call or return of a
    function of minipar's after a request left this thread (protocol.send returned): a
    Ctrl-C landing exactly there, as a signal's handler runs as a function starts or
    after a call. Not at line events (one at a `with` line's exit skips the __exit__, as
    no signal can), nor at exception events (Python 3.9 has one as a for loop's generator
    ends, and drops what its trace function raises there), nor in the standard library (a
    Ctrl-C inside Condition.wait can break the lock it waits on: CPython's problem, not
    minipar's)."""
    package = os.path.dirname(minipar.__file__)
    sent = False

    def trace(frame, event, arg):
        nonlocal sent, n
        if sent and event in ("call", "return") and frame.f_code.co_filename.startswith(package):
            n -= 1
            if n == 0:
                raise KeyboardInterrupt   # the trace function is unset as it raises
        elif event == "return" and frame.f_code is protocol.send.__code__:
            sent = True
        return trace
    return trace


# each sleep only outlasts an abort just after it was sent; the last call, which no
# Ctrl-C reaches, waits it out
@pytest.mark.parametrize("call", [
    "rc[rc.ids[0]].apply_sync(time.sleep, 2)",
    "rc.load_balanced_view().apply_sync(time.sleep, 2)",
    "rc.load_balanced_view().map_sync(time.sleep, [2, 2], chunksize=1)",
    "minipar.MultiEngineClient(client=rc).execute('import time; time.sleep(2)', "
    "targets=rc.ids[:2], block=True)"])
def test_ctrl_c_anywhere_after_a_blocking_calls_send_aborts_what_it_sent(rc, call):
    """A Ctrl-C that lands after the request left and before the call waits for it (a
    few bytecodes, where a loaded machine may deschedule the caller), or while it waits:
    each point in turn, until the call returns. Whatever the call sent is aborted, never
    left running for nobody (the call returns nothing to abort it with)."""
    aborted = 0
    for n in itertools.count(1):
        before = set(rc.hub_history())
        sys.settrace(_ctrl_c_after_the_send(n))
        try:
            # compiled first: a KeyboardInterrupt out of eval() of a string has CPython
            # (3.12+ under -m pytest) end the process by SIGINT at exit, status 130
            eval(compile(call, "<call>", "eval"))
        except KeyboardInterrupt:
            pass
        else:
            break   # the n-th event never came: the call returned
        finally:
            sys.settrace(None)
        ar = rc.get_result(sorted(set(rc.hub_history()) - before))   # what the call sent
        if ar.done() and ar.exception() is None:
            break   # it landed once the results were in: nothing was left to abort
        for f in ar.futures:
            assert isinstance(f.exception(TIMEOUT), errors.TaskAborted), \
                f"a Ctrl-C at event {n} after the send left {f.msg_id} to run to its end"
        aborted += 1
    assert aborted >= 5, f"only {aborted} points between the send and the wait"


def test_db_query_operators_and_keys(rc, lview):
    t0 = time.time()
    a, b = rc.ids[:2]
    with lview.temp_flags(targets=[a]):
        on_a = [lview.apply_async(square, i) for i in range(3)]
    with lview.temp_flags(targets=[b]):
        on_b = [lview.apply_async(always_fails, i) for i in range(2)]
    rc.wait(on_a + on_b, TIMEOUT)
    ids = [ar.msg_ids[0] for ar in on_a + on_b]
    mine = {"msg_id": {"$in": ids}}

    def found(**query):
        return {r["msg_id"] for r in rc.db_query(dict(mine, **query), keys=["engine"])}

    assert found(engine=a) == {ar.msg_ids[0] for ar in on_a}
    assert found(engine={"$eq": b}) == found(status="error") == {ar.msg_ids[0] for ar in on_b}
    assert found(engine={"$ne": a}) == found(engine={"$nin": [a]}) == found(status="error")
    assert found(completed={"$gt": t0, "$lte": time.time()}) == set(ids)
    assert found(submitted={"$lt": t0}) == set()
    assert found(ename="ValueError") == found(status={"$in": ["error"]})
    assert len(rc.db_query({"submitted": {"$gte": t0}})) >= len(ids)

    rec = rc.db_query({"msg_id": ids[0]})[0]
    assert "wire" not in rec and "result_parts" not in rec      # frames only when asked
    assert rec["status"] == "ok" and rec["engine"] == a and rec["started"].timestamp() >= t0
    # every key, also those a record holds no value for (it stores only what it has)
    assert set(rec) >= set(records.RECORD_KEYS) - {"wire", "result_parts"}
    assert rec["watchers"] is None
    rec = rc.db_query({"msg_id": ids[0]}, keys=["result_parts"])[0]
    assert set(rec) == {"msg_id", "result_parts"}
    assert protocol.deserialize(rec["result_parts"]) == 0
    with pytest.raises(ValueError):
        rc.db_query({"engine": {"$near": 1}})


@pytest.mark.parametrize("db", ["dict", "sqlite"])
def test_db_query_answers_a_record_once_however_often_in_lists_it(make_cluster, db):
    """``{'msg_id': {'$in': ids}}`` is a condition, as MongoDB's: a record matches it or
    not. A DB looked up each id listed, so a list naming a task twice (the msg_ids of two
    AsyncResults sharing one) answered its record twice; SQLite's past 500 ids too."""
    c = make_cluster(["--db", db], engines=1)
    ar = c.rc.load_balanced_view().apply_async(square, 3)
    ar.get(TIMEOUT)
    (msg_id,), other = ar.msg_ids, "0" * 12   # an id of no task, between them
    for ids in ([msg_id, msg_id], [msg_id, other, msg_id], [msg_id] * 501 + [other]):
        found = c.rc.db_query({"msg_id": {"$in": ids}}, keys=["status"])
        assert found == [{"msg_id": msg_id, "status": "ok"}], len(ids)
    assert c.rc.db_query({"msg_id": {"$in": [msg_id] * 3}, "status": "error"}) == []


def test_db_query_refuses_a_list_to_an_operator_that_compares_with_one_value(rc, lview):
    """A list given to $eq, $ne, $gt... of a key that holds one value (an engine id, a
    status, a time) can only be $in or $nin meant: ``{'status': {'$ne': ['ok', 'error']}}``
    answered every record, and ``{'engine': {'$eq': [0, 1]}}`` none, unsaid."""
    ar = lview.apply_async(square, 2)
    ar.get(TIMEOUT)
    for query in ({"status": {"$ne": ["ok", "error"]}}, {"engine": {"$eq": [0, 1]}},
                  {"completed": {"$gt": (time.time(),)}}, {"msg_id": {"$lte": {"a"}}}):
        with pytest.raises(ValueError, match=r"compares with one value.*; for any of "
                                             r"several use \$in \(\$nin: none of them\)"):
            rc.db_query(query)
    mine = {"msg_id": ar.msg_ids[0], "engine": {"$in": rc.ids}}   # lists where they belong
    assert rc.db_query(dict(mine, status={"$nin": ["error", "aborted"]}), ["status"]) == [
        {"msg_id": ar.msg_ids[0], "status": "ok"}]


def test_db_query_takes_datetimes_as_ipyparallel_does(rc, lview):
    """The task database docs: ``hourago = datetime.now() - timedelta(1./24)``, then
    ``rc.db_query({'started': {'$gte': hourago}})``; the records' times are datetimes."""
    hourago = datetime.now() - timedelta(1. / 24)
    ars = [lview.apply_async(square, i) for i in range(3)]
    rc.wait(ars, TIMEOUT)
    ids = [ar.msg_ids[0] for ar in ars]

    def found(**query):
        return {r["msg_id"] for r in rc.db_query(dict(msg_id={"$in": ids}, **query))}

    assert found(started={"$gte": hourago}) == set(ids)
    assert found(started={"$lt": hourago}) == set()
    assert found(completed={"$lte": datetime.now(timezone.utc)}) == set(ids)   # aware too


def test_scheme_and_hwm_flags_reach_the_scheduler(make_cluster):
    c = make_cluster(["--scheme", "lru", "--hwm", "1"], engines=2)
    lview = c.rc.load_balanced_view()
    ars = [lview.apply_async(nap, i, 60) for i in range(4)]
    status = c.rc.queue_status()
    assert [status[e]["tasks"] for e in c.rc.ids] == [1, 1]
    assert status["unassigned"] == 2
    assert "scheme lru, hwm 1" in c.output("controller")
    c.rc.abort(ars)


def test_sqlite_records_survive_a_controller_restart(make_cluster):
    first = make_cluster(["--db", "sqlite"], engines=2)
    lview = first.rc.load_balanced_view()
    ok = lview.apply_async(square, 12)
    bad = lview.apply_async(always_fails, 1)
    ok.get(TIMEOUT)
    with pytest.raises(ValueError):
        bad.get(TIMEOUT)
    ids = ok.msg_ids + bad.msg_ids
    first.stop()
    assert os.path.exists(os.path.join(first.profile_dir, records.SQLITE_FILE))

    second = make_cluster(["--db", "sqlite"], engines=1, sub="c")   # the same profile folder
    rc = second.rc
    by_id = {r["msg_id"]: r for r in rc.db_query({"msg_id": {"$in": ids}})}
    assert {m: r["status"] for m, r in by_id.items()} == {ids[0]: "ok", ids[1]: "error"}
    assert rc.result_status(ids)["completed"] == ids
    assert rc.get_result(ids[0]).get(TIMEOUT) == 144
    with pytest.raises(ValueError):
        rc.get_result(ids[1]).get(TIMEOUT)
    # tasks of the first controller's life are dependencies as good as any
    view = rc.load_balanced_view()
    with view.temp_flags(after=ok.msg_ids):
        assert view.apply_sync(square, 3) == 9
    with view.temp_flags(after=bad.msg_ids), pytest.raises(minipar.ImpossibleDependency):
        view.apply_sync(square, 3)


def prints_then_returns(n, value):
    print("x" * n)
    return value


def test_sqlite_records_a_task_whose_reply_header_is_large(make_cluster):
    """A reply's header holds what the task printed; one of 64 KiB or more the controller
    holds as a zero-copy frame (protocol.keep), which SQLiteDB's pickle refused: the record
    was never written final ("dropped a message that could not be handled"), so it read
    'pending' for ever, another client's get_result of it never came, and a --reuse
    restart would have run the task again."""
    c = make_cluster(["--db", "sqlite"], engines=1)
    ar = c.rc.load_balanced_view().apply_async(prints_then_returns, 100_000, 7)
    assert ar.get(TIMEOUT) == 7   # then the next: each reply alone, not in a batch of them
    direct = c.rc[0].apply_async(prints_then_returns, 70_000, 8)
    assert direct.get(TIMEOUT) == 8
    ids = ar.msg_ids + direct.msg_ids
    found = c.rc.db_query({"msg_id": {"$in": ids}}, ["status", "stdout"])
    assert sorted((r["status"], len(r["stdout"])) for r in found) == [
        ("ok", 70_001), ("ok", 100_001)]
    other = c.client()
    assert other.get_result(ids).get(TIMEOUT) == [7, 8]
    assert "could not be handled" not in c.output("controller")


def test_a_culled_result_says_which_limit_culled_it(make_cluster):
    c = make_cluster(["--record-limit", "20"], engines=2)
    lview = c.rc.load_balanced_view()
    # records are culled in the order they finished: the first and the newest are waited
    # for one by one, so they finish first and last whatever the engines' pace
    first = lview.apply_async(square, 0)
    first.get(TIMEOUT)
    batch = [lview.apply_async(square, i) for i in range(1, 35)]
    assert [ar.get(TIMEOUT) for ar in batch] == [i * i for i in range(1, 35)]
    newest = [lview.apply_async(square, i) for i in range(35, 40)]
    assert [ar.get(TIMEOUT) for ar in newest] == [i * i for i in range(35, 40)]
    first, newest = first.msg_ids[0], [ar.msg_ids[0] for ar in newest]
    other = c.client()          # knows none of them: asks the controller
    with pytest.raises(KeyError, match=r"culled because the controller keeps at most 20 "
                                       r"records; start the controller with --db sqlite"):
        other.get_result(first).get(TIMEOUT)
    with pytest.raises(KeyError, match=r"--record-limit"):
        other.result_status([first])
    with pytest.raises(KeyError, match=r"unknown or purged"):   # never was: not "culled"
        other.get_result("0123456789abcdef-1").get(TIMEOUT)
    assert other.get_result(newest).get(TIMEOUT) == [i * i for i in range(35, 40)]
    assert c.output("controller").count("culling the oldest finished task records") == 1


def test_record_bytes_count_the_output_a_reply_holds(make_cluster):
    """--record-bytes bounds what finished records hold; a task's output travels in its
    reply's header, which DictDB did not count: 30 tasks printing 200 KB each, 6 MB, were
    all kept under a bound of 2 MB (each counted as its 10 KB overhead)."""
    c = make_cluster(["--record-bytes", "2000000"], engines=1)
    lview = c.rc.load_balanced_view()
    ids = []
    for i in range(30):   # one by one: each reply alone, its header held as it came
        ar = lview.apply_async(prints_then_returns, 200_000, i)
        assert ar.get(TIMEOUT) == i
        ids += ar.msg_ids
    kept = [r["msg_id"] for r in c.rc.db_query({"msg_id": {"$in": ids}}, ["status"])]
    assert 0 < len(kept) <= 10 and kept == ids[-len(kept):], (len(kept), len(ids))
    with pytest.raises(KeyError, match=r"at most 2000000 bytes of records"):
        c.client().get_result(ids[0]).get(TIMEOUT)


@pytest.mark.parametrize("call, started", [
    ("rc.load_balanced_view().map_sync(time.sleep, [30] * 8)", 2),
    ("rc.load_balanced_view().apply_sync(time.sleep, 30)", 1),
    ("minipar.MultiEngineClient(rc.url_file).execute('import time; time.sleep(30)', "
     "block=True)", 2)])
def test_ctrl_c_in_a_blocking_call_aborts_what_it_started(local_cluster, tmp_path, call,
                                                          started):
    """A user presses Ctrl-C in map_sync, apply_sync or a classic blocking call: its tasks must not run on for nobody (the next
    user's short map would wait behind them), and rc.abort('all') aborts every unfinished
    task of a client; an abort of nothing says so."""
    import signal
    import subprocess
    import sys
    import textwrap

    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, 30)
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(f"""
        import faulthandler, signal, time, minipar
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # stacks, if it hangs
        rc = minipar.Client({local_cluster.client_file!r})
        print("mapping", flush=True)
        try:
            {call}
        except KeyboardInterrupt:   # back at the prompt, the client still open
            print("KeyboardInterrupt", flush=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (running := sum(
                    s["queue"] + s["tasks"] for s in rc.queue_status().values()
                    if isinstance(s, dict))):
                time.sleep(0.1)
            print("left running:", running)
    """))
    # as at a terminal: a test run in the background (`ci &`) hands its children SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler at all
    user = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert user.stdout.readline() == "mapping\n"
        wait_until(lambda: sum(s["queue"] + s["tasks"] for s in rc.queue_status().values()
                               if isinstance(s, dict)) >= started, 30,
                   "the user's tasks to start")
        user.send_signal(signal.SIGINT)
        try:
            out, _ = user.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            user.send_signal(signal.SIGUSR1)
            try:
                out, _ = user.communicate(timeout=5)
            except subprocess.TimeoutExpired as e:
                out = e.output or ""
            pytest.fail(f"the user script did not end after Ctrl-C; its threads:\n{out}")
        assert "KeyboardInterrupt\nleft running: 0" in out
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()
    lview = rc.load_balanced_view()
    assert lview.map_sync(lambda x: x + 1, range(8)) == list(range(1, 9))
    status = rc.queue_status()
    assert sum(s["queue"] + s["tasks"] for s in status.values() if isinstance(s, dict)) == 0

    ars = [lview.apply_async(time.sleep, 30) for _ in range(4)]
    assert rc.abort("all") == 4
    for ar in ars:
        with pytest.raises(errors.TaskAborted):
            ar.get(30)
    with pytest.warns(RuntimeWarning, match="nothing to abort"):
        assert rc.abort("all") == 0


def test_quick_tasks_do_not_queue_behind_a_long_one(rc):
    # the engine running a long task says so (`started`, after STREAM_INTERVAL_S): with
    # automatic prefetch it then takes no more, as with ipyparallel's hwm of 1, so the
    # quick tasks all run on the other engines (before, one in two queued behind it)
    lview = rc.load_balanced_view()
    rc.wait(timeout=TIMEOUT)
    long = lview.apply_async(nap, "long", 60)
    wait_until(long.running, 30, "the long task running")
    quick = [lview.apply_async(nap, i, 0.2) for i in range(2 * len(rc.ids) + 2)]
    try:
        assert [ar.get(60) for ar in quick] == list(range(len(quick)))
        assert long.engine_id not in {ar.engine_id for ar in quick}
    finally:
        long.abort()
        with pytest.raises(minipar.TaskAborted):
            long.get(30)


@pytest.mark.parametrize("time_limit", [None, 30])
def test_quick_tasks_queued_behind_long_ones_are_taken_back(rc, time_limit):
    # 4 engines, prefetch 2: the first four tasks take an engine each, and the last two
    # short ones queued behind the long ones (the least recently used engines), waiting
    # for them although two engines were idle. The engines say the long ones run long and
    # the controller takes the short ones back, for the idle engines. A task with a
    # time_limit says when it starts; it must still say it runs long.
    lview = rc.load_balanced_view(time_limit=time_limit)
    rc.wait(timeout=TIMEOUT)
    assert len(rc.ids) == 4
    longs = [lview.apply_async(nap, f"long{i}", 30) for i in range(2)]
    shorts = [lview.apply_async(nap, i, 0.2) for i in range(4)]
    try:
        assert [ar.get(60) for ar in shorts] == list(range(4))
        assert {ar.engine_id for ar in shorts}.isdisjoint({ar.engine_id for ar in longs})
        assert [ar.metadata["attempts"] for ar in shorts] == [[]] * 4   # no attempt taken
    finally:
        for ar in longs:   # still running: not waited out
            ar.abort()
            with pytest.raises(minipar.TaskAborted):
                ar.get(30)


def test_slow_tasks_sent_deep_behind_quick_ones_are_taken_back(rc):
    # quick tasks make engines take 64 at a time; slow ones submitted meanwhile queue up
    # deep on an engine, behind the long one, and were not run elsewhere until it ended
    lview = rc.load_balanced_view()
    rc.wait(timeout=TIMEOUT)
    quick = lview.map_async(square, range(5000), chunksize=1)
    long = lview.apply_async(nap, "long", 30)
    shorts = [lview.apply_async(nap, i, 0.2) for i in range(8)]
    try:
        assert quick.get(60) == [x * x for x in range(5000)]
        assert [ar.get(60) for ar in shorts] == list(range(8))
    finally:
        long.abort()   # still running: not waited out
        with pytest.raises(minipar.TaskAborted):
            long.get(30)
    behind = [ar.get() for ar in shorts if ar.engine_id == long.engine_id
              and ar.metadata["started"] >= long.metadata["started"]]
    assert behind == []   # any short one on its engine ran before it, none after


def nap_and_note(folder, i, seconds):
    with open(folder / str(i), "a") as f:   # one line per run: a task run twice shows
        f.write("ran\n")
    time.sleep(seconds)
    return i


def test_tasks_taken_back_around_their_long_ones_end_run_once_each(rc, tmp_path):
    # tasks just over and under the 0.1 s that makes one long, so take-backs race with
    # the long tasks ending and the queued ones starting: each runs once, one result each
    lview = rc.load_balanced_view()
    rc.wait(timeout=TIMEOUT)
    rng = random.Random(7)
    seconds = [rng.choice((0.0, 0.05, 0.12, 0.2, 0.35)) for _ in range(80)]
    ars = [lview.apply_async(nap_and_note, tmp_path, i, s) for i, s in enumerate(seconds)]
    assert [ar.get(60) for ar in ars] == list(range(len(seconds)))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == \
        {str(i): "ran\n" for i in range(len(seconds))}
    assert [ar.metadata["attempts"] for ar in ars] == [[]] * len(seconds)


class _BadText(Exception):
    def __str__(self):   # a typo in a user's __str__: the commonest way to have one raise
        return f"bad value {self.vaule}"


def _raise_bad_text():
    raise _BadText(3)


def test_an_exception_whose_str_raises_says_its_type_and_what_str_raised(rc):
    """A task's exception whose __str__ raised was shown as "<unprintable>", with nothing
    of why. It now says it as Python's traceback does, and what __str__ raised, in the
    error's text and its traceback's last line."""
    with pytest.raises(minipar.RemoteError) as info:
        rc.load_balanced_view().apply_async(_raise_bad_text).get(TIMEOUT)
    err = info.value
    said = ("<exception str() failed: AttributeError: '_BadText' object has no attribute "
            "'vaule'>")
    assert (err.ename, err.evalue) == ("_BadText", said)
    assert str(err).endswith(f"_BadText: {said}")
    assert err.traceback.splitlines()[-1] == f"tests.test_tasks._BadText: {said}"
    assert "_raise_bad_text" in err.traceback


def _pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_tasks_queued_on_an_engine_another_client_shuts_down_run_elsewhere(local_cluster):
    """A classroom: one student shuts an engine down (rc.shutdown(targets=...)) while
    another's tasks are queued on it. Those never ran, yet they failed: the ones the engine
    held as TaskAborted ("the engine shut down before running this task"), the ones that
    reached it after it stopped reading as "EngineError: engine 0 died while running task",
    with the engine neither dead nor running them. Now they go to another engine; so do
    the second student's tasks when every engine is shut down and a new one comes."""
    first, second = local_cluster.start_engines(2)
    student, other = local_cluster.client(), local_cluster.client()
    ids = other.wait_for_engines(2, START_TIMEOUT_S)
    survivor = other[ids[1]].apply_sync(os.getpid)
    lview = student.load_balanced_view()
    ars = [lview.apply_async(_pid_after, 0.2) for _ in range(16)]
    wait_until(lambda: other.queue_status()[ids[0]]["tasks"] > 1, START_TIMEOUT_S,
               "tasks queued on the engine to be shut down")
    other.shutdown(targets=[ids[0]], block=True)
    assert {ar.get(START_TIMEOUT_S) for ar in ars} <= {first.pid, second.pid}
    ars = [lview.apply_async(_pid_after, 0.2) for _ in range(4)]
    wait_until(lambda: other.queue_status()[ids[1]]["tasks"] > 1, START_TIMEOUT_S,
               "tasks queued on the last engine")
    other.shutdown(block=True)
    (third,) = local_cluster.start_engines(1)
    assert {ar.get(START_TIMEOUT_S) for ar in ars} <= {survivor, third.pid}
