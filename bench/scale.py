"""Scaling with the cores: task rates, parallel efficiency and the controller's CPU per task.

    python bench/scale.py [N ...] [--quick] [--json PATH] [--tasks T] [--slow-tasks T]

For each engine count N (default 1, 2, 4, ... up to the cores, and the core count itself)
it measures, each library in a process of its own (no shared GIL or garbage collector):

- no-op tasks/s, pipelined: T `apply_async(noop)` submitted at once on a load-balanced
  view, then all waited for (minipar; ipyparallel and dask.distributed with `--slow-tasks`
  tasks, when importable), and T `multiprocessing.Pool(N).apply_async(noop)`;
- parallel efficiency: N x 20 tasks that each busy-wait 10 ms of *CPU time*
  (`time.thread_time()`, so it is CPU work, not a sleep) on N engines / workers;
  efficiency = ideal time (20 x 10 ms) / measured wall time. On a machine with fewer
  cores than N it cannot exceed cores / N;
- minipar's controller CPU per task (utime + stime from /proc/<pid>/stat over the run)
  for the load-balanced run and for a direct one (round robin over `rc[i]`), and for the
  load-balanced run the client's (this process, both its threads) and the engines' (all
  together): where a no-op task's CPU goes, which with few cores bounds the rate.

Once, as anchors: the raw pyzmq relay (bench/relay.py) broker's CPU per pipelined round
trip (one recv_multipart / send_multipart per message each way), its one-at-a-time round
trip and its zero-copy bulk rate; minipar's `apply_sync` round trip and push / pull of
100 MB to one engine (bench/_common's measurements), in the process of the first N.

Prints one table (a row per N), then the CPU-per-task lines against the relay with the
goals (controller CPU per task <= 0.6x the relay broker's per round trip load-balanced,
<= 0.4x direct), the round trip and the bulk lines. `--json PATH` writes it all.
`--quick` (fewer tasks; default N 1 2) finishes in under a minute on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import _common

BUSY_S = 0.010            # CPU seconds each efficiency task spends
TASKS_PER_ENGINE = 20     # efficiency tasks per engine
GOAL_LB = 0.6             # controller CPU per load-balanced task / relay CPU per round trip
GOAL_DV = 0.4             # ... per direct task
GOAL_RTT = 2.0            # apply_sync round trip / relay round trip (issue 7)
GOAL_BULK = 0.7           # push, pull / relay bulk (issue 7)
SYSTEMS = ("minipar", "pool", "ipyparallel", "dask")
OPTIONAL = {"ipyparallel": "ipyparallel", "dask": "dask.distributed"}


def busy(seconds):
    """Spend `seconds` of this thread's CPU time (Pool's workers find it by name)."""
    clock = time.thread_time
    end = clock() + seconds
    while clock() < end:
        pass


# minipar, ipyparallel and dask get their task functions by value (see _common)
_REMOTE_BUSY = '''
def busy(seconds):
    import time
    clock = time.thread_time
    end = clock() + seconds
    while clock() < end:
        pass
'''


def remote_functions():
    namespace = {"__name__": "__main__"}
    exec(_common._REMOTE_SOURCE + _REMOTE_BUSY, namespace)
    return namespace["noop"], namespace["busy"]


def cpu_s(pid):
    """CPU seconds (user + system) used so far by pid."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# the measurements, each run in a worker process of its own (`--worker SYSTEM N`)

def measure_relay(opts):
    import relay
    out = {}
    with relay.Relay(copy=True) as r:
        out["rtt_us"] = r.round_trip_us(opts.rtt_n)
        broker = r._procs[0].pid       # the first process a Relay starts is its broker
        r.pipelined_rate(2000, opts.window)   # warm up
        cpu0 = cpu_s(broker)
        out["pipelined_per_s"] = r.pipelined_rate(opts.pipeline_n, opts.window)
        out["broker_cpu_us"] = (cpu_s(broker) - cpu0) / opts.pipeline_n * 1e6
    with relay.Relay(copy=False) as r:
        out["bulk_mb_s"] = r.bulk_mb_s(opts.bulk_mb, opts.bulk_repeat)
    return out


