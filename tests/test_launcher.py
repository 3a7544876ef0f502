"""Launchers and Cluster with local processes: the contract, Cluster, the cluster file and
``python -m minipar.launcher``. Daemon-backed kinds (mpi, ssh, slurm, pbs, sge) are in
test_launcher_systems.py; LSF's rendering and parsing at the end of this file.

Every test records the pids it caused (controller, engines) and the ``pids`` fixture
checks, after the test, that none of them is left, killing any that is (by pid).
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import minipar
from minipar import errors, launcher, protocol
from minipar.launcher import (AFTER, BEFORE, RUNNING, Cluster, ControllerStartError,
                              LocalEngineSetLauncher, NotRunning, find_launcher_class)

from .helpers import wait_until

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# controller arguments for tests: default heartbeat, generous liveness, so a loaded CI box
# never declares a busy engine dead in the middle of a launcher test
CTL_ARGS = ["--heartbeat-liveness", "10"]


def alive(pid):
    return protocol.pid_alive(pid)


class Pids:
    """Pids a test caused; after the test every one must be gone (leftovers are killed)."""

    def __init__(self):
        self.pids = set()

    def add(self, *pids):
        self.pids.update(p for p in pids if p)

    def add_cluster(self, cluster, rc=None):
        if cluster.controller is not None and getattr(cluster.controller, "pid", None):
            self.add(cluster.controller.pid)
        for e in cluster.engines.values():
            self.add(*e.pids())
        if rc is not None:
            self.add(*rc[:].apply_sync(os.getpid))

    def start(self, *clusters):
        """Start each cluster (start_cluster_sync), its processes added as they start."""
        for cluster in clusters:
            cluster.start_cluster_sync()
            self.add_cluster(cluster)

    def wait_gone(self, timeout=10):
        """The pids still alive after at most `timeout` s: [] once all have ended."""
        try:
            wait_until(lambda: not any(alive(p) for p in self.pids), timeout,
                       "the processes to end")
        except AssertionError:
            pass   # the callers assert on what is left, which names the pids
        return [p for p in self.pids if alive(p)]


@pytest.fixture
def pids():
    p = Pids()
    try:
        yield p
    finally:
        left = [x for x in p.pids if alive(x)]
        for x in left:
            os.kill(x, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


@pytest.fixture(autouse=True)
def minipar_dir(tmp_path, monkeypatch):
    d = tmp_path / "minipar-dir"
    monkeypatch.setenv("MINIPAR_DIR", str(d))
    return d


def cli(*args, timeout=90):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minipar.launcher", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- Cluster


def test_cluster_context_manager_runs_work_and_stops_everything(pids, minipar_dir):
    cluster = Cluster(n=3, controller_args=CTL_ARGS)
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        assert sorted(rc.ids) == [0, 1, 2]
        assert rc[:].apply_sync(lambda x: x * 2, 21) == [42, 42, 42]
        profile_dir = cluster.profile_dir
        assert profile_dir.startswith(str(minipar_dir))
        assert os.path.exists(cluster.cluster_file)
    assert len(pids.pids) == 4  # controller + 3 engines
    assert not [p for p in pids.pids if alive(p)], "stop returned before processes ended"
    assert cluster.controller.state == AFTER
    assert not os.path.exists(profile_dir)  # its own folder is removed with it


def test_cluster_stops_when_the_block_raises(pids):
    cluster = Cluster(n=2, controller_args=CTL_ARGS)
    with pytest.raises(ZeroDivisionError):
        with cluster as rc:
            pids.add_cluster(cluster, rc)
            1 / 0
    assert not [p for p in pids.pids if alive(p)]


def test_parallel_clusters_do_not_collide(pids):
    a, b = Cluster(n=1, controller_args=CTL_ARGS), Cluster(n=1, controller_args=CTL_ARGS)
    try:
        rca, rcb = a.start_and_connect_sync(), b.start_and_connect_sync()
        pids.add_cluster(a, rca)
        pids.add_cluster(b, rcb)
        assert a.profile_dir != b.profile_dir
        assert rca[:].apply_sync(os.getpid) != rcb[:].apply_sync(os.getpid)
    finally:
        a.stop_cluster_sync()
        b.stop_cluster_sync()
    assert not [p for p in pids.pids if alive(p)]


def test_engine_sets_start_stop_restart_and_signal(pids, tmp_path):
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    try:
        rc = cluster.start_and_connect_sync()
        first = next(iter(cluster.engines))
        second = cluster.start_engines_sync(2)
        cluster.wait_for_engines(3, timeout=60)
        pids.add_cluster(cluster, rc)
        old = set(cluster.engines[second].pids())
        cluster.stop_engines_sync(second)
        assert len(old) == 2 and not any(alive(p) for p in old)
        old = set(cluster.engines[first].pids())
        assert cluster.restart_engines_sync(first) == [first]  # the same id, as ipyparallel
        new_id = first
        assert set(cluster.engines[new_id].pids()).isdisjoint(old)
        pids.add(*cluster.engines[new_id].pids())
        # engine ids are never reused: wait for the restarted one to register
        wait_until(lambda: len(rc.ids) == 1 and rc.ids[0] != 0, 60,
                   "the restarted engine registered under a new id")
        cluster.signal_engines_sync(signal.SIGKILL)
        assert cluster.engines[new_id].wait(30)
        assert cluster.engines[new_id].state == AFTER
        assert cluster.engines[new_id].stop_data["exit_codes"] == [-signal.SIGKILL]
    finally:
        cluster.stop_cluster_sync()
    assert os.path.isdir(tmp_path / "p")  # a folder the user gave is kept


def test_controller_that_exits_raises_with_its_output(pids):
    cluster = Cluster(n=1, controller_args=["--no-such-flag"], timeout=30)
    with pytest.raises(ControllerStartError) as e:
        cluster.start_controller_sync()
    pids.add(cluster.controller.pid)
    assert "--no-such-flag" in str(e.value)  # argparse's message, from the controller's output
    assert cluster.controller.state == AFTER


class SilentController(launcher.LocalControllerLauncher):
    """A 'controller' that prints and then never writes a connection file."""

    def find_args(self):
        return [sys.executable, "-c", "print('hello from the stuck controller', flush=True);"
                                      "import time; time.sleep(600)"]


def test_controller_start_timeout_raises_with_output_and_stops_it(pids):
    cluster = Cluster(n=1, controller=SilentController, timeout=3)
    with pytest.raises(ControllerStartError) as e:
        cluster.start_controller_sync()
    pids.add(cluster.controller.pid)
    assert "within 3 s" in str(e.value)
    assert "hello from the stuck controller" in str(e.value)
    assert not alive(cluster.controller.pid)


class StuckController(launcher.LocalControllerLauncher):
    """A 'controller' that says its pid and then never writes a connection file."""

    def find_args(self):
        return [sys.executable, "-c", "import os, time; print('stuck controller pid', "
                                      "os.getpid(), flush=True); time.sleep(600)"]


def test_ctrl_c_before_start_is_ready_stops_what_it_started_without_a_traceback(
        pids, minipar_dir):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = subprocess.Popen([sys.executable, "-m", "minipar.launcher", "start", "-n", "1",
                              "--controller", "tests.test_launcher.StuckController"],
                             env=env, cwd=ROOT, stdin=subprocess.DEVNULL, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids.add(start.pid)
    logs = minipar_dir / "profile_default" / "log"

    def controller_pid():
        for log in logs.glob("controller-*.log"):
            m = re.search(r"stuck controller pid (\d+)", log.read_text())
            if m:
                return int(m.group(1))

    pid = wait_until(controller_pid, 60, "the stuck controller to start")
    pids.add(pid)
    start.send_signal(signal.SIGINT)   # Ctrl-C, while start waits for it to be ready
    out, err = start.communicate(timeout=60)
    assert start.returncode == 130 and err == "interrupted\n", err
    wait_until(lambda: not alive(pid), 30, "the stuck controller to be stopped")


# A script whose Ctrl-C lands inside subprocess.Popen, right after the fork of its process
# number argv[2] (1: the controller, 5: the 4th of 8 engines), where Popen has not yet
# returned the pid; it stops the cluster and prints whether the KeyboardInterrupt came.
_CTRL_C_IN_POPEN = """
import json, os, signal, sys
from minipar import Cluster
forks = 0

def ctrl_c_after_fork(frame, event, arg):
    global forks
    if event == "c_return" and getattr(arg, "__name__", "") == "fork_exec":
        forks += 1
        if forks == int(sys.argv[2]):
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)

