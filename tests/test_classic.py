"""The classic IPython.kernel API (MultiEngineClient, TaskClient, Task, TaskResult, the
magics), driven as the seed's "multiengine interface" and "task interface" documents do,
with `from minipar import client` in place of `from IPython.kernel import client`.

A controller and four engines are started with ``python -m`` (see conftest): one for the
module, shared by the tests of ``mec`` and ``tc`` (each with clients of its own), which
leave the engines as they found them; a test that counts its engines' executions (In [n])
or stops an engine takes ``cluster``, its own."""

import io
import os
import pdb
import re
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from minipar import client

from .conftest import ROOT, START_TIMEOUT_S, LocalCluster, _env
from .helpers import freeze, wait_until

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)


def _closed_after(classic):
    """Yield `classic` (a MultiEngineClient or TaskClient of the module's cluster), then
    abort what its Client left running (a failed test's: not to keep the next test's
    engines busy) and close that Client."""
    try:
        yield classic
    finally:
        if classic.client.outstanding:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "nothing to abort": answered meanwhile
                classic.client.abort()
        classic.client.close()


@pytest.fixture
def mec(shared_cluster):
    yield from _closed_after(client.MultiEngineClient(shared_cluster.client_file))


@pytest.fixture
def tc(shared_cluster):
    yield from _closed_after(client.TaskClient(shared_cluster.client_file))


def _own_mec(cluster):
    m = client.MultiEngineClient(cluster.client_file)
    cluster.clients.append(m.client)   # closed by the fixture, also when the test fails
    return m


def _wait_for(path):
    """Engine code that blocks until `path` exists: tasks in flight without timing."""
    return f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.02)\n"


# ---------------------------------------------------------------- the task document

def test_task_quickstart_as_written(shared_cluster, tc):
    tasklist = []
    for n in range(1000):
        tasklist.append(client.Task("a = %i" % n, pull="a"))
    taskids = [tc.run(t) for t in tasklist]
    assert all(isinstance(t, int) for t in taskids)
    tc.barrier(taskids)
    task_results = [tc.get_task_result(taskid) for taskid in taskids]
    tr = task_results[73]
    assert repr(tr) == "TaskResult[ID:73]:{'a': 73}"
    assert tr.results["a"] == 73 and tr.ns.a == 73 and tr["a"] == 73 and tr.keys == ["a"]
    for n, tr in enumerate(task_results):
        assert tr.results["a"] == n and tr.ns.a == n and tr.failure is None
        assert tr.engineid in shared_cluster.rc.ids
        assert tr.submitted <= tr.completed and tr.duration >= 0
    assert len({tr.engineid for tr in task_results}) > 1   # load-balanced
    assert tc.queue_status() == {"scheduled": 0, "pending": 0, "succeeded": 1000, "failed": 0}
    tc.clear()
    with pytest.raises(IndexError):
        tc.get_task_result(taskids[0])


def test_task_client_made_as_the_document_shows(shared_cluster, tmp_path, monkeypatch):
    os.symlink(shared_cluster.profile_dir, tmp_path / "profile_default")
    monkeypatch.setenv("MINIPAR_DIR", str(tmp_path))   # the default profile is the cluster's
    tc = client.TaskClient(client.default_task_address)
    shared_cluster.clients.append(tc.client)
    assert tc.run(client.Task("a = 1", pull="a"), block=True).ns.a == 1
    mec = client.MultiEngineClient(client.default_address)
    shared_cluster.clients.append(mec.client)
    assert mec.get_ids() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match=r"\('192.168.1.1', 10113\).*connection file.*path"):
        client.TaskClient(("192.168.1.1", 10113))


