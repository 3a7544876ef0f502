"""Bad input at the client: each gives a clear error, never a hang, and the controller
keeps serving everyone else."""

import concurrent.futures
import contextlib
import copy
import gc
import itertools
import json
import logging
import os
import re
import signal
import socket
import sys
import operator
import threading
import time
import traceback
import weakref

import pytest

import minipar
from minipar import errors, protocol

from .conftest import START_TIMEOUT_S, LocalCluster
from .helpers import ctrl_c_at, raw_engine, wait_until

TIMEOUT = 60
pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster, for the tests that leave it as they found it; the one that
    kills an engine takes ``cluster``, its own."""
    return shared_cluster.rc


def test_wrong_key_is_refused_and_others_still_served(cluster, tmp_path):
    info = json.load(open(cluster.client_file))
    info["key"] = os.urandom(32).hex()
    bad = tmp_path / "bad-key.json"
    protocol.write_connection_file(str(bad), info)
    t0 = time.monotonic()
    with pytest.raises(minipar.MiniparError, match="refused.*key"):
        minipar.Client(str(bad), timeout=20)
    assert time.monotonic() - t0 < 15  # refused, not timed out
    assert "refused a message on the client socket: bad signature" in cluster.output("controller")
    assert cluster.rc[:].apply_sync(lambda: "still serving") == ["still serving"] * 4


def test_unpicklable_argument_fails_at_the_call(rc):
    lock = threading.Lock()
    with pytest.raises(minipar.SerializationError, match="could not serialize"):
        rc[0].apply_async(lambda x: x, lock)
    with pytest.raises(minipar.SerializationError):
        rc[:].push({"lock": lock})
    assert rc[0].apply_sync(lambda: 1) == 1


def test_unpicklable_result_is_a_clear_remote_error(rc):
    def make_lock():
        import threading
        return threading.Lock()

    with pytest.raises(minipar.RemoteError, match="could not serialize"):
        rc[0].apply_sync(make_lock)


def test_a_result_that_cannot_be_pickled_says_it_could_not_come_back(rc):
    def numbers():
        return (i for i in range(3))   # a generator: the task ran, its result cannot travel

    with pytest.raises(minipar.SerializationError,
                       match=r"the result could not be sent back: could not serialize "
                             r"<generator .* between client and engines"):
        rc.load_balanced_view().apply_sync(numbers)


def test_an_async_def_task_says_that_engines_do_not_await_it_and_what_to_do(rc):
    """An async def function applied or mapped (a notebook user's first try with asyncio
    code) returns a coroutine on the engine, which cannot travel back: as on ipyparallel's
    engines, nothing awaits it, but the error says so and what to do instead of only
    "cannot pickle 'coroutine' object". The way it gives works."""
    async def doubled(x):
        return 2 * x

    said = r"a coroutine \(what an async def function returns\) is not awaited by an engine"
    with pytest.raises(minipar.SerializationError, match=said):
        rc[0].apply_sync(doubled, 1)
    with pytest.raises(minipar.CompositeError, match=said):
        rc.load_balanced_view().map_sync(doubled, [1, 2])
    assert rc[0].apply_sync(lambda x: __import__("asyncio").run(doubled(x)), 4) == 8


@pytest.mark.parametrize("call", [(sys.exit, (3,)), (signal.default_int_handler,
                                                     (signal.SIGINT, None))],
                         ids=["SystemExit", "KeyboardInterrupt"])
def test_a_result_whose_unpickling_raises_systemexit_fails_its_task_not_the_client(
        shared_cluster, call):
    """Unpickling a result runs the task's code on the client, in its I/O thread: a
    SystemExit or KeyboardInterrupt raised there (never a signal: none reaches that
    thread) ended the thread, and with it the client ("this Client's I/O thread
    failed"), and the request whose reply did it never finished (get() timed out). The
    task now fails saying its result (or what it published) could not be unpickled, and
    the client serves on."""
    def unpickled_as(call, publish):   # sent by value: the engines never import this module
        """A result (or, with `publish`, published data) that unpickles as the call
        `call`, a (function, args) pair: made on the engine, called where unpickled."""
        from minipar import datapub

        class Made:
            def __reduce__(self):
                return call

        if publish:   # sent while the task runs (the receiver's next beat), then with the reply
            datapub.publish_data({"made": Made()})
            time.sleep(0.3)
            return None
        return Made()

    client = minipar.Client(shared_cluster.client_file)
    name = "SystemExit" if call[0] is sys.exit else "KeyboardInterrupt"
    try:
        for view in (client.load_balanced_view(), client[0]):
            for publish in (False, True):
                with pytest.raises(minipar.SerializationError, match="could not unpickle the "
                                   f"result of .*: unpickling it raised {name}"):
                    view.apply_async(unpickled_as, call, publish).get(30)
        assert client[0].apply_async(operator.add, 1, 2).get(30) == 3
    finally:
        client.close()


def test_a_task_that_refers_to_the_client_or_a_view_says_so(rc):
    """A function using `rc` or a view (a global, a closure), or one passed as an
    argument, cannot travel: the error names the Client or view and says what to do,
    where pickle failed on a hash object inside the Client, naming neither."""
    lview = rc.load_balanced_view()
    for send in (lambda: lview.apply_sync(lambda: rc.ids),
                 lambda: lview.map_sync(lambda x: lview, [1]),
                 lambda: rc[:].apply_sync(len, rc[:])):
        with pytest.raises(minipar.SerializationError,
                           match=r"a minipar (Client|LoadBalancedView|DirectView) cannot be "
                                 r"sent to the engines .* use it on the client side only"):
            send()
    copied = copy.copy(lview)   # a shallow copy, as before
    assert copied is not lview and copied.apply_sync(operator.neg, 1) == -1


def test_a_task_given_an_asyncresult_says_to_pass_its_value_or_wait_with_after(rc):
    """An AsyncResult passed to a task (to chain two tasks) or used by its function failed
    with "cannot pickle '_Condition' object"; the error now names the AsyncResult and
    the two ways to do it: its value, or the flag after=."""
    lview = rc.load_balanced_view()
    first = lview.apply_async(operator.add, 2, 3)
    for send in (lambda: lview.apply_sync(operator.neg, first),
                 lambda: rc[:].apply_sync(lambda: first.get())):
        with pytest.raises(minipar.SerializationError,
                           match=r"a minipar AsyncResult cannot be sent to the engines .* pass its "
                                 r"value, ar.get\(\), or make the task wait for it with the "
                                 r"flag after=\[ar\]"):
            send()
    assert lview.apply_sync(operator.neg, first.get(30)) == -5
    assert copy.copy(first).get(30) == 5   # a shallow copy, as before


def test_a_folder_given_as_connection_file_names_the_file_to_pass(local_cluster):
    """A profile folder (or its security folder) passed where the connection file goes,
    to a Client or an engine's --file, said only '[Errno 21] Is a directory'; the error
    now names the file in it to pass, or profile_dir= for the folder."""
    security = os.path.dirname(local_cluster.client_file)
    for folder in (local_cluster.profile_dir, security):
        with pytest.raises(errors.ConnectionFileError, match=re.escape(
                f"{folder} is a folder, not a connection file: pass the file "
                f"({local_cluster.client_file}), or a profile folder as profile_dir=")):
            minipar.Client(folder)
    (engine,) = local_cluster.start_engines(1, ["--file", local_cluster.profile_dir])
    assert engine.wait(START_TIMEOUT_S) == 1
    assert f"pass the file ({local_cluster.engine_file})" in local_cluster.output("engine0")
    rc = local_cluster.client()   # the file itself still serves, and nothing registered
    assert rc.ids == []


def test_a_function_of_a_module_only_the_client_has_says_what_to_do(local_cluster, tmp_path,
                                                                    monkeypatch):
    """A function (or argument, or pushed value) from a module beside the client's script
    travels by name; the engine said only "No module named 'x'". It now says why and
    what to do, and the way it names (register_pickle_by_value) works."""
    import cloudpickle

    (tmp_path / "only_here.py").write_text("def plus_one(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    hint = (r"No module named 'only_here': the request uses a function or class of module "
            r"'only_here', sent by name, and this engine \(in .*\) cannot import it; .*"
            r"cloudpickle.register_pickle_by_value\(only_here\) on the client")
    for send in (lambda: rc.load_balanced_view().apply_sync(only_here.plus_one, 1),
                 lambda: rc[:].push({"f": only_here.plus_one}, block=True)):
        with pytest.raises(minipar.RemoteError, match=hint) as e:
            send()
        assert "ModuleNotFoundError" in str(e.value)
    cloudpickle.register_pickle_by_value(only_here)
    try:
        assert rc.load_balanced_view().apply_sync(only_here.plus_one, 1) == 2
    finally:
        cloudpickle.unregister_pickle_by_value(only_here)


def test_a_result_whose_unpickling_fails_here_says_what_to_do_about_that(rc):
    """A result that fails to unpickle on the client was always blamed on a module not
    importable here, also when its class's unpickling code raised (a __reduce__'s callable,
    a __setstate__), which no install mends. The error now says which it was."""
    def made(how):   # on the engine: a result that unpickles as how[0](*how[1])
        class Made:
            def __reduce__(self):
                return how

        return Made()

    for view in (rc[rc.ids[0]], rc.load_balanced_view()):
        with pytest.raises(minipar.SerializationError, match="ValueError: invalid literal .*; "
                           "the code its class runs to unpickle .* raised it here: return "
                           "plain data") as e:
            view.apply_sync(made, (int, ("not a number",)))
        assert "importable" not in str(e.value)
        with pytest.raises(minipar.SerializationError, match="No module named 'only_on_engines"
                           "'; is the module that defines it importable here"):
            view.apply_sync(made, (__import__, ("only_on_engines",)))
        assert view.apply_sync(operator.neg, 1) == -1


def test_a_result_that_cannot_be_unpickled_here_names_its_engine(rc):
    def unreadable():   # as an object of a class that only the engine can import
        class Unreadable:
            def __reduce__(self):
                return int, ("not a number",)   # unpickling it raises ValueError

        return Unreadable()

    with pytest.raises(minipar.CompositeError) as info:
        rc[:2].apply_sync(unreadable)
    assert sorted(e.engine_info["engine_id"] for e in info.value.elist) == rc.ids[:2]
    assert f"[{rc.ids[0]}:apply]: SerializationError: could not unpickle" in str(info.value)
    with pytest.raises(minipar.SerializationError, match=r"^\[engine \d+\] .*could not unpickle"):
        rc.load_balanced_view().apply_sync(unreadable)


def test_a_remote_error_names_its_type_once(rc):
    """A traceback's last line is the class's name, then the error's text, which names
    the remote type: that type shows once, for an engine's error and the controller's."""
    eid = rc.ids[0]
    with pytest.raises(ZeroDivisionError) as info:
        rc[eid].apply_sync(operator.truediv, 1, 0)
    assert str(info.value) == f"[engine {eid}] ZeroDivisionError: division by zero"
    assert traceback.format_exception_only(info.type, info.value) == [
        f"minipar.errors.RemoteError: [engine {eid}] ZeroDivisionError: division by zero\n"]
    assert (info.value.ename, info.value.evalue) == ("ZeroDivisionError", "division by zero")
    with pytest.raises(ValueError) as info:   # the controller's: no engine
        rc.db_query({"msg_id": {"$nope": 1}})
    line, = traceback.format_exception_only(info.type, info.value)
    assert line.startswith("minipar.errors.RemoteError: ValueError: ") and \
        line.count("ValueError") == 1, line
    with pytest.raises(ValueError, match="no record key 'msg_idd'"):   # a typo: not []
        rc.db_query({"msg_idd": "x"})


def test_missing_connection_file_names_it_and_how_to_start(tmp_path):
    path = tmp_path / "security" / "minipar-client.json"
    with pytest.raises(FileNotFoundError, match=r"no connection file at .*minipar-client.json"
                                                r".*python -m minipar.controller.*"
                                                r"`python -m minipar.launcher list`"):
        minipar.Client(str(path))
    with pytest.raises(minipar.MiniparError, match="no connection file"):
        minipar.Client(profile_dir=str(tmp_path), timeout=0.5)   # after waiting 0.5 s


def test_a_profile_client_waits_for_its_controller_to_start(tmp_path, caplog):
    """Client() / Client(profile_dir=...) waits up to its `timeout` for the profile's
    connection file, as ipyparallel's does: `controller & python script.py` works. A file
    named explicitly is not waited for (nor is it in ipyparallel): that error is at once."""
    from .conftest import LocalCluster

    profile_dir = tmp_path / "profile"
    named = profile_dir / "security" / "minipar-client.json"
    started = []

    def start_once_waited_for():   # while the Client waits, where a timer could fire before
        try:
            wait_until(lambda: "waiting up to 60 s for a controller" in caplog.text, 30,
                       "the Client's wait for its controller")
        finally:   # in any case, so that the Client's wait ends and the test says what failed
            started.append(LocalCluster(tmp_path))

    starter = threading.Thread(target=start_once_waited_for)
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="no connection file"):
        minipar.Client(str(named), timeout=60)
    assert time.monotonic() - t0 < 30   # at once (a generous bound): not its 60 s timeout
    starter.start()
    try:
        assert not named.exists()
        with caplog.at_level(logging.WARNING, logger="minipar.client"):
            rc = minipar.Client(profile_dir=str(profile_dir), timeout=60)
        assert rc.ids == [] and "waiting up to 60 s for a controller" in caplog.text
        rc.close()
    finally:
        starter.join(60)
        for c in started:
            c.stop()


def test_a_stopped_engine_says_who_stopped_it(local_cluster):
    """An engine's log said only 'shutdown requested', whether a client asked or its
    controller stopped (Ctrl-C there): its user could not tell why it had ended."""
    first, second = local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    by_pid = {pid: eid for eid, pid in zip(rc.ids, rc[:].apply_sync(os.getpid))}
    rc.shutdown(targets=[by_pid[first.pid]], block=True)
    wait_until(lambda: "shutdown requested: a client's shutdown()" in local_cluster.output(
        first.log_name), TIMEOUT / 4, "the first engine's log to say a client stopped it")
    local_cluster.controller.terminate()
    said = f"shutdown requested: the controller (pid {local_cluster.controller.pid}) stopped"
    wait_until(lambda: said in local_cluster.output(second.log_name), TIMEOUT / 4,
               "the second engine's log to say its controller stopped")


def test_stale_connection_file_says_the_controller_is_gone(local_cluster):
    path = local_cluster.client_file
    local_cluster.controller.terminate()
    local_cluster.controller.wait(10)
    # a controller that stops cleanly removes its files; a killed one leaves them behind
    info = {"key": "00" * 32, "ports": {"client": 1}, "location": "127.0.0.1",
            "pid": local_cluster.controller.pid, "host": __import__("socket").gethostname()}
    protocol.write_connection_file(path, info)
    with pytest.raises(minipar.MiniparError, match="stale.*not running"):
        minipar.Client(path)


def test_a_stale_file_of_a_reuse_controller_says_to_restart_it_with_reuse(tmp_path):
    """A controller that ran with --reuse leaves its files when it stops, and its engines
    wait for it: the advice to start one without --reuse (new ports and key) made them
    exit. Its file says how it ran, so the advice gives --reuse and says why."""
    c = LocalCluster(tmp_path, controller_args=["--reuse"])
    try:
        c.start_engines(1)
        c.client().wait_for_engines(1, START_TIMEOUT_S)
        c.controller.terminate()
        c.controller.wait(10)
        with pytest.raises(errors.ConnectionFileError) as e:
            minipar.Client(c.client_file)
        assert f"--profile-dir {c.profile_dir} --reuse` (--reuse, as it ran" in str(e.value)
        assert c.engines[0].poll() is None, "the engine waits for its controller"
    finally:
        c.stop()


def test_unanswered_connect_times_out_with_advice(tmp_path):
    info = {"key": "00" * 32, "ports": {"client": 9, "notify": 9}, "location": "127.0.0.1"}
    path = tmp_path / "c.json"
    protocol.write_connection_file(str(path), info)
    with pytest.raises(TimeoutError, match="did not answer.*is it running"):
        minipar.Client(str(path), timeout=1)


def test_a_connect_that_never_succeeds_logs_no_lost_controller(tmp_path, caplog):
    """Something at the controller's address that closes every connection (another
    program on a reused port; a controller refusing this client's keys): the client
    never had a controller to lose, so it raises connect's TimeoutError and says nothing
    of waiting for one to come back."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def close_each():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:   # closed: the test is over
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    port = listener.getsockname()[1]
    info = {"key": "00" * 32, "ports": {"client": port, "notify": port},
            "location": "127.0.0.1"}
    path = tmp_path / "c.json"
    protocol.write_connection_file(str(path), info)
    try:
        with pytest.raises(TimeoutError, match="did not answer connect.*is it running"):
            minipar.Client(str(path), timeout=2)
    finally:
        listener.close()
    assert accepted   # it did connect, and was closed on
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_shutdown_that_waits_for_a_busy_engine_says_it_has_not_stopped(local_cluster):
    """An engine stops once its running request ends. shutdown(block=True) waits for that
    up to the client's timeout, and then returned as though the engine were gone, while
    it went on running a long task. It now raises TimeoutError saying how to end the
    task or the engine; aborted, the task ends as aborted and the engine then stops."""
    (engine,) = local_cluster.start_engines(1)
    rc = local_cluster.client()
    eid, = rc.wait_for_engines(1, START_TIMEOUT_S)
    rc.timeout = 3   # how long shutdown waits
    ar = rc[eid].apply_async(time.sleep, 60)
    wait_until(ar.running, START_TIMEOUT_S, "the task to start")
    with pytest.raises(minipar.TimeoutError, match=rf"engines \[{eid}\] had not stopped 3 "
                                                   r"s after shutdown: .*rc\.abort"):
        rc.shutdown(targets=[eid], block=True)
    rc.abort(ar)
    with pytest.raises(minipar.TaskAborted):
        ar.get(START_TIMEOUT_S)
    wait_until(lambda: engine.poll() is not None, START_TIMEOUT_S, "the engine to stop")


