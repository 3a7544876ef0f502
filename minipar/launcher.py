"""Launchers start, watch and stop controllers and engines; a Cluster ties them together.

A launcher owns one resource: a process, an ``mpiexec``, an ``ssh`` session or a batch
job. It has three states, changed only in ``notify_start`` / ``notify_stop``::

    before --start()--> running --(the resource ends, noticed by a watcher)--> after
                                \\--stop(): SIGTERM, wait, SIGKILL, wait ------/

``stop()`` returns only when everything it started is gone (checked by pid, process
descendants included, because ``mpiexec``'s ranks outlive a killed ``mpiexec``).
``to_dict()`` saves what is needed to find the resource again from another process;
``from_dict()`` rebuilds a live launcher or raises ``NotRunning``.

Map of the module (ssh.py and batch.py hold the SSH* and Slurm*, PBS*, SGE*, LSF*
launchers, found here by name too)::

    BaseLauncher                     the contract; options and state as plain attributes
      LocalProcessLauncher           one subprocess, output in a log file, a watcher thread
        LocalControllerLauncher        python -m <pkg>.controller
        LocalEngineLauncher            python -m <pkg>.engine
        MPIEngineSetLauncher           mpiexec -n N python -m <pkg>.engine (one tree),
        MPIControllerLauncher            and the controller under mpiexec -n 1
      EngineSetLauncher              engines as child launchers, restarted on failure
        LocalEngineSetLauncher         n LocalEngineLaunchers
    find_launcher_class(name, kind)  short name, class name, import path or entry point
    Cluster                          one controller + engine sets + Clients; a cluster file
    ClusterManager                   the clusters of profiles, read from their cluster files
    main()                           python -m <pkg>.launcher start|engines|stop|list|clean

Who talks to whom::

    Cluster (user's process) --start--> controller launcher --> python -m pkg.controller
       |                     --start--> engine set launchers --> python -m pkg.engine x n
       +-- Client, reading <profile_dir>/security/minipar-client.json
       +-- <profile_dir>/security/cluster-<cluster_id>.json: launchers' to_dict(), read by
           Cluster.from_file() and by `python -m pkg.launcher list|stop` in other processes

Processes started here run in their own session, so a terminal's Ctrl-C reaches only the
process that started them, which then stops them in order (engines first)."""

import argparse
import atexit
import contextlib
import functools
import glob
import importlib.metadata
import json
import logging
import os
import pathlib
import queue
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

from . import _show_log_lines, protocol
from .twins import coroutine_twins, sleep_unless_cancelled
from .errors import (CLUSTER_ABSENT, ConnectionFileError, MiniparError, SaysWhyAbsent,
                     TimeoutError, making_profile_folder, refuse_absent)

log = logging.getLogger(__name__)

# The package's own name (vendoring: never a literal "minipar"), for `python -m` commands.
_PKG = __package__

BEFORE, RUNNING, AFTER = "before", "running", "after"

# Grace between SIGTERM and SIGKILL. Engines and the controller exit in well under a second;
# mpiexec takes ~1 s to pass SIGTERM on, a batch system up to its KillWait.
STOP_TIMEOUT_S = 10.0
# How long a Cluster waits for the controller's connection file and for engines to register.
# Pessimistic: a loaded 2-core box takes 1-3 s to import and bind.
START_TIMEOUT_S = 60.0
# How often watchers poll a pid that is not our child (batch.py polls its jobs more slowly).
POLL_INTERVAL_S = 0.2

CLUSTER_FILE = "cluster-{cluster_id}.json"
_UNREADABLE = (OSError, ValueError, LookupError, TypeError, AttributeError)  # a bad cluster file

# Engine sets may restart engines that fail: restart=None (never) or "on_failure" (an
# exit code other than 0, or a signal). After RESTART_FAILED_STARTS engines in a row
# ended before registering, each restart waits twice as long as the last, up to
# RESTART_MAX_DELAY_S: a crash loop costs little. 3..10 and 5..60 s are reasonable.
RESTART_POLICIES = (None, "never", "on_failure")
RESTART_FAILED_STARTS = 3
RESTART_MAX_DELAY_S = 30.0


class LauncherError(MiniparError):
    """A launcher could not start, signal or stop what it manages."""


def _not_installed(launcher, program):
    """Why `launcher` cannot run `program` (mpiexec, sbatch... not installed), naming the
    options to give its full path in: those that start with it (mpi_cmd, submit_command...)."""
    named = [k for k in launcher._names("_options") if isinstance(getattr(launcher, k), list)
             and getattr(launcher, k)[:1] == [program]] or ["the launcher's options"]
    return (f"{type(launcher).__name__} cannot run {program!r}: it is not on this machine's "
            f"PATH; install it, give its full path in {' and '.join(named)} (of a Cluster's "
            f"{launcher.cluster_options}), or use another launcher kind")


class NotRunning(LauncherError):
    """The resource a saved launcher described is gone (raised by ``from_dict``)."""


class ControllerStartError(LauncherError):
    """The controller exited, or did not write its connection file in time."""


class EngineStartError(LauncherError):
    """Engines exited, or did not register in time."""


# ---------------------------------------------------------------- process helpers


def _check_n(n):
    """`n` engines: a whole number >= 0 (None, the CPU count, is the caller's to handle)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r}: give a whole number of engines >= 0, or None for the CPU count")
    return n


def _kill(pid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@contextlib.contextmanager
def _signals_deferred():
    """Hold a Ctrl-C (SIGINT; SIGTERM, SIGHUP where Python handles them) until the block ends,
    then raise it: one inside subprocess.Popen, after the fork, would lose a running child's pid."""
    main = threading.current_thread() is threading.main_thread()   # the one running handlers
    held, handlers = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if main else ():
        if callable(signal.getsignal(sig)):   # not SIG_DFL or SIG_IGN: Python code
            handlers[sig] = signal.signal(sig, lambda *args: held.append(args))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if held:
            handlers[held[0][0]](*held[0])


def _wait_pids(pids, deadline):
    while True:
        alive = [p for p in pids if protocol.pid_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def terminate_pids(pids, timeout=STOP_TIMEOUT_S, sig=signal.SIGTERM, what="processes"):
    """Stop `pids` (or those a function gives) and their descendants: `sig`, wait `timeout`,
    SIGKILL, wait. A Ctrl-C is held until `sig` is sent (it then ends the wait): one as they
    are found (/proc) left them running. Descendants are collected before the first signal,
    because a killed parent's children are re-parented and could not be found afterwards.
    Returns the pids still alive (none, unless a process is stuck in the kernel)."""
    with _signals_deferred():
        pids = [p for p in (pids() if callable(pids) else pids) if p]
        everything = pids + protocol.descendants(pids)
        for pid in pids:
            _kill(pid, sig)
    if alive := _wait_pids(everything, time.monotonic() + timeout):
        log.warning("%s %s did not exit %.0f s after signal %s; sending SIGKILL",
                    what, alive, timeout, sig)
        for pid in alive + protocol.descendants(alive):
            _kill(pid, signal.SIGKILL)
        if alive := _wait_pids(alive, time.monotonic() + 5.0):
            log.error("%s %s survived SIGKILL", what, alive)
    return alive


def _python_path():
    """PYTHONPATH that lets a child `python -m <pkg>.engine` import this very package.

    The folder holding the top-level package comes first, so a vendored copy
    (``myproject._vendor.minipar``) is found even when the child's cwd differs."""
    root = os.path.abspath(os.path.join(__file__, *[os.pardir] * (_PKG.count(".") + 2)))
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in [root] + rest.split(os.pathsep) if p)