def test_queue_status_lists_states_and_abort(tc, tmp_path):
    ok = tc.run(client.Task("x = 1", pull="x"))
    bad = tc.run(client.Task("1/0"))
    tc.barrier([ok, bad])
    assert tc.get_task_result(bad).failure.ename == "ZeroDivisionError"
    assert re.fullmatch(rf"TaskResult\[ID:{bad}\]:<\[engine \d\] ZeroDivisionError: "
                        r"division by zero>", repr(tc.get_task_result(bad)))
    with pytest.raises(ZeroDivisionError):
        tc.get_task_result(bad).raise_exception()
    flag = tmp_path / "go"
    blocked = [tc.run(client.Task(_wait_for(flag))) for _ in range(12)]
    assert tc.get_task_result(blocked[-1]) is None
    # as the document says: 'pending' are running (one per engine), 'scheduled' wait,
    # also those the scheduler already queued on an engine behind a running one
    def one_running_per_engine():
        status = tc.queue_status(verbose=True)
        return status if len(status["pending"]) == 4 else None

    status = wait_until(one_running_per_engine, 10, "a task running on each of 4 engines")
    assert status["succeeded"] == [ok] and status["failed"] == [bad]
    assert len(status["scheduled"]) == 8
    assert sorted(status["pending"] + status["scheduled"]) == blocked
    counts = tc.queue_status()
    assert counts["succeeded"] == 1 and counts["failed"] == 1
    assert counts["pending"] + counts["scheduled"] == 12

    queued = status["scheduled"][-1]
    tc.abort(queued)
    tr = tc.get_task_result(queued, block=True)
    assert isinstance(tr.failure, client.errors.TaskAborted)
    with pytest.raises(client.errors.TaskAborted):
        tr.ns
    flag.touch()
    tc.barrier(blocked)
    with pytest.raises(IndexError, match="Task Already Completed"):
        tc.abort(blocked[0])
    with pytest.raises(IndexError):
        tc.get_task_result(10_000)
    tc.spin()
    assert tc.queue_status()["failed"] == 2


def test_a_running_string_task_shows_as_such_in_the_status(tc, tmp_path):
    """rc.status() and minipar.top name what each engine runs: a StringTask showed as
    "_string_task", the helper that runs its code on the engine."""
    flag = tmp_path / "go"
    taskid = tc.run(client.Task(_wait_for(flag)))
    msg_id, = tc._tasks[taskid]["ar"].msg_ids

    def its_row():
        return next((row for row in tc.client.status()["engines"]
                     if row["msg_id"] == msg_id), None)

    assert wait_until(its_row, START_TIMEOUT_S, "the status to show the task")["task"] \
        == "StringTask"
    flag.touch()
    assert tc.get_task_result(taskid, block=True).failure is None


def test_depend_on_engine_properties(mec, tc):
    def dep(properties):
        return properties["RAM"] > 2**32   # have at least 4GB (a KeyError counts as False)

    first = tc.run(client.Task("import os; pid = os.getpid()", pull="pid", depend=dep))
    tc.spin()
    assert tc.get_task_result(first) is None   # no engine says it has the RAM yet
    assert tc.queue_status(verbose=True)["scheduled"] == [first]
    mec.set_properties({"RAM": 2**30}, targets=[0, 1])   # too little: still waiting
    tc.spin()
    assert tc.get_task_result(first) is None
    # code running on engine 2 sets its own property; the task starts there, no spin()
    mec.execute("from minipar.engine import properties\nproperties['RAM'] = 2**33",
                targets=2)
    tr = tc.get_task_result(first, block=True)
    assert tr.engineid == 2 and tr.failure is None
    more = [tc.run(client.Task("b = 1", pull="b", depend=dep)) for _ in range(12)]
    tc.barrier(more)
    assert {tc.get_task_result(t).engineid for t in more} == {2}
    assert mec.get_properties("RAM", targets=2) == [{"RAM": 2**33}]
    assert mec.has_properties(["RAM", "GPU"]) == [[True, False]] * 3 + [[False, False]]
    mec.del_properties("RAM", targets=2)
    mec.clear_properties(targets=[0, 1])
    assert mec.get_properties() == [{}] * 4


def test_properties_set_by_an_engine_startup_command(local_cluster):
    local_cluster.start_engines(1)
    local_cluster.start_engines(1, args=["-c", "from minipar.engine import properties\n"
                                               "properties['gpu'] = 'big'"])
    rc = local_cluster.client()
    rc.wait_for_engines(2, TIMEOUT / 2)
    tc = client.TaskClient(client=rc)
    ids = [tc.run(client.Task("import os; pid = os.getpid()", pull="pid",
                              depend=lambda p: p.get("gpu") == "big")) for _ in range(6)]
    tc.barrier(ids)
    pids = {tc.get_task_result(t).ns.pid for t in ids}
    assert pids == {local_cluster.engines[1].pid}