def measure_cluster(kind, n, opts):
    """minipar or ipyparallel: rates, efficiency, minipar's controller CPU per task."""
    noop, busy_f = remote_functions()
    tasks = opts.tasks if kind == "minipar" else opts.slow_tasks
    out = {}
    with _common.running_cluster(kind, n, opts.timeout_s) as (rc, info):
        out["startup_s"] = info["startup_s"]
        pid = info["controller_pid"] if kind == "minipar" else None
        lb = rc.load_balanced_view()
        views = [rc[i] for i in rc.ids]
        wait = lambda results: _common._wait_all(results, opts.timeout_s)  # noqa: E731
        wait([lb.apply_async(noop) for _ in range(200 if kind == "minipar" else 20)])
        wait([v.apply_async(busy_f, 0.001) for v in views])   # the function reaches every engine

        cpu0 = pid and cpu_s(pid)
        engines = [e for e in _common.descendants() if e != pid] if pid else []
        client0, engines0 = time.process_time(), sum(map(cpu_s, engines))
        out["tasks_per_s"] = tasks / _timed(lambda: wait([lb.apply_async(noop)
                                                           for _ in range(tasks)]))
        if pid:
            out["ctrl_lb_cpu_us"] = (cpu_s(pid) - cpu0) / tasks * 1e6
            out["client_lb_cpu_us"] = (time.process_time() - client0) / tasks * 1e6
            out["engines_lb_cpu_us"] = (sum(map(cpu_s, engines)) - engines0) / tasks * 1e6
            cpu0 = cpu_s(pid)
            out["dv_tasks_per_s"] = tasks / _timed(lambda: wait(
                [views[i % n].apply_async(noop) for i in range(tasks)]))
            out["ctrl_dv_cpu_us"] = (cpu_s(pid) - cpu0) / tasks * 1e6

        elapsed = _timed(lambda: wait([lb.apply_async(busy_f, BUSY_S)
                                       for _ in range(n * TASKS_PER_ENGINE)]))
        out["efficiency"] = TASKS_PER_ENGINE * BUSY_S / elapsed

        if kind == "minipar" and opts.anchors:
            out["apply_rtt_us"] = _common.median_time_us(
                lambda: views[0].apply_sync(noop), opts.rtt_n)
            cfg = _common.Config.make(quick=opts.quick, timeout_s=opts.timeout_s)
            out["push_mb_s"], out["pull_mb_s"] = _common._push_pull_mb_s(
                rc, cfg, opts.bulk_mb, opts.bulk_repeat)
    return out


def measure_pool(n, opts):
    import multiprocessing
    out = {}
    pool = multiprocessing.Pool(n)
    try:
        pool.apply(_common.noop)
        wait = lambda results: _common._wait_all(results, opts.timeout_s)  # noqa: E731
        wait([pool.apply_async(busy, (0.001,)) for _ in range(n)])
        out["tasks_per_s"] = opts.tasks / _timed(lambda: wait(
            [pool.apply_async(_common.noop) for _ in range(opts.tasks)]))
        elapsed = _timed(lambda: wait([pool.apply_async(busy, (BUSY_S,))
                                       for _ in range(n * TASKS_PER_ENGINE)]))
        out["efficiency"] = TASKS_PER_ENGINE * BUSY_S / elapsed
    finally:
        pool.terminate()
        pool.join()
    return out


