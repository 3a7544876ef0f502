"""The engine: runs requests in a persistent namespace, one at a time.

Three threads, each owning its sockets::

    controller ROUTER "engine" ◀──▶ DEALER ── receiver thread: control messages, at once
                               ◀──▶ DEALER ── main thread: requests in, replies out, user
                                (identity + ".r")  code; wakes the receiver (PUSH ▶ PULL)
    controller PUB "ping" ──▶ SUB ┐ heart: zmq.proxy in C, so a main thread busy in C
    controller ROUTER "pong" ◀─ DEALER ┘ still answers; a capture copy tells the receiver
                                        the controller is alive

The main thread runs user code, so signals and KeyboardInterrupt reach it; the receiver interrupts
it (INTERRUPT_SIGNAL to the main thread) to abort a running task or to enforce a task's
`time_limit`. Control messages (abort, interrupt, shutdown) overtake queued work; an abort is
acknowledged once its requests are marked, so the controller answers the client only when a queued
request it aborted can no longer start. A take-back is such an abort from the controller, for the
load-balanced tasks queued behind one that runs long (``running``): the engine marks them, keeps the
marks only if that task still runs (requests run in the order sent, so none of them has started),
and answers with those it kept (``taken``; all or none). A request taken back is dropped unanswered
when it comes up; the controller queued it again, for another engine (direct ones a client aborted
``behind`` the oldest: failed). The engine registers with ``take_back``: an older one, which would
read a take-back as an abort, is never sent one. Every STREAM_INTERVAL_S the receiver sends what the
running request printed or published (``datapub.publish_data``) as ``stream`` messages
(``datapub.Streamer``), and ``started`` for one still running (its future is running()). Every
USAGE_PERIOD_S it sends ``usage`` (CPU time, memory, running request) for rc.status and minipar.top.

Startup: --startup-script, then --startup-command, run before the engine connects; one
that raises ends it (status 1, one line naming it, its exception and line) before the
controller knows of it, so no work is ever sent to an engine that failed to start; one
that calls sys.exit ends it with that status, saying so.

Signals: SIGTERM (`kill PID`, a batch job's end; SIGHUP too) stops an idle engine as a shutdown
request does (it unregisters, exits 0); one running a request dies of it, and the controller fails
or retries that request. SIGINT interrupts the running request (KeyboardInterrupt). An idle engine
ignores SIGINT, as an IPython kernel does (so a `Cluster.signal_engines_sync(SIGINT)` meant for a
task never ends one that just finished), unless it runs in its terminal's foreground: there a SIGINT
may be its user's Ctrl-C (a process cannot tell one from a `kill -INT`), and it stops as on SIGTERM;
busy, it interrupts the request and says the next Ctrl-C stops it too (the requests queued are then
answered as aborted). An engine started by a launcher (its own session), in the background (`&`), by
`ssh` without -t or by a batch job is never in a terminal's foreground. One waiting for its
connection file (started before its controller) does as an idle one. A task that puts its own
handler in place for either (itself, or a library it imports) keeps it while it runs; the engine's
is back after it, as is its signal wakeup fd (an asyncio loop that handled a signal takes it).

A task that holds the GIL past its time_limit plus TIME_LIMIT_GRACE_S (one long C call,
which no interrupt reaches) ends the engine by SIGALRM, with faulthandler's traceback in
its log; the controller, told when the task started, fails it with TaskTimeout. A task
that sets its own SIGALRM handler (a timeout decorator's signal.alarm) has it while it
runs, without that watchdog; after it the engine's is back and the task's alarm cancelled.

Losing the controller: an engine declared dead (frozen, starved) or unknown to a restarted
controller gets an ``unregister`` notice (its heart's beats make the controller send one); it
drops its queued work, aborts the running request (their results would be refused as stale)
and registers again asking for its old id. A controller silent for ``max_missed_heartbeats``
beats makes it exit with status 1: it stops the running request and answers none, and its
``unregister`` says why (ZeroMQ keeps it for a controller that was only stopped), so the
controller fails them with that reason rather than as an engine's death.
Bad messages are dropped and counted, never fatal: ``stats`` requests report the counts.

A task may fork (os.fork, multiprocessing's fork start method). The child has the
engine's memory but only the forking thread, and zmq sockets that libzmq's threads in
the parent serve: one that returns (or raises) into the engine's code exits at once
with os._exit (see Engine._leave_if_forked), sending nothing and touching no socket,
rather than carry on as a second engine on the parent's connections."""

import _signal
import argparse
import builtins
import collections
import contextlib
import ctypes
import faulthandler
import getpass
import linecache
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
import uuid
import warnings

import zmq

from . import datapub, dependency, errors, protocol
from .top import process_usage

# minipar.engine under -m too: "__main__" is the tasks' (a script's getLogger(__name__))
log = logging.getLogger(__spec__.name if __spec__ else __name__)
__path__ = []   # so ipyparallel's paths into it are explained: errors.SUBMODULE_MOVED

# The receiver and main threads hand the GIL back and forth on every message; with work
# queued both want it, and the default 5 ms switch interval would cap an engine near
# 200 tasks/s. 0.1..1 ms is reasonable.
SWITCH_INTERVAL_S = 0.0005
REGISTRATION_TIMEOUT_S = 30.0   # how long to wait for the controller to answer registration
# An engine started beside its controller (`controller & engine`) may look for the
# connection file before the controller has written it: it waits this long (at most its
# --timeout) before saying there is none. 2..30 is reasonable.
CONNECTION_FILE_WAIT_S = 10.0
# Controller silence, in its heartbeats, before the engine exits (it registers again with
# one back sooner). Generous, as load can starve the receiver; 10..100 is reasonable.
MAX_MISSED_HEARTBEATS = 30
SILENCE_WARN_BEATS = 5   # silence logged after this many beats: more than a busy spell
# How often a running task's new stdout/stderr is sent to its client. Lower is livelier,
# higher sends fewer messages for chatty tasks; 0.05..1 is reasonable.
STREAM_INTERVAL_S = 0.1
# A reply to one of a batch's requests waits this long for the next ones (behind a long
# request, up to STREAM_INTERVAL_S; see Engine._run_batch); one arriving alone goes at
# once. 3 ms rather than 1: 5-15% less CPU per quick task (fewer, larger batches).
HOLD_S = 0.003
STREAM_CHUNK_CHARS = 64 * 1024   # most text in one stream message (a larger one is split)
# The engine's own interrupts (an abort, a time_limit, rc.send_signal's SIGINT) reach the
# main thread as this signal, never mistaken for a SIGINT from outside. One that lands
# just before a blocking C call starts (time.sleep) is handled when the call ends: the
# receiver sends it again every INTERRUPT_AGAIN_S until it is handled. A task that puts
# its own handler in place (or SIG_IGN, SIG_DFL) is interrupted without it (see
# Engine._send_interrupt), and the engine's handler is back after it.
INTERRUPT_SIGNAL = signal.SIGUSR2
INTERRUPT_AGAIN_S = 0.2
# A task past its time_limit is interrupted (between two bytecodes, or a sleep);
# one that no interrupt reaches (one long C call holding the GIL) gets this much longer
# before SIGALRM, whose default action needs no thread of ours, ends the engine. Time
# for `finally` blocks to run; 1..60 is reasonable. A stopping engine whose request has
# not taken its interruption this long after the stop (a C call that never returns,
# signals blocked) exits without it; one holding the GIL only a launcher's SIGKILL ends.
TIME_LIMIT_GRACE_S = 5.0
# Why the engine takes back a handler that a task replaced (see Engine._take_back_signals)
_HANDLER_USE = {INTERRUPT_SIGNAL: "it interrupts tasks with it",
                signal.SIGALRM: "it ends a task past its time_limit with it"}
# How often the engine sends its CPU time, memory and running request for rc.status and
# minipar.top: one message, none per task; figures this old at most. 0.5..10 is reasonable.
USAGE_PERIOD_S = 1.0
# How long a stopped engine waits for threads that tasks started (not daemon) to end
# before it exits without them; 0.5..10 is reasonable.
THREADS_GRACE_S = 2.0
# The lowest recursion limit the engine's own code runs under after a request: one that a
# task set lower (sys.setrecursionlimit(20)) ended the engine with a RecursionError in it,
# reporting the task. 100..1000 is reasonable (Python's default is 1000).
MIN_RECURSION_LIMIT = 200

_MISSING = object()
_REFERENCE = dependency.Reference
# Requests queued at shutdown that are answered as aborted; the controller fails or
# retries any beyond these when the engine unregisters.
REQUESTS_ABORTED_AT_STOP = 10_000
# How many execute()d sources stay in linecache, for the tracebacks of functions they
# defined: one cached per execute made a loop of rc[:].execute(...) grow the engine
# without bound. Older ones show no source line; 100..10,000 is reasonable.
EXECUTE_SOURCES_KEPT = 1000

# A line of IPython syntax: %magic, %%cell_magic, !command, x = !command, x = %magic, x?
_IPYTHON_SYNTAX = re.compile(r"^[ \t]*(?:[\w.]+[ \t]*=[ \t]*)?"
                             r"(%%?\w+|!!?[^\s=]*|[\w.]+\?\??[ \t]*$)", re.MULTILINE)

# The names every fresh namespace starts with.
_NS_BASE = {"__name__": "__main__", "__builtins__": builtins}