def _read_text(path, limit=20000):
    """The last `limit` characters of a log file ('' if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _class_path(cls):
    """Import path of `cls` (``python -m <pkg>.launcher`` runs the package's module, whose
    classes are named by package, never ``__main__``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


# Launcher options a Cluster sets from its own arguments, never from its *_options
_SET_BY_CLUSTER = ("profile_dir", "cluster_id", "program_args")


def _check_options(cls, options, what):
    """Refuse at once, by name, an option launcher class `cls` does not take: not as a
    TypeError from inside a start, once the controller runs. A class of another shape
    (no BaseLauncher) declares no options, so its own constructor is the judge."""
    if not (isinstance(cls, type) and issubclass(cls, BaseLauncher)):
        return
    accepted = [k for k in cls._names("_options") if k not in _SET_BY_CLUSTER]
    if unknown := [k for k in options if k not in accepted]:
        own = (" (profile_dir, cluster_id and program_args come from the Cluster's own "
               "arguments)" if set(unknown) & set(_SET_BY_CLUSTER) else "")
        raise ValueError(f"{what}: {cls.__name__} takes no option {', '.join(map(repr, unknown))};"
                         f" its options are {', '.join(accepted)}{own}")


def _ended(code):
    """How a process ended, from its exit status (negative: the signal that killed it)."""
    signals = {s.value: s.name for s in signal.Signals}   # a number with no name: itself
    return f"exit code {code}" if code >= 0 else f"killed by signal {signals.get(-code, -code)}"


def _unique_id():
    return f"{int(time.time())}-{secrets.token_hex(2)}"


def _said_stopped(e, what, cluster):   # a note (3.11+) on a Ctrl-C that ended a start: undone
    if isinstance(e, KeyboardInterrupt) and hasattr(e, "add_note"):   # an inner call's goes
        e.__notes__ = [n for n in getattr(e, "__notes__", ()) if not n.startswith("Ctrl-C in ")]
        e.add_note(f"Ctrl-C in {what}(): what it had started is stopped: {cluster!r}")


# Clusters held weakly, as ipyparallel's: one nothing refers to any more is stopped when collected
# (Cluster.__del__), so a notebook cell run again stops the first run's engines, not the exit.
_STOP_AT_EXIT = weakref.WeakSet()
atexit.register(lambda: [c.stop_cluster_sync() for c in list(_STOP_AT_EXIT) if c.shutdown_atexit])


# ---------------------------------------------------------------- the contract


class BaseLauncher:
    """The launcher contract (see the module docstring).

    Subclasses declare their constructor options in ``_options`` and what ``to_dict``
    must save about the running resource in ``_state``; both are collected over the MRO."""

    kind = ""  # the short name, e.g. "local", "mpi", "slurm"
    role = ""  # what it starts: "controller", "engine(s)"; names its log file
    cluster_options = "controller_options"   # the Cluster argument holding its options
    _options = ("profile_dir", "cluster_id", "program_args", "env", "stop_timeout")
    _state = ("state", "stop_data", "output_file")

    def __init__(self, profile_dir=None, cluster_id="", program_args=(), env=None,
                 stop_timeout=STOP_TIMEOUT_S):
        self.profile_dir = protocol.profile_dir(profile_dir=profile_dir)
        self.cluster_id, self.program_args = cluster_id or "", [str(a) for a in program_args]
        self.env, self.stop_timeout = dict(env or {}), stop_timeout
        self.state, self.stop_data, self.output_file = BEFORE, None, None
        self._stop_callbacks, self._lock, self._stopped = [], threading.Lock(), threading.Event()

    def __repr__(self):
        return f"<{type(self).__name__} {self.state}>"

    # -- options and state, collected over the class hierarchy

    @classmethod
    def _names(cls, attr):
        return list(dict.fromkeys(name for klass in reversed(cls.__mro__)
                                  for name in vars(klass).get(attr, ())))

    def to_dict(self):
        """What `from_dict` needs to find this launcher's resource again (JSON-able)."""
        return {"class": _class_path(type(self)),
                "options": {k: getattr(self, k) for k in self._names("_options")},
                "state": {k: getattr(self, k) for k in self._names("_state")}}

    @classmethod
    def from_dict(cls, d):
        """A live launcher rebuilt from `to_dict()`; raises NotRunning if it is gone."""
        self = cls(**d["options"])
        for k, v in d["state"].items():
            setattr(self, k, v)
        if self.state != RUNNING:
            raise NotRunning(f"{cls.__name__} was saved in state {self.state!r}")
        self._reconstruct()
        return self

    def _reconstruct(self):
        """Check the saved resource is still there (raise NotRunning) and watch it."""
        raise NotImplementedError

    # -- states

    def _check_state(self, expected, action):
        if self.state != expected:
            raise LauncherError(f"cannot {action} {self!r}: it is {self.state}, not {expected}")

    def notify_start(self, data=None):
        """Called once the resource is requested: before -> running."""
        log.debug("%r started: %s", self, data)
        self.state = RUNNING
        return data

    def notify_stop(self, data=None):
        """Called (by a watcher thread) when the resource has ended: running -> after."""
        with self._lock:
            if self.state == AFTER:
                return
            self.state, self.stop_data = AFTER, data
            callbacks, self._stop_callbacks = self._stop_callbacks, []
        log.debug("%r stopped: %s", self, data)
        self._stopped.set()
        for f in callbacks:
            try:
                f(data)
            except Exception:
                log.exception("on_stop callback %r of %r failed", f, self)

    def on_stop(self, f):
        """Call ``f(stop_data)`` when the resource ends (at once if it already has)."""
        with self._lock:
            if self.state != AFTER:
                self._stop_callbacks.append(f)
                return
        f(self.stop_data)

    def wait(self, timeout=None):
        """Wait until the resource has ended; True if it has."""
        return self._stopped.wait(timeout)

    @property
    def running(self):
        return self.state == RUNNING

    # -- what subclasses implement

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def signal(self, sig):
        raise NotImplementedError

    def pids(self):
        """Local pids of what runs now (none for a batch job: the scheduler owns those)."""
        return []

    def get_output(self, remove=False):
        """The output (stdout and stderr) of the launched program(s) so far."""
        text = _read_text(self.output_file) if self.output_file else ""
        if remove and self.output_file:
            with contextlib.suppress(OSError):
                os.remove(self.output_file)
        return text

    # -- shared helpers

    @property
    def program_and_args(self):   # `program`: the role's (controller, engine)
        return [*self.program, "--profile-dir", self.profile_dir, *self.program_args]

    @property
    def log_dir(self):
        d = os.path.join(self.profile_dir, "log")
        with making_profile_folder(d, "the logs"):   # a file given as --profile-dir, say
            os.makedirs(d, exist_ok=True)
        return d

    def _output_path(self, role):
        name = f"{role}-{self.cluster_id or 'default'}-{secrets.token_hex(3)}.log"
        return os.path.join(self.log_dir, name)

    def _child_env(self):
        return {**os.environ, "PYTHONPATH": _python_path(), **self.env}


class ControllerLauncher(BaseLauncher):
    """Starts one controller; ``start()`` takes no arguments."""

    program = (sys.executable, "-m", f"{_PKG}.controller")

    @property
    def connection_file(self):
        return os.path.join(self.profile_dir, "security", protocol.CLIENT_FILE)


class EngineLauncher(BaseLauncher):
    """Starts engines; ``start(n)``, where None means the host's CPU count."""

    program = (sys.executable, "-m", f"{_PKG}.engine")
    cluster_options = "engine_options"
    _state = ("n",)
    n = 0  # how many engines start() started

    @staticmethod
    def _default_n(n):
        return _check_n(n) if n is not None else (os.cpu_count() or 1)


# ---------------------------------------------------------------- local processes


class LocalProcessLauncher(BaseLauncher):
    """One local subprocess; its stdout and stderr go to a log file under the profile."""

    role = "process"
    stdin = subprocess.DEVNULL  # ssh's is a pipe (ssh.py)
    _state = ("pid", "pid_start", "args")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pid = self.pid_start = self.process = self._watcher = None
        self.args = []

    def find_args(self):
        """The command line: the role's program (mpiexec and ssh launchers wrap it)."""
        return self.program_and_args

    def start(self):
        self._check_state(BEFORE, "start")
        self.args = [str(a) for a in self.find_args()]
        self.output_file = self._output_path(self.role)
        # own session: the user's Ctrl-C goes to the user's process, which stops us in order;
        # it comes once this launcher runs, watched (not inside Popen), so stop() finds us
        with _signals_deferred(), open(self.output_file, "ab") as out:
            try:
                self.process = subprocess.Popen(self.args, stdin=self.stdin, stdout=out,
                                                stderr=subprocess.STDOUT, env=self._child_env(),
                                                start_new_session=True)
            except FileNotFoundError:
                raise LauncherError(_not_installed(self, self.args[0])) from None
            self.pid = self.process.pid
            self.pid_start = protocol.proc_stat(self.pid, 19)
            log.debug("started %s (pid %s): %s", self.role, self.pid, shlex.join(self.args))
            self.notify_start({"pid": self.pid})
            self._watch(self.process.wait)

    def _watch(self, waiter):
        def run():   # executes in the watcher thread until the process ends
            code = waiter()
            if code is not None:
                self._log_end(code)
            self.notify_stop({"exit_code": code, "pid": self.pid})
        self._watcher = threading.Thread(target=run, daemon=True,
                                         name=f"minipar-watch-{self.role}-{self.pid}")
        self._watcher.start()

    def _log_end(self, code):
        # the last line of the process's log: a crash that prints nothing (os._exit, a
        # SIGKILL, a segfault without faulthandler) is still told where its output is
        try:
            with open(self.output_file, "a") as f:
                f.write(f"[{_PKG}.launcher] {self.role} pid {self.pid} ended: {_ended(code)}\n")
        except OSError as e:  # its folder removed already (a Cluster's own profile dir)
            log.debug("%s pid %s ended (%s); its log: %s", self.role, self.pid, _ended(code), e)

    def _poll_pid(self):
        while protocol.same_process(self.pid, self.pid_start):
            time.sleep(POLL_INTERVAL_S)
        return None  # not our child: its exit code is its parent's to read

    def _reconstruct(self):
        if not protocol.same_process(self.pid, self.pid_start):
            raise NotRunning(f"{self.role} pid {self.pid} is not running")
        self._watch(self._poll_pid)

    def signal(self, sig):
        self._check_state(RUNNING, "signal")
        _kill(self.pid, sig)

    def pids(self):
        return [self.pid] if self.state == RUNNING else []

    def stop(self):
        """SIGTERM, wait, SIGKILL; returns once the process (and its children) are gone."""
        if self.state == BEFORE:
            return None
        terminate_pids(lambda: self.pids() + protocol.left_in_session(self.pid, self.pid_start),
                       self.stop_timeout, what=self.role)
        self._join()
        return self.stop_data

    def _join(self):
        if self._watcher is not None:
            self._watcher.join(self.stop_timeout + 10)
        if self.state != AFTER and not protocol.same_process(self.pid, self.pid_start):
            self.notify_stop({"exit_code": None, "pid": self.pid})


class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher):
    """The controller as a local subprocess."""

    kind = "local"
    role = "controller"


