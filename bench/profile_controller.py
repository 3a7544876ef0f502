"""Where the controller's CPU per task goes: cProfile in the controller, over one workload.

    python bench/profile_controller.py [lb|dv|rt ...] [-n ENGINES] [--tasks T] [--top K]

For each workload (lb: no-op tasks on a load-balanced view; dv: round robin over `rc[i]`;
rt: one `rc[0].apply_sync` at a time, what a lone request costs), a fresh controller runs
inside this file (`--serve`), which wraps `minipar.controller`'s main with a cProfile
switched on and off by signals, so only the workload is profiled (not start-up,
registration or shutdown). Engines are plain `python -m minipar.engine`.

The workload runs three times on the same cluster: unprofiled, to read the controller's
CPU per task from /proc (the real figure); under a sampler (SIGPROF on the controller's
CPU time, see `serve`), for where that CPU goes; under cProfile, for calls per task only
(its times are inflated unevenly), over a fifth of the tasks. It prints the top
functions by own CPU per task (their share of the samples times the unprofiled figure),
with their inclusive CPU per task (them and what they call) and calls per task, after
the garbage collector's CPU per task in the sampled run (`gc.callbacks`; the collector's
time also shows in the samples, under whichever function allocated when it ran).
The sampler's clock ticks at the kernel's rate (every 4 ms of CPU here, whatever
SAMPLE_S asks), hence the default of 50,000 tasks: about 1,000 samples a workload.
"""
import argparse
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import _common

ROOT = _common.ROOT
SAMPLE_S = 0.0005   # CPU seconds between samples


def serve(path, argv):
    """The controller, with two profilers switched by signals, writing to path.*:

    SIGUSR1 / SIGUSR2 start / stop a sampler: SIGPROF every SAMPLE_S of the process's
    CPU time records the running Python frame and its callers (what py-spy would do,
    from inside; a C function's time goes to the Python function calling it). Its
    samples are proportional to CPU time and it costs a few % only, so it gives the
    times. SIGWINCH / SIGALRM start / stop cProfile, which gives exact calls per task
    (its own times are inflated unevenly: about 4 µs per call with a CPU-time clock).
    Not SIGHUP: the controller's main stops on it (its terminal closed), as on SIGTERM.
    """
    import cProfile
    import collections
    import gc
    import runpy
    prof = cProfile.Profile(time.thread_time)
    own, inclusive = collections.Counter(), collections.Counter()

    def key(code):
        return f"{os.path.basename(os.path.dirname(code.co_filename))}/" \
               f"{os.path.basename(code.co_filename)}:{code.co_firstlineno} {code.co_name}"

    def sample(signum, frame):
        if frame is None:
            return
        own[key(frame.f_code)] += 1
        seen = set()
        while frame is not None:
            k = key(frame.f_code)
            if k not in seen:
                seen.add(k)
                inclusive[k] += 1
            frame = frame.f_back

    collector = {"s": 0.0, "passes": [0, 0, 0], "start": 0.0}

    def collecting(phase, info):   # the garbage collector's CPU, by pass
        if phase == "start":
            collector["start"] = time.thread_time()
        else:
            collector["s"] += time.thread_time() - collector["start"]
            collector["passes"][info["generation"]] += 1

    def sampler_start(*_):
        collector.update(s=0.0, passes=[0, 0, 0])
        signal.setitimer(signal.ITIMER_PROF, SAMPLE_S, SAMPLE_S)

    def sampler_stop(*_):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(path + ".samples.tmp", "w") as f:
            json.dump({"own": own, "inclusive": inclusive, "gc_s": collector["s"],
                       "gc_passes": collector["passes"]}, f)
        os.replace(path + ".samples.tmp", path + ".samples.json")

    def profile_stop(*_):
        prof.disable()
        prof.dump_stats(path + ".tmp")
        os.replace(path + ".tmp", path)

    gc.callbacks.append(collecting)
    signal.signal(signal.SIGPROF, sample)
    signal.signal(signal.SIGUSR1, sampler_start)
    signal.signal(signal.SIGUSR2, sampler_stop)
    signal.signal(signal.SIGWINCH, lambda *_: prof.enable())
    signal.signal(signal.SIGALRM, profile_stop)
    sys.argv = ["minipar.controller", *argv]
    runpy.run_module("minipar.controller", run_name="__main__", alter_sys=True)


