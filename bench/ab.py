"""Two versions of minipar side by side: round trips and task rates, taking turns.

    python bench/ab.py OLD_TREE NEW_TREE [--blocks 4] [-n 3000]

Each tree's package is copied under its own name (``mpa``, ``mpb``: minipar works under
any name) and gets a cluster of 2 engines, driven from a client process of its own (one
process holding both would share one garbage collector, so one side's garbage would be
collected on the other's time); then the figures run in turns, a block for A, a block
for B, so a noisy spell of this VM falls on both. Prints the medians and B/A, with the
CPU per task of the client, controller and engines together (``*_cpu_us``), of the
client alone (``*_client_us``) and of the controller alone (``*_ctl_us``).
Single runs swing by ±30% here; a change is real when B/A holds across repeated runs.
"""
import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _common


def _cpu_s(pids):
    """CPU seconds (user + system) used so far by these processes together."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rates(rc, f, n, pids):
    """Round trip, task rates, and the CPU per task of client, controller and engines
    together (on two busy cores the rates follow the CPU, which swings less), and of the
    client alone (its caller and I/O thread share a GIL: it often sets the rate), and of
    the controller alone (what the scaling pass measures)."""
    lb = rc.load_balanced_view()
    views = [rc[i] for i in rc.ids]
    out = {"rtt_us": _common.median_time_us(lambda: views[0].apply_sync(f), 300)}
    runs = {"lb": lambda: _common._wait_all([lb.apply_async(f) for _ in range(n)], 60),
            "dv": lambda: _common._wait_all(
                [views[i % len(views)].apply_async(f) for i in range(n)], 60),
            "map1": lambda: lb.map_async(f, range(n), chunksize=1).get(60)}
    for name, run in runs.items():
        cpu, client, ctl = _cpu_s(pids), _cpu_s(pids[:1]), _cpu_s(pids[1:2])
        t0 = time.perf_counter()
        run()
        out[name + "_per_s"] = n / (time.perf_counter() - t0)
        out[name + "_cpu_us"] = (_cpu_s(pids) - cpu) / n * 1e6
        out[name + "_client_us"] = (_cpu_s(pids[:1]) - client) / n * 1e6
        out[name + "_ctl_us"] = (_cpu_s(pids[1:2]) - ctl) / n * 1e6
    return out


def _side(folder, name, n):
    """A side's client process: starts the cluster of `name`, then runs a block for each
    line on stdin, printing its figures as a JSON line."""
    sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = folder + os.pathsep + os.environ.get("PYTHONPATH", "")
    cluster = importlib.import_module(name).Cluster(
        n=2, profile_dir=os.path.join(folder, name + "-profile"))
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(2, 60)
        with open(rc.url_file) as fh:
            controller = json.load(fh)["pid"]
        pids = [os.getpid(), controller, *rc[:].apply_sync(os.getpid)]
        f, _ = _common.remote_functions()
        print("ready", flush=True)
        for _ in sys.stdin:
            print(json.dumps(_rates(rc, f, n, pids)), flush=True)
    finally:
        cluster.stop_cluster_sync()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", nargs="?", help="a minipar source tree (the folder holding minipar/)")
    p.add_argument("b", nargs="?", help="another")
    p.add_argument("--blocks", type=int, default=4, help="turns each (default 4)")
    p.add_argument("-n", type=int, default=3000, help="tasks per rate (default 3000)")
    p.add_argument("--side", nargs=2, metavar=("FOLDER", "NAME"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return _side(*args.side, args.n)
    if args.b is None:
        p.error("give two trees")
    folder = tempfile.mkdtemp(prefix="minipar-ab-")
    sides = []
    try:
        for name, tree in (("mpa", args.a), ("mpb", args.b)):
            shutil.copytree(os.path.join(tree, "minipar"), os.path.join(folder, name))
            sides.append(subprocess.Popen(
                [sys.executable, __file__, "--side", folder, name, "-n", str(args.n)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for side in sides:
            _common.read_line(side, 120)
        got = [[], []]
        for _ in range(args.blocks):
            for k, side in enumerate(sides):
                side.stdin.write("run\n")
                side.stdin.flush()
                got[k].append(json.loads(_common.read_line(side, 600)))
        for key in got[0][0]:
            a, b = (statistics.median(r[key] for r in runs) for runs in got)
            print(f"{key:14s} A {a:8,.0f}   B {b:8,.0f}   B/A {b / a:.2f}")
    finally:
        for side in sides:
            side.stdin.close()   # the side stops its cluster and exits
        for side in sides:
            try:
                side.wait(30)
            except subprocess.TimeoutExpired:
                pass
        _common.stop_processes(sides)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
