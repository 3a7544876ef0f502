"""Shared machinery of the benchmark suite: every figure is measured here, once.

Who measures what::

    relay.py          the raw pyzmq relay (its own processes)      -> "relay"
    measure_pool()    multiprocessing.Pool                          -> "multiprocessing"
    measure_cluster() minipar or ipyparallel, through the API both   -> "minipar", "ipyparallel"
                      share (Cluster, rc[0].apply_sync, views, push/pull, scatter/gather)
    import_times_ms() `import X` in fresh interpreters, taking turns, best of several

`collect(cfg, keys)` runs only what the figures in `keys` need and returns
{system: {figure key: value or error text}}; `print_table` and `table_rows` turn that into
the goals table of issue 7 (figure | relay | minipar | ipyparallel | multiprocessing |
ratio | goal | met?). latency.py, throughput.py, startup.py and run.py are thin front ends
choosing their keys.

Processes: every process a measurement starts is stopped by pid in a `finally`: the relay
stops its broker and worker, a Pool is terminated, a cluster is stopped through its own
`stop_cluster_sync()`, and then any process it started that is still alive gets SIGKILL
(our descendants that appeared while it ran, known by pid and start time, so they are
found after being re-parented and a reused pid is never hit).
"""
import contextlib
import dataclasses
import json
import math
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
# the in-tree minipar, not an installed one, is what a benchmark of this checkout measures
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SYSTEMS = ("relay", "minipar", "ipyparallel", "multiprocessing")
# after a cluster's own stop, how long its processes may take to exit before SIGKILL
STOP_GRACE_S = 10.0


@dataclasses.dataclass
class Config:
    """How much work each figure does; `make(quick=True)` keeps run.py under a minute."""
    quick: bool = False
    n: int = 2                      # engines (workers) per cluster
    rtt_n: int = 2000               # one-at-a-time round trips (median)
    pipeline_n: int = 20_000        # relay round trips with `window` in flight
    window: int = 1000
    # Rates and bulk figures are the best of rate_repeat runs, the same number for every
    # system (this 2-core VM swings +-30% between runs as the processes land on the
    # cores, and a best of more runs is a higher figure).
    rate_repeat: int = 3
    tasks_n: int = 5000             # no-op tasks (issue 7: 5,000)
    map1_n: int = 5000              # map items with chunksize 1
    map_auto_n: int = 1_000_000     # map items with automatic chunks
    slow_n: int = 2000              # task counts for ipyparallel (~300 tasks/s)
    slow_rtt_n: int = 500
    bulk_mb: int = 100
    scatter_n: int = 10_000_000     # float64 items
    import_repeat: int = 15
    queued_n: int = 20_000          # tasks queued for the memory figure
    timeout_s: float = 120.0        # bound on any single wait

    @classmethod
    def make(cls, quick=False, **overrides):
        cfg = cls(quick=quick)
        if quick:
            cfg = dataclasses.replace(
                cfg, rtt_n=500, rate_repeat=2, tasks_n=1000, map1_n=1000,
                map_auto_n=200_000, slow_n=300, slow_rtt_n=100,
                import_repeat=3, queued_n=2000, timeout_s=30.0)
        return dataclasses.replace(cfg, **overrides)


# ---------------------------------------------------------------------------
# the figures and their goals (issue 7)

@dataclasses.dataclass
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    # the relay's / Pool's own figure shown in this row (None: that column stays empty)
    relay_key: str = None
    pool_key: str = None
    # (column, "<=" or ">=", factor): minipar / column must satisfy the comparison;
    # column None means minipar's own value against the factor as an absolute bound
    goals: tuple = ()
    goal_text: str = ""