cluster = Cluster(n=8, profile_dir=sys.argv[1], controller_args=%r)
sys.setprofile(ctrl_c_after_fork)
try:
    cluster.start_cluster_sync()
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
sys.setprofile(None)
cluster.stop_cluster_sync()
print(json.dumps({"interrupted": interrupted, "forks": forks}), flush=True)
"""


def _processes_naming(text):
    """The pids of the processes whose command line holds `text`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and text in f.read().decode(errors="replace"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("fork", [1, 5])
def test_ctrl_c_while_processes_start_leaves_none_running(pids, tmp_path, fork):
    # was: the pid of the process being started was lost inside Popen, so stop() missed it
    # and it ran on (an engine until it gave up on its controller; the controller until
    # it saw its owner gone)
    prof = str(tmp_path / "p")
    out = subprocess.run([sys.executable, "-c", _CTRL_C_IN_POPEN % (CTL_ARGS,), prof, str(fork)],
                         env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=90)
    left = _processes_naming(prof)
    pids.add(*left)
    assert out.stdout.startswith("{"), out.stdout + out.stderr
    assert json.loads(out.stdout) == {"interrupted": True, "forks": fork}, out.stdout
    assert left == [], f"processes of the cluster left running: {left}"


# A script that starts a cluster of one engine, runs on it a task that notes a SIGTERM
# (in file argv[2]) and sleeps on, so stopping the engine waits its stop_timeout; it prints
# the pids, then stops the cluster and prints whether a KeyboardInterrupt came out of that
# and whether the controller was still running then.
_CTRL_C_WHILE_ENGINES_STOP = """
import json, os, sys
from minipar import Cluster, protocol
from tests.helpers import wait_until

def slow_to_stop(marker):
    import signal, time
    signal.signal(signal.SIGTERM, lambda *_: open(marker, "w").close())
    open(marker + ".ready", "w").close()
    time.sleep(60)

cluster = Cluster(n=1, profile_dir=sys.argv[1], controller_args=%r,
                  engine_options={"stop_timeout": 60})
rc = cluster.start_and_connect_sync()
engines = [pid for s in cluster.engines.values() for pid in s.pids()]
print(json.dumps({"controller": cluster.controller.pid, "engines": engines}), flush=True)
rc[:].apply_async(slow_to_stop, sys.argv[2])
wait_until(lambda: os.path.exists(sys.argv[2] + ".ready"), 30, "the task's handler")
try:
    cluster.stop_cluster_sync()
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
print(json.dumps({"interrupted": interrupted,
                  "controller_running": protocol.pid_alive(cluster.controller.pid)}), flush=True)
"""


def test_ctrl_c_while_engines_stop_still_stops_the_controller(pids, tmp_path):
    # was: the KeyboardInterrupt left stop_cluster_sync before it stopped the controller,
    # which ran on until it saw its owner gone
    marker = tmp_path / "sigterm"
    p = subprocess.Popen([sys.executable, "-c", _CTRL_C_WHILE_ENGINES_STOP % (CTL_ARGS,),
                          str(tmp_path / "p"), str(marker)], env=_env(), cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(p.stdout.readline() or "null")   # the script bounds its start
        assert started, p.communicate(timeout=30)
        pids.add(started["controller"], *started["engines"])
        wait_until(marker.exists, 60, "the engine's SIGTERM from stop_cluster_sync")
        p.send_signal(signal.SIGINT)   # Ctrl-C, while it waits for the engine to exit
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    assert json.loads(out) == {"interrupted": True, "controller_running": False}, out + err
    # and the engine, slow to stop on purpose, ends as the controller told it when it stopped
    assert not pids.wait_gone(30)


def test_engines_that_exit_raise_with_their_output(pids):
    cluster = Cluster(n=2, engine_args=["--no-such-flag"], controller_args=CTL_ARGS)
    with pytest.raises(launcher.EngineStartError) as e:
        cluster.start_and_connect_sync()
    pids.add(cluster.controller.pid)
    assert "--no-such-flag" in str(e.value)
    assert not alive(cluster.controller.pid)


@pytest.mark.parametrize("kind, options", [
    ("mpi", {"mpi_cmd": ["minipar-no-such-mpiexec"]}),
    ("slurm", {"submit_command": ["minipar-no-such-sbatch"]}),
    ("ssh", {"ssh_cmd": ["minipar-no-such-ssh"]}),
    ("ssh", {"scp_cmd": ["minipar-no-such-scp"], "ssh_cmd": ["true"]})])
def test_engines_whose_program_is_not_installed_say_so(pids, kind, options):
    # was a bare FileNotFoundError: [Errno 2] No such file or directory: 'mpiexec'; then
    # "give its full path in the launcher's options", naming none (ssh's engine file: still
    # a FileNotFoundError)
    option, (program, *_) = next(iter(options.items()))
    cluster = Cluster(n=1, engines=kind, engine_options=options, controller_args=CTL_ARGS)
    with pytest.raises(launcher.LauncherError,
                       match=rf"cannot run '{program}': it is not on this machine's PATH; "
                             rf"install it, give its full path in {option} \(of a Cluster's "
                             r"engine_options\)"):
        cluster.start_and_connect_sync()
    pids.add(cluster.controller.pid)
    assert not alive(cluster.controller.pid)


@pytest.mark.parametrize("engines", [["node1", "node2"], {"node1": "2"}, {"node1": [2]}, "node1"])
def test_ssh_engines_in_a_shape_it_does_not_take_say_which_it_does(pids, tmp_path, engines):
    # was: "dictionary update sequence element #0 has length 9; 2 is required", or an
    # IndexError's traceback from inside start(), with the controller started
    cluster = Cluster(n=2, engines="ssh", engine_options={"engines": engines},
                      profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    with pytest.raises(ValueError, match=r"give \{host: number of engines\} or "):
        cluster.start_and_connect_sync()
    pids.add(cluster.controller.pid)
    assert not alive(cluster.controller.pid)
    out = cli("start", "-n", "2", "--engines", "ssh", "--profile-dir", str(tmp_path / "q"),
              "--engine-options", json.dumps({"engines": engines}))
    assert out.returncode == 1 and "{'node1': 4, 'node2': [2, " in out.stderr and \
        "Traceback" not in out.stderr, out.stderr


def test_unknown_launcher_options_are_named_at_once(pids, tmp_path):
    with pytest.raises(ValueError, match=r"^engine_options: LocalEngineSetLauncher takes no "
                                         r"option 'mpi_args'; its options are env, "
                                         r"stop_timeout, restart$"):
        Cluster(n=1, engine_options={"mpi_args": ["--oversubscribe"]})
    with pytest.raises(ValueError, match=r"controller_options: LocalControllerLauncher takes "
                                         r"no option 'bogus', 'cluster_id'; .*Cluster's own"):
        Cluster(n=1, controller_options={"bogus": 1, "cluster_id": "x", "env": {}})
    # options given to one start: named before anything starts
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      engine_options={"env": {}}, shutdown_atexit=False)
    with pytest.raises(ValueError, match="controller options: .* 'hostname'"):
        cluster.start_controller_sync(hostname="h1")
    with pytest.raises(ValueError, match="engine options: MPIEngineSetLauncher .* 'restart'"):
        cluster.start_engines_sync(1, engines="mpi", restart="on_failure")
    assert cluster.controller is None and cluster.engines == {}
    for options, says in (('{"bogus": 1}', "no option 'bogus'; its options are"),
                          ("{bogus", "Expecting property name")):   # from the command line
        out = cli("start", "-n", "1", "--profile-dir", str(tmp_path / "q"),
                  "--engine-options", options)
        assert out.returncode == 1 and out.stderr.startswith("error: ") and \
            says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_second_cluster_in_a_busy_profile_is_refused(pids, tmp_path):
    prof = str(tmp_path / "p")
    cluster = Cluster(n=1, profile_dir=prof, controller_args=CTL_ARGS)
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        with pytest.raises(launcher.LauncherError, match="already running"):
            Cluster(n=1, profile_dir=prof).start_controller_sync()



# ---------------------------------------------------------------- one controller per profile


# A script that starts a cluster, prints its pids as JSON, keeps the engines busy and
# blocks until killed: the tester's `timeout`, `kill`, scancel or a kernel restart.
_STARTER = """
import json, os, sys, time
from minipar import Cluster
cluster = Cluster(n=2, profile_dir=sys.argv[1], controller_args=%r, shutdown_atexit=%r)
rc = cluster.start_and_connect_sync()
engines = rc[:].apply_sync(os.getpid)
rc[:].apply_async(time.sleep, 600)
print(json.dumps({"controller": cluster.controller.pid, "engines": engines}), flush=True)
time.sleep(600)
"""


def _start_and_kill_starter(pids, tmp_path, shutdown_atexit):
    """Run _STARTER, SIGKILL it once its cluster runs; the cluster's pids."""
    code = _STARTER % (CTL_ARGS, shutdown_atexit)
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "p")], env=_env(),
                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    pids.add(p.pid)
    try:
        line = p.stdout.readline()
        started = json.loads(line) if line.startswith("{") else None
        assert started, line + p.stdout.read()
        cluster = [started["controller"], *started["engines"]]
        pids.add(*cluster)
        assert len(cluster) == 3 and all(alive(x) for x in cluster)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    return cluster


def test_cluster_stops_when_its_starter_is_killed(pids, tmp_path):
    # SIGKILL (and SIGTERM, unhandled) skip atexit: the controller, told --owner, notices
    # at its next heartbeat and stops the busy engines too, well before they would miss
    # heartbeats of a controller that vanished (--heartbeat-liveness 10)
    cluster = _start_and_kill_starter(pids, tmp_path, shutdown_atexit=True)
    wait_until(lambda: not any(alive(x) for x in cluster), 30, "the cluster to stop")
    log = (tmp_path / "p" / "log").glob("*controller*")
    assert any("owner process" in f.read_text() for f in log)


