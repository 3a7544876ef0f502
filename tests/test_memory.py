"""Memory over a long run, measured: the resident memory (VmRSS, /proc/PID/status) of the
controller and engine processes, and of the test process as the client.

A bound is a ratio with a generous margin (what a second wave adds against the first,
what a purge leaves of what the results took), never a timing: allocators keep some of
what is freed, and a loaded machine changes how much at any moment.
"""

import os

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
