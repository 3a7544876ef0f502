"""Launcher kinds against the real programs: OpenMPI's mpiexec, sshd, Slurm, PBS (Slurm's
Torque wrappers) and Son of Grid Engine.

Each test skips, saying why, when its program or daemon is not there; `.ci/run` starts
them with .ci/setup_{mpi,ssh,slurm,pbs,sge}.sh. Where those scripts put their files
(``$MINIPAR_CI_DIR``, default /tmp/minipar-ci) is found without any environment, so
running the scripts once is enough on a developer's machine too.

In every case the engines register and do work, the cluster is listed and stopped by
``python -m minipar.launcher`` in another process, and no engine pid is left.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from minipar import launcher, protocol, ssh
from minipar.batch import PBSEngineSetLauncher, SGEEngineSetLauncher, SlurmControllerLauncher
from minipar.launcher import Cluster

from .helpers import wait_until
from .test_launcher import (CTL_ARGS, ROOT, Pids, alive, cli, minipar_dir,  # noqa: F401 (fixtures)
                           pids)

TIMEOUT = 300
pytestmark = [pytest.mark.timeout(TIMEOUT), pytest.mark.slow]

CI_DIR = os.environ.get("MINIPAR_CI_DIR", "/tmp/minipar-ci")
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _works(cmd, env=None, timeout=20):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def run_cluster_through_cli(pids, cluster, n, check=None):
    """Start `cluster`, run work, list and stop it from another process, check pids."""
    rc = cluster.start_and_connect_sync()
    try:
        assert len(rc.ids) == n
        assert rc[:].apply_sync(lambda x: x + 1, 41) == [42] * n
        pids.add_cluster(cluster, rc)
        assert len(pids.pids) >= n
        if check:
            check(rc)
        out = cli("list", "--profile-dir", cluster.profile_dir)
        assert cluster.cluster_id in out.stdout, out.stdout + out.stderr
        out = cli("stop", "--profile-dir", cluster.profile_dir, "--cluster-id",
                  cluster.cluster_id, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        assert pids.wait_gone(20) == [], "processes left after `stop`"
        for e in cluster.engines.values():
            assert e.wait(60), f"{e!r}: its watcher did not notice the end"
    finally:
        cluster.stop_cluster_sync()


# ---------------------------------------------------------------- mpiexec


needs_mpi = pytest.mark.skipif(
    not shutil.which("mpiexec") or not _works(["mpiexec", "--oversubscribe", "-n", "1", "true"],
                                              ROOT_ENV),
    reason="no working OpenMPI mpiexec (run .ci/setup_mpi.sh)")


@needs_mpi
def test_mpi_engines_report_their_ranks(pids, tmp_path):
    cluster = Cluster(n=3, engines="mpi", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, shutdown_atexit=False,
                      engine_options={"mpi_args": ["--oversubscribe"], "env": ROOT_ENV})

    def ranks(rc):
        got = rc[:].apply_sync(lambda: int(__import__("os").environ["OMPI_COMM_WORLD_RANK"]))
        assert sorted(got) == [0, 1, 2]
        (launcher,) = cluster.engines.values()
        pids.add(launcher.pid)  # mpiexec itself
        assert "mpiexec" in launcher.args[0]

    run_cluster_through_cli(pids, cluster, 3, ranks)


@needs_mpi
def test_mpi_stop_kills_ranks_even_if_mpiexec_is_stuck(pids, tmp_path):
    """mpiexec SIGKILLed leaves its ranks running: stop() finds them as descendants."""
    cluster = Cluster(n=2, engines="mpi", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS,
                      engine_options={"mpi_args": ["--oversubscribe"], "env": ROOT_ENV,
                                      "stop_timeout": 2})
    rc = cluster.start_and_connect_sync()
    try:
        pids.add_cluster(cluster, rc)
        ranks = rc[:].apply_sync(os.getpid)
        (launcher,) = cluster.engines.values()
        os.kill(launcher.pid, signal.SIGSTOP)  # mpiexec can no longer pass SIGTERM on
        launcher.stop()
        assert not [p for p in ranks + [launcher.pid] if alive(p)]
    finally:
        cluster.stop_cluster_sync()


@needs_mpi
@pytest.mark.parametrize("refusal", ["slots", "root", "root-controller"])
def test_mpiexec_that_refuses_to_start_is_answered_with_the_option_to_set(pids, tmp_path,
                                                                         refusal, monkeypatch):
    """mpiexec's text names its own flags (--oversubscribe, --allow-run-as-root), not where
    to put them: minipar now says which option (mpi_args, in engine_options or
    controller_options) and with what value."""
    if refusal != "slots" and os.geteuid() != 0:
        pytest.skip("mpiexec refuses root only: run as root")
    for name in (*ROOT_ENV, "OMPI_MCA_rmaps_base_oversubscribe"):
        monkeypatch.delenv(name, raising=False)
    mpi = {"mpi_args": ["--bind-to", "none"], "env": ROOT_ENV if refusal == "slots" else {}}
    where = "controller_options" if refusal == "root-controller" else "engine_options"
    cluster = Cluster(n=(os.cpu_count() or 1) * 4, engines="mpi", profile_dir=str(tmp_path / "p"),
                      controller="mpi" if refusal == "root-controller" else "local",
                      controller_args=CTL_ARGS, timeout=60, **{where: mpi})
    with pytest.raises(launcher.LauncherError) as e:
        cluster.start_and_connect_sync()
    pids.add_cluster(cluster)
    flag = "--oversubscribe" if refusal == "slots" else "--allow-run-as-root"
    assert f"mpi_args=['--bind-to', 'none', '{flag}'] (of a Cluster's {where})" in str(e.value), \
        str(e.value)


try:
    import mpi4py  # noqa: F401 (only whether it imports: mpi4py.MPI would start MPI here)
    _NO_MPI4PY = None
except ImportError as e:
    _NO_MPI4PY = f"mpi4py cannot be imported ({e}): pip install mpi4py (.ci/setup_mpi.sh)"
needs_mpi4py = pytest.mark.skipif(_NO_MPI4PY is not None, reason=str(_NO_MPI4PY))

# ipyparallel's "Using MPI with IPython" page: psum.py, run on every engine
PSUM = """from mpi4py import MPI
import numpy as np

