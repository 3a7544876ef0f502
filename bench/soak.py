"""Soak: load the controller hard and count what comes back (issue 6). Not a test.

    python bench/soak.py [--quick] [--tasks N] [--map-items N] [--sim-engines N]

Three phases, each on a fresh local cluster::

    tasks       N no-op tasks (default 100,000) submitted at once through the
                load-balanced view, then waited for
    map         M map items (default 1,000,000) through the load-balanced view, in
                chunks of 50; the controller's resident memory is printed before,
                during (sampled every 0.2 s: the peak) and after
    engines     E simulated engines (default 200) in a few processes that speak the
                real protocol (register, answer heartbeats, run apply requests);
                the time until all are registered, then one request to each

Each phase prints `submitted, completed, failed, lost` (lost: no final state within
the timeout; it must be 0) and the controller's peak RSS; the tasks and map phases also
the RSS of this process (the client) and of each engine at their end. The exit status is 1 when
anything was lost or failed. ``tests/test_soak.py`` runs a reduced variant.

Every process is stopped by pid at the end of its phase (the cluster's own stop, then
SIGKILL for the simulated engines' processes).
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
if ROOT not in sys.path:   # the in-tree minipar is the one measured
    sys.path.insert(0, ROOT)

from minipar import protocol  # noqa: E402
from minipar.launcher import Cluster  # noqa: E402

TIMEOUT_S = 900.0   # bound on each phase's wait


def noop(i):
    return i


def rss_mb(pid):
    """Resident memory of process `pid` in MB (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RSSSampler:
    """Samples a process's RSS every `interval` s in a thread; keeps the peak."""

    def __init__(self, pid, interval=0.2):
        self.pid, self.interval = pid, interval
        self.peak = rss_mb(pid) or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def others_rss(cluster):
    """The client's (this process's) and each engine's RSS now, as report's extra text:
    the controller is not the only process a long run could grow."""
    engines = [rss_mb(pid) or 0.0 for e in cluster.engines.values() for pid in e.pids()]
    return (f"; client RSS {rss_mb(os.getpid()):.1f} MB, engines "
            + ", ".join(f"{mb:.1f}" for mb in engines) + " MB")


def report(name, submitted, completed, failed, lost, seconds, peak_mb, extra=""):
    print(f"{name:8s} submitted {submitted:>9,}  completed {completed:>9,}  failed "
          f"{failed:>5,}  lost {lost:>5,}  in {seconds:7.1f} s  peak controller RSS "
          f"{peak_mb:6.1f} MB{extra}", flush=True)
    return {"submitted": submitted, "completed": completed, "failed": failed, "lost": lost,
            "seconds": seconds, "peak_rss_mb": peak_mb}


def _count(ars, expected, timeout):
    """(completed, failed, lost) of AsyncResults whose values should be `expected`."""
    deadline = time.monotonic() + timeout
    completed = failed = lost = 0
    for ar, want in zip(ars, expected):
        if not ar.wait(max(0.0, deadline - time.monotonic())):
            lost += 1
        elif ar.successful() and ar.get() == want:
            completed += 1
        else:
            failed += 1
    return completed, failed, lost


def _cluster(n, folder):
    return Cluster(n=n, profile_dir=os.path.join(folder, f"soak-{n}-{time.time_ns()}"),
                   shutdown_atexit=True)


# ---------------------------------------------------------------- phases

def phase_tasks(n_tasks, n_engines, folder):
    """`n_tasks` no-op tasks submitted at once; all must come back right."""
    cluster = _cluster(n_engines, folder)
    try:
        rc = cluster.start_and_connect_sync()
        pid = cluster.controller.pid
        sampler = RSSSampler(pid)
        view = rc.load_balanced_view()
        t0 = time.monotonic()
        ars = [view.apply_async(noop, i) for i in range(n_tasks)]
        submitted_s = time.monotonic() - t0
        completed, failed, lost = _count(ars, range(n_tasks), TIMEOUT_S)
        seconds = time.monotonic() - t0
        return report("tasks", n_tasks, completed, failed, lost, seconds, sampler.stop(),
                      f"  (submitting took {submitted_s:.1f} s; "
                      f"{n_tasks / seconds:,.0f} tasks/s{others_rss(cluster)})")
    finally:
        cluster.stop_cluster_sync()


def phase_map(n_items, n_engines, folder, chunksize=50):
    """`n_items` map items through the load-balanced view; RSS before, during, after."""
    cluster = _cluster(n_engines, folder)
    try:
        rc = cluster.start_and_connect_sync()
        pid = cluster.controller.pid
        before = rss_mb(pid)
        sampler = RSSSampler(pid)
        view = rc.load_balanced_view()
        t0 = time.monotonic()
        ar = view.map_async(noop, range(n_items), chunksize=chunksize)
        ar.wait(TIMEOUT_S)
        seconds = time.monotonic() - t0
        peak = sampler.stop()
        after = rss_mb(pid)
        rc.purge_results("all")
        rc.queue_status()   # answered after the purge was done
        purged = rss_mb(pid)
        completed = failed = lost = 0
        for i, f in enumerate(ar._children):   # one task per chunk
            lo = i * chunksize
            size = min(chunksize, n_items - lo)
            if not f.done():
                lost += size
            elif f.exception() is None and f.result() == list(range(lo, lo + size)):
                completed += size
            else:
                failed += size
        return report("map", n_items, completed, failed, lost, seconds, peak,
                      f"  ({len(ar):,} tasks of {chunksize}; controller RSS before "
                      f"{before:.1f} MB, peak {peak:.1f}, after {after:.1f}, after "
                      f"purge {purged:.1f}{others_rss(cluster)})")
    finally:
        cluster.stop_cluster_sync()


def phase_engines(n_engines, folder, per_process=50):
    """`n_engines` simulated engines register (timed); then each runs one request."""
    cluster = Cluster(n=0, profile_dir=os.path.join(folder, f"soak-sim-{time.time_ns()}"),
                      controller_args=["--heartbeat-liveness", "10"], shutdown_atexit=True)
    procs = []
    try:
        cluster.start_controller_sync()
        rc = cluster.connect_client_sync()
        pid = cluster.controller.pid
        sampler = RSSSampler(pid)
        t0 = time.monotonic()
        for start in range(0, n_engines, per_process):
            n = min(per_process, n_engines - start)
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--simulate", cluster.engine_file,
                 str(n)], stdin=subprocess.DEVNULL))
        try:
            rc.wait_for_engines(n_engines, TIMEOUT_S, progress=False)
        except TimeoutError:
            pass
        registered_s = time.monotonic() - t0
        registered = len(rc.ids)
        # one request to each: every engine that registered works
        ids = rc.ids
        ars = [rc[e].apply_async(noop, e) for e in ids]
        completed, failed, lost = _count(ars, ids, TIMEOUT_S)
        lost += n_engines - registered
        return report("engines", n_engines, completed, failed, lost,
                      time.monotonic() - t0, sampler.stop(),
                      f"  ({registered} of {n_engines} registered in {registered_s:.1f} s, "
                      f"{len(procs)} processes)")
    finally:
        for p in procs:   # by pid: SIGKILL, they hold no state worth a clean stop
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        cluster.stop_cluster_sync()


