"""Engine faults: killed, frozen, crashed by their tasks, or just busy in C code.

The main test runs 10,000 load-balanced tasks with ``retries=2`` on a Cluster that
restarts dead engines, while a chaos thread SIGKILLs engines at random times and freezes
one with SIGSTOP (declared dead, its tasks move; on SIGCONT it registers again and its
stale result is refused), and some tasks kill their engine (``os._exit(1)``) or crash
the interpreter (a segfault through ctypes). Each task must end with exactly one final
state, counted on the wire as it reaches the client; every good task's value must be
right; the run ends with as many engines as it started with.
"""

import collections
import contextlib
import ctypes
import operator
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from minipar import errors, interactive, protocol
from minipar.engine import INTERRUPT_SIGNAL
from minipar.launcher import Cluster

from .conftest import HEARTBEAT_S, ROOT, START_TIMEOUT_S, LocalCluster, _env
from .helpers import freeze, raw_engine, raw_heart, wait_until

TIMEOUT = 300
pytestmark = pytest.mark.timeout(TIMEOUT)

N_TASKS = int(os.environ.get("MINIPAR_FAULT_TASKS", "10000"))
N_ENGINES = 4
N_EXIT, N_SEGFAULT = 4, 4      # tasks that kill their engine, each 3 times (retries=2)
N_KILLS = 5                    # random SIGKILLs by the chaos thread
FREEZE_S = 3.0                 # SIGSTOP this long: well past 5 missed beats of 0.2 s


def task(kind, i):
    """The work: `i` squared, or a way to kill the engine running it."""
    if kind == "exit":
        os._exit(1)
    if kind == "segfault":
        import faulthandler

        faulthandler.disable()   # die quietly: the crash is the point
        ctypes.string_at(0)
    end = time.perf_counter() + 0.0005   # a little work, so engines are caught busy
    while time.perf_counter() < end:
        pass
    return i * i


def _count_replies(rc):
    """Count, per msg_id, every result that reaches the client (before dedup)."""
    counts = collections.Counter()
    original = rc._on_message

    def counting(header, parts):
        # executes in the client's I/O thread, for each verified message (a batch's each)
        if header["kind"].endswith("_reply") and header.get("parent"):
            counts[header["parent"]] += 1
        return original(header, parts)

    rc._on_message = counting
    return counts


def _engine_pids(cluster):
    return [p for launcher in cluster.engines.values() for p in launcher.pids()]


def _chaos(cluster, rng, stop, log):
    # executes in the chaos thread: random SIGKILLs, and one freeze in the middle
    kills = 0
    frozen = None
    thaw = None
    while not stop.wait(rng.uniform(0.5, 1.5)):   # no kill once stopped: the test goes on
        pids = [p for p in _engine_pids(cluster) if p != frozen]
        now = time.monotonic()
        if frozen is None and thaw is None and pids:   # first: freeze one, while all are busy
            victim = rng.choice(pids)
            with contextlib.suppress(ProcessLookupError):   # else it just died: next round
                os.kill(victim, signal.SIGSTOP)
                frozen, thaw = victim, now + FREEZE_S
                log.append(("stop", frozen))
        elif thaw is not None and frozen is not None and now >= thaw:
            if _thaw(frozen, log):
                frozen = None
            else:   # it died of its own crashing task as it was stopped: freeze another
                frozen = thaw = None
        elif kills < N_KILLS and pids:
            victim = rng.choice(pids)
            try:
                os.kill(victim, signal.SIGKILL)
                kills += 1
                log.append(("kill", victim))
            except ProcessLookupError:
                pass
    if frozen is not None:
        _thaw(frozen, log)


def _thaw(pid, log):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        log.append(("gone", pid))
        return False
    log.append(("cont", pid))
    return True


@pytest.fixture
def chaos_cluster(tmp_path):
    # hwm 1: an engine holds only the task it runs. With more, a good task queued behind
    # one that kills the engine dies with it, and its reply may die unsent with the
    # process, so it cannot be told from the killer; placed together again on the retry,
    # it could spend all its retries on another task's crashes. Crash-prone work wants hwm 1.
    cluster = Cluster(n=N_ENGINES, profile_dir=str(tmp_path / "profile"),
                      controller_args=["--heartbeat-period", str(HEARTBEAT_S),
                                       "--heartbeat-liveness", "5", "--hwm", "1"],
                      restart_engines="on_failure", shutdown_atexit=False)
    try:
        cluster.rc = cluster.start_and_connect_sync()
        yield cluster
    finally:
        cluster.stop_cluster_sync()


