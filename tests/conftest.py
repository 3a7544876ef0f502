"""Shared fixtures: a real controller and real engines, as separate processes.

``cluster`` starts a controller (fast heartbeat) and four engines with ``python -m``
in a temporary profile folder and yields a ``LocalCluster`` with a connected client;
every process it started is stopped by pid afterwards, also when the test failed.
``shared_cluster`` is one such cluster for the tests of a module that leave it clean,
checked and its namespaces emptied after each test (a fresh one after a test that did not).
``local_cluster`` (the controller alone) hands out one started while the test before ran.

``--burn-cpu`` (or ``MINIPAR_BURN=1``) keeps every core busy for the session.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# every process a test starts runs the tree under test, not whatever minipar is installed
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")

import minipar  # noqa: E402
from minipar import protocol  # noqa: E402

from .helpers import wait_until  # noqa: E402

HEARTBEAT_S = 0.2
HEARTBEAT_LIVENESS = 10  # 2 s of silence: quick to notice a death, patient with a loaded CI box
START_TIMEOUT_S = 30


def _env():
    return dict(os.environ)


class LocalCluster:
    """A controller and engines started by hand, as a user would with ``python -m``."""

    def __init__(self, tmp_path, controller_args=(), wait=True):
        self.profile_dir = str(tmp_path / "profile")
        self.log_dir = tmp_path
        self.procs = []
        self.engines = []
        self.clients = []
        self.controller = self._spawn(
            "controller", ["--profile-dir", self.profile_dir, "--heartbeat-period",
                           str(HEARTBEAT_S), "--heartbeat-liveness", str(HEARTBEAT_LIVENESS),
                           *controller_args])
        self.client_file = os.path.join(self.profile_dir, "security", protocol.CLIENT_FILE)
        self.engine_file = os.path.join(self.profile_dir, "security", protocol.ENGINE_FILE)
        if wait:
            self.wait_started()

    def wait_started(self):
        """Return once the controller serves; RuntimeError with its output if it ended or
        wrote no connection files in START_TIMEOUT_S (it is stopped then)."""
        try:   # ready (the client file is written last), or ended: whichever comes first
            wait_until(lambda: self.controller.poll() is not None
                       or os.path.exists(self.client_file), START_TIMEOUT_S,
                       "the controller's connection files")
        except AssertionError:
            pass   # reported below, with the controller's output
        if not os.path.exists(self.client_file):
            self.stop()
            raise RuntimeError("controller did not start:\n" + self.output("controller"))

    def _spawn(self, role, args, name=None, env=None):
        name = name or role
        log = open(self.log_dir / f"{name}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", f"minipar.{role}", *args],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env or _env(), cwd=ROOT)
        p.log_name = name
        self.procs.append(p)
        return p

    def output(self, name):
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start_engines(self, n, args=(), env=None):
        new = [self._spawn("engine", ["--file", self.engine_file, *args],
                           name=f"engine{len(self.engines) + i}", env=env) for i in range(n)]
        self.engines.extend(new)
        return new

    def client(self, **kwargs):
        rc = minipar.Client(self.client_file, **kwargs)
        self.clients.append(rc)
        return rc

    def stop(self):
        for rc in self.clients:
            try:
                rc.close()
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# ---------------------------------------------------------------- a busy machine

def pytest_addoption(parser):
    parser.addoption("--burn-cpu", action="store_true", default=False,
                     help="keep every core busy with spinning processes for the whole "
                     "session (as MINIPAR_BURN=1 does): the reliability tests under load")


@contextlib.contextmanager
def _spinning():
    """One spinning process per core while the block runs, stopped by pid after it."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                stdin=subprocess.DEVNULL) for _ in range(os.cpu_count() or 1)]
    try:
        yield burners
    finally:
        for p in burners:
            p.kill()
        for p in burners:
            p.wait(10)


@pytest.fixture(scope="session", autouse=True)
def burn_cpu(request):
    """With ``--burn-cpu`` or ``MINIPAR_BURN=1``: every core busy from before the first
    test to after the last, so heartbeats, timeouts and retries are tested on a machine
    as busy as a loaded CI box."""
    if not (request.config.getoption("--burn-cpu") or os.environ.get("MINIPAR_BURN") == "1"):
        yield []
        return
    with _spinning() as burners:
        yield burners


@pytest.fixture
def busy_cores(burn_cpu):
    """Every core busy for one test (as it is already under ``--burn-cpu``): for the
    tests whose point is that something holds on a loaded machine, in every run."""
    if burn_cpu:
        yield burn_cpu
        return
    with _spinning() as burners:
        yield burners


