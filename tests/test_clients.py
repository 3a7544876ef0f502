"""Many clients on one controller (a class, a group sharing a cluster): their tasks take
turns, and one that reads nothing (stopped, asleep) neither holds the controller's memory
nor stops the others. Real controller, engines and client processes over real sockets;
memory is the controller's VmRSS (/proc/PID/status), bounded generously, never a timing.
"""

import pytest

from .conftest import START_TIMEOUT_S

TIMEOUT = 240
pytestmark = pytest.mark.timeout(TIMEOUT)


def _nap(i):
    import time
    time.sleep(0.005)
    return i


def test_a_second_clients_task_runs_while_the_firsts_thousands_wait(local_cluster):
    """One student queues 4,000 tasks, another submits one: it ran after all 4,000 (the
    queue was one line, first come first served). Now each client has its own line and
    freed engines take from them in turn, so it runs next but one, while thousands of the
    first's still wait; those keep their order, and all of them finish."""
    local_cluster.start_engines(2)
    first, second = local_cluster.client(), local_cluster.client()
    first.wait_for_engines(2, START_TIMEOUT_S)
    many = first.load_balanced_view().map(_nap, range(4000), block=False, chunksize=1)
    assert first.queue_status()["unassigned"] > 3000   # all there: the reply comes after them
    one = second.load_balanced_view().apply_async(_nap, -1)
    assert one.get(TIMEOUT / 2) == -1
    waiting = second.queue_status()["unassigned"]
    assert not many.done() and waiting > 2000, waiting
    assert many.get(TIMEOUT / 2) == list(range(4000))