class LocalEngineLauncher(LocalProcessLauncher, EngineLauncher):
    """One engine as a local subprocess."""

    kind = "local"
    role = "engine"

    def start(self, n=1):
        self.n = 1
        super().start()


class EngineSetLauncher(EngineLauncher):
    """Engines as child launchers, one per engine, started and stopped together.

    Subclasses implement ``start(n)``, filling ``self._children``; the set has stopped
    when its last child has. With ``restart="on_failure"`` an engine that exits with an
    error or is killed by a signal is replaced (see ``_restart``), so the set keeps its
    size through crashes; sets that can make a new child implement ``_new_child()``."""

    _options = ("restart",)
    _state = ("launchers", "restarts")

    def __init__(self, restart=None, **kwargs):
        super().__init__(**kwargs)
        if restart not in RESTART_POLICIES:
            raise ValueError(f"restart={restart!r}: use one of {RESTART_POLICIES}")
        self.restart, self.restarts, self._children = restart, 0, []
        self._stopping = threading.Event()  # set by stop(): from then on nothing restarts
        self._restart_lock = threading.Lock()
        self._failed_starts = 0         # engines in a row that ended before registering

    @property
    def launchers(self):
        return [c.to_dict() for c in self._children]

    @launchers.setter
    def launchers(self, dicts):
        self._children = []
        for d in dicts:
            with contextlib.suppress(NotRunning):
                self._children.append(launcher_from_dict(d))

    def _reconstruct(self):
        if not self._children:
            raise NotRunning("no engine of this set is running")
        self._watch_children()

    def _stop_data(self):
        return {"exit_codes": [(c.stop_data or {}).get("exit_code") for c in self._children]}

    def _watch_children(self, children=None):
        # notify_stop is idempotent, so the last child to stop may call it more than once
        def one_stopped(child, data):
            if self._should_restart(data):
                self._restart(child, data)
            if all(c.state == AFTER for c in self._children):
                self.notify_stop(self._stop_data())
        for c in (self._children if children is None else children):
            c.on_stop(lambda data, c=c: one_stopped(c, data))

    # -- restarting engines that fail (restart="on_failure")

    def _should_restart(self, data):
        # SIGALRM: its own watchdog ended it for a task's time_limit, ours to replace
        # whatever the policy; None: the exit code is unknown (not our child); 0: told to stop
        code = (data or {}).get("exit_code")
        return not self._stopping.is_set() and (code == -signal.SIGALRM or (
            self.restart == "on_failure" and code not in (None, 0)))

    def _new_child(self):
        """A new, not yet started, child launcher like the others (for restarts)."""
        raise NotImplementedError(f"{type(self).__name__} cannot restart engines")

    def _restart(self, old, data):
        # executes in the watcher thread of the engine that ended. An engine that ended before it
        # registered (its log says so when it does) failed to start: a bad startup script, a
        # wrong connection file. Those are restarted ever more slowly, not in a tight loop; an
        # engine that died at work (a task that crashed it, a kill) is replaced at once.
        registered = "registered as engine" in old.get_output()
        self._failed_starts = 0 if registered else self._failed_starts + 1
        delay = min(RESTART_MAX_DELAY_S, 0.1 * 2 ** self._failed_starts) \
            if self._failed_starts > RESTART_FAILED_STARTS else 0.0
        if delay and self._stopping.wait(delay):
            return
        with self._restart_lock:   # stop() takes it too: no engine starts behind its back
            if self._stopping.is_set():
                return
            try:
                new = self._new_child()
                if getattr(old, "pid", None):   # the replacement takes the id of the one
                    # it replaces, found by its pid: it may die before it logs its id
                    new.env = dict(new.env, MINIPAR_ENGINE_REPLACES=str(old.pid))
                new.start()
            except Exception as e:
                log.error("engine pid %s ended (%s) and could not be restarted: %s",
                          getattr(old, "pid", "?"), data, e)
                return
            self._children.append(new)
            self.restarts += 1
        log.warning("engine pid %s ended (%s): restarted as pid %s (%d restarts)",
                    getattr(old, "pid", "?"), data, getattr(new, "pid", "?"), self.restarts)
        self._watch_children([new])

    def pids(self):
        return [p for c in self._children for p in c.pids()]

    def signal(self, sig):
        self._check_state(RUNNING, "signal")
        for c in self._children:
            if c.state == RUNNING:
                c.signal(sig)

    def _stop_children(self):
        # SIGTERM to all at once (one grace period, not n): engines, what tasks left in sessions
        terminate_pids(lambda: self.pids() + [p for c in self._children for p in protocol.
                       left_in_session(c.pid, c.pid_start)], self.stop_timeout, what="engines")
        for c in self._children:
            c._join()

    def stop(self):
        if self.state == BEFORE and not self._children:   # children: start() was interrupted
            return None
        with self._restart_lock:
            self._stopping.set()
        self._stop_children()
        if self.state != AFTER:
            self.notify_stop(self._stop_data())
        return self.stop_data

    def get_output(self, remove=False):
        return "".join(f"--- engine pid {c.pid} ---\n{c.get_output(remove)}"
                       for c in self._children)


class LocalEngineSetLauncher(EngineSetLauncher):
    """n engines as local subprocesses."""

    kind = "local"

    def _new_child(self):
        opts = {k: getattr(self, k) for k in BaseLauncher._names("_options")}
        return LocalEngineLauncher(**opts)

    def start(self, n=None):
        self._check_state(BEFORE, "start")
        self.n = self._default_n(n)
        try:
            for _ in range(self.n):
                self._children.append(self._new_child())   # first: a Ctrl-C in start() finds it
                self._children[-1].start()
        except BaseException:
            self._stop_children()
            raise
        self.notify_start({"pids": [c.pid for c in self._children]})
        self._watch_children()


# ---------------------------------------------------------------- mpiexec


class MPILauncher(LocalProcessLauncher):
    """``mpiexec -n N [mpi_args] program``: one local process tree.

    Signals to mpiexec reach every rank (OpenMPI turns SIGINT into SIGTERM). Ranks may
    run in their own process groups and survive a SIGKILLed mpiexec, which is why stop()
    finds them as mpiexec's descendants before signalling (see terminate_pids)."""

    kind = "mpi"
    _options = ("mpi_cmd", "mpi_args")
    # what OpenMPI's mpiexec says when it will not start (as root; -n over the cores): the flag
    refusals = (("attempt to run as root", "--allow-run-as-root"),
                ("not enough slots available", "--oversubscribe"))

    def __init__(self, mpi_cmd=("mpiexec",), mpi_args=(), **kwargs):
        super().__init__(**kwargs)
        self.mpi_cmd, self.mpi_args = [str(a) for a in mpi_cmd], [str(a) for a in mpi_args]

    def find_args(self):
        return [*self.mpi_cmd, "-n", str(self.n), *self.mpi_args, *self.program_and_args]

    def get_output(self, remove=False):
        text = super().get_output(remove)
        for said, flag in self.refusals:   # mpiexec's own advice cannot name our option
            if said in text and flag not in self.mpi_args:
                text += (f"[{_PKG}] mpiexec refused ({said}): give it mpi_args="
                         f"{[*self.mpi_args, flag]!r} (of a Cluster's {self.cluster_options})\n")
        return text


class MPIControllerLauncher(MPILauncher, ControllerLauncher):
    """The controller under mpiexec (-n 1), for sites that insist on it."""

    role = "controller"
    n = 1