@pytest.fixture(scope="session")
def _spare_controller(tmp_path_factory):
    """[(environment, LocalCluster)]: a controller started while a test runs, for the next
    test's ``local_cluster``, so that a test does not wait for its controller to start
    (half a second on a busy box, a hundred times a run). Only a controller started with
    the environment the test has is taken; it is stopped otherwise, and at the end."""
    spare = []
    try:
        yield spare
    finally:
        for _, c in spare:
            c.stop()


@pytest.fixture
def local_cluster(tmp_path_factory, _spare_controller):
    """A controller with no engines yet; the test starts what it needs. Its files and logs
    are in a folder of its own, not the test's tmp_path: it was started for it ahead."""
    env = _env()
    env.pop("PYTEST_CURRENT_TEST", None)   # pytest's, set anew for each test and step
    c = None
    while _spare_controller:
        made_with, spare = _spare_controller.pop()
        if made_with == env and c is None:
            c = spare
        else:
            spare.stop()
    try:
        if c is None:
            c = LocalCluster(tmp_path_factory.mktemp("cluster"))
        else:
            c.wait_started()
        _spare_controller.append((env, LocalCluster(tmp_path_factory.mktemp("cluster"),
                                                    wait=False)))
        yield c
    finally:
        if c is not None:
            c.stop()


def _with_four_engines(c):
    c.start_engines(4)
    c.rc = c.client()
    c.rc.wait_for_engines(4, START_TIMEOUT_S)
    return c


@pytest.fixture
def cluster(local_cluster):
    """A controller, four engines and a connected client (``cluster.rc``), for one test:
    the test may kill, freeze or stop engines and change settings."""
    yield _with_four_engines(local_cluster)


def _left_dirty(c):
    """What a test left changed on a shared cluster `c` that would trip the next test, or
    "" (namespaces then emptied): a process ended or frozen, an engine gone, a request of
    any client still queued or running (waited for a while: an abort's answer may be on
    its way), the shared client closed or still waiting."""
    ended = [p.log_name for p in c.procs if p.poll() is not None or _frozen(p.pid)]
    if ended:
        return f"{', '.join(ended)} ended or frozen"

    def quiet():
        status = c.rc.queue_status()
        return (status.pop("unassigned") == 0 and not c.rc.outstanding
                and all(v["queue"] == v["tasks"] == 0 for v in status.values()))
    try:
        if c.rc.ids != c.ids:
            return f"engines registered: {c.rc.ids}, not {c.ids}"
        wait_until(quiet, 5, "the test's requests to end: none queued or running")
        c.rc[:].clear(block=False).get(START_TIMEOUT_S / 3)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _frozen(pid):
    """Whether process `pid` is stopped (SIGSTOP): Linux, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "T"
    except OSError:   # not Linux, or gone (poll() says so)
        return False


@pytest.fixture(scope="module")
def _module_clusters(tmp_path_factory):
    """The module's shared cluster, in a list: a new one replaces one a test left dirty."""
    held = []
    try:
        yield held
    finally:
        for c in held:
            c.stop()


@pytest.fixture
def shared_cluster(_module_clusters, tmp_path_factory):
    """As ``cluster``, but one for all the tests of a module that leave it as they found
    it: no engine killed, frozen or stopped, no setting changed, nothing left running.
    A module opts in by overriding ``rc`` with ``shared_cluster.rc`` (test_multiengine);
    its tests that do dirty a cluster take ``cluster``, their own. After each test the
    engines' namespaces are emptied; a test that left more behind (see _left_dirty) is
    warned about and the next test gets a fresh cluster, not a confusing failure."""
    if not _module_clusters:
        c = LocalCluster(tmp_path_factory.mktemp("shared_cluster"))
        try:
            c.ids = _with_four_engines(c).rc.ids
        except BaseException:
            c.stop()
            raise
        _module_clusters.append(c)
    c = _module_clusters[-1]
    yield c
    dirty = _left_dirty(c)
    if dirty:
        _module_clusters.remove(c)
        c.stop()
        warnings.warn(f"the test left the module's shared cluster changed ({dirty:.300}): "
                      "the next test gets a fresh one; a test that dirties a cluster takes "
                      "``cluster``, its own")


@pytest.fixture
def rc(cluster):
    return cluster.rc


@pytest.fixture
def own_client(shared_cluster):
    """A client of its own on the module's shared cluster, for tests that wait for or count
    all of a client's requests (rc.wait(), rc.abort(), rc.outstanding). A failed test's
    leftover requests are aborted, not to keep the next test's engines busy."""
    client = minipar.Client(shared_cluster.client_file)
    try:
        yield client
    finally:
        if client.outstanding:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "nothing to abort": answered meanwhile
                client.abort()
        client.close()
