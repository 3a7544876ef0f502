"""Controller restart: SIGKILL the controller during a run and start it again.

With ``--reuse --db sqlite`` the new controller has the old ports, key and records:
engines register again with their ids (their hearts tell them the new controller does
not know them), clients reconnect and catch up by themselves, finished results are still
there by msg_id, and what was queued or running is resubmitted (tasks with retries) or
failed with a clear error. Without a persistent DB the client's outstanding requests
fail clearly instead of hanging; with no controller at all, clients and engines give up
after the time they were told to wait.
"""

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

import minipar
from minipar import errors, protocol

from .conftest import START_TIMEOUT_S, LocalCluster, _env
from .helpers import freeze, wait_until

TIMEOUT = 180
pytestmark = pytest.mark.timeout(TIMEOUT)

# engines wait up to 150 beats of 0.2 s for a controller to come back: CI can be slow
ENGINE_ARGS = ["--max-missed-heartbeats", "150"]


def slow(seconds, value):
    import time

    time.sleep(seconds)
    return value


def held(release, value):
    """Run until the test makes file `release` (at most 120 s), then return `value`."""
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def square(x):
    return x * x


def _restart_controller(cluster, args, name):
    """SIGKILL the controller; start another with `args`; wait until it is serving."""
    old = cluster.controller
    old.send_signal(signal.SIGKILL)
    old.wait(10)
    cluster.controller = cluster._spawn(
        "controller", ["--profile-dir", cluster.profile_dir, "--heartbeat-period", "0.2",
                       *args], name=name)

    def serving():   # --reuse leaves the old files: wait for the new controller's pid in them
        assert cluster.controller.poll() is None, cluster.output(name)
        try:
            with open(cluster.client_file) as f:
                info = json.load(f)
            return isinstance(info, dict) and info.get("pid") == cluster.controller.pid
        except (OSError, ValueError):
            return False

    wait_until(serving, START_TIMEOUT_S, f"the new controller ({name}) serving")


def _on_disk(cluster, msg_ids, finished=False):
    """Whether the controller's SQLite file holds records of all `msg_ids` (`finished`:
    in their final state)."""
    db = sqlite3.connect(f"file:{os.path.join(cluster.profile_dir, 'tasks.db')}?mode=ro",
                         uri=True)
    try:
        found = {m for (m, status) in db.execute("SELECT msg_id, status FROM records")
                 if not finished or status != "pending"}
    except sqlite3.OperationalError:   # not created yet
        return False
    finally:
        db.close()
    return set(msg_ids) <= found


def _finished(cluster):
    """The msg_ids of the records committed in their final state."""
    db = sqlite3.connect(f"file:{os.path.join(cluster.profile_dir, 'tasks.db')}?mode=ro",
                         uri=True)
    try:
        return {m for (m,) in db.execute("SELECT msg_id FROM records WHERE status != ?",
                                         ("pending",))}
    finally:
        db.close()


def _listed(c, ids):
    """Whether the controller's client file lists engines `ids`: those a controller restarted
    over it expects back. It is written at the beat after a change."""
    try:
        with open(c.client_file) as f:
            return {int(e) for e in json.load(f).get("engines", {})} >= set(ids)
    except (OSError, ValueError):
        return False


@pytest.fixture
def sqlite_cluster(tmp_path):
    c = LocalCluster(tmp_path, controller_args=["--reuse", "--db", "sqlite"])
    try:
        yield c
    finally:
        c.stop()