class MPIEngineSetLauncher(MPILauncher, EngineLauncher):
    """n engines under one mpiexec; each registers with its rank (OMPI_COMM_WORLD_RANK) as id."""

    role = "engines"

    def start(self, n=None):
        self.n = self._default_n(n)
        super().start()


# ---------------------------------------------------------------- finding launchers

# short name -> its classes' prefix ("mpi": MPIControllerLauncher, MPIEngineSetLauncher)
_BUILTIN = {"local": "Local", "mpi": "MPI", "ssh": "SSH", "slurm": "Slurm", "pbs": "PBS",
            "sge": "SGE", "lsf": "LSF"}

# the groups keep minipar's name in vendored copies too: third parties register against it
_ENTRY_POINT_GROUPS = {"controller": "minipar.controller_launchers",
                       "engine": "minipar.engine_launchers"}


def find_launcher_class(name, role):
    """The launcher class for `name`, for `role` "controller" or "engine".

    `name` may be a class, a short name ("mpi"), a class name ("MPIEngineSetLauncher"), a class-name
    prefix ("MPI"), a full import path ("pkg.mod.Class"), or a name registered in the entry-point
    group ``minipar.controller_launchers`` / ``minipar.engine_launchers``."""
    if isinstance(name, type):
        return name
    if role not in _ENTRY_POINT_GROUPS:
        raise ValueError(f"role must be 'controller' or 'engine', not {role!r}")
    suffix = "ControllerLauncher" if role == "controller" else "EngineSetLauncher"
    here = sys.modules[__name__]
    if name.lower() in _BUILTIN:
        return getattr(here, _BUILTIN[name.lower()] + suffix)
    for candidate in (name, name + suffix):
        cls = getattr(here, candidate, None)
        if isinstance(cls, type) and issubclass(cls, BaseLauncher):
            return cls
    group = _ENTRY_POINT_GROUPS[role]   # each distribution's list: entry_points(group=) is 3.10's
    for ep in (ep for dist in importlib.metadata.distributions() for ep in dist.entry_points):
        if ep.group == group and ep.name == name:
            return ep.load()
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise LauncherError(f"cannot import launcher {name!r}: {e}") from None
    raise LauncherError(f"unknown {role} launcher {name!r}: use one of {sorted(_BUILTIN)}, "
                        f"a class name, an import path or an entry point in {group}")


# ssh and batch-system launchers live in ssh.py and batch.py, which import this module;
# their names are still found here (short names, cluster files written before the move)
# on first use, so importing this module never imports them
_MOVED = {"batch": ("BatchSystemLauncher", "BatchControllerLauncher", "BatchEngineSetLauncher",
                    *(f"{system}{role}Launcher" for system in ("Slurm", "PBS", "SGE", "LSF")
                      for role in ("", "Controller", "EngineSet"))),
          "ssh": tuple(f"SSH{role}Launcher" for role in ("", "Engine", "Controller", "EngineSet"))}


def __getattr__(name):
    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"{_PKG}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def launcher_from_dict(d):
    """Rebuild a launcher saved with ``to_dict()`` (raises NotRunning if it is gone)."""
    module, _, attr = d["class"].rpartition(".")
    # our own classes are found here, whatever the package is called
    here = sys.modules[__name__] if module.rpartition(".")[2] == "launcher" else None
    cls = getattr(here, attr, None) or getattr(importlib.import_module(module), attr)
    return cls.from_dict(d)


# ---------------------------------------------------------------- Cluster


# What a coroutine twin (twins.py) undoes if its await was cancelled but its call returned
_UNDO = {"start_controller_sync": lambda c, _: c.stop_controller_sync(),
         "start_engines_sync": lambda c, set_id: c.stop_engines_sync(set_id),
         "start_cluster_sync": lambda c, _: c.stop_cluster_sync(),
         "start_and_connect_sync": lambda c, _: c.stop_cluster_sync(),
         "connect_client_sync": lambda c, rc: (c._clients.remove(rc), rc.close())}