def _wait_for(path, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {timeout_s} s")
        time.sleep(0.05)


def profile(mode, n, tasks, profiled_tasks, folder):
    import minipar
    profile_dir = os.path.join(folder, mode)
    stats_path = os.path.join(folder, f"{mode}.prof")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get("PYTHONPATH", "")]))
    procs = []
    try:
        controller = subprocess.Popen(
            [sys.executable, __file__, "--serve", stats_path, "--profile-dir", profile_dir],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(controller)
        url_file = os.path.join(profile_dir, "security", "minipar-client.json")
        _wait_for(url_file, 30)
        for _ in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "minipar.engine", "--profile-dir", profile_dir],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rc = minipar.Client(url_file=url_file)
        try:
            rc.wait_for_engines(n, timeout=60)
            noop, _ = _common.remote_functions()
            lb = rc.load_balanced_view()
            views = [rc[i] for i in rc.ids]

            def workload(tasks):
                if mode == "lb":
                    results = [lb.apply_async(noop) for _ in range(tasks)]
                elif mode == "rt":
                    results = []
                    for _ in range(tasks):
                        views[0].apply_sync(noop)
                else:
                    results = [views[i % n].apply_async(noop) for i in range(tasks)]
                _common._wait_all(results, 300)

            _common._wait_all([lb.apply_async(noop) for _ in range(200)], 60)

            def measured(start, stop, written, tasks=tasks):
                if start:
                    os.kill(controller.pid, start)
                    time.sleep(0.2)
                cpu0 = _cpu_s(controller.pid)
                workload(tasks)
                us = (_cpu_s(controller.pid) - cpu0) / tasks * 1e6
                if stop:
                    os.kill(controller.pid, stop)
                    _wait_for(written, 30)
                return us

            figures = {"plain_us": measured(None, None, None),
                       "sampled_us": measured(signal.SIGUSR1, signal.SIGUSR2,
                                              stats_path + ".samples.json"),
                       "profiled_us": measured(signal.SIGWINCH, signal.SIGALRM, stats_path,
                                               profiled_tasks)}
        finally:
            rc.close()
    finally:
        _common.stop_processes(procs, grace_s=5)
    return stats_path, figures


def _cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(mode, stats_path, tasks, profiled_tasks, figures, top):
    """The top functions by own CPU per task: each one's share of the samples times the
    unprofiled CPU per task; its inclusive share likewise; its calls per task (cProfile)."""
    with open(stats_path + ".samples.json") as f:
        samples = json.load(f)
    total = sum(samples["own"].values())
    calls = {}
    for (file, line, name), (_, nc, _, _, _) in pstats.Stats(stats_path).stats.items():
        if line:
            where = f"{os.path.basename(os.path.dirname(file))}/{os.path.basename(file)}"
            calls[f"{where}:{line} {name}"] = nc / profiled_tasks
    plain = figures["plain_us"]
    rows = [{"function": k, "own_us": v / total * plain,
             "inclusive_us": samples["inclusive"].get(k, 0) / total * plain,
             "calls_per_task": calls.get(k)} for k, v in samples["own"].items()]
    rows.sort(key=lambda r: -r["own_us"])
    title = {"lb": "load-balanced", "dv": "direct", "rt": "one at a time"}[mode]
    print(f"\n{title}: controller CPU per task {plain:.1f} µs unprofiled, "
          f"{figures['sampled_us']:.1f} µs sampled ({total:,} samples), "
          f"{figures['profiled_us']:.1f} µs under cProfile")
    young, middle, full = samples["gc_passes"]
    print(f"the garbage collector, in the sampled run: {samples['gc_s'] / tasks * 1e6:.2f} µs "
          f"per task ({young} young, {middle} middle, {full} full passes)")
    print(f"{'own µs':>7} {'incl µs':>7} {'calls':>6}  function")
    for r in rows[:top]:
        c = r["calls_per_task"]
        print(f"{r['own_us']:7.2f} {r['inclusive_us']:7.1f} "
              f"{'-' if c is None else f'{c:.2f}':>6}  {r['function']}")
    return {**figures, "samples": total, "gc_us": samples["gc_s"] / tasks * 1e6,
            "gc_passes": samples["gc_passes"], "top": rows[:top]}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modes", nargs="*", metavar="lb|dv|rt",
                   help="workloads (default: lb dv)")
    p.add_argument("-n", type=int, default=2, help="engines (default 2)")
    p.add_argument("--tasks", type=int, default=50_000,
                   help="tasks per run (default 50,000; a fifth under cProfile)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--keep", metavar="DIR", help="keep the .prof files in DIR")
    args = p.parse_args()
    args.modes = args.modes or ["lb", "dv"]
    if set(args.modes) - {"lb", "dv", "rt"}:
        p.error("workloads are lb, dv and rt")
    folder = args.keep or tempfile.mkdtemp(prefix="minipar-prof-")
    os.makedirs(folder, exist_ok=True)
    out = {}
    try:
        for mode in args.modes:
            path, figures = profile(mode, args.n, args.tasks, args.tasks // 5, folder)
            out[mode] = report(mode, path, args.tasks, args.tasks // 5, figures, args.top)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
