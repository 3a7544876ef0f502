"""Many clients on one controller (a class, a group sharing a cluster): their tasks take
turns, and one that reads nothing (stopped, asleep) neither holds the controller's memory
nor stops the others. Real controller, engines and client processes over real sockets;
memory is the controller's VmRSS (/proc/PID/status), bounded generously, never a timing.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, START_TIMEOUT_S, LocalCluster, _env
from .helpers import freeze, wait_until

TIMEOUT = 240
pytestmark = pytest.mark.timeout(TIMEOUT)

MB = 1 << 20
HELD = "its tasks wait until it reads"   # the controller's log line when it holds a client


def _rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def _nap(i):
    import time
    time.sleep(0.005)
    return i


def test_a_second_clients_task_runs_while_the_firsts_thousands_wait(local_cluster):
    """One student queues 4,000 tasks, another submits one: it ran after all 4,000 (the
    queue was one line, first come first served). Now each client has its own line and
    freed engines take from them in turn, so it runs next but one, while thousands of the
    first's still wait; those keep their order, and all of them finish."""
    local_cluster.start_engines(2)
    first, second = local_cluster.client(), local_cluster.client()
    first.wait_for_engines(2, START_TIMEOUT_S)
    many = first.load_balanced_view().map(_nap, range(4000), block=False, chunksize=1)
    assert first.queue_status()["unassigned"] > 3000   # all there: the reply comes after them
    one = second.load_balanced_view().apply_async(_nap, -1)
    assert one.get(TIMEOUT / 2) == -1
    waiting = second.queue_status()["unassigned"]
    assert not many.done() and waiting > 2000, waiting
    assert many.get(TIMEOUT / 2) == list(range(4000))


# A student's script: N tasks of a 1 MB result each (its index in the first 8 bytes), read
# in order, each dropped once read; then a count of what came: the value, or a failure.
_STUDENT = """
import json, sys, minipar
rc = minipar.Client(sys.argv[1])
view = rc.load_balanced_view()
f = lambda i: i.to_bytes(8, "little") + bytes((1 << 20) - 8)
ars = [view.apply_async(f, i) for i in range(int(sys.argv[2]))]
rc.queue_status()   # answered once the controller has every task
print("submitted", flush=True)
ok, failed = 0, []
for i, ar in enumerate(ars):
    try:
        r = ar.get(200)
        ok += r[:8] == i.to_bytes(8, "little") and len(r) == 1 << 20
    except Exception as e:
        failed.append(f"{type(e).__name__}: {e}")
    ars[i] = None
print(json.dumps({"ok": ok, "failed": len(failed), "why": failed[:1]}), flush=True)
"""


def _student(c, n):
    p = subprocess.Popen([sys.executable, "-c", _STUDENT, c.client_file, str(n)],
                         stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    c.procs.append(p)   # stopped by pid with the cluster, should the test fail
    assert p.stdout.readline() == "submitted\n"
    return p


def _wakes_and_gets_every_result(c, student, n):
    """SIGCONT the frozen `student`: each of its `n` results arrives, and the controller
    logged no traceback meanwhile."""
    os.kill(student.pid, signal.SIGCONT)
    out, _ = student.communicate(timeout=TIMEOUT / 2)
    assert json.loads(out) == {"ok": n, "failed": 0, "why": []}, out
    assert "Traceback" not in c.output("controller")


def test_a_stopped_client_holds_a_bounded_part_of_the_controller_while_others_run(tmp_path):
    """A student's laptop asleep (SIGSTOP) with 800 tasks of 1 MB results queued: the
    controller sent every result on (ZeroMQ queued them all for it, unbounded), 800 MB
    on top of its records, and one student could run a class's controller out of memory.
    Now a few messages wait in its pipe, up to 64 MB more in the controller, and then its
    queued tasks wait until it reads; the others' tasks run meanwhile. After SIGCONT
    every result arrives: nothing is dropped."""
    n = 800
    c = LocalCluster(tmp_path, controller_args=["--record-bytes", str(32 * MB)])
    try:
        c.start_engines(2)
        rc = c.client()
        rc.wait_for_engines(2, START_TIMEOUT_S)
        before = _rss(c.controller.pid)
        student = _student(c, n)
        freeze(student.pid)
        wait_until(lambda: HELD in c.output("controller") or sum(
            q["completed"] for e, q in rc.queue_status().items() if e != "unassigned") >= n,
            TIMEOUT / 4, "the student's tasks to be held, or to end")
        others = rc.load_balanced_view().map(abs, range(-200, 0), block=False)
        assert others.get(TIMEOUT / 4) == list(range(200, 0, -1))   # others served
        grown = _rss(c.controller.pid) - before
        assert grown < 400 * MB, f"the controller grew by {grown // MB} MB for one client"
        assert rc.queue_status()["unassigned"] > 0   # the student's, held
        _wakes_and_gets_every_result(c, student, n)
    finally:
        c.stop()


def test_a_slow_reader_gets_all_of_2000_megabyte_results_in_order(tmp_path):
    """A student that reads slower than the engines make results (stopped until the
    controller holds its tasks, then reading one at a time): an earlier bound on its pipe
    dropped the results past it (TaskAborted). Every one of 2,000 results of 1 MB
    arrives, in order, however often its tasks are held and released."""
    n = 2000
    c = LocalCluster(tmp_path, controller_args=["--record-bytes", str(32 * MB)])
    try:
        c.start_engines(2)
        student = _student(c, n)
        freeze(student.pid)
        wait_until(lambda: HELD in c.output("controller"), TIMEOUT / 4,
                   "the controller to hold the tasks of a client that reads nothing")
        _wakes_and_gets_every_result(c, student, n)
    finally:
        c.stop()