def measure_dask(n, opts):
    from dask.distributed import Client, LocalCluster
    noop, busy_f = remote_functions()
    out = {}
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(n, timeout=opts.timeout_s)
        out["startup_s"] = time.perf_counter() - t0
        wait = lambda futures: client.gather(futures)  # noqa: E731
        wait([client.submit(noop, i, pure=False) for i in range(20)])
        wait([client.submit(busy_f, 0.001, pure=False) for _ in range(n)])
        tasks = opts.slow_tasks
        out["tasks_per_s"] = tasks / _timed(lambda: wait(
            [client.submit(noop, i, pure=False) for i in range(tasks)]))
        elapsed = _timed(lambda: wait([client.submit(busy_f, BUSY_S, pure=False)
                                       for _ in range(n * TASKS_PER_ENGINE)]))
        out["efficiency"] = TASKS_PER_ENGINE * BUSY_S / elapsed
    return out


def worker(system, n, opts):
    """Run one measurement; print its figures as the last line of stdout (JSON)."""
    if system in OPTIONAL:
        try:
            __import__(OPTIONAL[system])
        except Exception as e:   # absent, or broken: either way not measured
            print(json.dumps({"not_available": f"{type(e).__name__}: {e}"}))
            return
    try:
        if system == "relay":
            out = measure_relay(opts)
        elif system == "pool":
            out = measure_pool(n, opts)
        elif system == "dask":
            out = measure_dask(n, opts)
        else:
            out = measure_cluster(system, n, opts)
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------
# the driver

def run_worker(system, n, opts, extra=()):
    """One worker process; its JSON, or {"error": ...}. Whatever it started and left
    running (found while it is still alive, by pid and start time) is killed."""
    args = [sys.executable, os.path.abspath(__file__), "--worker", system, str(n),
            *_pass_on(opts), *extra]
    before = _common.descendants()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=opts.worker_timeout_s)
    except subprocess.TimeoutExpired:
        started = {p: t for p, t in _common.descendants().items() if before.get(p) != t}
        _common.kill_pids(started)
        proc.communicate()
        return {"error": f"timed out after {opts.worker_timeout_s:.0f} s"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}


def _pass_on(opts):
    args = ["--tasks", str(opts.tasks), "--slow-tasks", str(opts.slow_tasks)]
    return args + (["--quick"] if opts.quick else [])


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if digits is None:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(a, b):
    ok = all(isinstance(v, (int, float)) for v in (a, b))
    return a / b if ok and b else None


def _verdict(ratio, op, goal):
    if ratio is None:
        return "?"
    return "met" if (ratio <= goal if op == "<=" else ratio >= goal) else "NO"


def build_report(ns, raw, opts):
    relay = raw["relay"]
    rows, cpu_rows = [], []
    for n in ns:
        got = raw["by_n"][str(n)]
        value = lambda system, key: got[system].get(key)  # noqa: E731
        row = {"n": n}
        for system in SYSTEMS:
            row[f"{system}_tasks_per_s"] = value(system, "tasks_per_s")
            row[f"{system}_efficiency"] = value(system, "efficiency")
        row["minipar_over_pool"] = _ratio(row["minipar_tasks_per_s"], row["pool_tasks_per_s"])
        row["minipar_dv_tasks_per_s"] = value("minipar", "dv_tasks_per_s")
        rows.append(row)
        lb, dv = value("minipar", "ctrl_lb_cpu_us"), value("minipar", "ctrl_dv_cpu_us")
        lb_ratio = _ratio(lb, relay.get("broker_cpu_us"))
        dv_ratio = _ratio(dv, relay.get("broker_cpu_us"))
        cpu_rows.append({"n": n, "ctrl_lb_cpu_us": lb, "ctrl_dv_cpu_us": dv,
                         "client_lb_cpu_us": value("minipar", "client_lb_cpu_us"),
                         "engines_lb_cpu_us": value("minipar", "engines_lb_cpu_us"),
                         "lb_over_relay": lb_ratio, "dv_over_relay": dv_ratio,
                         "lb_goal": f"<= {GOAL_LB}x", "dv_goal": f"<= {GOAL_DV}x",
                         "lb_met": _verdict(lb_ratio, "<=", GOAL_LB),
                         "dv_met": _verdict(dv_ratio, "<=", GOAL_DV)})
    first = raw["by_n"][str(ns[0])]["minipar"]
    anchors = {}
    for key, relay_key, op, goal in (("apply_rtt_us", "rtt_us", "<=", GOAL_RTT),
                                     ("push_mb_s", "bulk_mb_s", ">=", GOAL_BULK),
                                     ("pull_mb_s", "bulk_mb_s", ">=", GOAL_BULK)):
        ratio = _ratio(first.get(key), relay.get(relay_key))
        anchors[key] = {"minipar": first.get(key), "relay": relay.get(relay_key),
                        "ratio": ratio, "goal": f"{op} {goal}x",
                        "met": _verdict(ratio, op, goal)}
    return rows, cpu_rows, anchors