@coroutine_twins(_UNDO)
class Cluster(SaysWhyAbsent, absent=CLUSTER_ABSENT):
    """A controller and sets of engines, started, watched and stopped together.

    ``with Cluster(n=4) as rc:`` starts a local controller and 4 local engines, waits
    until they have registered and gives a connected Client; leaving the block (also by
    an exception) closes the client and stops every process; ``async with`` too. As in
    ipyparallel, each step is a coroutine with a blocking twin that holds the code:
    ``rc = await cluster.start_and_connect()`` or ``cluster.start_and_connect_sync()``.

    Without `profile` or `profile_dir`, each cluster gets its own folder
    ``$MINIPAR_DIR/cluster_<cluster_id>`` (removed when the cluster stops), so clusters started
    side by side never share connection files. The cluster's state is saved in
    ``<profile_dir>/security/cluster-<cluster_id>.json`` for ``Cluster.from_file`` while
    anything of it runs. `controller_options` / `engine_options` are keyword arguments for the
    launchers (``engine_options={"mpi_args": ["--oversubscribe"]}``, ``{"engines": {host: n}}``);
    one a launcher does not take is a ValueError at once, naming those it does.
    ``restart_engines="on_failure"`` replaces engines that crash or are killed (local engine
    sets), so a long run keeps its engine count. `log_level` (``logging.DEBUG``, ``"DEBUG"``)
    is the Cluster's own (on stderr until logging is set up), as ipyparallel's, and the
    controller's and engines' ``--log-level`` (one in their args wins).

    With ``shutdown_atexit=True`` (the default) the cluster is stopped when this process exits or
    nothing refers to it or its Clients any more (as ipyparallel's), and the controller stops
    it once this process is gone (``--owner``: SIGTERM and SIGKILL skip atexit), with `launcher
    stop` for its batch jobs and ssh engines, where it can see this process (this host and pid
    namespace: not a batch job on a compute node, whose log says so: `launcher stop` it);
    ``shutdown_atexit=False`` (``launcher start --daemonize``) leaves it running."""

    def __init__(self, n=None, engines="local", controller="local", profile=None,
                 profile_dir=None, cluster_id=None, controller_args=(), engine_args=(),
                 timeout=START_TIMEOUT_S, controller_options=None, engine_options=None,
                 shutdown_atexit=True, restart_engines=None, log_level=None, _saved=False,
                 **traits):
        engines = traits.pop("engine_launcher_class", engines)   # ipyparallel's spellings of
        controller = traits.pop("controller_launcher_class", controller)   # these arguments
        controller_args = [*(a for k in ("ip", "location") if f"controller_{k}" in traits
                             for a in (f"--{k}", traits.pop(f"controller_{k}"))), *controller_args]
        refuse_absent("Cluster", traits, CLUSTER_ABSENT)
        self.cluster_id = cluster_id if cluster_id is not None else _unique_id()
        self._owns_profile_dir = profile is None and profile_dir is None
        if self._owns_profile_dir:
            profile_dir = os.path.join(protocol.base_dir(), f"cluster_{self.cluster_id}")
        self.profile_dir = protocol.profile_dir(profile, profile_dir)
        self.n, self.timeout, self.log_level = _check_n(n), timeout, log_level
        self.engine_kind, self.controller_kind = engines, controller
        level = [] if log_level is None else ["--log-level", protocol.log_level(  # ipyparallel's
            log_level if isinstance(log_level, str) else logging.getLevelName(log_level))]
        if level:   # the Cluster's own too (its launchers'): one level a process, the last given
            _show_log_lines(level[1], "launcher", "batch", "ssh")
        self.controller_args, self.engine_args = [*level, *controller_args], [*level, *engine_args]
        self.controller_options = dict(controller_options or {})
        self.engine_options = dict(engine_options or {})
        for role, kind, options in (("controller", controller, self.controller_options),
                                    ("engine", engines, self.engine_options)):
            # a typo of a name ("mpiexec") or an option is named now, as ipyparallel's Cluster
            if not _saved:   # does, not once the controller has started (from_file's: it was)
                _check_options(find_launcher_class(kind, role), options, f"{role}_options")
        self.shutdown_atexit = shutdown_atexit   # read at exit or collection (_STOP_AT_EXIT)
        if restart_engines not in RESTART_POLICIES:   # "on_failure": EngineSetLauncher._restart
            raise ValueError(f"restart_engines={restart_engines!r}: use one of {RESTART_POLICIES}")
        self.engine_restart = restart_engines
        self.controller, self.engines, self._clients = None, {}, []   # engines: set id -> launcher
        self._stopping = threading.RLock()   # a cancelled start's cleanup and a user's stop
        _STOP_AT_EXIT.add(self)

    def __repr__(self):
        ctl = self.controller.state if self.controller else "none"
        n = sum(e.n for e in self.engines.values())
        return f"<Cluster {self.cluster_id} controller={ctl} engines={n} at {self.profile_dir}>"

    # -- files

    @property
    def security_dir(self):
        return protocol.security_dir(self.profile_dir)

    @property
    def cluster_file(self):
        return os.path.join(self.security_dir, CLUSTER_FILE.format(cluster_id=self.cluster_id))

    @property
    def client_file(self):
        return os.path.join(self.security_dir, protocol.CLIENT_FILE)

    @property
    def engine_file(self):
        return os.path.join(self.security_dir, protocol.ENGINE_FILE)

    def to_dict(self):
        return {"cluster": {"cluster_id": self.cluster_id, "profile_dir": self.profile_dir,
                            "owns_profile_dir": self._owns_profile_dir, "n": self.n,
                            "engines": _kind_name(self.engine_kind),
                            "controller": _kind_name(self.controller_kind),
                            "controller_args": self.controller_args,
                            "engine_args": self.engine_args, "timeout": self.timeout,
                            "controller_options": self.controller_options,
                            "engine_options": self.engine_options,
                            "restart_engines": self.engine_restart, "host": socket.gethostname()},
                "controller": self.controller.to_dict() if self.controller else None,
                "engines": {k: v.to_dict() for k, v in self.engines.items()}}

    _elsewhere = None   # the other host whose Cluster wrote the file read (from_file)

    def _is_running(self):
        """Whether the controller or an engine set of this cluster still runs."""
        return any(x.running for x in [self.controller, *self.engines.values()] if x is not None)

    def _update_cluster_file(self):
        # the file describes a running cluster; once nothing runs, it goes (as ipyparallel)
        if self._is_running():
            return protocol.write_connection_file(self.cluster_file, self.to_dict())
        self._remove_files()

    @classmethod
    def from_file(cls, cluster_file=None, *, profile=None, profile_dir=None, cluster_id=None):
        """The Cluster saved in `cluster_file`, or in a profile, its launchers reconnected.

        Without `cluster_file`: cluster `cluster_id` of the profile, or, without it (or with
        "", `ipcluster start`'s id), the one running cluster there (an error names them if
        several). Without `profile` and `profile_dir`: every folder in $MINIPAR_DIR (ipyparallel:
        the default profile), so ``Cluster(n=2)`` is found too. Launchers whose resources are
        gone are dropped (`controller` becomes None), but an ssh set that left files on hosts
        is kept, ended, for stop(). The returned Cluster does not stop anything at exit."""
        if cluster_file is None:
            cluster_file = find_cluster_file(profile=profile, profile_dir=profile_dir,
                                             cluster_id=cluster_id)
        d = json.loads(pathlib.Path(cluster_file).read_text())
        c = d["cluster"]
        self = cls(n=c["n"], engines=c["engines"], controller=c["controller"],
                   profile_dir=c["profile_dir"], cluster_id=c["cluster_id"],
                   controller_args=c["controller_args"], engine_args=c["engine_args"],
                   timeout=c["timeout"], controller_options=c["controller_options"],
                   engine_options=c["engine_options"], shutdown_atexit=False,
                   restart_engines=c.get("restart_engines"), _saved=True)
        self._owns_profile_dir = c["owns_profile_dir"]
        # a profile folder shared between hosts (NFS): another's pids mean nothing here
        self._elsewhere = c.get("host") if c.get("host") != socket.gethostname() else None
        if d["controller"]:
            try:
                self.controller = launcher_from_dict(d["controller"])
            except NotRunning:
                log.info("cluster %s: its controller is gone", self.cluster_id)
        for set_id, ed in d["engines"].items():
            try:
                self.engines[set_id] = launcher_from_dict(ed)
            except NotRunning:
                log.info("cluster %s: engine set %s is gone", self.cluster_id, set_id)
        return self

    # -- controller

    def start_controller_sync(self, **options):
        """Start the controller, wait for its connection file; the launcher. `options`:
        keyword arguments for the launcher, over `controller_options`."""
        if self.controller is not None and self.controller.running:
            raise LauncherError(f"{self!r} already has a running controller: stop_cluster_sync() "
                                "first, add engines with start_engines_sync(n), or connect to it "
                                "with connect_client_sync()")
        # without --reuse, a new key and ports: Clients of one that ended can never reach it
        if "--reuse" not in self.controller_args:
            self._close_clients()
        if (info := protocol.live_controller(self.profile_dir)) is not None:
            raise LauncherError(held_profile_message(info, self.profile_dir))
        cls = find_launcher_class(self.controller_kind, "controller")
        options = {**self.controller_options, **options}
        _check_options(cls, options, "controller options")
        args = self.controller_args
        if self.shutdown_atexit:
            # atexit does not run when this process dies by SIGTERM or SIGKILL: the controller
            # then stops the cluster, where it sees us (protocol.local_process: not on another host)
            args = [*args, f"--owner={protocol.process_key(os.getpid())}"]
        self.controller = cls(profile_dir=self.profile_dir, cluster_id=self.cluster_id,
                              program_args=args, **options)
        started = time.time()
        try:
            self.controller.start()
            protocol.write_connection_file(self.cluster_file, self.to_dict())
            self._wait_for_connection_file(started)
        except BaseException as e:
            self.controller.stop()
            self._update_cluster_file()
            _said_stopped(e, "start_controller_sync", self)
            raise
        return self.controller

    def _wait_for_connection_file(self, started):
        # Written atomically (rename): a complete document means ready, unless older than this
        # start (--reuse keeps files) or, from a local controller, another pid's (another Cluster).
        deadline = time.monotonic() + self.timeout
        pid = getattr(self.controller, "pid", None)
        local = isinstance(self.controller, LocalControllerLauncher)
        while True:
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(pathlib.Path(self.client_file).read_text())
                fresh = os.stat(self.client_file).st_mtime >= started - 1.0
                if info.get("pid") == pid or (fresh and not local):
                    return info
            if self.controller.state == AFTER:
                output = self.controller.get_output()
                raise _start_error(output)(
                    f"the controller exited ({self.controller.stop_data}) before writing "
                    f"{self.client_file}; its output:\n{output}")
            if time.monotonic() > deadline:
                raise ControllerStartError(
                    f"the controller did not write {self.client_file} within "
                    f"{self.timeout} s; its output so far:\n{self.controller.get_output()}")
            sleep_unless_cancelled(0.05)

    # -- engines

    def start_engines_sync(self, n=None, engine_set_id=None, *, engines=None, **options):
        """Start a set of `n` engines (default ``self.n``) of kind `engines` (default the
        cluster's), `options` for its launcher; its engine set id (new, or one not in use)."""
        n = _check_n(n) if n is not None else self.n
        if engine_set_id in self.engines:
            raise LauncherError(f"engine set {engine_set_id!r} is in use; stop it first")
        cls = find_launcher_class(engines or self.engine_kind, "engine")
        opts = self.engine_options if engines is None else {}
        if self.engine_restart and issubclass(cls, EngineSetLauncher):
            options.setdefault("restart", self.engine_restart)
        options = {**opts, **options}
        _check_options(cls, options, "engine options")
        launcher = cls(profile_dir=self.profile_dir, cluster_id=self.cluster_id,
                       program_args=self.engine_args, **options)
        while engine_set_id is None or engine_set_id in self.engines:
            engine_set_id = _unique_id()
        self.engines[engine_set_id] = launcher   # first: a Ctrl-C in start() finds it
        try:
            launcher.start(n)
        except BaseException as e:
            self.stop_engines_sync(engine_set_id)
            _said_stopped(e, "start_engines_sync", self)
            raise
        self._update_cluster_file()
        return engine_set_id

    def _engine_output(self):
        return "\n".join(f"=== engine set {k} ({type(v).__name__}, {v.state}) ===\n"
                         f"{v.get_output()}" for k, v in self.engines.items())

    def wait_for_engines(self, n=None, timeout=None, client=None):
        """Wait until `n` engines (default: all started) have registered."""
        n = sum(e.n for e in self.engines.values()) if n is None else n
        timeout = self.timeout if timeout is None else timeout
        rc = client if client is not None else (
            self._clients[-1] if self._clients else self.connect_client_sync())
        deadline = time.monotonic() + timeout
        while len(rc.ids) < n:
            sleep_unless_cancelled(0)
            if self.controller is not None and self.controller.state == AFTER:
                raise ControllerStartError(
                    f"the controller stopped ({self.controller.stop_data}) while waiting for "
                    f"engines; its output:\n{self.controller.get_output()}")
            if self.engines and all(e.state == AFTER for e in self.engines.values()):
                raise EngineStartError(f"every engine exited; {len(rc.ids)} of {n} registered. "
                                       f"Their output:\n{self._engine_output()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(rc.ids)} of {n} engines registered within {timeout} s. "
                    f"Engine output:\n{self._engine_output()}")
            with contextlib.suppress(TimeoutError):
                rc.wait_for_engines(n, timeout=min(0.5, remaining), progress=False)
        return rc

    def stop_engines_sync(self, engine_set_id=None):
        """Stop one engine set (default: all); returns when its processes (those ended too) are
        gone and the Clients made here list them no more (as ipyparallel's) or `timeout` s after."""
        sets = [engine_set_id] if engine_set_id is not None else list(self.engines)
        gone = {(getattr(c, "pid", None), socket.gethostname()) for s in sets
                for c in getattr(self.engines[s], "_children", [self.engines[s]])}
        for set_id in sets:
            self.engines.pop(set_id).stop()
        self._update_cluster_file()
        deadline = time.monotonic() + self.timeout
        for rc in list(self._clients) if getattr(self.controller, "running", False) else []:
            with rc._engines_changed:   # woken by the controller's notices and by close()
                if not rc._engines_changed.wait_for(lambda: rc._closed or rc._gone or not gone & {
                        (e.get("pid"), e.get("host")) for e in rc._engines.values()},
                        max(0, deadline - time.monotonic())):
                    log.warning("%r lists stopped engines %s s after", rc, self.timeout)

    def restart_engines_sync(self, engine_set_id=None):
        """Stop engine sets, start each again with the same kind, size and id; the ids."""
        ids = [engine_set_id] if engine_set_id is not None else list(self.engines)
        for set_id in ids:
            old = self.engines[set_id]
            self.stop_engines_sync(set_id)
            opts = {k: getattr(old, k) for k in old._names("_options") if k not in _SET_BY_CLUSTER}
            self.start_engines_sync(old.n, set_id, engines=type(old), **opts)
        return ids

    def signal_engines_sync(self, signum, engine_set_id=None):
        """Send signal `signum` to every engine (of one set)."""
        for set_id in [engine_set_id] if engine_set_id is not None else list(self.engines):
            self.engines[set_id].signal(signum)

    # -- clients

    def connect_client_sync(self, **kwargs):
        """A new Client connected to this cluster's controller."""
        from .client import Client  # the client imports nothing from here: no cycle

        kwargs.setdefault("timeout", self.timeout)
        if not os.path.exists(self.client_file) and not getattr(self.controller, "running", False):
            raise ConnectionFileError(  # not `python -m minipar.controller`: the Cluster starts it
                f"this Cluster's controller is not running (no {self.client_file}): start the "
                "cluster first, with cluster.start_cluster_sync() or `with Cluster(...) as rc:`")
        rc = Client(url_file=self.client_file, **kwargs)
        rc.cluster = self   # as ipyparallel's: rc.cluster.stop_cluster_sync(); alive while rc is
        self._clients.append(rc)
        return rc

    # -- the whole cluster

    def start_cluster_sync(self, n=None):
        """Start the controller and one set of `n` engines; self. A running controller is
        a LauncherError, as ipyparallel's (a notebook cell run twice started more engines)."""
        self.start_controller_sync()
        try:
            self.start_engines_sync(n)
        except BaseException as e:
            self.stop_cluster_sync()
            _said_stopped(e, "start_cluster_sync", self)
            raise
        return self

    def start_and_connect_sync(self, n=None, activate=False):
        """Start everything, wait for every engine to register, return a Client;
        `activate`: make a blocking DirectView on all engines the target of ``%px``."""
        self.start_cluster_sync(n)
        try:
            rc = self.connect_client_sync()
            self.wait_for_engines(client=rc)
            if activate:
                rc.activate()  # a blocking DirectView on all engines, for %px
        except BaseException as e:
            self.stop_cluster_sync()
            _said_stopped(e, "start_and_connect_sync", self)
            raise
        return rc

    def stop_controller_sync(self):
        """Stop the controller; its launcher stays in `controller` (state "after")."""
        if self.controller is not None:
            self.controller.stop()
        if "--reuse" not in self.controller_args:   # it never comes back (see above)
            self._close_clients()
        self._update_cluster_file()

    def _close_clients(self):
        clients, self._clients = self._clients, []
        for rc in clients:
            try:
                rc.close()
            except Exception:
                log.exception("closing %r", rc)

    def stop_cluster_sync(self):
        """Stop every engine, then the controller; close the Clients made here, one stop at a
        time. Each step runs even after one failed or met a Ctrl-C, raised (chained) at the end."""
        with self._stopping, contextlib.ExitStack() as steps:   # they run last first
            steps.callback(self._remove_files)   # also after an engine set that would not stop
            steps.callback(self.stop_controller_sync)
            for set_id in reversed(list(self.engines)):
                steps.callback(self.stop_engines_sync, set_id)
            steps.callback(self._close_clients)   # a Ctrl-C in it, before this, stopped nothing

    def _remove_files(self):
        with contextlib.suppress(OSError):
            os.remove(self.cluster_file)
        if self._owns_profile_dir:
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    def __del__(self, _suppress=contextlib.suppress):   # bound now, for interpreter exit
        with _suppress(Exception):   # AttributeError: __init__ raised
            if self.shutdown_atexit and self._is_running():
                self.stop_cluster_sync()

    def __enter__(self):
        return self.start_and_connect_sync()

    def __exit__(self, *exc):
        self.stop_cluster_sync()

    async def __aenter__(self):
        return await self.start_and_connect()

    async def __aexit__(self, *exc):
        await self.stop_cluster()


