"""Helpers for the tests.

``wait_until`` is the one bounded wait on a state that every test uses instead of a
deadline loop of its own. ``scaled`` is engine-side: a function that lives in an
importable module, so engines unpickle it by reference.
"""

import time

from minipar import interactive


def wait_until(predicate, timeout, what="the condition", interval=0.01):
    """Call `predicate` until it returns something truthy, and return that; after
    `timeout` seconds raise AssertionError naming `what` and the last value seen.

    The poll interval starts at `interval` and doubles up to 0.1 s: a state that comes
    quickly is seen quickly, and a slow one is not polled hard on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                 f"(last value: {value!r:.300})")
        time.sleep(min(interval, left))
        interval = min(interval * 2, 0.1)


@interactive
def scaled(x):
    return x * scale  # noqa: F821 - `scale` is pushed to the engine's namespace