def test_a_client_closed_at_once_logs_no_failure(rc, caplog):
    """A new Client asks for the engine list again once its notification socket connects
    (notifications may have been missed); closed before that answer came, it logged
    "connect from the I/O thread failed: this Client was closed before the reply came; it
    may still run", as `python -m minipar.launcher stop` often printed."""
    for _ in range(100):
        minipar.Client(rc.url_file).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_after_shutting_the_controller_down_the_client_says_so_at_once(local_cluster):
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, 30)
    ar = rc[:].apply_async(time.sleep, 30)
    rc.shutdown(hub=True)
    local_cluster.controller.wait(10)
    # what it still waited for, and every call after, fail now: not after the 60 s a
    # client waits for a controller that went away on its own to come back
    t0 = time.monotonic()
    with pytest.raises(minipar.MiniparError, match=r"shut down the controller.*before this "
                                                   r"request finished"):
        ar.get(10)
    with pytest.raises(minipar.MiniparError, match=r"shut down the controller.*new Client"):
        rc.load_balanced_view().apply_async(os.getpid)
    rc.shutdown(hub=True)   # done already: nothing to do, as a second close()
    assert time.monotonic() - t0 < 5


def test_killed_engine_disappears_and_its_requests_fail(cluster):
    rc = cluster.rc
    victim = cluster.engines[0]
    ids = rc.ids
    pid_of = dict(zip(ids, rc[:].apply_sync(os.getpid)))
    eid = next(e for e, p in pid_of.items() if p == victim.pid)
    before = rc[:]
    ar = rc[eid].apply_async(time.sleep, 30)
    wait_until(lambda: rc.queue_status()[eid]["queue"] == 1, TIMEOUT,
               "the request to reach the engine")
    victim.send_signal(signal.SIGKILL)
    with pytest.raises(minipar.EngineError, match=f"engine {eid} died"):
        ar.get(20)
    wait_until(lambda: eid not in rc.ids, 10, f"engine {eid} gone from rc.ids")
    assert len(rc.ids) == 3
    with pytest.raises(IndexError, match="not registered"):
        rc[eid]
    assert sorted(rc[:].apply_sync(os.getpid)) == sorted(p for e, p in pid_of.items() if e != eid)
    # a view made before keeps the dead engine, as ipyparallel's rc[:]: the error says
    # what follows the engines registered now
    with pytest.raises(IndexError, match=rf"engine {eid} is not registered.*a view keeps the "
                                         r"engines it was made with: rc.direct_view\(\) follows"):
        before.apply_sync(os.getpid)
    assert len(rc.direct_view().apply_sync(os.getpid)) == 3