def _start_error(output):
    """The controller's own error class when its output names one (ports), else ours."""
    from . import controller  # only on this error path: it imports the scheduler

    return next((cls for cls in (controller.PortInUseError, controller.NoPortsLeftError)
                 if f"{cls.__name__}: " in output), ControllerStartError)


def _kind_name(kind):
    return _class_path(kind) if isinstance(kind, type) else kind


def _all_profile_dirs():
    """Every folder in $MINIPAR_DIR: named profiles and the folders of Cluster()s."""
    base = protocol.base_dir()
    with contextlib.suppress(OSError):
        return sorted(p for p in (os.path.join(base, f) for f in os.listdir(base))
                      if os.path.isdir(p))
    return []


def _profile_dirs(profile=None, profile_dir=None):
    """One profile's folder, or (neither given) every folder in $MINIPAR_DIR."""
    return ([protocol.profile_dir(profile, profile_dir)]
            if profile is not None or profile_dir is not None else _all_profile_dirs())


def cluster_files(profile=None, profile_dir=None):
    """Cluster files of one profile, or of every profile under $MINIPAR_DIR; newest first."""
    found = [p for folder in _profile_dirs(profile, profile_dir) for p in glob.glob(
        os.path.join(glob.escape(folder), "security", "cluster-*.json"))]
    return sorted(found, key=lambda p: -os.path.getmtime(p))


def _running(path):
    with contextlib.suppress(*_UNREADABLE):
        return Cluster.from_file(path)._is_running()
    return False  # unreadable: `list` warns about it


def _searched(profile, profile_dir):
    """Where cluster_files(profile, profile_dir) looks, in words."""
    return profile_dir or (f"profile {profile}" if profile else protocol.base_dir())


def find_cluster_file(profile=None, profile_dir=None, cluster_id=None):
    """The file of cluster `cluster_id`, or else (also for "", ipcluster's default id, if
    no cluster has it) of the one running cluster; an error naming none or several."""
    paths, left = cluster_files(profile, profile_dir), 0
    name = None if cluster_id is None else CLUSTER_FILE.format(cluster_id=cluster_id)
    named = [p for p in paths if os.path.basename(p) == name]
    if named or cluster_id:
        paths, what = named, f"cluster {cluster_id!r}"
    else:
        left, paths = len(paths), [p for p in paths if _running(p)]
        what = "running cluster"
    if len(paths) == 1:
        return paths[0]
    where = _searched(profile, profile_dir)
    see = f"see `python -m {_PKG}.launcher list`"
    for pdir in _profile_dirs(profile, profile_dir) if not paths and cluster_id is None else ():
        if (info := protocol.live_controller(pdir)) is not None:   # by hand: no cluster file
            raise LauncherError(
                f"no cluster found in {where}, but a controller started by hand (pid "
                f"{info['pid']}, `python -m {_PKG}.controller`) holds {pdir}: the launcher "
                "did not start it, so it can neither add engines to it nor stop it. Start "
                f"engines with `python -m {_PKG}.engine "
                f"{f'--profile {profile}' if profile else f'--profile-dir {shlex.quote(pdir)}'}"
                f"`; stop it with `kill {info['pid']}`")
    if not paths:   # files left only by clusters that stopped: they go with `clean`
        raise LauncherError(f"no {what} found in {where}; " + (see if not left else (
            f"{left} cluster file(s) there of clusters that stopped (their starter killed, "
            f"say): `python -m {_PKG}.launcher clean` (same --profile-dir) removes them")))
    found = ", ".join(f"{os.path.basename(p)[8:-5]} ({os.path.dirname(os.path.dirname(p))})"
                      for p in paths)
    raise LauncherError(f"{len(paths)} {what}s found in {where}: {found}; choose one with "
                        f"cluster_id= (--cluster-id) or profile_dir= (--profile-dir); {see}")


