"""Helpers for the tests.

``wait_until`` is the one bounded wait on a state that every test uses instead of a
deadline loop of its own. ``raw_engine`` registers two sockets of the test's as an engine,
to see what the controller sends it or to answer as no real engine would; ``raw_heart``
keeps it alive until the test stops it. ``ctrl_c_at``
presses Ctrl-C at a chosen step of the code it profiles. ``absent_in_docs`` lists the
names docs/ipyparallel.rst calls absent on a class. ``scaled`` is
engine-side: a function that lives in an importable module, so engines unpickle it by
reference.
"""

import os
import pathlib
import re
import signal
import sys
import threading
import time

import pytest
import zmq

from minipar import interactive, protocol


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


def freeze(pid, timeout=10):
    """SIGSTOP process `pid` and return once every thread of it has stopped. kill()
    returns as soon as the signal is pending: one thread takes it and only then stops the
    others, so on a busy machine another thread (an engine's receiver) may still read and
    answer a message sent after kill() returned. Linux: threads' states from /proc."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rpartition(")")[2].split()[0])
        return set(states) == {"T"} and states
    wait_until(stopped, timeout, f"every thread of process {pid} to stop")


def raw_engine(ctx, engine_file, name):
    """Register a DEALER pair of `ctx` (its control and work sockets, identities `name` and
    `name`.r) as an engine of the controller whose engine file this is: (session, control,
    work, the registration's msg_id, the engine id given). Send READY on `work` to receive."""
    info = protocol.read_connection_file(engine_file)
    session = protocol.Session(info["key"])
    control, work = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    control.identity, work.identity = name.encode(), f"{name}.r".encode()
    for s in (control, work):
        s.linger = 0
        s.connect(protocol.url(info, "engine"))
    reg, frames = session.msg(protocol.REGISTER, reply_ident=f"{name}.r")
    control.send_multipart(frames)
    assert control.poll(10_000), "no answer to the registration within 10 s"
    return session, control, work, reg["msg_id"], session.check(control.recv_multipart())[1]["id"]


def raw_heart(ctx, engine_file, name):
    """A heart for raw_engine `name`: echoes the controller's pings, as an engine's does,
    in a thread; returns stop(), after which the controller declares that engine dead once
    its liveness runs out."""
    info = protocol.read_connection_file(engine_file)
    sub, pong = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    pong.identity, pong.linger = name.encode(), 0
    sub.connect(protocol.url(info, "ping"))
    pong.connect(protocol.url(info, "pong"))
    steer, steered = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    steer.bind(f"inproc://raw-heart-{name}")
    steered.connect(f"inproc://raw-heart-{name}")
    beating = threading.Thread(target=zmq.proxy_steerable, args=(sub, pong, None, steered),
                               daemon=True)
    beating.start()

    def stop():
        steer.send(b"TERMINATE")
        beating.join(10)
        assert not beating.is_alive(), f"the heart of raw engine {name} did not stop"
        for s in (sub, pong, steer, steered):
            s.close(linger=0)
    return stop


def ctrl_c_at(k, name=None):
    """(hook, pressed): a profile hook (sys.setprofile) that presses Ctrl-C, a real SIGINT
    to this process, as the k-th Python function it sees starts (with `name`: the k-th
    call of a function of that name), where CPython itself checks for signals (not at a
    builtin's return, which would raise where no signal can: between taking a lock and
    entering its with block); `pressed`: [True] once it has."""
    seen, pressed = 0, []

    def hook(frame, event, arg):
        nonlocal seen
        seen += event == "call" and name in (None, frame.f_code.co_name)
        if seen == k and event == "call":
            sys.setprofile(None)
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)
    return hook, pressed


def absent_in_docs(section):
    """The names docs/ipyparallel.rst calls absent on `section` ("AsyncResult"...)."""
    docs = pathlib.Path(__file__).resolve().parent.parent / "docs" / "ipyparallel.rst"
    names, current = [], None
    for m in re.finditer(r"(?m)^``(\w+)``\n-{3,}$|^   \* - ``(\w+)``\n     - absent$",
                         docs.read_text()):
        current = m.group(1) or current
        if m.group(2) and current == section:
            names.append(m.group(2))
    return names


def assert_absent_say_so(obj, public_name, names):
    """Each of `names` on `obj` is an AttributeError saying minipar leaves ipyparallel's
    out, hidden from dir() and from getattr with a default; any other name missing, plain
    or private, is the plain error."""
    for name in names:
        with pytest.raises(AttributeError, match=f"'{name}': minipar leaves ipyparallel's"):
            getattr(obj, name)
        assert getattr(obj, name, "default") == "default" and name not in dir(obj)
    for name in ("nonsense", "_nonsense"):
        with pytest.raises(AttributeError, match=f"^'{public_name}' object has no attribute "
                                                 f"'{name}'$"):
            getattr(obj, name)


@interactive
def scaled(x):
    return x * scale  # noqa: F821 - `scale` is pushed to the engine's namespace