def test_controller_whose_owner_runs_on_another_host_runs_on_saying_it_cannot_see_it(
        pids, tmp_path):
    """A batch job on a compute node: its owner's pid (here one that has ended) means
    nothing there. A controller that took it for one of its host's would stop at its first
    heartbeat; it runs on, and its log says to `launcher stop` the cluster."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60).stdout.strip()
    owner = f"--owner={gone}/1/elsewhere-{socket.gethostname()}/pid:[1]"
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), shutdown_atexit=False,
                      controller_args=[*CTL_ARGS, "--heartbeat-period", "0.1", owner])
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        rc[:].apply_sync(time.sleep, 1)   # ten heartbeats
        assert cluster.controller.running and rc[:].apply_sync(lambda: 1) == [1]
        assert "cannot see it end; `launcher stop` the cluster" in cluster.controller.get_output()
    assert pids.wait_gone(20) == []


def _run_launcher_stop(root, profile_dir, out, new_session):
    # a task: `launcher stop` as a child of this engine, output in `out`; its pid
    import os, subprocess, sys
    with open(out, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "minipar.launcher", "stop", "--profile-dir",
                                 profile_dir], stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=root),
                                start_new_session=new_session).pid


@pytest.mark.parametrize("new_session", [True, False], ids=["own-session", "engine-session"])
def test_launcher_stop_started_by_a_process_it_stops_does_not_kill_itself(pids, tmp_path,
                                                                          new_session):
    """The `launcher stop` that a controller whose owner is gone starts is its child until
    the controller has ended, which on a loaded machine can be after the stop has gathered
    the controller's descendants: it took itself for one, and SIGKILLed itself after
    stop_timeout, leaving the cluster file (the ssh kill -9 test failed so, now and then).
    A task that stops its own cluster is a child of an engine the same way, for good; in
    the engine's session, it is also among what the stop ends there (a task's leftovers),
    and leaves that session alone."""
    prof = str(tmp_path / "p")
    cluster = Cluster(n=1, profile_dir=prof, controller_args=CTL_ARGS, shutdown_atexit=False)
    rc = cluster.start_and_connect_sync()
    try:
        pids.add_cluster(cluster, rc)
        out = tmp_path / "stop.out"
        pids.add(rc[0].apply_sync(_run_launcher_stop, ROOT, prof, str(out), new_session))
        wait_until(lambda: "stopped cluster" in out.read_text(), 60, "`launcher stop` done")
        assert pids.wait_gone(20) == []
        assert not os.path.exists(cluster.cluster_file)
    finally:
        cluster.stop_cluster_sync()


def test_a_cluster_whose_starter_was_killed_is_listed_as_stale_until_cleaned(pids, tmp_path):
    # its processes killed too (kill -9 of them all, a reboot): nobody was left to remove
    # its cluster file (a controller told --owner removes it, by `launcher stop`)
    cluster = _start_and_kill_starter(pids, tmp_path, shutdown_atexit=False)
    for x in cluster:
        os.kill(x, signal.SIGKILL)
    wait_until(lambda: not any(alive(x) for x in cluster), 30, "the cluster to stop")
    prof = str(tmp_path / "p")
    out = cli("list", "--profile-dir", prof)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^\S+\tstale\t0\t{re.escape(prof)}$", out.stdout, re.M), out.stdout
    assert "1 stale cluster(s)" in out.stderr, out.stderr
    assert "launcher clean` removes their files" in out.stderr
    out = cli("stop", "--profile-dir", prof)   # nothing to stop: what removes the file
    assert out.returncode == 1 and "launcher clean` (same --profile-dir)" in out.stderr, out.stderr
    assert "removed cluster" in cli("clean", "--profile-dir", prof).stdout
    out = cli("list", "--profile-dir", prof)
    assert out.stdout.startswith(f"no cluster running in {prof}: ") and not out.stderr, out


def test_cluster_left_running_survives_its_starter(pids, tmp_path):
    cluster = _start_and_kill_starter(pids, tmp_path, shutdown_atexit=False)
    time.sleep(3)   # three heartbeats of the controller (CTL_ARGS: the default 1 s)
    assert all(alive(x) for x in cluster)
    for x in cluster:
        os.kill(x, signal.SIGTERM)
    assert not pids.wait_gone(30)


def _env():
    # `python` on PATH is this Python, so a command printed for a shell runs as printed
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path,
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _controller(prof, *args, wait=True):
    """`python -m minipar.controller` started by hand; with `wait`, once its files name it."""
    p = subprocess.Popen([sys.executable, "-m", "minipar.controller", "--profile-dir", prof,
                          *args], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(prof, "security", protocol.CLIENT_FILE)

    def named():
        assert p.poll() is None, "the controller did not start: it ended"
        try:
            with open(path) as f:
                return json.load(f).get("pid") == p.pid
        except (OSError, ValueError):
            return False
    if wait:
        wait_until(named, 60, "the controller to start (its client file to name its pid)")
    return p


def _second_controller(prof, *args):
    return subprocess.run([sys.executable, "-m", "minipar.controller", "--profile-dir", prof,
                           *args], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def _run_printed_fix(message):
    """Run the command a refusal says to run (between backquotes), exactly as printed."""
    m = re.search(r"Stop it with `([^`]+)`", message)
    assert m, message
    done = subprocess.run(m.group(1), shell=True, env=_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{m.group(1)}: {done.stdout}{done.stderr}"
    return m.group(1)


def test_second_controller_on_a_held_profile_is_refused(pids, tmp_path):
    from minipar import Client

    prof = str(tmp_path / "p")
    first = _controller(prof)
    pids.add(first.pid)
    sec = os.path.join(prof, "security")
    names = (protocol.CLIENT_FILE, protocol.ENGINE_FILE)
    before = {n: open(os.path.join(sec, n), "rb").read() for n in names}
    for extra in ([], ["--reuse"]):  # --reuse too: it would bind the first one's ports
        started = time.monotonic()
        out = _second_controller(prof, *extra)
        assert out.returncode != 0, out.stderr
        assert time.monotonic() - started < 30
        assert f"pid {first.pid} on host {socket.gethostname()}" in out.stderr, out.stderr
        assert f"`kill {first.pid}`" in out.stderr, out.stderr
    assert {n: open(os.path.join(sec, n), "rb").read() for n in names} == before
    assert first.poll() is None
    rc = Client(os.path.join(sec, protocol.CLIENT_FILE), timeout=30)
    try:
        assert rc.queue_status()["unassigned"] == 0
    finally:
        rc.close()
    _run_printed_fix(out.stderr)
    assert first.wait(30) == 0  # SIGTERM: a clean stop, which removes its files
    assert not os.path.exists(os.path.join(sec, protocol.CLIENT_FILE))


def test_a_controller_starting_at_the_same_moment_holds_the_profile(pids, tmp_path):
    """Two controllers started together on one profile both passed the check of its
    connection file (neither had written it yet): both ran, one overwrote the other's
    files and was left unreachable. A controller now holds a lock on the profile's
    security folder for its lifetime; one that finds it held (here by this test, as by
    a controller still starting) exits 1 saying so, and writes nothing."""
    import fcntl

    prof = str(tmp_path / "p")
    sec = protocol.security_dir(prof)
    fd = os.open(sec, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = _second_controller(prof)
    finally:
        os.close(fd)   # releases the lock
    if out.returncode == 0:
        pids.add(json.load(open(os.path.join(sec, protocol.CLIENT_FILE))).get("pid"))
    assert out.returncode == 1, out.stderr
    assert f"another controller is starting with profile dir {prof}" in out.stderr
    assert os.listdir(sec) == []
    first = _controller(prof)   # the lock is free again, and held by the new one
    pids.add(first.pid)
    out = _second_controller(prof)
    assert out.returncode == 1 and "already running" in out.stderr, out.stderr
    first.terminate()
    assert first.wait(30) == 0


def _serves_then_stop(prof, engine, controller):
    """The hand-started `engine` runs a client's request through `controller` (of profile
    folder `prof`); then both are stopped."""
    from minipar import Client

    rc = Client(profile_dir=prof, timeout=30)
    try:
        rc.wait_for_engines(1, 60)
        assert rc[:].apply_sync(os.getpid) == [engine.pid]
    finally:
        rc.close()
    for p in (engine, controller):
        p.terminate()
        p.wait(30)


def test_an_engine_started_before_its_controller_waits_for_it(pids, tmp_path):
    """`python -m minipar.controller & python -m minipar.engine`: the engine may look
    before the controller has written its file; it waits for it (and, when none comes
    within its --timeout, says so and exits)."""
    prof, log = str(tmp_path / "p"), tmp_path / "engine.log"
    with open(log, "wb") as out:
        engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", "--profile-dir",
                                   prof], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT)
    pids.add(engine.pid)
    wait_until(lambda: "waiting up to 10 s" in log.read_text(), 60, "the engine waiting")
    first = _controller(prof)
    pids.add(first.pid)
    _serves_then_stop(prof, engine, first)
    lonely = subprocess.run([sys.executable, "-m", "minipar.engine", "--profile-dir",
                             str(tmp_path / "none"), "--timeout", "1"], env=_env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    assert lonely.returncode == 1
    assert "waiting up to 1 s" in lonely.stderr and "no connection file" in lonely.stderr


def test_a_folder_that_cannot_be_made_is_one_line_not_a_traceback(pids, tmp_path):
    """A profile folder or engine --work-dir under a file (or without permission, on a
    read-only disk) ended the controller, the launcher and the engine with a traceback
    through minipar's internals; each now says in one line which folder and why. The
    launcher said only "[Errno 20] Not a directory: 'P/log'": it says what to do as well."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    prof = str(blocker / "profile")
    out = _second_controller(prof)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot make {prof}/security for the connection files (Not a directory)" \
        in out.stderr
    for given in (prof, str(blocker)):   # under a file, or the file itself
        out = cli("start", "-n", "1", "--profile-dir", given, "--daemonize")
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr == (f"error: cannot make {given}/log for the logs (Not a directory): "
                              "give a profile folder you can write (--profile-dir)\n")
    first = _controller(str(tmp_path / "p"))
    pids.add(first.pid)
    out = subprocess.run([sys.executable, "-m", "minipar.engine", "--profile-dir",
                          str(tmp_path / "p"), "--work-dir", str(blocker / "work")],
                         env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot work in --work-dir {blocker / 'work'} (Not a directory)" in out.stderr
    first.terminate()
    assert first.wait(30) == 0


def test_a_connection_file_path_too_long_to_open_is_named_once(tmp_path):
    """A profile folder whose name is longer than the file system takes (255 bytes): the
    engine and the Client said "cannot read connection file P: [Errno 36] File name too
    long: 'P'", the path (of hundreds of characters) twice. It is named once, with why."""
    prof = str(tmp_path / ("x" * 300))
    out = subprocess.run([sys.executable, "-m", "minipar.engine", "--profile-dir", prof],
                         env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    said = f"cannot read connection file {prof}/security/{protocol.ENGINE_FILE}: File name too long"
    assert said in out.stderr and out.stderr.count(prof) == 1, out.stderr
    with pytest.raises(errors.ConnectionFileError) as e:
        minipar.Client(profile_dir=prof, timeout=1)
    assert str(e.value).count(prof) == 1 and "File name too long" in str(e.value), e.value


def test_a_profile_name_that_is_a_path_says_to_use_profile_dir(pids, tmp_path, minipar_dir):
    """`--profile /data/run1` (meant as --profile-dir) started a controller in
    $MINIPAR_DIR/profile_/data/run1, and an engine given --profile-dir /data/run1 waited
    for a file that never came there. Each entry point now says to use --profile-dir
    before starting anything; the same folder as --profile-dir works."""
    from minipar import Client

    prof = str(tmp_path / "run1")
    for argv in (["controller"], ["engine"], ["top", "--once"], ["launcher", "start", "-n",
                                                                 "1", "--daemonize"]):
        p = subprocess.Popen([sys.executable, "-m", f"minipar.{argv[0]}", *argv[1:],
                              "--profile", prof], env=_env(), cwd=ROOT, text=True,
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL)
        pids.add(p.pid)
        try:
            err = p.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:   # the old code's controller ran on
            p.kill()
            err = p.communicate()[1]
        assert p.returncode == (1 if argv[0] == "launcher" else 2), (argv, err)
        assert f"profile {prof!r} is a path, not a name: pass a folder as --profile-dir" \
            in err and "Traceback" not in err, (argv, err)
    assert not minipar_dir.exists() or not os.listdir(minipar_dir)
    with pytest.raises(ValueError, match="is a path, not a name"):
        Client(profile=prof)
    out = cli("list", "--profile", prof)   # the error alone: no table header before it
    assert out.returncode == 1 and out.stdout == "" and "is a path" in out.stderr, out
    first = _controller(prof)
    pids.add(first.pid)
    engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", "--profile-dir", prof],
                              env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids.add(engine.pid)
    _serves_then_stop(prof, engine, first)


def test_a_stale_connection_file_does_not_hold_the_profile(pids, tmp_path):
    prof = str(tmp_path / "p")
    sec = protocol.security_dir(prof)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # a pid the kernel gave to another program after the controller died
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    pids.add(other.pid)
    try:
        for pid in (dead.pid, other.pid):
            info = {"key": "0" * 64, "ports": {}, "location": "127.0.0.1", "pid": pid,
                    "host": socket.gethostname()}
            for name in (protocol.CLIENT_FILE, protocol.ENGINE_FILE):
                protocol.write_connection_file(os.path.join(sec, name), info)
            ctl = _controller(prof)
            pids.add(ctl.pid)
            ctl.terminate()
            assert ctl.wait(30) == 0
        # the launcher's check is the same: a reused pid does not hold the profile
        for name in (protocol.CLIENT_FILE, protocol.ENGINE_FILE):
            protocol.write_connection_file(os.path.join(sec, name), info)
        cluster = Cluster(n=0, profile_dir=prof, controller_args=CTL_ARGS)
        try:
            cluster.start_controller_sync()
            pids.add_cluster(cluster)
        finally:
            cluster.stop_cluster_sync()
    finally:
        other.kill()
        other.wait()


def test_launcher_start_on_a_hand_started_controller_prints_a_fix_that_works(pids, tmp_path):
    prof = str(tmp_path / "p")
    first = _controller(prof)
    pids.add(first.pid)
    out = cli("start", "-n", "1", "--profile-dir", prof, "--daemonize", timeout=60)
    try:
        assert out.returncode == 1 and "already running" in out.stderr, out.stderr
        assert _run_printed_fix(out.stderr) == f"kill {first.pid}"
        assert first.wait(30) == 0
    finally:
        if out.returncode == 0:
            cli("stop", "--all", "--profile-dir", prof)


def test_start_and_engines_take_ipclusters_n_spelling(tmp_path):
    """``ipcluster start --n=4`` and ``ipcluster engines --n=4`` (as its documents write
    them) were refused: "unrecognized arguments: --n=4"."""
    prof = str(tmp_path / "p")
    out = cli("start", "--n=1", "--profile-dir", prof, "--daemonize", timeout=60)
    try:
        assert out.returncode == 0, out.stderr
        out = cli("engines", "--n=1", "--profile-dir", prof, timeout=60)
        assert out.returncode == 0, out.stderr
        with minipar.Client(profile_dir=prof) as rc:
            rc.wait_for_engines(2, 60)
    finally:
        cli("stop", "--profile-dir", prof)


def test_options_without_a_command_start_a_cluster_as_ipcluster_n_4(pids, tmp_path):
    """The classic documents start their cluster with ``ipcluster -n 4``, no command:
    ``python -m minipar.launcher -n 1`` was refused ("invalid choice"); it now starts one."""
    prof = str(tmp_path / "p")
    out = cli("-n", "1", "--profile-dir", prof, "--daemonize", timeout=60)
    try:
        assert out.returncode == 0, out.stderr
        with minipar.Client(profile_dir=prof) as rc:
            rc.wait_for_engines(1, 60)
    finally:
        cli("stop", "--profile-dir", prof)
    assert cli("-n").returncode == 2 and cli("--log-level", "DEBUG", "list").returncode == 0


def test_ipengine_and_ipcontroller_options_minipar_leaves_out_say_what_to_do():
    """``ipengine --ssh=host``, ``ipcontroller --enginessh=host`` (the ssh tunnels of
    ipyparallel's documents) and ``ipengine --mpi`` were refused as argparse refuses a
    typo, "unrecognized arguments"; each now says what to do, as do IPython.kernel's
    ``ipengine --furl-file=F`` and ``ipcontroller --client-port=P --engine-port=Q`` of the
    classic documents. A typo is refused as before."""
    for role, option, says in [("engine", "--ssh=login.node", "makes no ssh tunnels"),
                               ("engine", "--mpi", "under mpiexec takes its rank"),
                               ("controller", "--enginessh=node1", "forward the ports with ssh -L"),
                               ("engine", "--furl-file=/x/e.furl", "with --file PATH"),
                               ("controller", "--client-port=10101", "--port (registration)"),
                               ("controller", "--engine-port=10102", "--reuse keeps the ports"),
                               ("engine", "--no-such-flag", "unrecognized arguments: --no-such")]:
        out = subprocess.run([sys.executable, "-m", f"minipar.{role}", option], env=_env(),
                             cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and says in out.stderr, out.stderr


def test_ipclusters_n_given_to_one_process_names_the_commands_that_take_it(tmp_path):
    """`python -m minipar.controller --n 4` (ipcluster's spelling, to the wrong command) was
    taken as --nodb, of which --n is a prefix, and refused with "unrecognized arguments: 4"
    (`--n` alone ran a controller that keeps no records); `-n 4` to it or to an engine, and
    `python -m minipar -n 4`, were refused without a word of the command that takes it. Each
    now names it; no prefix of an option is taken for it (ipyparallel takes none)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", *args, "--profile-dir", str(tmp_path)],
                              env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
    for role, given in [("controller", ["--n", "4"]), ("controller", ["-n", "four"]),
                        ("engine", ["-n", "4"]), ("engine", ["--n=4"])]:
        out = run(f"minipar.{role}", *given)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert (f"error: {given[0]}: python -m minipar.{role} starts one process, not a "
                "number of engines: `python -m minipar.launcher start -n 4` starts a controller "
                "and 4 engines, `python -m minipar.launcher engines -n 4` adds") in out.stderr
    for role, prefix in [("controller", "--heartbeat-p"), ("engine", "--time")]:
        out = run(f"minipar.{role}", prefix, "0")
        assert out.returncode == 2 and f"unrecognized arguments: {prefix} 0" in out.stderr
    out = run("minipar", "-n", "4")
    assert out.returncode == 2 and ("did you mean `python -m minipar.launcher start -n 4 "
                                    "--profile-dir") in out.stderr, out.stderr


def test_controller_nodb_runs_as_db_none(pids, tmp_path):
    """``ipcontroller --nodb`` (the starting document's backend without a database) starts a
    controller that keeps no records, as ``--db none``, where it was refused as a typo."""
    log = tmp_path / "controller.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "minipar.controller", "--nodb",
                              "--profile-dir", str(tmp_path / "p")], env=_env(), cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    pids.add(p.pid)
    try:
        wait_until(lambda: "records in" in log.read_text() or p.poll() is not None, 60,
                   "the controller's first log line")
        assert "records in NoDB" in log.read_text(), log.read_text()
    finally:
        p.terminate()
        p.wait(30)


def test_list_shows_controllers_started_by_hand(pids, minipar_dir):
    """`python -m minipar.controller` (default profile, in $MINIPAR_DIR) writes no cluster
    file; `list` finds it by its connection file, marked as started by hand."""
    prof = str(minipar_dir / "profile_default")
    first = _controller(prof)
    pids.add(first.pid)
    try:
        out = cli("list")
        assert out.returncode == 0, out.stderr
        assert f"-\tpid {first.pid} (by hand)\t?\t{prof}\n" in out.stdout, out.stdout
    finally:
        first.terminate()
        first.wait(30)
    assert f"pid {first.pid}" not in cli("list").stdout


def test_list_with_no_cluster_says_so_and_how_to_start_one(pids, minipar_dir, tmp_path):
    """`list` with nothing running says so, and the command that starts a cluster there
    (status 0, as `ipcluster list`); the table's header comes only above a row. Before, it
    printed the header alone, which reads as a list that failed to load."""
    out = cli("list")
    assert (out.returncode, out.stderr) == (0, ""), out
    assert out.stdout == (f"no cluster running in {minipar_dir}: start one with "
                          "`python -m minipar.launcher start -n 4`\n"), out.stdout
    prof = str(tmp_path / "my profile")
    first = _controller(prof)
    pids.add(first.pid)
    try:
        lines = cli("list", "--profile-dir", prof).stdout.splitlines()
        assert lines == ["cluster_id\tcontroller\tengines\tprofile_dir",
                         f"-\tpid {first.pid} (by hand)\t?\t{prof}"], lines
    finally:
        first.terminate()
        first.wait(30)
    out = cli("list", "--profile-dir", prof)
    assert out.stdout == (f"no cluster running in {prof}: start one with `python -m "
                          f"minipar.launcher start -n 4 --profile-dir '{prof}'`\n"), out.stdout


def test_engines_and_stop_on_a_hand_started_controller_print_fixes_that_work(pids,
                                                                            minipar_dir):
    """`launcher engines` and `launcher stop` of a profile whose controller was started by
    hand said "no running cluster found in profile lx", while `list` showed it. They say
    it was started by hand and what to run instead; each fix, run as printed, works."""
    first = _controller(str(minipar_dir / "profile_lx"))
    pids.add(first.pid)
    try:
        out = cli("engines", "-n", "1", "--profile", "lx")
        assert out.returncode == 1 and f"started by hand (pid {first.pid}" in out.stderr, \
            out.stderr
        m = re.search(r"Start engines with `python (-m minipar.engine --profile lx)`",
                      out.stderr)
        assert m, out.stderr
        engine = subprocess.Popen([sys.executable, *m.group(1).split()], env=_env(), cwd=ROOT,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        pids.add(engine.pid)
        with minipar.Client(profile="lx") as rc:
            rc.wait_for_engines(1, 60)
            assert rc[:].apply_sync(os.getpid) == [engine.pid]
        out = cli("stop", "--profile", "lx")
        assert out.returncode == 1 and f"stop it with `kill {first.pid}`" in out.stderr, \
            out.stderr
        subprocess.run(["kill", str(first.pid)], check=True, timeout=30)
        assert first.wait(30) == 0 and engine.wait(30) == 0
    finally:
        if first.poll() is None:
            first.terminate()
            first.wait(30)


def test_hand_started_controller_on_a_launcher_cluster_prints_a_fix_that_works(pids, tmp_path):
    prof = str(tmp_path / "p")
    out = cli("start", "-n", "0", "--profile-dir", prof, "--cluster-id", "held",
              "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    assert out.returncode == 0, out.stderr
    cluster = Cluster.from_file(profile_dir=prof)
    pids.add_cluster(cluster)
    try:
        second = _second_controller(prof)
        assert second.returncode != 0 and "--cluster-id held" in second.stderr, second.stderr
        _run_printed_fix(second.stderr)
        assert not [p for p in pids.pids if alive(p)]
    finally:
        cli("stop", "--all", "--profile-dir", prof)


# ---------------------------------------------------------------- first-hour surprises


def test_a_relative_minipar_dir_is_named_as_the_folder_it_is(tmp_path):
    """$MINIPAR_DIR=rel: the controller named its connection files' folder rel/..., which
    an engine started in another folder, told so, could not find."""
    help_text = subprocess.run(
        [sys.executable, "-m", "minipar.controller", "--help"], cwd=tmp_path, timeout=60,
        env=dict(_env(), COLUMNS="500", MINIPAR_DIR="rel"), capture_output=True, text=True).stdout
    assert f"connection files to {tmp_path / 'rel'}/profile_NAME/security" in help_text, help_text


def test_the_controller_says_where_its_connection_files_go_and_how_to_stop_it(pids, tmp_path,
                                                                              minipar_dir):
    """`controller --help` said neither where the connection files go nor how to stop it,
    and its "ready" line did not name the folder; a stale file's error suggested `python -m
    minipar.controller` without the --profile-dir that was used, so it wrote elsewhere."""
    help_text = subprocess.run(   # unwrapped: argparse breaks lines at hyphens too
        [sys.executable, "-m", "minipar.controller", "--help"], env=dict(_env(), COLUMNS="500"),
        cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert f"connection files to {minipar_dir}/profile_NAME/security" in help_text, help_text
    assert "Stop it with Ctrl-C or `kill PID`" in help_text, help_text
    prof = tmp_path / "p"
    log = open(tmp_path / "controller.log", "wb")
    first = subprocess.Popen([sys.executable, "-m", "minipar.controller", "--profile-dir",
                              str(prof)], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT)
    pids.add(first.pid)
    try:
        wait_until(lambda: "ready" in (tmp_path / "controller.log").read_text()
                   or first.poll() is not None, 60, "the controller ready")
        assert f"connection files in {prof / 'security'}\n" in \
            (tmp_path / "controller.log").read_text()
    finally:
        first.kill()   # as kill -9: its connection files stay, stale
        first.wait(30)
    with pytest.raises(errors.ConnectionFileError, match=re.escape(
            f"start a controller with `python -m minipar.controller --profile-dir {prof}`")):
        minipar.Client(profile_dir=str(prof), timeout=0.1)


def _ignore_sighup():   # as `nohup` does, in the child before it runs Python
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_closing_the_controllers_terminal_stops_it_as_ctrl_c_does(pids, tmp_path):
    """SIGHUP, which a controller gets when the terminal it runs in is closed, ended it as
    kill -9 does: no line in its log, its connection files left behind (stale), its
    engines waiting out their heartbeats, a client's request failing only as the
    controller's loss. It now stops as on Ctrl-C: said in its log, files removed, the
    requests it held failed with TaskAborted, its engines stopped, status 0. Under
    `nohup` (SIGHUP ignored) it runs on, as nohup promises."""
    prof = str(tmp_path / "p")
    ctl = subprocess.Popen([sys.executable, "-m", "minipar.controller", "--profile-dir", prof],
                           env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                           stdout=open(tmp_path / "controller.log", "wb"),
                           stderr=subprocess.STDOUT)
    pids.add(ctl.pid)
    engine = subprocess.Popen([sys.executable, "-m", "minipar.engine", "--profile-dir", prof],
                              env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids.add(engine.pid)
    rc = minipar.Client(profile_dir=prof, timeout=60)
    try:
        rc.wait_for_engines(1, 60)
        ar = rc[rc.ids[0]].apply_async(time.sleep, 600)
        wait_until(lambda: rc.queue_status()[rc.ids[0]]["queue"] == 1, 60, "the task sent")
        ctl.send_signal(signal.SIGHUP)
        assert ctl.wait(30) == 0
        with pytest.raises(errors.TaskAborted, match="the controller stopped before request"):
            ar.get(30)
    finally:
        rc.close()
    assert "SIGHUP: stopping" in (tmp_path / "controller.log").read_text()
    assert not os.path.exists(os.path.join(prof, "security", protocol.CLIENT_FILE))
    assert engine.wait(30) == 0
    nohup = subprocess.Popen([sys.executable, "-m", "minipar.controller", "--profile-dir",
                              prof], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=_ignore_sighup)
    pids.add(nohup.pid)
    wait_until(lambda: os.path.exists(os.path.join(prof, "security", protocol.CLIENT_FILE)),
               60, "the controller under nohup ready")
    nohup.send_signal(signal.SIGHUP)
    minipar.Client(profile_dir=prof, timeout=60).close()   # it answers: it runs on
    assert nohup.poll() is None
    nohup.terminate()
    assert nohup.wait(30) == 0


@pytest.mark.parametrize("role, options", [
    ("controller", ["--port", "--heartbeat-period", "--heartbeat-liveness",
                    "--max-message-size"]),
    ("engine", ["--timeout", "--max-missed-heartbeats"])])
def test_help_gives_the_default_of_each_option_that_has_one(role, options):
    """`--help` of the controller and the engine named no default for these options (how
    often is a heartbeat? how long does an engine wait?): a newcomer had to read the code."""
    help_text = subprocess.run(
        [sys.executable, "-m", f"minipar.{role}", "--help"], env=dict(_env(), COLUMNS="500"),
        cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    entries = {e.split()[0]: e for e in help_text.split("\n  -")[1:]}
    for option in options:
        assert "default" in entries[option[1:]], entries[option[1:]]


def test_python_m_minipar_names_the_commands_that_start_a_cluster():
    """`python -m minipar`, a newcomer's first guess, ended in Python's "No module named
    minipar.__main__; 'minipar' is a package and cannot be directly executed"."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "minipar", *args], env=_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    plain, wrong = run(), run("start", "-n", "2")
    assert plain.returncode == 0 and wrong.returncode == 2, (plain, wrong)
    assert "takes no arguments (start -n 2)" in wrong.stderr, wrong.stderr
    # the command a newcomer most likely meant, where it said only to give them to one
    assert "did you mean `python -m minipar.launcher start -n 2`?" in wrong.stderr
    spaced = run("top", "--profile-dir", "my profile")
    assert spaced.returncode == 2 and ("did you mean `python -m minipar.top --profile-dir "
                                       "'my profile'`?") in spaced.stderr, spaced.stderr
    assert "give them to one of its commands" in run("--once").stderr
    for out in (plain.stdout, wrong.stderr):
        for command in ("minipar.controller", "minipar.engine", "minipar.launcher start",
                        "minipar.top"):
            assert f"python -m {command}" in out, out


def test_negative_engine_counts_are_refused(pids, tmp_path):
    with pytest.raises(ValueError, match="n=-1"):
        Cluster(n=-1)
    with pytest.raises(ValueError, match="n=-2"):
        Cluster(n=1, profile_dir=str(tmp_path / "q")).start_engines_sync(-2)
    prof = str(tmp_path / "p")
    out = cli("start", "-n", "-3", "--profile-dir", prof, "--daemonize", timeout=60)
    try:
        assert out.returncode == 2, out.stdout + out.stderr
        assert "argument -n/--n: '-3' is not a number of engines" in out.stderr, out.stderr
    finally:
        if out.returncode == 0:
            cli("stop", "--all", "--profile-dir", prof)


def test_a_crashed_engine_leaves_its_last_words_in_its_log(pids, tmp_path):
    cluster = Cluster(n=2, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        (engines,) = cluster.engines.values()
        by_pid = {child.pid: child for child in engines._children}
        segv, exit3 = (by_pid[pid] for pid in rc[:2].apply_sync(os.getpid))
        rc[0].apply_async(lambda: __import__("ctypes").string_at(0))
        died = rc[1].apply_async(lambda: __import__("os")._exit(3))
        assert segv.wait(30) and exit3.wait(30)
        # the launcher, the engine's parent, wrote how it ended: its EngineError quotes it
        with pytest.raises(errors.EngineError, match=f"(?s)engine pid {exit3.pid} ended: "
                           "exit code 3"):
            died.get(30)
        text = segv.get_output()
        assert "Fatal Python error: Segmentation fault" in text, text
        assert "ended: killed by signal SIGSEGV" in text, text
        text = exit3.get_output()
        assert f"engine pid {exit3.pid} ended: exit code 3" in text, text


def _fork_a_sleeper(marker):
    """A careless task: it forks a child that sleeps for ever, and returns the child's pid.
    The child writes `marker` if SIGTERM ends it (`marker`.ready once it would)."""
    pid = os.fork()
    if pid == 0:
        def stopped(*_):
            open(marker, "w").close()
            os._exit(0)

        signal.signal(signal.SIGTERM, stopped)
        open(marker + ".ready", "w").close()
        while True:
            time.sleep(1000)
    return pid


def test_what_a_task_forked_is_stopped_with_its_engines(pids, tmp_path):
    """A child that a task forked and left running outlived the cluster when its engine
    had stopped first (rc.shutdown), and otherwise waited out the grace period and got
    SIGKILL. A Cluster stopping its local engines now sends SIGTERM to what is left in
    each engine's session (its own: see LocalProcessLauncher.start) with the engines."""
    cluster = Cluster(n=2, controller_args=CTL_ARGS)
    markers = [str(tmp_path / f"child{i}") for i in range(2)]
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        engines = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
        children = [rc[eid].apply_sync(_fork_a_sleeper, m) for eid, m in zip(engines, markers)]
        pids.add(*children)
        wait_until(lambda: all(os.path.exists(m + ".ready") for m in markers), 30,
                   "the forked children to start")
        first = next(iter(engines))   # children[0] is its
        rc.shutdown(targets=first, block=True)   # its child is left behind, orphaned
        wait_until(lambda: not alive(engines[first]), 30, "the first engine to stop")
        assert alive(children[0])
    assert not [c for c in children if alive(c)], "a forked child outlived the cluster"
    assert all(os.path.exists(m) for m in markers), "SIGKILL, not SIGTERM, ended a child"


# ---------------------------------------------------------------- the launcher contract


def test_engine_set_launcher_contract(pids, tmp_path):
    with Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS) as rc:
        es = LocalEngineSetLauncher(profile_dir=str(tmp_path / "p"), cluster_id="c1")
        assert es.state == BEFORE
        stops = []
        es.on_stop(stops.append)
        es.start(2)
        pids.add(*es.pids())
        assert es.state == RUNNING and es.n == 2 and len(es.pids()) == 2
        rc.wait_for_engines(3, 60)
        assert es.get_output().count("--- engine pid") == 2
        d = json.loads(json.dumps(es.to_dict()))  # JSON-able
        again = launcher.launcher_from_dict(d)
        assert again.state == RUNNING and sorted(again.pids()) == sorted(es.pids())
        again_stops = []
        again.on_stop(again_stops.append)
        engine_pids = es.pids()
        assert again.stop() is not None  # stopped through the rebuilt launcher
        assert not any(alive(p) for p in engine_pids)
        assert es.wait(30) and es.state == AFTER  # the original's watcher noticed
        assert stops and stops[0]["exit_codes"]
        assert again_stops
        late = []
        es.on_stop(late.append)  # after the end: called at once
        assert late == [es.stop_data]
        with pytest.raises(NotRunning):
            launcher.launcher_from_dict(d)
        with pytest.raises(launcher.LauncherError, match="cannot start"):
            es.start(1)


def test_pid_reuse_is_not_mistaken_for_the_process():
    d = {"class": "minipar.launcher.LocalEngineLauncher",
         "options": {"profile_dir": "/tmp/x"},
         "state": {"state": RUNNING, "pid": os.getpid(), "pid_start": -1}}
    with pytest.raises(NotRunning):
        launcher.launcher_from_dict(d)


def test_stop_escalates_to_sigkill_and_reaps_descendants(pids, tmp_path):
    class Stubborn(launcher.LocalProcessLauncher):
        role = "stubborn"

        def find_args(self):
            # ignores SIGTERM and has a child in its own process group that ignores it too
            return [sys.executable, "-c", textwrap.dedent("""
                import os, signal, subprocess, sys, time
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                child = subprocess.Popen([sys.executable, "-c",
                    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                    "time.sleep(600)"],
                    start_new_session=True)
                print("child", child.pid, flush=True)
                time.sleep(600)
            """)]

    p = Stubborn(profile_dir=str(tmp_path), stop_timeout=1)
    p.start()
    pids.add(p.pid)
    wait_until(lambda: "child" in p.get_output(), 30, "the stubborn process's child pid")
    child = int(p.get_output().split()[1])
    pids.add(child)
    p.stop()
    assert p.state == AFTER
    assert not alive(p.pid) and not alive(child)


# ---------------------------------------------------------------- finding launchers


def test_find_launcher_class_by_every_name(tmp_path, monkeypatch):
    cls = launcher.MPIEngineSetLauncher
    assert find_launcher_class("mpi", "engine") is cls
    assert find_launcher_class("MPI", "engine") is cls
    assert find_launcher_class("MPIEngineSetLauncher", "engine") is cls
    assert find_launcher_class("minipar.launcher.MPIEngineSetLauncher", "engine") is cls
    assert find_launcher_class(cls, "engine") is cls
    assert find_launcher_class("slurm", "controller") is launcher.SlurmControllerLauncher
    with pytest.raises(launcher.LauncherError, match="unknown engine launcher"):
        find_launcher_class("nope", "engine")
    # a third party's launcher registered through the entry-point group
    (tmp_path / "mylaunch.py").write_text(
        "from minipar.launcher import LocalEngineSetLauncher\n"
        "class Mine(LocalEngineSetLauncher):\n    pass\n")
    dist = tmp_path / "mylaunch-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylaunch\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[minipar.engine_launchers]\nmine = mylaunch:Mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_launcher_class("mine", "engine").__name__ == "Mine"



def test_moved_launchers_keep_their_old_names_without_an_import_cycle():
    from minipar import batch, ssh

    for module, name in ((batch, "SlurmEngineSetLauncher"), (batch, "LSFLauncher"),
                         (ssh, "SSHEngineSetLauncher")):
        assert getattr(launcher, name) is getattr(module, name)
        # the class path in a cluster file written before the move
        assert find_launcher_class(f"minipar.launcher.{name}", "engine") is getattr(module, name)
    assert find_launcher_class("ssh", "controller") is ssh.SSHControllerLauncher
    assert launcher._class_path(batch.PBSEngineSetLauncher) == "minipar.batch.PBSEngineSetLauncher"
    # importing the launcher imports neither (they import it), and either imports first
    for first in ("minipar.launcher", "minipar.batch", "minipar.ssh"):
        out = subprocess.run(
            [sys.executable, "-c", f"import sys, {first}; from minipar import launcher; "
             "print(sorted(m for m in sys.modules if m in ('minipar.batch', 'minipar.ssh')), "
             "launcher.find_launcher_class('sge', 'engine').__module__, sep='|')"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT))
        assert out.returncode == 0, out.stderr
        loaded = {"minipar.launcher": "[]", "minipar.batch": "['minipar.batch']",
                  "minipar.ssh": "['minipar.ssh']"}[first]
        assert out.stdout == f"{loaded}|minipar.batch\n", out.stdout


# ---------------------------------------------------------------- cluster file and CLI


def test_cluster_file_from_file_and_cli_list_stop(pids):
    cluster = Cluster(n=2, controller_args=CTL_ARGS, shutdown_atexit=False)
    rc = cluster.start_and_connect_sync()
    try:
        pids.add_cluster(cluster, rc)
        again = Cluster.from_file(cluster.cluster_file)
        assert again.cluster_id == cluster.cluster_id
        assert again.controller.pid == cluster.controller.pid
        assert sum(e.n for e in again.engines.values()) == 2
        out = cli("list")
        assert out.returncode == 0, out.stderr
        assert cluster.cluster_id in out.stdout and f"pid {cluster.controller.pid}" in out.stdout
        assert "(by hand)" not in out.stdout   # its controller is the cluster's, listed once
        out = cli("stop", "--cluster-id", cluster.cluster_id)
        assert out.returncode == 0, out.stderr
        assert not [p for p in pids.pids if alive(p)]
        assert cluster.controller.wait(10)  # this process's watcher saw it end
        assert cluster.cluster_id not in cli("list").stdout
    finally:
        cluster.stop_cluster_sync()


def test_cli_start_daemonize_engines_stop(pids, tmp_path):
    prof = str(tmp_path / "p")
    out = cli("start", "-n", "2", "--profile-dir", prof, "--cluster-id", "cli1",
              "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    try:
        assert out.returncode == 0, out.stderr
        assert "cluster cli1 ready: 2 engines" in out.stdout
        stop = re.search(r"stop it with `python (-m minipar.launcher stop [^`]+)`", out.stdout)
        assert stop and f"connect with minipar.Client(profile_dir={prof!r})" in out.stdout, \
            out.stdout
        c = Cluster.from_file(profile_dir=prof)
        pids.add_cluster(c)
        # no --owner: it outlives `start`, which has exited
        assert not [a for a in c.controller.args if a.startswith("--owner")]
        out = cli("engines", "-n", "1", "--profile-dir", prof)
        assert out.returncode == 0, out.stderr
        assert "cluster cli1: 3 engines" in out.stdout
        c = Cluster.from_file(profile_dir=prof)
        pids.add_cluster(c)
        assert len(pids.pids) == 4
        assert "cli1" in cli("list", "--profile-dir", prof).stdout
        stopped = subprocess.run([sys.executable, *shlex.split(stop.group(1))], env=_env(),
                                 cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr   # the printed fix stops it all
        assert not pids.wait_gone()
    finally:
        out = cli("stop", "--all", "--profile-dir", prof)
    # nothing left to stop: said (it printed nothing), status 0 as the stop was done
    assert (out.returncode, out.stdout) == (0, f"no cluster to stop in {prof}; see `python -m "
                                               "minipar.launcher list`\n"), out
    assert not [p for p in pids.pids if alive(p)]
    assert "cli1" not in cli("list", "--profile-dir", prof).stdout


def test_cli_engines_without_n_starts_and_waits_for_one_per_cpu(pids, tmp_path):
    """`launcher engines` with no -n starts one engine per CPU, as its --help says (and as
    ipcluster engines does), and waits for as many. Before, it started the cluster's n
    (none here) and waited for one per CPU: a minute, then an error and exit status 1."""
    prof = str(tmp_path / "p")
    out = cli("start", "-n", "0", "--profile-dir", prof, "--cluster-id", "cpus",
              "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    try:
        assert out.returncode == 0, out.stderr
        pids.add_cluster(Cluster.from_file(profile_dir=prof))
        out = cli("engines", "-n", "1", "--profile-dir", prof)
        assert out.stdout == "cluster cpus: 1 engine\n", out   # it said "1 engines"
        out = cli("engines", "--profile-dir", prof)
        pids.add_cluster(Cluster.from_file(profile_dir=prof))
        assert out.returncode == 0, out.stderr
        assert f"cluster cpus: {1 + (os.cpu_count() or 1)} engines" in out.stdout, out.stdout
    finally:
        cli("stop", "--all", "--profile-dir", prof)
    assert not pids.wait_gone()


class SleepingEngines(launcher.LocalEngineSetLauncher):
    """'Engines' that never register, each a sleep: `launcher engines` waits for them."""

    def _new_child(self):
        child = super()._new_child()
        child.find_args = lambda: [sys.executable, "-c", "import time; time.sleep(600)"]
        return child


def test_ctrl_c_in_cli_engines_stops_the_engines_it_started(pids, tmp_path):
    """A Ctrl-C while `launcher engines -n 2` waits for its engines stops those two, says so
    and exits 130, as ipcluster engines in the foreground does; the cluster's others run
    on. They were left running (in the cluster file: only `stop` stopped them)."""
    prof = str(tmp_path / "p")
    out = cli("start", "-n", "1", "--profile-dir", prof, "--controller-args",
              " ".join(CTL_ARGS), "--daemonize")
    try:
        assert out.returncode == 0, out.stderr
        first = Cluster.from_file(profile_dir=prof)
        pids.add_cluster(first)
        before = {p for e in first.engines.values() for p in e.pids()}
        cmd = subprocess.Popen([sys.executable, "-m", "minipar.launcher", "engines", "-n", "2",
                                "--profile-dir", prof, "--engines",
                                "tests.test_launcher.SleepingEngines"],
                               env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pids.add(cmd.pid)

        def started():
            now = Cluster.from_file(profile_dir=prof).engines.values()
            return {p for e in now for p in e.pids()} - before

        new = wait_until(lambda: len(started()) == 2 and started(), 60, "the engines to start")
        pids.add(*new)
        cmd.send_signal(signal.SIGINT)   # Ctrl-C, while it waits for them to register
        out, err = cmd.communicate(timeout=60)
        assert cmd.returncode == 130 and "Traceback" not in err, err
        assert err == "stopping the 2 engine(s) it started\ninterrupted\n", err
        wait_until(lambda: not any(alive(p) for p in new), 30, "its engines to be stopped")
        assert all(alive(p) for p in before)   # the cluster's own run on
        assert not started() and len(Cluster.from_file(profile_dir=prof).engines) == 1
    finally:
        cli("stop", "--all", "--profile-dir", prof)
    assert not pids.wait_gone()

def test_cli_args_for_the_controller_and_engines_may_follow_a_space(pids, tmp_path):
    # argparse alone refuses `--controller-args --x` (a value starting with '-'): the
    # value must reach the controller, whose own argparse names it
    out = cli("start", "-n", "0", "--profile-dir", str(tmp_path / "p"), "--timeout", "30",
              "--engine-args", "--log-level=DEBUG", "--controller-args", "--no-such-flag",
              "--daemonize")
    assert out.returncode == 1, out.stderr
    assert "the controller exited" in out.stderr
    assert "unrecognized arguments: --no-such-flag" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_cli_foreground_start_stops_on_sigint(pids, tmp_path, sig):
    """Ctrl-C stops a cluster started in the foreground. So does SIGHUP (its terminal
    closed), which ended the launcher at once: its controller, told --owner, stopped the
    engines, but its cluster file was left (stale, in `list` until `clean`)."""
    prof = str(tmp_path / "p")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "minipar.launcher", "start", "-n", "1",
                          "--profile-dir", prof, "--controller-args", " ".join(CTL_ARGS)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         stdin=subprocess.DEVNULL)
    pids.add(p.pid)
    try:
        line = p.stdout.readline()
        assert "ready: 1 engine;" in line, line + p.stdout.read()   # not "1 engines"
        line = p.stdout.readline()
        assert f"connect with minipar.Client(profile_dir={prof!r}); stop it with Ctrl-C" \
            in line, line
        pids.add_cluster(Cluster.from_file(profile_dir=prof))
        p.send_signal(sig)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not [x for x in pids.pids if alive(x)]
    assert launcher.cluster_files(profile_dir=prof) == []


def test_cli_foreground_start_says_why_when_its_controller_is_killed(pids, tmp_path):
    """A foreground `start` whose controller was killed says so as it stops the engines,
    and exits 1. Before, it said only "stopping cluster X" and exited 0, as after Ctrl-C."""
    prof = str(tmp_path / "p")
    p = subprocess.Popen([sys.executable, "-m", "minipar.launcher", "start", "-n", "1",
                          "--profile-dir", prof, "--cluster-id", "k", "--controller-args",
                          " ".join(CTL_ARGS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=_env(), stdin=subprocess.DEVNULL)
    pids.add(p.pid)
    try:
        assert "ready: 1 engine;" in p.stdout.readline()
        cluster = Cluster.from_file(profile_dir=prof)
        pids.add_cluster(cluster)
        os.kill(cluster.controller.pid, signal.SIGKILL)
        out = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, out
    assert "stopping cluster k: its controller ended, killed by signal SIGKILL\n" in out, out
    assert not pids.wait_gone()


def test_cli_clean_removes_files_of_dead_clusters(pids, minipar_dir):
    cluster = Cluster(n=1, controller_args=CTL_ARGS, shutdown_atexit=False)
    rc = cluster.start_and_connect_sync()
    pids.add_cluster(cluster, rc)
    path = cluster.cluster_file
    for p in list(pids.pids):
        os.kill(p, signal.SIGKILL)
    assert not pids.wait_gone()
    assert os.path.exists(path)
    out = cli("clean")
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(path)
    cluster.stop_cluster_sync()


@pytest.mark.parametrize("content", ["[]", '{"cluster": 5}'])
def test_a_cluster_file_of_another_shape_is_warned_about_not_a_traceback(pids, minipar_dir,
                                                                        content):
    """A cluster file that is JSON but not of a cluster's shape (edited, or another
    tool's in the security folder) ended list, stop and clean in a TypeError or KeyError
    traceback; as one cut short, it is now named as unreadable, and clean removes it."""
    cluster = Cluster(n=0, controller_args=CTL_ARGS, shutdown_atexit=False)
    cluster.start_cluster_sync()
    try:
        pids.add_cluster(cluster)
        good = open(cluster.cluster_file).read()
        with open(cluster.cluster_file, "w") as f:
            f.write(content)
        for command in ("list", "stop"):
            out = cli(command)
            assert "Traceback" not in out.stderr, out.stderr
        assert f"unreadable cluster file {cluster.cluster_file}" in cli("list").stderr
        out = cli("clean")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert f"removed unreadable cluster file {cluster.cluster_file}" in out.stdout
        with open(cluster.cluster_file, "w") as f:
            f.write(good)
    finally:
        cluster.stop_cluster_sync()


def test_a_cluster_of_a_scripts_own_launcher_is_listed(pids, minipar_dir):
    """A Cluster checks its launcher names when made, but not one from_file makes: the
    launcher class of the script that started it (``__main__.Mine``), which `list` cannot
    import, ended `list` with "cannot import launcher" instead of listing the cluster."""
    cluster = Cluster(n=0, controller_args=CTL_ARGS, shutdown_atexit=False)
    cluster.start_cluster_sync()
    try:
        pids.add_cluster(cluster)
        with open(cluster.cluster_file) as f:
            d = json.load(f)
        d["cluster"]["engines"] = "__main__.Mine"
        with open(cluster.cluster_file, "w") as f:
            json.dump(d, f)
        out = cli("list")
        assert out.returncode == 0 and cluster.cluster_id in out.stdout, out.stderr
        assert "unreadable" not in out.stderr, out.stderr
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []


def test_cli_clean_says_when_there_is_nothing_to_clean(minipar_dir, tmp_path):
    prof = str(tmp_path / "p")
    for where, args in ((str(minipar_dir), []), (prof, ["--profile-dir", prof])):
        out = cli("clean", *args)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"nothing to clean: no files of stopped clusters in {where}\n"


# ---------------------------------------------------------------- LSF (no free install)

BJOBS_RUNNING = """\
JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
1234    user1   RUN   normal     hostA       hostB       minipar-engines[1] Oct 22 10:05
1234    user1   PEND  normal     hostA                   minipar-engines[2] Oct 22 10:05
"""
BJOBS_PENDING = """\
JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
1234    user1   PEND  normal     hostA                   minipar-engines[1] Oct 22 10:05
"""
BJOBS_DONE = """\
JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME
1234    user1   DONE  normal     hostA       hostB       minipar-engines[1] Oct 22 10:05
"""


def test_lsf_script_and_documented_output(tmp_path):
    es = launcher.LSFEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="abc",
                                       queue="short", program_args=["--log-level", "DEBUG"])
    es.n = 4
    es.output_file = str(tmp_path / "out.log")
    script = es.render()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "#BSUB -q short" in lines
    assert "#BSUB -J minipar-engines-abc[1-4]" in lines
    assert f"#BSUB -o {tmp_path}/out.log" in lines
    assert lines[-1].endswith(f"-m minipar.engine --profile-dir {tmp_path} --log-level DEBUG")
    assert es.submit_stdin and es.submit_command == ["bsub"]
    assert es.parse_job_id("Job <1234> is submitted to queue <short>.") == "1234"
    parse = launcher.LSFLauncher.parse_status
    assert parse(0, BJOBS_RUNNING, "1234") == "running"
    assert parse(0, BJOBS_PENDING, "1234") == "pending"
    assert parse(0, BJOBS_DONE, "1234") == "done"
    assert parse(255, "Job <1234> is not found\n", "1234") == "done"


def test_user_template_string_and_file(tmp_path):
    t = "#!/bin/sh\n#PBS -q {queue}\n#PBS -l nodes={n}\ncd {profile_dir}\n{program_and_args}\n"
    es = launcher.PBSEngineSetLauncher(profile_dir=str(tmp_path), queue="fast",
                                       batch_template=t)
    es.n = 8
    text = es.render()
    assert "#PBS -q fast\n#PBS -l nodes=8\n" in text and text.count("#PBS -q") == 1
    f = tmp_path / "tmpl"
    f.write_text("#!/bin/sh\n{program_and_args} # {cluster_id}\n")
    es = launcher.SGEEngineSetLauncher(profile_dir=str(tmp_path), cluster_id="zz",
                                       batch_template_file=str(f), queue="q1")
    es.n = 1
    text = es.render()
    assert text.splitlines()[1] == "#$ -q q1" and text.rstrip().endswith("# zz")


def test_documented_status_output_of_pbs_sge_slurm():
    qstat_pbs = ("Job id                    Name             User            Time Use S Queue\n"
                 "------------------------- ---------------- --------------- -------- - -----\n"
                 "5.server                  minipar-engines  root            00:00:00 R batch\n")
    assert launcher.PBSLauncher.parse_status(0, qstat_pbs, "5.server") == "running"
    assert launcher.PBSLauncher.parse_status(0, qstat_pbs.replace(" R ", " Q "), "5") == "pending"
    assert launcher.PBSLauncher.parse_status(0, qstat_pbs.replace(" R ", " C "), "5") == "done"
    assert launcher.PBSLauncher.parse_status(153, "qstat: Unknown Job Id 5.server", "5") == "done"
    qstat_sge = ("job-ID  prior   name       user         state submit/start at     queue     "
                 "slots ja-task-ID\n" + "-" * 60 + "\n"
                 "      2 0.50000 mt         root         r     11/22/2026 00:18:22 all.q@vm  1 1\n"
                 "      2 0.50000 mt         root         qw    11/22/2026 00:18:22  1 2\n")
    assert launcher.SGELauncher.parse_status(0, qstat_sge, "2") == "running"
    assert launcher.SGELauncher.parse_status(0, qstat_sge, "3") == "done"
    assert launcher.SGELauncher.parse_status(
        0, qstat_sge.replace(" r  ", " qw "), "2") == "pending"
    assert launcher.SGELauncher.parse_status(0, qstat_sge.replace(" qw ", " Eqw"), "2") == "error"
    assert launcher.SGELauncher().parse_job_id(
        'Your job-array 2.1-2:1 ("mt") has been submitted') == "2"
    assert launcher.SlurmLauncher.parse_status(0, "RUNNING\nPENDING\n", "1") == "running"
    assert launcher.SlurmLauncher.parse_status(0, "", "1") == "done"
    assert launcher.SlurmLauncher.parse_status(1, "", "1") == "done"


# ---------------------------------------------------------------- ports


def _free_ports(n):
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_controller_ports_range_list_in_use_and_none_left(pids, tmp_path):
    from minipar.controller import NoPortsLeftError, PortInUseError, parse_ports

    assert parse_ports("10101-10103,10110") == [10101, 10102, 10103, 10110]
    base = _free_ports(1)[0]
    # a range: every socket gets a port from it
    spec = f"{base}-{base + 40}"
    c = Cluster(n=1, profile_dir=str(tmp_path / "a"), controller_args=[*CTL_ARGS, "--ports", spec])
    with c as rc:
        pids.add_cluster(c, rc)
        used = json.load(open(c.client_file))["ports"]
        assert len(used) == 5 and all(base <= p <= base + 40 for p in used.values())
        # the same single port again: PortInUseError, with the controller's output
        taken = used["engine"]
        c2 = Cluster(n=1, profile_dir=str(tmp_path / "b"), controller_args=["--ports", str(taken)])
        with pytest.raises(PortInUseError, match=str(taken)):
            c2.start_controller_sync()
        pids.add(c2.controller.pid)
        # a list whose ports are all taken: NoPortsLeftError
        busy = ",".join(str(p) for p in list(used.values())[:3])
        c3 = Cluster(n=1, profile_dir=str(tmp_path / "c"), controller_args=["--ports", busy])
        with pytest.raises(NoPortsLeftError, match="wider --ports"):
            c3.start_controller_sync()
        pids.add(c3.controller.pid)


@pytest.mark.parametrize("args, says", [
    (["--port", "99999"], "port 99999 is not a TCP port"),
    (["--ports", "99999"], "'99999' is not a port or a range of ports within 1..65535"),
    (["--ports", "abc"], "'abc' is not a port or a range of ports"),
    (["--ports", "10110-10101"], "'10110-10101' is not a port or a range of ports"),
    (["--max-message-size", "10"], "max message size 10 is too small"),
    (["--record-limit", "-1"], "record limit -1 is negative: give how many to keep"),
    (["--record-bytes", "-1"], "record bytes -1 is negative: give how many to keep")])
def test_controller_options_out_of_range_are_refused_in_one_line(pids, tmp_path, args, says):
    """A port past 65535 was dropped for a random one and a tiny --max-message-size let
    no engine register nor client connect, both without a word; a --ports that is not
    ports ended in a ValueError or IndexError traceback; a negative --record-limit or
    --record-bytes (-1 taken for no limit) culled every record as it finished, so
    get_result of any finished task failed. Each is now a usage error."""
    out = _second_controller(str(tmp_path / "p"), *args)
    if out.returncode == 0 or out.returncode is None:
        pids.add(json.load(open(tmp_path / "p" / "security" / protocol.CLIENT_FILE))["pid"])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "python -m minipar.controller: error: " in out.stderr and says in out.stderr


def test_controller_on_an_address_not_of_this_machine_says_so(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of the machine under test
    for port in ([], ["--port", str(_free_ports(1)[0])]):
        out = _second_controller(str(tmp_path / "p"), "--ip", "192.0.2.1", *port)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and "choose another --port" not in out.stderr
        assert "cannot listen on 192.0.2.1" in out.stderr
        assert "give --ip an address of this machine" in out.stderr


# ---------------------------------------------------------------- many engines


def test_fifty_local_engines_all_register(pids):
    cluster = Cluster(n=50, controller_args=CTL_ARGS, timeout=180)
    t0 = time.monotonic()
    with cluster as rc:
        ready = time.monotonic() - t0
        pids.add_cluster(cluster, rc)
        assert sorted(rc.ids) == list(range(50))  # none lost, none registered twice
        assert len(set(rc[:].apply_sync(os.getpid))) == 50
        print(f"50 engines ready in {ready:.1f} s")
    assert len(pids.pids) == 51
    assert not [p for p in pids.pids if alive(p)]


@pytest.mark.parametrize("role, args", [("controller", ["--profile-dir", "p"]),
                                        ("engine", ["--profile-dir", "p"]),
                                        ("launcher", ["list", "--profile-dir", "p"])])
def test_a_log_level_that_is_not_one_is_a_usage_error(tmp_path, role, args):
    """--log-level bogus (or MINIPAR_LOG_LEVEL=bogus, each entry point's default) ended
    the controller, an engine and the launcher in a traceback from logging; it is now a
    usage error naming the levels (and $MINIPAR_LOG_LEVEL when it came from there), and a
    level in lower case is taken as before."""
    for given, env in ((["--log-level", "bogus"], {}), ([], {"MINIPAR_LOG_LEVEL": "bogus"})):
        out = subprocess.run([sys.executable, "-m", f"minipar.{role}", *given, *args],
                             env={**_env(), "MINIPAR_DIR": str(tmp_path), **env},
                             cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "'bogus' is not a log level" in out.stderr and "give DEBUG, INFO, WARNING, " \
               "ERROR or CRITICAL" in out.stderr, out.stderr
        # from the environment, the error named only --log-level, which was not given
        assert ("$MINIPAR_LOG_LEVEL is set to it" in out.stderr) == bool(env), out.stderr
    out = subprocess.run([sys.executable, "-m", "minipar.launcher", "--log-level", "debug",
                          "list", "--profile-dir", "p"], env=_env(), cwd=tmp_path,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_start_timeout_that_is_no_positive_number_is_a_usage_error(tmp_path):
    """`start --timeout -1` (or 0) started a controller and failed "within -1.0 s", --timeout
    nan said "or None for no limit" (the Python API's words) and --timeout inf ended in a
    traceback; each is now a usage error naming the option and what it takes, nothing
    started (as top's --wait, which shares its type)."""
    for given in ("-1", "0", "nan", "inf", "soon"):
        out = subprocess.run([sys.executable, "-m", "minipar.launcher", "start", "-n", "1",
                              "--timeout", given], env={**_env(), "MINIPAR_DIR": str(tmp_path)},
                             cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"argument --timeout: '{given}' is not a number of seconds (finite, more " \
               "than 0)" in out.stderr, out.stderr
    assert not list(tmp_path.rglob("*.json")), "a cluster was started"

# A sitecustomize that sends this process a SIGINT (a Ctrl-C) as it starts to import the
# module named by $CTRL_C_AT: one of an entry point's first imports, before its main().
_CTRL_C_AT_IMPORT = """
import os, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("CTRL_C_AT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("role", ["launcher", "controller", "engine", "top"])
def test_a_ctrl_c_while_an_entry_point_imports_says_interrupted(tmp_path, role):
    """A Ctrl-C in the first third of a second of `python -m minipar.<command>`, as its
    modules import, printed Python's KeyboardInterrupt traceback; it now says
    "interrupted" and ends by SIGINT (130 in a shell), as a Ctrl-C in its main() does.
    MINIPAR_DEBUG=1 keeps the traceback, and a program of its own is left alone."""
    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_IMPORT)
    env = {**_env(), "MINIPAR_DIR": str(tmp_path), "CTRL_C_AT": "zmq",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{_env()['PYTHONPATH']}"}
    for args, debug in ((["-m", f"minipar.{role}"], ""), (["-m", f"minipar.{role}"], "1"),
                        (["-c", "import minipar.protocol"], "")):
        out = subprocess.run([sys.executable, *args, "--help"],
                             env={**env, "MINIPAR_DEBUG": debug}, cwd=tmp_path, text=True,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert out.returncode in (130, -signal.SIGINT), out
        quiet = args[0] == "-m" and not debug
        assert (out.stderr == "interrupted\n") == quiet, out.stderr
        assert ("Traceback" in out.stderr) != quiet, out.stderr

def test_a_client_of_a_cluster_not_started_says_to_start_the_cluster(pids, tmp_path):
    """Not `python -m minipar.controller`, which a Cluster user has no use for."""
    cluster = Cluster(n=1, profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS)
    for _ in range(2):   # before the start, then once stopped
        with pytest.raises(errors.ConnectionFileError) as e:
            cluster.connect_client_sync()
        assert "start_cluster_sync()" in str(e.value) and "minipar.controller" not in str(e.value)
        with cluster as rc:
            pids.add_cluster(cluster, rc)


@pytest.mark.parametrize("typo, says", [("{nn}", "{nn}"), ("{queue", "expected '}'"),
                                        ("${HOME}", "{HOME}")])
def test_a_batch_template_with_a_typo_names_it_and_the_names_it_may_use(pids, tmp_path, typo,
                                                                       says):
    """Found before anything is submitted, so no batch system is needed."""
    cluster = Cluster(n=1, engines="slurm", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS,
                      engine_options={"batch_template": f"#!/bin/sh\n#SBATCH -n {typo}\n"})
    with pytest.raises(launcher.LauncherError) as e:
        cluster.start_cluster_sync()
    pids.add_cluster(cluster)
    assert says in str(e.value) and "{program_and_args}" in str(e.value), str(e.value)
    assert cluster.controller.state == AFTER


def test_cli_clean_leaves_a_cluster_started_on_another_host(pids, minipar_dir):
    """A profile folder shared between hosts (an NFS home): the file of a cluster started
    on another host names that host's pids, which read as gone here. clean leaves it, and
    its profile folder, saying where to run it, and list does not call it stale (both once
    removed it, and clean now stops what is left: the engine files its ssh sets sent)."""
    cluster = Cluster(n=1, controller_args=CTL_ARGS, shutdown_atexit=False)
    cluster.start_cluster_sync()
    pids.add_cluster(cluster)
    d, path = cluster.to_dict(), cluster.cluster_file
    cluster.stop_cluster_sync()   # its pids gone: as another host's read here
    assert not pids.wait_gone()
    d["cluster"]["host"] = "another-host"
    os.makedirs(os.path.dirname(path))
    protocol.write_connection_file(path, d)   # as the Cluster on that host wrote it
    out = cli("list")
    assert "stale" not in out.stdout + out.stderr and "on another-host" in out.stdout, out
    out = cli("clean")
    assert out.returncode == 0 and os.path.exists(path), out
    assert f"left cluster {cluster.cluster_id}" in out.stdout and "another-host" in out.stdout


def test_a_failed_bsub_is_said_as_it_ran_with_the_script_on_its_stdin(tmp_path):
    """LSF's bsub reads #BSUB lines only from a script on its stdin: the error said
    ``bsub <script> failed``, a command that, run by hand, ignores them."""
    bsub = tmp_path / "bsub"
    bsub.write_text("#!/bin/sh\ncat > /dev/null\necho 'Bad queue name' >&2\nexit 255\n")
    bsub.chmod(0o755)
    es = launcher.LSFEngineSetLauncher(profile_dir=str(tmp_path), submit_command=[str(bsub)])
    with pytest.raises(launcher.LauncherError) as e:
        es.start(2)
    assert f"{bsub} < {es.batch_file} failed (255): Bad queue name" in str(e.value)


LOCAL_SSH = "#!/bin/sh\nwhile [ \"$#\" -gt 2 ]; do shift; done\nexec sh -c \"$2\"\n"   # HOST CMD
LOCAL_SCP = "#!/bin/sh\nfor a; do case \"$a\" in *:*) src=\"${a#*:}\";; esac; done\n" \
            "for last; do :; done\nexec cp \"$src\" \"$last\"\n"   # HOST:SRC DST, copied here


def test_an_ssh_controller_that_fails_leaves_no_fetched_copy_of_a_stale_file(tmp_path):
    """The controller's files are fetched to a temporary name, then renamed once they hold
    its pid. One that never starts left the copy of a previous controller's file (its key
    too) in the security folder, one more at each try. ssh and scp: local stand-ins."""
    for name, text in (("ssh", LOCAL_SSH), ("scp", LOCAL_SCP)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    remote = tmp_path / "remote"
    (remote / "security").mkdir(parents=True)
    (remote / "security" / protocol.CLIENT_FILE).write_text(json.dumps({"pid": 1, "key": "k"}))
    c = launcher.find_launcher_class("ssh", "controller")(
        hostname="h", ssh_cmd=[str(tmp_path / "ssh")], scp_cmd=[str(tmp_path / "scp")],
        profile_dir=str(tmp_path / "local"), remote_profile_dir=str(remote),
        program_args=["--no-such-flag"])
    with pytest.raises(ControllerStartError, match=r"(?s)no minipar-client.json .*--no-such"):
        c.start()
    assert os.listdir(tmp_path / "local" / "security") == []


def test_a_batch_watcher_that_cannot_run_the_status_command_says_so_and_watches_on(
        tmp_path, caplog):
    """The watcher asks the status command whether the job has ended. One it could not run
    (not on PATH: a LauncherError) ended its thread with a traceback, so the job's end was
    never noticed, even once the command was there. Now it says why at each try, as for
    the command's other failures, and notices the end once it can ask."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 42\n")
    sbatch.chmod(0o755)
    es = launcher.SlurmEngineSetLauncher(
        profile_dir=str(tmp_path), submit_command=[str(sbatch)], delete_command=["true"],
        status_command=["minipar-no-such-squeue"], poll_interval=0.05)
    es.start(1)
    try:
        wait_until(lambda: "cannot run 'minipar-no-such-squeue'" in caplog.text, 10,
                   "the watcher's warning")
        assert es._watcher.is_alive() and es.state == RUNNING
    finally:
        es.status_command = ["false"]   # squeue's exit status for a job it no longer lists
    assert es.wait(10) and es.state == AFTER and es.stop_data == {"job_id": "42"}


def test_a_batch_stop_without_its_status_command_deletes_the_job_and_ends(tmp_path, caplog):
    """stop() deletes the job, then asks the status command until it has ended. One it
    could not run (not on PATH) raised out of stop(), the launcher left running; now the
    job is deleted, the launcher ends, and the log says what could not be checked."""
    sbatch, scancel = tmp_path / "sbatch", tmp_path / "scancel"
    sbatch.write_text("#!/bin/sh\necho 42\n")
    scancel.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'deleted'}\n")
    for f in (sbatch, scancel):
        f.chmod(0o755)
    es = launcher.SlurmEngineSetLauncher(
        profile_dir=str(tmp_path), submit_command=[str(sbatch)], delete_command=[str(scancel)],
        status_command=["minipar-no-such-squeue"])
    es.start(1)
    assert es.stop() == {"job_id": "42"} and es.state == AFTER
    assert (tmp_path / "deleted").read_text() == "42\n"
    assert "could not ask whether it has ended" in caplog.text
    assert "cannot run 'minipar-no-such-squeue'" in caplog.text
    assert "to check, run minipar-no-such-squeue 42 on a machine where slurm's commands are " \
           "installed" in caplog.text   # not the missing command itself, as if it were the fix
    assert not es._watcher.is_alive()


def test_a_batch_stop_without_its_delete_command_ends_and_says_what_to_run(tmp_path, caplog):
    """Run where the delete command is not installed (a compute node without the batch
    system's client tools), stop() ends and says the job may still run and what to do.
    Its advice was "run minipar-no-such-scancel 42 by hand": the very command it had just
    found missing. Now: run it on a machine where the batch system's commands are."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 42\n")
    sbatch.chmod(0o755)
    es = launcher.SlurmEngineSetLauncher(
        profile_dir=str(tmp_path), submit_command=[str(sbatch)],
        delete_command=["minipar-no-such-scancel"], status_command=["true"])
    es.start(1)
    assert es.stop() == {"job_id": "42"} and es.state == AFTER
    assert "may still run: could not delete it" in caplog.text
    assert "cannot run 'minipar-no-such-scancel': it is not on this machine's PATH" \
        in caplog.text
    assert "; run minipar-no-such-scancel 42 on a machine where slurm's commands are " \
           "installed (a login node)" in caplog.text and "by hand" not in caplog.text


@pytest.mark.parametrize("interval", [0, -1, 0.0])
def test_a_batch_poll_interval_of_zero_or_less_is_refused(tmp_path, interval):
    """0 was accepted, and the watcher asked the status command in a busy loop."""
    with pytest.raises(ValueError, match=r"poll_interval=.*> 0 \(1\.\.30 is reasonable\)"):
        launcher.SlurmEngineSetLauncher(profile_dir=str(tmp_path), poll_interval=interval)


def test_an_ssh_controller_whose_scp_hangs_says_which_host_and_file_and_what_to_check(
        pids, tmp_path):
    """The controller's files are fetched with scp; one that hung (a dead route, no
    ConnectTimeout) raised a raw subprocess.TimeoutExpired. ssh: a local stand-in that runs
    the controller here; scp: one that never answers. The fetch is bounded by its timeout."""
    from minipar import ssh
    (tmp_path / "ssh").write_text(LOCAL_SSH)
    (tmp_path / "scp").write_text("#!/bin/sh\nexec sleep 600\n")
    for name in ("ssh", "scp"):
        (tmp_path / name).chmod(0o755)
    c = launcher.find_launcher_class("ssh", "controller")(
        hostname="h", ssh_cmd=[str(tmp_path / "ssh")], scp_cmd=[str(tmp_path / "scp")],
        profile_dir=str(tmp_path / "local"), remote_profile_dir=str(tmp_path / "remote"),
        program_args=CTL_ARGS)
    ssh.SSHLauncher.start(c)   # the controller, as start() does before it fetches the files
    pids.add(c.remote_pid)
    try:
        with pytest.raises(ControllerStartError) as e:
            c.fetch_connection_files(timeout=2)
    finally:
        c.stop()
    remote = tmp_path / "remote" / "security" / protocol.CLIENT_FILE
    assert f"fetching {remote} from the controller on h: no answer within 2 s" in str(e.value)
    assert f"check that the host is up and reachable (`{tmp_path / 'ssh'} h true`)" in str(e.value)
    assert "ConnectTimeout" in str(e.value)
    assert os.listdir(tmp_path / "local" / "security") == []
    assert not pids.wait_gone()


def test_an_ssh_controller_without_scp_says_so_and_leaves_nothing_running(pids, tmp_path):
    """A scp_cmd not on PATH raised a raw FileNotFoundError out of start(). ssh: a local
    stand-in that runs the controller here; it is stopped, the error names the option."""
    (tmp_path / "ssh").write_text(LOCAL_SSH)
    (tmp_path / "ssh").chmod(0o755)
    c = launcher.find_launcher_class("ssh", "controller")(
        hostname="h", ssh_cmd=[str(tmp_path / "ssh")], scp_cmd=["minipar-no-such-scp"],
        profile_dir=str(tmp_path / "local"), remote_profile_dir=str(tmp_path / "remote"),
        program_args=CTL_ARGS)
    with pytest.raises(ControllerStartError, match=r"cannot run 'minipar-no-such-scp': it is "
                                                   r"not on this machine's PATH.*scp_cmd"):
        c.start()
    pids.add(c.remote_pid)
    assert c.state == AFTER and not pids.wait_gone()