def test_an_engine_id_given_as_a_string_is_refused_as_such(rc):
    # not "engine 0 is not registered; registered: [0, 1, 2, 3]"
    with pytest.raises(TypeError, match=r"targets='0'.*an engine id \(an int\)"):
        rc.direct_view(targets="0").apply_sync(os.getpid)
    with pytest.raises(IndexError, match=r"engine '1' is not registered"):
        rc[["1"]].apply_sync(os.getpid)
    # an empty selection is not "no engines are registered: start some"
    for view in (rc[5:10], rc[[]]):
        with pytest.raises(minipar.NoEnginesRegistered,
                           match=r"select no engine; registered: \[0, 1, 2, 3\]"):
            view.apply_sync(os.getpid)


def test_a_remote_traceback_names_the_file_and_line_of_a_function_sent_by_value(rc):
    """A function sent by value (a closure here, as any of a script's __main__) keeps its
    file: the engine's traceback names it and shows the failing line, as ipyparallel's
    does, not cloudpickle 3.1's '<dynamic-code>' with no line."""
    divisor = 0

    def fails():
        return 1 / divisor   # the line the traceback shows

    with pytest.raises(ZeroDivisionError) as info:
        rc.load_balanced_view().apply_sync(fails)
    tb = info.value.traceback
    assert f'File "{fails.__code__.co_filename}"' in tb and "the line the traceback shows" \
        in tb and "<dynamic-code>" not in tb, tb


