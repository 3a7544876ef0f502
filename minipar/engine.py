"""The engine: runs requests in a persistent namespace, one at a time.

Three threads, each owning its sockets::

    controller ROUTER "engine" ◀──▶ DEALER ┐ receiver thread ── queue ──▶ main thread
                                   PULL ◀──┘ (control messages         (user code, PUSH for
                                              act at once)              its replies)
    controller PUB "ping" ──▶ SUB ┐ heart: zmq.proxy in C, so a main thread busy in C
    controller ROUTER "pong" ◀─ DEALER ┘ still answers; a capture copy tells the receiver
                                        the controller is alive

The main thread runs user code, so signals and KeyboardInterrupt reach it; the receiver
interrupts it (SIGINT to the main thread) to abort a running task or to enforce a task's
`time_limit`. Control messages (abort, interrupt, shutdown) overtake queued work.
"""

import argparse
import builtins
import io
import linecache
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import types
import uuid

import cloudpickle
import zmq

from . import errors, protocol

log = logging.getLogger(__name__)

REGISTRATION_TIMEOUT_S = 30.0   # how long to wait for the controller to answer registration
# Controller silence (in its heartbeats) before the engine exits. Generous, because a
# loaded machine can starve the receiver thread; 10..100 is reasonable.
MAX_MISSED_HEARTBEATS = 30

_STOP = object()
_MISSING = object()

# The names every fresh namespace starts with.
_NS_BASE = {"__name__": "__main__", "__builtins__": builtins}

# The properties of this engine, readable and settable by code running on it
# (`from minipar.engine import properties`); changes are sent to the controller.
properties = {}


class _Interrupt(BaseException):
    """Raised in the main thread by the SIGINT handler; becomes the right error below."""


class _Capture(io.TextIOBase):
    """A request's stdout or stderr: kept whole for the reply."""

    def __init__(self):
        self.parts = []

    def writable(self):
        return True

    def write(self, s):
        self.parts.append(s)
        return len(s)

    def getvalue(self):
        return "".join(self.parts)