def cluster_profile_dir(profile=None, profile_dir=None, cluster_id=None):
    """The profile folder of cluster `cluster_id`, found as Cluster.from_file finds it:
    where ``Client(cluster_id=...)`` connects, as ipyparallel's (whose profile holds a
    connection file per cluster id), not to a controller that holds the default profile."""
    with open(find_cluster_file(profile, profile_dir, cluster_id)) as f:
        return json.load(f)["cluster"]["profile_dir"]


class ClusterManager:
    """The clusters of some profiles, by key ``"<profile>:<cluster_id>"`` (a profile's name,
    or its folder outside $MINIPAR_DIR), as ipyparallel's. ``load_clusters()`` reads the
    cluster files of the profiles (default: those given here, else every folder in
    $MINIPAR_DIR); ``get_cluster(key).stop_cluster_sync()`` stops one."""

    def __init__(self, profile=None, profile_dir=None):
        self.profile, self.profile_dir = profile, profile_dir
        self.clusters = {}  # key -> Cluster

    @staticmethod
    def _cluster_key(cluster):
        pdir = cluster.profile_dir
        folder, name = os.path.split(pdir)
        if folder == os.path.abspath(protocol.base_dir()) and name.startswith("profile_"):
            pdir = name[len("profile_"):]
        return f"{pdir}:{cluster.cluster_id}"

    def load_clusters(self, *, profile_dirs=None, profile_dir=None, profiles=None,
                      profile=None, init_default_clusters=False):
        """Add the clusters found on disk, drop those that stopped; `clusters`.
        `init_default_clusters`: a Cluster with id "" for a profile without any."""
        for key, cluster in list(self.clusters.items()):
            if cluster.controller is not None and not cluster._is_running():
                del self.clusters[key]   # stopped; a new one not yet started stays
        if profile_dirs is None:  # the first given: profile_dir(s), profile(s), all
            profile_dir, profile = profile_dir or self.profile_dir, profile or self.profile
            profiles = profiles or ([profile] if profile else None)
            profile_dirs = ([profile_dir] if profile_dir else [
                protocol.profile_dir(p) for p in profiles] if profiles else _all_profile_dirs())
        loaded = {os.path.join(c.profile_dir, "security", CLUSTER_FILE.format(
            cluster_id=c.cluster_id)) for c in self.clusters.values()}  # makes no folder
        for pdir in profile_dirs:
            paths = cluster_files(profile_dir=pdir)
            if init_default_clusters and not paths:
                cluster = Cluster(profile_dir=pdir, cluster_id="")
                self.clusters.setdefault(self._cluster_key(cluster), cluster)
            for path in paths:
                if path in loaded:
                    continue
                try:
                    cluster = Cluster.from_file(path)
                except _UNREADABLE as e:
                    log.warning("unreadable cluster file %s: %s", path, e)
                    continue
                self.clusters[self._cluster_key(cluster)] = cluster
        return self.clusters

    def list_clusters(self):
        return list(self.clusters)  # the keys (minipar's: ipyparallel 9 has only `clusters`)

    def new_cluster(self, **kwargs):
        """A new, not yet started Cluster(**kwargs), kept here; (key, cluster)."""
        cluster = Cluster(**kwargs)
        key = self._cluster_key(cluster)
        if key in self.clusters:
            raise KeyError(f"cluster {key} already exists")
        self.clusters[key] = cluster
        return key, cluster

    def get_cluster(self, cluster_id):
        return self.clusters[cluster_id]  # a key from list_clusters()

    def remove_cluster(self, cluster_id):
        del self.clusters[cluster_id]  # forget it; as in ipyparallel, it is not stopped


def cluster_stop_args(pid, profile_dir, owner=None):
    """The arguments of ``python -m <pkg>.launcher`` that stop the cluster whose file in
    `profile_dir` records controller `pid` (or, not recorded for a batch job or ssh host,
    ``--owner=OWNER``), its engines too; None where none does."""
    for path in cluster_files(profile_dir=profile_dir):
        with contextlib.suppress(OSError, ValueError, KeyError, AttributeError, TypeError):
            d = json.loads(pathlib.Path(path).read_text())
            if d["controller"]["state"].get("pid") == pid or (   # None: a TypeError
                    f"--owner={owner}" in d["controller"]["options"]["program_args"]):
                return ["stop", "--profile-dir", profile_dir, "--cluster-id",
                        d["cluster"]["cluster_id"]]
    return None


def held_profile_message(info, profile_dir):
    """Why a second controller may not start on `profile_dir`, and how to free it: `launcher
    stop`, else SIGTERM (the controller stops cleanly and removes its connection files)."""
    args = cluster_stop_args(info["pid"], profile_dir)
    stop = f"python -m {_PKG}.launcher {shlex.join(args)}" if args else f"kill {info['pid']}"
    return (f"a controller (pid {info['pid']} on host {info.get('host')}) is already running "
            f"with profile dir {profile_dir}; a second one would overwrite its connection "
            "files and, when stopped, delete them, leaving it unreachable. Stop it with "
            f"`{stop}`, or use another profile (--profile or --profile-dir)")


# ---------------------------------------------------------------- python -m <pkg>.launcher

def _describe(cluster):
    ctl = cluster.controller
    ctl = f"pid {ctl.pid}" if ctl is not None and getattr(ctl, "pid", None) else (
        ctl.state if ctl is not None else f"on {cluster._elsewhere}" if cluster._elsewhere
        else "stale" if not cluster._is_running() else "stopped")
    n = sum(e.n for e in cluster.engines.values() if e.running)
    return f"{cluster.cluster_id}\t{ctl}\t{n}\t{cluster.profile_dir}"