# ---------------------------------------------------------------- simulated engines

def simulated_engines(engine_file, n):
    """Run `n` engines in this process, with the real wire protocol: each registers on
    its own DEALER, echoes heartbeats through its own SUB/DEALER pair, and answers apply
    requests by running them. One poll loop for all of them."""
    import uuid

    import zmq

    info = protocol.read_connection_file(engine_file)
    session = protocol.Session(info["key"], info.get("max_message_size",
                                                     protocol.MAX_MESSAGE_SIZE))
    ctx = zmq.Context()
    poller = zmq.Poller()
    engines = {}   # socket -> engine dict
    for _ in range(n):
        ident = uuid.uuid4().hex.encode()
        e = {"ident": ident, "id": None}
        e["dealer"] = protocol.connect(_socket(ctx, zmq.DEALER, ident), info, "engine")
        e["pong"] = protocol.connect(_socket(ctx, zmq.DEALER, ident), info, "pong")
        e["ping"] = _socket(ctx, zmq.SUB)
        e["ping"].setsockopt(zmq.SUBSCRIBE, b"")
        protocol.connect(e["ping"], info, "ping")
        for kind in ("dealer", "ping"):
            poller.register(e[kind], zmq.POLLIN)
            engines[e[kind]] = e
        _, frames = session.msg(protocol.REGISTER, uuid=ident.decode(), pid=os.getpid(),
                                host="simulated", python=list(sys.version_info[:3]),
                                cloudpickle=__import__("cloudpickle").__version__)
        e["dealer"].send_multipart(frames)
    while True:
        for sock, _ in poller.poll():
            e = engines[sock]
            frames = sock.recv_multipart()
            if sock is e["ping"]:
                e["pong"].send_multipart(frames)
                continue
            _, header, parts = session.check(frames)
            kind = header["kind"]
            if kind == protocol.REGISTER_REPLY:
                e["id"] = header["id"]
            elif kind == protocol.UNREGISTER:
                _, frames = session.msg(protocol.REGISTER, uuid=e["ident"].decode(),
                                        pid=os.getpid(), id=e["id"])
                e["dealer"].send_multipart(frames)
            elif kind == protocol.APPLY:
                session.check_body(header, parts)
                f, (args, kwargs) = protocol.deserialize_many(parts, header["counts"])
                result = protocol.serialize(f(*args, **kwargs))
                _, frames = session.msg(protocol.APPLY_REPLY, result,
                                        parent=header["msg_id"], status="ok", engine=e["id"],
                                        attempt=header.get("attempt", 0))
                e["dealer"].send_multipart(frames)


