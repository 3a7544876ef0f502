"""Memory over a long run, measured: the resident memory (VmRSS, /proc/PID/status) of the
controller and engine processes, and of the client (the test process, or one of its own).

A bound is a ratio with a generous margin (what a second wave adds against the first,
what a purge leaves of what the results took), never a timing: allocators keep some of
what is freed, and a loaded machine changes how much at any moment.
"""

import json
import os
import subprocess
import sys

import pytest

from .helpers import wait_until

TIMEOUT = 120
pytestmark = [pytest.mark.timeout(TIMEOUT),
              pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                 reason="reads resident memory from /proc (Linux)")]

MB = 1 << 20


def _rss(pid):
    """Resident memory of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def _megabyte(i):
    return bytes([i % 256]) * MB


def test_purging_large_results_hands_the_controllers_memory_back(local_cluster):
    """A user purges 64 results of 1 MB each (fewer than a thousand records). The
    controller dropped them but gave back none of the memory: it trimmed its allocator
    only after a purge of 1000 records, and glibc keeps freed 1 MB blocks in its heap, so
    the 64 MB stayed resident. A purge holding many bytes trims as well now."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, TIMEOUT)
    pid = local_cluster.controller.pid
    rc[0].apply_sync(_megabyte, 0)   # the controller's sockets and code warmed up
    rc.purge_results("all")
    before = _rss(pid)
    ars = [rc.load_balanced_view().apply_async(_megabyte, i) for i in range(64)]
    assert [ar.get(TIMEOUT)[:1] for ar in ars] == [bytes([i]) for i in range(64)]
    del ars
    held = _rss(pid) - before
    assert held > 48 * MB, "the controller keeps each result until it is purged"
    assert rc.purge_results("all") >= 64
    wait_until(lambda: _rss(pid) - before < held / 4, TIMEOUT / 4,
               f"the controller to hand back most of the {held // MB} MB purged "
               f"(RSS above the start, in bytes)")


def _peak_since_reset(pid):
    """(VmRSS, a function giving how far VmHWM rose above it since now), in bytes: the
    peak of process `pid` reset to its resident memory (clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    start = _rss(pid)

    def risen():
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) << 10 for line in f
                        if line.startswith("VmHWM:")) - start
    return start, risen


def test_a_strided_array_is_copied_once_to_be_sent_not_three_times(local_cluster):
    """A scientist pushes every other column of a 64 MB array (a[:, ::2], 32 MB, neither
    C- nor F-ordered), and pulls such a slice of an engine's array. numpy pickles that kind of
    array in band: the sender's memory rose by twice its size (its bytes, then the
    pickle holding them, all of it signed) and the result was copied again on arrival.
    It is copied once now, to C order, and leaves as a buffer of its own."""
    np = pytest.importorskip("numpy")
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, TIMEOUT)
    a = np.arange(8 * MB, dtype=np.float64).reshape(2048, -1)
    half = a[:, ::2]
    assert not (half.flags.c_contiguous or half.flags.f_contiguous)
    rc[0].push({"a": a}, block=True)   # the engine's copy of the whole, for the return
    rc.purge_results("all")
    _, risen = _peak_since_reset(os.getpid())
    rc[0].push({"half": half}, block=True)
    assert risen() < 1.5 * half.nbytes, "more than the one copy the send needs"
    assert rc[0].pull("half.shape == (2048, 2048) and bool((half == a[:, ::2]).all())",
                      block=True) is True
    engine = local_cluster.engines[0].pid
    _, engine_risen = _peak_since_reset(engine)
    back = rc[0].pull("a[:, 1::2]", block=True)   # an expression, evaluated on the engine
    assert back.shape == (2048, 2048) and back.dtype == np.float64 and (back == a[:, 1::2]).all()
    assert engine_risen() < 1.5 * half.nbytes, "the engine made more than one copy to send"


# The client of _waves: a process of its own, so that its memory is the waves' alone (the
# test process's moved by 40-75 MB between waves in a whole-suite run, whatever the results).
_WAVES = """
import contextlib, ctypes, gc, json, os, sys
import minipar

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))

def megabyte(i):
    return bytes([i % 256]) * (1 << 20)

client_file, n, task, waves, *pids = sys.argv[1:]
rc = minipar.Client(client_file)
view, f, pids = rc.load_balanced_view(), {"abs": abs, "megabyte": megabyte}[task], [
    os.getpid(), *map(int, pids)]

def measure():
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):   # glibc's: the client's memory
        ctypes.CDLL(None).malloc_trim(0)   # in use, not what malloc keeps after a peak
    return [rss(pid) for pid in pids]

seen = [measure()]
for _ in range(int(waves)):
    ars = [view.apply_async(f, i) for i in range(int(n))]
    assert all(ar.get(60) is not None for ar in ars)
    del ars
    seen.append(measure())
print(json.dumps(seen))
"""


def _waves(cluster, n, task, waves=4):
    """The resident memory of a client process, the controller and each engine after each
    of `waves` waves of `n` load-balanced tasks (`task`: "abs" or "megabyte", each f(i)),
    every result read then dropped."""
    out = subprocess.run([sys.executable, "-c", _WAVES, cluster.client_file, str(n), task,
                          str(waves), str(cluster.controller.pid),
                          *(str(p.pid) for p in cluster.engines)],
                         capture_output=True, text=True, timeout=TIMEOUT - 20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _assert_bounded(seen, margin=16 * MB):
    """What each process's memory grew by from the first wave's end to the last's at most
    half what the first wave added, and `margin` (what an allocator keeps, what the test
    process's other work leaves): by the first wave's end, the controller keeps as many
    records as its bounds let it; a process that kept something of each task would grow
    by as much with each wave (a client keeping its AsyncResults: 12 MB a wave)."""
    names = ["client", "controller"] + [f"engine {i}" for i in range(len(seen[0]) - 2)]
    for name, start, first, last in zip(names, seen[0], seen[1], seen[-1]):
        assert last - first <= max(0, first - start) / 2 + margin, (
            f"the {name}'s memory grew by {(first - start) // MB} MB in the first wave and "
            f"{(last - first) // MB} MB more in the next {len(seen) - 2}: {seen}")


@pytest.fixture
def bounded_cluster(tmp_path):
    """A controller that keeps 1,000 records and 64 MB of them, and two engines."""
    from .conftest import LocalCluster

    c = LocalCluster(tmp_path, ["--record-limit", "1000", "--record-bytes", str(64 * MB)])
    try:
        c.start_engines(2)
        c.rc = c.client()
        c.rc.wait_for_engines(2, TIMEOUT)
        yield c
    finally:
        c.stop()


def test_waves_of_small_tasks_keep_every_process_bounded(bounded_cluster):
    """40,000 small tasks in four waves, their AsyncResults dropped: the client keeps no
    history of its own (rc.results, rc.metadata are absent), the controller culls its
    oldest records, engines keep nothing per task."""
    _assert_bounded(_waves(bounded_cluster, 10_000, "abs"))


def test_waves_of_megabyte_results_keep_every_process_bounded(bounded_cluster):
    """400 results of 1 MB in four waves: each wave's results freed when dropped (in the
    client) or culled (in the controller), their memory used again by the next. A process
    keeping them would grow by 100 MB a wave, far past the margin."""
    _assert_bounded(_waves(bounded_cluster, 100, "megabyte"), margin=64 * MB)