def _engine_count(text):
    try:
        return _check_n(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of engines (a whole number >= 0)") from None


def _json_option(text):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise LauncherError(f"launcher options must be a JSON object: {e}: {text!r}") from None
    if not isinstance(value, dict):
        raise LauncherError(f"launcher options must be a JSON object, not {text!r}")
    return value


def _cmd_start(args):
    profile = args.profile if args.profile or args.profile_dir else "default"
    cluster = Cluster(n=args.n, engines=args.engines, controller=args.controller, profile=profile,
                      profile_dir=args.profile_dir, cluster_id=args.cluster_id,
                      timeout=args.timeout, controller_args=shlex.split(args.controller_args),
                      engine_args=shlex.split(args.engine_args),
                      controller_options=_json_option(args.controller_options),
                      engine_options=_json_option(args.engine_options),
                      shutdown_atexit=not args.daemonize)
    # SIGTERM and SIGHUP (its terminal closed; not nohup's) stop what was started, as Ctrl-C does:
    # a batch job still pending would outlive this process (only a local controller sees it end)
    hup = (signal.SIGHUP,) * (signal.getsignal(signal.SIGHUP) != signal.SIG_IGN)
    for sig in (signal.SIGTERM, *hup):
        signal.signal(sig, signal.default_int_handler)
    rc = cluster.start_and_connect_sync()
    # A SimpleQueue, whose put() may run in a signal handler: an Event's set() there hung for good
    # when the signal landed while the main thread held its lock, before a wait() slept (load 7)
    done = queue.SimpleQueue()
    if not args.daemonize:
        # foreground, as ipcluster: run until Ctrl-C / SIGTERM / SIGHUP, or until the controller
        # ends (a client's shutdown(hub=True), or `stop` from another process); handled from
        # before "ready" is printed, so a Ctrl-C right after it stops cleanly too
        for sig in (signal.SIGINT, signal.SIGTERM, *hup):
            signal.signal(sig, lambda *_: done.put(None))
    n, pdir = len(rc.ids), cluster.profile_dir
    stop = f"python -m {_PKG}.launcher " + shlex.join(
        ["stop", "--profile-dir", pdir, "--cluster-id", cluster.cluster_id])
    print(f"cluster {cluster.cluster_id} ready: {n} engine{'s' * (n != 1)}; profile dir {pdir}"
          f"\nconnect with {_PKG}.Client(profile_dir={pdir!r}); stop it with "
          + (f"`{stop}`" if args.daemonize else f"Ctrl-C (or `{stop}`)"), flush=True)
    cluster._close_clients()
    if args.daemonize:
        return 0
    cluster.controller.on_stop(lambda data: done.put((data or {}).get("exit_code")))
    while True:   # a signal that another thread took wakes no get(): it runs after this one
        with contextlib.suppress(queue.Empty):
            code = done.get(timeout=1.0)   # None: Ctrl-C or SIGTERM here, or not known
            break
    why = f": its controller ended, {_ended(code)}" if code else ""   # 0: told to stop
    print(f"stopping cluster {cluster.cluster_id}{why}", flush=True)
    cluster.stop_cluster_sync()
    return 1 if code else 0


def _cmd_engines(args):
    cluster = Cluster.from_file(profile=args.profile, profile_dir=args.profile_dir,
                                cluster_id=args.cluster_id)
    if cluster.controller is None:
        raise LauncherError(f"cluster {cluster.cluster_id} has no running controller")
    rc = cluster.connect_client_sync()
    before = len(rc.ids)
    n = args.n if args.n is not None else (os.cpu_count() or 1)   # as --help says
    set_id = cluster.start_engines_sync(n, engines=args.engines)
    try:   # as ipcluster engines: a Ctrl-C stops those it started (the cluster's others run on)
        cluster.wait_for_engines(before + n, client=rc)
    except KeyboardInterrupt:
        print(f"stopping the {n} engine(s) it started", file=sys.stderr, flush=True)
        cluster.stop_engines_sync(set_id)
        raise
    print(f"cluster {cluster.cluster_id}: {len(rc.ids)} engine{'s' * (len(rc.ids) != 1)}",
          flush=True)
    cluster._close_clients()
    return 0


def _cmd_stop(args):
    paths = (cluster_files(args.profile, args.profile_dir) if args.all else
             [find_cluster_file(args.profile, args.profile_dir, args.cluster_id)])
    for cluster in [Cluster.from_file(p) for p in paths]:
        cluster.stop_cluster_sync()
        print(f"stopped cluster {cluster.cluster_id}", flush=True)
    if not paths:   # --all, with none: said, where it exited 0 saying nothing
        print(f"no cluster to stop in {_searched(args.profile, args.profile_dir)}; see "
              f"`python -m {_PKG}.launcher list`")
    return 0


def _cmd_list(args):
    clusters = ClusterManager(args.profile, args.profile_dir).load_clusters().values()
    rows = [_describe(c) for c in clusters]   # the header goes above rows only, not an error
    stale = sum(not (c._is_running() or c._elsewhere) for c in clusters)  # starter killed, say
    held = {os.path.abspath(c.profile_dir) for c in clusters if c.controller is not None}
    # controllers started by hand write no cluster file: found by their connection files
    for pdir in _profile_dirs(args.profile, args.profile_dir):
        info = None if os.path.abspath(pdir) in held else protocol.live_controller(pdir)
        if info is not None:
            rows.append(f"-\tpid {info['pid']} (by hand)\t?\t{pdir}")
    chosen = (f" --profile-dir {shlex.quote(args.profile_dir)}" if args.profile_dir else
              f" --profile {shlex.quote(args.profile)}" if args.profile else "")
    print("\n".join(["cluster_id\tcontroller\tengines\tprofile_dir", *rows]) if rows else
          f"no cluster running in {_searched(args.profile, args.profile_dir)}: start one with "
          f"`python -m {_PKG}.launcher start -n 4{chosen}`")
    if stale:
        print(f"{stale} stale cluster(s): nothing of them runs (their starter was killed, "
              f"say); `python -m {_PKG}.launcher clean` removes their files", file=sys.stderr)
    return 0


def _cmd_clean(args):
    """Remove the files of clusters started on this host that are no longer running."""
    said = []
    for path in cluster_files(args.profile, args.profile_dir):
        try:
            cluster = Cluster.from_file(path)
        except _UNREADABLE:
            os.remove(path)
            said.append(f"removed unreadable cluster file {path}")
            continue
        if cluster._elsewhere:   # its pids cannot be checked here, nor what runs stopped
            said.append(f"left cluster {cluster.cluster_id} ({path}): started on host "
                        f"{cluster._elsewhere}, whose processes it names; run clean there")
        elif not cluster._is_running():   # stopped: what an ended set left on hosts goes too
            cluster.stop_cluster_sync()
            said.append(f"removed cluster {cluster.cluster_id} ({path})")
    print("\n".join(said) or "nothing to clean: no files of stopped clusters in "
          f"{_searched(args.profile, args.profile_dir)}")
    return 0


def _joined_args(argv):
    """`argv` with ``--controller-args X`` and ``--engine-args X`` as ``--...-args=X``:
    argparse takes no value starting with '-' after a space (``--controller-args
    --reuse`` is an error), and these values, command lines of their own, mostly do."""
    joined, words = [], iter(argv)
    for word in words:
        if word in ("--controller-args", "--engine-args"):
            value = next(words, None)
            word = word if value is None else f"{word}={value}"
        joined.append(word)
    return joined


def main(argv=None):
    parser = argparse.ArgumentParser(prog=f"python -m {_PKG}.launcher", description=(
        "Start, list and stop minipar clusters (controller + engines)."))
    sub = parser.add_subparsers(dest="command", required=True)

    def selection(p):
        p.add_argument("--profile", help="profile name ($MINIPAR_DIR/profile_NAME)")
        p.add_argument("--profile-dir", help="profile folder")
        p.add_argument("--cluster-id", help="which cluster of the profile")

    p = sub.add_parser("start", help="start a controller and engines")
    selection(p)
    p.add_argument("-n", "--n", type=_engine_count, help="number of engines (default: CPU count)")
    p.add_argument("--engines", default="local",
                   help=f"engine launcher kind: {', '.join(_BUILTIN)} (default local)")
    p.add_argument("--controller", default="local",
                   help=f"controller launcher kind: {', '.join(_BUILTIN)} (default local)")
    p.add_argument("--controller-args", default="", metavar="ARGS",
                   help="extra controller arguments, one string: '--ip 0.0.0.0 --reuse'")
    p.add_argument("--engine-args", default="", metavar="ARGS",
                   help="extra engine arguments, one string: '--log-level DEBUG'")
    p.add_argument("--controller-options", default="{}", metavar="JSON",
                   help='controller launcher options, e.g. \'{"hostname": "h1"}\'')
    p.add_argument("--engine-options", default="{}", metavar="JSON",
                   help='engine launcher options, e.g. \'{"mpi_args": ["--oversubscribe"]}\'')
    p.add_argument("--timeout", type=functools.partial(protocol.seconds, positive=True),
                   default=START_TIMEOUT_S, metavar="S", help="seconds to wait for the "
                   f"controller and engines to be ready (default {START_TIMEOUT_S:g})")
    p.add_argument("--daemonize", action="store_true",
                   help="leave the cluster running and return once it is ready")
    p.set_defaults(func=_cmd_start)
    p = sub.add_parser("engines", help="add engines to a running cluster")
    selection(p)
    p.add_argument("-n", "--n", type=_engine_count, help="number of engines (default: CPU count)")
    p.add_argument("--engines", default=None,
                   help=f"engine launcher kind: {', '.join(_BUILTIN)} (default: the cluster's)")
    p.set_defaults(func=_cmd_engines)
    p = sub.add_parser("stop", help="stop a cluster")
    selection(p)
    p.add_argument("--all", action="store_true",
                   help="stop every cluster (of the profile, if one is given)")
    p.set_defaults(func=_cmd_stop)
    for name, func, what in (("list", _cmd_list, "list clusters"),
                             ("clean", _cmd_clean, "remove files of stopped clusters")):
        p = sub.add_parser(name, help=f"{what} (of one profile, or all in $MINIPAR_DIR)")
        p.add_argument("--profile", help="profile name")
        p.add_argument("--profile-dir", help="profile folder")
        p.set_defaults(func=func)
    parser.add_argument("--log-level", default=os.environ.get("MINIPAR_LOG_LEVEL", "WARNING"),
                        type=protocol.log_level,
                        help="DEBUG, INFO, WARNING (default, or $MINIPAR_LOG_LEVEL) or ERROR")
    words = _joined_args(sys.argv[1:] if argv is None else argv)
    if words[:1] and words[0].startswith("-") and words[0].partition("=")[0] not in (
            "-h", "--help", "--log-level"):   # IPython.kernel's `ipcluster -n 4`: a start
        words.insert(0, "start")
    args = parser.parse_args(words)
    level = "DEBUG" if os.environ.get("MINIPAR_DEBUG") else args.log_level
    logging.basicConfig(level=level, format="%(asctime)s launcher %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (LauncherError, OSError, ValueError) as e:   # OSError: a folder it cannot make
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # before `start` is ready: what it started stops at exit
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # run main() of the package's module, not of this __main__ copy: batch.py's classes
    # derive from that module's classes and raise its LauncherError, which main() catches
    from . import launcher
    sys.exit(launcher.main())