class _Properties(dict):
    """A dict that notes its changes, sent to the controller after the request that made
    them (for classic ``Task(depend=f)``). Changes inside a value go unnoticed."""

    changed = False

    def _changed(method):
        def wrapper(self, *args, **kwargs):
            self.changed = True
            return method(self, *args, **kwargs)
        wrapper.__name__ = method.__name__
        return wrapper

    __setitem__ = _changed(dict.__setitem__)
    __delitem__ = _changed(dict.__delitem__)
    __ior__ = _changed(dict.__ior__)
    clear = _changed(dict.clear)
    pop = _changed(dict.pop)
    popitem = _changed(dict.popitem)
    setdefault = _changed(dict.setdefault)
    update = _changed(dict.update)
    del _changed


# This engine's properties, for code running on it (`from minipar.engine import
# properties`). Only plain data (str, numbers, lists, dicts...) reaches the controller.
properties = _Properties()

# The engine this process runs (set by main()), for code running on it to ask its id.
_engine = None


def engine_id():
    """The id of the engine running this code (None outside an engine, or before it has
    registered): code sent to it learns where it runs, as the classic Task's ``id``."""
    return None if _engine is None else _engine.id


class _Interrupt(BaseException):
    """Raised in the main thread to interrupt the running request; its `reason` ("abort",
    "timeout", "interrupt"; "lost": no reply, see Engine._exit) picks the error. A class
    per reason (_INTERRUPTS), raised as it is: the receiver can make only a class pending
    in the main thread (_raise_in)."""

    reason = None


_INTERRUPTS = {reason: type(f"_Interrupt_{reason}", (_Interrupt,), {"reason": reason})
               for reason in ("abort", "timeout", "interrupt", "lost")}


# The running request, set by the main thread and read by the receiver. deadline: the
# time.monotonic() its time_limit ends (None: no limit); started: time.time(); reg: see _run.
_Running = collections.namedtuple("_Running", "msg_id deadline started kind reg")
# What the next INTERRUPT_SIGNAL is for: `reason` (of _INTERRUPTS) picks the error; sent: when
_Interruption = collections.namedtuple("_Interruption", "msg_id reason sent")
# A registration sent again (see _on_unregister); since: its time.monotonic().
_Registration = collections.namedtuple("_Registration", "msg_id since")


