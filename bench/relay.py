"""The raw pyzmq relay: the limit minipar's controller is measured against.

Three processes on loopback, shaped like a minipar cluster with one engine::

    client (this process)       broker (subprocess)                   worker (subprocess)
    DEALER ───1───▶ ROUTER frontend ┐  one poll loop,  ┌ ROUTER backend ───2───▶ DEALER
           ◀──4────                 ┘  swaps ids       └                ◀──3────  echoes

A round trip is 4 hops (client→broker→worker→broker→client), as an `apply_sync` through
minipar's controller is. The broker is the ZeroMQ guide's `rrbroker` with a worker instead
of a REP socket: a plain Python poll loop that drains each ready socket and forwards
whole messages (copied in the relay for small messages, `copy=False` in the one for bulk;
see `Relay`). It does no signing, no headers and no bookkeeping, so whatever minipar
spends beyond it is protocol, records and scheduling.

Figures (`Relay` methods): `round_trip_us` (one at a time, median), `pipelined_rate`
(round trips per second with a window in flight) and `bulk_mb_s` (a large message out and
back, zero-copy). `python bench/relay.py` prints them; `_common` and `run.py` reuse them.
The broker and worker are this file run as `python relay.py broker|worker ...`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import zmq

import _common

READY = b"READY"
# Broker and worker check this often, when idle, that the benchmark that started them is
# still there, so a benchmark killed with SIGKILL leaves no relay behind.
ORPHAN_CHECK_MS = 1000
# Messages taken from a socket per poll: enough to amortize the poll over a window of
# in-flight requests, few enough that the other socket is not starved (100..1000).
DRAIN_LIMIT = 200


def _exit_if_orphaned(parent_pid):
    if os.getppid() != parent_pid:
        sys.exit(0)


# executes in the broker subprocess
def _serve_broker(copy):
    parent = os.getppid()
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.ROUTER)
    for sock in (frontend, backend):
        sock.setsockopt(zmq.LINGER, 0)
        # unbounded queues: the pipelined figure must measure the loop, not drops/blocks
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    frontend_port = frontend.bind_to_random_port("tcp://127.0.0.1")
    backend_port = backend.bind_to_random_port("tcp://127.0.0.1")
    print(frontend_port, backend_port, flush=True)
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    # The single worker announces itself; the broker knows its routing id from then on.
    while not poller.poll(ORPHAN_CHECK_MS):
        _exit_if_orphaned(parent)
    worker_id, _ready = backend.recv_multipart()
    while True:
        events = dict(poller.poll(ORPHAN_CHECK_MS))
        if not events:
            _exit_if_orphaned(parent)
        # Drain what is there before polling again: one poll per burst, not per message,
        # which is what a broker tuned for small messages does (about +40% pipelined).
        if frontend in events:
            for frames in _drain(frontend, copy):  # [client_id, *payload]
                backend.send_multipart([worker_id] + frames, copy=copy)
        if backend in events:
            for frames in _drain(backend, copy):  # [worker_id, client_id, *payload]
                frontend.send_multipart(frames[1:], copy=copy)


def _drain(sock, copy, limit=DRAIN_LIMIT):
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return


# executes in the worker subprocess
def _serve_worker(backend_port, copy):
    parent = os.getppid()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(f"tcp://127.0.0.1:{backend_port}")
    sock.send(READY)
    while True:
        if not sock.poll(ORPHAN_CHECK_MS):
            _exit_if_orphaned(parent)
            continue
        # [client_id, *payload] comes in, goes back unchanged: an echo
        for frames in _drain(sock, copy):
            sock.send_multipart(frames, copy=copy)


class Relay:
    """Start broker and worker, connect a client DEALER; `close()` stops both by pid.

    copy=True suits small messages (pyzmq copies below some tens of kB faster than it
    tracks a zero-copy frame), copy=False large ones; `measure` runs one relay of each kind so each
    figure gets raw pyzmq's best.
    """

    def __init__(self, copy=True, timeout_s=10.0):
        self._procs = []
        mode = "copy" if copy else "nocopy"
        try:
            broker = self._spawn("broker", mode)
            line = _common.read_line(broker, timeout_s)
            frontend_port, backend_port = (int(p) for p in line.split())
            self._spawn("worker", mode, str(backend_port))
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 0)
            self.sock.setsockopt(zmq.RCVHWM, 0)
            self.sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
            self.sock.connect(f"tcp://127.0.0.1:{frontend_port}")
            self.sock.send(b"ping")  # the first round trip also proves the worker is there
            self.sock.recv()
        except BaseException:
            self.close()
            raise

    def _spawn(self, role, *args):
        proc = subprocess.Popen([sys.executable, __file__, role, *args],
                                stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)
        return proc

    def close(self):
        if getattr(self, "ctx", None) is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None
        _common.stop_processes(self._procs)
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def round_trip_us(self, n, payload=b"x" * 64):
        """Median of n one-at-a-time round trips, in µs."""
        send, recv = self.sock.send, self.sock.recv
        for _ in range(min(n, 100)):  # warm up the TCP paths and the broker loop
            send(payload)
            recv()
        times = []
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            send(payload)
            recv()
            times.append(clock() - t0)
        return statistics.median(times) * 1e6

    def pipelined_rate(self, n, window=1000, payload=b"x" * 64):
        """Round trips per second with up to `window` requests in flight."""
        send, recv = self.sock.send, self.sock.recv
        t0 = time.perf_counter()
        sent = received = 0
        while sent < min(window, n):
            send(payload)
            sent += 1
        while received < n:
            recv()
            received += 1
            # take every reply already here, then refill the window in one burst
            while received < n:
                try:
                    recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                received += 1
            while sent < min(received + window, n):
                send(payload)
                sent += 1
        return n / (time.perf_counter() - t0)

    def bulk_mb_s(self, size_mb=100, repeat=3):
        """Send size_mb out and back through the broker, zero-copy; best MB/s moved.

        The rate counts both directions (2 × size_mb per round trip), so it compares with a
        push (size_mb one way) or a pull (size_mb the other way) timed on its own.
        """
        data = bytearray(size_mb * 1_000_000)
        best = 0.0
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.sock.send(data, copy=False)
            back = self.sock.recv(copy=False)
            elapsed = time.perf_counter() - t0
            assert len(back) == len(data)
            del back
            best = max(best, 2 * size_mb / elapsed)
        return best


KEYS = ("apply_rtt_us", "pipelined_per_s", "bulk_mb_s")


def measure(cfg, keys=KEYS):
    """The relay figures named in keys, from one relay: {key: value}."""
    out = {}
    if {"apply_rtt_us", "pipelined_per_s"} & set(keys):
        with Relay(copy=True) as relay:
            if "apply_rtt_us" in keys:
                out["apply_rtt_us"] = relay.round_trip_us(cfg.rtt_n)
            if "pipelined_per_s" in keys:
                out["pipelined_per_s"] = max(relay.pipelined_rate(cfg.pipeline_n, cfg.window)
                                             for _ in range(cfg.rate_repeat))
    if "bulk_mb_s" in keys:
        with Relay(copy=False) as relay:
            # the limit, so the best of as many tries as the cheap rates get
            out["bulk_mb_s"] = relay.bulk_mb_s(cfg.bulk_mb, cfg.rate_repeat)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", choices=["broker", "worker"],
                        help=argparse.SUPPRESS)
    parser.add_argument("mode", nargs="?", choices=["copy", "nocopy"],
                        help=argparse.SUPPRESS)
    parser.add_argument("port", nargs="?", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    if args.role == "broker":
        return _serve_broker(copy=args.mode == "copy")
    if args.role == "worker":
        return _serve_worker(args.port, copy=args.mode == "copy")
    cfg = _common.Config.make(quick=args.quick)
    figures = measure(cfg)
    print("raw pyzmq relay (client, broker, worker; 4 hops per round trip)")
    print(f"  round trip, one at a time: {figures['apply_rtt_us']:8.1f} µs"
          f" (median of {cfg.rtt_n})")
    print(f"  pipelined, {cfg.window} in flight:  {figures['pipelined_per_s']:8.0f} round trips/s"
          f" (best of {cfg.rate_repeat} x {cfg.pipeline_n})")
    print(f"  bulk {cfg.bulk_mb} MB out and back:   {figures['bulk_mb_s']:8.0f} MB/s")


if __name__ == "__main__":
    main()