def psum(a):
    locsum = np.sum(a)
    rcvBuf = np.array(0.0, 'd')
    MPI.COMM_WORLD.Allreduce([locsum, MPI.DOUBLE], [rcvBuf, MPI.DOUBLE], op=MPI.SUM)
    return rcvBuf
"""


@needs_mpi
@needs_mpi4py
def test_mpi4py_psum_of_ipyparallels_mpi_page(pids, tmp_path):
    """ipyparallel's MPI tutorial on mpiexec's engines: psum.py run on each, an array
    scattered, its sum by MPI's Allreduce (and allreduce) on every engine. Each engine's id
    is its MPI rank, as ipyparallel's MPI engines ask; the ranks register in reverse order
    here, so ids handed out in order of arrival (as before) cannot match by chance."""
    np = pytest.importorskip("numpy")
    (tmp_path / "psum.py").write_text(PSUM)
    stagger = ("import os, time; "
               "time.sleep(0.5 * (3 - int(os.environ['OMPI_COMM_WORLD_RANK'])))")
    cluster = Cluster(n=4, engines="mpi", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, engine_args=["--startup-command", stagger],
                      engine_options={"mpi_args": ["--oversubscribe"], "env": ROOT_ENV})
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        view = rc[:]
        view.run(str(tmp_path / "psum.py"), block=True)
        view.scatter("a", np.arange(16, dtype="float"), block=True)
        assert [list(a) for a in view["a"]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                                [12, 13, 14, 15]]
        view.execute("totalsum = psum(a)\n"
                     "total = MPI.COMM_WORLD.allreduce(float(np.sum(a)), op=MPI.SUM)\n"
                     "rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()",
                     block=True)
        assert [float(s) for s in view["totalsum"]] == [120.0] * 4
        assert view["total"] == [120.0] * 4
        assert view["size"] == [4] * 4
        assert dict(zip(rc.ids, view["rank"])) == {0: 0, 1: 1, 2: 2, 3: 3}


def _signal_marks(rc, tmp_path):
    """Engines note SIGUSR1 in files; returns a function listing the files so far."""
    rc[:].execute("import os, signal\n"
                  "signal.signal(signal.SIGUSR1, lambda *a: open("
                  f"{str(tmp_path)!r} + f'/usr1-{{os.getpid()}}', 'w').close())", block=True)
    return lambda: [f for f in os.listdir(tmp_path) if f.startswith("usr1-")]


@needs_mpi
def test_mpi_signal_engines_reaches_every_rank(pids, tmp_path):
    cluster = Cluster(n=2, engines="mpi", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS,
                      engine_options={"mpi_args": ["--oversubscribe"], "env": ROOT_ENV})
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        marks = _signal_marks(rc, tmp_path)
        cluster.signal_engines_sync(signal.SIGUSR1)  # mpiexec passes SIGUSR1 on unchanged
        wait_until(lambda: len(marks()) == 2, 30, "SIGUSR1 noted by both engines")
        assert rc[:].apply_sync(lambda: 1) == [1, 1]  # and the engines carry on


@needs_mpi
def test_mpi_cluster_from_the_command_line(pids, tmp_path):
    prof = str(tmp_path / "p")
    options = json.dumps({"mpi_args": ["--oversubscribe"], "env": ROOT_ENV})
    out = cli("start", "-n", "2", "--engines", "mpi", "--engine-options", options,
              "--profile-dir", prof, "--controller-args", " ".join(CTL_ARGS), "--daemonize")
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ready: 2 engines" in out.stdout
        cluster = Cluster.from_file(profile_dir=prof)
        (engines,) = cluster.engines.values()
        assert type(engines).__name__ == "MPIEngineSetLauncher"
        pids.add_cluster(cluster)
        pids.add(*protocol.descendants([engines.pid]))  # the ranks
        assert len(pids.pids) >= 4
    finally:
        out = cli("stop", "--profile-dir", prof)
    assert out.returncode == 0, out.stdout + out.stderr
    assert pids.wait_gone(10) == []


# ---------------------------------------------------------------- ssh

SSH_CONFIG = os.path.join(CI_DIR, "ssh", "ssh_config")
needs_ssh = pytest.mark.skipif(
    not os.path.exists(SSH_CONFIG) or not _works(["ssh", "-F", SSH_CONFIG, "127.0.0.1", "true"]),
    reason=f"no sshd answering with {SSH_CONFIG} (run .ci/setup_ssh.sh)")


@needs_ssh
@pytest.mark.parametrize("connection", ["scp", "env"])
def test_ssh_engines(pids, tmp_path, connection):
    remote = tmp_path / "remote-profile"  # created by the launcher on the "host"
    n = 2 if connection == "scp" else 1
    cluster = Cluster(n=n, engines="ssh", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      shutdown_atexit=False,
                      engine_options={"engines": {"127.0.0.1": n}, "ssh_args": ["-F", SSH_CONFIG],
                                      "remote_profile_dir": str(remote),
                                      "connection": connection})

    def sent(rc):
        (launcher,) = cluster.engines.values()
        (path,) = launcher.sent_files.values()
        assert path.startswith(str(remote)) and os.path.exists(path)
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
        remote_pids = [c.remote_pid for c in launcher._children]
        assert sorted(remote_pids) == sorted(rc[:].apply_sync(os.getpid))

    run_cluster_through_cli(pids, cluster, n, sent)
    assert not [f for f in os.listdir(remote / "security") if f.endswith(".json")]


@needs_ssh
@pytest.mark.parametrize("extra", [["-tt"], ["-p", "{port}"], ["-S", "none", "-l", "root"]])
def test_ssh_args_that_scp_spells_otherwise_or_refuses_reach_it_as_it_takes_them(pids, tmp_path,
                                                                               extra):
    """ssh_args went to scp unchanged, so ipyparallel's default -tt (scp's -t is its server
    mode), -p PORT (scp's -P; its -p keeps times) or -S (scp's program to run) broke the
    copies of the engine file and of the controller's files: scp now gets them in its own
    spelling, or not at all (-tt)."""
    port = re.search(r"Port (\d+)", open(SSH_CONFIG).read())[1]
    args = ["-F", SSH_CONFIG, *(a.format(port=port) for a in extra)]
    common = {"ssh_args": args, "remote_profile_dir": str(tmp_path / "host")}
    cluster = Cluster(n=1, engines="ssh", controller="ssh", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, timeout=60,
                      controller_options={"hostname": "127.0.0.1", **common},
                      engine_options={"engines": {"127.0.0.1": 1}, **common})
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        pids.add(cluster.controller.remote_pid, *rc[:].apply_sync(os.getpid))
        assert rc[:].apply_sync(lambda: 42) == [42]
    assert pids.wait_gone(20) == []


@needs_ssh
def test_ssh_controller_and_engines(pids, tmp_path):
    """The controller over ssh too: its connection files come back by scp."""
    ssh = {"ssh_args": ["-F", SSH_CONFIG], "hostname": "127.0.0.1",
           "remote_profile_dir": str(tmp_path / "controller-host")}
    cluster = Cluster(n=1, engines="ssh", controller="ssh", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, shutdown_atexit=False, controller_options=ssh,
                      engine_options={"engines": {"127.0.0.1": 1}, "ssh_args": ["-F", SSH_CONFIG],
                                      "remote_profile_dir": str(tmp_path / "engine-host")})

    def fetched(rc):
        info = __import__("json").load(open(cluster.client_file))
        assert info["pid"] == cluster.controller.remote_pid
        pids.add(cluster.controller.remote_pid)
        assert os.path.exists(tmp_path / "controller-host" / "security" / "minipar-client.json")

    run_cluster_through_cli(pids, cluster, 1, fetched)


def _kill_ssh_starter(pids, tmp_path, connection, shutdown_atexit=True):
    """Start a script in ``with Cluster(engines="ssh")``, SIGKILL it once its engine runs;
    the engine file sent to the "host" is checked to be there. The pids of the cluster."""
    prof, remote = tmp_path / "p", tmp_path / "remote-profile"
    options = {"engines": {"127.0.0.1": 1}, "ssh_args": ["-F", SSH_CONFIG],
               "remote_profile_dir": str(remote), "connection": connection}
    script = (f"import json, os, time\nfrom minipar.launcher import Cluster\n"
              f"with Cluster(n=1, engines='ssh', profile_dir={str(prof)!r}, "
              f"controller_args={CTL_ARGS!r}, engine_options={options!r}, "
              f"shutdown_atexit={shutdown_atexit!r}) as rc:\n"
              f"    print(json.dumps(rc[:].apply_sync(os.getpid)), flush=True)\n"
              f"    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids.add(p.pid)
    try:
        line = p.stdout.readline()
        assert line.startswith("["), line + p.stdout.read()
        info = json.load(open(prof / "security" / "minipar-client.json"))
        pids.add(*json.loads(line), info["pid"])
        assert _engine_files(remote)
    finally:
        p.kill()
        p.wait(20)
        p.stdout.close()
    return [*json.loads(line), info["pid"]]


def _engine_files(profile_dir):
    return [f for f in os.listdir(profile_dir / "security") if f.endswith(".json")]


@needs_ssh
@pytest.mark.parametrize("connection", ["scp", "env"])
def test_ssh_engine_file_of_a_script_killed_by_sigkill_is_removed(pids, tmp_path, connection):
    """`kill -9` of the script: the controller (--owner) stops the engines and has
    `launcher stop` stop the cluster, which finds the engines gone and still removes the
    engine file it sent to the host (was: left there)."""
    _kill_ssh_starter(pids, tmp_path, connection)
    wait_until(lambda: not [f for f in os.listdir(tmp_path / "p" / "security")
                            if f.startswith("cluster-")],
               60, "the cluster file removed by `launcher stop`")
    assert pids.wait_gone(20) == []
    assert _engine_files(tmp_path / "remote-profile") == []


@needs_ssh
def test_ssh_engine_file_of_a_cluster_killed_outright_goes_with_clean(pids, tmp_path):
    """The script, its controller and engine killed (a reboot): nothing runs `launcher
    stop`; the cluster is listed as stale, and `launcher clean` removes the engine file on
    the host too (was: only the cluster file here)."""
    for pid in _kill_ssh_starter(pids, tmp_path, "scp", shutdown_atexit=False):
        os.kill(pid, signal.SIGKILL)
    assert pids.wait_gone(20) == []
    prof = str(tmp_path / "p")
    out = cli("list", "--profile-dir", prof)
    assert re.search(r"\tstale\t0\t", out.stdout) and "1 stale" in out.stderr, \
        out.stdout + out.stderr
    out = cli("clean", "--profile-dir", prof)
    assert "removed cluster" in out.stdout, out.stdout + out.stderr
    assert _engine_files(tmp_path / "remote-profile") == []


@needs_ssh
@pytest.mark.parametrize("remote", [{"remote_python": "/nonexistent/python3"},
                                    {"remote_env": {"PYTHONPATH": "/nonexistent"}}])
def test_ssh_engines_whose_python_cannot_run_minipar_say_what_to_set(pids, tmp_path, remote):
    cluster = Cluster(n=1, engines="ssh", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, timeout=60,
                      engine_options={"engines": {"127.0.0.1": 1}, "ssh_args": ["-F", SSH_CONFIG],
                                      "remote_python": "/usr/bin/python3", **remote})
    with pytest.raises(launcher.LauncherError) as e:
        cluster.start_and_connect_sync()
    pids.add_cluster(cluster)
    assert "remote_python=" in str(e.value) and "PYTHONPATH" in str(e.value), str(e.value)


@needs_ssh
@pytest.mark.parametrize("connection", ["scp", "shared", "env"])
def test_ssh_host_that_never_answers_is_an_error_saying_so(pids, tmp_path, connection,
                                                           monkeypatch):
    """A port that takes the connection and says nothing, as a host behind a dead route
    does when the user's ssh waits without a ConnectTimeout of its own; "shared" and
    "env" send no file first, and wait for the engine's own ssh. (The bound is 3 s here,
    not SEND_TIMEOUT_S's 20: nothing will ever answer.)"""
    monkeypatch.setattr(ssh, "SEND_TIMEOUT_S", 3.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = str(silent.getsockname()[1])
    cluster = Cluster(n=1, engines="ssh", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      engine_options={"engines": {"127.0.0.1": 1}, "ssh_args": [
                          "-F", SSH_CONFIG, "-p", port, "-o", "ConnectTimeout=600"],
                          "connection": connection})
    with silent, pytest.raises(launcher.LauncherError) as e:
        cluster.start_cluster_sync()
    pids.add_cluster(cluster)
    assert "no answer" in str(e.value) and "ConnectTimeout" in str(e.value), str(e.value)


@needs_ssh
def test_ssh_engine_file_sent_by_an_scp_that_then_hangs_is_removed(pids, tmp_path, monkeypatch):
    """The host answered (its mkdir did) and scp wrote the file, then hung past
    SEND_TIMEOUT_S (3 s here): the start fails saying so, and undoing it removes the
    file, which holds the cluster's key. Only a host that never answered is not asked."""
    monkeypatch.setattr(ssh, "SEND_TIMEOUT_S", 3.0)
    hang = tmp_path / "scp-then-hang"
    hang.write_text('#!/bin/sh\nscp "$@" && exec sleep 600\n')
    hang.chmod(0o755)
    remote = tmp_path / "remote-profile"
    cluster = Cluster(n=1, engines="ssh", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      engine_options={"engines": {"127.0.0.1": 1}, "ssh_args": ["-F", SSH_CONFIG],
                                      "scp_cmd": [str(hang)], "remote_profile_dir": str(remote)})
    with pytest.raises(launcher.LauncherError, match="no answer"):
        cluster.start_cluster_sync()
    pids.add_cluster(cluster)
    assert not [f for f in os.listdir(remote / "security") if f.endswith(".json")]


@needs_ssh
def test_ssh_ctrl_c_before_the_remote_pid_came_ends_the_engine(pids, tmp_path):
    """A Ctrl-C while start() waits for the remote shell's pid line (held back here, as by a
    slow link, after the engine started): stop() has no pid to kill, and the engine ran on
    for as long as its controller did. Now its shell kills it when ssh's stdin closes."""
    slow = tmp_path / "slow-ssh"
    slow.write_text('#!/bin/sh\ncase "$*" in\n'
                    '*minipar-remote-pid*) ssh "$@" | { sleep 600; cat; } ;;\n'
                    '*) exec ssh "$@" ;;\nesac\n')
    slow.chmod(0o755)
    prof = str(tmp_path / "p")
    cluster = Cluster(n=0, profile_dir=prof, controller_args=CTL_ARGS)
    cluster.start_controller_sync()
    try:
        rc = cluster.connect_client_sync()
        pids.add_cluster(cluster)
        options = {"engines": {"127.0.0.1": 1}, "ssh_cmd": [str(slow)],
                   "ssh_args": ["-F", SSH_CONFIG], "remote_profile_dir": str(tmp_path / "r")}
        script = (f"from minipar.ssh import SSHEngineSetLauncher\n"
                  f"SSHEngineSetLauncher(profile_dir={prof!r}, **{options!r}).start()\n")
        p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pids.add(p.pid)
        wait_until(lambda: rc.ids, 60, "the engine registered")
        (engine,) = rc[:].apply_sync(os.getpid)
        pids.add(engine)
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=60)[0]
        assert "KeyboardInterrupt" in out, out
        wait_until(lambda: not alive(engine), 30, "the engine ended by its remote shell")
    finally:
        cluster.stop_cluster_sync()
    assert pids.wait_gone(20) == []
    with pytest.raises(ValueError, match="leave out -n"):   # no stdin for the remote shell
        Cluster(n=1, engines="ssh", engine_options={"ssh_args": ["-n"]}).start_engines_sync()