def test_ten_thousand_tasks_survive_kills_a_freeze_and_crashing_tasks(chaos_cluster):
    cluster, rc = chaos_cluster, chaos_cluster.rc
    rng = random.Random(int(os.environ.get("MINIPAR_FAULT_SEED", "6")))
    kinds = ["ok"] * N_TASKS
    for j, i in enumerate(rng.sample(range(N_TASKS // 10, N_TASKS), N_EXIT + N_SEGFAULT)):
        kinds[i] = "exit" if j < N_EXIT else "segfault"
    replies = _count_replies(rc)
    view = rc.load_balanced_view()
    view.retries = 2
    stop, chaos_log = threading.Event(), []
    chaos = threading.Thread(target=_chaos, args=(cluster, rng, stop, chaos_log), daemon=True)
    ars = [view.apply_async(task, kind, i) for i, kind in enumerate(kinds)]
    chaos.start()
    try:
        wait_until(lambda: all(ar.done() for ar in ars), TIMEOUT - 60,
                   f"all {N_TASKS} tasks to finish")
    finally:
        stop.set()
        chaos.join(10)
    assert not chaos.is_alive(), "the chaos thread did not stop"
    # exactly one final state each, as it reached the client
    msg_ids = [ar.msg_ids[0] for ar in ars]
    assert [m for m in msg_ids if replies[m] != 1] == []
    bad_values, crashers = [], 0
    for i, (kind, ar) in enumerate(zip(kinds, ars)):
        if kind == "ok":
            if not ar.successful() or ar.get() != i * i:
                bad_values.append((i, ar.exception() or ar.get()))
        else:
            crashers += 1
            assert isinstance(ar.exception(), errors.EngineError), \
                (kind, ar.exception(), ar.metadata)
            # it took down an engine on each of its three attempts
            assert len(ar.metadata["attempts"]) >= 3
    assert bad_values == []
    assert crashers == N_EXIT + N_SEGFAULT
    assert ("stop", chaos_log[0][1]) in chaos_log and any(e[0] == "cont" for e in chaos_log)
    # the run ends with the engines it started with: the dead replaced, the frozen back
    restarts = sum(getattr(s, "restarts", 0) for s in cluster.engines.values())
    assert restarts >= 3 * (N_EXIT + N_SEGFAULT)
    rc.wait_for_engines(N_ENGINES, START_TIMEOUT_S)
    # the last kill may land as the last task ends: until its death is noticed, the killed
    # engine is still registered and its pid still counted as running
    killed = {pid for what, pid in chaos_log if what == "kill"}

    def settled():
        registered = {rc._engines.get(e, {}).get("pid") for e in rc.ids}
        return registered == set(_engine_pids(cluster)) and len(registered) == N_ENGINES \
            and not registered & killed

    wait_until(settled, START_TIMEOUT_S,
               f"{N_ENGINES} engines running and registered, none killed (chaos: {chaos_log})")
    frozen = [pid for what, pid in chaos_log if what == "stop"][-1]
    if frozen in _engine_pids(cluster):   # it lived on (not SIGKILLed later): it came back
        output = cluster.engines[next(iter(cluster.engines))].get_output()
        assert "registering again" in output
    assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(100)) == \
        list(range(1, 101))
    print(f"{N_TASKS} tasks, {crashers} crashing ones; chaos: {chaos_log}; engine restarts: "
          f"{restarts}; controller: {rc.queue_status(verbose=True)['stats']}")


# ------------------------------------------------------------------ focused cases

def _sleep_then(seconds, value):
    import time

    print("started", flush=True)   # streamed to the client while it runs
    time.sleep(seconds)
    return value


def _started_then_wait_for(go, value):
    print("started", flush=True)   # streamed to the client while it runs
    wait_until(lambda: os.path.exists(go), START_TIMEOUT_S, f"the test's go file {go}")
    return value


def test_a_frozen_engine_is_declared_dead_and_its_late_result_is_refused(local_cluster):
    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    replies = _count_replies(rc)
    view = rc.load_balanced_view()
    view.retries = 1
    # it runs until the first engine is frozen (a 2 s sleep could end before, on a
    # loaded machine, and its result come from there): the retry ends as soon as it runs
    go = local_cluster.log_dir / "go"
    ar = view.apply_async(_started_then_wait_for, str(go), "done")

    def started():   # running, not just sent: its output streams back
        assert not ar.done(), ar.get()
        return "started" in ar.stdout

    wait_until(started, START_TIMEOUT_S, "the task to start")
    first = ar.engine_id
    pid = rc._engines[first]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: first not in rc.ids, START_TIMEOUT_S,   # after 5 missed beats
                   f"the frozen engine {first} to be declared dead")
        go.touch()
        assert ar.get(START_TIMEOUT_S) == "done"   # retried on the other engine
        assert ar.engine_id != first
    finally:
        os.kill(pid, signal.SIGCONT)
    # back: it registers again with its id, and its stale result is refused
    rc.wait_for_engines(2, START_TIMEOUT_S)
    assert first in rc.ids
    wait_until(lambda: rc.queue_status(verbose=True)["stats"].get("stale"), START_TIMEOUT_S,
               "the controller to refuse the late result as stale")
    assert replies[ar.msg_ids[0]] == 1
    assert rc[first].apply_sync(os.getpid) == pid
    out = local_cluster.output(f"engine{[e.pid for e in local_cluster.engines].index(pid)}")
    assert "registering again as engine" in out


def test_cluster_restarts_engines_that_fail_but_not_those_told_to_stop(tmp_path):
    # the engines log warnings only: a killed engine may not have logged its id (or even
    # heard it), so the replacement must find the id it takes without reading the log
    cluster = Cluster(n=2, profile_dir=str(tmp_path / "profile"), restart_engines="on_failure",
                      controller_args=["--heartbeat-period", str(HEARTBEAT_S)],
                      engine_args=["--log-level", "WARNING"], shutdown_atexit=False)
    try:
        rc = cluster.start_and_connect_sync()
        (launcher,) = cluster.engines.values()
        victim = launcher.pids()[0]
        old_ids = rc.ids
        os.kill(victim, signal.SIGKILL)
        # the replacement asks for the id of the process it replaces (gone, so it is free)
        wait_until(lambda: launcher.restarts >= 1 and rc.ids == old_ids
                   and victim not in [rc._engines[e]["pid"] for e in rc.ids],
                   START_TIMEOUT_S, "the killed engine replaced under its id")
        assert victim not in launcher.pids() and len(launcher.pids()) == 2
        # an engine told to stop exits 0: it is not replaced
        eid = rc.ids[0]
        child = next(c for c in launcher._children if c.pid == rc._engines[eid]["pid"])
        rc.shutdown(targets=[eid], block=True)
        # the set decides in the child's watcher thread, on the exit: once that thread
        # has ended, a restart would have been made
        assert child.wait(START_TIMEOUT_S)
        child._watcher.join(START_TIMEOUT_S)
        assert launcher.restarts == 1 and len(launcher.pids()) == 1
        # so does an idle engine stopped on purpose by `kill PID` (SIGTERM)
        (last,) = [c for c in launcher._children if c.running]
        os.kill(last.pid, signal.SIGTERM)
        assert last.wait(START_TIMEOUT_S) and last.stop_data["exit_code"] == 0
        last._watcher.join(START_TIMEOUT_S)
        assert launcher.restarts == 1 and launcher.pids() == []
        assert launcher.to_dict()["options"]["restart"] == "on_failure"
    finally:
        cluster.stop_cluster_sync()
    assert launcher.pids() == []


def test_an_engine_holding_the_gil_in_c_code_is_not_declared_dead(local_cluster):
    """The heart is zmq.proxy in C: it answers pings while Python is blocked. 4 s in a
    C call that keeps the GIL is 20 heartbeats, four times the liveness limit."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    (eid,) = rc.ids

    def hold_the_gil(seconds):
        import ctypes
        import threading
        import time

        ticks = []
        stop, ticking = threading.Event(), threading.Event()

        def tick():
            while not stop.is_set():
                ticks.append(time.monotonic())
                ticking.set()
                time.sleep(0.01)   # a tick every 10 ms while this thread gets the GIL

        t = threading.Thread(target=tick)
        t.start()
        assert ticking.wait(10)
        before = len(ticks)
        start = time.monotonic()
        ctypes.PyDLL(None).sleep(seconds)     # PyDLL: the GIL stays held during the call
        held = time.monotonic() - start
        during = len(ticks) - before
        stop.set()
        t.join()
        return held, during

    def numpy_work(seconds):
        import time

        import numpy as np

        a = np.random.rand(600, 600)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            a = np.linalg.inv(a @ a.T + np.eye(600))
            n += 1
        return n

    dead = []
    rc_changed = rc._engines_changed

    def watch():
        with rc_changed:
            while not stop.is_set():
                if eid not in rc._engines:
                    dead.append(time.monotonic())
                rc_changed.wait(0.05)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        held, during = rc[eid].apply_sync(hold_the_gil, 4)
        assert held >= 3.9 and during <= 1   # the GIL really was held all along
        assert rc[eid].apply_sync(numpy_work, 3) >= 1
    finally:
        stop.set()
        watcher.join(5)
    assert dead == [] and rc.ids == [eid]
    assert "declared dead" not in local_cluster.output("controller")


def _hold_the_gil(seconds, mark=None):
    """Sleep in one C call that keeps the GIL. Like every function of this module, it
    reaches an engine by reference: its first task there imports tests.test_faults (and
    pytest), which a busy machine can stretch past a 1 s time_limit, interrupting the
    import instead of the work. A test that times a task with a short limit runs one
    task of this module on that engine first, so only the work it means is timed."""
    import ctypes

    if mark is not None:   # a file that says the call starts: nothing else can say it
        open(mark, "w").close()
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))   # PyDLL: the GIL stays held meanwhile
    return seconds


def test_a_time_limit_holds_for_code_that_holds_the_gil(local_cluster):
    """No interrupt reaches a long C call that keeps the GIL: past its time_limit and a
    grace the engine is ended (SIGALRM, traceback in its log) and the task fails with
    TaskTimeout, not with the result 60 s later; the other engine serves on."""
    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    assert rc[:].apply_sync(_hold_the_gil, 0) == [0, 0]   # the import: see _hold_the_gil
    view = rc.load_balanced_view()
    start = time.monotonic()
    with view.temp_flags(time_limit=1):
        lb = view.apply_async(_hold_the_gil, 60)
        with pytest.raises(errors.TaskTimeout, match="time_limit of 1 s.*holding the GIL"):
            lb.get(45)
    assert time.monotonic() - start < 45
    victim = lb.engine_id
    # the client hears of the death just after the result
    wait_until(lambda: victim not in rc.ids, START_TIMEOUT_S, "the engine's death")
    (survivor,) = rc.ids
    assert rc[survivor].apply_sync(_hold_the_gil, 0) == 0
    logs = [local_cluster.output(f"engine{i}") for i in range(2)]
    assert any("_hold_the_gil" in log and "most recent call first" in log for log in logs)


def test_an_abort_that_a_task_holding_the_gil_cannot_take_says_so(local_cluster):
    """A task holding the GIL in one long C call starves the engine's receiver: the abort
    is not marked until the call returns. The client waited its whole timeout and raised
    TimeoutError blaming the controller ("is it running?"), which was fine. The controller
    now answers after ABORT_WAIT_S, and the abort warns naming the engine and the cause;
    the task still ends once, with its result or aborted, and the engine serves on."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client(timeout=7)   # 3 s over ABORT_WAIT_S, for a loaded machine
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    mark = local_cluster.log_dir / "holding"
    ar = rc.load_balanced_view().apply_async(_hold_the_gil, 9, mark)   # over the client's 7 s
    wait_until(mark.exists, START_TIMEOUT_S, "the task to hold the GIL")
    with pytest.warns(RuntimeWarning, match=rf"engine {eid} \(pid {engine.pid} .*holds the GIL"):
        assert rc.abort(ar) == 1
    assert not ar.done()   # it runs on: nothing reaches it
    try:
        assert ar.get(START_TIMEOUT_S) == 9
    except errors.TaskAborted:
        pass
    assert rc[eid].apply_sync(os.getpid) == engine.pid


def _stuck_in_c(mark):
    """One C call that lets the GIL go and never returns: the interrupts are blocked in
    this thread, as a C library that retries its system call on EINTR never sees them."""
    import ctypes
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGUSR2, signal.SIGALRM})
    open(mark, "w").close()
    ctypes.CDLL(None).sleep(600)


def test_an_engine_stopping_past_a_request_stuck_in_c_exits_without_it(local_cluster):
    """A controller's stop aborts the running request and stops its engines. One whose
    request is stuck in a C call lived on till the call's end (an engine started by hand
    has no launcher to SIGKILL it); it now exits TIME_LIMIT_GRACE_S after the stop."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    mark = local_cluster.log_dir / "stuck"
    rc[:].apply_async(_stuck_in_c, str(mark))
    wait_until(mark.exists, START_TIMEOUT_S, "the task to start its C call")
    local_cluster.controller.terminate()
    assert engine.wait(START_TIMEOUT_S) == 1
    assert "did not stop within 5 s of the engine's stop" in local_cluster.output("engine0")


def _set_an_alarm_handler(handler):
    """A task that puts its own SIGALRM handler in place (as timeout decorators do) and
    leaves it, with an alarm still set ("ignore": SIG_IGN, "own": one that does nothing),
    or ("restored") undoes both in a `finally`, the handler it read put back: SIG_DFL, as
    Python reports faulthandler's."""
    import signal

    if handler == "restored":
        previous = signal.signal(signal.SIGALRM, lambda *a: None)
        try:
            signal.alarm(30)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        return "set"
    signal.signal(signal.SIGALRM, {"own": lambda *a: None, "ignore": signal.SIG_IGN}[handler])
    signal.alarm(1)
    return "set"