def test_no_engines_is_a_clear_error(local_cluster):
    rc = local_cluster.client()
    with pytest.raises(minipar.NoEnginesRegistered, match="no engines are registered"):
        rc[:].apply_sync(lambda: 1)
    with pytest.raises(TimeoutError, match="0 engines registered"):
        rc.wait_for_engines(1, timeout=0.5)


def test_a_view_made_before_any_engine_registered_is_refused_as_ipyparallels(local_cluster):
    """``rc[:]`` right after starting a cluster, before its engines registered, made an empty
    view, refused only when used and still empty once they had ("the targets select no
    engine; registered: [0]"); as ipyparallel's, indexing is NoEnginesRegistered at once,
    saying to wait for them, and a view made after that has the engines."""
    rc = local_cluster.client()
    for key in (slice(None), 0, [0]):
        with pytest.raises(minipar.NoEnginesRegistered, match=r"rc\.wait_for_engines\(n\)"):
            rc[key]
    local_cluster.start_engines(1)
    rc.wait_for_engines(1, timeout=TIMEOUT)
    assert rc[:].apply_sync(lambda: 1) == [1] and rc[0].apply_sync(lambda: 2) == 2


def test_a_timeout_or_chunksize_of_the_wrong_type_says_so(rc):
    """``Client(timeout="10")`` failed with "'>' not supported between instances of 'str'
    and 'int'" from deep in a wait, and ``map(..., chunksize=2.5)`` with "'float' object
    cannot be interpreted as an integer": each is now a TypeError naming its argument."""
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None, not str"):
        minipar.Client(rc.url_file, timeout="10")
    lv = rc.load_balanced_view()
    with pytest.raises(TypeError, match=r"chunksize=2\.5: give a positive number of elements"):
        lv.map(abs, range(4), chunksize=2.5)
    with pytest.raises(ValueError, match="chunksize=0: give a positive number"):
        lv.map(abs, range(4), chunksize=0)
    assert lv.map_sync(abs, range(-3, 0), chunksize=2) == [3, 2, 1]