# ---------------------------------------------------------------- Slurm

SLURM_CONF = os.environ.get("SLURM_CONF") or os.path.join(CI_DIR, "slurm", "slurm.conf")


def _slurm_up():
    return (shutil.which("sbatch") and os.path.exists(SLURM_CONF)
            and _works(["sinfo", "-h"], {"SLURM_CONF": SLURM_CONF}))


needs_slurm = pytest.mark.skipif(not _slurm_up(),
                                 reason="no Slurm answering (run .ci/setup_slurm.sh)")


@pytest.fixture
def slurm_env(monkeypatch):
    monkeypatch.setenv("SLURM_CONF", SLURM_CONF)


@needs_slurm
def test_slurm_controller_and_engines(pids, tmp_path, slurm_env):
    cluster = Cluster(n=2, engines="slurm", controller="slurm",
                      profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      shutdown_atexit=False, timeout=120)

    def controller_is_a_job(rc):
        info = __import__("json").load(open(cluster.client_file))
        pids.add(info["pid"])
        assert cluster.controller.job_id and cluster.controller.running
        (engines,) = cluster.engines.values()
        assert engines.job_id != cluster.controller.job_id

    run_cluster_through_cli(pids, cluster, 2, controller_is_a_job)


@needs_slurm
def test_slurm_signal_engines(pids, tmp_path, slurm_env):
    cluster = Cluster(n=2, engines="slurm", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, timeout=120)
    with cluster as rc:
        pids.add_cluster(cluster, rc)
        marks = _signal_marks(rc, tmp_path)
        cluster.signal_engines_sync(signal.SIGUSR1)  # scancel --signal reaches the srun tasks
        wait_until(lambda: len(marks()) == 2, 30, "SIGUSR1 noted by both engines")
        assert rc[:].apply_sync(lambda: 1) == [1, 1]
    assert pids.wait_gone(20) == []


