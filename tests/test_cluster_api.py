"""Cluster's API as ipyparallel 9 documents it, with real processes: the coroutines and their
``_sync`` twins, ``Cluster.from_file`` finding the one running cluster, ``ClusterManager``.

Every test records the pids it caused; the ``pids`` fixture (test_launcher.py) kills any
left after the test and fails it. ``minipar_dir`` gives each test its own $MINIPAR_DIR.
"""

import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import minipar
from minipar.launcher import AFTER, Cluster, ClusterManager, LauncherError

from .helpers import absent_in_docs, assert_absent_say_so, ctrl_c_at, wait_until
from .test_launcher import (CTL_ARGS, ROOT, _env, _processes_naming, alive, cli,  # noqa: F401
                           minipar_dir, pids)

TIMEOUT = 180
pytestmark = pytest.mark.timeout(TIMEOUT)


def test_coroutines_start_connect_run_and_stop(pids):  # noqa: F811 - the fixture
    cluster = Cluster(n=2, controller_args=CTL_ARGS)
    ticks = []

    async def ticker():
        while True:
            ticks.append(1)
            await asyncio.sleep(0.01)

    async def main():
        task = asyncio.create_task(ticker())
        await cluster.start_controller()
        assert len(ticks) > 2, "start_controller blocked the event loop"
        set_id = await cluster.start_engines(2)
        assert list(cluster.engines) == [set_id]
        rc = await cluster.connect_client()
        cluster.wait_for_engines(2, client=rc)
        pids.add_cluster(cluster, rc)
        doubled = await rc[:].apply_async(lambda x: 2 * x, 21)
        path = cluster.cluster_file
        await cluster.stop_engines(set_id)
        assert not cluster.engines and os.path.exists(path)  # the controller still runs
        await cluster.stop_cluster()
        task.cancel()
        return doubled, path

    try:
        doubled, path = asyncio.run(main())
    finally:
        cluster.stop_cluster_sync()
    assert doubled == [42, 42]
    assert pids.wait_gone(20) == []
    assert cluster.controller.state == AFTER
    assert not os.path.exists(path) and not os.path.exists(cluster.profile_dir)


def test_start_and_connect_coroutine_and_async_with(pids):  # noqa: F811
    cluster = Cluster(n=1, controller_args=CTL_ARGS)
    second = Cluster(n=1, controller_args=CTL_ARGS)

    async def main():
        rc = await cluster.start_and_connect(n=2)  # n overrides the cluster's
        pids.add_cluster(cluster, rc)
        assert len(rc.ids) == 2
        await cluster.stop_cluster()
        async with second as rc2:
            pids.add_cluster(second, rc2)
            return await rc2[:].apply_async(abs, -1)

    try:
        assert asyncio.run(main()) == [1]
    finally:
        cluster.stop_cluster_sync()
        second.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_wait_for_engines_waits_on_the_client_it_is_given(pids, tmp_path):  # noqa: F811
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    try:
        cluster.start_controller_sync()
        cluster.connect_client_sync().close()   # the cluster's own, closed by its user
        mine = minipar.Client(cluster.client_file)
        cluster.start_engines_sync(1)
        pids.add_cluster(cluster)
        cluster.wait_for_engines(1, client=mine)   # no engines yet is still a Client given
        assert len(mine.ids) == 1
        mine.close()
    finally:
        cluster.stop_cluster_sync()


def test_sync_twins(pids, tmp_path):  # noqa: F811
    # --reuse: its engines wait for a stopped controller (one without it ends them)
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"),
                      controller_args=[*CTL_ARGS, "--reuse"])
    try:
        assert cluster.start_cluster_sync() is cluster
        first = next(iter(cluster.engines))
        assert cluster.start_engines_sync(1, engine_set_id="extra") == "extra"
        with pytest.raises(LauncherError, match="'extra' is in use"):
            cluster.start_engines_sync(1, "extra")
        rc = cluster.connect_client_sync()
        cluster.wait_for_engines(2, client=rc)
        pids.add_cluster(cluster, rc)
        assert rc[:].apply_sync(abs, -5) == [5, 5]
        path = cluster.cluster_file
        cluster.stop_engines_sync("extra")
        assert list(cluster.engines) == [first]
        cluster.stop_controller_sync()
        assert cluster.controller.state == AFTER
        assert os.path.exists(path)  # an engine set still runs
        cluster.stop_engines_sync()
        assert not os.path.exists(path)  # nothing runs: the file goes, as in ipyparallel
        assert pids.wait_gone(20) == []
        # a stopped controller is started again by start_cluster
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        assert len(rc.ids) == 1
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []
    assert os.path.isdir(tmp_path / "p")  # a folder the user gave is kept