def test_controller_restart_with_sqlite_loses_nothing(sqlite_cluster):
    c = sqlite_cluster
    c.start_engines(2, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    rc.wait_for_engines(2, START_TIMEOUT_S)
    ids = rc.ids
    pids = {e: rc._engines[e]["pid"] for e in ids}
    view = rc.load_balanced_view()
    # finished before the crash
    done = view.map_async(square, range(20), chunksize=1)
    assert done.get(START_TIMEOUT_S) == [x * x for x in range(20)]
    # running (and queued behind them) when the controller dies, and until it is back:
    # sleeps of a few seconds could all end first on a loaded machine, failing nothing
    release = os.path.join(c.profile_dir, "release")
    with view.temp_flags(retries=2):
        retried = [view.apply_async(held, release, f"retried-{i}") for i in range(4)]
    without_retries = [view.apply_async(held, release, "no-retries") for i in range(4)]
    direct = rc[ids[0]].apply_async(held, release, "direct")
    wait_until(lambda: sum(rc.queue_status()[e]["tasks"] for e in ids) >= 2, START_TIMEOUT_S,
               "the tasks reached the engines")
    # every request on disk (the controller answers before it commits: a request it
    # had not committed when killed is lost, and its client is told so)
    msg_ids = [m for ar in [*retried, *without_retries, direct] for m in ar.msg_ids]
    wait_until(lambda: _on_disk(c, msg_ids) and _on_disk(c, done.msg_ids, finished=True),
               START_TIMEOUT_S, "the requests were committed to the DB")
    _restart_controller(c, ["--reuse", "--db", "sqlite"], "controller2")
    open(release, "w").close()

    # the engines come back with their ids (the same processes), the client by itself
    wait_until(lambda: sorted(rc.ids) == ids, START_TIMEOUT_S, f"engines {ids} registered again")
    assert {e: rc._engines[e]["pid"] for e in ids} == pids
    for ar in retried:
        assert ar.get(START_TIMEOUT_S).startswith("retried-")
    for ar in [*without_retries, direct]:
        # nothing pending forever: each ran before the crash, or fails saying why
        assert ar.wait(START_TIMEOUT_S)
        if not ar.successful():
            with pytest.raises(errors.EngineError, match="controller restarted"):
                ar.get()
    assert any(not ar.successful() for ar in [*without_retries, direct])
    # finished results are still there by msg_id, for this client and a new one
    chunks = [[x * x] for x in range(20)]   # a map's tasks each return a list
    assert rc.get_result(done.msg_ids).get(START_TIMEOUT_S) == chunks
    rc2 = c.client()
    assert rc2.get_result(done.msg_ids).get(START_TIMEOUT_S) == chunks
    assert rc2.get_result(retried[0].msg_ids[0]).get(START_TIMEOUT_S) == "retried-0"
    # and the cluster works as before
    assert view.map_sync(square, range(50)) == [x * x for x in range(50)]
    # the client's engine list is the new controller's, even if the wait above passed on
    # the old list (before the client saw the restart) and the notifications of the
    # engines' registration came while its notification socket was reconnecting
    wait_until(lambda: sorted(rc.ids) == ids, START_TIMEOUT_S, "the client's engine list")
    assert rc[:].apply_sync(os.getpid) == [pids[e] for e in ids]
    for i in range(2):
        assert "registering again as engine" in c.output(f"engine{i}")
    assert "took up" in c.output("controller2")


def logged(path, label, seconds):
    """Note in `path` that this copy of task `label` started, then sleep `seconds`."""
    import time

    with open(path, "a") as f:
        f.write(f"{label}\n")
    time.sleep(seconds)
    return label


def _restarted_with_copies_held(c, db_args, direct=False):
    """One engine holding two requests as the controller restarts with `db_args`: the
    first running, the second queued behind it (sent as one batch): a load-balanced map's
    tasks with retries, or (`direct`) two direct requests. Returns (client, their
    AsyncResults, the file of their starts)."""
    started = os.path.join(c.profile_dir, "started.txt")
    c.start_engines(1, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    if direct:
        ars = rc._together(lambda: [rc[rc.ids[0]].apply_async(logged, started, t, 60)
                                    for t in ("t0", "t1")])   # one message, as a map's tasks
    else:
        view = rc.load_balanced_view()
        with view.temp_flags(retries=2):
            ars = [view.map_async(logged, [started] * 2, ["t0", "t1"], [60] * 2)]
    wait_until(lambda: os.path.exists(started), START_TIMEOUT_S, "the first task started")
    if "sqlite" in db_args:
        wait_until(lambda: _on_disk(c, [m for ar in ars for m in ar.msg_ids]),
                   START_TIMEOUT_S, "the requests committed")
    _restart_controller(c, ["--reuse", *db_args], "controller2")
    return rc, ars, started


def test_a_restarted_controller_has_one_copy_of_each_task_run_and_aborted(sqlite_cluster):
    """The engine drops what it was sent before it registered again, the not yet started
    rest of a batch included: the restarted controller sends the tasks with retries again,
    so the old copy of one that it still ran would run twice, and an abort reached only
    one copy (the other ran on and ended the task as successful)."""
    c = sqlite_cluster
    rc, [ar], started = _restarted_with_copies_held(c, ["--db", "sqlite"])
    # a copy starts after the restart: the retry of t0 (t1 waits behind it), or before
    # the fix, the old copy of t1, with both new copies queued behind it
    wait_until(lambda: open(started).read().count("\n") >= 2, START_TIMEOUT_S,
               "a task started after the restart")
    rc.abort(ar.msg_ids)
    for msg_id in ar.msg_ids:
        with pytest.raises(errors.TaskAborted):
            rc.get_result(msg_id).get(START_TIMEOUT_S)
    # the engine runs in order: what it still held has started by the time this ran
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[0].apply_sync(square, 3) == 9
    assert open(started).read().split() == ["t0", "t0"]


def stubborn(path, label, release):
    """Note in `path` that this copy of `label` started; run until file `release` exists
    (at most 120 s), swallowing every interrupt (an abort) meanwhile."""
    import time

    with open(path, "a") as f:
        f.write(f"{label}\n")
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except BaseException:
            pass
    return label


def test_a_cancel_while_the_old_copy_runs_on_still_reaches_the_copy_sent_again(
        sqlite_cluster):
    """The old copy of a task that runs on after the engine registered again (it swallowed
    the abort) shares its msg_id with the copy the restarted controller sends again: a
    cancel (abort of what has not started, as AsyncResult.cancel sends) that finds the old
    copy running let it run on, and took the mark the new copy needed, which then ran."""
    c = sqlite_cluster
    started = os.path.join(c.profile_dir, "started.txt")
    release = os.path.join(c.profile_dir, "release")
    c.start_engines(1, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    with view.temp_flags(retries=2):
        ar = view.map_async(stubborn, [started] * 2, ["t0", "t1"], [release] * 2)
    wait_until(lambda: os.path.exists(started), START_TIMEOUT_S, "the first task started")
    wait_until(lambda: _on_disk(c, ar.msg_ids), START_TIMEOUT_S, "the requests committed")
    _restart_controller(c, ["--reuse", "--db", "sqlite"], "controller2")
    # the engine is back, and both tasks are sent to it again (held for its `ready`,
    # which it sends once the old copy ends)
    wait_until(lambda: "registered again as engine 0" in c.output("engine0"), START_TIMEOUT_S,
               "the engine registered again")
    wait_until(lambda: rc.queue_status().get(0, {}).get("tasks") == 2, START_TIMEOUT_S,
               "the tasks sent again")
    assert rc._abort(ar.msg_ids, queued_only=True) == 2
    open(release, "w").close()
    for msg_id in ar.msg_ids:
        with pytest.raises(errors.TaskAborted):
            rc.get_result(msg_id).get(START_TIMEOUT_S)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[0].apply_sync(square, 3) == 9
    assert open(started).read().split() == ["t0"]


@pytest.mark.parametrize("db_args, direct", [([], False), ([], True), (["--db", "sqlite"], True)],
                         ids=["dictdb-lb", "dictdb-direct", "sqlite-direct"])
def test_what_an_engine_held_before_a_restart_that_fails_it_never_runs(tmp_path, db_args,
                                                                        direct):
    """Requests that the restarted controller fails (it has no record of them, or they
    are direct: whether they ran is unknown) are dropped by the engine too, the rest of
    a batch included: the old copy of the second ran after its client was told it failed."""
    c = LocalCluster(tmp_path, controller_args=["--reuse", *db_args])
    try:
        rc, ars, started = _restarted_with_copies_held(c, db_args, direct)
        for ar in ars:
            with pytest.raises(errors.MiniparError, match="no record of request|controller "
                               "restarted while request"):
                ar.get(START_TIMEOUT_S)
        rc.wait_for_engines(1, START_TIMEOUT_S)
        # the engine runs in order: what it still held has started by the time this ran
        assert rc[0].apply_sync(square, 3) == 9
        assert open(started).read().split() == ["t0"]
    finally:
        c.stop()


class _HoldInLoss(logging.Handler):
    """Holds a client's I/O thread in its log line about the controller lost (`held` set)
    until `resume` is set: it says `connect` to a restarted controller only then."""

    def __init__(self):
        super().__init__()
        self.held, self.resume = threading.Event(), threading.Event()
        logging.getLogger("minipar.client").addHandler(self)

    def emit(self, record):
        if record.msg.startswith("lost the connection to the controller"):
            self.held.set()
            self.resume.wait(START_TIMEOUT_S)

    def close(self):   # the thread goes on, and is held no more
        self.resume.set()
        logging.getLogger("minipar.client").removeHandler(self)
        super().close()


def test_a_query_that_reaches_the_restarted_controller_first_is_answered(tmp_path):
    """A client's queries leave on a send-only socket; the controller answers each on the
    route `connect` gave it. After a restart that socket could reach the new controller
    before the reply socket (or the notification socket, which asks for the engines) had
    connected again and said `connect`: the answer went to no socket of the client's and
    the query waited out its timeout (1 run in 10 of the restart tests under load). Here
    the client's I/O thread is held in its log line about the loss, so it says `connect`
    only once a query, then a task, have left and a second client saw the task arrive."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    hold = _HoldInLoss()
    try:
        c.start_engines(1, args=ENGINE_ARGS)
        rc = c.client(reconnect_timeout=120)
        rc.wait_for_engines(1, START_TIMEOUT_S)
        _restart_controller(c, ["--reuse"], "controller2")
        wait_until(hold.held.is_set, START_TIMEOUT_S, "the client to see the controller lost")
        query = rc._send_query(protocol.QUEUE_STATUS, {})
        ar = rc.load_balanced_view().apply_async(square, 4)
        watcher = c.client()
        wait_until(lambda: watcher.db_query({"msg_id": ar.msg_ids[0]}, keys=["msg_id"]),
                   START_TIMEOUT_S, "the task, sent after the query, at the controller")
        hold.resume.set()
        assert query.result(START_TIMEOUT_S)["status"] == protocol.OK
        assert ar.get(START_TIMEOUT_S) == 16
    finally:
        hold.close()
        c.stop()


def test_controller_restart_without_records_fails_what_was_outstanding(tmp_path):
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        c.start_engines(1, args=ENGINE_ARGS)
        rc = c.client(reconnect_timeout=120)
        rc.wait_for_engines(1, START_TIMEOUT_S)
        ar = rc.load_balanced_view().apply_async(slow, 3.0, "lost")
        wait_until(lambda: rc.queue_status()[rc.ids[0]]["tasks"], START_TIMEOUT_S,
                   "the task reached the engine")
        _restart_controller(c, ["--reuse"], "controller2")
        with pytest.raises(errors.MiniparError, match="no record of request"):
            ar.get(START_TIMEOUT_S)
        rc.wait_for_engines(1, START_TIMEOUT_S)
        assert rc.load_balanced_view().apply_sync(square, 7) == 49
    finally:
        c.stop()


def test_no_engines_after_a_restart_names_those_registered_before(tmp_path):
    """The controller restarted with --reuse, its engines gone with it (killed, or given
    up): what waits for an engine said "None was since this client connected", though the
    client had engines. It names them, and where they ran, so the user restarts them; so
    it does to a client connected after the restart, which never knew them."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        (engine,) = c.start_engines(1)
        rc = c.client(reconnect_timeout=120)
        (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
        wait_until(lambda: _listed(c, [eid]), START_TIMEOUT_S, "the engine in the client file")
        # frozen first: the engine goes with it, unseen (a controller that finds the engine's
        # process gone, a beat later on a busy machine, says the engine died instead)
        freeze(c.controller.pid)
        engine.send_signal(signal.SIGKILL)
        engine.wait(START_TIMEOUT_S)
        _restart_controller(c, ["--reuse"], "controller2")
        wait_until(lambda: rc.ids == [], START_TIMEOUT_S, "the new controller's engine list")
        late = c.client()
        for client in (rc, late):
            with pytest.raises(errors.TimeoutError, match=rf"Engine\(s\) {eid} \(pid "
                               rf"{engine.pid} on \S+\) were registered before the controller "
                               "restarted"):
                client.load_balanced_view().apply_async(square, 7).get(0)
        # a client new to the controller takes the engines registered, as ever: here, none;
        # it says which did not come back (it said only "no engines are registered")
        with pytest.raises(errors.NoEnginesRegistered, match=rf"not registered again since the "
                           rf"controller restarted: engine\(s\) {eid} \(pid {engine.pid} on "):
            late[eid]

        def refused():   # once the controller waits for it no more (2 liveness periods)
            try:
                rc[eid]
            except errors.NoEnginesRegistered:
                return True

        wait_until(refused, START_TIMEOUT_S, "the client to refuse the engine's id again")
    finally:
        c.stop()


def _restarted_without_one(c, liveness):
    """Two engines registered, then the controller killed with one of them and restarted
    (--reuse, a grace of 2 x `liveness` beats of 0.2 s). Returns (a client connected before,
    the id of the engine alive, the id and pid of the one killed)."""
    engines = c.start_engines(2, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    ids = sorted(rc.wait_for_engines(2, START_TIMEOUT_S))
    wait_until(lambda: _listed(c, ids), START_TIMEOUT_S, "the engines in the client file")
    with open(c.client_file) as f:
        dead = next(int(e) for e, info in json.load(f)["engines"].items()
                    if info["pid"] == engines[1].pid)
    freeze(c.controller.pid)   # the engine goes with it, unseen (as above)
    engines[1].send_signal(signal.SIGKILL)
    engines[1].wait(START_TIMEOUT_S)
    _restart_controller(c, ["--reuse", "--heartbeat-liveness", str(liveness)], "controller2")
    (alive,) = set(ids) - {dead}
    return rc, alive, dead, engines[1].pid


def test_an_engine_not_back_after_a_restart_is_waited_for_at_that_restart_only(tmp_path):
    """The client file kept the engines not back after a --reuse restart for good: each
    later restart waited for them again, a reconnected client's rc[:] took them for
    registered and failed on them ("engine 1 is not registered"), restart after restart.
    Once the restart's grace is over (2 liveness periods), the file lists those registered."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, _, _ = _restarted_without_one(c, 2)

        def listed_alone():
            with open(c.client_file) as f:
                return set(json.load(f).get("engines", ())) == {str(alive)}

        wait_until(listed_alone, START_TIMEOUT_S, f"the file to list engine {alive} alone")
        _restart_controller(c, ["--reuse", "--heartbeat-liveness", "2"], "controller3")
        wait_until(listed_alone, START_TIMEOUT_S, f"the file to list engine {alive} alone")
        assert rc[:].apply_sync(square, 3) == [9]
        assert c.client()[:].apply_sync(square, 4) == [16]
    finally:
        c.stop()


def test_a_request_for_an_engine_not_back_after_a_restart_fails_saying_so(tmp_path):
    """A request a restarted controller held for an engine of before that never came back
    failed, at the grace's end, with "engine 1 is not registered", as for an id never used.
    It names the engine, where it ran, and that it did not register again."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, dead, pid = _restarted_without_one(c, 10)   # a grace of 4 s (see below)
        wait_until(lambda: rc.ids == [alive], START_TIMEOUT_S, "the client to reconnect")
        ar = rc[dead].apply_async(square, 2)   # let through: the controller waits for it
        with pytest.raises(errors.EngineError, match=rf"engine {dead} \(pid {pid} on \S+\) did "
                           "not register again after the controller restarted: start it again"):
            ar.get(START_TIMEOUT_S)
    finally:
        c.stop()


def test_wait_for_engines_names_the_engines_not_back_after_a_restart(tmp_path):
    """rc.wait_for_engines(n), what a user calls after a restart (and what the "no engine is
    registered" message suggests), timed out with "1 engines registered after 0.5 s, wanted
    2", for a client connected before the restart or after it, though both know which engine
    has not registered again. It names it, and where it ran."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, dead, pid = _restarted_without_one(c, 2)
        wait_until(lambda: rc.ids == [alive], START_TIMEOUT_S, "the client to reconnect")
        for client in (rc, c.client()):
            with pytest.raises(TimeoutError, match=rf"wanted 2; not registered again since the "
                               rf"controller restarted: engine\(s\) {dead} \(pid {pid} on \S+\)"):
                client.wait_for_engines(2, timeout=0.5)
    finally:
        c.stop()


def _held_for_one_not_back(c):
    """_restarted_without_one(c, 10) (a grace of 4 s), the client reconnected and a request
    held for the engine not back: (rc, alive, dead, its pid, the request's AsyncResult).
    The tests wait the grace out; what they do in it takes under half a second with every
    core busy, and a liveness of 10 beats is the conftest's, patient with a loaded box."""
    rc, alive, dead, pid = _restarted_without_one(c, 10)
    wait_until(lambda: rc.ids == [alive], START_TIMEOUT_S, "the client to reconnect")
    ar = rc[dead].apply_async(square, 2)
    wait_until(lambda: rc.queue_status(dead)["queue"] == 1, START_TIMEOUT_S,
               "the request held for the engine")
    return rc, alive, dead, pid, ar


def test_a_new_engine_never_takes_the_id_of_one_awaited_after_a_restart(tmp_path):
    """An engine started in a --reuse restart's grace took the first free id: that of an
    engine of before not back yet, so the requests held for that one ran on the new engine,
    without its namespace (a NameError for what was pushed there). It takes another id;
    they wait for their engine, then fail saying it did not come back."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, dead, _, ar = _held_for_one_not_back(c)
        c.start_engines(1, args=ENGINE_ARGS)
        (new,) = set(rc.wait_for_engines(2, START_TIMEOUT_S)) - {alive}
        assert new not in (alive, dead)
        with pytest.raises(errors.EngineError, match="did not register again"):
            ar.get(START_TIMEOUT_S)
        assert rc[new].apply_sync(square, 3) == 9
    finally:
        c.stop()


def test_top_shows_the_engines_a_restarted_controller_waits_for(tmp_path):
    """In a --reuse restart's grace, python -m minipar.top (rc.status()) showed no row for
    an engine not back yet, and "0 queued" though requests waited for it (queue_status
    counts them). It is a row, "awaited", with its pid and those requests; they are queued.
    Once the grace is over its row vanished, as if it had never been: it is "lost", as an
    engine that missed its heartbeats, with its pid, and counted so."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, dead, pid, ar = _held_for_one_not_back(c)
        snap = rc.status()
        (row,) = [r for r in snap["engines"] if r["id"] == dead]
        assert (row["state"], row["pid"], row["queued"]) == ("awaited", pid, 1)
        assert (snap["engines_awaited"], snap["queued"]) == (1, 1)
        assert ", 1 awaited," in repr(snap) and "1 queued" in repr(snap)
        with pytest.raises(errors.EngineError, match="did not register again"):
            ar.get(START_TIMEOUT_S)
        snap = rc.status()
        (row,) = [r for r in snap["engines"] if r["id"] == dead]
        assert (row["state"], row["pid"], row["queued"]) == ("lost", pid, 0)
        assert row["lost_s"] >= 0
        assert (snap["engines_awaited"], snap["engines_lost"], snap["queued"]) == (0, 1, 0)
        assert "1 alive, 1 lost " in repr(snap) and re.search(rf"\n *{dead} .* lost ", repr(snap))
    finally:
        c.stop()


def test_a_new_client_says_an_engine_not_back_after_a_restart_was_registered(tmp_path):
    """After a --reuse restart, a Client made then (or one reconnected, once the grace is
    over) said only "engine 1 is not registered" for rc[1], an engine of before not back, as
    for an id never used. It names it, where it ran, that it was registered before the
    restart, and what to do."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, alive, dead, pid, ar = _held_for_one_not_back(c)
        late = c.client()
        assert late.ids == [alive]
        said = (rf"engine {dead} \(pid {pid} on \S+\) was registered before the controller "
                r"restarted and has not registered again yet: start it again if it stopped, "
                r"rc.wait_for_engines\(n\) waits for engines, or pick others; registered: "
                rf"\[{alive}\]")
        for ask in (lambda: late[dead], lambda: late[[alive, dead]].apply_sync(square, 2)):
            with pytest.raises(IndexError, match=said):
                ask()
        with pytest.raises(errors.EngineError, match="did not register again"):
            ar.get(START_TIMEOUT_S)   # the grace is over: the reconnected client says so too
        with pytest.raises(IndexError, match=said):
            rc[dead]
        with pytest.raises(IndexError, match=r"engine 99 is not registered; registered: "):
            late[99]
    finally:
        c.stop()


def test_a_cancelled_request_lost_with_the_controller_is_no_longer_pending(tmp_path):
    """cancel() lets a request its engine started run on, its future cancelled and still
    waiting for the reply (made here by cancelling only locally). A controller restarted
    without records will never send that reply: the client, asking after reconnecting,
    forgets the request, where rc.pending_requests() listed it and every rc.abort()
    named it (waiting out the controller's grace for an id not here yet) for good."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        c.start_engines(1, args=ENGINE_ARGS)
        rc = c.client(reconnect_timeout=120)
        rc.wait_for_engines(1, START_TIMEOUT_S)
        ar = rc[rc.ids[0]].apply_async(slow, 30, "cancelled")
        assert ar._cancel_local() and ar.cancelled()
        wait_until(lambda: rc.queue_status()[rc.ids[0]]["queue"], START_TIMEOUT_S,
                   "the request reached the engine")
        _restart_controller(c, ["--reuse"], "controller2")
        wait_until(lambda: not rc.pending_requests(), START_TIMEOUT_S,
                   "the cancelled request forgotten after reconnecting")
    finally:
        c.stop()


def test_close_sends_what_it_queued_but_waits_for_no_controller_that_is_gone(tmp_path):
    """close() gives what is still queued a second to leave while the controller is
    there: requests made just before it all arrive. Once the connection is lost (the
    controller killed here, run with --reuse so that its clients wait for it), nothing can
    reach it and close() waits for nothing, where it waited out that second: only its time
    shows that, which no test asserts, so this one checks that such a close() still fails
    what was outstanding."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        c.start_engines(1)
        closing, watcher = c.client(), c.client()
        watcher.wait_for_engines(1, START_TIMEOUT_S)
        view = closing.load_balanced_view()
        ids = [view.apply_async(slow, 0, i).msg_ids[0] for i in range(20)]
        closing.close()
        status = watcher.result_status(ids)   # a KeyError for one that never arrived
        assert sorted(status["pending"] + status["completed"]) == sorted(ids)
        c.controller.kill()
        wait_until(lambda: watcher._lost_at is not None, TIMEOUT, "the controller's loss seen")
        ar = watcher.load_balanced_view().apply_async(slow, 0, 1)   # queued: it cannot leave
        watcher.close()
        with pytest.raises(RuntimeError, match="closed before the reply came"):
            ar.get(0)
    finally:
        c.stop()


def test_clients_and_engines_give_up_on_a_controller_that_stays_away(local_cluster):
    """A controller run without --reuse and killed cannot come back (a new one has other
    ports and key): its client gives up as it finds the process gone, where it waited out
    its whole reconnect_timeout. Its engines wait their missed heartbeats, then exit."""
    c = local_cluster
    (engine,) = c.start_engines(1, args=["--max-missed-heartbeats", "10"])   # 2 s
    rc = c.client(reconnect_timeout=600)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc.load_balanced_view().apply_async(slow, 30, "never")
    wait_until(lambda: rc.queue_status()[rc.ids[0]]["tasks"], START_TIMEOUT_S,
               "the task reached the engine")
    c.controller.send_signal(signal.SIGKILL)
    with pytest.raises(errors.MiniparError, match=rf"its process \(pid {c.controller.pid}\) "
                       "ended, started without --reuse: it cannot come back"):
        ar.get(START_TIMEOUT_S)
    assert engine.wait(START_TIMEOUT_S) == 1
    # it said it was waiting (after 5 beats) before it gave up (after 10)
    out = c.output("engine0")
    assert re.search(r"silent for [\d.]+ s \(stopped, or restarting\?\): waiting up to", out)
    assert out.index("waiting up to") < out.index("(10 heartbeats of 0.2 s): exiting")
    # every later call says so at once, rather than waiting for a controller that is gone
    view = rc.load_balanced_view()
    for call in (lambda: view.map_async(square, range(8)), lambda: view.apply_async(square, 2),
                 rc.queue_status, lambda: rc.abort("all"), lambda: rc.ids):
        with pytest.raises(errors.MiniparError, match="is gone.*--reuse.*new Client"):
            call()


def test_a_reuse_controller_started_over_one_without_is_waited_for_when_lost(local_cluster,
                                                                            caplog):
    """A controller started without --reuse, killed, then started again by hand with --reuse
    (over its files: same ports and key): its client reconnected but went on judging the
    controller by the first one's pid and --reuse, so when the second was lost too it
    failed what was outstanding at once, saying the first one's process had ended "started
    without --reuse: it cannot come back". It reads them again when the controller is back,
    and waits for the one with --reuse: a query made meanwhile is answered once it is."""
    c = local_cluster
    c.start_engines(1, args=ENGINE_ARGS)
    rc = c.client(timeout=START_TIMEOUT_S, reconnect_timeout=600)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    _restart_controller(c, ["--reuse"], "controller2")

    def answered():   # the client gave up on the first (its process ended), then reconnected
        with contextlib.suppress(errors.MiniparError):
            return rc.queue_status(verbose=True)
    wait_until(answered, START_TIMEOUT_S, "the client reconnected to the second controller")
    caplog.clear()
    c.controller.send_signal(signal.SIGKILL)
    c.controller.wait(10)
    wait_until(lambda: "lost the connection to the controller" in caplog.text,
               START_TIMEOUT_S, "the client to lose the second controller")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asked = pool.submit(rc.queue_status)
        c.controller = c._spawn("controller", ["--profile-dir", c.profile_dir,
                                               "--heartbeat-period", "0.2", "--reuse"],
                                name="controller3")
        assert asked.result(START_TIMEOUT_S)["unassigned"] == 0
    assert "cannot come back" not in caplog.text, caplog.text


def test_wait_for_engines_fails_once_its_controller_is_given_up(local_cluster):
    """`rc.wait_for_engines(n)`, with no timeout (ipyparallel's default), waited for ever
    once its client had given the controller up (killed, started without --reuse): nothing
    woke it, though every other call then failed at once, saying so. It raises that too."""
    rc = local_cluster.client(reconnect_timeout=600)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        waiting = pool.submit(rc.wait_for_engines, 1)
        wait_until(waiting.running, START_TIMEOUT_S, "wait_for_engines to be waiting")
        local_cluster.controller.send_signal(signal.SIGKILL)
        with pytest.raises(errors.MiniparError, match=r"is gone: its process \(pid \d+\) ended, "
                           "started without --reuse: it cannot come back"):
            waiting.result(START_TIMEOUT_S)
    finally:
        rc.close()   # wakes a wait_for_engines still waiting
        pool.shutdown()


def test_requests_given_up_with_their_controller_name_their_engines(local_cluster):
    """A multi-engine request's CompositeError, made in the client as it gave up on its
    controller, said ``[?:apply]`` for each engine, though the client had sent each copy
    to a known engine: it names them, as an engine's own error does."""
    c = local_cluster
    c.start_engines(2)
    rc = c.client(reconnect_timeout=600)
    ids = rc.wait_for_engines(2, START_TIMEOUT_S)
    ar, ex = rc[:].apply_async(slow, 30, "never"), rc[:].execute("import time; time.sleep(30)")
    wait_until(lambda: rc.queue_status()[ids[0]]["queue"] == 2, START_TIMEOUT_S,
               "the requests reached the engines")
    c.controller.send_signal(signal.SIGKILL)
    for ar, kind in ((ar, "apply"), (ex, "execute")):
        with pytest.raises(errors.CompositeError, match="it cannot come back") as info:
            ar.get(START_TIMEOUT_S)
        assert [e.engine_info.get("engine_id") for e in info.value.elist] == ids
        for eid in ids:
            assert f"[{eid}:{kind}]: MiniparError: lost the controller" in str(info.value)


def test_an_engine_started_before_the_next_controller_waits_for_it(local_cluster):
    """After a controller was killed (kill -9, a crash) its connection file stays, naming
    a pid that is gone. An engine started then, before the next controller (the wrong
    order, which the engine waits 10 s for when there is no file at all), exited at once
    calling the file stale; it waits for the new controller's file as for a missing one."""
    c = local_cluster
    c.controller.send_signal(signal.SIGKILL)
    c.controller.wait(10)
    (engine,) = c.start_engines(1)
    wait_until(lambda: "is stale" in c.output("engine0") or engine.poll() is not None,
               START_TIMEOUT_S, "the engine to read the stale file")
    assert engine.poll() is None, c.output("engine0")
    assert re.search(r"connection file \S+ is stale \(controller pid \d+ is not running\): "
                     r"waiting up to 10 s for a controller to write it", c.output("engine0"))
    _restart_controller(c, [], "controller2")
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(os.getpid) == [engine.pid]


def test_an_engine_whose_controller_was_replaced_without_reuse_exits_saying_so(
        local_cluster):
    """A controller killed and started again without --reuse has new ports and key: its
    engines cannot come back to it, yet they waited out all their missed heartbeats
    saying "restarting?", then blamed the silence. Each reads its connection file while
    the controller is silent and, finding another controller there, exits saying so."""
    c = local_cluster
    (engine,) = c.start_engines(1, args=["--max-missed-heartbeats", "100000"])   # 5.5 h
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    rc.close()
    _restart_controller(c, [], "controller2")
    assert engine.wait(START_TIMEOUT_S) == 1
    out = c.output("engine0")
    assert re.search(rf"{re.escape(c.engine_file)} now names another controller \(pid "
                     rf"{c.controller.pid}\), started without --reuse, so this engine's "
                     r"cannot come back: start engines for the new one: exiting", out), out
    (again,) = c.start_engines(1)
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(os.getpid) == [again.pid]


def test_a_client_whose_controller_was_replaced_without_reuse_fails_at_once_saying_so(
        local_cluster):
    """A client whose controller was killed and replaced by one started without --reuse
    (other ports and key) waited its whole reconnect_timeout (60 s by default), then
    advised a restart with --reuse, though the new controller already held the profile.
    As its engines, it reads the connection file while the controller is lost and, finding
    another controller there, fails what was outstanding at once saying how to use it."""
    c = local_cluster
    c.start_engines(1)
    rc = c.client()   # reconnect_timeout: 60 s, longer than every wait below
    rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc.load_balanced_view().apply_async(slow, 60, "lost")
    wait_until(lambda: rc.queue_status()[rc.ids[0]]["tasks"], START_TIMEOUT_S,
               "the task reached the engine")
    # as if it ran on another host: else the client finds its process gone first, and
    # fails at once saying so (test_clients_and_engines_give_up_on_a_controller_that_...)
    rc.info = dict(rc.info, host="another-host")
    _restart_controller(c, [], "controller2")
    replaced = (rf"a new controller \(pid {c.controller.pid}\) replaced it, started without "
                rf"--reuse \(other ports and key in {re.escape(c.client_file)}\)")
    with pytest.raises(errors.MiniparError, match=rf"{replaced}, so the outcome of this "
                       r"request is unknown \(submit it again\)\. Make a new Client of the "
                       r"same profile"):
        ar.get(START_TIMEOUT_S)
    with pytest.raises(errors.MiniparError, match=rf"is gone: {replaced}\. Make a new Client"):
        rc.ids
    (again,) = c.start_engines(1)
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(os.getpid) == [again.pid]


def test_engines_that_give_up_on_a_frozen_controller_say_why(local_cluster, monkeypatch):
    """Engines leave a controller silent past their --max-missed-heartbeats (SIGSTOP
    here). They did not crash: their unregister, which waits in ZeroMQ's buffers for the
    controller, says why, and when it resumes their tasks (running, and queued behind)
    fail with that reason rather than as an engine's death or an abort."""
    monkeypatch.setattr(minipar.client, "CONTROLLER_SILENCE_S", START_TIMEOUT_S)  # waits it out
    c = local_cluster
    (engine,) = c.start_engines(1, args=["--max-missed-heartbeats", "10"])   # 2 s
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    running = rc.load_balanced_view().apply_async(slow, 60, "never")
    queued = rc[rc.ids[0]].apply_async(slow, 60, "never")
    wait_until(running.running, START_TIMEOUT_S, "the task running")
    c.controller.send_signal(signal.SIGSTOP)
    try:
        assert engine.wait(START_TIMEOUT_S) == 1
    finally:
        c.controller.send_signal(signal.SIGCONT)
    for ar in (running, queued):
        with pytest.raises(errors.EngineError, match=r"engine \d+ stopped because the "
                           r"controller was silent for [\d.]+ s \(10 heartbeats of 0.2 s\)"):
            ar.get(START_TIMEOUT_S)
    assert "unregistered: it stopped because" in c.output("controller")


def test_a_new_client_finds_results_of_a_previous_controller(sqlite_cluster):
    """Records outlive the controller: a client made after the restart reads them."""
    c = sqlite_cluster
    c.start_engines(1, args=ENGINE_ARGS)
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc[:].apply_async(square, 12)
    assert ar.get(START_TIMEOUT_S) == [144]
    rc.close()
    wait_until(lambda: _on_disk(c, ar.msg_ids, finished=True), START_TIMEOUT_S,
               "the result was committed")
    _restart_controller(c, ["--reuse", "--db", "sqlite"], "controller2")
    rc2 = minipar.Client(c.client_file, timeout=START_TIMEOUT_S)
    c.clients.append(rc2)
    assert rc2.get_result(ar.msg_ids).get(START_TIMEOUT_S) == [144]


def noted(path, i):
    """Note in `path` that this copy of task `i` ran."""
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def test_a_result_a_client_received_never_runs_again_after_a_restart(sqlite_cluster):
    """With --db sqlite, a result leaves the hub only once its record's final state is
    committed. It sent a pass's results before the pass's commit: killed between the
    two, it left tasks whose results the client had "pending" on disk, and the restarted
    controller ran them again (retries). Killed in the middle of a burst, at a moment when
    the client holds a result not final on disk if there is one, else at 3/4 of the burst."""
    c = sqlite_cluster
    ran = os.path.join(c.profile_dir, "ran.txt")
    c.start_engines(2, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    rc.wait_for_engines(2, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    n = 4000
    with view.temp_flags(retries=1):
        ar = view.map_async(noted, [ran] * n, range(n), chunksize=1)
    futures = ar.futures

    def killable():   # the controller frozen, the tasks whose results the client has
        freeze(c.controller.pid)
        received = [i for i, f in enumerate(futures) if f.done()]
        if {futures[i].msg_id for i in received} - _finished(c) or len(received) >= n * 3 // 4:
            return received
        c.controller.send_signal(signal.SIGCONT)
        return None

    received = wait_until(killable, TIMEOUT / 2, "3/4 of the burst's results received")
    _restart_controller(c, ["--reuse", "--db", "sqlite"], "controller2")

    assert ar.wait(START_TIMEOUT_S)
    with open(ran) as f:
        runs = collections.Counter(int(line) for line in f)
    twice = [i for i in received if runs[i] != 1]
    assert not twice, f"{len(twice)} tasks whose results were received ran again: {twice[:20]}"
    for i, f in enumerate(futures):   # each ends once: its result, or lost with the controller
        if f.exception() is None:
            assert f.result() == [i] and 1 <= runs[i] <= 2
        else:   # read, not committed, when it was killed: its client is told
            assert "has no record of request" in str(f.exception()), i
    assert _on_disk(c, [f.msg_id for f in futures if f.exception() is None], finished=True)


def test_a_frozen_controller_is_lost_as_a_closed_connection_is(local_cluster, monkeypatch):
    # SIGSTOP keeps the controller's connections open while nothing answers on them:
    # only the heartbeat on the client's connection tells it is gone
    monkeypatch.setattr(minipar.client, "CONTROLLER_SILENCE_S", 1.0)
    c = local_cluster
    c.start_engines(1)
    rc = c.client(reconnect_timeout=2)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc.load_balanced_view().apply_async(slow, 30, "never")
    c.controller.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(errors.MiniparError, match="did not come back within 2 s"):
            ar.get(START_TIMEOUT_S)
    finally:
        c.controller.send_signal(signal.SIGCONT)


def test_a_controller_stopped_without_reuse_ends_its_requests_and_engines(local_cluster):
    """Stopped without --reuse, a controller's key and ports go with it: its engines stop
    and what its clients wait for fails at once, rather than after max_missed_heartbeats
    (an hour here) and reconnect_timeout (ten minutes here)."""
    c = local_cluster
    (engine,) = c.start_engines(1, args=["--max-missed-heartbeats", "18000"])
    rc = c.client(reconnect_timeout=600)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    running = rc.load_balanced_view().apply_async(slow, 60, "never")
    queued = rc[rc.ids[0]].apply_async(slow, 60, "never")
    wait_until(running.running, START_TIMEOUT_S, "the task running")
    c.controller.send_signal(signal.SIGTERM)
    for ar in (running, queued):
        with pytest.raises(errors.TaskAborted, match="controller stopped.*--reuse"):
            ar.get(START_TIMEOUT_S)
    assert engine.wait(START_TIMEOUT_S) == 0
    assert c.controller.wait(START_TIMEOUT_S) == 0
    # it said so to its clients: a later call fails at once, not after reconnect_timeout

    def refused():
        try:
            rc.load_balanced_view().apply_async(abs, -1)
        except minipar.MiniparError as e:
            return str(e)

    said = wait_until(refused, 10, "a call refused at once")
    assert re.search(r"controller .*stopped.*--reuse.*does not come back", said), said
    with pytest.raises(minipar.MiniparError, match="does not come back"):
        rc.ids


@pytest.mark.parametrize("damage", ["cut short", "not an object", "curve keys cut short"])
def test_reuse_over_a_damaged_file_starts_with_new_ports_and_keys(tmp_path, damage):
    """A controller restarted with --reuse over a connection file cut short (its crash
    mid-write, a full disk) or edited into something else, or with --curve over a key
    file cut short, ended in a traceback (or a usage error naming no file). It now warns
    that it cannot reuse that file, starts as without --reuse, and engines and clients
    work with the files it writes."""
    curve = damage.startswith("curve")
    if curve and not __import__("zmq").has("curve"):
        pytest.skip("libzmq without CurveZMQ")
    args = ["--reuse", "--curve"] if curve else ["--reuse"]
    c = LocalCluster(tmp_path, controller_args=args)
    try:
        path = os.path.join(os.path.dirname(c.client_file), "minipar-curve.json") \
            if curve else c.client_file
        good = open(path).read()
        c.controller.send_signal(signal.SIGKILL)
        c.controller.wait(10)
        with open(path, "w") as f:
            f.write("[1, 2]" if damage == "not an object" else good[:20])
        _restart_controller(c, args, "controller2")
        log = c.output("controller2")
        assert f"--reuse: {path} " in log and "Traceback" not in log, log
        assert ("cannot be read" if curve else "cannot be reused") in log, log
        c.start_engines(1, ENGINE_ARGS)
        rc = c.client()
        rc.wait_for_engines(1, START_TIMEOUT_S)
        assert rc.load_balanced_view().apply_sync(square, 3) == 9
    finally:
        c.stop()


@pytest.mark.parametrize("content", ["garbage", "another table"])
def test_a_task_database_that_is_not_ours_is_one_line_not_a_traceback(tmp_path, content):
    """--db sqlite over a tasks.db that is not a database (or is damaged, or another
    program's, with a `records` table of its own) ended the controller in a traceback
    from sqlite3, and another program's table passed until the first task was stored.
    The controller now says which file and what to do, in one line, and exits 1."""
    profile = tmp_path / "profile"
    profile.mkdir()
    path = profile / "tasks.db"
    if content == "garbage":
        path.write_bytes(b"not a database\n" * 100)
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE records (msg_id TEXT, status TEXT)")
        db.commit()
        db.close()
    started = None
    try:
        with pytest.raises(RuntimeError, match="controller did not start") as e:
            started = LocalCluster(tmp_path, controller_args=["--db", "sqlite"])
    finally:
        if started is not None:
            started.stop()
    assert f"cannot keep task records in {path}" in str(e.value)
    assert "move it away" in str(e.value) and "Traceback" not in str(e.value)


def test_ctrl_c_while_the_controller_is_lost_returns_at_once_saying_what_follows(
        sqlite_cluster, tmp_path):
    """Ctrl-C in a blocking call while the client has lost its controller aborted what
    the call sent by asking the controller, which cannot answer: it hung 10 s and then
    said "could not abort 1 requests: TimeoutError". The client knows the connection is
    gone: the abort waits in its queue for the controller, the call returns at once
    saying so, and the request is aborted once the controller is back."""
    c = sqlite_cluster
    c.start_engines(1, args=ENGINE_ARGS)
    rc = c.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    script, out = tmp_path / "user.py", tmp_path / "user.log"
    script.write_text(textwrap.dedent(f"""
        import minipar
        rc = minipar.Client({c.client_file!r}, reconnect_timeout=120)
        print("running", flush=True)
        try:
            # with retries: a restarted controller runs it again, unless aborted
            rc.load_balanced_view(retries=1).apply_sync(exec, "import time; time.sleep(60)")
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            for f in rc.pending_requests():
                print("then:", repr(f.exception(60)), flush=True)
    """))
    with open(out, "wb") as log:   # as at a terminal: SIGINT raises KeyboardInterrupt
        user = subprocess.Popen([sys.executable, str(script)], stdout=log, env=_env(),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: rc.queue_status()[rc.ids[0]]["tasks"], START_TIMEOUT_S,
                   "the user's task to start")
        wait_until(lambda: _on_disk(c, rc.hub_history()), START_TIMEOUT_S,
                   "the task committed to the DB")
        c.controller.send_signal(signal.SIGKILL)
        wait_until(lambda: "lost the connection" in out.read_text(), START_TIMEOUT_S,
                   "the user's client to see the controller lost")
        user.send_signal(signal.SIGINT)
        wait_until(lambda: "KeyboardInterrupt" in out.read_text(), START_TIMEOUT_S,
                   "the Ctrl-C to return")
        text = out.read_text()
        assert re.search(r"the controller is unreachable \(lost [\d.]+ s ago\): the 1 "
                         r"request\(s\) stopped here are aborted \(or failed\) when it comes "
                         r"back, or fail if it is not back within 120 s of its loss "
                         r"\(reconnect_timeout\)", text), text
        assert "could not abort" not in text
        _restart_controller(c, ["--reuse", "--db", "sqlite"], "controller2")
        assert user.wait(START_TIMEOUT_S) == 0
        text = out.read_text()
        assert re.search(r"then: .*TaskAborted", text), text
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()


def test_direct_requests_sent_across_a_restart_wait_for_their_engines(tmp_path):
    """A controller restarted with --reuse comes back before its engines register again.
    Direct and broadcast requests sent while it was away (the client's socket holds them)
    or just after it came back reached it first and failed at once: "engine 0 is not
    registered (registered: [])". They wait for their engines. Here the engines are frozen
    until the requests are in, and the client's I/O thread is held in its log line about
    the loss (as above), so that the client still takes engine 0 for registered."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    hold = _HoldInLoss()
    try:
        engines = c.start_engines(2, args=ENGINE_ARGS)
        rc = c.client(reconnect_timeout=120)
        ids = sorted(rc.wait_for_engines(2, START_TIMEOUT_S))
        one, both, bview = rc[ids[0]], rc.direct_view(ids), rc.broadcast_view(ids)
        for engine in engines:
            freeze(engine.pid)
        c.controller.send_signal(signal.SIGKILL)
        c.controller.wait(10)
        wait_until(hold.held.is_set, START_TIMEOUT_S, "the client to see the controller lost")
        during = [one.apply_async(square, 3), both.push({"a": 5}, block=False),
                  bview.apply_async(square, 4)]
        _restart_controller(c, ["--reuse", "--heartbeat-liveness", "25"], "controller2")
        after = [one.apply_async(square, 6), both.execute("b = a + 1", block=False)]
        watcher = c.client()
        msg_ids = [m for ar in [*during, *after] for m in ar.msg_ids]
        wait_until(lambda: len(watcher.db_query({"msg_id": {"$in": msg_ids}}, keys=["msg_id"]))
                   == len(msg_ids), START_TIMEOUT_S, "the requests at the new controller")
        hold.resume.set()
        for engine in engines:
            engine.send_signal(signal.SIGCONT)
        assert during[0].get(START_TIMEOUT_S) == 9
        during[1].get(START_TIMEOUT_S)
        assert during[2].get(START_TIMEOUT_S) == [16, 16]
        assert after[0].get(START_TIMEOUT_S) == 36
        after[1].get(START_TIMEOUT_S)
        assert both.pull("b", block=True) == [6, 6]
    finally:
        hold.close()
        for engine in c.engines:   # none left stopped
            engine.send_signal(signal.SIGCONT)
        c.stop()


def _restarted_with_engines_frozen(c, n=2):
    """`n` engines registered and frozen, and the controller restarted (--reuse, a grace of
    2 x 50 beats of 0.2 s) with a client that holds the new controller's engine list, empty
    until the engines, once the test resumes them, register again. Returns (the client, the
    engines, their ids, rc[:] made before the restart)."""
    engines = c.start_engines(n, args=ENGINE_ARGS)
    rc = c.client(reconnect_timeout=120)
    ids = sorted(rc.wait_for_engines(n, START_TIMEOUT_S))
    view = rc[:]
    wait_until(lambda: _listed(c, ids), START_TIMEOUT_S, "the engines in the client file")
    for engine in engines:
        freeze(engine.pid)
    _restart_controller(c, ["--reuse", "--heartbeat-liveness", "50"], "controller2")
    wait_until(lambda: rc.ids == [], START_TIMEOUT_S, "the client to take the new (empty) list")
    return rc, engines, ids, view


def test_views_used_right_after_a_restart_wait_for_their_engines(tmp_path):
    """Right after a --reuse restart a client holds the new controller's engine list, empty
    for a beat or two, till its engines register again. rc[0] and rc[:] raised
    NoEnginesRegistered, and a view made before the restart (rc[:]) or rc.direct_view(targets=1)
    an IndexError, in the client, though the controller holds requests for those engines
    then: they go, and complete once the engines are back. An id the controller does not
    expect back is refused at once, as before."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        rc, engines, ids, made_before = _restarted_with_engines_frozen(c)
        blocked = pool.submit(rc[ids[0]].apply_sync, square, 3)   # a script's next line
        wait_until(lambda: blocked.done() or rc.pending_requests(), START_TIMEOUT_S,
                   "the blocking call's request to leave")
        every = rc[:]
        assert every.targets == ids
        ars = [every.apply_async(square, 4), made_before.apply_async(square, 5),
               rc.direct_view(targets=ids[1]).apply_async(square, 6)]
        with pytest.raises(IndexError, match="engine 7 is not registered"):
            rc[7]
        watcher = c.client()
        msg_ids = [f.msg_id for f in rc.pending_requests()]
        wait_until(lambda: len(watcher.db_query({"msg_id": {"$in": msg_ids}}, keys=["msg_id"]))
                   == len(msg_ids) == 6, START_TIMEOUT_S, "the requests at the new controller")
        for engine in engines:
            engine.send_signal(signal.SIGCONT)
        assert blocked.result(START_TIMEOUT_S) == 9
        assert [ar.get(START_TIMEOUT_S) for ar in ars] == [[16, 16], [25, 25], 36]
        assert sorted(rc.ids) == ids
    finally:
        pool.shutdown(wait=False)
        c.stop()


def test_requests_held_for_engines_not_back_show_in_queue_status(tmp_path):
    """The requests a restarted controller holds for engines not registered again yet were
    in no count of rc.queue_status(): no engine, nothing unassigned, as if nothing waited.
    They are their engine's queue, which says it is not registered (yet)."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        rc, engines, ids, _ = _restarted_with_engines_frozen(c)
        ars = [rc[ids[0]].apply_async(square, 2), rc[ids[0]].apply_async(square, 3),
               rc[:].apply_async(square, 4)]
        wait_until(lambda: {e: s["queue"] for e, s in rc.queue_status().items()
                            if e != "unassigned"} == {ids[0]: 3, ids[1]: 1}, START_TIMEOUT_S,
                   "the requests counted in their engines' queues")
        assert rc.queue_status(ids[0]) == {"queue": 3, "tasks": 0, "completed": 0,
                                           "registered": False}
        assert rc[ids[1]].queue_status(verbose=True) == {
            "queue": [ars[2].msg_ids[1]], "tasks": [], "completed": [], "registered": False}
        assert rc.queue_status(verbose=True)[ids[0]]["queue"] == [
            ars[0].msg_ids[0], ars[1].msg_ids[0], ars[2].msg_ids[0]]
        for engine in engines:
            engine.send_signal(signal.SIGCONT)
        assert [ar.get(START_TIMEOUT_S) for ar in ars] == [4, 9, [16, 16]]
        assert rc.queue_status(ids[0]) == {"queue": 0, "tasks": 0, "completed": 3}
    finally:
        c.stop()