class Engine:
    def __init__(self, info, work_dir=None, startup_script=None, startup_command=None,
                 registration_timeout=REGISTRATION_TIMEOUT_S,
                 max_missed_heartbeats=MAX_MISSED_HEARTBEATS):
        self.info = info
        self.session = protocol.Session(info["key"])
        self.ident = uuid.uuid4().hex.encode()
        self.id = None
        self.registration_timeout = registration_timeout
        self.max_missed_heartbeats = max_missed_heartbeats
        self.user_ns = dict(_NS_BASE)
        self._injected = {}         # name -> value a function's captured globals put in user_ns
        self.execution_count = 0
        self.work_dir = work_dir
        self.startup_script = startup_script
        self.startup_command = startup_command
        self._work = queue.Queue()
        self._aborted = set()       # msg_ids to refuse when they come up
        self._current = None        # (msg_id, deadline) of the running request
        self._interrupt = None      # (msg_id, reason) the next SIGINT is for
        self._lock = threading.Lock()
        self._stopping = False

    # ------------------------------------------------------------ start

    def start(self):
        """Connect, register and start the receiver and heart threads. Main thread."""
        if self.work_dir:
            os.makedirs(self.work_dir, exist_ok=True)
            os.chdir(self.work_dir)
        self.ctx = zmq.Context()
        self._outbox_addr = f"inproc://outbox-{id(self)}"
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.identity = self.ident
        dealer.linger = 1000
        dealer.connect(protocol.url(self.info, "engine"))
        outbox_in = self.ctx.socket(zmq.PULL)
        outbox_in.bind(self._outbox_addr)
        self._outbox = self.ctx.socket(zmq.PUSH)   # owned by the main thread
        self._outbox.connect(self._outbox_addr)
        self._start_heart()
        self.id, self.heartbeat_period = self._register(dealer)
        self._main_ident = threading.get_ident()
        signal.signal(signal.SIGINT, self._on_sigint)
        t = threading.Thread(target=self._receiver, args=(dealer, outbox_in),
                             name="minipar-receiver", daemon=True)
        t.start()
        self._run_startup()

    def _start_heart(self):
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(protocol.url(self.info, "ping"))
        pong = self.ctx.socket(zmq.DEALER)
        pong.identity = self.ident
        pong.linger = 0
        pong.connect(protocol.url(self.info, "pong"))
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
            try:
                zmq.proxy_steerable(sub, pong, capture, control)
            except zmq.ZMQError:
                pass
            for s in (sub, pong, capture, control):
                s.close(linger=0)

        threading.Thread(target=heart, name="minipar-heart", daemon=True).start()

    def _register(self, dealer):
        props = dict(properties)
        for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
            if var in os.environ:
                props.setdefault("mpi_rank", int(os.environ[var]))
                break
        properties.update(props)
        want = os.environ.get("MINIPAR_ENGINE_ID")
        _, frames = self.session.msg(
            protocol.REGISTER, uuid=self.ident.decode(), pid=os.getpid(),
            host=socket.gethostname(), python=list(sys.version_info[:3]),
            cloudpickle=cloudpickle.__version__, properties=props,
            id=int(want) if want else None)
        dealer.send_multipart(frames)
        if not dealer.poll(self.registration_timeout * 1000):
            raise errors.MiniparError(
                f"the controller at {protocol.url(self.info, 'engine')} did not answer "
                f"registration within {self.registration_timeout:.0f} s: is it running, and "
                "is this the right connection file?")
        frames = dealer.recv_multipart()
        if protocol.is_refusal(frames):
            raise errors.MiniparError(
                f"the controller refused registration ({frames[2].decode()}): the key in the "
                "connection file does not match the controller's; use the file it wrote")
        _, header, _ = self.session.check(frames)
        log.info("registered as engine %d", header["id"])
        return header["id"], header.get("heartbeat_period", 1.0)

    def _run_startup(self):
        if self.startup_script:
            with open(self.startup_script) as f:
                code = f.read()
            exec(compile(code, self.startup_script, "exec"), self.user_ns)
        if self.startup_command:
            exec(compile(self.startup_command, "<startup-command>", "exec"), self.user_ns)

    # ------------------------------------------------------------ receiver thread

    def _receiver(self, dealer, outbox_in):
        # executes in the receiver thread: owns dealer, outbox_in and self._pings
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(outbox_in, zmq.POLLIN)
        poller.register(self._pings, zmq.POLLIN)
        last_ping = time.monotonic()
        silence = self.heartbeat_period * self.max_missed_heartbeats
        while True:
            timeout = self.heartbeat_period
            cur = self._current
            if cur is not None and cur[1] is not None:
                timeout = min(timeout, max(0.0, cur[1] - time.monotonic()))
            events = dict(poller.poll(timeout * 1000))
            now = time.monotonic()
            if self._pings in events:
                while self._pings.poll(0):
                    self._pings.recv_multipart()
                last_ping = now
            if outbox_in in events:
                for _ in range(256):
                    try:
                        frames = outbox_in.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if frames[0].bytes == b"":  # the main thread's stop marker
                        return self._close(dealer, outbox_in)
                    dealer.send_multipart(frames, copy=False)
            if dealer in events:
                for _ in range(256):
                    try:
                        frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(frames)
            cur = self._current
            if cur is not None and cur[1] is not None and now >= cur[1]:
                self._interrupt_main(cur[0], "timeout")
            if now - last_ping > silence and not self._stopping:
                log.error("the controller has been silent for %d heartbeats: exiting",
                          self.max_missed_heartbeats)
                self._stop()

    def _on_message(self, frames):
        # executes in the receiver thread
        if protocol.is_refusal(frames):
            log.error("the controller refused a message: %s", frames[2].bytes.decode())
            return
        try:
            _, header, parts = self.session.check(frames)
        except Exception as e:
            log.warning("dropped a message from the controller: %s", e)
            return
        kind = header["kind"]
        if kind == protocol.ABORT:
            for msg_id in header.get("msg_ids", ()):
                self._aborted.add(msg_id)
                cur = self._current
                if cur is not None and cur[0] == msg_id:
                    self._interrupt_main(msg_id, "abort")
        elif kind == protocol.INTERRUPT:
            cur = self._current
            if cur is not None:
                self._interrupt_main(cur[0], "interrupt")
        elif kind == protocol.SHUTDOWN:
            log.info("shutdown requested")
            self._stop()
        elif kind == protocol.UNREGISTER:
            log.error("the controller unregistered this engine (%s): exiting",
                      header.get("reason"))
            cur = self._current
            if cur is not None:
                self._interrupt_main(cur[0], "abort")
            self._stop()
        else:
            self._work.put((header, parts))

    def _interrupt_main(self, msg_id, reason):
        # executes in the receiver thread
        with self._lock:
            if self._interrupt is not None:
                return
            self._interrupt = (msg_id, reason)
        signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _stop(self):
        self._stopping = True
        self._work.put(_STOP)

    def _close(self, dealer, outbox_in):
        # executes in the receiver thread, last
        self._heart_control.send(b"TERMINATE")
        dealer.close(linger=1000)
        outbox_in.close(linger=0)
        self._pings.close(linger=0)
        self._heart_control.close(linger=0)

    # ------------------------------------------------------------ main thread

    def _on_sigint(self, signum, frame):
        # executes in the main thread, between bytecodes of whatever runs
        with self._lock:
            target, self._interrupt = self._interrupt, None
        cur = self._current
        if target is None:
            raise KeyboardInterrupt
        if cur is not None and cur[0] == target[0]:
            raise _Interrupt(target[1])

    def serve(self):
        """Run requests until stopped. Main thread."""
        while True:
            item = self._work.get()
            if item is _STOP:
                break
            header, parts = item
            if self._stopping:
                self._send_reply(header, "aborted", [], ename="TaskAborted",
                                 evalue="the engine shut down before running this task")
                continue
            self._run(header, parts)
        self._send(protocol.UNREGISTER)
        self._outbox.send(b"")
        self._outbox.close(linger=1000)

    def _run(self, header, parts):
        msg_id = header["msg_id"]
        if msg_id in self._aborted:
            self._aborted.discard(msg_id)
            return self._reply_error(header, errors.TaskAborted(
                "aborted before it started"), status="aborted", started=time.time())
        limit = header.get("time_limit")
        handler = self._handlers.get(header["kind"])
        out, err = _Capture(), _Capture()
        started = time.time()
        status = "ok"
        result = None
        sys.stdout, sys.stderr = out, err
        try:
            self.session.check_body(header, parts)
            self._current = (msg_id, time.monotonic() + limit if limit else None)
            try:
                if handler is None:
                    raise ValueError(f"unknown request kind {header['kind']!r}")
                result = handler(self, header, parts)
            finally:
                self._current = None
        except _Interrupt as e:
            reason = e.args[0]
            if reason == "timeout":
                status, result = "timeout", errors.TaskTimeout(
                    f"the task ran longer than its time_limit of {limit} s and was "
                    "interrupted; raise time_limit or split the work")
            elif reason == "abort":
                status, result = "aborted", errors.TaskAborted("aborted while running")
            else:
                status, result = "error", KeyboardInterrupt("interrupted")
        except errors.UnmetDependency as e:
            status, result = "unmet", e
        except BaseException as e:
            status, result = "error", e
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            with self._lock:
                self._interrupt = None
        completed = time.time()
        meta = {"started": started, "completed": completed, "stdout": out.getvalue(),
                "stderr": err.getvalue(), "execution_count": self.execution_count}
        if status != "ok":
            return self._reply_error(header, result, status=status, **meta)
        try:
            result_parts = protocol.serialize(result)
        except errors.SerializationError as e:
            return self._reply_error(header, e, status="error", **meta)
        self._send_reply(header, "ok", result_parts, **meta)

    def _reply_error(self, header, exc, status="error", **meta):
        info = {"engine_id": self.id, "msg_id": header["msg_id"], "kind": header["kind"]}
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the user's frames only: the engine's own say nothing to them
        exc = exc.with_traceback(tb)
        remote = errors.wrap(exc, info)
        self._send_reply(header, status, protocol.serialize(remote),
                         ename=remote.ename, evalue=remote.evalue, **meta)

    def _send_reply(self, header, status, parts, **fields):
        self._send(protocol.reply_kind(header["kind"]), parts, parent=header["msg_id"],
                   status=status, engine=self.id, **fields)

    def _send(self, kind, parts=(), **fields):
        # executes in the main thread: its own PUSH socket, drained by the receiver
        _, frames = self.session.msg(kind, parts, **fields)
        self._outbox.send_multipart(frames, copy=False)

    # ------------------------------------------------------------ request kinds

    def _apply(self, header, parts):
        f, (args, kwargs) = protocol.deserialize_many(parts, header["counts"])
        f = self._bind(f)
        if header.get("map"):  # a chunk of a map: f element-wise over the sequences
            return list(map(f, *args))
        return f(*args, **kwargs)

    def _bind(self, f):
        """A function sent from the client's __main__ runs with the namespace as globals.

        The names it uses that cloudpickle captured from the client (modules, constants)
        are added where the namespace lacks them, and refreshed on later calls as long
        as nothing on the engine (a push, executed code) has replaced them since.
        """
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
        exec(compile(code, name, "exec"), self.user_ns)

    def _push(self, header, parts):
        ns = protocol.deserialize(parts)
        self.user_ns.update({k: self._bind(v) for k, v in ns.items()})

    def _pull(self, header, parts):
        names = header["names"]
        missing = [n for n in ([names] if isinstance(names, str) else names)
                   if n not in self.user_ns]
        if missing:
            raise NameError(f"name {missing[0]!r} is not defined on engine {self.id}")
        if isinstance(names, str):
            return self.user_ns[names]
        return [self.user_ns[n] for n in names]

    def _keys(self, header, parts):
        return [k for k in self.user_ns if k not in _NS_BASE]

    def _clear(self, header, parts):
        self.user_ns.clear()
        self.user_ns.update(_NS_BASE)
        self._injected.clear()

    def _properties(self, header, parts):
        op = header.get("op", "get")
        keys = header.get("keys")
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
            self._send(protocol.PROPERTIES + "_update", properties=dict(properties))
            return None
        return {k: properties[k] for k in keys} if keys else dict(properties)

    _handlers = {
        protocol.APPLY: _apply,
        protocol.EXECUTE: _execute,
        protocol.PUSH: _push,
        protocol.PULL: _pull,
        protocol.KEYS: _keys,
        protocol.CLEAR: _clear,
        protocol.PROPERTIES: _properties,
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'engine'}",
                                description="Start a minipar engine.")
    p.add_argument("--file", default=os.environ.get("MINIPAR_ENGINE_FILE"),
                   help="the controller's minipar-engine.json")
    p.add_argument("--profile", help="profile name (~/.minipar/profile_NAME)")
    p.add_argument("--profile-dir", help="profile folder (overrides --profile)")
    p.add_argument("--work-dir", help="folder to run in")
    p.add_argument("-s", "--startup-script", help="Python file to run at startup")
    p.add_argument("-c", "--startup-command", help="Python code to run at startup")
    p.add_argument("--timeout", type=float, default=REGISTRATION_TIMEOUT_S,
                   help="seconds to wait for the controller at registration")
    p.add_argument("--max-missed-heartbeats", type=int, default=MAX_MISSED_HEARTBEATS,
                   help="exit after the controller is silent this many heartbeats")
    p.add_argument("--log-level", default=os.environ.get("MINIPAR_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(level="DEBUG" if os.environ.get("MINIPAR_DEBUG") else args.log_level.upper(),
                        format=f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(message)s")
    path = args.file or os.path.join(protocol.profile_dir(args.profile, args.profile_dir),
                                     "security", protocol.ENGINE_FILE)
    try:
        info = protocol.read_connection_file(path)
        engine = Engine(info, work_dir=args.work_dir, startup_script=args.startup_script,
                        startup_command=args.startup_command, registration_timeout=args.timeout,
                        max_missed_heartbeats=args.max_missed_heartbeats)
        engine.start()
    except errors.MiniparError as e:
        log.error("%s", e)
        return 1
    try:
        engine.serve()
    except KeyboardInterrupt:
        log.info("interrupted: exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