def test_depend_that_fails_to_unpickle_in_the_controller(tc, tmp_path, monkeypatch):
    (tmp_path / "only_on_this_client.py").write_text("def dep(properties):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_this_client   # pickled by reference: the controller cannot import it

    try:
        tr = tc.run(client.Task("a = 1", pull="a", depend=only_on_this_client.dep), block=True)
    finally:
        sys.modules.pop("only_on_this_client", None)
    assert isinstance(tr.failure, client.errors.InvalidDependency)
    assert "depend" in str(tr.failure)
    assert tc.run(client.Task("a = 2", pull="a"), block=True).ns.a == 2   # controller alive


def test_retries_then_success_and_recovery_chain(tc, tmp_path):
    def flaky(counter, fail_times):
        return textwrap.dedent(f"""\
            import os
            n = int(open({str(counter)!r}).read()) + 1 if os.path.exists({str(counter)!r}) else 1
            open({str(counter)!r}, "w").write(str(n))
            if n <= {fail_times}:
                raise RuntimeError("attempt %d fails" % n)
            attempts = n
            """)

    tr = tc.run(client.Task(flaky(tmp_path / "c1", 2), pull="attempts", retries=2),
                block=True)
    assert tr.failure is None and tr.ns.attempts == 3
    tr = tc.run(client.Task(flaky(tmp_path / "c2", 2), pull="attempts", retries=1),
                block=True)
    assert isinstance(tr.failure, RuntimeError) and "attempt 2 fails" in str(tr.failure)

    last = client.Task("b = 'recovered'", pull="b")
    chain = client.Task("raise ValueError('always')", retries=1,
                        recovery_task=client.Task("raise ValueError('again')",
                                                  recovery_task=last))
    tr = tc.run(chain, block=True)
    assert tr.failure is None and tr.results == {"b": "recovered"}

    # a task that succeeds never runs its recovery task
    marker = tmp_path / "recovery-ran"
    tr = tc.run(client.Task("a = 1", pull="a",
                            recovery_task=client.Task(f"open({str(marker)!r}, 'w')")),
                block=True)
    assert tr.ns.a == 1
    tc.barrier(list(range(tr.taskid + 1)))
    assert tc.run(client.Task("import os; seen = os.path.exists(%r)" % str(marker),
                              pull="seen"), block=True).ns.seen is False

    t1, t2 = client.Task("x = 1"), client.Task("y = 2")
    t1.recovery_task, t2.recovery_task = t2, t1
    with pytest.raises(ValueError, match="loops"):
        tc.run(t1)


def test_clear_before_and_after_and_push(mec, tc):
    mec.execute("leftover = 1")
    tr = tc.run(client.Task("names = sorted(k for k in globals() if not k.startswith('__'))",
                            pull="names", clear_before=True), block=True)
    assert tr.ns.names == []
    tr = tc.run(client.Task("c = a + b", push=dict(a=1, b=2), pull=["a", "c"],
                            clear_after=True), block=True)
    assert tr.results == {"a": 1, "c": 3}
    assert mec.keys(targets=tr.engineid) == [[]]


def test_a_tasks_id_is_its_engines_number_as_the_task_document_has_it(mec, tc):
    """The task document's ``Task("a = str(id)", pull=["a", "id"])``: IPython.kernel's
    engines had their number in the namespace as `id`. Before, `id` was the builtin
    function: ``a`` was "<built-in function id>". The builtin is still what modern code
    on the same engines calls, during the task too, and after it; the namespace gains no
    name."""
    ids = [tc.run(client.Task("a = str(id)", pull=["a", "id"])) for _ in range(12)]
    tc.barrier(ids)
    for tr in map(tc.get_task_result, ids):
        assert tr.results == {"a": str(tr.engineid), "id": tr.engineid}, tr
        assert type(tr["id"]) is int
    tr = tc.run(client.Task("x = []\nsame = id(x) == id(x) and int(id) == id\nn = id + 1",
                            pull=["same", "n"]), block=True)
    assert tr.results == {"same": True, "n": tr.engineid + 1}
    tr = tc.run(client.Task("names = list(globals())", pull="names", clear_before=True),
                block=True)
    assert [k for k in tr.ns.names if not k.startswith("__")] == []
    # after the tasks, no `id` is left in the namespaces: code there calls the builtin
    mec.execute("import builtins\nok = 'id' not in globals() and id is builtins.id")
    assert mec.pull("ok") == [True] * 4
    # one the task pushes is its own, as any pushed name
    assert tc.run(client.Task("a = id", push={"id": "pushed"}, pull="a"), block=True).ns.a \
        == "pushed"


def test_map_tasks_map_and_parallel(tc):
    assert tc.run(client.MapTask(pow, args=(2, 10)), block=True) == 1024
    assert tc.run(client.MapTask(sorted, args=([3, 1, 2],), kwargs={"reverse": True}),
                  block=True) == [3, 2, 1]
    with pytest.raises(ZeroDivisionError):
        tc.run(client.MapTask(divmod, args=(1, 0)), block=True)
    serial_result = list(map(lambda x: x**10, range(32)))
    parallel_result = tc.map(lambda x: x**10, range(32))
    assert serial_result == parallel_result

    @tc.parallel()
    def f(x):
        return 10.0 * x**4

    assert f(range(32)) == [10.0 * x**4 for x in range(32)]
    ids = tc.mapper(block=False, retries=1).map(abs, [-1, -2])
    tc.barrier(ids)
    assert [tc.get_task_result(t) for t in ids] == [1, 2]


# ---------------------------------------------------------------- the multiengine document

def test_multiengine_session(cluster, tmp_path):
    mec = _own_mec(cluster)
    assert mec.get_ids() == [0, 1, 2, 3]
    serial_result = list(map(lambda x: x**10, range(32)))
    assert mec.map(lambda x: x**10, range(32)) == serial_result

    @mec.parallel()
    def f(x):
        return 10.0 * x**4

    assert f(range(32))[:3] == [0.0, 10.0, 160.0]

    r = mec.execute("a=5")
    assert repr(r) == "<Results List>\n" + "\n".join(f"[{i}] In [1]: a=5" for i in range(4))
    mec.execute("b=10")
    r = mec.execute("c=a+b", targets=[0, 2])
    assert [x["id"] for x in r] == [0, 2]
    mec.execute("c=a-b", targets=[1, 3])
    r = mec.execute("print(c)")
    assert [x["stdout"] for x in r] == ["15\n", "-5\n", "15\n", "-5\n"]
    assert [x["number"] for x in r] == [4, 4, 4, 4]
    assert "[1] In [4]: print(c)\n[1] Out[4]: -5\n" in repr(r)
    result_dict = mec.execute("d=10; print(d)")
    for x in result_dict:
        assert x["input"] == {"translated": "d=10; print(d)", "raw": "d=10; print(d)"}
        assert x["number"] == 5 and x["stdout"] == "10\n" and x["stderr"] == ""
    assert mec.get_result() == result_dict
    assert [x["stdout"] for x in mec.get_result(4)] == ["15\n", "-5\n", "15\n", "-5\n"]
    assert mec.get_result(-2, targets=[1])[0]["number"] == 4

    # non-blocking
    mec.execute("import time")
    pr = mec.execute("time.sleep(2)", block=False)
    assert pr.get_result(block=False) is None
    assert pr.get_result(default="not yet", block=False) == "not yet"
    assert [x["input"]["raw"] for x in pr.get_result()] == ["time.sleep(2)"] * 4
    pr = mec.execute("time.sleep(0.5)", block=False)
    assert isinstance(pr.r, client.ResultList)
    mec.block = False
    pr_list = [mec.execute("time.sleep(0.05)") for i in range(10)]
    mec.barrier(pr_list)
    assert all(p.future.done() for p in pr_list)
    assert len(pr_list[0].r) == 4

    # the targets and block attributes
    mec.targets = [0, 2]
    pr = mec.execute("a=5")
    assert [x["id"] for x in pr.r] == [0, 2]
    mec.targets = "all"
    mec.block = True
    assert len(mec.execute("b=10; print(b)")) == 4

    # moving objects
    assert mec.push(dict(a=1.03234, b=3453)) == [None, None, None, None]
    assert mec.pull("a") == [1.03234] * 4
    assert mec.pull("b", targets=0) == [3453]
    assert mec.pull(("a", "b")) == [[1.03234, 3453]] * 4
    assert mec.zip_pull(("a", "b")) == [(1.03234,) * 4, (3453,) * 4]
    mec.block = False
    pr = mec.pull("a")
    assert pr.r == [1.03234] * 4
    pr.add_callback(lambda values, k: [v * k for v in values], 2)
    assert pr.get_result() == [2.06468] * 4
    mec.block = True

    def g(x):
        return 2.0 * x**4

    assert mec.push_function(dict(g=g)) == [None] * 4
    mec.execute("y = g(4.0)")
    assert mec.pull("y") == [512.0] * 4
    assert mec.pull_function("g", targets=1)[0](1.0) == 2.0
    pickled = mec.pull_serialized("y", targets=0)
    assert isinstance(pickled[0], bytes)
    mec.push_serialized({"y2": pickled[0]}, targets=3)
    assert mec.pull("y2", targets=3) == [512.0]

    # dictionary interface
    mec["a"] = ["foo", "bar"]
    assert mec["a"] == [["foo", "bar"]] * 4
    assert len(mec) == 4

    # scatter and gather
    assert mec.scatter("a", range(16)) == [None] * 4
    assert mec.pull("a") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert mec.gather("a") == list(range(16))
    mec.scatter("x", range(64))
    mec.execute("y = [i**10 for i in x]")
    assert mec.gather("y") == [i**10 for i in range(64)]
    assert mec.raw_map(pow, [range(5), [2] * 5]) == [0, 1, 4, 9, 16]
    assert mec.mapper(targets=[0, 1]).map(abs, [-1, -2, 3]) == [1, 2, 3]
    script = tmp_path / "script.py"
    script.write_text("from_file = 42\n")
    mec.run(str(script), targets=[0, 1])
    assert mec.pull("from_file", targets=[0, 1]) == [42, 42]

    # parallel exceptions
    with pytest.raises(client.CompositeError) as e:
        mec.execute("1/0")
    text = str(e.value)
    assert text.startswith("one or more exceptions from call to method: execute")
    assert "[0:execute]: ZeroDivisionError: division by zero" in text
    with pytest.raises(ZeroDivisionError):
        e.value.raise_exception()
    mec.block = False
    pr = mec.execute("1/0")
    with pytest.raises(client.CompositeError):
        pr.r
    mec.block = True

    # namespaces, queues, control
    assert "y" in mec.keys(targets=0)[0]
    mec.reset(targets=[0])
    assert mec.keys(targets=[0]) == [[]]
    assert [eid for eid, _ in mec.queue_status()] == [0, 1, 2, 3]
    mec.flush()
    done = mec.pull("a", targets=1, block=False)   # a was scattered: [4, 5, 6, 7]
    mec.barrier(done)
    mec.clear_pending_results()   # IPython.kernel's name for flush
    assert done.r == [[4, 5, 6, 7]]   # delivered before: still here
    bench = mec.benchmark(push_size=1000)
    assert set(bench) == {"single_engine_latency", "all_engine_latency",
                          "single_engine_push", "all_engine_push"}
    assert all(value > 0 for value, unit in bench.values())
    mec.kill(targets=[3])
    assert mec.get_ids() == [0, 1, 2]


def test_a_with_block_after_remote_runs_on_the_engines(mec):
    mec.targets = [1, 3]
    with mec:
        client.remote()   # Required so the following code is not run locally
        a = 10
        b = 30

        c = a + b
    assert "c" not in locals()
    assert mec.pull("c") == [40, 40]   # the client goes on after the block
    r = mec.get_result()
    assert [x["id"] for x in r] == [1, 3]
    assert r[0]["input"]["raw"] == "a = 10\nb = 30\n\nc = a + b\n"
    with pytest.raises(RuntimeError, match=r"inside one, or use mec.execute"):
        client.remote()
    with pytest.raises(NotImplementedError, match=r"<string>.*mec.execute\(code\)"):
        with mec:
            exec("client.remote()\nd = 1\n")
    assert mec.pull("c") == [40, 40]   # still open, for the mec.execute it advises


def test_debug_after_a_composite_error_finds_it_as_e(mec):
    with pytest.raises(client.CompositeError) as info:
        mec.execute("1/0", targets=[0, 2])
    # what %debug does: the debugger at the frame that raised, the document's commands
    out = io.StringIO()
    debugger = pdb.Pdb(stdin=io.StringIO("e.print_tracebacks()\np [x.ename for x in "
                                         "e.elist]\nq\n"), stdout=out)
    debugger.use_rawinput = False
    debugger.reset()
    debugger.interaction(None, info.value.__traceback__)
    assert "['ZeroDivisionError', 'ZeroDivisionError']" in out.getvalue()
    shown = out.getvalue()   # the debugger prints what its commands print too
    assert "NameError" not in shown
    assert "[0:execute]:" in shown and "[2:execute]:" in shown and "1/0" in shown


def test_clear_queue_aborts_queued_requests_only(mec, tmp_path):
    flag = tmp_path / "go"
    running = mec.execute(_wait_for(flag), targets=0, block=False)
    queued = [mec.execute("z = 1", targets=0, block=False) for _ in range(3)]
    mec.clear_queue(targets=0)
    flag.touch()
    assert running.r[0]["id"] == 0
    for pr in queued:
        with pytest.raises(client.CompositeError) as e:
            pr.r
        assert e.value.elist[0].ename == "TaskAborted"


def test_clear_queue_returns_once_the_engine_has_marked_the_queued_request(tmp_path):
    """The abort is answered only after the engine has it: a request queued there can no
    longer start, however late the engine reads the abort (here: the engine is stopped)."""
    c = LocalCluster(tmp_path, ["--heartbeat-liveness", "100000"])  # never declared dead
    try:
        c.start_engines(1)
        m = client.MultiEngineClient(c.client_file)
        c.clients.append(m.client)
        m.client.wait_for_engines(1, START_TIMEOUT_S)
        flag = tmp_path / "go"
        running = m.execute(_wait_for(flag), targets=0, block=False)
        queued = m.execute("z = 1", targets=0, block=False)
        freeze(c.engines[0].pid)
        answered = threading.Event()
        threading.Thread(target=lambda: (m.clear_queue(targets=0), answered.set()),
                         daemon=True).start()
        assert not answered.wait(0.5), "the abort was answered while the engine was stopped"
        os.kill(c.engines[0].pid, signal.SIGCONT)
        assert answered.wait(TIMEOUT / 4)
        flag.touch()   # the running request ends; the queued one must not start
        assert running.r[0]["id"] == 0
        with pytest.raises(client.CompositeError) as e:
            queued.r
        assert e.value.elist[0].ename == "TaskAborted"
    finally:
        c.stop()


def test_an_abort_waiting_on_an_engine_that_dies_is_answered(local_cluster, tmp_path):
    local_cluster.start_engines(1)
    m = client.MultiEngineClient(local_cluster.client_file)
    local_cluster.clients.append(m.client)
    m.client.wait_for_engines(1, START_TIMEOUT_S)
    running = m.execute(f"open({str(tmp_path / 'started')!r}, 'w').close()\n"
                        + _wait_for(tmp_path / "never"), targets=0, block=False)
    queued = m.execute("z = 1", targets=0, block=False)
    # on the engine, not still with the controller, which could answer the abort itself
    wait_until(lambda: (tmp_path / "started").exists(), TIMEOUT, "the first execute to start")
    freeze(local_cluster.engines[0].pid)   # it cannot hear the abort
    answered = threading.Event()
    threading.Thread(target=lambda: (m.clear_queue(targets=0), answered.set()),
                     daemon=True).start()
    assert not answered.wait(0.3)
    local_cluster.engines[0].kill()
    assert answered.wait(TIMEOUT / 4)   # when the missed heartbeats declare it dead
    for pr in (running, queued):
        with pytest.raises(client.CompositeError) as e:
            pr.r
        assert e.value.elist[0].ename == "EngineError"


# ---------------------------------------------------------------- the magics, in IPython

def _ipython(cluster, setup, cells):
    """Run `cells` in a real IPython InteractiveShell in a child process; its output."""
    pytest.importorskip("IPython")   # the child runs this Python
    script = textwrap.dedent("""\
        import sys
        from traitlets.config import Config
        from IPython.core.interactiveshell import InteractiveShell

        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config)
        import minipar
        from minipar import client
        """) + textwrap.dedent(setup).format(client_file=cluster.client_file) + \
        textwrap.dedent(f"""\
        for cell in {cells!r}:
            print("### " + cell.splitlines()[0], flush=True)
            result = shell.run_cell(cell, store_history=True)
            sys.stdout.flush()
            if not result.success:
                print("### FAILED", flush=True)
        view.client.close()
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=TIMEOUT / 2, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "### FAILED" not in done.stdout, done.stdout + done.stderr
    return done.stdout


def test_magics_with_multiengine_client(cluster):
    out = _ipython(cluster, """\
        view = client.MultiEngineClient({client_file!r})
        view.activate()
        """, ["%px a = 5", "%px print(a)", "%result",
              "%%px --targets 0,2 --noblock\nb = a * 2\nprint(b)",
              "%pxresult", "%autopx", "c = a + 1", "print(c)", "%autopx", "%px print(c)"])
    px_print = out.split("### %px print(a)")[1].split("### %result")[0]
    for eid in range(4):
        assert f"[{eid}] In [2]: print(a)\n[{eid}] Out[2]: 5" in px_print
    result = out.split("### %result")[1].split("### %%px")[0]
    assert "[3] Out[2]: 5" in result
    pxresult = out.split("### %pxresult")[1].split("### %autopx")[0]
    assert "[0] Out[3]: 10" in pxresult and "[2] Out[3]: 10" in pxresult
    assert "Auto Parallel Enabled" in out and "Auto Parallel Disabled" in out
    last = out.split("### %px print(c)")[1]
    for eid in range(4):
        assert re.search(rf"\[{eid}\] Out\[\d+\]: 6\n", last)


def test_the_multiengine_documents_printed_forms(cluster):
    """As the multiengine document prints them: a %px line says "Executing command on
    Controller" before its <Results List> (an %autopx cell does not), and a `with mec:`
    block's results keep a blank line after each engine's input of several lines."""
    mec = _own_mec(cluster)
    out = _ipython(cluster, """\
        view = mec = client.MultiEngineClient({client_file!r})
        mec.activate()
        """, ["%px a = 5", "%autopx", "b = a + 1", "%autopx"])
    px = out.split("### %px a = 5")[1].split("### %autopx")[0]
    assert px.startswith("\nExecuting command on Controller\nOut[1]: \n<Results List>\n"), px
    autopx = out.split("### b = a + 1")[1]
    assert "Executing" not in autopx and "[3] In [2]: b = a + 1" in autopx, autopx
    mec.targets = [0, 2]
    mec.execute("a = 10\nb = 30\nc = a+b\n")
    assert repr(mec.get_result()).startswith(   # after the two executes in IPython
        "<Results List>\n[0] In [3]: a = 10\nb = 30\nc = a+b\n\n[2] In [3]: a = 10\n")


def test_magics_with_direct_view(cluster):
    out = _ipython(cluster, """\
        rc = minipar.Client({client_file!r})
        view = rc[:]
        view.block = True
        view.activate()
        """, ["%px a = 5", "%px print(a)", "%px --targets 1 print(a + 1)"])
    # a DirectView's magics print as ipyparallel's (see test_magics.py)
    px_print = out.split("### %px print(a)")[1].split("### %px --targets")[0]
    for eid in range(4):
        assert f"[stdout:{eid}] 5\n" in px_print
    last = out.split("### %px --targets")[1]
    assert "\n6\n" in last and "[stdout" not in last   # one engine's (an int target): unprefixed
