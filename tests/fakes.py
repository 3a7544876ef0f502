"""Stand-ins for the controller, for tests that must speak to one engine or one client
directly: fuzzing what an engine or a client accepts, engines that lie about themselves.

``FakeHub`` binds the controller's five sockets on loopback and writes connection files
holding a key the test knows, so the test can sign (or mis-sign) whatever it likes::

    test thread ── ROUTER "engine" ◀──▶ DEALERs of the engine (receiving + replies)
                ── ROUTER "client" ◀──▶ DEALERs of a Client
    heart thread ─ PUB "ping" ──▶ engine heart ──▶ ROUTER "pong" (pongs counted)

Every engine process a test starts through ``start_engine`` is stopped by pid in
``close()``, which the fixtures call in a finalizer.
"""

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import zmq

from minipar import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_S = 0.1


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def stop_process(p, timeout=5):
    """Stop a Popen by its pid: SIGCONT (it may be frozen), SIGTERM, then SIGKILL."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
        except ProcessLookupError:
            pass


class FakeHub:
    """A controller-like peer: the test drives the engine and client sockets by hand."""

    def __init__(self, folder, max_message_size=protocol.MAX_MESSAGE_SIZE,
                 heartbeat_period=HEARTBEAT_S):
        self.folder = folder
        self.key = os.urandom(32).hex()
        self.session = protocol.Session(self.key, max_message_size)
        self.heartbeat_period = heartbeat_period
        self.ctx = zmq.Context()
        self.procs = []
        self.replies = {}   # parent msg_id -> (header, parts) received, not yet asked for
        self.pongs = collections.Counter()   # heart identity -> pongs received
        self.ports = {}
        self.sockets = {}
        for name, kind in (("client", zmq.ROUTER), ("notify", zmq.PUB), ("engine", zmq.ROUTER),
                           ("ping", zmq.PUB), ("pong", zmq.ROUTER)):
            s = self.ctx.socket(kind)
            s.linger = 0
            s.sndhwm = s.rcvhwm = 0   # as the controller's: a burst is queued, never dropped
            self.ports[name] = s.bind_to_random_port("tcp://127.0.0.1")
            self.sockets[name] = s
        self.info = {"key": self.key, "signature_scheme": protocol.SIGNATURE_SCHEME,
                     "transport": "tcp", "ip": "127.0.0.1", "location": "127.0.0.1",
                     "ports": dict(self.ports), "pid": os.getpid(),
                     "host": socket.gethostname(), "heartbeat_period": heartbeat_period,
                     "max_message_size": max_message_size}
        sec = protocol.security_dir(str(folder))
        self.engine_file = os.path.join(sec, protocol.ENGINE_FILE)
        self.client_file = os.path.join(sec, protocol.CLIENT_FILE)
        protocol.write_connection_file(self.engine_file, self.info)
        protocol.write_connection_file(self.client_file, self.info)
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, daemon=True)
        self._heart.start()

    def _beat(self):
        # executes in the heart thread: owns the ping and pong sockets
        ping, pong = self.sockets["ping"], self.sockets["pong"]
        beat = 0
        while not self._stop.is_set():
            beat += 1
            ping.send(b"%d" % beat)
            deadline = time.monotonic() + self.heartbeat_period
            while (left := deadline - time.monotonic()) > 0:
                if pong.poll(left * 1000):
                    frames = pong.recv_multipart()
                    self.pongs[frames[0]] += 1

    # -- engines

    def start_engine(self, log_path, args=(), script=None, env=None):
        """Start `python -m minipar.engine` (or `script`, a Python source string) on
        this hub's engine file; output goes to `log_path`."""
        cmd = [sys.executable, "-c", script] if script else \
            [sys.executable, "-m", "minipar.engine"]
        out = open(log_path, "wb")
        p = subprocess.Popen([*cmd, "--file", self.engine_file, *args], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env or child_env(), cwd=ROOT)
        self.procs.append(p)
        return p

    def recv(self, name="engine", timeout=10):
        """(routing ids, header, parts) of the next signed message on socket `name`."""
        s = self.sockets[name]
        if not s.poll(timeout * 1000):
            raise TimeoutError(f"nothing on the fake hub's {name} socket within {timeout} s")
        return self.session.check(s.recv_multipart(), replay=False)

    def register(self, engine_id=0, timeout=30):
        """Answer the next registration; returns the engine's routing identity."""
        while True:
            idents, header, _ = self.recv("engine", timeout)
            if header["kind"] == protocol.REGISTER:
                break
        ident = idents[0]
        self.send_engine(ident, protocol.REGISTER_REPLY, parent=header["msg_id"],
                         id=engine_id, heartbeat_period=self.heartbeat_period,
                         heartbeat_liveness=5)
        self.registration = header
        self.reg = header["msg_id"].encode()   # requests carry the registration they are for
        # as the controller does, wait until the engine's request socket is connected: a
        # ROUTER drops what it sends to a peer that is not (yet)
        while self.recv("engine", timeout)[1]["kind"] != protocol.READY:
            pass
        return ident

    def work(self, ident):
        """The routing frames of a request to the engine `ident`: its main thread's socket."""
        return [ident + b".r", self.reg]

    def send_engine(self, ident, kind, parts=(), **fields):
        header, frames = self.session.msg(kind, parts, **fields)
        self.sockets["engine"].send_multipart([ident, *frames])
        return header

    def request(self, ident, kind, parts=(), timeout=30, **fields):
        """Send a request to the engine and wait for its reply (other messages skipped)."""
        header, frames = self.session.msg(kind, parts, **fields)
        self.sockets["engine"].send_multipart([*self.work(ident), *frames])
        return self.reply_to(header["msg_id"], timeout)

    def reply_to(self, msg_id, timeout=30):
        """(header, value) of the reply to `msg_id`; replies that came with it in a batch
        are kept for the next calls."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {msg_id} within {timeout} s")
            _, header, parts = self.recv("engine", left)
            for header, parts in self.session.unbatch(header, parts):
                if header.get("parent") is not None and header["kind"] not in (
                        protocol.STREAM, protocol.STARTED, protocol.USAGE):
                    self.replies[header["parent"]] = header, parts
        header, parts = self.replies.pop(msg_id)
        self.session.check_body(header, parts)
        return header, protocol.deserialize(parts) if parts else None

    def close(self):
        for p in self.procs:
            stop_process(p)
        self._stop.set()
        self._heart.join(5)
        for s in self.sockets.values():
            s.close(linger=0)
        self.ctx.term()