@pytest.mark.parametrize("handler", ["own", "ignore", "restored"])
def test_a_tasks_alarm_handler_does_not_disable_the_time_limit_watchdog(
        local_cluster, handler):
    """The engine ends a task that holds the GIL past its time_limit by SIGALRM. A task
    that left its own SIGALRM handler (and an alarm) in place is said once in the log and
    the engine's is put back: the alarm left does not fire into the engine, and a later
    task holding the GIL still ends its engine, not runs on for a minute. One that put
    back the SIG_DFL it read had removed faulthandler's handler without a sign: the
    engine then ended with no traceback in its log."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[eid].apply_sync(_set_an_alarm_handler, handler) == "set"
    assert rc[eid].apply_sync(_hold_the_gil, 1.5) == 1.5   # past the alarm the task left
    view = rc.load_balanced_view()
    with view.temp_flags(time_limit=1):
        lb = view.apply_async(_hold_the_gil, 60)
    with pytest.raises(errors.TaskTimeout, match="time_limit of 1 s"):
        lb.get(45)
    wait_until(lambda: engine.poll() is not None, START_TIMEOUT_S, "the engine to end")
    log = local_cluster.output("engine0")
    assert log.count("replaced this engine's SIGALRM") == (handler != "restored")
    assert "_hold_the_gil" in log and "most recent call first" in log



def _with_its_own_interrupt_handler(handler, seconds):
    """A task that puts its own handler in place for the engine's INTERRUPT_SIGNAL,
    SIGUSR2 ("own": one that does nothing; "ignore": SIG_IGN; "default": SIG_DFL), then
    runs for `seconds`: asleep under its own handler, else busy (SIG_IGN lets no signal
    end a sleep, SIG_DFL would let one end the engine)."""
    import signal
    import time

    signal.signal(signal.SIGUSR2, {"own": lambda *a: None, "ignore": signal.SIG_IGN,
                                   "default": signal.SIG_DFL}[handler])
    print("started", flush=True)
    end = time.monotonic() + seconds
    if handler == "own":
        time.sleep(seconds)
    while time.monotonic() < end:
        pass
    return "finished"


def _interrupt_handler_name():
    import signal

    return getattr(signal.getsignal(signal.SIGUSR2), "__name__", None)


@pytest.mark.parametrize("handler", ["own", "ignore", "default"])
def test_a_task_with_its_own_interrupt_handler_is_still_aborted_and_time_limited(
        local_cluster, handler):
    """The engine interrupts tasks with SIGUSR2. One that replaces the engine's handler
    is aborted and time-limited all the same (not left running, nor ended with its
    engine), and the next task on that engine meets the engine's handler again."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc[eid].apply_async(_with_its_own_interrupt_handler, handler, 60)
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the task to start")
    ar.abort()
    with pytest.raises(errors.TaskAborted):
        ar.get(10)
    assert rc[eid].apply_sync(_interrupt_handler_name) == "_on_interrupt_signal"
    view = rc.load_balanced_view()
    with view.temp_flags(time_limit=1):
        ar = view.apply_async(_with_its_own_interrupt_handler, handler, 60)
    # interrupted, not ended with its engine TIME_LIMIT_GRACE_S later ("holding the GIL")
    with pytest.raises(errors.TaskTimeout, match="time_limit of 1 s and was interrupted"):
        ar.get(10)
    ar = rc[eid].apply_async(_sleep_then, 60, "never")
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the next task to start")
    ar.abort()
    with pytest.raises(errors.TaskAborted):
        ar.get(10)
    assert engine.poll() is None and rc.ids == [eid]
    assert local_cluster.output("engine0").count("replaced this engine's SIGUSR2") == 1


def test_a_direct_request_past_its_time_limit_with_no_records_kept(tmp_path):
    """A direct request with a time_limit (the internal interface's `time_limit` field)
    on an engine that SIGALRM then ends, under --db none: the controller fails it with
    TaskTimeout as it forgets the record, and serves on (it once looked the forgotten
    record up again and crashed)."""
    c = LocalCluster(tmp_path, controller_args=["--db", "none"])
    try:
        c.start_engines(2)
        rc = c.client()
        rc.wait_for_engines(2, START_TIMEOUT_S)
        victim, survivor = rc.ids
        assert rc[:].apply_sync(_hold_the_gil, 0) == [0, 0]   # the import: see _hold_the_gil
        f = rc.send_apply(_hold_the_gil, (60,), {}, engine_id=victim, time_limit=1)
        with pytest.raises(errors.TaskTimeout, match="time_limit of 1 s"):
            f.result(45)
        wait_until(lambda: victim not in rc.ids, START_TIMEOUT_S, "the engine's death")
        assert rc[survivor].apply_sync(_hold_the_gil, 0) == 0
        assert c.controller.poll() is None
        assert "Traceback" not in c.output("controller")
    finally:
        c.stop()


def test_an_engine_busy_in_c_code_does_not_take_the_controller_for_silent(local_cluster):
    """The engine leaves when its controller is silent for --max-missed-heartbeats beats,
    judged by its receiver thread; a main thread holding the GIL starves that thread for
    longer than that, so it must count the beats that queued meanwhile."""
    (engine,) = local_cluster.start_engines(1, args=["--max-missed-heartbeats", "3"])
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    (eid,) = rc.ids
    for _ in range(4):   # 1.5 s each: over the 0.6 s the engine waits for a silent controller
        assert rc[eid].apply_sync(_hold_the_gil, 1.5) == 1.5
    assert engine.poll() is None and rc.ids == [eid]
    assert "silent" not in local_cluster.output("engine0")


def _segfault():
    ctypes.string_at(0)


def test_a_crashed_engine_leaves_its_last_words_in_the_engine_error(local_cluster):
    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    first, second = rc.ids
    with pytest.raises(errors.RemoteError, match=r"EngineError(.|\n)*engine pid \d+ on "
                                                 r"(.|\n)*Segmentation fault(.|\n)*_segfault"):
        rc[first].apply_sync(_segfault)
    lview = rc.load_balanced_view()
    with pytest.raises(errors.RemoteError, match=r"died while running(.|\n)*end of its log"):
        lview.apply_async(os._exit, 3).get(START_TIMEOUT_S)


def _exit_once(path):
    wait_until(lambda: os.path.exists(path), START_TIMEOUT_S, f"{path} to exist")
    os._exit(3)