FIGURES = [
    Figure("apply_rtt_us", "apply_sync round trip, 1 engine", "µs", False,
           "apply_rtt_us", "apply_rtt_us",
           (("relay", "<=", 2.0), ("ipyparallel", "<=", 1 / 7)),
           "<= 2x relay, <= 1/7 ipp"),
    Figure("lb_tasks_per_s", "load-balanced no-op tasks/s", "1/s", True,
           "pipelined_per_s", "apply_async_per_s",
           (("relay", ">=", 0.3), ("ipyparallel", ">=", 30.0)),
           ">= 30% relay, >= 30x ipp"),
    Figure("dv_tasks_per_s", "direct-view no-op tasks/s", "1/s", True,
           "pipelined_per_s", "apply_async_per_s",
           (("relay", ">=", 0.3), ("ipyparallel", ">=", 30.0)),
           ">= 30% relay, >= 30x ipp"),
    Figure("map1_items_per_s", "map items/s, chunksize 1", "1/s", True,
           None, "map1_items_per_s",
           (("ipyparallel", ">=", 30.0),),
           ">= 30x ipp"),
    Figure("map_auto_items_per_s", "map items/s, automatic chunks", "1/s", True,
           None, "map_auto_items_per_s",
           (("multiprocessing", ">=", 0.5),),
           ">= 50% Pool.map"),
    Figure("push_mb_s", "push 100 MB to 1 engine", "MB/s", True,
           "bulk_mb_s", None,
           (("relay", ">=", 0.7),),
           ">= 70% relay bulk"),
    Figure("pull_mb_s", "pull 100 MB from 1 engine", "MB/s", True,
           "bulk_mb_s", None,
           (("relay", ">=", 0.7),),
           ">= 70% relay bulk"),
    Figure("scatter_mb_s", "scatter 10M float64, 2 engines", "MB/s", True,
           None, None,
           (("ipyparallel", ">=", 2.0),),
           ">= 2x ipp"),
    Figure("gather_mb_s", "gather 10M float64, 2 engines", "MB/s", True,
           None, None,
           (("ipyparallel", ">=", 2.0),),
           ">= 2x ipp"),
    Figure("startup_s", "Cluster(n=2) start to ready", "s", False,
           None, "startup_s",
           (("ipyparallel", "<=", 0.1),),
           "<= 1/10 ipp"),
    Figure("import_ms", "import (relay: zmq, cloudpickle)", "ms", False,
           "import_ms", None,
           (("relay", "<=", 1.2),),
           "<= 1.2x zmq+cloudpickle"),
    Figure("queued_task_bytes", "controller memory/queued task", "B", False,
           None, None,
           ((None, "<=", 2048),),
           "<= 2 KB"),
]
FIGURES_BY_KEY = {f.key: f for f in FIGURES}


# ---------------------------------------------------------------------------
# small helpers

def read_line(proc, timeout_s):
    """One line from proc.stdout within timeout_s, or RuntimeError (proc may have died)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise RuntimeError(f"no output from pid {proc.pid} within {timeout_s:.0f} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {proc.pid} exited with {proc.wait()} before it was ready")
    return line


def stop_processes(procs, grace_s=3.0):
    """Stop Popen objects by pid: SIGTERM, wait, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_stat(pid):
    """(state, ppid, start time) of a pid from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid=None):
    """{pid: start time} of the living descendants of pid (default: this process)."""
    pid = os.getpid() if pid is None else pid
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(entry)
            if stat and stat[0] != "Z":  # a zombie is dead already; its parent reaps it
                children.setdefault(stat[1], []).append((int(entry), stat[2]))
    found, todo = {}, [pid]
    while todo:
        for child, start_time in children.get(todo.pop(), []):
            found[child] = start_time
            todo.append(child)
    return found


def alive(processes):
    """Those of {pid: start time} still running: same pid *and* start time, so a pid
    the system reused for someone else's process is never taken for ours."""
    living = {}
    for pid, start_time in processes.items():
        stat = _proc_stat(pid)
        if stat and stat[0] != "Z" and stat[2] == start_time:
            living[pid] = start_time
    return living