def _socket(ctx, kind, identity=None):
    import zmq

    s = ctx.socket(kind)
    s.linger = 0
    if identity is not None:
        s.identity = identity
    if kind == zmq.SUB:
        s.rcvhwm = 10
    return s


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of everything")
    p.add_argument("--tasks", type=int, help="tasks submitted at once (100,000)")
    p.add_argument("--map-items", type=int, help="map items (1,000,000)")
    p.add_argument("--sim-engines", type=int, help="simulated engines (200)")
    p.add_argument("-n", "--engines", type=int, default=2, help="real engines (2)")
    p.add_argument("--simulate", nargs=2, metavar=("ENGINE_FILE", "N"),
                   help=argparse.SUPPRESS)   # a process of simulated engines (phase 3)
    args = p.parse_args(argv)
    if args.simulate:
        return simulated_engines(args.simulate[0], int(args.simulate[1]))
    scale = 10 if args.quick else 1
    n_tasks = args.tasks or 100_000 // scale
    n_items = args.map_items or 1_000_000 // scale
    n_sim = args.sim_engines or (40 if args.quick else 200)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="minipar-soak-") as folder:
        print(f"soak: {n_tasks:,} tasks, {n_items:,} map items, {n_sim} simulated engines; "
              f"{args.engines} real engines; {os.cpu_count()} CPUs", flush=True)
        results = [phase_tasks(n_tasks, args.engines, folder),
                   phase_map(n_items, args.engines, folder),
                   phase_engines(n_sim, folder)]
    totals = {k: sum(r[k] for r in results) for k in ("submitted", "completed", "failed",
                                                      "lost")}
    peak = max(r["peak_rss_mb"] for r in results)
    print(f"total    submitted {totals['submitted']:>9,}  completed {totals['completed']:>9,}  "
          f"failed {totals['failed']:>5,}  lost {totals['lost']:>5,}  peak controller RSS "
          f"{peak:.1f} MB")
    return 1 if totals["lost"] or totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
