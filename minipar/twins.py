"""Coroutine twins: ipyparallel's pairs of a blocking method ``x_sync`` and a coroutine ``x``.

``@coroutine_twins(undo)`` gives each method "x_sync" of a class (launcher.Cluster) a twin "x"
that runs it in the event loop's default thread pool, so other coroutines go on meanwhile::

    event loop thread                        pool thread
    await cluster.start_and_connect() --->   start_and_connect_sync(): starts processes,
      cancelled (Ctrl-C under asyncio.run,     waits in sleep_unless_cancelled()
      a notebook's interrupt): sets the  --->  ... which raises AwaitCancelled: the method's
      call's Event, waits for the call         own cleanup (as for a Ctrl-C) stops what it
      (again if cancelled again: bounded)      had started; a call that returned all the same
    <--- raises CancelledError saying so       is undone by undo[name](self, result)

A cancelled await thus ends only once nothing the call started runs: a start is stopped,
a stop (bounded by its own timeouts) runs to its end first. Where the loop runs under Python's
own Ctrl-C handler (IPython's terminal), a Ctrl-C cancels the await too (_cancel_on_ctrl_c).
"""

import asyncio
import contextlib
import functools
import logging
import signal
import threading

log = logging.getLogger(__name__)


class AwaitCancelled(BaseException):
    """Raised in a twin's pool thread once its await was cancelled: not an Exception, so the
    method's cleanup handlers for a Ctrl-C (``except BaseException``) run, and nothing else."""


class _Call(threading.local):
    cancelled = threading.Event()   # never set: a plain sleep outside a twin's pool thread


_CALL = _Call()


def sleep_unless_cancelled(seconds):
    """time.sleep for the wait loops of a blocking method: in a twin's pool thread, it raises
    AwaitCancelled at once when that twin's await is cancelled."""
    if _CALL.cancelled.wait(seconds):
        raise AwaitCancelled("the await was cancelled")


def _cancel_on_ctrl_c():
    """Where a loop runs in the main thread under Python's own Ctrl-C handler (IPython's
    terminal: run_until_complete), a Ctrl-C raised KeyboardInterrupt inside the loop and left
    the awaiting task, and its call, running on. While a twin is awaited there, a first Ctrl-C
    cancels the task instead, as under asyncio.run (whose handler is its own, left alone); a
    second raises KeyboardInterrupt. Returns the function that puts the handler back."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return lambda: None
    task, loop = asyncio.current_task(), asyncio.get_running_loop()

    def on_ctrl_c(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)   # wakes a select() with a long timeout

    signal.signal(signal.SIGINT, on_ctrl_c)
    return lambda: signal.getsignal(signal.SIGINT) is on_ctrl_c and signal.signal(
        signal.SIGINT, signal.default_int_handler)


def _in_thread(self, sync, cancelled, args, kwargs, undo):   # executes in a pool thread
    _CALL.cancelled = cancelled
    try:
        result = sync(self, *args, **kwargs)
        if undone := cancelled.is_set() and sync.__name__ in undo:
            undo[sync.__name__](self, result)
        return result, undone
    finally:
        del _CALL.cancelled


async def _unless_cancelled_again(future):
    """Wait for `future` through any number of cancels; its (result, undone), or False."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    return future.exception() is None and future.result()


def _twin(sync, undo):
    name = sync.__name__[:-len("_sync")]

    @functools.wraps(sync)
    async def method(self, *args, **kwargs):
        loop, cancelled = asyncio.get_running_loop(), threading.Event()
        call = loop.run_in_executor(None, _in_thread, self, sync, cancelled, args, kwargs, undo)
        handler_back = _cancel_on_ctrl_c()
        try:
            return (await asyncio.shield(call))[0]
        except asyncio.CancelledError:
            cancelled.set()
        finally:
            handler_back()
        done = await _unless_cancelled_again(call)
        if done and not done[1] and sync.__name__ in undo:   # returned as it was cancelled
            await _unless_cancelled_again(
                loop.run_in_executor(None, undo[sync.__name__], self, done[0]))
        said = f"{name}() was cancelled: " + (f"what it had started of {self!r} is stopped"
                                              if sync.__name__ in undo else
                                              "it ran to its end first")
        log.warning("%s", said)
        raise asyncio.CancelledError(said)

    method.__name__ = name
    method.__qualname__ = sync.__qualname__[:-len("_sync")]
    return method


def coroutine_twins(undo):
    """A class decorator: a twin "x" for each method "x_sync"; `undo` maps a method's name to
    ``f(self, result)`` that stops what a call of it returned having started."""
    def decorate(cls):
        for name, sync in list(vars(cls).items()):
            if name.endswith("_sync"):
                setattr(cls, name[:-len("_sync")], _twin(sync, undo))
        return cls
    return decorate