def kill_pids(processes):
    """SIGKILL those of {pid: start time} still alive (only ever processes we started)."""
    for pid in alive(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def median_time_us(fn, n, warmup=50):
    for _ in range(min(warmup, n)):
        fn()
    clock = time.perf_counter
    times = []
    for _ in range(n):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e6


def best_rate(n, repeat, fn):
    """n / the shortest of `repeat` timed calls of fn (which does n items)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def noop(*args):
    """The no-op task for multiprocessing (its forked workers find it by name)."""


# Engines must get the task functions by value: ipyparallel re-imports a function's module
# on the engine (and `_common` is not importable there), cloudpickle pickles module-level
# functions by reference. Functions whose module is `__main__` travel by value in both.
_REMOTE_SOURCE = '''
def noop(*args):
    return None

def wait_for_file(path, timeout_s):
    import os, time
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
'''


def remote_functions():
    namespace = {"__name__": "__main__"}
    exec(_REMOTE_SOURCE, namespace)
    return namespace["noop"], namespace["wait_for_file"]


def import_times_ms(statements, repeat):
    """{statement: best of `repeat` fresh interpreters timing it alone (startup excluded)}.

    The statements take turns, round by round, so that a noisy spell of the machine
    falls on all of them alike and their ratio holds."""
    # as an installed package would be: bytecode cached (an environment with
    # PYTHONDONTWRITEBYTECODE would otherwise compile the in-tree sources on every import,
    # while zmq and cloudpickle come precompiled from site-packages)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "minipar")],
                   check=False, timeout=60, env=env, capture_output=True)
    best = dict.fromkeys(statements, math.inf)
    for _ in range(repeat):
        for statement in statements:
            code = (f"import sys, time; sys.path.insert(0, {ROOT!r}); "
                    f"t0 = time.perf_counter(); {statement}; print(time.perf_counter() - t0)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=False, timeout=60, cwd=ROOT, env=env)
            if out.returncode:
                raise RuntimeError(out.stderr.strip().splitlines()[-1])
            best[statement] = min(best[statement], float(out.stdout) * 1e3)
    return best


def importable(name):
    """Whether `import name` works here (its import error text otherwise)."""
    try:
        __import__(name)
    except Exception as e:  # a half-written package may raise anything at import
        return f"{type(e).__name__}: {e}"
    return True


# ---------------------------------------------------------------------------
# multiprocessing.Pool

def measure_pool(cfg, keys):
    import multiprocessing
    out = {}
    t0 = time.perf_counter()
    pool = multiprocessing.Pool(cfg.n)
    try:
        pool.apply(noop)
        out["startup_s"] = time.perf_counter() - t0
        if "apply_rtt_us" in keys:
            out["apply_rtt_us"] = median_time_us(lambda: pool.apply(noop), cfg.rtt_n)
        if keys & {"lb_tasks_per_s", "dv_tasks_per_s"}:
            out["apply_async_per_s"] = best_rate(
                cfg.tasks_n, cfg.rate_repeat,
                lambda: _wait_all([pool.apply_async(noop) for _ in range(cfg.tasks_n)],
                                  cfg.timeout_s))
        if "map1_items_per_s" in keys:
            out["map1_items_per_s"] = best_rate(
                cfg.map1_n, cfg.rate_repeat,
                lambda: pool.map(noop, range(cfg.map1_n), chunksize=1))
        if "map_auto_items_per_s" in keys:
            out["map_auto_items_per_s"] = best_rate(
                cfg.map_auto_n, cfg.rate_repeat, lambda: pool.map(noop, range(cfg.map_auto_n)))
    finally:
        pool.terminate()  # stops its workers by pid
        pool.join()
    return out


# ---------------------------------------------------------------------------
# minipar and ipyparallel: one cluster, the API they share

@contextlib.contextmanager
def running_cluster(kind, n, timeout_s):
    """Start `kind`'s Cluster(n), yield (rc, info); stop it and any leftover process.

    info: startup_s (Cluster(n) to all n engines registered) and controller_pid.
    Each cluster lives in a temporary profile folder, so nothing touches ~/.minipar or
    ~/.ipython and two runs never share connection files.
    """
    before = descendants()
    profile_dir = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    cluster = None
    try:
        t0 = time.perf_counter()
        if kind == "minipar":
            import minipar
            cluster = minipar.Cluster(n=n, profile_dir=profile_dir)
        else:
            import ipyparallel
            cluster = ipyparallel.Cluster(n=n, profile_dir=profile_dir)
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(n, timeout=timeout_s)
        info = {"startup_s": time.perf_counter() - t0,
                "controller_pid": _controller_pid(kind, cluster, profile_dir)}
        try:
            yield rc, info
        finally:
            rc.close()
    finally:
        # everything the cluster started, including processes that will be re-parented
        # to init when their parent exits (ipyparallel's engine nannies)
        started = {p: t for p, t in descendants().items() if before.get(p) != t}
        try:
            if cluster is not None:
                cluster.stop_cluster_sync()
        except Exception as e:  # a half-started cluster: its processes are killed below
            print(f"  {kind}: stop_cluster_sync failed ({type(e).__name__}: {e})",
                  file=sys.stderr)
        finally:
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and alive(started):
                time.sleep(0.1)
            kill_pids(started)
            shutil.rmtree(profile_dir, ignore_errors=True)


def _controller_pid(kind, cluster, profile_dir):
    if kind == "ipyparallel":
        return cluster.controller.process.pid
    # the contract: the controller's pid is in the client connection file
    path = os.path.join(profile_dir, "security", "minipar-client.json")
    with open(path) as f:
        return json.load(f)["pid"]


CLUSTER_KEYS = {"apply_rtt_us", "lb_tasks_per_s", "dv_tasks_per_s", "map1_items_per_s",
                "map_auto_items_per_s", "push_mb_s", "pull_mb_s", "scatter_mb_s",
                "gather_mb_s", "startup_s", "queued_task_bytes"}
MINIPAR_ONLY_KEYS = {"queued_task_bytes"}  # goals about minipar's own controller


def cluster_keys(kind, keys):
    """Which of keys a cluster of kind measures."""
    wanted = set(keys) & CLUSTER_KEYS
    return wanted - MINIPAR_ONLY_KEYS if kind != "minipar" else wanted


def measure_cluster(kind, cfg, keys, report=print):
    """The figures in keys for kind "minipar" or "ipyparallel": {key: value}.

    A figure that fails gets its error text instead of a number; the others still run.
    """
    keys = cluster_keys(kind, keys)
    slow = kind == "ipyparallel"  # ~300 tasks/s: fewer tasks per run
    tasks_n = cfg.slow_n if slow else cfg.tasks_n
    steps = [
        ("apply_rtt_us", _apply_rtt_us, (cfg.slow_rtt_n if slow else cfg.rtt_n,)),
        ("lb_tasks_per_s", _lb_tasks_per_s, (tasks_n,)),
        ("dv_tasks_per_s", _dv_tasks_per_s, (tasks_n,)),
        ("map1_items_per_s", _map1_items_per_s, (cfg.slow_n if slow else cfg.map1_n,)),
        ("map_auto_items_per_s", _map_auto_items_per_s, (cfg.map_auto_n,)),
        (("push_mb_s", "pull_mb_s"), _push_pull_mb_s, (cfg.bulk_mb, cfg.rate_repeat)),
        (("scatter_mb_s", "gather_mb_s"), _scatter_gather_mb_s,
         (cfg.scatter_n, cfg.rate_repeat)),
    ]
    out = {}
    if keys - MINIPAR_ONLY_KEYS:
        with running_cluster(kind, cfg.n, cfg.timeout_s) as (rc, info):
            out["startup_s"] = info["startup_s"]
            report(f"  {kind}: {cfg.n} engines ready in {info['startup_s']:.2f} s")
            for names, fn, args in steps:
                names = (names,) if isinstance(names, str) else names
                if keys & set(names):
                    out.update(_step(kind, names, fn, rc, cfg, args, report))
    if "queued_task_bytes" in keys:
        # A controller of its own: one that has already run and dropped thousands of
        # tasks has free heap that new records fill without growing its RSS.
        with running_cluster(kind, cfg.n, cfg.timeout_s) as (rc, info):
            out.setdefault("startup_s", info["startup_s"])
            report(f"  {kind}: a fresh cluster for the memory figure")
            out.update(_step(kind, ("queued_task_bytes",), _queued_task_bytes, rc, cfg,
                             (info["controller_pid"], cfg.queued_n), report))
    return out


def _step(kind, names, fn, rc, cfg, args, report):
    """Run one measurement (fn gives a value per name); an error becomes the value."""
    t0 = time.perf_counter()
    try:
        values = fn(rc, cfg, *args)
    except Exception as e:
        values = (f"error: {type(e).__name__}: {e}",) * len(names)
    values = values if isinstance(values, tuple) else (values,)
    report("  {}: {} ({:.1f} s)".format(kind, ", ".join(
        f"{k}={format_value(v)}" for k, v in zip(names, values)),
        time.perf_counter() - t0))
    return dict(zip(names, values))


def _apply_rtt_us(rc, cfg, n):
    f, _ = remote_functions()
    view = rc[rc.ids[0]]
    return median_time_us(lambda: view.apply_sync(f), n)


def _wait_all(results, timeout_s):
    for r in results:
        r.get(timeout_s)


def _lb_tasks_per_s(rc, cfg, n):
    f, _ = remote_functions()
    view = rc.load_balanced_view()
    _wait_all([view.apply_async(f) for _ in range(20)], cfg.timeout_s)  # warm up
    return best_rate(n, cfg.rate_repeat,
                     lambda: _wait_all([view.apply_async(f) for _ in range(n)], cfg.timeout_s))


def _dv_tasks_per_s(rc, cfg, n):
    # one task per call, round robin over single-engine views (rc[:] would run each
    # call on every engine)
    f, _ = remote_functions()
    views = [rc[i] for i in rc.ids]
    return best_rate(n, cfg.rate_repeat, lambda: _wait_all(
        [views[i % len(views)].apply_async(f) for i in range(n)], cfg.timeout_s))


def _map1_items_per_s(rc, cfg, n):
    f, _ = remote_functions()
    view = rc.load_balanced_view()
    return best_rate(n, cfg.rate_repeat,
                     lambda: view.map_async(f, range(n), chunksize=1).get(cfg.timeout_s))


def _map_auto_items_per_s(rc, cfg, n):
    # automatic chunks: the DirectView's block partition, one chunk per engine, is what
    # both ipyparallel and minipar do without being told a chunksize
    f, _ = remote_functions()
    view = rc[:]
    return best_rate(n, cfg.rate_repeat,
                     lambda: view.map_async(f, range(n)).get(cfg.timeout_s))


def _push_pull_mb_s(rc, cfg, size_mb, repeat):
    import numpy
    data = numpy.ones(size_mb * 1_000_000 // 8, dtype=numpy.float64)
    view = rc[rc.ids[0]]
    best_push = best_pull = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        view.push({"bench_data": data}, block=True)
        best_push = max(best_push, size_mb / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        back = view.pull("bench_data", block=True)
        best_pull = max(best_pull, size_mb / (time.perf_counter() - t0))
        if back.shape != data.shape:
            raise RuntimeError(f"pulled {back.shape!r}, pushed {data.shape!r}")
        del back
    view.execute("del bench_data", block=True)
    return best_push, best_pull


def _scatter_gather_mb_s(rc, cfg, n, repeat):
    import numpy
    data = numpy.arange(n, dtype=numpy.float64)
    size_mb = data.nbytes / 1e6
    view = rc[:]
    best_scatter = best_gather = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        view.scatter("bench_part", data, block=True)
        best_scatter = max(best_scatter, size_mb / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        back = view.gather("bench_part", block=True)
        best_gather = max(best_gather, size_mb / (time.perf_counter() - t0))
        if len(back) != n:
            raise RuntimeError(f"gathered {len(back)} items, scattered {n}")
        del back
    view.execute("del bench_part", block=True)
    return best_scatter, best_gather


def _queued_task_bytes(rc, cfg, controller_pid, n):
    """Controller RSS growth per task queued while every engine is busy."""
    noop_f, wait_for_file = remote_functions()
    view = rc.load_balanced_view()
    # first uses allocate once (code paths, caches, socket buffers): not per task
    _wait_all([view.apply_async(noop_f) for _ in range(200)], cfg.timeout_s)
    flag = tempfile.mktemp(prefix="bench-release-")
    try:
        # one blocker per engine, sent directly so each engine is surely busy
        blockers = [rc[i].apply_async(wait_for_file, flag, cfg.timeout_s) for i in rc.ids]
        try:
            time.sleep(0.5)
            before = _steady_rss(controller_pid)
            tasks = [view.apply_async(noop_f) for _ in range(n)]
            _wait_queued(rc, n, cfg.timeout_s)
            after = _steady_rss(controller_pid)
        finally:
            open(flag, "w").close()  # release the engines, also after a failure
        _wait_all(blockers, cfg.timeout_s)
        _wait_all(tasks, cfg.timeout_s)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(flag)
    return (after - before) / n


def _wait_queued(rc, n, timeout_s):
    """Until the controller reports n load-balanced tasks held: unassigned, or assigned
    to an engine ("tasks" per engine, as in ipyparallel's queue_status)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = rc.queue_status()
        held = status.get("unassigned", 0) + sum(
            v.get("tasks", 0) for v in status.values() if isinstance(v, dict))
        if held >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the controller holds fewer than {n} tasks after {timeout_s:.0f} s")


def _steady_rss(pid, settle_s=0.3, timeout_s=30.0):
    """The controller's RSS once it has stopped changing (it has read what was sent)."""
    deadline = time.monotonic() + timeout_s
    last = rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = rss_bytes(pid)
        if now == last:
            return now
        last = now
    return last


# ---------------------------------------------------------------------------
# one run: what each system must measure for the wanted figures

def collect(cfg, keys, report=print):
    """{system: {figure key: value}} for the figure keys in `keys`; nothing is installed."""
    import relay
    keys = set(keys)
    results = {system: {} for system in SYSTEMS}
    relay_keys = {FIGURES_BY_KEY[k].relay_key for k in keys} - {None, "import_ms"}
    pool_keys = {FIGURES_BY_KEY[k].pool_key for k in keys} - {None}

    if relay_keys:
        report("relay ...")
        results["relay"].update(_guard(relay.measure, cfg, relay_keys))
    if pool_keys:
        report(f"multiprocessing.Pool({cfg.n}) ...")
        results["multiprocessing"].update(_guard(measure_pool, cfg, keys))
    if "import_ms" in keys:
        report(f"import times (fresh interpreters taking turns, best of {cfg.import_repeat}) ...")
        modules = {"relay": "zmq, cloudpickle", "minipar": "minipar", "ipyparallel": "ipyparallel"}
        for system in ("minipar", "ipyparallel"):
            if importable(modules[system]) is not True:
                results[system]["import_ms"] = "not available"
                del modules[system]
        try:
            best = import_times_ms([f"import {m}" for m in modules.values()], cfg.import_repeat)
            for system, m in modules.items():
                results[system]["import_ms"] = best[f"import {m}"]
        except Exception as e:
            for system in modules:
                results[system]["import_ms"] = f"error: {type(e).__name__}: {e}"
    for kind in ("minipar", "ipyparallel"):
        wanted = cluster_keys(kind, keys)
        if not wanted:
            continue
        ok = importable(kind)
        if ok is True and not hasattr(sys.modules[kind], "Cluster"):
            ok = f"no {kind}.Cluster yet"
        if ok is not True:
            report(f"{kind}: not available ({ok})")
            results[kind].update({k: "not available" for k in wanted})
            continue
        report(f"{kind} Cluster(n={cfg.n}) ...")
        results[kind].update(_guard(measure_cluster, kind, cfg, keys, report))
    return results


def _guard(fn, *args):
    """fn(*args), or {"error": text} when a whole system's measurement fails."""
    try:
        return fn(*args)
    except Exception as e:  # one system failing must not cost the others' figures
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------
# the table

def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value):
    if value is None:
        return "-"
    if not _number(value):
        return "n/a" if value == "not available" else "ERR"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table_rows(results, keys, cfg):
    """One dict per figure: the values in each column, ratios, goal and whether it is met."""
    rows = []
    for fig in FIGURES:
        if fig.key not in keys:
            continue
        values = {
            "relay": results["relay"].get(fig.relay_key) if fig.relay_key else None,
            "minipar": results["minipar"].get(fig.key),
            "ipyparallel": results["ipyparallel"].get(fig.key),
            "multiprocessing": (results["multiprocessing"].get(fig.pool_key)
                                if fig.pool_key else None),
        }
        mine = values["minipar"]
        ratios, ratio_values, verdicts = [], {}, []
        for column, op, factor in fig.goals:
            reference = values[column] if column else 1.0
            if not (_number(mine) and _number(reference) and reference):
                verdicts.append(None)
                continue
            ratio = mine / reference
            if column:
                ratios.append(f"{_ratio_text(ratio)} {_SHORT[column]}")
                ratio_values[column] = ratio
            verdicts.append(ratio <= factor if op == "<=" else ratio >= factor)
        if verdicts and all(v is True for v in verdicts):
            met = "yes"
        elif any(v is False for v in verdicts):
            met = "NO"
        else:
            met = "?"
        label = fig.label.replace("n=2", f"n={cfg.n}")
        rows.append({"key": fig.key, "figure": label, "unit": fig.unit,
                     "higher_is_better": fig.higher_is_better, **values,
                     "ratio": ", ".join(ratios), "ratios": ratio_values,
                     "goal": fig.goal_text, "met": met})
    return rows


_SHORT = {"relay": "relay", "ipyparallel": "ipp", "multiprocessing": "mp"}


def _ratio_text(ratio):
    return (f"{ratio:.2f}x") if ratio < 10 else (f"{ratio:.0f}x")


def print_table(rows, file=None):
    header = ["figure", "unit", "relay", "minipar", "ipyparallel", "multiproc.",
              "ratio", "goal", "met?"]
    lines = [[r["figure"], r["unit"], format_value(r["relay"]), format_value(r["minipar"]),
              format_value(r["ipyparallel"]), format_value(r["multiprocessing"]),
              r["ratio"], r["goal"], r["met"]] for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    numeric = {2, 3, 4, 5}

    def fmt(cells):
        return " | ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(header), file=file)
    print("-+-".join("-" * w for w in widths), file=file)
    for line in lines:
        print(fmt(line), file=file)
    errors = [(r["figure"], col, r[col]) for r in rows for col in SYSTEMS
              if isinstance(r[col], str) and r[col] != "not available"]
    for figure, column, text in errors:
        print(f"  ERR {figure} / {column}: {text}", file=file)


def errors_of(results):
    """Whole-system failures (the measurement itself raised) for printing."""
    return {system: r["error"] for system, r in results.items() if "error" in r}


def environment():
    import zmq
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    for name in ("minipar", "ipyparallel", "cloudpickle", "numpy"):
        module = sys.modules.get(name)
        info[name] = getattr(module, "__version__", None) if module else None
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    info["commit"] = commit.stdout.strip() or None
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "minipar"],
                           capture_output=True, text=True, check=False)
    info["minipar_tree_dirty"] = bool(dirty.stdout.strip())
    return info