# ---------------------------------------------------------------- PBS (Slurm's Torque wrappers)

PBS_BIN = os.environ.get("MINIPAR_PBS_BIN") or os.path.join(CI_DIR, "pbs", "bin")
needs_pbs = pytest.mark.skipif(
    not (_slurm_up() and os.path.exists(os.path.join(PBS_BIN, "qsub"))),
    reason="no PBS qsub over a running Slurm (run .ci/setup_slurm.sh and .ci/setup_pbs.sh)")


PBS_COMMANDS = {f"{what}_command": [os.path.join(PBS_BIN, prog)]
                for what, prog in (("submit", "qsub"), ("delete", "qdel"), ("status", "qstat"))}


@needs_pbs
def test_pbs_engines(pids, tmp_path, slurm_env):
    cluster = Cluster(n=2, engines="pbs", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      shutdown_atexit=False, timeout=120, engine_options=PBS_COMMANDS)

    def script(rc):
        (launcher,) = cluster.engines.values()
        text = open(launcher.batch_file).read()
        assert "#PBS -t 1-2" in text and "#PBS -V" in text

    run_cluster_through_cli(pids, cluster, 2, script)


# ---------------------------------------------------------------- SGE

SGE_ENV = {"SGE_ROOT": os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
           "SGE_CELL": os.environ.get("SGE_CELL", "default")}