def test_wait_for_engines_without_n_waits_for_its_clusters(pids, tmp_path):  # noqa: F811
    """ipyparallel's rc.wait_for_engines() with no n waits for as many engines as the
    Cluster that made the Client starts; minipar's refused it (n was required). A Client
    that no Cluster made still needs n, and says so."""
    cluster = Cluster(n=2, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    try:
        cluster.start_cluster_sync()
        rc = cluster.connect_client_sync()
        assert rc.wait_for_engines(timeout=TIMEOUT / 2) == [0, 1]
        pids.add_cluster(cluster, rc)
        with minipar.Client(rc.url_file) as plain:
            with pytest.raises(TypeError, match="n=None: give a count"):
                plain.wait_for_engines(timeout=0)
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_ipyparallels_names_minipar_leaves_out_say_what_to_use(pids, tmp_path):  # noqa: F811
    """cluster.signal_engine, stop_engine, engine_set... (every name docs/ipyparallel.rst calls
    absent on Cluster) were a bare AttributeError; its own names, private ones and typos
    read as before."""
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        for name, says in (("signal_engine", r"rc.send_signal\(sig, targets=\[i\]\)"),
                           ("stop_engine_sync", r"rc.shutdown\(targets=\[i\]\)"),
                           ("engine_set", "engine sets are in cluster.engines"),
                           ("write_cluster_file", "not needed: the cluster file is written"),
                           ("controller_ip", r'pass controller_args=\["--ip", ip\]'),
                           ("engine_launcher_class", "read cluster.engine_kind")):
            with pytest.raises(AttributeError, match=rf"^'Cluster' object has no attribute "
                                                     rf"'{name}': minipar leaves ipyparallel's "
                                                     rf"out; .*{says}"):
                getattr(cluster, name)
        names = absent_in_docs("Cluster")
        assert len(names) >= 17   # 22 before log_level, controller_ip... were taken
        assert_absent_say_so(cluster, "Cluster", names)
        assert cluster.n == 1 and len(cluster.engines) == 1 and rc[:].apply_sync(abs, -2) == [2]
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_two_clusters_started_at_once_on_a_profile_one_says_why(pids, tmp_path):  # noqa: F811
    """Two Clusters given the same profile and started at the same moment (two notebooks,
    two scripts): the controller that loses the profile exits saying another runs there.
    Its Cluster took the winner's fresh connection file for its own controller's, so its
    engines joined the winner's controller and its client was the winner's: both 'started',
    and the loser's exit stopped engines the winner was using. Now the loser fails."""
    profile_dir = str(tmp_path / "p")
    for _ in range(3):   # the race goes either way; once is often won by one before the other
        clusters = [Cluster(n=2, profile_dir=profile_dir, controller_args=CTL_ARGS, timeout=60)
                    for _ in range(2)]
        barrier, results = threading.Barrier(2), {}

        def start(cluster):
            barrier.wait(timeout=30)
            try:
                results[cluster] = cluster.start_and_connect_sync()
            except LauncherError as e:
                results[cluster] = e

        threads = [threading.Thread(target=start, args=(c,)) for c in clusters]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT / 4)
            won = [c for c in clusters if isinstance(results.get(c), minipar.Client)]
            for c in clusters:
                pids.add_cluster(c)
            assert len(won) == 1, f"not exactly one Cluster started: {results}"
            lost, = set(clusters) - set(won)
            assert re.search("(already running|is starting) with profile dir", str(results[lost]))
            rc = results[won[0]]
            mine = {p for e in won[0].engines.values() for p in e.pids()}
            assert set(rc[:].apply_sync(os.getpid)) == mine   # its own two engines only
        finally:
            for c in clusters:
                c.stop_cluster_sync()
        assert pids.wait_gone(20) == []


def test_a_cluster_nothing_refers_to_is_stopped_as_ipyparallels(pids):  # noqa: F811
    """A notebook cell run twice, 'cluster = Cluster(n=1); rc = cluster.start_and_connect_sync()',
    left the first run's controller and engines running until the kernel ended: atexit held
    every Cluster. As ipyparallel's, a Cluster nothing refers to any more (nor a Client it
    made) is stopped when collected; one whose Client is kept runs on."""
    def cell():
        return Cluster(n=1, controller_args=CTL_ARGS)

    cluster = cell()
    rc = cluster.start_and_connect_sync()
    pids.add_cluster(cluster, rc)
    first = set(pids.pids)
    cluster = cell()
    rc = cluster.start_and_connect_sync()   # the cell run again
    pids.add_cluster(cluster, rc)
    kept = cell().start_and_connect_sync()  # only its Client is kept
    pids.add(kept.info["pid"], *kept[:].apply_sync(os.getpid))
    try:
        gc.collect()
        wait_until(lambda: not any(alive(p) for p in first), 30,
                   "the first run's processes to end")
        assert rc[:].apply_sync(abs, -2) == [2]
        assert kept[:].apply_sync(abs, -3) == [3]
    finally:
        cluster.stop_cluster_sync()
        kept.close()
        del kept
        gc.collect()
    assert pids.wait_gone(20) == []