class Engine:
    def __init__(self, info, work_dir=None, startup_script=None, startup_command=None,
                 registration_timeout=REGISTRATION_TIMEOUT_S,
                 max_missed_heartbeats=MAX_MISSED_HEARTBEATS, connection_file=None):
        self.info = info
        self.connection_file, self._file_read_at = connection_file, 0.0   # `info`'s source
        self.session = protocol.Session(info["key"], info.get("max_message_size",
                                                              protocol.MAX_MESSAGE_SIZE))
        self.stats = collections.Counter()  # requests run, messages dropped: see _stats
        self.ident = uuid.uuid4().hex.encode()
        self.id = None
        self.registration_timeout = registration_timeout
        self.max_missed_heartbeats = max_missed_heartbeats
        self.user_ns = dict(_NS_BASE)
        self._injected = {}         # name -> value a function's captured globals put in user_ns
        self.execution_count = 0
        self._sources = collections.deque()   # linecache names of the latest executes
        self._ipython = None        # the InteractiveShell IPython syntax runs through: lazy
        self.work_dir = work_dir
        self.startup_script = startup_script
        self.startup_command = startup_command
        self._reg = None            # msg_id (bytes) of the registration requests must carry
        # wakes the main thread to stop or send `ready`; never closed (the receiver writes)
        self._wake_r, self._wake_w = os.pipe()
        self._announce = False
        self._aborted = set()       # msg_ids to refuse when they come up
        self._taken = set()         # msg_ids taken back: dropped, unanswered, when they come up
        self._current = None        # _Running: the running request
        self._name = (None, None)   # (msg_id, function name) of the last apply unpickled
        self._held, self._held_at = None, 0.0   # replies kept for their batch, and since when
        self._held_lock = threading.Lock()
        self._interrupt = None      # _Interruption: what the next INTERRUPT_SIGNAL is for
        self._raised_in_main = False   # that interruption is pending in the main thread
        self._told_handler = set()  # signals a task blocked or gave a handler, as logged
        # Re-entrant: the INTERRUPT_SIGNAL handler takes it in the main thread, which may
        # hold it already (the signal lands between any two bytecodes); a Lock would deadlock.
        self._lock = threading.RLock()
        self._stopping, self._stopped_at = False, None   # since time.monotonic()
        self._ctrl_c = False        # a Ctrl-C at its terminal interrupted a request
        self._streamer = datapub.Streamer()
        self._stdout, self._stderr = (datapub.Capture(n, self._streamer)
                                      for n in ("stdout", "stderr"))
        datapub._publish = self._streamer.publish_data
        datapub._shell = self._shell
        datapub.make_shell_on_import()   # for IPython.display's display() in tasks
        self._told_started = None   # the running request the receiver sent `started` for
        self._registering = None    # _Registration while registering again: receiver thread
        self.exit_code = 0          # 1: it lost (or was refused by) the controller
        self._lost = None           # ... and why, for its unregister (see _exit)
        self._pid = os.getpid()     # a task's forked child has another (_leave_if_forked)

    # ------------------------------------------------------------ start

    def start(self):
        """Run the startup code; connect, register, start the receiver and heart. Main thread."""
        # before registering: a signal sent once the controller lists this engine (it may
        # do so before its answer arrives here) must meet these handlers, not the defaults
        self._interrupt_handler = self._on_interrupt_signal   # one object, compared with `is`
        # SIGALRM's is faulthandler's (registered below), which Python reports as SIG_DFL
        self._own_handlers = {signal.SIGINT: self._on_sigint, signal.SIGTERM: self._on_sigterm,
                              INTERRUPT_SIGNAL: self._interrupt_handler,
                              signal.SIGALRM: signal.SIG_DFL}
        for sig, handler in self._own_handlers.items():
            signal.signal(sig, handler)
        self._own_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())   # what it blocks
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        if self.work_dir:
            try:
                os.makedirs(self.work_dir, exist_ok=True)
                os.chdir(self.work_dir)
            except OSError as e:
                raise errors.MiniparError(f"cannot work in --work-dir {self.work_dir} "
                                          f"({e.strerror}): give a folder this engine can "
                                          "make or enter") from None
        # the MPI rank, for the startup code as for the scheduler's depend functions
        rank = [os.environ[v] for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
                                         "SLURM_PROCID") if v in os.environ]
        if rank:
            properties.setdefault("mpi_rank", int(rank[0]))
        # before any socket: the controller never lists (nor sends work to) an engine
        # whose startup fails, and what the script sets in `properties` is registered
        self._call_leaving_if_forked("the startup script", self._run_startup)
        self._std_fds = {}   # copies of its stdout and stderr (fds 1, 2: its log), see _run
        self._std_poll = select.poll()   # one system call tells of both, after each request
        for fd in (1, 2):
            with contextlib.suppress(OSError):   # closed from the start: none to put back
                self._std_fds[fd] = os.dup(fd)
                self._std_poll.register(fd, 0)   # no events asked: POLLNVAL once it is closed
        builtins.input = _no_input   # for the requests, from here on
        getpass.getpass = _no_getpass
        # a task reading stdin (sys.stdin, a program it runs) finds its end, as under a launcher,
        # where in a terminal (or with a pipe left open) it waited, silently, for a line typed there
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:   # 0 if it had none: that is it
            os.dup2(null, 0)
            os.close(null)
        builtins.display = datapub.display   # as an IPython kernel's
        self.ctx = zmq.Context()
        self._outbox_addr = f"inproc://outbox-{id(self)}"
        dealer = self._new_dealer(self.ident, "engine")
        outbox_in = self.ctx.socket(zmq.PULL)
        outbox_in.bind(self._outbox_addr)
        # main thread: wakes the receiver (b"t": a time limit started; b"": stop)
        self._outbox = self.ctx.socket(zmq.PUSH)
        self._outbox.connect(self._outbox_addr)
        # the main thread's own socket (see the map above): no hand-off between threads
        self._sock = self._new_dealer(self.ident + protocol.REPLY_SUFFIX, "engine")
        self._start_heart()
        self.id, self.heartbeat_period = self._register(dealer)
        self._send_ready()
        self._main_ident = threading.get_ident()
        _watch_alarm()
        threading.Thread(target=self._receiver, args=(dealer, outbox_in),
                         name="minipar-receiver", daemon=True).start()
        self._send_properties()

    def _new_dealer(self, identity, name, linger=1000):
        sock = self.ctx.socket(zmq.DEALER)
        sock.identity = identity
        sock.linger = linger
        # No ZMQ_MAXMSGSIZE: on a connecting socket a frame over it ends the connection for
        # good (no reconnect); the controller forwards nothing over it, Session.check refuses it
        return protocol.connect(sock, self.info, name)

    def _start_heart(self):
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        protocol.connect(sub, self.info, "ping")
        pong = self._new_dealer(self.ident, "pong", linger=0)
        capture = self.ctx.socket(zmq.PUB)
        capture.bind(f"inproc://heart-{id(self)}")
        self._pings = self.ctx.socket(zmq.SUB)   # owned by the receiver thread
        self._pings.setsockopt(zmq.SUBSCRIBE, b"")
        self._pings.connect(f"inproc://heart-{id(self)}")
        self._heart_control = self.ctx.socket(zmq.PAIR)
        self._heart_control.bind(f"inproc://heart-control-{id(self)}")
        control = self.ctx.socket(zmq.PAIR)
        control.connect(f"inproc://heart-control-{id(self)}")

        def heart():
            with contextlib.suppress(zmq.ZMQError):
                zmq.proxy_steerable(sub, pong, capture, control)
            for s in (sub, pong, capture, control):
                s.close(linger=0)

        threading.Thread(target=heart, name="minipar-heart", daemon=True).start()

    def _register(self, dealer):
        """Register at start (main thread, before the receiver runs): (id, heartbeat)."""
        replaces = os.environ.get("MINIPAR_ENGINE_REPLACES")   # see launcher._restart
        rank = properties.get("mpi_rank")   # as its id: rank i is engine i, as in ipyparallel
        msg_id, frames = self._registration(rank, int(replaces) if replaces else None)
        self._reg = msg_id.encode()
        dealer.send_multipart(frames)
        deadline = time.monotonic() + self.registration_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not dealer.poll(left * 1000):
                raise errors.MiniparError(
                    f"the controller at {protocol.url(self.info, 'engine')} did not answer "
                    f"registration within {self.registration_timeout:.0f} s: is it running, "
                    "and is this the right connection file?")
            frames = dealer.recv_multipart()
            if protocol.is_refusal(frames):
                raise errors.MiniparError(
                    f"the controller refused registration ({frames[2].decode()}): the key in "
                    "the connection file does not match the controller's; use the file it wrote")
            _, header, _ = self.session.check(frames)
            if header["kind"] == protocol.UNREGISTER and header.get("fatal"):
                raise errors.MiniparError(f"the controller refused this engine: "
                                          f"{header.get('reason')}")
            if header["kind"] == protocol.REGISTER_REPLY and header.get("parent") == msg_id:
                break
            # else a notice that crossed the registration (the heart beat first): answered
        log.info("registered as engine %d", header["id"])
        return header["id"], header.get("heartbeat_period", 1.0)

    def _registration(self, want, replaces=None):
        """(msg_id, frames) of a REGISTER: who this engine is, and the id it asks for (its MPI
        rank at start, then the one it had) or the pid of the engine process it replaces
        (whose id it then takes). Only plain properties can go in a header."""
        props = {k: v for k, v in properties.items() if protocol.plain(k) and protocol.plain(v)}
        python, cloudpickle_version = protocol.versions()
        header, frames = self.session.msg(
            protocol.REGISTER, uuid=self.ident.decode(), pid=os.getpid(), host=socket.gethostname(),
            pidns=protocol.pid_namespace(), python=python, cloudpickle=cloudpickle_version,
            properties=props, reply_ident=(self.ident + protocol.REPLY_SUFFIX).decode(), id=want,
            replaces=replaces, log=_log_file(), take_back=True)
        return header["msg_id"], frames

    def _run_startup(self):
        """Run --startup-script, then --startup-command, in the user's namespace; one that
        raises is a MiniparError of one line: which one, what it raised, at which line.
        One that calls sys.exit ends the engine so, with a line in its log."""
        steps = []
        if self.startup_script:
            steps.append((f"the startup script {self.startup_script}", self.startup_script, None))
        if self.startup_command:
            steps.append(("the startup command", "<startup-command>", self.startup_command))
        for what, filename, code in steps:
            try:
                if code is None:
                    with open(filename) as f:
                        code = f.read()
                exec(compile(code, filename, "exec"), self.user_ns)
            except (Exception, SystemExit) as e:
                lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                         if f.filename == filename]
                at = f" at line {lines[-1]}" if lines else ""
                if isinstance(e, SystemExit):   # ends the engine as asked, not silently
                    log.warning("%s called sys.exit(%r)%s: the engine exits without "
                                "registering", what, e.code, at)
                    raise
                first = (str(e).strip().splitlines() or [""])[0]
                raise errors.MiniparError(f"{what} raised {type(e).__name__}: {first}{at}; "
                                          "fix it and start the engine again") from None

    # ------------------------------------------------------------ receiver thread

    def _receiver(self, dealer, outbox_in):
        # executes in the receiver thread: owns dealer, outbox_in and self._pings
        self._dealer = dealer
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(outbox_in, zmq.POLLIN)
        poller.register(self._pings, zmq.POLLIN)
        last_ping = last_pass = time.monotonic()
        silence = self.heartbeat_period * self.max_missed_heartbeats
        warned = False   # said that the controller went silent, and has not been heard since
        next_stream = next_usage = 0.0
        while True:
            # every STREAM_INTERVAL_S at least: a request the main thread started meanwhile
            # (it does not wake this thread) is told `started` without waiting for a ping
            timeout = min(STREAM_INTERVAL_S, max(0.0, next_usage - time.monotonic()))
            cur = self._current
            if cur is not None and cur.deadline is not None:
                timeout = min(timeout, max(0.0, cur.deadline - time.monotonic()))
            events = dict(poller.poll(timeout * 1000))
            now = time.monotonic()
            # Silence counts only while this thread listened: a pass long after the last
            # (process stopped or starved, GIL held) is not the controller's silence.
            if now - last_pass > 2 * self.heartbeat_period:
                last_ping += now - last_pass
            last_pass = now
            if self._pings in events:
                while self._pings.poll(0):
                    self._pings.recv_multipart()
                if warned:
                    log.warning("the controller is heard again after %.1f s", now - last_ping)
                    warned = False
                last_ping = now
            if outbox_in in events:
                if b"" in [f.bytes for fs in protocol.drain(outbox_in) for f in fs]:
                    return self._close(dealer, outbox_in)   # the main thread stopped
            if dealer in events:
                for frames in protocol.drain(dealer):
                    try:
                        self._on_message(frames)
                    except Exception as e:  # a bad message must never stop the receiver
                        self._dropped(f"could not be handled: {type(e).__name__}: {e}")
            if now >= next_stream:
                next_stream = now + STREAM_INTERVAL_S
                self._send_stream(dealer)
                self._tell_started(dealer)
            if now >= next_usage:
                next_usage = now + USAGE_PERIOD_S
                if self._registering is None:   # an unknown engine is told to register
                    self._send_usage(dealer)
            if self._held and now - self._held_at > HOLD_S:   # behind a long request
                self._send_held(dealer)
            cur = self._current
            if cur is not None and cur.deadline is not None and now >= cur.deadline:
                self._interrupt_main(cur.msg_id, "timeout")
            pending = self._interrupt
            if pending is not None:
                self._interrupt_again(now)
                if self._stopping and now - self._stopped_at > TIME_LIMIT_GRACE_S:
                    log.error("request %s did not stop within %g s of the engine's stop (a C "
                              "call that never returns to Python?): exiting without it",
                              pending.msg_id, TIME_LIMIT_GRACE_S)
                    os._exit(1)
            if now - last_ping > silence and not self._stopping:
                self._exit(f"the controller was silent for {now - last_ping:.1f} s "
                           f"({self.max_missed_heartbeats} heartbeats of "
                           f"{self.heartbeat_period:g} s)")
            elif now - last_ping > SILENCE_WARN_BEATS * self.heartbeat_period \
                    and not self._stopping:
                if not warned:
                    warned = True
                    log.warning("the controller has been silent for %.1f s (stopped, or "
                                "restarting?): waiting up to %.0f s more for it to come "
                                "back", now - last_ping, silence - (now - last_ping))
                self._exit_if_replaced(now)
            reg = self._registering
            if reg is not None and now - reg.since > self.registration_timeout \
                    and not self._stopping:
                self._exit(f"the controller did not answer this engine's registration "
                           f"within {self.registration_timeout:.0f} s")

    def _exit_if_replaced(self, now):
        # executes in the receiver thread, while the controller is silent: one started
        # without --reuse over it holds the profile, so it cannot come back (read once a beat)
        if self.connection_file and now - self._file_read_at >= self.heartbeat_period:
            self._file_read_at = now
            new = protocol.replacement(self.connection_file, self.info)
            if new is not None:
                self._exit(f"{self.connection_file} now names another controller (pid "
                           f"{new.get('pid')}), started without --reuse, so this engine's "
                           "cannot come back: start engines for the new one")

    def _exit(self, reason):
        # executes in the receiver thread: the controller is lost, or refused this engine.
        # The running request stops, and neither it nor any queued one is answered: their
        # results would go nowhere, or (to a controller only stopped, SIGSTOP) say
        # "aborted" when the engine left; the unregister names `reason`, for the controller
        # to fail or retry them with (set before _stopping, which _requests reads first).
        log.error("%s: exiting", reason)
        self.exit_code, self._lost = 1, reason
        self._interrupt_current("lost")
        self._stop()

    def _send_stream(self, dealer):
        # executes in the receiver thread: the running request's new output and data, and
        # what ended ones' threads printed after them (`late`: once their replies have gone)
        streams = [(*(self._streamer.take() or (None, {})), False),
                   *((parent, texts, True) for parent, texts in self._streamer.take_late())]
        # well under the cluster's max_message_size, which would cost the engine its
        # connection (a character is at most 4 bytes in UTF-8)
        size = max(1, min(STREAM_CHUNK_CHARS, self.session.max_message_size // 8))
        for parent, texts, late in streams:
            for name, text in texts.items():
                for i in range(0, len(text), size):
                    _, frames = self.session.msg(protocol.STREAM, parent=parent, engine=self.id,
                                                 name=name, text=text[i:i + size], late=late)
                    dealer.send_multipart(frames)
        taken = self._streamer.take_data()
        if taken is not None:
            try:
                parts = protocol.serialize_from_task(taken[1])
            except errors.SerializationError as e:
                return log.warning("published data not sent: %s", e)
            _, frames = self.session.msg(protocol.STREAM, parts, parent=taken[0],
                                         engine=self.id, name="data")
            dealer.send_multipart(frames)

    def _tell_started(self, dealer):
        # executes in the receiver thread: `started` for a request running STREAM_INTERVAL_S
        # (one with a time_limit sent one at its start, without `long`: this one says it
        # runs long too, for take-backs); a quicker one's reply says when it started
        cur = self._current
        if cur is None or cur.msg_id == self._told_started \
                or time.time() - cur.started < STREAM_INTERVAL_S:
            return
        self._told_started = cur.msg_id
        _, frames = self.session.msg(protocol.STARTED, parent=cur.msg_id, engine=self.id,
                                     started=cur.started, long=True)   # (see Scheduler.long)
        dealer.send_multipart(frames)

    def _send_usage(self, dealer):
        # executes in the receiver thread
        fields = process_usage()
        cur = self._current
        if cur is not None:
            name = self._name[1] if self._name[0] == cur.msg_id else cur.kind
            fields.update(task=cur.msg_id, name=name, since=cur.started)
        _, frames = self.session.msg(protocol.USAGE, **fields)
        dealer.send_multipart(frames)

    def _checked(self, frames):
        """(idents, header, parts) of a message from the controller (either thread), or
        None for a refusal notice or a message that fails its check (logged, counted)."""
        if protocol.is_refusal(frames):
            log.error("the controller refused a message: %s", frames[2].bytes.decode())
            return None
        try:
            return self.session.check(frames)
        except Exception as e:
            return self._dropped(e)  # counted by the session, under its reason

    def _on_message(self, frames):
        # executes in the receiver thread
        checked = self._checked(frames)
        if checked is None:
            return
        _, header, _ = checked
        handler = self._control_handlers.get(header["kind"])
        if handler is None:
            return self._dropped(f"a {header['kind']!r} request on the control socket")
        handler(self, header)

    def _on_abort(self, header):
        # executes in the receiver thread
        if header.get("running") is not None:
            return self._take_back(header)
        for msg_id in header.get("msg_ids", ()):
            self._aborted.add(msg_id)   # refused when it comes up; added before _current
            cur = self._current         # is read, as _run reads them the other way round
            if cur is not None and cur.msg_id == msg_id:
                if not header.get("queued_only"):
                    self._interrupt_main(msg_id, "abort")
                elif cur.reg == self._reg:   # a cancel() lets what started run to its end,
                    self._aborted.discard(msg_id)   # but a copy sent again must find its mark
        parent = header.get("parent")
        if isinstance(parent, str):   # the controller waits for this to answer its client
            if header.get("behind") is not None:   # queued behind it, if it runs: given back
                return self._take_back(dict(header, running=header["behind"]))
            _, frames = self.session.msg(protocol.ABORT_MARKED, parent=parent)
            protocol.send(self._dealer, frames)

    def _take_back(self, header):
        # executes in the receiver thread. Marked first, then `running` looked for: a
        # request behind it starts only after `running` has ended and checks its mark under
        # the lock (see _was_taken), so with `running` still current none of them can have
        # started, and otherwise the marks go before any is seen.
        msg_ids = [m for m in header.get("msg_ids", ()) if isinstance(m, str)]
        with self._lock:
            self._taken.update(msg_ids)
            cur = self._current
            if cur is None or cur.msg_id != header["running"]:
                self._taken.difference_update(msg_ids)
                msg_ids = []   # it ended: some may have started, so none is given back
        _, frames = self.session.msg(protocol.ABORT_MARKED, parent=header.get("parent"),
                                     taken=msg_ids)
        protocol.send(self._dealer, frames)

    def _was_taken(self, msg_id):
        """Whether request `msg_id` was taken back (see _take_back): then it is not run
        and not answered. Either thread; a set's truth is all it costs otherwise."""
        if not self._taken:
            return False
        with self._lock:
            if msg_id not in self._taken:
                return False
            self._taken.discard(msg_id)
        self._aborted.discard(msg_id)   # an abort that came after: the controller ends it
        return True

    def _on_interrupt(self, header):
        # executes in the receiver thread
        self._interrupt_current("interrupt")

    def _on_signal(self, header):
        # executes in the receiver thread. SIGINT (rc.send_signal) interrupts the running request
        # (KeyboardInterrupt, even in a C call), never the engine, ignored while idle as a
        # kernel's Ctrl-C; another goes to the main thread (a Python handler runs at once).
        if header.get("sig") == signal.SIGINT:
            return self._on_interrupt(header)
        signal.pthread_kill(self._main_ident, header["sig"])

    def _on_shutdown(self, header):
        # executes in the receiver thread
        log.info("shutdown requested: %.200s", header.get("why") or "by the controller")
        if header.get("abort"):   # sent when the cluster's owner is gone: no one awaits it
            self._interrupt_current("abort")
        self._stop()

    # -- registering again: the controller declared this engine dead or restarted without
    # knowing it, and answered a beat from its heart with an `unregister` notice.

    def _on_unregister(self, header):
        # executes in the receiver thread
        reason = header.get("reason")
        if self._stopping:
            return
        if header.get("fatal"):
            return self._exit(f"the controller refused this engine ({reason})")
        if self._registering is not None:
            # sent before the controller saw our registration; all such notices arrive
            # before its answer (one connection, in order), so this one is answered
            return
        log.warning("the controller does not know this engine (%s): registering again as "
                    "engine %s", reason, self.id)
        self.stats["registered_again"] += 1
        # The controller moved or failed all it had sent here: queued requests are dropped (see
        # _run), the running one stops, take-backs are forgotten (a copy sent again must run).
        msg_id, frames = self._registration(self.id)
        self._reg = msg_id.encode()   # before _current is read (see _run)
        self._interrupt_current("abort")
        self._taken.clear()
        self._registering = _Registration(msg_id, time.monotonic())
        self._dealer.send_multipart(frames)

    def _on_registered(self, header):
        # executes in the receiver thread
        reg = self._registering
        eid = header.get("id")
        if reg is None or header.get("parent") != reg.msg_id or not isinstance(eid, int):
            return self._dropped("an answer to no registration of ours")
        if eid != self.id:
            log.warning("registered again with id %d (engine %s is taken)", eid, self.id)
        else:
            log.info("registered again as engine %d", eid)
        self.id = eid
        self._registering = None
        self._announce = True   # the main thread sends `ready` for this registration
        self._wake(b"r")

    # control messages, handled in the receiver thread at once (they overtake queued work)
    _control_handlers = {protocol.ABORT: _on_abort, protocol.INTERRUPT: _on_interrupt,
                         protocol.SIGNAL: _on_signal, protocol.SHUTDOWN: _on_shutdown,
                         protocol.UNREGISTER: _on_unregister,
                         protocol.REGISTER_REPLY: _on_registered}

    def _interrupt_current(self, reason):
        # executes in the receiver thread
        cur = self._current
        if cur is not None:
            self._interrupt_main(cur.msg_id, reason)

    def _dropped(self, why):
        # logs the first ten, then at powers of two: a flood of bad messages floods no log
        with self._lock:   # both threads drop messages; += on a Counter is not atomic
            self.stats["dropped"] += 1
            n = self.stats["dropped"]
        if n <= 10 or not n & (n - 1):
            log.warning("dropped a message from the controller: %s (%d dropped so far)", why, n)

    def _interrupt_main(self, msg_id, reason):
        # executes in the receiver thread
        with self._lock:
            if self._interrupt is not None:
                return
            self._interrupt = _Interruption(msg_id, reason, time.monotonic())
            self._send_interrupt()

    def _interrupt_again(self, now):
        # executes in the receiver thread: the interrupt is not handled yet (see
        # INTERRUPT_SIGNAL); one more is harmless, its handler finding nothing to do
        with self._lock:
            pending = self._interrupt
            if pending is None or now - pending.sent < INTERRUPT_AGAIN_S:
                return
            self._interrupt = pending._replace(sent=now)
            self._send_interrupt(again=True)

    def _send_interrupt(self, again=False):
        # executes in the receiver thread, holding self._lock (under which _run ends what
        # may be interrupted). INTERRUPT_SIGNAL, whose handler raises the interruption; but a
        # task that replaced the handler (its own runs, or none) or blocked the signal (seen
        # `again`, unhandled) never sees it: the interruption is then made pending in the main
        # thread, once, and raised at its next bytecode. The signal still goes to a task's own
        # handler: its call ends a sleep, so the interruption is raised there too, not after.
        # Not with SIG_DFL, which would end the engine, nor SIG_IGN: a sleep runs to its end.
        handler = signal.getsignal(INTERRUPT_SIGNAL)
        cur, pending = self._current, self._interrupt
        if (again or handler is not self._interrupt_handler) and not self._raised_in_main \
                and cur is not None and cur.msg_id == pending.msg_id:
            self._raised_in_main = True
            _raise_in(self._main_ident, _INTERRUPTS[pending.reason])
        if callable(handler):
            signal.pthread_kill(self._main_ident, INTERRUPT_SIGNAL)

    def _stop(self):
        self._stopping, self._stopped_at = True, self._stopped_at or time.monotonic()
        self._wake(b"s")

    def _wake(self, why):   # the main thread's poll; a pipe that is full wakes it anyway
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, why)

    def _close(self, dealer, outbox_in):
        # executes in the receiver thread, last
        self._heart_control.send(b"TERMINATE")
        dealer.close(linger=1000)
        for sock in (outbox_in, self._pings, self._heart_control):
            sock.close(linger=0)

    # ------------------------------------------------------------ main thread

    def _on_interrupt_signal(self, signum, frame):
        # executes in the main thread, between bytecodes of whatever runs
        with self._lock:   # raised here: one made pending too (see _send_interrupt) is not
            target, self._interrupt = self._interrupt, None
            self._withdraw_raised()
        cur = self._current
        if target is not None and cur is not None and cur.msg_id == target.msg_id:
            raise _INTERRUPTS[target.reason]   # else it ended before this landed

    def _on_sigint(self, signum, frame):
        # executes in the main thread: a SIGINT from outside (a terminal's Ctrl-C, a kill)
        at_terminal = protocol.in_foreground()   # see the module docstring
        if self._current is None and not at_terminal:
            log.warning("SIGINT while idle: ignored (an engine is stopped with SIGTERM)")
            return
        if self._current is None or not at_terminal:   # `kill -INT`, not Ctrl-C: say so
            raise KeyboardInterrupt(f"SIGINT to engine {self.id} (pid {os.getpid()})")
        # Ctrl-C at a busy engine's terminal, most often meant to stop it: silent, each one
        # failed a task and the engine went on to the next. The next one stops it too.
        again, self._ctrl_c = self._ctrl_c, True
        log.warning("Ctrl-C%s: interrupting request %s %s", " again" if again else "",
                    self._current.msg_id, "and stopping (the requests queued here are answered "
                    "as aborted)" if again else "(it fails with KeyboardInterrupt); the engine "
                    "goes on: Ctrl-C again stops it")
        if again:
            self._stop()
        raise KeyboardInterrupt(f"Ctrl-C at the terminal of engine {self.id}")

    def _on_sigterm(self, signum, frame):
        # executes in the main thread, between bytecodes of whatever runs. `kill PID` (a
        # user, a batch system ending its job) to an idle engine stops it as a shutdown
        # request does: it unregisters (rc.ids drops it now, not heartbeats later) and
        # exits 0, so restart="on_failure" leaves it stopped. While a request runs, the
        # default action ends the engine at once, as it always has: the request gets its
        # engine's death (or its retry), and no `finally` of user code delays the exit.
        # Before it has registered there is nothing to undo, nor a wait worth finishing.
        name = signal.Signals(signum).name   # SIGHUP too: see _on_sighup
        if self._current is None and self.id is not None:
            log.info("%s while idle: unregistering", name)
            return self._stop()
        log.warning("%s %s: exiting at once", name, "before registering" if self._current
                    is None else f"while running {self._current.msg_id}")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)

    def _after_fork_in_child(self):
        # executes in a child that a task forked, in its only thread. The engine's signal handlers
        # would act for the engine there (a SIGTERM, from a multiprocessing Pool's terminate() say,
        # would log as the engine's, or wake the parent's main loop through the shared pipe): the
        # child gets Python's own, but keeps any the task put in place. Only Python's os.fork calls
        # this; Engine._leave_if_forked compares pids, so it holds for any fork.
        for sig, engine_handler, default in (
                (signal.SIGINT, self._on_sigint, signal.default_int_handler),
                (signal.SIGTERM, self._on_sigterm, signal.SIG_DFL),
                (INTERRUPT_SIGNAL, self._interrupt_handler, signal.SIG_DFL)):
            if signal.getsignal(sig) == engine_handler:
                signal.signal(sig, default)

    def serve(self):
        """Run requests until stopped: by a shutdown request, by SIGTERM or by Ctrl-C in its
        terminal between requests (one while a request runs interrupts that request, the next
        stops the engine too; SIGTERM then ends the engine). Stopped, it unregisters, so the
        controller sends it nothing more. Main thread: requests arrive on its own socket."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        # a signal that lands in another thread (mpiexec passes them on) wakes this poll too,
        # where Python runs its handler; non-blocking, as set_wakeup_fd needs (see _wake).
        # Set before each wait: a task's asyncio loop that handled a signal took it, left none.
        os.set_blocking(self._wake_w, False)
        try:
            while not self._stopping:
                signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
                if self._wake_r in dict(poller.poll()):
                    os.read(self._wake_r, 4096)
                if self._announce:
                    self._announce = False
                    self._send_ready()
                for frames in protocol.drain(self._sock):
                    requests = self._requests(frames)
                    if len(requests) > 1:
                        self._run_batch(requests)
                    else:
                        for request in requests:
                            self._run(*request)
        except KeyboardInterrupt:   # Ctrl-C in its terminal, not rc.send_signal (_on_signal)
            log.info("interrupted: unregistering")
            self._stop()
        for frames in protocol.drain(self._sock, limit=REQUESTS_ABORTED_AT_STOP):
            self._requests(frames)   # each answered as aborted (see _not_run)
        self._send(protocol.UNREGISTER, reason=self._lost,   # and none after the last it began
                   last_started=self._streamer.parent or self._streamer.last)
        self._sock.close(linger=1000)
        self._outbox.send(b"")
        self._outbox.close(linger=1000)

    def _run_batch(self, requests):
        """Run a batch's requests, their replies sent together as batches. A reply waits
        at most HOLD_S and the next request; behind a long one, the receiver sends it."""
        with self._held_lock:
            self._held = []
        try:
            for i, request in enumerate(requests):
                if self._stopping:   # the rest end as queued requests do
                    return self._not_run(requests[i:])
                self._run(*request)
                if self._held and time.monotonic() - self._held_at > HOLD_S:
                    self._send_held(self._sock)
        finally:
            self._send_held(self._sock, stop=True)

    def _send_held(self, sock, stop=False):
        """Send the replies held back (see _run_batch) on `sock`; with `stop`, hold no more."""
        with self._held_lock:
            held, self._held = self._held, None if stop else []
        for frames in self.session.pack(held or ()):
            protocol.send(sock, frames)
        self._streamer.replied = not self._held   # none held since: late output may follow

    def _send_ready(self):
        """Tell the controller this socket is connected, for the current registration:
        it holds requests back until then (a ROUTER would drop them)."""
        self._send(protocol.READY, reg=self._reg.decode())

    def _requests(self, frames):
        """The (header, parts, registration) of each request to run in a message (a batch
        carries several); none if it was refused, sent under an earlier registration (moved
        or failed since), or arrived after shutdown (each is answered as aborted)."""
        checked = self._checked(frames)
        if checked is None:
            return ()
        idents, header, parts = checked
        if not idents or idents[0].bytes != self._reg:
            self.stats["stale"] += 1
            return ()
        try:   # with the registration they came under: it may change before they run
            requests = [(h, p, idents[0].bytes) for h, p in self.session.unbatch(header, parts)]
        except ValueError as e:
            self._dropped(e)
            return ()
        if self._stopping:
            return self._not_run(requests)
        return requests

    def _not_run(self, requests):
        """Requests that will not run, as the engine stops: each answered as aborted, or
        none when it lost its controller (see _exit). Returns (). A load-balanced task is
        not answered: its controller gives it to another engine once this one unregisters."""
        if self._lost is None:
            for header, *_ in requests:
                if header.get("lb") or self._was_taken(header["msg_id"]):
                    continue
                self._send_reply(header, protocol.ABORTED, [], ename="TaskAborted",
                                 evalue="the engine shut down before running this task")
        return ()

    def _run(self, header, parts, reg):
        msg_id = header["msg_id"]
        if reg != self._reg:   # sent before it registered again (the rest of a batch): the
            self.stats["stale"] += 1   # controller sends it again, and an abort of it must
            return                     # find that copy, not this one or take its mark
        if self._taken and self._was_taken(msg_id):
            return
        self.stats["requests"] += 1
        if msg_id in self._aborted:
            self._aborted.discard(msg_id)
            return self._reply_error(header, errors.TaskAborted(
                "aborted before it started"), status=protocol.ABORTED, started=time.time())
        limit = header.get("time_limit")
        handler = self._handlers.get(header["kind"])
        self._streamer.start(msg_id)
        self._stdout.start()
        self._stderr.start()
        started = time.time()
        status, result = protocol.OK, None
        sys.stdout, sys.stderr = self._stdout, self._stderr
        try:
            self.session.check_body(header, parts)
            self._current = _Running(msg_id, time.monotonic() + limit if limit else None,
                                     started, header["kind"], reg)
            try:
                if limit:   # inside the try: an interrupt may land from here on
                    self._outbox.send(b"t")   # the receiver's next wait ends at the deadline
                    _watch_alarm()
                    signal.setitimer(signal.ITIMER_REAL, limit + TIME_LIMIT_GRACE_S)
                    self._send(protocol.STARTED, parent=msg_id, engine=self.id, started=started)
                # again now that _current is set: the receiver changes _reg and adds to
                # _aborted before it reads _current, so what arrives here is seen by one side
                if reg != self._reg or msg_id in self._aborted:
                    raise _INTERRUPTS["abort"]
                if handler is None:
                    raise ValueError(f"unknown request kind {header['kind']!r}")
                if header.get("clear_before"):  # classic Task(clear_before=True)
                    self._clear(header, parts)
                result = self._call_leaving_if_forked(f"request {msg_id}", handler, self,
                                                      header, parts)
            finally:
                self._current = None   # first: nothing interrupts this request from here
                with self._lock:   # but what the receiver made pending just before is
                    self._withdraw_raised()   # withdrawn, before it lands out of the try
                if limit:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if header.get("clear_after"):
                    self._clear(header, parts)
        except _Interrupt as e:
            reason = e.reason
            if reason == "lost":   # no reply (see _exit)
                return
            if reason == "timeout":
                status, result = protocol.TIMEOUT, errors.TaskTimeout(
                    f"the task ran longer than its time_limit of {limit} s and was "
                    "interrupted; raise time_limit or split the work")
            elif reason == "abort":
                if reg == self._reg:   # else its mark is an abort of its copy sent again
                    self._aborted.discard(msg_id)
                status, result = protocol.ABORTED, errors.TaskAborted("aborted while running")
            else:
                status, result = protocol.ERROR, KeyboardInterrupt(
                    f"SIGINT from a client (send_signal) to engine {self.id}")
        except errors.UnmetDependency as e:
            status, result = protocol.UNMET, e
        except BaseException as e:
            status, result = protocol.ERROR, e
        finally:
            with self._lock:
                self._interrupt = None
                self._withdraw_raised()   # again, had a signal handler cut the above short
            self._take_back_recursion_limit(msg_id)   # first: what follows needs some
            # the Captures still (a task's own undone): what its threads print after it goes
            # to the log and to its client too (datapub.Streamer), as an IPython kernel's
            sys.stdout, sys.stderr = self._stdout, self._stderr
            stdout, stderr = self._stdout.stop(), self._stderr.stop()
            data, outputs = self._streamer.stop()  # the reply carries all output and data
            self._take_back_signals(msg_id)
            self._take_back_std_fds(msg_id)
        if properties.changed:  # before the reply: the controller knows them when it arrives
            self._send_properties()
        meta = {"started": started, "completed": time.time(), "stdout": stdout,
                "stderr": stderr, "execution_count": self.execution_count, "data": data,
                "outputs": outputs or None}   # display data: none, most often
        if status != protocol.OK:
            return self._reply_error(header, result, status=status, **meta)
        try:
            result_parts = protocol.serialize_from_task(result)
        except errors.SerializationError as e:   # the task ran: its result is what failed
            e = errors.SerializationError(f"the result could not be sent back: {e}"
                                          f"{_NOT_AWAITED * _holds_coroutine(result)}")
            return self._reply_error(header, e, status=protocol.ERROR, **meta)
        self._send_reply(header, protocol.OK, result_parts, **meta)

    def _call_leaving_if_forked(self, forker, fn, *args):
        """fn(*args), which may fork; `forker` names it (a request, the startup script)
        for _leave_if_forked, which ends a forked process that returns or raises here."""
        try:
            result = fn(*args)
        except BaseException as e:
            self._leave_if_forked(forker, e)
            raise
        self._leave_if_forked(forker)
        return result

    def _leave_if_forked(self, forker, exc=None):
        """In a process that `forker` (a request, the startup script) forked and that came
        back into the engine's code, having returned or raised `exc`: exit at once, as
        multiprocessing's forked children do. Its parent goes on as the engine; this process
        must not, as its sockets are the parent's and libzmq's threads serving them do not
        exist here (a send or poll would spin, and a reply go nowhere). No lock of the
        engine's is taken (another thread may have held it at the fork; logging's are made
        anew in a child) nor anything flushed (the parent's buffered output would be written
        twice). The status is a sys.exit()'s, else 1 after an exception, else 0."""
        if os.getpid() == self._pid:
            return
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        else:
            code = 0 if exc is None else 1
        log.warning("process %d, forked by %s of engine %s (pid %d), came back into the "
                    "engine's code: it exits (status %d) rather than act as a second engine; "
                    "end a forked child with os._exit", os.getpid(), forker, self.id,
                    self._pid, code)
        os._exit(code)

    def _withdraw_raised(self):
        # executes in the main thread, holding self._lock: see _send_interrupt
        if self._raised_in_main:
            self._raised_in_main = False
            _raise_in(self._main_ident, None)

    def _take_back_signals(self, msg_id):
        """Put back the engine's handlers that request `msg_id` replaced (itself, or a library
        it imported: some set SIGTERM's or SIGINT's) and unblock the signals it left blocked
        (signal.pthread_sigmask), so the next requests are interrupted (INTERRUPT_SIGNAL:
        aborts, time limits), held to their time_limit (SIGALRM) and an idle engine is stopped
        (SIGTERM, SIGINT: see the module docstring) as usual; said once each."""
        blocked = signal.pthread_sigmask(signal.SIG_SETMASK, self._own_mask) - self._own_mask
        if blocked - self._told_handler:
            self._told_handler |= blocked
            log.warning("request %s left %s blocked in the engine's main thread: unblocked",
                        msg_id, [getattr(s, "name", s) for s in sorted(blocked)])
        for sig, handler in self._own_handlers.items():
            if _signal.getsignal(sig) == handler:   # not signal's: 3.3 µs each (protocol.
                continue                            # sigint_deferred), 4 a request
            signal.signal(sig, handler)
            if sig == signal.SIGALRM:   # the task's alarm, if left, would fire into the
                signal.setitimer(signal.ITIMER_REAL, 0)   # engine: it is the task's, ended
                _watch_alarm()
            if sig not in self._told_handler:
                self._told_handler.add(sig)
                log.warning("request %s replaced this engine's %s handler: put back; leave "
                            "%s to the engine (%s)", msg_id, sig.name, sig.name,
                            _HANDLER_USE.get(sig, "it stops with it when idle"))

    def _take_back_recursion_limit(self, msg_id):
        """Raise the recursion limit to MIN_RECURSION_LIMIT where request `msg_id` left it
        lower, then say so (logging needs the frames); a higher one it set is kept."""
        low = sys.getrecursionlimit()
        if low < MIN_RECURSION_LIMIT:
            sys.setrecursionlimit(MIN_RECURSION_LIMIT)
            log.warning("request %s set the recursion limit to %d, too low for the engine's "
                        "own code: raised to %d", msg_id, low, MIN_RECURSION_LIMIT)

    def _take_back_std_fds(self, msg_id):
        """Open the engine's stdout and stderr (fds 1 and 2) again where request `msg_id`
        closed them (os.close(2)): the next file a task opened took that number, and the
        engine's log lines (faulthandler's report of a crash too) went into it."""
        for fd, events in self._std_poll.poll(0):   # none but for a closed one (or one
            if events & select.POLLNVAL:               # whose reader is gone: POLLERR, kept)
                os.dup2(self._std_fds[fd], fd)
                name = ("stdout", "stderr")[fd - 1]
                log.warning("request %s closed the engine's %s (fd %d): opened again; to "
                            "silence output, redirect it rather than close it (contextlib."
                            "redirect_%s; os.dup2, then back)", msg_id, name, fd, name)

    def _reply_error(self, header, exc, status=protocol.ERROR, **meta):
        info = {"engine_id": self.id, "msg_id": header["msg_id"], "kind": header["kind"]}
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, datapub.__file__):
            tb = tb.tb_next  # the user's frames only: the engine's own say nothing to them
        remote = errors.wrap(exc.with_traceback(tb), info)
        self._send_reply(header, status, protocol.serialize(remote),
                         ename=remote.ename, evalue=remote.evalue, **meta)

    def _send_reply(self, header, status, parts, data=None, **fields):
        kind = protocol.REPLY.get(header["kind"], protocol.UNKNOWN_REPLY)
        if data:   # what the request published, after the result's frames
            try:
                dparts = protocol.serialize_from_task(data)
                parts, fields["ndata"] = [*parts, *dparts], len(dparts)
            except errors.SerializationError as e:
                log.warning("published data not sent with the reply: %s", e)
        # `attempt` tells the controller which try of a retried task this answers
        fields.update(parent=header["msg_id"], status=status, engine=self.id,
                      attempt=header.get("attempt", 0))
        try:
            _, frames = self.session.msg(kind, parts, signed=False, **fields)
            size = protocol.message_size(frames)
        except MemoryError:   # a task left it little (RLIMIT_AS) and printed 100 MB: the
            frames, exc = None, MemoryError(   # engine died of it, its request lost
                f"the engine ran out of memory making the reply to {header['msg_id']}: "
                "return (or print) less, e.g. save large results to a file, or give the "
                "engine more memory")
        if frames is not None and size > self.session.max_message_size:
            self.stats["oversized_replies"] += 1
            frames, exc = None, errors.SerializationError(
                f"the reply to {header['msg_id']} is {size} bytes, above the cluster's "
                f"max_message_size of {self.session.max_message_size}: return (or print) "
                "less, e.g. save large results to a file, or raise --max-message-size")
        if frames is None:
            # refused by the controller, or never made, the request would never end: say why
            remote = errors.wrap(exc, {"engine_id": self.id, "msg_id": header["msg_id"],
                                       "kind": header["kind"]})
            for name in ("stdout", "stderr"):   # keep the tail of what it printed
                fields[name] = (fields.get(name) or "")[-10_000:]
            fields.pop("ndata", None)   # the data is left out with the result
            fields.pop("outputs", None)   # and the display data
            fields.update(status=protocol.ERROR, ename=remote.ename, evalue=remote.evalue)
            _, frames = self.session.msg(kind, protocol.serialize(remote), signed=False, **fields)
        with self._held_lock:
            if self._held is not None:
                if not self._held:
                    self._held_at = time.monotonic()
                self._held.append(frames)
                return
        protocol.send(self._sock, self.session.signed(frames))
        self._streamer.replied = True

    def _send(self, kind, parts=(), **fields):
        # executes in the main thread, on its own socket
        _, frames = self.session.msg(kind, parts, **fields)
        protocol.send(self._sock, frames)

    # ------------------------------------------------------------ request kinds

    def _apply(self, header, parts):
        made = _REFERENCE._made
        try:
            n = header["counts"][0]
            f = protocol.deserialize_function(parts[:n])
            args, kwargs = protocol.deserialize(parts[n:])
        except ImportError as e:
            if header.get("dependent"):  # @require/@depend: what it needs is missing here
                raise errors.UnmetDependency(f"the task cannot be unpickled on this engine: "
                                             f"{type(e).__name__}: {e}") from None
            raise _not_importable_here(e) from None
        except Exception as e:
            raise self._unpickling_error(e) from None
        if _REFERENCE._made != made:   # unpickling made a Reference (none: nothing to pay)
            f, args, kwargs = dependency.resolve_references(self.user_ns, f, args, kwargs,
                                                            header.get("map"))
        try:   # what rc.status shows it runs; never a reason for the task to fail
            self._name = (header["msg_id"], str(getattr(f, "__name__", None) or type(f).__name__))
        except Exception:
            self._name = (header["msg_id"], type(f).__name__)
        f = self._bind(f)
        if header.get("map"):  # a chunk of a map: f element-wise over the sequences
            return list(map(f, *args))
        return f(*args, **kwargs)

    def _bind(self, f):
        """A function sent from the client's __main__ runs with the namespace as globals.

        The names it uses that cloudpickle captured from the client (modules, constants) are
        added where the namespace lacks them, and refreshed on later calls as long as
        nothing on the engine (a push, executed code) has replaced them since."""
        if isinstance(f, dependency.dependent):  # @require/@depend: bind what it wraps
            return f._rebind(self._bind)
        if not (isinstance(f, types.FunctionType) and f.__module__ == "__main__"
                and f.__globals__ is not self.user_ns):
            return f
        ns, injected = self.user_ns, self._injected
        for name, value in f.__globals__.items():
            if name.startswith("__"):
                continue
            current = ns.get(name, _MISSING)
            if current is _MISSING or injected.get(name, _MISSING) is current:
                ns[name] = injected[name] = value
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__ = f.__kwdefaults__
        g.__dict__.update(f.__dict__)
        return g

    def _execute(self, header, parts):
        self.execution_count += 1
        code = header["code"]
        name = f"<minipar-execute-{self.execution_count}>"
        # so tracebacks show the failing line, as IPython does for cells
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        self._sources.append(name)
        if len(self._sources) > EXECUTE_SOURCES_KEPT:
            linecache.cache.pop(self._sources.popleft(), None)
        silent = header.get("silent", True)   # ipyparallel's default; %px's is False
        try:
            compiled = datapub.compile_cell(code, name, silent)
        except SyntaxError as e:   # plain Python never gets here, so it pays nothing new
            error = e
        else:
            return datapub.run_cell(compiled, code, name, self.user_ns, self.execution_count)
        # outside the except: the SyntaxError is no context of what the IPython path raises
        return self._execute_ipython(code, name, error, silent)

    def _execute_ipython(self, code, name, error, silent):
        """Code that is not Python: IPython syntax (%timeit, %%timeit cells, !ls, x = !ls,
        x?) runs through IPython's own transformer and shell where IPython is installed,
        as on an ipyparallel engine; anything else raises its SyntaxError."""
        try:
            from IPython.core.inputtransformer2 import TransformerManager
        except ImportError:
            use = _IPYTHON_SYNTAX.search(code)
            if use:
                raise SyntaxError(f"this code uses IPython syntax ({use.group(1)}), which needs "
                                  "IPython on the engine: install IPython on the engines (pip "
                                  "install ipython), or send plain Python") from None
            raise error
        python = TransformerManager().transform_cell(code)
        try:
            compiled = datapub.compile_cell(python, name, silent)
        except SyntaxError:
            if python.rstrip() == code.rstrip():   # nothing of IPython's: a plain error
                raise error from None
            raise
        return datapub.run_cell(compiled, python, name, self.user_ns, self.execution_count,
                                "get_ipython" in python)   # not where only >>> went

    def _shell(self):
        """The engine's InteractiveShell, made at the first IPython syntax (about 0.1 s
        once IPython is imported), working on the engine's namespace."""
        if self._ipython is None:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config

            config = Config()
            config.HistoryManager.enabled = False   # engines write no history.sqlite
            main = sys.modules.get("__main__")
            self._ipython = InteractiveShell.instance(config=config)
            # display() keeps display data for the reply (ar.outputs), where the base prints
            self._ipython.display_pub = datapub.display_publisher(self._streamer)(
                parent=self._ipython, shell=self._ipython)
            sys.modules["__main__"] = main   # the shell puts its own module there
            # %matplotlib inline (ipyparallel's docs start plotting with %px so) enables a GUI
            # loop: an engine runs none, and the base shell raises NotImplementedError
            self._ipython.enable_gui = lambda gui=None: None
        # %timeit, %who and !cmd $var read and write the shell's user_ns: the engine's
        # (the same dict for good: clear() empties it in place)
        self._ipython.user_ns = self.user_ns
        return self._ipython

    def _unpickling_error(self, e):
        """A request that does not unpickle here, named as such (with this engine's
        versions: a client on another Python or cloudpickle is the usual cause)."""
        python, cloudpickle_version = protocol.versions()
        return errors.SerializationError(
            f"engine {self.id} could not unpickle the request (it runs Python "
            f"{'.'.join(map(str, python))} with cloudpickle {cloudpickle_version}): "
            f"{type(e).__name__}: {e}")

    def _push(self, header, parts):
        made = _REFERENCE._made
        try:
            ns = protocol.deserialize(parts)
        except ImportError as e:
            raise _not_importable_here(e) from None
        except Exception as e:
            raise self._unpickling_error(e) from None
        if _REFERENCE._made != made:   # as apply's keyword values, all read before any is set
            ns = {k: dependency.resolved(self.user_ns, v) for k, v in ns.items()}
        self.user_ns.update({k: self._bind(v) for k, v in ns.items() if k.isidentifier()})
        for k in [k for k in ns if not k.isidentifier()]:   # 'a.b', 'd[0]': as ipyparallel's
            exec(compile(f"{k} = _pushed_", "<push>", "exec"), self.user_ns, {"_pushed_": ns[k]})

    def _pull(self, header, parts):
        names = header["names"]
        values = [self._value(n) for n in ([names] if isinstance(names, str) else names)]
        return values[0] if isinstance(names, str) else values

    def _value(self, name):
        """A name's value, or an expression's (`a[0]`, `x.shape`), as ipyparallel pulls."""
        if not isinstance(name, str):
            raise TypeError(f"pull takes names (strings), not {type(name).__name__}")
        if name.isidentifier():
            if name not in self.user_ns:
                raise NameError(f"name {name!r} is not defined on engine {self.id}")
            return self.user_ns[name]
        return eval(compile(name, "<pull>", "eval"), self.user_ns)

    def _keys(self, header, parts):
        return [k for k in self.user_ns if k not in _NS_BASE]

    def _clear(self, header, parts):
        self.user_ns.clear()
        self.user_ns.update(_NS_BASE)
        self._injected.clear()

    def _properties(self, header, parts):
        op, keys = header.get("op", "get"), header.get("keys")
        if op == "set":
            properties.update(protocol.deserialize(parts))
        elif op == "del":
            for k in keys or ():
                properties.pop(k, None)
        elif op == "clear":
            properties.clear()
        elif op == "has":
            return [k in properties for k in keys]
        if op in ("set", "del", "clear"):
            return None  # _run sends the change to the controller
        return {k: properties[k] for k in keys} if keys else dict(properties)

    def _send_properties(self):
        """Send the properties to the controller (for the scheduler's depend functions).
        A header holds plain data only, so other values stay on the engine."""
        properties.changed = False
        plain = {k: v for k, v in properties.items() if protocol.plain(k) and protocol.plain(v)}
        if len(plain) < len(properties):
            log.warning("properties %s are not plain data (str, numbers, lists, dicts): "
                        "kept on the engine, not sent to the controller",
                        sorted(map(repr, properties.keys() - plain.keys())))
        self._send(protocol.PROPERTIES_UPDATE, properties=plain)

    def _stats(self, header, parts):
        """This engine's counters: requests run, messages dropped (with reasons)."""
        return {"engine_id": self.id, "pid": os.getpid(), **self.stats,
                "dropped_reasons": dict(self.session.dropped)}

    _handlers = {protocol.STATS: _stats, protocol.APPLY: _apply, protocol.EXECUTE: _execute,
                 protocol.PUSH: _push, protocol.PULL: _pull, protocol.KEYS: _keys,
                 protocol.CLEAR: _clear, protocol.PROPERTIES: _properties}