def print_report(ns, raw, rows, cpu_rows, anchors, out=sys.stdout):
    notes = {s: raw["by_n"][str(ns[0])][s].get("not_available") for s in OPTIONAL}
    header = ["n", "minipar/s", "Pool/s", "ipp/s", "dask/s", "minipar/Pool",
              "eff minipar", "eff Pool", "eff ipp", "eff dask"]

    def cell(row, system, key):
        if notes.get(system):
            return "n/a"
        v = row[f"{system}_{key}"]
        if v is None:
            return "ERR"
        return _fmt(v, None if key == "tasks_per_s" else 2)

    lines = [[str(r["n"]), cell(r, "minipar", "tasks_per_s"), cell(r, "pool", "tasks_per_s"),
              cell(r, "ipyparallel", "tasks_per_s"), cell(r, "dask", "tasks_per_s"),
              _fmt(r["minipar_over_pool"]) + ("x" if r["minipar_over_pool"] else ""),
              cell(r, "minipar", "efficiency"), cell(r, "pool", "efficiency"),
              cell(r, "ipyparallel", "efficiency"), cell(r, "dask", "efficiency")]
             for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(fmt(header), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(fmt(line), file=out)
    for system, note in notes.items():
        if note:
            print(f"  {system}: not available ({note})", file=out)
    for n in ns:
        for system, got in raw["by_n"][str(n)].items():
            if "error" in got:
                print(f"  ERR n={n} {system}: {got['error']}", file=out)
    relay = raw["relay"]
    print(f"\nno-op tasks/s: load-balanced view, pipelined (minipar and Pool "
          f"{raw['config']['tasks']:,} tasks, ipp and dask {raw['config']['slow_tasks']:,}); "
          f"efficiency: n x {TASKS_PER_ENGINE} tasks busy-waiting {BUSY_S * 1e3:.0f} ms of CPU "
          f"(thread_time), ideal time / measured", file=out)
    broker = relay.get("broker_cpu_us")
    print(f"\nrelay broker CPU per round trip: {_fmt(broker, 1)} µs "
          f"(pipelined {_fmt(relay.get('pipelined_per_s'), None)} round trips/s, "
          f"{raw['config']['pipeline_n']:,} of them)", file=out)
    for c in cpu_rows:
        print(f"controller CPU per task, n={c['n']}: load-balanced "
              f"{_fmt(c['ctrl_lb_cpu_us'], 1)} µs = {_fmt(c['lb_over_relay'])}x relay "
              f"(goal {c['lb_goal']}: {c['lb_met']}); direct {_fmt(c['ctrl_dv_cpu_us'], 1)} µs"
              f" = {_fmt(c['dv_over_relay'])}x relay (goal {c['dv_goal']}: {c['dv_met']})",
              file=out)
        print(f"  CPU per load-balanced task, n={c['n']}: client {_fmt(c['client_lb_cpu_us'], 1)}"
              f" µs, controller {_fmt(c['ctrl_lb_cpu_us'], 1)} µs, engines together "
              f"{_fmt(c['engines_lb_cpu_us'], 1)} µs", file=out)
    labels = {"apply_rtt_us": ("apply_sync round trip, 1 engine", "µs", 1),
              "push_mb_s": ("push 100 MB to 1 engine", "MB/s", None),
              "pull_mb_s": ("pull 100 MB from 1 engine", "MB/s", None)}
    for key, a in anchors.items():
        label, unit, digits = labels[key]
        relay_label = "round trip" if key == "apply_rtt_us" else "bulk"
        print(f"{label}: {_fmt(a['minipar'], digits)} {unit}, relay {relay_label} "
              f"{_fmt(a['relay'], digits)} {unit} = {_fmt(a['ratio'])}x "
              f"(goal {a['goal']}: {a['met']})", file=out)


def default_ns(quick):
    if quick:
        return [1, 2]
    cores = os.cpu_count() or 1
    ns, n = [], 1
    while n < cores:
        ns.append(n)
        n *= 2
    return ns + [cores]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ns", nargs="*", type=int, metavar="N", help="engine counts")
    p.add_argument("--quick", action="store_true", help="fewer tasks (under a minute)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--tasks", type=int, help="no-op tasks for minipar and Pool "
                   "(default 20,000; --quick 2,000)")
    p.add_argument("--slow-tasks", type=int, help="no-op tasks for ipyparallel and dask "
                   "(default 2,000; --quick 300)")
    p.add_argument("--worker", nargs=2, metavar=("SYSTEM", "N"), help=argparse.SUPPRESS)
    p.add_argument("--anchors", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    q = opts.quick
    opts.tasks = opts.tasks or (2000 if q else 20_000)
    opts.slow_tasks = opts.slow_tasks or (300 if q else 2000)
    opts.rtt_n = 300 if q else 2000
    opts.pipeline_n = 20_000
    opts.window = 1000
    opts.bulk_mb = 100
    opts.bulk_repeat = 2 if q else 3
    opts.timeout_s = 60.0 if q else 300.0
    opts.worker_timeout_s = 120.0 if q else 900.0
    return opts


def main(argv=None):
    opts = parse_args(argv)
    if opts.worker:
        return worker(opts.worker[0], int(opts.worker[1]), opts)
    ns = opts.ns or default_ns(opts.quick)
    started = time.time()
    print(f"minipar scaling: engine counts {ns} on {os.cpu_count()} cores", flush=True)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"  warning: load average {load:.1f}; figures will be low and noisy")
    raw = {"config": {"ns": ns, "tasks": opts.tasks, "slow_tasks": opts.slow_tasks,
                      "busy_s": BUSY_S, "tasks_per_engine": TASKS_PER_ENGINE,
                      "rtt_n": opts.rtt_n, "pipeline_n": opts.pipeline_n,
                      "bulk_mb": opts.bulk_mb, "quick": opts.quick},
           "relay": {}, "by_n": {}}
    print("  relay ...", flush=True)
    raw["relay"] = run_worker("relay", 1, opts)
    print(f"    {raw['relay']}", flush=True)
    skip = {}
    for i, n in enumerate(ns):
        got = raw["by_n"][str(n)] = {}
        for system in SYSTEMS:
            if system in skip:
                got[system] = {"not_available": skip[system]}
                continue
            print(f"  {system}, n={n} ...", flush=True)
            t0 = time.perf_counter()
            extra = ["--anchors"] if system == "minipar" and i == 0 else []
            got[system] = run_worker(system, n, opts, extra)
            if "not_available" in got[system]:
                skip[system] = got[system]["not_available"]
            print(f"    {got[system]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    rows, cpu_rows, anchors = build_report(ns, raw, opts)
    print()
    print_report(ns, raw, rows, cpu_rows, anchors)
    print(f"\n({'quick' if opts.quick else 'full'} run, {time.time() - started:.0f} s)")
    if opts.json:
        report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                  "environment": _common.environment(), "config": raw["config"],
                  "rows": rows, "controller_cpu": cpu_rows, "anchors": anchors,
                  "relay": raw["relay"], "raw": raw["by_n"]}
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"written to {opts.json}")


if __name__ == "__main__":
    main()