def test_a_controller_started_again_without_reuse_gets_new_clients(pids, tmp_path):  # noqa: F811
    """Without --reuse a controller started again has a new key and ports: a Client made
    for the old one can never reach it. Stopping it closes the Clients made here, so a
    call says so at once (rather than wait reconnect_timeout, 60 s, for it), and
    wait_for_engines connects anew rather than read the old Client's engine list."""
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        cluster.stop_controller_sync()
        with pytest.raises(RuntimeError, match="this Client is closed"):
            rc[:].apply_async(abs, -1)
        cluster.start_controller_sync()
        cluster.restart_engines_sync()   # the old controller stopped its engines
        rc2 = cluster.wait_for_engines()
        pids.add_cluster(cluster, rc2)
        assert rc2 is not rc and rc2[:].apply_sync(abs, -2) == [2]
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_from_file_finds_the_one_running_cluster(pids, minipar_dir):  # noqa: F811
    out = cli("start", "-n", "1", "--profile", "x", "--cluster-id", "daemon",
              "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    other = Cluster(n=0, controller_args=CTL_ARGS)
    try:
        assert out.returncode == 0, out.stderr
        for found in (Cluster.from_file(), Cluster.from_file(profile="x")):
            pids.add_cluster(found)
            assert found.cluster_id == "daemon" and found.controller.running
            assert sum(e.n for e in found.engines.values()) == 1
        # a stopped cluster's file beside it does not count, unless asked for by id
        sec = minipar_dir / "profile_x" / "security"
        d = json.loads((sec / "cluster-daemon.json").read_text())
        d["cluster"]["cluster_id"], d["controller"], d["engines"] = "old", None, {}
        (sec / "cluster-old.json").write_text(json.dumps(d))
        assert Cluster.from_file(profile="x").cluster_id == "daemon"
        assert Cluster.from_file(profile="x", cluster_id="old").controller is None
        with pytest.raises(LauncherError, match="no running cluster found in profile y"):
            Cluster.from_file(profile="y")
        with pytest.raises(LauncherError, match="no cluster 'nope' found"):
            Cluster.from_file(profile="x", cluster_id="nope")
        pids.start(other)
        with pytest.raises(LauncherError, match="2 running clusters found") as e:
            Cluster.from_file()
        assert "daemon (" in str(e.value) and f"{other.cluster_id} (" in str(e.value)
        assert Cluster.from_file(cluster_id=other.cluster_id).controller.running
    finally:
        other.stop_cluster_sync()
        stopped = cli("stop", "--profile", "x", "--cluster-id", "daemon")
    assert stopped.returncode == 0, stopped.stderr
    assert pids.wait_gone(20) == []


def test_from_file_with_ipclusters_empty_id(pids, minipar_dir):  # noqa: F811
    """ipyparallel's Cluster API notebook connects to what ``ipcluster start`` started with
    ``ipp.Cluster.from_file(profile="default", cluster_id="")`` (its default id); a
    cluster started from minipar's shell command has an id of its own, so "" finds the
    one running cluster of the profile, unless a cluster does have the id ""."""
    empty = Cluster(n=0, profile_dir=str(minipar_dir / "empty"), cluster_id="",
                    controller_args=CTL_ARGS)
    out = cli("start", "-n", "1", "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    try:
        assert out.returncode == 0, out.stderr
        cluster = minipar.Cluster.from_file(profile="default", cluster_id="")
        assert cluster.controller.running and cluster.cluster_id != ""
        rc = cluster.connect_client_sync()
        assert rc.wait_for_engines(1, timeout=60) == [0] and rc[:].apply_sync(abs, -1) == [1]
        pids.add_cluster(cluster, rc)
        pids.start(empty)
        found = Cluster.from_file(profile_dir=empty.profile_dir, cluster_id="")
        assert found.cluster_id == "" and found.controller.running
    finally:
        empty.stop_cluster_sync()
        stopped = cli("stop", "--profile", "default")
    assert stopped.returncode == 0, stopped.stderr
    assert pids.wait_gone(20) == []


def test_client_cluster_id_connects_to_that_cluster(pids, minipar_dir):  # noqa: F811
    """``Client(cluster_id=...)``, as ipyparallel's, connects to that cluster (its own
    folder, a profile's): minipar ignored it and connected to the controller holding the
    default profile, another cluster without a word. An id no cluster has is an error."""
    default = Cluster(n=0, profile="default", cluster_id="", controller_args=CTL_ARGS)
    mine = Cluster(n=1, cluster_id="mine", controller_args=CTL_ARGS)
    try:
        pids.start(default, mine)
        rc = minipar.Client(cluster_id="mine")
        assert rc.url_file == mine.client_file != default.client_file
        assert rc.wait_for_engines(1, timeout=60) == [0]
        rc.close()
        rc = minipar.Client(cluster_id="")   # ipyparallel's default id: the profile's
        assert rc.url_file == default.client_file
        rc.close()
        with pytest.raises(LauncherError, match="no cluster 'nope' found"):
            minipar.Client(cluster_id="nope")
    finally:
        mine.stop_cluster_sync()
        default.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_a_profile_dir_under_home_is_expanded_as_ipyparallels(pids, tmp_path,  # noqa: F811
                                                               monkeypatch):
    """``profile_dir="~/run"`` is the folder run in $HOME, as ipyparallel's (which expands
    ``~`` and $VARS): it was a folder named "~" made where the script ran."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", "runs")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cluster = Cluster(n=1, profile_dir="~/$RUNS/run", controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        assert cluster.profile_dir == str(tmp_path / "home" / "runs" / "run")
        mine = minipar.Client(profile_dir="~/runs/run")
        assert mine.url_file == cluster.client_file and mine.wait_for_engines(1, timeout=60)
        mine.close()
    finally:
        cluster.stop_cluster_sync()
    assert os.listdir(tmp_path / "cwd") == []
    assert pids.wait_gone(20) == []


def test_starting_a_running_cluster_again_is_refused_as_ipyparallels(pids):  # noqa: F811
    """A notebook cell ``cluster.start_cluster_sync()`` run twice started a second set of
    engines (2 where the cell asks for 1); as ipyparallel's, starting a cluster whose
    controller runs is an error saying what to do, and leaves the cluster as it was."""
    cluster = Cluster(n=1, controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        for again in (cluster.start_cluster_sync, cluster.start_and_connect_sync,
                      cluster.__enter__):
            with pytest.raises(LauncherError, match="running controller.*start_engines_sync"):
                again()
        assert len(cluster.engines) == 1 and rc[:].apply_sync(abs, -1) == [1]
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


# engines that take a minute to register: a start waits for them, in wait_for_engines
_SLOW_ENGINES = ["-c", "import time; time.sleep(60)"]


def _cluster_pids(cluster):
    ctl = [cluster.controller.pid] if getattr(cluster.controller, "pid", None) else []
    return ctl + [p for e in cluster.engines.values() for p in e.pids()]


@pytest.mark.parametrize("when", ["at once", "engines started"])
def test_a_cancelled_start_stops_what_it_started_before_the_await_ends(pids, when):  # noqa: F811
    """A notebook's interrupt of ``rc = await cluster.start_and_connect()`` (its loop runs
    on) cancelled the await, not the start: it went on in a thread, and the controller and
    engines ran with no Client in hand, until the process ended. The start now ends too:
    when the await raises CancelledError, saying so, every process it started is gone."""
    cluster = Cluster(n=1, controller_args=CTL_ARGS, engine_args=_SLOW_ENGINES)
    seen = []

    async def interrupted():
        started = asyncio.ensure_future(cluster.start_and_connect())
        await asyncio.sleep(0)   # the start is under way in the loop's thread pool
        while when != "at once" and not (cluster.engines and seen[-1:] == [2]):
            seen.append(len(_cluster_pids(cluster)))
            pids.add(*_cluster_pids(cluster))
            await asyncio.sleep(0.05)
        started.cancel()
        with pytest.raises(asyncio.CancelledError) as e:
            await started
        pids.add(*_cluster_pids(cluster))
        return str(e.value), [p for p in pids.pids if alive(p)], cluster._is_running()

    try:
        said, running, cluster_running = asyncio.run(interrupted())
        assert said.startswith("start_and_connect() was cancelled: what it had started of "
                               "<Cluster ") and said.endswith(" is stopped"), said
        assert running == [] and not cluster_running
        assert not os.path.exists(cluster.cluster_file)
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


# Ctrl-C at `cluster.start_and_connect_sync()` or `await cluster.start_and_connect()` (argv[2])
# under asyncio.run, with engines slow to register; the notes on the KeyboardInterrupt, then
# whether the cluster still runs
_CTRL_C_AT_START = """
import asyncio, json, sys
from minipar import Cluster
cluster = Cluster(n=1, profile_dir=sys.argv[1], controller_args=%r, engine_args=%r)
try:
    if sys.argv[2] == "async":
        asyncio.run(cluster.start_and_connect())
    else:
        cluster.start_and_connect_sync()
except KeyboardInterrupt as e:
    print(json.dumps(getattr(e, "__notes__", [])), flush=True)
print(json.dumps({"running": cluster._is_running()}), flush=True)
"""


def _ctrl_c_once_started(found_pids, script, prof, *args):
    """Run `script` (a Cluster in profile `prof` whose engines are slow to register), send
    it a Ctrl-C once its controller and engine run, and return its (stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "-c", script % (CTL_ARGS, _SLOW_ENGINES), prof, *args],
                         env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def both_started():   # the controller and the engine, waiting in wait_for_engines
            found = set(_processes_naming(prof)) - {p.pid}   # the script names it too
            found_pids.add(*found)
            return len(found) == 2 and os.path.exists(os.path.join(prof, "security",
                                                                   "minipar-client.json"))
        wait_until(both_started, 60, "the controller and the engine")
        p.send_signal(signal.SIGINT)
        return p.communicate(timeout=40)
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("how", ["sync", "async"])
def test_ctrl_c_at_a_start_stops_the_cluster_and_says_so(pids, tmp_path, how):  # noqa: F811
    """Ctrl-C at ``asyncio.run(cluster.start_and_connect())`` cancelled the await, and
    asyncio.run then waited for the start's thread, which went on waiting for the engines
    (a minute here) and left the cluster running. It now stops what it started, and ends
    saying so (a warning); at ``start_and_connect_sync()`` a note on the KeyboardInterrupt
    says so, where nothing did."""
    prof = str(tmp_path / "p")
    out, err = _ctrl_c_once_started(pids, _CTRL_C_AT_START, prof, how)
    notes, running = map(json.loads, out.splitlines())
    assert running == {"running": False}, out + err
    if how == "async":
        assert "start_and_connect() was cancelled: what it had started of <Cluster " in err, err
    elif sys.version_info >= (3, 11):   # add_note
        assert len(notes) == 1 and re.match(   # the step that the Ctrl-C ended (start_*_sync)
            r"Ctrl-C in start_\w+_sync\(\): what it had started is stopped: <Cluster .* "
            r"controller=after engines=0 ", notes[0]), notes
    assert _processes_naming(prof) == []
    assert pids.wait_gone(20) == []


# `rc = await cluster.start_and_connect()` in an IPython shell (as its terminal runs a cell:
# run_until_complete under Python's own Ctrl-C handler), engines slow to register; then the
# cell's error and whether the cluster still runs
_CTRL_C_IN_IPYTHON = """
import json, sys
from IPython.terminal.interactiveshell import TerminalInteractiveShell
from minipar import Cluster
shell = TerminalInteractiveShell.instance(colors="NoColor")
shell.user_ns["cluster"] = Cluster(n=1, profile_dir=sys.argv[1], controller_args=%r,
                                   engine_args=%r)
error = shell.run_cell("rc = await cluster.start_and_connect()").error_in_exec
print(json.dumps([type(error).__name__, str(error),
                  shell.user_ns["cluster"]._is_running()]), flush=True)
"""


def test_ctrl_c_at_an_awaited_start_in_ipython_stops_the_cluster(pids, tmp_path):  # noqa: F811
    """In IPython's terminal, Ctrl-C at ``rc = await cluster.start_and_connect()`` raised
    KeyboardInterrupt inside the event loop: the cell ended, and the start went on in its
    thread, so the cluster came up with no Client in hand and nothing said so. The Ctrl-C
    now cancels the await, as under asyncio.run: the cell's error says what was stopped."""
    pytest.importorskip("IPython")
    prof = str(tmp_path / "p")
    out, err = _ctrl_c_once_started(pids, _CTRL_C_IN_IPYTHON, prof)
    kind, said, running = json.loads(out.splitlines()[-1])
    assert kind == "CancelledError" and said.startswith(
        "start_and_connect() was cancelled: what it had started of <Cluster "), out + err
    assert not running and _processes_naming(prof) == []
    assert pids.wait_gone(20) == []


@pytest.mark.parametrize("name, k", [("_close_clients", 1), ("left_in_session", 3),
                                     ("descendants", 2)],
                         ids=["closing its clients", "finding the controller's session",
                              "finding the controller's children"])
def test_ctrl_c_at_any_step_of_a_stop_still_stops_every_process(pids, name, k):  # noqa: F811
    """A Ctrl-C in ``stop_cluster_sync()`` as it closed its Clients stopped nothing, and
    one as it looked in /proc for what to signal (a process's children, what it left in its
    session) skipped the signal: the controller ran on. Now the Ctrl-C still comes, once
    every process has been signalled, and none is left."""
    cluster = Cluster(n=2, controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        hook, pressed = ctrl_c_at(k, name)
        sys.setprofile(hook)
        try:
            with pytest.raises(KeyboardInterrupt):
                cluster.stop_cluster_sync()
        finally:
            sys.setprofile(None)
        assert pressed
        assert pids.wait_gone(20) == []
    finally:
        cluster.stop_cluster_sync()


def test_two_stops_at_once_both_return_and_stop_everything(pids):  # noqa: F811
    """Two ``stop_cluster_sync()`` at once (a cancelled start's cleanup in its thread and the
    user's stop; a notebook's and atexit's) both stopped the same engine set: one raised
    KeyError from inside the Cluster. Stops now take turns; the second finds it done."""
    for _ in range(3):   # each time both take their list of engine sets before either stops
        cluster = Cluster(n=1, controller_args=CTL_ARGS)
        pids.add_cluster(cluster, cluster.start_and_connect_sync())
        both, errors = threading.Barrier(2), []

        def stop():
            both.wait(30)
            try:
                cluster.stop_cluster_sync()
            except BaseException as e:
                errors.append(e)
        threads = [threading.Thread(target=stop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and not cluster._is_running()
    assert pids.wait_gone(20) == []


def test_a_client_knows_the_cluster_that_made_it_as_ipyparallels(pids):  # noqa: F811
    """A notebook's ``rc = ipp.Cluster(n=1).start_and_connect_sync()``, keeping only rc, and
    at its end ``rc.cluster.stop_cluster_sync()``, as ipyparallel's docs and notebooks write
    it: that was an AttributeError ("a Client does not know its Cluster"), with no handle
    left to stop it by before the process ends. A Client made otherwise has None."""
    rc = Cluster(n=1, controller_args=CTL_ARGS).start_and_connect_sync()
    cluster = rc.cluster
    try:
        pids.add_cluster(cluster, rc)
        assert isinstance(cluster, Cluster) and rc[:].apply_sync(abs, -1) == [1]
        other = minipar.Client(cluster.client_file)
        assert other.cluster is None
        other.close()
        asyncio.run(rc.cluster.stop_cluster())   # as `await rc.cluster.stop_cluster()`
        assert cluster.controller is None or cluster.controller.state == AFTER
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_cluster_manager_lists_loads_and_stops_clusters(pids, minipar_dir):  # noqa: F811
    assert minipar.ClusterManager is ClusterManager
    cm = ClusterManager()
    assert cm.load_clusters() == {}
    key, cluster = cm.new_cluster(n=1, profile="m", cluster_id="a", controller_args=CTL_ARGS)
    assert key == "m:a" and cm.list_clusters() == ["m:a"] and cm.get_cluster(key) is cluster
    with pytest.raises(KeyError):
        cm.new_cluster(profile="m", cluster_id="a")
    try:
        pids.add_cluster(cluster, cluster.start_and_connect_sync())
        # another manager (as in another process) loads it from its cluster file
        other = ClusterManager(profile="m")
        assert list(other.load_clusters()) == ["m:a"]
        assert list(ClusterManager().load_clusters()) == ["m:a"]   # every profile
        loaded = other.get_cluster("m:a")
        assert loaded.controller.pid == cluster.controller.pid
        loaded.stop_cluster_sync()
        assert pids.wait_gone(20) == []
        assert other.load_clusters() == {}   # stopped clusters are dropped
        assert cluster.controller.wait(10)
        assert all(e.wait(10) for e in cluster.engines.values())
        assert cm.load_clusters() == {}
        # a profile without clusters gets a default one (cluster id "") when asked
        (key, default), = cm.load_clusters(profile="m", init_default_clusters=True).items()
        assert key == "m:" and default.cluster_id == "" and default.controller is None
        cm.remove_cluster(key)
        assert cm.list_clusters() == []
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_an_unknown_launcher_name_is_refused_when_made(pids, minipar_dir):  # noqa: F811
    """``Cluster(engines="mpiexec")`` (meant: "mpi") was refused only by start_cluster,
    after the controller had started; as ipyparallel's (whose launcher traits are checked
    when set), it is refused when made, naming the known names, and nothing is started."""
    with pytest.raises(LauncherError, match="launcher 'mpiexec': use one of .*'mpi'"):
        Cluster(n=1, engines="mpiexec", controller_args=CTL_ARGS)
    with pytest.raises(LauncherError, match="unknown controller launcher 'sshh'"):
        Cluster(n=1, controller="sshh")
    assert not minipar_dir.exists()
    cluster = Cluster(n=1, engines="Local", controller_args=CTL_ARGS)   # a name that is one
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        assert rc[:].apply_sync(lambda: 7) == [7]
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_client_ipython_dir_is_the_folder_of_profiles(pids, minipar_dir, tmp_path):  # noqa: F811
    """``Client(ipython_dir=D)``, as ipyparallel's, connects to the controller of D's
    profile_<profile> (a cluster id: one of that profile's): minipar ignored it and
    connected to the default profile of $MINIPAR_DIR, another cluster without a word.
    A Cluster, which ipyparallel gives no ipython_dir either, refuses it saying what to do."""
    ipdir = tmp_path / "ipython-dir"
    theirs = Cluster(n=1, profile_dir=str(ipdir / "profile_default"), cluster_id="a",
                     controller_args=CTL_ARGS)
    default = Cluster(n=0, profile="default", controller_args=CTL_ARGS)
    try:
        pids.start(theirs, default)
        for rc in (minipar.Client(ipython_dir=str(ipdir)),
                   minipar.Client(ipython_dir=str(ipdir), cluster_id="a")):
            assert rc.url_file == theirs.client_file != default.client_file
            assert rc.wait_for_engines(1, timeout=60) == [0]
            rc.close()
        with pytest.raises(LauncherError, match="no cluster 'a' found in .*profile_other"):
            minipar.Client(ipython_dir=str(ipdir), profile="other", cluster_id="a")
    finally:
        default.stop_cluster_sync()
        theirs.stop_cluster_sync()
    assert pids.wait_gone(20) == []
    with pytest.raises(TypeError, match=r"'ipython_dir'.*profile_dir=.*\$MINIPAR_DIR"):
        Cluster(n=1, ipython_dir=str(ipdir))


def _cli(role, *args):
    """``python -m minipar.<role> args``, its output in a pipe."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", f"minipar.{role}", *args], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_an_engine_joins_a_cluster_by_its_id_as_ipengines(pids, minipar_dir):  # noqa: F811
    """``python -m minipar.engine --cluster-id ID``, as ``ipengine --cluster-id``, joins
    that cluster (found as Client(cluster_id=) finds it): it was a usage error. An id no
    cluster has ends the engine saying so. A controller started by hand has no cluster
    id: ``--cluster-id`` is refused, saying what to do (it was "unrecognized arguments")."""
    cluster = Cluster(n=0, cluster_id="mine", controller_args=CTL_ARGS)
    try:
        cluster.start_cluster_sync()
        pids.add_cluster(cluster)
        engine = _cli("engine", "--cluster-id", "mine")
        pids.add(engine.pid)
        rc = minipar.Client(cluster_id="mine")
        assert rc.wait_for_engines(1, timeout=60) == [0], engine.poll()
        assert rc[0].apply_sync(os.getpid) == engine.pid
        rc.close()
        none = _cli("engine", "--cluster-id", "nope", "--timeout", "1")
        out, _ = none.communicate(timeout=60)
        assert none.returncode == 1 and "no cluster 'nope' found" in out, out
    finally:
        cluster.stop_cluster_sync()
    engine.communicate(timeout=20)   # it ends with its controller
    assert pids.wait_gone(20) == []
    ctl = _cli("controller", "--cluster-id", "mine", "--profile-dir", str(minipar_dir / "p"))
    out, _ = ctl.communicate(timeout=60)
    assert ctl.returncode == 2 and "--cluster-id: only a cluster has one" in out, out


def test_an_engine_started_before_its_cluster_waits_for_it(pids, minipar_dir,  # noqa: F811
                                                           tmp_path):
    """``python -m minipar.engine --cluster-id ID`` typed before ``python -m minipar.launcher
    start --cluster-id ID``: the engine exited at once, "no cluster 'ID' found". It waits
    for the cluster (as one started before its controller waits for its connection file),
    saying so once, and registers when the cluster has started."""
    log = tmp_path / "engine.log"
    with open(log, "wb") as out:
        engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", "--cluster-id", "late"],
                                  env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    pids.add(engine.pid)
    wait_until(lambda: "waiting" in log.read_text() or engine.poll() is not None, 60,
               "the engine to wait for its cluster")
    assert engine.poll() is None, log.read_text()
    cluster = Cluster(n=0, cluster_id="late", controller_args=CTL_ARGS)
    try:
        cluster.start_cluster_sync()
        pids.add_cluster(cluster)
        with minipar.Client(cluster_id="late") as rc:
            assert rc.wait_for_engines(1, timeout=60) == [0], log.read_text()
            assert rc[0].apply_sync(os.getpid) == engine.pid
    finally:
        cluster.stop_cluster_sync()
    engine.wait(20)   # it ends with its controller
    assert log.read_text().count("no cluster 'late' yet: waiting") == 1, log.read_text()


def test_stop_engines_returns_once_clients_no_longer_list_them(pids):  # noqa: F811
    """As ipyparallel's stop_engines, which waits for the engines to stop: once it returns,
    rc.ids no longer lists them and rc[:] runs on the engines left. Before, an engine killed
    mid-task was listed until the controller missed its heartbeats, and an apply_sync on
    rc[:] in that gap failed with 'engine 1 died before answering'."""
    cluster = Cluster(n=2, controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        first = set(rc.ids)
        kept = cluster.start_engines_sync(1)
        rc.wait_for_engines(3, 60)
        (left,) = set(rc.ids) - first
        busy = rc[min(first)].apply_async(time.sleep, 30)
        wait_until(busy.running, 60, "the task to start")
        cluster.stop_engines_sync(next(s for s in cluster.engines if s != kept))
        assert rc.ids == [left]
        assert rc[:].apply_sync(os.getpid) == cluster.engines[kept].pids()
        with pytest.raises(minipar.RemoteError) as e:
            busy.get(60)
        assert e.value.ename == "EngineError"
    finally:
        cluster.stop_cluster_sync()


def test_stop_engines_waits_too_for_an_engine_of_the_set_that_had_died(pids):  # noqa: F811
    """An engine of the set that had died just before (its launcher saw it end, the
    controller not yet: at a heartbeat) was not waited for, its pid no longer counted as
    running: stop_engines returned while rc.ids still listed it, as a dead engine."""
    cluster = Cluster(n=2, controller_args=[*CTL_ARGS, "--heartbeat-period", "3"])
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        (engines,) = cluster.engines.values()
        victim = engines.pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in engines.pids(), 60, "the launcher to see it end")
        cluster.stop_engines_sync()
        assert rc.ids == []
    finally:
        cluster.stop_cluster_sync()


def test_log_level_is_the_processes_log_level_as_ipyparallels(pids, tmp_path):  # noqa: F811
    """``ipp.Cluster(engines="mpi", n=2, log_level=logging.INFO)`` (as FEniCS's demos start
    theirs) was a TypeError saying to leave log_level out; it is the controller's and the
    engines' --log-level now, as a level or its name, and one that is none is refused."""
    import logging

    quiet = Cluster(n=1, profile_dir=str(tmp_path / "quiet"), log_level=logging.WARNING,
                    controller_args=CTL_ARGS)
    loud = Cluster(n=1, profile_dir=str(tmp_path / "loud"), log_level="debug",
                   engine_args=["--log-level", "INFO"])   # given there, it wins for engines
    assert quiet.log_level == logging.WARNING
    assert loud.controller_args == ["--log-level", "DEBUG"]
    try:
        for cluster in (quiet, loud):
            rc = cluster.start_and_connect_sync()
            pids.add_cluster(cluster, rc)
            assert rc[:].apply_sync(abs, -3) == [3]
        (engines,) = loud.engines.values()
        wait_until(lambda: "INFO registered as engine 0" in engines.get_output(), 20,
                   "the engine's INFO line")
        assert " INFO engine 0 registered" in loud.controller.get_output()
        assert " INFO " not in quiet.controller.get_output()   # its default level is INFO
    finally:
        quiet.stop_cluster_sync()
        loud.stop_cluster_sync()
    assert pids.wait_gone(20) == []
    for level in (15, "LOUD"):
        with pytest.raises(Exception, match="is not a log level: give DEBUG, INFO, WARNING"):
            Cluster(n=1, log_level=level)


_OWN_LINES = """
import json, logging, os, sys
from minipar import Cluster
cluster = Cluster(n=1, log_level=sys.argv[1], controller_args=%r)
if sys.argv[2] == "configured":   # after the Cluster: its lines go to the root's handler
    logging.basicConfig(format="root: %%(name)s %%(message)s")
with cluster as rc:
    print(json.dumps([cluster.controller.pid, *rc[:].apply_sync(os.getpid)]), flush=True)
"""


@pytest.mark.parametrize("logging_set_up", ["", "configured"])
def test_log_level_is_the_clusters_own_too_on_stderr_until_logging_is_set_up(
        pids, logging_set_up):  # noqa: F811
    """``Cluster(log_level="DEBUG")`` set the level of the controller and the engines but not
    the Cluster's own logger: its debug lines (the processes it starts) never showed. They
    show on stderr, as ipyparallel's; once the program sets up logging, through its
    handlers alone (each line once). Without log_level, nothing of them shows."""
    said = {}
    for level in ("DEBUG", "WARNING"):
        run = subprocess.run([sys.executable, "-c", _OWN_LINES % (CTL_ARGS,), level,
                              logging_set_up], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=TIMEOUT / 3)
        pids.add(*json.loads(run.stdout or "[]"))
        assert run.returncode == 0, run.stderr
        said[level] = run.stderr
    started = re.findall(r"^(.*)started controller \(pid \d+\): ", said["DEBUG"], re.M)
    assert started == (["root: minipar.launcher "] if logging_set_up else [""]), said["DEBUG"]
    assert "started engine (pid" in said["DEBUG"]
    assert "started controller" not in said["WARNING"], said["WARNING"]
    assert pids.wait_gone(20) == []


def test_ipyparallels_spellings_of_the_launchers_and_the_controllers_address(pids):  # noqa: F811
    """``ipp.Cluster(n=n, controller_ip="*", engine_launcher_class="MPI")`` (a SLURM script's),
    and controller_launcher_class, controller_location: each was a TypeError saying what to
    pass instead; they are minipar's engines=, controller= and the controller's --ip and
    --location now, as ipyparallel's (engine_launcher_class wins over engines=)."""
    cluster = Cluster(n=1, engines="mpi", engine_launcher_class="Local",
                      controller_launcher_class="local", controller_ip="127.0.0.1",
                      controller_location="localhost", controller_args=CTL_ARGS)
    assert (cluster.engine_kind, cluster.controller_kind) == ("Local", "local")
    assert cluster.controller_args == ["--ip", "127.0.0.1", "--location", "localhost", *CTL_ARGS]
    try:
        rc = cluster.start_and_connect_sync()
        pids.add_cluster(cluster, rc)
        assert rc[:].apply_sync(abs, -4) == [4]
        args = cluster.controller.args
        assert args[args.index("--ip") + 1] == "127.0.0.1"
        with open(cluster.client_file) as f:
            assert json.load(f)["location"] == "localhost"
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []
    with pytest.raises(LauncherError, match="unknown engine launcher .mpiexec."):   # as engines=
        Cluster(n=1, engine_launcher_class="mpiexec")