def test_a_task_queued_behind_the_one_that_killed_its_engine_says_it_never_started(
        local_cluster, tmp_path):
    """A task without retries queued on an engine that dies fails with EngineError; the
    one queued behind the running one said "died while running task", though the engine
    never began it. Then: "died before running task X (queued behind Y)", which was not so
    had Y ended with its reply lost (X would have been running). Each says what the
    controller knows now: Y was running, X queued behind it, unless Y's reply was lost."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    lview = rc.load_balanced_view()
    go = tmp_path / "go"
    running, queued = lview.apply_async(_exit_once, str(go)), lview.apply_async(os.getpid)
    wait_until(lambda: rc.queue_status()[eid]["tasks"] == 2, START_TIMEOUT_S, "both queued")
    go.touch()
    [first], [second] = running.msg_ids, queued.msg_ids
    with pytest.raises(errors.RemoteError, match=f"died with task {second} queued behind task "
                                                 rf"{first} \(it never started there unless "
                                                 rf"{first} had ended, its reply lost\);"):
        queued.get(START_TIMEOUT_S)
    with pytest.raises(errors.RemoteError, match=rf"died while running task {first} \(or, had "
                                                 "it ended with its reply lost, a task queued "
                                                 r"behind it\);"):
        running.get(START_TIMEOUT_S)


def _raw_engine_with_tasks(cluster, ctx, name, n, ready=True):
    """A raw engine (see helpers.raw_engine) with a heart, given `n` load-balanced tasks
    without retries while it is the only engine: (session, control, work, its id, stop its
    heart, the AsyncResults, and the requests it received: none unless `ready`)."""
    session, control, work, reg, eid = raw_engine(ctx, cluster.engine_file, name)
    stop_heart = raw_heart(ctx, cluster.engine_file, name)
    rc = cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    if ready:
        work.send_multipart(session.msg(protocol.READY, reg=reg)[1])
    ars = [rc.load_balanced_view().apply_async(os.getpid) for _ in range(n)]
    wait_until(lambda: rc.queue_status()[eid]["tasks"] == n, START_TIMEOUT_S,
               f"the {n} tasks assigned to the raw engine")
    requests = []
    while ready and len(requests) < n:
        assert work.poll(START_TIMEOUT_S * 1000), "the tasks did not reach the raw engine"
        _, header, parts = session.check(work.recv_multipart())
        requests += [h["msg_id"] for h, _ in session.unbatch(header, parts)]
    return session, control, work, eid, stop_heart, ars, requests


def test_tasks_an_engine_that_died_never_received_run_elsewhere_without_retries(
        local_cluster):
    """An engine registers and dies before its request socket said it was connected (a
    crash as it starts): the controller still held the tasks it had given that engine,
    which never left for it. They failed ("engine died while running task X", "...queued
    behind X"), though no engine had begun them, retries=0 or not. They certainly never
    started, so they run on another engine, without spending a retry."""
    ctx = zmq.Context()
    try:
        session, control, work, eid, stop_heart, ars, _ = _raw_engine_with_tasks(
            local_cluster, ctx, "never-ready", 2, ready=False)
        assert not work.poll(0), "a task reached an engine that never said it was connected"
        (real,) = local_cluster.start_engines(1)
        stop_heart()   # the raw engine dies: missed heartbeats
        assert [ar.get(START_TIMEOUT_S) for ar in ars] == [real.pid] * 2
    finally:
        ctx.destroy(linger=0)


def test_tasks_queued_on_an_engine_that_gave_up_on_its_controller_run_elsewhere(
        local_cluster):
    """An engine whose controller goes silent (frozen here) stops: it interrupts the task
    it runs and starts none of those queued. Its unregister, read once the controller is
    back, said why, and the queued task without retries failed ("stopped because ...
    before running task X"); the engine now says the last task it began, so the ones after
    it, which certainly never started, run on another engine, retries kept."""
    (engine,) = local_cluster.start_engines(1, args=["--max-missed-heartbeats", "5"])
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    lview = rc.load_balanced_view()
    running, queued = lview.apply_async(time.sleep, 60), lview.apply_async(os.getpid)
    wait_until(lambda: running.running() and rc.queue_status()[eid]["tasks"] == 2,
               START_TIMEOUT_S, "the sleep running, the other task queued behind it")
    freeze(local_cluster.controller.pid)
    try:
        assert engine.wait(START_TIMEOUT_S) == 1   # it gave up: the controller was silent
    finally:
        os.kill(local_cluster.controller.pid, signal.SIGCONT)
    (other,) = local_cluster.start_engines(1)
    assert queued.get(START_TIMEOUT_S) == other.pid
    with pytest.raises(errors.RemoteError, match=f"engine {eid} stopped because the controller "
                                                 r"was silent for [\d.]+ s .*while running "
                                                 f"task {running.msg_ids[0]}; resubmit"):
        running.get(START_TIMEOUT_S)


def test_a_task_whose_engine_started_a_later_one_is_not_named_as_the_one_running(
        local_cluster):
    """An engine ran task A, its reply held back (replies of a batch wait a few ms for the
    next ones), started B and said so, then died: A's reply died with it. The controller
    said "engine died while running task A", and of B, which was running, "died before
    running task B (queued behind A)". Requests run in the order sent, so A had ended:
    A's error says its reply was lost and B's that the engine died while running it."""
    ctx = zmq.Context()
    try:
        session, control, work, eid, stop_heart, ars, (a, b) = _raw_engine_with_tasks(
            local_cluster, ctx, "lost-reply", 2)
        control.send_multipart(session.msg(protocol.STARTED, parent=b, engine=eid,
                                           started=time.time(), long=True)[1])
        wait_until(lambda: ars[1].running(), START_TIMEOUT_S, "B running, as the engine said")
        stop_heart()
        with pytest.raises(errors.RemoteError,
                           match=f"engine {eid} died after running task {a}, before its reply "
                                 rf"came back \(it had started task {b} since\); resubmit"):
            ars[0].get(START_TIMEOUT_S)
        with pytest.raises(errors.RemoteError, match=f"engine {eid} died while running task "
                                                     f"{b}; resubmit it or use retries="):
            ars[1].get(START_TIMEOUT_S)
    finally:
        ctx.destroy(linger=0)


# `python -m minipar.engine` typed at a shell: the engine leads a session whose controlling
# terminal is a pty, its process group in the foreground; ^C written to the pty's master
# is its user's Ctrl-C (the terminal sends SIGINT to that group)
_AT_A_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                  "os.execv(sys.executable, [sys.executable, '-m', 'minipar.engine', "
                  "*sys.argv[1:]])")


def _engine_at_a_terminal(cluster):
    """An engine run at a terminal (stopped with the cluster); (its Popen, the pty's
    master fd, which the caller closes)."""
    master, slave = os.openpty()
    with open(cluster.log_dir / "terminal-engine.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-c", _AT_A_TERMINAL, "--file",
                              cluster.engine_file], stdin=slave, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True, env=_env(),
                             cwd=ROOT)
    os.close(slave)
    cluster.procs.append(p)
    return p, master


def test_ctrl_c_to_an_idle_engine_unregisters_it_at_once(local_cluster):
    """Ctrl-C in an engine's terminal ends it cleanly: the controller hears it leave, not
    heartbeats later as a death (with tasks sent to it in between)."""
    engine, terminal = _engine_at_a_terminal(local_cluster)
    try:
        (other,) = local_cluster.start_engines(1)
        rc = local_cluster.client()
        rc.wait_for_engines(2, START_TIMEOUT_S)
        eid_of = {pid: eid for eid, pid in zip(rc.ids, rc[:].apply_sync(os.getpid))}
        os.write(terminal, b"\x03")   # ^C
        assert engine.wait(10) == 0
    finally:
        os.close(terminal)
    eid = eid_of[engine.pid]
    wait_until(lambda: eid not in rc.ids, 10, f"engine {eid} gone from rc.ids")
    log = local_cluster.output("controller")
    assert f"engine {eid} unregistered" in log and "declared dead" not in log
    assert rc.load_balanced_view().apply_sync(os.getpid) == other.pid


def test_ctrl_c_twice_stops_a_busy_engine_at_a_terminal(local_cluster):
    """Ctrl-C at a busy engine's terminal interrupted its task and nothing more, without a
    word in its log: the engine went on with the next task queued, so a user pressing it
    to stop the engine failed one task per press and never stopped it. The first still
    interrupts only, and says that the next one stops the engine, which it does."""
    engine, terminal = _engine_at_a_terminal(local_cluster)
    try:
        rc = local_cluster.client()
        rc.wait_for_engines(1, START_TIMEOUT_S)
        lview = rc.load_balanced_view()
        ars = [lview.apply_async(_sleep_then, 60, i) for i in range(3)]
        wait_until(ars[0].running, START_TIMEOUT_S, "the first task to run")
        os.write(terminal, b"\x03")   # ^C
        with pytest.raises(errors.RemoteError, match="KeyboardInterrupt.*Ctrl-C at the "
                                                     "terminal of engine"):
            ars[0].get(START_TIMEOUT_S)
        wait_until(ars[1].running, START_TIMEOUT_S, "the engine to go on with the next task")
        log = local_cluster.output("terminal-engine")
        assert f"Ctrl-C: interrupting request {ars[0].msg_ids[0]}" in log, log
        assert "Ctrl-C again stops it" in log and engine.poll() is None
        os.write(terminal, b"\x03")   # ^C
        assert engine.wait(10) == 0
    finally:
        os.close(terminal)
    log = local_cluster.output("terminal-engine")
    assert f"Ctrl-C again: interrupting request {ars[1].msg_ids[0]} and stopping" in log, log
    with pytest.raises(errors.RemoteError, match="KeyboardInterrupt"):
        ars[1].get(START_TIMEOUT_S)
    wait_until(lambda: not rc.ids, 10, "the engine gone from rc.ids")
    assert "declared dead" not in local_cluster.output("controller")


def test_sigint_from_outside_to_a_busy_engine_fails_its_task_saying_so(local_cluster):
    """`kill -INT PID` to a busy engine (not at its terminal) failed the task with a bare
    "KeyboardInterrupt: ", which names neither the signal nor the engine; the engine goes on."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    lview = rc.load_balanced_view()
    first, second = (lview.apply_async(_sleep_then, 60, i) for i in range(2))
    wait_until(first.running, START_TIMEOUT_S, "the first task to run")
    engine.send_signal(signal.SIGINT)
    eid = rc.ids[0]
    with pytest.raises(errors.RemoteError, match=rf"KeyboardInterrupt: SIGINT to engine {eid} "
                                                 rf"\(pid {engine.pid}\)"):
        first.get(START_TIMEOUT_S)
    wait_until(second.running, START_TIMEOUT_S, "the engine to go on with the next task")
    assert engine.poll() is None


def _sleep_in_exec(seconds):
    print("started", flush=True)
    exec(f"import time; time.sleep({seconds})")   # as dataclasses and namedtuples are made


def test_an_engine_whose_task_was_interrupted_in_an_exec_still_exits_0(local_cluster):
    """A SIGINT that interrupted a task in an exec() of a string (the dataclasses of a
    module it imported, say) had CPython end the engine by SIGINT when it stopped later
    (-2, not 0, as restart="on_failure" would read it), nothing said in its log."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    ar = rc.load_balanced_view().apply_async(_sleep_in_exec, 60)
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the task to start")
    engine.send_signal(signal.SIGINT)   # as `kill -INT PID`: interrupts the running task
    with pytest.raises(errors.RemoteError, match="KeyboardInterrupt"):
        ar.get(START_TIMEOUT_S)
    engine.terminate()   # idle now: it unregisters and exits 0
    assert engine.wait(10) == 0


_SLOW_PACKAGE = """\
import os, time
from .part import *   # binds `part` here only where slowpkg.part is imported anew
here = os.path.dirname(__file__)
if os.path.exists(os.path.join(here, "slow")):
    open(os.path.join(here, "importing"), "w").close()
    time.sleep(60)
__all__ = part.__all__


def pid():
    return os.getpid()
"""


def test_a_task_interrupted_in_its_modules_import_leaves_it_importable(local_cluster, tmp_path):
    """Unpickling a task imports its module, and an interrupt there (the first task of a
    test module, which imports pytest, asyncio..., interrupted as soon as it was running
    on a busy machine) left the submodules that had finished in sys.modules: every later
    task of that module failed to unpickle (NameError: name 'part' is not defined)."""
    pkg = tmp_path / "slowpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(_SLOW_PACKAGE)
    (pkg / "part.py").write_text("__all__ = ['PART']\nPART = 1\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    (engine,) = local_cluster.start_engines(1, env=env)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    sys.path.insert(0, str(tmp_path))
    try:   # here, to send its function by name: the engine imports it to unpickle the task
        import slowpkg
    finally:
        sys.path.remove(str(tmp_path))
    try:
        (pkg / "slow").touch()
        lview = rc.load_balanced_view()
        ar = lview.apply_async(slowpkg.pid)
        wait_until((pkg / "importing").exists, START_TIMEOUT_S, "the engine to import slowpkg")
        rc.send_signal(signal.SIGINT, block=True)
        with pytest.raises(errors.RemoteError, match="KeyboardInterrupt"):
            ar.get(START_TIMEOUT_S)
        (pkg / "slow").unlink()
        assert lview.apply_async(slowpkg.pid).get(START_TIMEOUT_S) == engine.pid
    finally:
        for name in ("slowpkg", "slowpkg.part"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("sig, at_a_terminal", [(signal.SIGTERM, False), (signal.SIGINT, True),
                                                 (signal.SIGINT, False), (signal.SIGHUP, False)])
def test_an_engine_waiting_for_its_connection_file_stops_as_an_idle_one(tmp_path, sig,
                                                                        at_a_terminal):
    """`python -m minipar.engine` started before its controller waits for the connection
    file. SIGTERM, or Ctrl-C at its terminal, ends it at once, with one line and status 0
    as an idle engine (not a KeyboardInterrupt traceback, nor death by the signal); a
    SIGINT from elsewhere (Cluster.signal_engines_sync) is ignored, as by an idle one.
    SIGHUP (its terminal closed) does as SIGTERM, where it ended the engine by the signal;
    its line names SIGHUP (it said SIGTERM, the signal it was forwarded as)."""
    log = tmp_path / "engine.log"
    args = ["--profile-dir", str(tmp_path / "profile")]   # which holds no connection file
    master = None
    with open(log, "wb") as out:
        if at_a_terminal:
            master, slave = os.openpty()
            engine = subprocess.Popen([sys.executable, "-c", _AT_A_TERMINAL, *args],
                                      stdin=slave, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, env=_env(), cwd=ROOT)
            os.close(slave)
        else:   # a session of its own: no terminal, whatever pytest runs in
            engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", *args],
                                      stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env=_env(), cwd=ROOT)
    try:
        wait_until(lambda: "no connection file" in log.read_text(), START_TIMEOUT_S,
                   "the engine to wait for its connection file")
        if at_a_terminal:
            os.write(master, b"\x03")   # ^C
        else:
            engine.send_signal(sig)
        if sig == signal.SIGINT and not at_a_terminal:
            wait_until(lambda: "SIGINT while idle: ignored" in log.read_text(), 5,
                       "the engine to ignore SIGINT")
            assert engine.poll() is None
            engine.terminate()
        assert engine.wait(5) == 0
    finally:
        if master is not None:
            os.close(master)
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    text = log.read_text()
    after = text[text.index("no connection file"):].splitlines()[1:]   # its last words
    ignored = sig == signal.SIGINT and not at_a_terminal
    assert "Traceback" not in text and len(after) == 1 + ignored
    stopped_by = "SIGINT" if at_a_terminal else "SIGHUP" if sig == signal.SIGHUP else "SIGTERM"
    assert f"{stopped_by} before connecting to the controller: exiting" in after[-1]


def test_an_engine_whose_terminal_closed_stops_as_on_sigterm(local_cluster):
    """SIGHUP, which an engine started by hand gets when its terminal is closed, ended it
    by the signal, without a word: its controller saw its process gone and counted it lost.
    Idle, it now stops as on `kill PID` (SIGTERM): it says so, unregisters (its client's
    ids drop it) and exits 0; one running a request still ends at once, as on SIGTERM. Its
    log names SIGHUP: it said "SIGTERM while idle", the signal SIGHUP was forwarded as."""
    idle, busy = local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    by_pid = {pid: eid for eid, pid in zip(rc.ids, rc[:].apply_sync(os.getpid))}
    ar = rc[by_pid[busy.pid]].apply_async(time.sleep, 600)
    wait_until(lambda: rc.queue_status()[by_pid[busy.pid]]["queue"] == 1, START_TIMEOUT_S,
               "the request sent to the busy engine")
    idle.send_signal(signal.SIGHUP)
    assert idle.wait(START_TIMEOUT_S) == 0
    assert "SIGHUP while idle: unregistering" in local_cluster.output(idle.log_name)
    wait_until(lambda: rc.ids == [by_pid[busy.pid]], START_TIMEOUT_S, "the idle one unlisted")
    busy.send_signal(signal.SIGHUP)
    assert busy.wait(START_TIMEOUT_S) == -signal.SIGTERM
    assert "SIGHUP while running" in local_cluster.output(busy.log_name)
    with pytest.raises(errors.EngineError):
        ar.get(START_TIMEOUT_S)


@pytest.mark.parametrize("bad", [["--timeout", "0"], ["--timeout", "-1"],
                                 ["--max-missed-heartbeats", "0"]])
def test_an_engine_refuses_a_wait_that_cannot_work(tmp_path, bad):
    """Either at 0 made the engine give up at once, saying the controller did not answer
    registration "within 0 s" or "was silent for 0.0 s": a usage error it is."""
    done = subprocess.run([sys.executable, "-m", "minipar.engine", "--profile-dir",
                           str(tmp_path), *bad], env=_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert f"error: {bad[0]} must be" in done.stderr


def test_a_relative_startup_script_is_found_from_where_the_engine_started(local_cluster,
                                                                          tmp_path):
    """`-s setup.py --work-dir W` ran W/setup.py (the engine moves to W first), a
    FileNotFoundError traceback; a script that is nowhere is a usage error."""
    script = tmp_path / "setup_engine.py"
    script.write_text("ready = 'set by the startup script'\n")
    local_cluster.start_engines(1, args=["--work-dir", str(tmp_path / "work"),
                                         "-s", os.path.relpath(script, ROOT)])
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].pull("ready", block=True) == ["set by the startup script"]
    done = subprocess.run([sys.executable, "-m", "minipar.engine", "--file",
                           local_cluster.engine_file, "-s", str(tmp_path / "nowhere.py")],
                          env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "nowhere.py: no such file" in done.stderr, done.stderr


def test_an_engine_whose_startup_script_raises_never_gets_work(local_cluster, tmp_path):
    """A startup script that raises ends its engine (status 1, one line naming the
    script, the exception and its line) before it registers, so a task waiting for an
    engine goes to the next one that did start. Before, the engine registered first,
    took the task while its script ran, died with a traceback and failed the task."""
    rc = local_cluster.client()
    ar = rc.load_balanced_view().apply_async(os.getpid)
    script = tmp_path / "bad_startup.py"
    script.write_text("import time\ntime.sleep(1)\nx = 1 / 0\n")
    bad, = local_cluster.start_engines(1, args=["-s", str(script)])
    assert bad.wait(START_TIMEOUT_S) == 1
    log = local_cluster.output("engine0")
    assert f"ERROR the startup script {script} raised ZeroDivisionError: division by zero " \
        "at line 3; fix it" in log and "Traceback" not in log, log
    assert rc.ids == [] and not ar.done()
    good, = local_cluster.start_engines(1)
    assert ar.get(START_TIMEOUT_S) == good.pid


def _engine_with_stdin_open(local_cluster):
    """An engine whose stdin is a pipe kept open (as a terminal is), registered: (a client,
    its id, its process)."""
    engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", "--file",
                               local_cluster.engine_file], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env(), cwd=ROOT)
    local_cluster.procs.append(engine)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    return rc, eid, engine


def test_input_in_a_task_fails_at_once_rather_than_wait_for_the_engines_terminal(
        local_cluster):
    """input() in a task read the engine's own stdin: under a launcher (empty) an EOFError
    saying nothing more, but in a terminal (here a pipe kept open) it waited, silently
    (its prompt went to the client), for a line typed there. As ipyparallel's engines, it
    now fails at once, saying why, and the engine serves on."""
    rc, eid, engine = _engine_with_stdin_open(local_cluster)
    with pytest.raises(errors.RemoteError, match=r"EOFError: input\('name\? '\) on an "
                       "engine: no one can answer it.*pass what the task needs as an "
                       "argument"):
        rc[eid].apply_async(input, "name? ").get(10)
    assert rc[eid].apply_sync(abs, -1) == 1 and engine.poll() is None


def _read_stdin_then_getpass():
    """Read a line of sys.stdin, run a program that reads its stdin, then ask getpass for a
    secret (runs on the engine)."""
    import getpass

    line = sys.stdin.readline()
    catted = subprocess.run(["cat"], capture_output=True, timeout=START_TIMEOUT_S).stdout
    try:
        getpass.getpass("secret? ")
    except EOFError as e:
        return line, catted, str(e)


def test_reading_stdin_or_getpass_in_a_task_never_waits_for_the_engines_terminal(
        local_cluster):
    """As input() did: a task that read sys.stdin (or ran a program that reads its stdin, or
    called getpass.getpass, which prompts at the engine's terminal, else reads its stdin)
    waited, silently, for a line typed at the engine's terminal (here a pipe kept open),
    until aborted. Now stdin is at its end, as under a launcher, and getpass fails at once
    saying why; the engine serves on."""
    rc, eid, engine = _engine_with_stdin_open(local_cluster)
    for view in (rc[eid], rc.load_balanced_view()):
        line, catted, said = view.apply_async(_read_stdin_then_getpass).get(START_TIMEOUT_S)
        assert line == "" and catted == b"" and said == (
            "getpass('secret? ') on an engine: no one can answer it (a task's stdin is not its "
            "client's); pass what the task needs as an argument")
    assert rc[eid].apply_sync(abs, -1) == 1 and engine.poll() is None


def test_a_task_that_calls_sys_exit_says_so_and_its_engine_stays_up(local_cluster):
    """sys.exit in a task was reported as ``SystemExit:`` with no text (its code, often
    none); its error now says what the task did, keeping ename, and the engine serves on."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    for args, shown in (((0,), "sys.exit(0)"), ((), "sys.exit()"), (("bye",), "sys.exit('bye')")):
        with pytest.raises(errors.RemoteError) as e:
            rc[eid].apply_async(sys.exit, *args).get(START_TIMEOUT_S)
        assert e.value.ename == "SystemExit"
        assert f"the task called {shown} (or raised SystemExit): that ends the task, not its " \
            "engine, which stays up" in str(e.value), str(e.value)
    assert rc[eid].apply_sync(abs, -1) == 1 and rc.ids == [eid]


def _allocate_too_much():
    return bytearray(2 ** 62)   # 4 EiB: refused at once, no memory used


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("task, ename, said, own", [
    # Python's MemoryError has no text: the task's error read "MemoryError: ". It now says
    # the task ran out of memory, where the limit may be and what to do.
    (_allocate_too_much, "MemoryError", "the task ran out of memory: its engine's process "
     "could not allocate more", "my cache is full"),
    # A task's own `raise KeyboardInterrupt` read "KeyboardInterrupt:", as an interrupt from
    # somewhere; it now says the task raised it itself (the engine's interrupts name their
    # sender).
    (_raise_keyboard_interrupt, "KeyboardInterrupt", "the task raised it itself (`raise "
     "KeyboardInterrupt` in its code or a library's, or a SIGINT handler it installed); an "
     "interrupt by the engine names its sender", "stop here")],
    ids=["MemoryError", "KeyboardInterrupt"])
def test_a_task_that_raises_a_bare_memory_error_or_interrupt_says_what_it_means(
        local_cluster, task, ename, said, own):
    """A bare MemoryError or KeyboardInterrupt from a task is explained, and the engine
    serves on; one with a text of its own keeps it."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    (eid,) = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc[eid], rc.load_balanced_view()):
        with pytest.raises(errors.RemoteError) as e:
            view.apply_async(task).get(START_TIMEOUT_S)
        assert e.value.ename == ename
        assert e.value.evalue.startswith(said), e.value.evalue
        assert "The engine stays up" in str(e.value)
        if ename == "MemoryError":
            assert "use less per task" in str(e.value)
    with pytest.raises(errors.RemoteError) as e:
        rc[eid].apply_async(exec, f"raise {ename}({own!r})").get(START_TIMEOUT_S)
    assert e.value.evalue == own
    assert rc[eid].apply_sync(abs, -1) == 1 and rc.ids == [eid]


def test_an_engine_whose_startup_code_calls_sys_exit_says_so(local_cluster):
    """A startup command (or script) that calls sys.exit ends its engine with that status
    before it registers, as asked, and now says so in its log, where it ended silently."""
    engine, = local_cluster.start_engines(1, args=["-c", "import sys\nsys.exit(3)"])
    assert engine.wait(START_TIMEOUT_S) == 3
    log = local_cluster.output("engine0")
    assert "the startup command called sys.exit(3) at line 2: the engine exits without " \
        "registering" in log and "Traceback" not in log, log


@pytest.fixture
def launched(tmp_path):
    """A Cluster of 2 engines, one engine set minipar launched: (cluster, rc, engine set)."""
    cluster = Cluster(n=2, profile_dir=str(tmp_path / "profile"), shutdown_atexit=False,
                      controller_args=["--heartbeat-period", str(HEARTBEAT_S)])
    try:
        rc = cluster.start_and_connect_sync()
        yield cluster, rc, next(iter(cluster.engines.values()))
    finally:
        cluster.stop_cluster_sync()


def test_sigint_to_an_idle_engine_outside_a_terminal_is_ignored(launched):
    """As ipyparallel's engines: SIGINT to engines (Cluster.signal_engines_sync) interrupts
    the tasks that run, and idle engines stay registered and usable."""
    cluster, rc, launcher = launched
    ids = rc.ids
    cluster.signal_engines_sync(signal.SIGINT)
    wait_until(lambda: launcher.get_output().count("SIGINT while idle: ignored") == 2,
               START_TIMEOUT_S, "both idle engines to ignore SIGINT")
    ar = rc[ids[0]].apply_async(_sleep_then, 60, "never")
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the task to start")
    cluster.signal_engines_sync(signal.SIGINT)
    with pytest.raises(errors.RemoteError) as e:
        ar.get(START_TIMEOUT_S)
    assert e.value.ename == "KeyboardInterrupt"
    assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]
    assert rc.ids == ids and len(launcher.pids()) == 2
    assert launcher.get_output().count("SIGINT while idle: ignored") == 3


def test_sigterm_to_an_idle_engine_unregisters_it_at_once(local_cluster):
    """`kill PID` (a user, a batch system ending its job) stops an idle engine as a
    shutdown does: it leaves at once and exits 0. An engine running a task dies of it as
    before, and its task fails with the engine's death."""
    engines = local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    eid_of = {pid: eid for eid, pid in zip(rc.ids, rc[:].apply_sync(os.getpid))}
    idle, busy = engines
    idle.terminate()
    assert idle.wait(10) == 0
    eid = eid_of[idle.pid]
    wait_until(lambda: eid not in rc.ids, 10, f"engine {eid} gone from rc.ids")
    log = local_cluster.output("controller")
    assert f"engine {eid} unregistered" in log and "declared dead" not in log
    ar = rc[eid_of[busy.pid]].apply_async(_sleep_then, 60, "never")
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the task to start")
    busy.terminate()
    assert busy.wait(10) == -signal.SIGTERM
    with pytest.raises(errors.RemoteError, match=r"EngineError: engine \d+ died"):
        ar.get(START_TIMEOUT_S)


def test_an_engine_ended_for_a_time_limit_is_replaced_with_its_id(launched):
    """An engine set minipar launched replaces the engine a time limit ended (whatever
    its restart policy: minipar ended it), and the replacement gets the same id."""
    _, rc, launcher = launched
    ids = rc.ids
    assert rc[:].apply_sync(_hold_the_gil, 0) == [0, 0]   # the import: see _hold_the_gil
    view = rc.load_balanced_view()
    with view.temp_flags(time_limit=1):
        ar = view.apply_async(_hold_the_gil, 60)
    with pytest.raises(errors.TaskTimeout, match="holding the GIL"):
        ar.get(45)
    wait_until(lambda: launcher.restarts == 1 and rc.ids == ids
               and len(launcher.pids()) == 2, START_TIMEOUT_S, f"engines {ids} again")

    def replaced():   # rc.ids may still list the ended engine, until its death is seen
        try:
            return rc[ar.engine_id].apply_sync(os.getpid) in launcher.pids()
        except (errors.EngineError, IndexError):   # IndexError: not registered yet
            return False
    wait_until(replaced, START_TIMEOUT_S, f"engine {ar.engine_id} replaced")
    assert rc[ar.engine_id].apply_sync(_hold_the_gil, 0) == 0


def test_an_engine_process_that_ends_is_dead_at_the_next_beat(tmp_path):
    # liveness so long that missed heartbeats would take an hour: the controller sees the
    # process itself is gone (same host, same pid namespace), as a launcher would
    c = LocalCluster(tmp_path, ["--heartbeat-liveness", "100000"])
    try:
        c.start_engines(1)
        rc = c.client()
        rc.wait_for_engines(1, START_TIMEOUT_S)
        ar = rc.load_balanced_view().apply_async(time.sleep, 60)
        wait_until(ar.running, START_TIMEOUT_S, "the task running")
        c.engines[0].send_signal(signal.SIGKILL)
        with pytest.raises(errors.EngineError, match="died"):
            ar.get(START_TIMEOUT_S)
        wait_until(lambda: rc.ids == [], START_TIMEOUT_S, "the client told engine 0 is gone")
        assert "its process (pid" in c.output("controller")
    finally:
        c.stop()


def _fork(child_exit):
    """Fork; the child comes back into the engine's code: it returns 0 (with `child_exit`
    None) or calls sys.exit(child_exit). The parent returns the child's pid."""
    pid = os.fork()
    if pid == 0 and child_exit is not None:
        sys.exit(child_exit)
    return pid


def _exit_status(pid):
    """The exit status of this engine's child `pid`, once it has ended."""
    def ended():
        done, status = os.waitpid(pid, os.WNOHANG)
        return done and [os.waitstatus_to_exitcode(status)]   # a list: status 0 is falsy

    return wait_until(ended, START_TIMEOUT_S, f"the forked child {pid} to exit")[0]


def _pool_map(xs):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(abs, xs)


def test_a_forked_child_that_comes_back_into_the_engine_exits(local_cluster):
    """A task's forked child that returns (or calls sys.exit) into the engine's code
    exits at once with that status, sending nothing: the client gets the parent's
    result and the engine stays one. Before, the child carried on as a second engine on
    the parent's sockets (spinning), until the cluster's stop killed it 10 s late.
    multiprocessing's fork start method, whose children never come back, still works."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    for child_exit, status in [(None, 0), (3, 3)]:
        child = view.apply_sync(_fork, child_exit)
        assert child > 0   # the parent's result, never the child's 0
        assert view.apply_sync(_exit_status, child) == status
    assert view.apply_sync(_pool_map, [-1, -2, -3]) == [1, 2, 3]
    log = local_cluster.output("engine0")
    assert log.count("came back into the engine's code") == 2 and "Traceback" not in log
    assert "SIGTERM" not in log   # the Pool's workers met Python's handler, not the engine's
    assert len(rc.ids) == 1


def _leave_a_thread_running():
    import threading
    import time

    threading.Thread(target=time.sleep, args=(3600,), name="left-running").start()
    return "started"


_POOLS = []


def _leave_an_idle_pool():
    from concurrent.futures import ThreadPoolExecutor

    _POOLS.append(ThreadPoolExecutor(2))   # kept, never shut down: Python's exit ends
    return _POOLS[-1].submit(sum, [1, 2]).result()   # its idle threads


def test_a_stopped_engine_still_ends_an_idle_pool_a_task_left_as_python_does(local_cluster):
    """The bound on threads left running must not cut short those that end at exit."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(_leave_an_idle_pool) == [3]
    engine.terminate()
    assert engine.wait(20) == 0
    assert "threads a task started" not in local_cluster.output("engine0")


@pytest.mark.parametrize("stop", ["shutdown", "sigterm"])
def test_a_stopped_engine_exits_though_a_task_left_a_thread_running(local_cluster, stop):
    """A task that starts a thread (not daemon) and returns left its engine unable to
    exit: stopped by rc.shutdown or SIGTERM, it unregistered, then Python's exit waited
    on the thread for ever, a process no one would find. It now exits after a grace,
    naming the thread, with the status it would have had, and unregistered."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    (eid,) = rc.ids
    assert rc[eid].apply_sync(_leave_a_thread_running) == "started"
    if stop == "shutdown":
        rc.shutdown(eid, block=True)
    else:
        engine.terminate()
    assert engine.wait(20) == 0
    log = local_cluster.output("engine0")
    assert "threads a task started still run" in log and "left-running" in log
    wait_until(lambda: eid not in rc.ids, 10, f"engine {eid} gone from rc.ids")
    assert "declared dead" not in local_cluster.output("controller")


def _write_to(stream, what):
    import sys

    print("before", file=getattr(sys, stream))
    getattr(sys, stream).write(what)


@pytest.mark.parametrize("stream, what", [("stdout", b"bytes"), ("stderr", 5)])
def test_a_task_writing_what_is_not_text_gets_a_typeerror_and_its_engine_lives(
        local_cluster, stream, what):
    """sys.stdout.write(b"...") in a task (meant for sys.stdout.buffer) was taken by the
    engine's capture, whose join of the output then raised in the engine's own code and
    ended the engine: the task, and any queued behind it, died with it. The write now
    raises TypeError in the task, as a real text stream's does."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    ar = view.apply_async(_write_to, stream, what)
    with pytest.raises(errors.RemoteError, match="TypeError: write.. argument must be str, "
                                                 f"not {type(what).__name__}") as e:
        ar.get(START_TIMEOUT_S)
    assert e.value.ename == "TypeError"
    assert getattr(ar, stream) == "before\n"
    assert view.apply_sync(os.getpid) == engine.pid and engine.poll() is None


def _take_sigterm(how):
    import signal
    import sys

    signal.signal(signal.SIGTERM, {"ignore": signal.SIG_IGN,   # as some libraries on import
                                   "exit": lambda *a: sys.exit(0)}[how])
    return "taken"


@pytest.mark.parametrize("how", ["ignore", "exit"])
def test_an_engine_whose_task_took_sigterm_is_still_stopped_by_it(local_cluster, how):
    """A task (or a library it imports) that set its own SIGTERM handler kept it after
    the task: `kill PID` then did nothing to the idle engine (SIG_IGN), or ended it
    without unregistering (a handler calling sys.exit). The engine puts its handler
    back after each request, says so once, and stops on SIGTERM as an idle engine does."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    (eid,) = rc.ids
    assert rc[eid].apply_sync(_take_sigterm, how) == "taken"
    assert rc[eid].apply_sync(_take_sigterm, how) == "taken"
    engine.terminate()
    assert engine.wait(10) == 0
    log = local_cluster.output("engine0")
    assert log.count("replaced this engine's SIGTERM handler: put back") == 1, log
    assert "SIGTERM while idle: unregistering" in log
    wait_until(lambda: eid not in rc.ids, 10, f"engine {eid} gone from rc.ids")
    assert f"engine {eid} unregistered" in local_cluster.output("controller")


def _block_the_engines_signals():
    """Leave signals blocked in the engine's main thread, as a library's critical section
    that unblocks them on one path only does."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [INTERRUPT_SIGNAL, signal.SIGINT, signal.SIGTERM])


def test_signals_a_task_left_blocked_are_unblocked_for_the_tasks_after_it(local_cluster):
    """The engine is reached by signals: an abort or a time limit interrupts the running
    task with INTERRUPT_SIGNAL, SIGTERM stops it when idle. A task that left them blocked
    in the main thread (signal.pthread_sigmask) made every later task unabortable (the
    abort answered, the task ran on with no end) and an idle engine deaf to SIGTERM. The
    engine now unblocks them after each request, saying so, as it puts back handlers."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    rc[eid].apply_async(_block_the_engines_signals).get(START_TIMEOUT_S)
    ar = rc.load_balanced_view().apply_async(time.sleep, 60)
    wait_until(ar.running, START_TIMEOUT_S, "the task to start")
    ar.abort()
    with pytest.raises(errors.TaskAborted, match="aborted while running"):
        ar.get(START_TIMEOUT_S)
    assert "left ['SIGINT', 'SIGUSR2', 'SIGTERM'] blocked in the engine's main thread: " \
           "unblocked" in local_cluster.output("engine0")
    engine.terminate()   # idle: it unregisters and exits 0 at once
    assert engine.wait(START_TIMEOUT_S) == 0


def _blocking_every_signal(seconds):
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())   # a library's habit
    print("started", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return "ran to its end"


@pytest.mark.parametrize("how", ["abort", "sigint", "time_limit"])
def test_a_task_that_blocks_every_signal_is_still_aborted_and_interrupted(local_cluster, how):
    """A task that blocked INTERRUPT_SIGNAL while it runs (every signal, as some libraries
    do around their work) never saw the engine's interrupt: the abort answered at once
    and the task ran on to its end and its result, as did one past its time_limit (the
    watchdog's SIGALRM blocked too) and one sent SIGINT. The interrupt not handled, the
    engine raises it in the main thread, at the task's next bytecode."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[eid].apply_sync(_hold_the_gil, 0) == 0   # the import: see _hold_the_gil
    view = rc.load_balanced_view()
    with view.temp_flags(time_limit=1 if how == "time_limit" else None):
        ar = view.apply_async(_blocking_every_signal, 60)
    wait_until(lambda: "started" in ar.stdout, START_TIMEOUT_S, "the task to start")
    if how == "abort":
        ar.abort()
    elif how == "sigint":
        rc.send_signal(signal.SIGINT, targets=[eid])
    raised = {"abort": errors.TaskAborted, "sigint": errors.RemoteError,
              "time_limit": errors.TaskTimeout}[how]
    with pytest.raises(raised, match="aborted while running|KeyboardInterrupt|interrupted"):
        ar.get(START_TIMEOUT_S)
    assert rc[eid].apply_sync(os.getpid) == engine.pid   # the same engine serves on


def _result_whose_pickling_exits():
    class Exits:
        def __reduce__(self):
            raise SystemExit(3)

    return Exits()


def test_a_result_whose_pickling_calls_sys_exit_fails_its_task_not_the_engine(local_cluster):
    """A result whose __reduce__ raised SystemExit (an object wrapping a resource that
    exits on misuse, say) escaped the engine's serialization check and ended the engine:
    the task failed as an engine death. It now fails as a result that cannot travel."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    with pytest.raises(errors.RemoteError, match="the result could not be sent back: could "
                                                 "not serialize .*SystemExit: 3") as e:
        view.apply_sync(_result_whose_pickling_exits)
    assert e.value.ename == "SerializationError"
    assert view.apply_sync(os.getpid) == engine.pid and engine.poll() is None


def _misbehaving(how):
    """What a task makes that misbehaves as its engine reports it (runs on the engine)."""
    from minipar import datapub

    class Interrupts:   # a result whose pickling raises KeyboardInterrupt
        def __reduce__(self):
            raise KeyboardInterrupt

    class Exits(Exception):   # an exception whose text ends the process
        def __str__(self):
            raise SystemExit(4)

    if how == "result":
        return Interrupts()
    if how == "deep":   # a long linked structure: too deep to pickle, or to repr
        deep = []
        for _ in range(100_000):
            deep = [deep]
        return deep
    if how == "exception":
        raise Exits()
    datapub.publish_data({"x": Interrupts()})   # sent while it runs, and with the reply
    time.sleep(0.3)
    return "published"


@pytest.mark.parametrize("how, error", [
    ("result", "could not serialize a Interrupts object: pickling it raised KeyboardInterrupt"),
    ("deep", r"could not serialize \[\[\[\[\[\[\[\.\.\.\]\]\]\]\]\]\]: "),
    ("exception", r"Exits: <exception str\(\) failed: SystemExit: 4>$"),
    ("data", None)], ids=["result", "deep", "exception", "data"])
def test_what_a_task_makes_that_misbehaves_when_reported_fails_the_task_not_the_engine(
        local_cluster, how, error):
    """Reporting a task's outcome runs the task's code: its result's __reduce__, its
    exception's __str__, the __repr__ naming what cannot be pickled. What that raised
    past the engine's checks ended the engine (a KeyboardInterrupt taken for a Ctrl-C, a
    SystemExit from __str__, a RecursionError from the repr of a deep list), and the
    task failed as an engine death; published data did so while the task still ran. The
    task now fails with what it made (or its data is left out) and its engine serves on,
    through either view."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc.load_balanced_view(), rc[eid]):
        if error is None:
            assert view.apply_async(_misbehaving, how).get(START_TIMEOUT_S) == "published"
        else:
            with pytest.raises(errors.RemoteError, match=error):
                view.apply_async(_misbehaving, how).get(START_TIMEOUT_S)
        assert view.apply_async(os.getpid).get(START_TIMEOUT_S) == engine.pid


def _asyncio_with_a_signal_handler():
    """asyncio code that handles a signal: the loop takes the wakeup fd (set_wakeup_fd)
    and leaves none when it closes."""
    import asyncio

    async def main():
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, print)

    asyncio.run(main())


@pytest.mark.parametrize("before", [None, _asyncio_with_a_signal_handler], ids=["", "asyncio"])
def test_a_signal_that_lands_in_another_thread_of_an_idle_engine_is_handled(local_cluster,
                                                                            tmp_path, before):
    """A signal sent to the engine's process (mpiexec passing one on, a `kill -USR1`) may
    be delivered to any of its threads. Python runs the handler in the main thread, which
    an idle engine spends in a poll that such a signal does not wake: the handler ran only
    when the next request came (sent here to a thread other than the main one, by tgkill,
    so that where it lands is not left to chance). After a task whose asyncio loop handled
    a signal, it never ran at all: the loop had taken the engine's wakeup fd, leaving none;
    the engine sets it again before each wait."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    if before is not None:
        rc[:].apply_sync(before)
    mark = tmp_path / "usr1"
    pid = rc[:].apply_sync(os.getpid)[0]
    rc[:].execute("import signal\nsignal.signal(signal.SIGUSR1, lambda *a: open("
                  f"{str(mark)!r}, 'w').close())", block=True)
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid
              and not _blocks(f"/proc/{pid}/task/{t}/status", signal.SIGUSR1)]
    assert others, "the engine has Python threads besides its main one (libzmq's block all)"
    libc = ctypes.CDLL(None, use_errno=True)
    tgkill = 234 if os.uname().machine == "x86_64" else 131   # aarch64's number
    assert libc.syscall(tgkill, pid, others[0], signal.SIGUSR1) == 0, ctypes.get_errno()
    wait_until(mark.exists, START_TIMEOUT_S, "the engine's idle main thread to run the handler")
    assert rc[:].apply_sync(lambda: "alive") == ["alive"]


def _blocks(status, sig):
    """Whether the thread whose /proc status file this is blocks signal `sig`."""
    with open(status) as f:
        mask = next(line.split()[1] for line in f if line.startswith("SigBlk:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def _raise_from(how):
    """Raise an error (runs on the engine): "lost" from code whose module's loader lost
    its source (formatting its traceback raises), "deep" at the bottom of a recursion
    100,000 calls deep (under a recursion limit raised for it)."""
    if how == "deep":
        sys.setrecursionlimit(200_000)

        def down(n):
            if n:
                return down(n - 1)
            raise ValueError("at the bottom")
        down(100_000)

    class Loader:
        def get_source(self, name):
            raise RuntimeError("the loader lost its source")
    ns = {"__name__": "gone", "__loader__": Loader()}
    exec(compile("def f():\n    raise ValueError('the task failed')\n", "/nonexistent/gone.py",
                 "exec"), ns)
    ns["f"]()


def test_a_task_error_whose_traceback_cannot_be_told_whole_fails_the_task_not_the_engine(
        local_cluster):
    """Reporting a task's error formats its traceback. Where that raised (a frame's module
    whose loader raised in get_source, memory short: a MemoryError), the engine ended and
    the task failed as an engine death; a recursion 100,000 deep was sent whole (a million
    took the engine 20 s and 300 MB). The task now fails with its own error, its traceback
    the first and last frames, and the engine serves on, through either view."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc[eid], rc.load_balanced_view()):
        with pytest.raises(ValueError, match="the task failed"):
            view.apply_async(_raise_from, "lost").get(START_TIMEOUT_S)
        with pytest.raises(ValueError, match="at the bottom") as e:
            view.apply_async(_raise_from, "deep").get(START_TIMEOUT_S)
        tb = e.value.traceback
        assert "in down\n" in tb and " frames left out ...\n" in tb, tb[-2000:]
        assert tb.count("in down\n") < 20 and tb.endswith("ValueError: at the bottom\n")
        assert view.apply_async(os.getpid).get(START_TIMEOUT_S) == engine.pid


def _close_std_streams():
    """Close sys.stdout and sys.stderr, as a task that cleans up too much (runs on the engine);
    returns what a print after that raised."""
    print("before the close")
    sys.stdout.close()
    sys.stderr.close()
    try:
        print("after the close")
    except ValueError as e:
        return str(e)


def _print_flushed():
    print("flushed", flush=True)
    print("warned", file=sys.stderr, flush=True)
    return sys.stdout.closed or sys.stderr.closed


def test_a_task_that_closes_sys_stdout_closes_it_for_itself_not_the_engine(local_cluster):
    """A task's sys.stdout and sys.stderr are one object each for the engine's life. One
    that closed them closed them for good: every later request that flushed (print(...,
    flush=True), logging) failed with ValueError, "I/O operation on closed file.", until
    the engine was restarted. Closed now lasts the rest of that task, as for a file."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc[eid], rc.load_balanced_view()):
        ar = view.apply_async(_close_std_streams)
        assert ar.get(START_TIMEOUT_S) == "I/O operation on closed file."
        assert ar.stdout == "before the close\n"
        ar = view.apply_async(_print_flushed)
        assert ar.get(START_TIMEOUT_S) is False
        assert (ar.stdout, ar.stderr) == ("flushed\n", "warned\n")
    assert engine.poll() is None


def _std_fd_targets():
    """What the engine's fds 1 and 2 point to (runs on the engine); None for a closed one."""
    def target(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            return None
    return [target(1), target(2)]


@interactive
def _open_kept(path):
    """Open `path` for writing, kept in the engine's namespace (runs there): its fd."""
    global kept
    kept = open(path, "w", buffering=1)
    return kept.fileno()


def test_a_task_that_closes_fd_1_or_2_leaves_the_engine_its_log(local_cluster, tmp_path):
    """A task that closed fd 2 (or 1: os.close, to silence a library) left the engine without
    its log, and worse: the next file a task opened took that number, and the engine's log
    lines (and faulthandler's report of a crash) were written into the user's file. The
    engine opens them again after such a task, saying so."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    log = str(local_cluster.log_dir / "engine0.log")
    assert rc[eid].apply_sync(_std_fd_targets) == [log, log]
    for fd in (1, 2):
        for view in (rc[eid], rc.load_balanced_view()):
            view.apply_async(os.close, fd).get(START_TIMEOUT_S)
            assert view.apply_async(_std_fd_targets).get(START_TIMEOUT_S) == [log, log]
    user_file = tmp_path / "user.txt"
    rc[eid].apply_sync(os.close, 2)
    assert rc[eid].apply_sync(_open_kept, str(user_file)) > 2
    rc[eid].execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)", block=True)
    rc[eid].execute("kept.close()", block=True)   # the engine logged its SIGINT handler's return
    assert user_file.read_text() == ""
    out = local_cluster.output("engine0")
    assert "replaced this engine's SIGINT handler: put back" in out
    assert out.count("closed the engine's stderr (fd 2): opened again; to silence output, "
                     "redirect it rather than close it") == 3, out
    assert engine.poll() is None


def _limit_memory(headroom_mb):
    """Limit this engine's address space to what it uses plus `headroom_mb` (runs on the
    engine: a task that sets RLIMIT_AS); with None, lift the limit."""
    import resource

    if headroom_mb is None:
        return resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
    with open("/proc/self/status") as f:
        used = int(f.read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom_mb * 2**20, resource.RLIM_INFINITY))


def _print_mb(mb, how):
    """Print `mb` MB (runs on the engine): as two writes (print: the text, its newline), or
    as one (write), which the engine need not join."""
    text = "y" * (mb * 2**20)
    print(text) if how == "print" else sys.stdout.write(text)
    time.sleep(3 * 0.1)   # three of the engine's STREAM_INTERVAL_S: it streams the text
    return "printed"


@pytest.mark.parametrize("how", ["print", "write"])
def test_a_task_that_prints_near_its_memory_limit_ends_no_engine(local_cluster, how):
    """A task that left its engine little memory (RLIMIT_AS) and then printed 250 MB: the
    engine met a MemoryError outside the task, joining that output for the reply (and to
    stream it) or, written whole, packing it into the reply. The join for the reply and the
    packing ended the engine (the request lost); the join for streaming ended its receiver
    thread (aborts, time limits and shutdown no longer heard). Now the task gets the end of
    its output, said to be that, or a MemoryError saying what to do, and the engine serves on."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    rc[eid].apply_sync(_limit_memory, 400)
    try:
        for view in (rc[eid], rc.load_balanced_view()):
            ar = view.apply_async(_print_mb, 250, how)
            if how == "write":
                with pytest.raises(MemoryError, match="the engine ran out of memory making the "
                                   "reply to .*: return \\(or print\\) less"):
                    ar.get(START_TIMEOUT_S)
                assert ar.stdout == "y" * 10_000
            else:
                assert ar.get(START_TIMEOUT_S) == "printed"
                assert ar.stdout.startswith(f"[the engine was short of memory for the "
                                            f"{250 * 2**20 + 1} characters this task wrote "
                                            "here; the last 10000:]\n")
                assert ar.stdout.endswith("y" * 9999 + "\n") and len(ar.stdout) < 11_000
            sleeping = view.apply_async(time.sleep, 60)   # the receiver hears the abort
            wait_until(lambda: sleeping.running(), START_TIMEOUT_S, "the sleep to start")
            sleeping.abort()
            with pytest.raises(errors.TaskAborted):
                sleeping.get(START_TIMEOUT_S)
    finally:
        rc[eid].apply_sync(_limit_memory, None)
    assert engine.poll() is None


def _lower_recursion_limit(slack):
    """Set the recursion limit `slack` frames above this call's depth (runs on the engine)."""
    import inspect

    sys.setrecursionlimit(len(inspect.stack(0)) + slack)
    return sys.getrecursionlimit()


def test_a_task_that_lowers_the_recursion_limit_leaves_the_engine_enough(local_cluster):
    """A task that set the recursion limit a few frames above its own depth (a
    sys.setrecursionlimit(20)) ended its engine: the engine's code after it (putting back
    signal handlers, reporting) raised RecursionError, and the request was lost. The engine
    now raises the limit back to MIN_RECURSION_LIMIT after such a task, saying so; a higher
    limit a task sets is kept for the next ones."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc[eid], rc.load_balanced_view()):
        low = view.apply_async(_lower_recursion_limit, 3).get(START_TIMEOUT_S)
        assert view.apply_async(sys.getrecursionlimit).get(START_TIMEOUT_S) == 200 > low
        with pytest.raises(ZeroDivisionError):
            view.apply_async(operator.truediv, 1, 0).get(START_TIMEOUT_S)
    assert f"set the recursion limit to {low}, too low for the engine's own code: raised " \
        "to 200" in local_cluster.output("engine0")
    rc[eid].apply_sync(sys.setrecursionlimit, 5000)
    assert rc[eid].apply_sync(sys.getrecursionlimit) == 5000 and engine.poll() is None


def _write_bytes_through_stdout():
    """What code that writes bytes to sys.stdout finds there (runs on the engine)."""
    sys.stdout.write("café\n".encode().decode(sys.stdout.encoding))   # as a program's output
    try:
        sys.stdout.buffer.write(b"raw\n")
    except AttributeError as e:
        return sys.stdout.encoding, hasattr(sys.stdout, "buffer"), str(e)


def test_a_tasks_stdout_names_its_encoding_and_says_it_has_no_buffer(local_cluster):
    """A task's sys.stdout had encoding None (io's default), so code that reads it
    (sys.stdout.encoding.lower(), a program's output decoded with it) failed with a
    TypeError or AttributeError about None; and sys.stdout.buffer was an AttributeError
    naming the engine's class. It is now UTF-8, what the text travels as, and the missing
    buffer says what to write instead (hasattr is still False, as on an IPython kernel)."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    for view in (rc[eid], rc.load_balanced_view()):
        ar = view.apply_async(_write_bytes_through_stdout)
        assert ar.get(START_TIMEOUT_S) == (
            "utf-8", False, "a task's sys.stdout on an engine has no buffer: it takes text, "
            "sent to its client; write str (bytes.decode()) to sys.stdout, or bytes to a file")
        assert ar.stdout == "café\n"