needs_sge = pytest.mark.skipif(
    not (os.path.exists("/usr/bin/qconf") and _works(["qconf", "-sh"], SGE_ENV)),
    reason="no Grid Engine qmaster answering (run .ci/setup_sge.sh)")


# SGE's own qsub, even where the PBS wrappers are also on PATH
SGE_COMMANDS = {"submit_command": ["/usr/bin/qsub"], "delete_command": ["/usr/bin/qdel"],
                "status_command": ["/usr/bin/qstat"]}


@pytest.fixture
def sge_env(monkeypatch):
    for k, v in SGE_ENV.items():
        monkeypatch.setenv(k, v)


@needs_sge
def test_sge_engines(pids, tmp_path, sge_env):
    cluster = Cluster(n=2, engines="sge", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      shutdown_atexit=False, timeout=120, engine_options=SGE_COMMANDS)

    def array(rc):
        tasks = rc[:].apply_sync(lambda: __import__("os").environ.get("SGE_TASK_ID"))
        assert sorted(tasks) == ["1", "2"]

    run_cluster_through_cli(pids, cluster, 2, array)


@needs_sge
def test_sge_job_in_an_error_state_fails_the_start_saying_why(pids, tmp_path, sge_env):
    """An output path the execution host cannot write (a profile dir on no shared file
    system, say) puts the job in Eqw, where it stays: the start waited its whole timeout
    and called the job pending. Now it fails at once with SGE's reason; the job is deleted."""
    template = SGEEngineSetLauncher.default_template.replace("{output_file}",
                                                             "/nonexistent/minipar/out")
    cluster = Cluster(n=2, engines="sge", profile_dir=str(tmp_path / "p"), controller_args=CTL_ARGS,
                      timeout=60, engine_options={"batch_template": template, **SGE_COMMANDS})
    with pytest.raises(launcher.EngineStartError) as e:
        cluster.start_and_connect_sync()
    pids.add_cluster(cluster)
    assert "error state" in str(e.value) and "can't open output file" in str(e.value), \
        str(e.value)
    job = re.search(r"sge job (\d+)", str(e.value))[1]
    wait_until(lambda: not _works(["/usr/bin/qstat", "-j", job], SGE_ENV), 30, "the job deleted")
    assert pids.wait_gone(20) == []