def _log_file():
    """The file this engine's stderr goes to (its launcher's log), if it is one: the
    controller quotes its end when the engine dies, for faulthandler's last words."""
    try:
        path = os.readlink("/proc/self/fd/2")
    except OSError:
        return None
    return path if os.path.isfile(path) else None


# An async def task's call returns a coroutine, which an engine does not await (nor does
# ipyparallel's); execute's code may await (datapub._AWAIT)
_NOT_AWAITED = ("; a coroutine (what an async def function returns) is not awaited by an "
                "engine: apply a plain function that runs it (lambda x: asyncio.run(f(x))), "
                "or await it in an execute (%px r = await f(x))")


def _holds_coroutine(result):
    """Whether a task's result is a coroutine, or a map's list of them."""
    first = result[0] if isinstance(result, list) and result else result
    return isinstance(first, types.CoroutineType)


def _not_importable_here(e):
    """ImportError `e`, raised unpickling a request, with what to do about it: a function or
    class of a module travels by name, and the client's script or folder may hold a module this
    engine cannot import (the most common first failure, said only as "No module named 'x'")."""
    if not isinstance(e, ModuleNotFoundError) or not e.name:
        return e
    top = e.name.partition(".")[0]
    return ModuleNotFoundError(
        f"{e}: the request uses a function or class of module {e.name!r}, sent by name, "
        f"and this engine (in {os.getcwd()}) cannot import it; install it where the "
        "engines run, start them in its folder (--work-dir), or send it by value with "
        f"cloudpickle.register_pickle_by_value({top}) on the client", name=e.name)