def run_and_print(cfg, keys, title):
    """The common body of the front-end scripts: collect, then print the table."""
    print(title)
    load = os.getloadavg()[0]
    if load > 0.5 * os.cpu_count():
        # the figures are rates of 3+ busy processes on few cores: a loaded machine
        # skews every one of them, and the ratios with them
        print(f"  warning: load average {load:.1f} on {os.cpu_count()} cores;"
              " figures will be low and noisy")
    t0 = time.perf_counter()
    results = collect(cfg, keys, report=lambda s: print("  " + s, flush=True))
    for system, text in errors_of(results).items():
        print(f"  {system} failed: {text}")
    rows = table_rows(results, keys, cfg)
    print()
    print_table(rows)
    kind = "quick" if cfg.quick else "full"
    print(f"\n({kind} run, {time.perf_counter() - t0:.0f} s)")
    return results, rows


def parse_args(doc, n_option=False, json_option=False):
    import argparse
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (run.py: under a minute)")
    if n_option:
        parser.add_argument("-n", type=int, default=2, help="engines / workers (default 2)")
    if json_option:
        parser.add_argument("--json", metavar="PATH",
                            default=os.path.join(BENCH_DIR, "results.json"),
                            help="where to write the table as JSON (default: %(default)s)")
    return parser.parse_args()