@needs_slurm
def test_slurm_job_left_pending_says_so_and_is_deleted(pids, tmp_path, slurm_env):
    """More engines than the machine has CPUs: the job waits in the queue for good."""
    cluster = Cluster(n=500, engines="slurm", profile_dir=str(tmp_path / "p"),
                      controller_args=CTL_ARGS, timeout=5)
    with pytest.raises(launcher.TimeoutError) as e:
        cluster.start_and_connect_sync()
    pids.add_cluster(cluster)
    job = re.search(r"slurm job (\d+) is still pending", str(e.value))
    assert job and "squeue" in str(e.value), str(e.value)
    out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True,
                         text=True, timeout=20)
    assert job[1] not in out.stdout.split(), "the job was left in the queue"


def _slurm_jobs_under(folder):
    """The ids of the Slurm jobs whose command lies under `folder`."""
    out = subprocess.run(["squeue", "--noheader", "--format=%i %o"], capture_output=True,
                         text=True, timeout=20).stdout
    return [line.split()[0] for line in out.splitlines() if str(folder) in line]


@needs_slurm
def test_slurm_sigterm_while_cli_start_waits_deletes_the_job(pids, tmp_path, slurm_env):
    """`kill` of a start whose job waits in the queue: the job would outlive it there."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "minipar.launcher", "start", "-n", "500",
                          "--engines", "slurm", "--profile-dir", str(tmp_path / "p")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids.add(p.pid)

    def queued():
        return _slurm_jobs_under(tmp_path)

    wait_until(queued, 60, "the engines' job in the queue")
    p.terminate()
    p.communicate(timeout=60)
    assert queued() == [], "the job was left in the queue"


def _kill_batch_starter(pids, tmp_path, engines, queued, n=500, controller="local",
                        controller_options=None, **options):
    """`kill -9` of a script in ``with Cluster(engines=...)`` whose engines' job waits in
    the queue: no atexit runs, and the job gets no shutdown message; the controller
    (--owner) sees the script gone and has the cluster's launchers delete it. `queued()`:
    the job's ids still in the queue, given the job id the cluster file records."""
    prof = tmp_path / "p"
    script = (f"from minipar.launcher import Cluster\n"
              f"with Cluster(n={n}, engines={engines!r}, profile_dir={str(prof)!r}, "
              f"controller={controller!r}, controller_args={CTL_ARGS!r}, timeout=120, "
              f"controller_options={controller_options!r}, engine_options={options!r}) as rc:\n"
              f"    pass\n")
    p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids.add(p.pid)

    def job_id():
        for name in os.listdir(prof / "security") if os.path.isdir(prof / "security") else ():
            if name.startswith("cluster-") and name.endswith(".json"):   # not one being written
                with open(prof / "security" / name) as f:
                    for e in json.load(f)["engines"].values():
                        return e["state"].get("job_id")

    wait_until(lambda: job_id() and queued(job_id()), 60, "the engines' job in the queue")
    job = job_id()
    pids.add(json.load(open(prof / "security" / "minipar-client.json"))["pid"])
    p.kill()
    p.wait(20)
    wait_until(lambda: not queued(job), 60, "the job deleted once the script was killed")
    wait_until(lambda: not [f for f in os.listdir(prof / "security") if f.startswith("cluster-")],
               30, "the cluster file removed")
    assert pids.wait_gone(20) == []