def test_client_is_usable_from_many_threads(rc):
    results = []

    def work(i):
        results.append(rc[i % 4].apply_sync(lambda x: x * 2, i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results) == [i * 2 for i in range(16)]


def test_a_burst_runs_once_each_in_order_with_queries_after_it(rc):
    """Requests made back to back are held and leave together; to one engine they still
    run once each in the order made, from several threads at once, and a query made
    after them leaves after them."""
    before = rc.queue_status(0)   # the module's earlier tests ran on engine 0 too
    rc[:].execute("seen = []", block=True)

    def burst(i):
        for k in range(150):
            rc[i].execute(f"seen.append({k})")

    threads = [threading.Thread(target=burst, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    burst(0)
    status = rc.queue_status(0)   # the controller has had every request made before it
    assert status["queue"] + status["completed"] == \
        before["queue"] + before["completed"] + 151
    for t in threads:
        t.join(TIMEOUT)
    assert rc[:].pull("seen", block=True) == [list(range(150))] * 4


def test_another_client_finds_a_request_made_just_before_its_question(shared_cluster, rc):
    """A second client asks about requests the first just made, their msg_ids handed over
    at once: its question, on another connection, may reach the controller first (the
    second request of a burst is even held a moment). The controller waits for them
    rather than say "unknown" (a third of these did on a 2-core box); an id that never
    comes still gets its clear KeyError, a second later."""
    other = shared_cluster.client()
    lview = rc.load_balanced_view()
    try:
        for i in range(50):   # each question right after its request
            ar = lview.apply_async(abs, -i)
            assert set(other.result_status(ar)) == {"pending", "completed"}
            ar = lview.apply_async(operator.neg, i)
            assert other.get_result(ar.msg_ids[0]).get(TIMEOUT) == -i
            ar = lview.apply_async(abs, i)
            assert [r["msg_id"] for r in other.db_query({"msg_id": ar.msg_ids[0]})] \
                == ar.msg_ids
        with pytest.raises(KeyError, match="unknown or purged"):
            other.result_status([protocol.new_id()])
        with pytest.raises(KeyError, match="unknown or purged"):
            other.get_result(protocol.new_id()).get(TIMEOUT)
        assert other.db_query({"msg_id": protocol.new_id()}) == []
    finally:
        other.close()


def test_abort_of_all_leaves_another_clients_request_it_follows(shared_cluster, rc):
    """rc.abort() with no jobs aborts the requests this client made and has no answer
    to, as ipyparallel's (its ``outstanding``): a request of another client that this one
    only follows through get_result runs on (it was aborted, with every unfinished
    request of the cluster this client had asked about)."""
    from minipar.asyncresult import _abort_quietly

    other = shared_cluster.client()
    theirs = rc[0].apply_async(time.sleep, TIMEOUT / 2)
    try:
        followed = other.get_result(theirs.msg_ids[0])
        mine = other[1].apply_async(time.sleep, TIMEOUT / 2)
        assert other.outstanding == set(mine.msg_ids)
        assert other.abort() == 1
        with pytest.raises(minipar.RemoteError, match="TaskAborted"):
            mine.get(TIMEOUT)
        assert not theirs.done() and not followed.done()
        assert rc.result_status(theirs)["pending"] == theirs.msg_ids
        rc.abort(theirs)   # its own client may; the follower hears of it too
        with pytest.raises(minipar.RemoteError, match="TaskAborted"):
            followed.get(TIMEOUT)
    finally:
        _abort_quietly(rc, [theirs])   # never left running on the module's cluster
        other.close()


def test_under_db_none_a_finished_request_is_said_so_at_once(tmp_path):
    """Under --db none the controller keeps no finished record, but it remembers the ids
    it dropped: a question about one says so at once, as about a culled one, rather than
    wait UNKNOWN_GRACE_S for it as for a request not here yet (every get_result,
    result_status and abort naming a finished request once stalled 2 s, then said
    "unknown or purged")."""
    c = LocalCluster(tmp_path, controller_args=["--db", "none"])
    try:
        c.start_engines(1)
        rc = c.client()
        rc.wait_for_engines(1, START_TIMEOUT_S)
        ar = rc[:].apply_async(abs, -1)
        assert ar.get(TIMEOUT) == [1]
        other = c.client()
        with pytest.raises(KeyError, match="--db none, which keeps no finished record"):
            other.get_result(ar.msg_ids[0]).get(TIMEOUT)
        with pytest.raises(KeyError, match="--db none, which keeps no finished record"):
            rc.result_status(ar)
        with pytest.warns(RuntimeWarning, match="nothing to abort"):
            rc.abort(ar)
        assert rc.queue_status(verbose=True)["stats"].get("parked", 0) == 0
    finally:
        c.stop()


def test_held_requests_leave_while_the_caller_never_blocks(rc):
    """A request made just after another is held for the I/O thread to send: it leaves
    without the caller blocking or sending anything more, here a loop of pure Python."""
    view = rc.load_balanced_view()
    ars = [view.apply_async(abs, -i) for i in range(5)]
    deadline = time.monotonic() + 20
    # not wait_until: its sleeps would let the I/O thread run; this loop never blocks
    while not all(ar.done() for ar in ars):
        assert time.monotonic() < deadline, "held requests never left"
    assert [ar.get(0) for ar in ars] == [0, 1, 2, 3, 4]


def test_a_finished_result_is_freed_as_soon_as_it_is_dropped(rc):
    """An AsyncResult and its requests' futures refer to each other only until they
    finish: dropped, they are freed at once, not left as garbage in a cycle for the
    garbage collector to find (a tenth of the client's CPU for quick tasks)."""
    rc[:].push({"x": [1, 2]}, block=True)
    results = [rc[:].apply_async(abs, -1), rc.load_balanced_view().apply_async(abs, -2),
               rc[:].gather("x")]   # the gather is computed from another AsyncResult
    assert [ar.get(TIMEOUT) for ar in results] == [[1] * len(rc), 2, [1, 2] * len(rc)]
    refs = [weakref.ref(f) for ar in results for f in [ar, *ar._children]]
    rc[0].apply_sync(abs, 0)   # the client keeps its last request's future, not these
    gc.disable()
    try:
        del results
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()


def test_a_client_nobody_refers_to_is_closed_with_its_thread_and_sockets(rc):
    """A notebook loop or a function called per parameter makes a Client each time and
    never closes it. Each held an I/O thread and 17 file descriptors until the process
    ended: at the usual limit of 1,024 descriptors, Client() failed with 'Too many open
    files' after about 60. A Client nobody refers to is now closed when collected, as a
    file is; one whose AsyncResult is kept lives on to give its result."""
    def io_threads():
        return sum(t.name == "minipar-client-io" for t in threading.enumerate())

    def fds():
        return len(os.listdir("/proc/self/fd"))

    before_threads, before_fds = io_threads(), fds()
    for _ in range(40):
        assert minipar.Client(rc.url_file)[:].apply_sync(abs, -1) == [1] * len(rc)
    kept = minipar.Client(rc.url_file)[:].apply_async(time.sleep, 0.5)
    gc.collect()
    wait_until(lambda: io_threads() <= before_threads + 1, 30, "the I/O threads to end")
    assert fds() < before_fds + 40, "the Clients' sockets were not closed"
    assert kept.get(TIMEOUT) == [None] * len(rc)


def test_an_engine_never_loads_the_client_side(rc):
    """``python -m minipar.engine`` imports the package; the client, the classic API and
    the integrations are imported on first use only, so an engine never loads them."""
    loaded = rc[:].apply_sync(
        lambda: sorted(m for m in __import__("sys").modules if m.startswith("minipar")))
    for modules in loaded:
        assert "minipar.engine" in modules
        assert not {"minipar.client", "minipar.classic", "minipar.integrations"} & set(modules)


def test_a_missed_engine_notification_makes_the_client_ask_for_the_whole_list(tmp_path):
    """Notifications of engines coming and going travel on their own socket, and one can be
    lost (sent while that socket reconnects after a controller restart). They are
    numbered: a gap makes the client ask the controller for its whole list."""
    from .fakes import FakeHub

    hub = FakeHub(tmp_path)
    state = {"roster": 3, "engines": {}, "connects": 0}
    lock, stop = threading.Lock(), threading.Event()

    def serve():
        # executes in a helper thread: owns the hub's client socket; answers connect
        router = hub.sockets["client"]
        while not stop.is_set():
            if not router.poll(50):
                continue
            idents, header, _ = hub.session.check(router.recv_multipart(), replay=False)
            if header["kind"] == protocol.CONNECT:
                with lock:
                    state["connects"] += 1
                    _, frames = hub.session.msg(
                        protocol.CONNECT_REPLY, parent=header["msg_id"], status="ok",
                        roster=state["roster"], engines=dict(state["engines"]))
                router.send_multipart([*idents, *frames])

    def publish(kind, roster, eid):
        with lock:
            state["roster"] = roster
            if kind == protocol.ENGINE_REGISTERED:
                state["engines"][eid] = {"id": eid}
            _, frames = hub.session.msg(kind, roster=roster, id=eid, info={"id": eid})
        hub.sockets["notify"].send_multipart([kind.encode(), *frames])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    rc = minipar.Client(hub.client_file, timeout=30)
    try:
        # once its notification socket is connected, the client asks again (a second
        # connect): from then on it hears what is published
        wait_until(lambda: state["connects"] >= 2, 30, "the client's second connect")
        publish(protocol.ENGINE_REGISTERED, 4, 0)
        wait_until(lambda: rc.ids == [0], 30, "engine 0 in the client's list")
        # engine 1's notification (5) is lost; engine 2's (6) shows the gap
        with lock:
            state["engines"][1] = {"id": 1}
        publish(protocol.ENGINE_REGISTERED, 6, 2)
        wait_until(lambda: rc.ids == [0, 1, 2], 30, "the whole list asked for again")
        publish(protocol.ENGINE_DIED, 7, 1)
        wait_until(lambda: rc.ids == [0, 2], 30, "engine 1 gone")
    finally:
        rc.close()
        stop.set()
        t.join(5)
        hub.close()


def test_a_closed_client_says_so_rather_than_list_engines_it_no_longer_hears_of(
        shared_cluster):
    client = minipar.Client(shared_cluster.client_file)
    assert len(client.ids) == 4
    dv = client[:]
    waited = []

    def wait_for_more():   # another thread, waiting when the client is closed (or just after)
        try:
            client.wait_for_engines(5, timeout=TIMEOUT / 2)
        except Exception as e:
            waited.append(e)

    waiter = threading.Thread(target=wait_for_more)
    waiter.start()
    outstanding = dv.apply_async(time.sleep, 30)
    client.close()
    with pytest.raises(minipar.errors.CompositeError, match="closed before the reply came"):
        outstanding.get(TIMEOUT)   # failed by close(), not waiting for a reply forever
    closed = r"this Client is closed; make a new Client"
    for call in (lambda: client.ids, lambda: len(client), lambda: client[:],
                 lambda: client[-1], lambda: client[0], lambda: dv.apply_async(os.getpid),
                 lambda: client.wait_for_engines(5, timeout=TIMEOUT / 2)):
        with pytest.raises(RuntimeError, match=closed):
            call()
    waiter.join(TIMEOUT)
    assert len(waited) == 1 and isinstance(waited[0], RuntimeError), waited
    client.close()   # a second close() does nothing
    shared_cluster.rc.abort(outstanding.msg_ids)
    assert shared_cluster.rc[:].apply_sync(abs, -1) == [1] * 4   # other clients go on


def test_a_failed_io_thread_fails_what_waits_and_close_still_returns(shared_cluster):
    """Every reply reaches a client through its I/O thread. Should that thread ever end
    by a bug, what waits on it fails saying so, later calls too, and close() returns
    (its sockets, which that thread owned, would otherwise hold the context forever)."""
    client = minipar.Client(shared_cluster.client_file)

    def broken(frames):
        raise SystemExit("a bug in the I/O thread")   # not an Exception: ends the thread

    client._on_reply = broken
    try:
        f = client[0].apply_async(time.sleep, 0)
        with pytest.raises(minipar.MiniparError, match="I/O thread failed.*make a new"):
            f.get(30)
        with pytest.raises(minipar.MiniparError, match="I/O thread failed"):
            client[0].apply_async(time.sleep, 0)
    finally:
        done = threading.Thread(target=client.close, daemon=True)
        done.start()
        done.join(30)
        assert not done.is_alive(), "close() hung"


# Python 3.12 warns at a fork while other threads run (a Client's I/O thread): the fork
# is what this test is about, and its child only reports and leaves
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_is_told_to_make_its_own_client(rc):
    """A forked child (multiprocessing's fork) has the parent's Client but not its I/O
    thread: using it there fails at once saying so, where a request used to wait for a
    reply that no thread would ever read; a new Client there works, and the parent's
    goes on, also after the child closed its copy (as atexit would). A result the parent
    waits for fails at once in the child too, where it waited forever, also when waited
    on through concurrent.futures (wait, as_completed), which reads no method of ours."""
    busy, free = rc.ids[:-1], rc.ids[-1]   # the child's own Client uses the free engine
    pending = rc[busy].apply_async(time.sleep, 30)   # aborted once the child is done
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report, and leave without running pytest's code
        try:
            said = ""
            for use in (lambda: pending.get(TIMEOUT), lambda: pending.wait(TIMEOUT),
                        lambda: list(pending), lambda: rc[:].apply_async(os.getpid)):
                try:
                    use()
                    said += "no error;"
                except minipar.MiniparError as e:
                    said += f"{e};"
            done = concurrent.futures.wait([pending], TIMEOUT).done
            said += "".join(f"{f.exception()};" for f in done)
            for f in concurrent.futures.as_completed([pending.futures[0]], TIMEOUT):
                said += f"{f.exception()};"
            with minipar.Client(rc.url_file) as own:
                said += f"|{own[free].apply_async(abs, -2).get(TIMEOUT / 4)}"
            rc.close()
        except BaseException as e:
            said = f"failed: {e!r}"
        os.write(w, said.encode())
        os._exit(0)
    os.close(w)
    try:
        _, status = wait_until(lambda: [x for x in [os.waitpid(pid, os.WNOHANG)] if x[0]],
                               TIMEOUT / 2, "the forked child to exit")[0]
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    said = os.read(r, 4096).decode()
    os.close(r)
    assert status == 0 and said.count(f"made in process {os.getpid()}, which forked this "
                                      f"one ({pid})") == 6, said
    assert said.count("Make a new Client here") == 6 and "no error" not in said, said
    assert said.endswith("|2"), said
    pending.abort()
    assert all(isinstance(f.exception(TIMEOUT), errors.TaskAborted) for f in pending.futures)
    assert rc[:].apply_sync(abs, -1) == [1] * len(rc.ids)


def test_a_reply_the_client_cannot_handle_fails_its_request(tmp_path):
    """A signed reply whose header has a field of the wrong type (here from a rogue engine
    holding the cluster's key: an error name that is not a string, which the controller
    forwards as it came) fails its request, saying so, rather than leaving it waiting for
    ever; a message of a batch that cannot be handled (published data that is no pickle)
    is dropped alone, and the replies after it in the batch are still read."""
    import zmq

    c = LocalCluster(tmp_path, controller_args=["--heartbeat-liveness", "10000"])
    ctx = zmq.Context()
    try:
        session, control, work, reg, eid = raw_engine(ctx, c.engine_file, "rogue")
        work.send_multipart(session.msg(protocol.READY, reg=reg)[1])
        rc = c.client(timeout=20)
        rc.wait_for_engines(1, 10)
        ars = [rc[eid].apply_async(pow, 2, i) for i in range(4)]
        requests = []
        while len(requests) < 4:
            assert work.poll(10_000), "the requests did not reach the rogue engine"
            _, header, parts = session.check(work.recv_multipart())
            requests += session.unbatch(header, parts)

        def reply(h, parts):
            f, (args, kwargs) = protocol.deserialize_many(parts, h["counts"])
            return session.msg(protocol.REPLY[h["kind"]], protocol.serialize(f(*args, **kwargs)),
                               parent=h["msg_id"], status="ok", engine=eid)[1]

        (h0, p0), (h1, p1), (h2, p2), (h3, p3) = requests
        bad_data = session.msg(protocol.STREAM, [b"not a pickle"], parent=h2["msg_id"],
                               name="data", engine=eid)[1]
        bad_reply = session.msg(protocol.REPLY[h1["kind"]], parent=h1["msg_id"],
                                status="error", ename=5, engine=eid)[1]
        # one batch, forwarded to the client as it came (the first: alone, at once)
        [batch] = list(session.pack([reply(h0, p0), bad_data, bad_reply, reply(h2, p2),
                                     reply(h3, p3)]))
        work.send_multipart(batch)
        assert ars[0].get(20) == 1
        with pytest.raises(errors.RemoteError, match=f"reply to request {ars[1].msg_ids[0]} "
                           "could not be handled .*TypeError"):
            ars[1].get(20)
        assert [ars[2].get(20), ars[3].get(20)] == [4, 8]
        assert rc._io.is_alive()
    finally:
        ctx.destroy(linger=0)
        c.stop()


def test_a_broadcast_refused_for_its_size_leaves_nothing_pending(tmp_path):
    """A BroadcastView request above max_message_size raised SerializationError, but the
    futures of its copies, registered before it, stayed pending for ever (rc.wait() never
    came true, rc.outstanding listed them): they fail with it."""
    c = LocalCluster(tmp_path, controller_args=["--max-message-size", str(2**20)])
    try:
        c.start_engines(2)
        rc = c.client()
        rc.wait_for_engines(2, START_TIMEOUT_S)
        bv = rc.broadcast_view()
        with pytest.raises(errors.SerializationError, match="above the cluster's max_message"):
            bv.push({"big": os.urandom(2**20)})
        assert not rc.outstanding and rc.wait(timeout=TIMEOUT)
        assert bv.apply_sync(abs, -3) == [3, 3]
    finally:
        c.stop()


def test_ctrl_c_before_a_direct_views_broadcast_left_fails_its_copies_here(cluster):
    """rc[:] sends one request for all its engines (the controller copies it to each),
    held until its call returns. A Ctrl-C before it left failed the request's own future
    but not its copies': they were aborted through the controller, which had never heard
    of them and so answered only after its wait for unknown ids, the Ctrl-C unfelt until
    then. They fail here at once, as never sent, and the controller is not asked."""
    rc = cluster.rc
    copies = []

    def parked():   # queries the controller held to wait for ids it had not heard of
        return rc.queue_status(verbose=True)["stats"].get("parked", 0)

    before = parked()

    def press(frame, event, arg):   # as the held request is about to leave
        if event == "call" and frame.f_code.co_name == "_send_held":
            sys.setprofile(None)
            copies.extend(rc.pending_requests())
            os.kill(os.getpid(), signal.SIGINT)

    sys.setprofile(press)
    try:
        with pytest.raises(KeyboardInterrupt):
            rc[:].push({"a": 1}, block=False)
    finally:
        sys.setprofile(None)
    assert len(copies) == 4 and not rc.outstanding and parked() == before
    for f in copies:
        with pytest.raises(errors.TaskAborted, match="it never reached the controller"):
            f.result(0)
    assert rc[:].apply_sync(abs, -2) == [2] * 4


@pytest.mark.parametrize("submit", ["map", "apply_async", "push", "broadcast"])
def test_ctrl_c_anywhere_in_a_submission_leaves_no_request_pending(own_client, submit):
    """Ctrl-C pressed at any step of a submission (a map, a loop of apply_async, pushes
    over PACK_MAX) left requests registered that never left (a held batch dropped, one
    stopped between its registration and its send), which stayed pending for ever, one
    held in a burst but stopped before its registration, which left with no future, or a
    message half sent that took the next one down with it. Pressed at steps all through
    it now: the next call is answered, every request made is done (those that never left
    failed with TaskAborted), and the KeyboardInterrupt still reaches the script."""
    rc = own_client
    lv, dv, bv = rc.load_balanced_view(), rc[:], rc.broadcast_view()
    big = {"big": os.urandom(protocol.PACK_MAX)}

    def submission(ars):
        if submit == "map":
            ars.append(lv.map(abs, range(150), block=False))
        for i in range({"apply_async": 150, "push": 3, "broadcast": 40}.get(submit, 0)):
            ars.append(lv.apply_async(abs, i) if submit == "apply_async" else
                       bv.apply_async(abs, -i) if submit == "broadcast" else   # held in bursts
                       dv.push(big, block=False))

    calls = itertools.count()
    sys.setprofile(lambda frame, event, arg: event == "call" and next(calls))
    try:
        rc.wait(submission([]), timeout=TIMEOUT / 6)
    finally:
        sys.setprofile(None)
    n, interrupted = next(calls), 0
    steps = [(k, None) for k in range(1, n, n // 60 | 1)]   # odd: not in step with a request's
    if submit == "apply_async":   # and as the k-th request is registered, the rest of a burst
        steps += [(k, "_sent") for k in range(1, 150, 7)]   # held (one was sent, untracked)
    for k, name in steps:
        ars, tracked = [], set()
        t0 = t1 = time.time()
        hook, pressed = ctrl_c_at(k, name)
        sys.setprofile(hook)
        try:
            submission(ars)
        except KeyboardInterrupt:
            tracked, t1 = rc.outstanding, time.time()   # holds all that finish after t1
            interrupted += 1
        finally:
            sys.setprofile(None)
        probe = lv.apply_async(abs, -k)
        assert probe.get(timeout=TIMEOUT / 6) == k, f"Ctrl-C at step {k} ({name})"
        assert rc.wait(timeout=TIMEOUT / 6), (
            f"Ctrl-C at step {k} of {n}: {len(rc.outstanding)} requests pending")
        if submit in ("apply_async", "broadcast"):   # nothing aborts it: tracked, not lost
            made = {r["msg_id"] for r in rc.db_query({"submitted": {"$gte": t0},
                                                      "completed": {"$gte": t1}}, "msg_id")}
            untracked = made - tracked - {probe.msg_id, *(i for ar in ars for i in ar.msg_ids)}
            assert not untracked, f"Ctrl-C at step {k} ({name}): sent, but no future has it"
        assert all(ar.done() for ar in ars), f"Ctrl-C at step {k} of {n}"
        assert all(ar.get() == [i] * 4 for i, ar in enumerate(ars) if submit == "broadcast")
        failed = {type(f.exception()) for ar in ars for f in ar._children if f.exception()}
        assert failed <= {errors.TaskAborted}, (k, failed)
    assert interrupted > 30, (interrupted, n)