def _raise_in(thread_id, exc_class):
    """Make `exc_class` pending in thread `thread_id`: raised there at its next bytecode
    (a C call, such as time.sleep, ends first); None withdraws one not raised yet.
    CPython's PyThreadState_SetAsyncExc, which takes a class, not an instance."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               exc_class and ctypes.py_object(exc_class))


def _watch_alarm():
    """SIGALRM to faulthandler: the time-limit watchdog's (TIME_LIMIT_GRACE_S) traceback,
    then the default action. Registered anew before each time-limited request too: Python
    reports faulthandler's handler as SIG_DFL, so a task that put back the SIG_DFL it read
    (a timeout decorator's `finally`) removed it without a sign, and only this restores it
    (two sigaction calls, for time-limited requests only)."""
    faulthandler.unregister(signal.SIGALRM)
    faulthandler.register(signal.SIGALRM, file=sys.__stderr__, all_threads=True, chain=True)


def _no_input(prompt="", *, what="input"):
    """A request's input(): no one can answer it. It read the engine's own stdin, empty
    under a launcher, or in a terminal waited silently (its prompt went to the client)
    for a line typed there. It fails at once, as on ipyparallel's engines."""
    raise EOFError(f"{what}({prompt!r}) on an engine: no one can answer it (a task's stdin "
                   "is not its client's); pass what the task needs as an argument")


def _no_getpass(prompt="Password: ", stream=None):
    """A request's getpass.getpass(): as input(), no one can answer it. It prompted at the
    engine's terminal (/dev/tty) and waited there, silently for the task's client."""
    _no_input(prompt, what="getpass")


def _stop_waiting(signum, frame):
    # executes in the main thread, from main() until Engine.start sets the engine's own
    # handlers (while it waits for the connection file, say): as an idle engine, it stops on
    # SIGTERM and a Ctrl-C at its terminal (status 0), ignores other SIGINTs (see the top)
    if signum == signal.SIGINT and not protocol.in_foreground():
        return log.warning("SIGINT while idle: ignored (an engine is stopped with SIGTERM)")
    log.info("%s before connecting to the controller: exiting", signal.Signals(signum).name)
    raise SystemExit(0)


def _on_sighup(signum, frame):
    # executes in the main thread: its terminal closed. It stops as on `kill PID`, through
    # SIGTERM's handler: the engine's (or _stop_waiting) is called, so its log names SIGHUP;
    # another (a task's own, or none in a child a task forked) gets a real SIGTERM, as before
    handler = signal.getsignal(signal.SIGTERM)
    if handler is _stop_waiting or getattr(handler, "__func__", None) is Engine._on_sigterm:
        return handler(signum, frame)
    os.kill(os.getpid(), signal.SIGTERM)


def _cluster_profile_dir(args, wait_s):
    """The profile folder of cluster --cluster-id, waited for up to `wait_s` s (an engine
    started before its cluster), and what is left of `wait_s`, for the connection file."""
    from .launcher import CLUSTER_FILE, cluster_files, cluster_profile_dir   # only here: big

    def started():
        return CLUSTER_FILE.format(cluster_id=args.cluster_id) in map(
            os.path.basename, cluster_files(args.profile, args.profile_dir))

    if not started():
        log.info("no cluster %r yet: waiting up to %g s for it to start", args.cluster_id, wait_s)
        deadline = time.monotonic() + wait_s
        while not started() and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_s = max(0.0, deadline - time.monotonic())
    return cluster_profile_dir(args.profile, args.profile_dir, args.cluster_id), wait_s


def main(argv=None):
    global _engine
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'engine'}",
        description="Start a minipar engine.",
        epilog="Stop an engine with SIGTERM (kill PID): idle, it unregisters and exits 0. "
               "SIGINT interrupts the running task; idle, the engine ignores it (as an "
               "IPython kernel does) unless it runs in its terminal's foreground, where "
               "Ctrl-C stops it (while a task runs: a second Ctrl-C).")
    p.add_argument("--file", default=os.environ.get("MINIPAR_ENGINE_FILE"),
                   help="the controller's minipar-engine.json")
    p.add_argument("--profile", type=protocol.profile_name, help="name: ~/.minipar/profile_NAME")
    p.add_argument("--profile-dir", help="profile folder (overrides --profile)")
    p.add_argument("--cluster-id", help="join that cluster (of --profile, else of $MINIPAR_DIR)")
    p.add_argument("--work-dir", help="folder to run in")
    p.add_argument("-s", "--startup-script", help="Python file to run at startup")
    p.add_argument("-c", "--startup-command", help="Python code to run at startup")
    p.add_argument("--timeout", type=float, default=REGISTRATION_TIMEOUT_S,
                   help="seconds to wait for the controller: for its cluster (--cluster-id) and "
                        f"connection file (at most {CONNECTION_FILE_WAIT_S:.0f}), then for its "
                        "answer to registration (default %(default)s)")
    p.add_argument("--max-missed-heartbeats", type=int, default=MAX_MISSED_HEARTBEATS,
                   help="how long (in the controller's heartbeats) to wait for a controller "
                        "gone silent to come back (then register again) (default %(default)s)")
    p.add_argument("--log-level", type=protocol.log_level,
                   default=os.environ.get("MINIPAR_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO (default, or $MINIPAR_LOG_LEVEL), WARNING or ERROR")
    args = errors.parse_args(p, argv)
    # either at 0 made the engine give up at once, blaming the controller
    if not args.timeout > 0:
        p.error(f"--timeout must be above 0 s, not {args.timeout:g}")
    if args.max_missed_heartbeats < 1:
        p.error(f"--max-missed-heartbeats must be 1 or more, not {args.max_missed_heartbeats}")
    if args.startup_script:   # found from here: the engine runs it from --work-dir
        args.startup_script = os.path.abspath(args.startup_script)
        if not os.path.isfile(args.startup_script):
            p.error(f"--startup-script {args.startup_script}: no such file")
    # its folder (--work-dir, a task's os.chdir) imports, as ipyparallel's: functions go by name
    sys.path.insert(0, "")
    faulthandler.enable()  # a crash leaves its traceback in the log (quoted in EngineError)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # the engine's lines go to its log through its package's logger, not the root one:
    # that is the tasks', whose records go to their stderr (logging's last resort, or a
    # handler a task sets up) as in ipyparallel and IPython
    own = logging.getLogger(__package__)
    own.setLevel("DEBUG" if os.environ.get("MINIPAR_DEBUG") else args.log_level)
    own.propagate = False
    own.addHandler(logging.StreamHandler())
    own.handlers[-1].setFormatter(logging.Formatter(
        f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(message)s"))
    for sig in (signal.SIGINT, signal.SIGTERM):   # not the defaults: a traceback, a kill
        signal.signal(sig, _stop_waiting)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:   # its terminal closed (not under nohup)
        signal.signal(signal.SIGHUP, _on_sighup)
    try:
        wait_s = min(args.timeout, CONNECTION_FILE_WAIT_S)
        if args.cluster_id and not args.file:   # ipengine's: that cluster's connection file
            args.profile_dir, wait_s = _cluster_profile_dir(args, wait_s)
        path = args.file or os.path.join(protocol.profile_dir(args.profile, args.profile_dir),
                                         "security", protocol.ENGINE_FILE)
        protocol.wait_for_file(path, wait_s, log.info)
        with warnings.catch_warnings(record=True) as said:   # a group-readable file, say:
            warnings.simplefilter("always")   # logged in the log's format, not warnings'
            info = protocol.read_connection_file(path, protocol.ENGINE_PORTS)
        for w in said:
            log.warning("%s", w.message)
        engine = _engine = Engine(info, work_dir=args.work_dir, startup_script=args.startup_script,
            startup_command=args.startup_command, connection_file=path,
            registration_timeout=args.timeout, max_missed_heartbeats=args.max_missed_heartbeats)
        engine.start()
    except errors.MiniparError as e:
        log.error("%s", e)
        return 1
    try:
        engine.serve()
    except KeyboardInterrupt:
        log.info("interrupted: exiting")
    # A KeyboardInterrupt out of an exec() or eval() of a string (a dataclass that a task's
    # import made, say) had CPython end the engine by SIGINT, not this status; a clean one resets it
    exec("")
    _leave_threads_behind(engine)
    return engine.exit_code


def _leave_threads_behind(engine):
    # Python's exit joins every non-daemon thread, so one a task started and left running
    # (threading.Thread(target=serve_forever).start()) kept a stopped engine alive for ever,
    # unregistered. A watchdog gives the exit THREADS_GRACE_S (threads that end when told, as
    # an idle ThreadPoolExecutor's, end as before, atexit handlers run), then ends it without them.
    def watchdog():
        time.sleep(THREADS_GRACE_S)
        left = [t.name for t in threading.enumerate() if not t.daemon and t.is_alive()
                and t is not threading.main_thread()]
        if left:   # else what held the exit was not a task's thread (an atexit handler)
            log.warning("threads a task started still run %.0f s after the engine stopped "
                        "(%s): exiting without them (make them daemon=True, or end them)",
                        THREADS_GRACE_S, ", ".join(left))
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()   # fails if closed or replaced by a task
        os._exit(engine.exit_code)

    threading.Thread(target=watchdog, name="minipar-exit-watchdog", daemon=True).start()


if __name__ == "__main__":
    # user code's `from minipar.engine import properties` must find this module, not
    # import a second copy with a properties dict nobody sends
    if __spec__ is not None:
        sys.modules.setdefault(__spec__.name, sys.modules[__name__])
    sys.exit(main())