@needs_slurm
def test_slurm_job_of_a_script_killed_by_sigkill_is_deleted(pids, tmp_path, slurm_env):
    """More engines than CPUs keep the job pending."""
    _kill_batch_starter(pids, tmp_path, "slurm", lambda job: _slurm_jobs_under(tmp_path))


@needs_slurm
def test_slurm_controller_of_a_script_killed_by_sigkill_stops_the_cluster(pids, tmp_path,
                                                                          slurm_env):
    """A controller that is a batch job got no --owner, as it may run on another host:
    its job and the engines' ran on until their walltime or a `launcher stop`. It now gets
    its owner's host and pid namespace too, and watches it where they are its own (this
    single-node Slurm); `queued` sees both jobs."""
    _kill_batch_starter(pids, tmp_path, "slurm", lambda job: _slurm_jobs_under(tmp_path),
                        controller="slurm")


# what a batch system that tracks a job's processes (Slurm's proctrack/cgroup) does when the
# job's script ends: end every process the job left (here: those of minipar)
_END_OF_JOB = """import os
job = f"SLURM_JOB_ID={os.environ['SLURM_JOB_ID']}".encode()
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{p}/environ", "rb") as f, open(f"/proc/{p}/cmdline", "rb") as c:
            if job in f.read().split(b"\\0") and b"minipar" in c.read() and int(p) != os.getpid():
                os.kill(int(p), 9)
    except OSError:
        pass
"""


@needs_slurm
def test_slurm_controller_whose_job_ends_what_it_left_still_has_the_engines_deleted(
        pids, tmp_path, slurm_env):
    """The `launcher stop` that a controller whose owner is gone starts runs in the
    controller's job: the controller ended at once, so a batch system that ends what a job
    left (proctrack/cgroup) ended that stop before it deleted the engines' pending job. The
    controller now runs until the stop ends it. This Slurm (proctrack/linuxproc) lets such
    a process escape, so the controller's job script ends them itself (_END_OF_JOB) once
    the controller has (not under srun, which waits for the output the stop inherited)."""
    end = tmp_path / "end_of_job.py"
    end.write_text(_END_OF_JOB)
    template = (SlurmControllerLauncher.default_template.replace("srun {", "{")
                + f"{shlex.quote(sys.executable)} {shlex.quote(str(end))}\n")
    _kill_batch_starter(pids, tmp_path, "slurm", lambda job: _slurm_jobs_under(tmp_path / "p"),
                        controller="slurm", controller_options={"batch_template": template})


@needs_pbs
def test_pbs_job_of_a_script_killed_by_sigkill_is_deleted(pids, tmp_path, slurm_env):
    """A held job (#PBS -h) stays queued: a job array of more tasks than CPUs would start
    some of them."""
    template = PBSEngineSetLauncher.default_template.replace("#PBS -V", "#PBS -V\n#PBS -h")
    _kill_batch_starter(pids, tmp_path, "pbs", lambda job: _slurm_jobs_under(tmp_path), n=2,
                        batch_template=template, **PBS_COMMANDS)


@needs_sge
def test_sge_job_of_a_script_killed_by_sigkill_is_deleted(pids, tmp_path, sge_env):
    """A held job (#$ -h) stays queued (qw) for good."""
    template = SGEEngineSetLauncher.default_template.replace("#$ -V", "#$ -V\n#$ -h")

    def queued(job):
        return _works(["/usr/bin/qstat", "-j", job], SGE_ENV)

    _kill_batch_starter(pids, tmp_path, "sge", queued, n=2, batch_template=template,
                        **SGE_COMMANDS)
