"""The client: Client, DirectView, LoadBalancedView and AsyncResult.

One I/O thread owns the client's sockets; any user thread may call the Client::

    user threads ── lock + inproc PUSH ──▶ PULL ┐
                                                ├─ I/O thread ── DEALER ──▶ controller "client"
    futures ◀── set_result / set_exception ─────┘            ◀── SUB ───── controller "notify"

A request is serialized in the caller's thread (so a bad argument raises at the call),
registered as a ``_MsgFuture`` under its msg_id, and handed to the I/O thread. Replies
are verified and unpickled in the I/O thread, which completes the future; an
``AsyncResult`` is a ``concurrent.futures.Future`` over one or more of those.
"""

import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time

import zmq

from . import errors, protocol
from .errors import CompositeError, NoEnginesRegistered, TimeoutError

log = logging.getLogger(__name__)


def interactive(f):
    """Make `f` behave like a function defined in ``__main__``: it is sent by value and
    runs on the engine with the engine's namespace as its globals."""
    f.__module__ = "__main__"
    return f


# ---------------------------------------------------------------- futures

class _MsgFuture(concurrent.futures.Future):
    """The future of one message; ``metadata`` is filled in by the I/O thread."""

    def __init__(self, msg_id, engine_id=None):
        super().__init__()
        self.msg_id = msg_id
        self.metadata = {"msg_id": msg_id, "engine_id": engine_id, "submitted": time.time(),
                         "started": None, "completed": None, "received": None,
                         "stdout": "", "stderr": "", "status": None}


class AsyncResult(concurrent.futures.Future):
    """The result of one or more requests: a ``concurrent.futures.Future``.

    ``get(timeout)`` returns the result (or raises the remote error), ``wait``,
    ``ready``, ``successful``, ``get_dict``, ``.r``, ``msg_ids``, ``metadata``,
    ``elapsed``; iterating yields the results as they arrive (in order).
    """

    def __init__(self, client, futures, fname="", single=False, mapping=False, ordered=True):
        super().__init__()
        self._client = client
        self._children = list(futures)
        self._fname = fname
        self._single = single       # one request whose value is the result (not a list)
        self._mapping = mapping     # each child returns a list: the result is their concatenation
        self._ordered = ordered
        self._left = len(self._children)
        self._lock = threading.Lock()
        self._submitted = min((f.metadata["submitted"] for f in self._children), default=time.time())
        if not self._children:
            self.set_result([])
        for f in self._children:
            f.add_done_callback(self._child_done)

    def _child_done(self, _):
        with self._lock:
            self._left -= 1
            if self._left:
                return
        errs = [f.exception() for f in self._children if f.exception() is not None]
        if errs:
            if self._single:
                self.set_exception(errs[0])
            else:
                self.set_exception(CompositeError(
                    f"one or more exceptions raised in {self._fname or 'the request'}",
                    [e if isinstance(e, errors.RemoteError) else errors.wrap(e) for e in errs]))
            return
        values = [f.result() for f in self._children]
        if self._mapping:
            values = list(itertools.chain.from_iterable(values))
        elif self._single:
            values = values[0]
        self.set_result(values)

    @property
    def msg_ids(self):
        return [f.msg_id for f in self._children]

    def get(self, timeout=None):
        """The result; raises TimeoutError if not ready within `timeout` seconds."""
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"result not ready after {timeout} s ({self._left} of "
                               f"{len(self._children)} requests outstanding)") from None

    @property
    def r(self):
        return self.get()

    def wait(self, timeout=None):
        """Wait until done (at most `timeout` seconds); return whether it is."""
        concurrent.futures.wait([self], timeout)
        return self.done()

    def ready(self):
        return self.done()

    def successful(self):
        if not self.done():
            raise ValueError("the result is not ready yet: wait() for it first")
        return self.exception() is None

    def get_dict(self, timeout=None):
        """The results as {engine_id: result}: one request per engine."""
        results = self.get(timeout)
        if self._single:
            results = [results]
        ids = [f.metadata["engine_id"] for f in self._children]
        if len(set(ids)) != len(ids):
            raise ValueError("get_dict needs one request per engine")
        return dict(zip(ids, results))

    @property
    def metadata(self):
        md = [f.metadata for f in self._children]
        return md[0] if self._single else md

    @property
    def stdout(self):
        md = [f.metadata["stdout"] for f in self._children]
        return md[0] if self._single else md

    @property
    def stderr(self):
        md = [f.metadata["stderr"] for f in self._children]
        return md[0] if self._single else md

    @property
    def engine_id(self):
        ids = [f.metadata["engine_id"] for f in self._children]
        return ids[0] if self._single else ids

    @property
    def elapsed(self):
        """Seconds from submission to the last result (or to now, while running)."""
        ends = [f.metadata["received"] for f in self._children]
        end = max(ends) if ends and None not in ends else time.time()
        return end - self._submitted

    @property
    def progress(self):
        return sum(f.done() for f in self._children)

    def __len__(self):
        return len(self._children)

    def __iter__(self):
        """Yield results as they arrive; raises the first remote error met."""
        children = self._children if self._ordered else \
            concurrent.futures.as_completed(self._children)
        for f in children:
            value = f.result()
            if self._mapping:
                yield from value
            else:
                yield value

    def abort(self):
        """Abort the requests not yet finished (queued ones fail with TaskAborted)."""
        self._client.abort(self)

    def __repr__(self):
        state = "finished" if self.done() else "pending"
        return f"<AsyncResult({self._fname}): {state}>"


# ---------------------------------------------------------------- client

class Client:
    """A connection to a controller.

    ``Client(url_file=None, profile=None, profile_dir=None, timeout=10)``: reads the
    controller's ``minipar-client.json`` (from `url_file`, or the profile's security
    folder) and connects; raises a clear error when the file is missing or stale, the
    key is refused, or the controller does not answer within `timeout` seconds.
    """

    def __init__(self, url_file=None, profile=None, profile_dir=None, timeout=10, **kwargs):
        if url_file is None:
            url_file = os.path.join(protocol.profile_dir(profile, profile_dir), "security",
                                    protocol.CLIENT_FILE)
        self.url_file = url_file
        self.info = protocol.read_connection_file(url_file)
        self.session = protocol.Session(self.info["key"])
        self.timeout = timeout
        self._engines = {}
        self._futures = {}
        self._engines_changed = threading.Condition()
        self._closed = False
        self.ctx = zmq.Context()
        self._outbox_addr = f"inproc://client-outbox-{id(self)}"
        outbox_in = self.ctx.socket(zmq.PULL)
        outbox_in.bind(self._outbox_addr)
        self._outbox = self.ctx.socket(zmq.PUSH)
        self._outbox.connect(self._outbox_addr)
        self._send_lock = threading.Lock()
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(protocol.url(self.info, "client"))
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(protocol.url(self.info, "notify"))
        self._io = threading.Thread(target=self._io_loop, args=(dealer, sub, outbox_in),
                                    name="minipar-client-io", daemon=True)
        self._io.start()
        try:
            reply = self._query(protocol.CONNECT, timeout=timeout)
        except BaseException:
            self.close()
            raise
        with self._engines_changed:
            self._engines.update({int(k): v for k, v in reply["engines"].items()})

    # ------------------------------------------------------------ I/O thread

    def _io_loop(self, dealer, sub, outbox_in):
        # executes in the I/O thread: owns dealer, sub and outbox_in
        poller = zmq.Poller()
        for s in (dealer, sub, outbox_in):
            poller.register(s, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                for _ in range(256):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if sock is outbox_in:
                        if len(frames) == 1:  # close() marker
                            for s in (dealer, sub, outbox_in):
                                s.close(linger=0)
                            return
                        dealer.send_multipart(frames, copy=False)
                        continue
                    try:
                        if sock is dealer:
                            self._on_reply(frames)
                        else:
                            self._on_notification(frames[1:])
                    except Exception as e:
                        log.warning("dropped a message from the controller: %s: %s",
                                    type(e).__name__, e)

    def _on_reply(self, frames):
        # executes in the I/O thread
        if protocol.is_refusal(frames):
            reason = frames[2].bytes.decode(errors="replace")
            err = errors.MiniparError(
                f"the controller refused a request ({reason}): the key in {self.url_file} "
                "does not match the controller's; use the file the running controller wrote")
            for f in list(self._futures.values()):
                if not f.done() and f.metadata.get("query"):
                    f.set_exception(err)
            log.error("%s", err)
            return
        _, header, parts = self.session.check(frames)
        kind = header["kind"]
        if kind == protocol.STREAM:
            f = self._futures.get(header.get("parent"))
            if f is not None:
                f.metadata[header.get("name", "stdout")] += header.get("text", "")
            return
        f = self._futures.pop(header.get("parent"), None)
        if f is None or f.done():
            return
        md = f.metadata
        if md.get("query"):
            if header.get("status") == "error":
                ename, evalue = header.get("error", ("MiniparError", "request failed"))
                return f.set_exception(errors.error(ename, evalue))
            return f.set_result(header)
        md["received"] = time.time()
        for k in ("started", "completed", "stdout", "stderr", "status", "attempts",
                  "execution_count"):
            if k in header:
                md[k] = header[k]
        md["engine_id"] = header.get("engine", md["engine_id"])
        try:
            self.session.check_body(header, parts)
            value = protocol.deserialize(parts) if parts else None
        except Exception as e:
            return f.set_exception(errors.SerializationError(
                f"could not unpickle the result of {f.msg_id}: {type(e).__name__}: {e}; is "
                "the module that defines it importable here?"))
        if header.get("status") == "ok":
            f.set_result(value)
        else:
            f.set_exception(value if isinstance(value, BaseException) else errors.error(
                header.get("ename", "MiniparError"), header.get("evalue", "")))

    def _on_notification(self, frames):
        # executes in the I/O thread
        _, header, _ = self.session.check(frames)
        kind = header["kind"]
        with self._engines_changed:
            if kind == protocol.ENGINE_REGISTERED:
                self._engines[header["id"]] = header.get("info", {})
            elif kind in (protocol.ENGINE_UNREGISTERED, protocol.ENGINE_DIED):
                self._engines.pop(header["id"], None)
            self._engines_changed.notify_all()

    # ------------------------------------------------------------ sending

    def _send(self, kind, parts=(), engine_id=None, **fields):
        """Send a request; returns its future (registered before it leaves)."""
        if self._closed:
            raise errors.MiniparError("this Client is closed; make a new one")
        header, frames = self.session.msg(kind, parts, **fields)
        f = _MsgFuture(header["msg_id"], engine_id)
        self._futures[f.msg_id] = f
        with self._send_lock:
            self._outbox.send_multipart(frames, copy=False)
        return f

    def _query(self, kind, timeout=None, **fields):
        """A request to the controller itself; returns the reply header."""
        header, frames = self.session.msg(kind, **fields)
        f = _MsgFuture(header["msg_id"])
        f.metadata["query"] = True
        self._futures[f.msg_id] = f
        with self._send_lock:
            self._outbox.send_multipart(frames)
        timeout = self.timeout if timeout is None else timeout
        try:
            return f.result(timeout)
        except concurrent.futures.TimeoutError:
            self._futures.pop(f.msg_id, None)
            raise TimeoutError(
                f"the controller at {protocol.url(self.info, 'client')} did not answer {kind} "
                f"within {timeout} s: is it running? (connection file {self.url_file})") from None

    def _apply(self, f, args, kwargs, engine_id=None, fparts=None, **fields):
        if fparts is None:
            fparts = protocol.serialize(f)
        aparts = protocol.serialize((args, kwargs))
        return self._send(protocol.APPLY, [*fparts, *aparts], engine_id=engine_id,
                          engine=engine_id, counts=[len(fparts), len(aparts)], **fields)

    # ------------------------------------------------------------ engines

    @property
    def ids(self):
        """The registered engines' ids, sorted."""
        with self._engines_changed:
            return sorted(self._engines)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, key):
        if isinstance(key, int):
            if key not in self._engines:
                raise IndexError(f"engine {key} is not registered; registered: {self.ids}")
            return DirectView(self, key)
        if isinstance(key, slice):
            return DirectView(self, self.ids[key])
        if isinstance(key, (list, tuple)):
            return DirectView(self, list(key))
        raise TypeError(f"index a Client with an int, a slice or a list, not {type(key).__name__}")

    def direct_view(self, targets="all"):
        return DirectView(self, targets)

    def load_balanced_view(self, targets=None):
        return LoadBalancedView(self, targets)

    def wait_for_engines(self, n, timeout=None):
        """Wait until at least `n` engines are registered; TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._engines_changed:
            while len(self._engines) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(self._engines)} engines registered after "
                                       f"{timeout} s, wanted {n}")
                self._engines_changed.wait(left)
        return self.ids

    def _targets(self, targets):
        """Resolve 'all' / None / int / list to a list of live engine ids."""
        ids = self.ids
        if targets is None or targets == "all":
            targets = ids
        targets = [targets] if isinstance(targets, int) else list(targets)
        if not targets:
            raise NoEnginesRegistered(
                "no engines are registered: start some with `python -m "
                f"{__package__}.engine` or Cluster(n=...), or rc.wait_for_engines(n)")
        bad = [t for t in targets if t not in ids]
        if bad:
            raise IndexError(f"engine {bad[0]} is not registered; registered: {ids}")
        return targets

    # ------------------------------------------------------------ queries and control

    def queue_status(self, targets=None, verbose=False):
        """Per-engine queue lengths ({id: {'queue', 'tasks', 'completed'}}) and 'unassigned'."""
        t = None if targets in (None, "all") else self._targets(targets)
        reply = self._query(protocol.QUEUE_STATUS, targets=t, verbose=verbose)
        status = {int(k): v for k, v in reply["engines"].items()}
        status["unassigned"] = reply["unassigned"]
        if verbose:
            status["stats"] = reply.get("stats", {})
        return status

    def _msg_ids(self, jobs):
        if jobs is None:
            return [m for m, f in list(self._futures.items()) if not f.metadata.get("query")]
        if isinstance(jobs, (str, AsyncResult, concurrent.futures.Future)):
            jobs = [jobs]
        out = []
        for j in jobs:
            if isinstance(j, AsyncResult):
                out.extend(j.msg_ids)
            elif isinstance(j, _MsgFuture):
                out.append(j.msg_id)
            elif isinstance(j, str):
                out.append(j)
            else:
                raise TypeError(f"expected msg_ids or AsyncResults, not {type(j).__name__}")
        return out

    @property
    def outstanding(self):
        return set(self._msg_ids(None))

    def get_result(self, msg_ids, owner=False):
        """An AsyncResult for msg_ids, also ones another client submitted."""
        single = isinstance(msg_ids, str)
        ids = self._msg_ids(msg_ids)
        futures = []
        ask = []
        for m in ids:
            f = self._futures.get(m)
            if f is None:
                f = _MsgFuture(m)
                self._futures[m] = f
                ask.append(m)
            futures.append(f)
        if ask:
            reply = self._query(protocol.RESULT_REQUEST, msg_ids=ask)
            for m in reply["unknown"]:
                f = self._futures.pop(m, None)
                if f is not None and not f.done():
                    f.set_exception(KeyError(f"no record of {m}: unknown or purged msg_id"))
        return AsyncResult(self, futures, fname="get_result", single=single)

    def wait(self, jobs=None, timeout=None):
        """Wait for jobs (default: all outstanding) at most `timeout` s; True if all done."""
        futures = []
        for m in self._msg_ids(jobs):
            f = self._futures.get(m)
            if f is not None:
                futures.append(f)
        done, pending = concurrent.futures.wait(futures, timeout)
        return not pending

    def abort(self, jobs=None):
        """Abort jobs: queued ones fail with TaskAborted, running ones are interrupted."""
        self._query(protocol.ABORT, msg_ids=self._msg_ids(jobs))

    def purge_results(self, jobs=None, targets=None):
        """Forget finished results in the controller: jobs, 'all', or those of targets."""
        if jobs is None and targets is None:
            raise ValueError("say which results to purge: jobs=..., jobs='all' or targets=...")
        msg_ids = "all" if jobs == "all" else (None if jobs is None else self._msg_ids(jobs))
        t = None if targets is None else self._targets(targets)
        return self._query(protocol.PURGE, msg_ids=msg_ids, targets=t)["purged"]

    def shutdown(self, targets="all", hub=False, block=True):
        """Stop engines (and the controller with hub=True)."""
        t = None if targets in (None, "all") else self._targets(targets)
        self._query(protocol.SHUTDOWN, targets=t, hub=hub)
        if block and not hub:
            deadline = time.monotonic() + self.timeout
            with self._engines_changed:
                while any(e in self._engines for e in (t or list(self._engines))) \
                        and time.monotonic() < deadline:
                    self._engines_changed.wait(deadline - time.monotonic())

    def close(self):
        if self._closed:
            return
        self._closed = True
        with self._send_lock:
            self._outbox.send(b"")
            self._outbox.close(linger=1000)
        self._io.join(5)
        self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass


# ---------------------------------------------------------------- views

class _View:
    _flag_names = ("block",)

    def __init__(self, client, targets, block=False):
        self.client = client
        self.targets = targets
        self.block = block

    def set_flags(self, **flags):
        for k, v in flags.items():
            if k not in self._flag_names and k != "targets":
                raise KeyError(f"unknown flag {k!r}; flags are {sorted(self._flag_names)}")
            setattr(self, k, v)

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        saved = {k: getattr(self, k) for k in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _block(self, block):
        return self.block if block is None else block

    def _finish(self, ar, block):
        return ar.get() if self._block(block) else ar

    def apply(self, f, *args, **kwargs):
        return self._finish(self._apply(f, args, kwargs), None)

    def apply_async(self, f, *args, **kwargs):
        return self._apply(f, args, kwargs)

    def apply_sync(self, f, *args, **kwargs):
        return self._apply(f, args, kwargs).get()

    def map_async(self, f, *sequences, **kwargs):
        return self.map(f, *sequences, block=False, **kwargs)

    def map_sync(self, f, *sequences, **kwargs):
        return self.map(f, *sequences, block=True, **kwargs)

    def remote(self, block=None, **flags):
        """Decorator: calling the function runs it through this view's apply."""
        def wrap(f):
            return RemoteFunction(self, f, block=block, **flags)
        return wrap

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: the function is applied to parts of its arguments in parallel."""
        def wrap(f):
            return ParallelFunction(self, f, dist=dist, block=block, **flags)
        return wrap

    def wait(self, jobs=None, timeout=None):
        return self.client.wait(jobs, timeout)

    def abort(self, jobs=None):
        return self.client.abort(jobs)

    def queue_status(self, verbose=False):
        return self.client.queue_status(self._target_list(), verbose)

    def _target_list(self):
        return None if self.targets in (None, "all") else self.targets


class RemoteFunction:
    """A function whose calls run remotely through a view (``@view.remote()``)."""

    def __init__(self, view, f, block=None, **flags):
        self.view, self.func, self.block, self.flags = view, f, block, flags
        self.__name__ = getattr(f, "__name__", "remote_function")
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args, **kwargs):
        with self.view.temp_flags(**self.flags):
            ar = self.view.apply_async(self.func, *args, **kwargs)
            return self.view._finish(ar, self.block)


class ParallelFunction(RemoteFunction):
    """``@view.parallel()``: calling it splits the sequence arguments across engines and
    concatenates the results; ``.map(seq)`` applies it element-wise."""

    def __init__(self, view, f, dist="b", block=None, **flags):
        super().__init__(view, f, block, **flags)
        self.dist = dist

    def __call__(self, *sequences):
        with self.view.temp_flags(**self.flags):
            ar = self.view._map(self.func, sequences, elementwise=False)
            return self.view._finish(ar, self.block)

    def map(self, *sequences):
        with self.view.temp_flags(**self.flags):
            return self.view._finish(self.view._map(self.func, sequences), self.block)


def _partition(seq, n, i):
    """The i-th of n nearly equal contiguous blocks of `seq` (the block distribution)."""
    size = len(seq)
    lo = i * size // n
    hi = (i + 1) * size // n
    part = seq[lo:hi]
    return list(part) if isinstance(part, range) else part


def _concat(parts):
    if parts and all(type(p).__module__ == "numpy" and hasattr(p, "ndim") for p in parts):
        import numpy

        return numpy.concatenate(parts)
    out = []
    for p in parts:
        out.extend(p)
    return out


def _sequence(s):
    return s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s)


class DirectView(_View):
    """Requests addressed to engines directly (the MultiEngine interface).

    ``targets`` is 'all', one engine id (results are plain values) or a list of ids
    (results are lists, one per engine). Flags: ``block``, ``targets``.
    """

    def __init__(self, client, targets="all", block=False):
        super().__init__(client, targets, block)

    def __repr__(self):
        return f"<DirectView {self.targets}>"

    def __len__(self):
        return len(self.client._targets(self.targets))

    def _each(self, targets, send, fname):
        targets = self.targets if targets is None else targets
        single = isinstance(targets, int)
        ids = self.client._targets(targets)
        futures = [send(eid) for eid in ids]
        return AsyncResult(self.client, futures, fname=fname, single=single)

    def _apply(self, f, args, kwargs, targets=None):
        fparts = protocol.serialize(f)
        return self._each(targets, lambda e: self.client._apply(
            f, args, kwargs, engine_id=e, fparts=fparts), getattr(f, "__name__", "apply"))

    def execute(self, code, targets=None, block=None):
        """Run a code string in each target's namespace."""
        ar = self._each(targets, lambda e: self.client._send(
            protocol.EXECUTE, engine_id=e, engine=e, code=code), "execute")
        return self._finish(ar, block)

    def run(self, filename, targets=None, block=None):
        """Run a Python file's code in each target's namespace."""
        with open(filename) as f:
            return self.execute(f.read(), targets, block)

    def push(self, ns, targets=None, block=None):
        """Update each target's namespace with the dict `ns`."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        parts = protocol.serialize(ns)
        ar = self._each(targets, lambda e: self.client._send(
            protocol.PUSH, parts, engine_id=e, engine=e), "push")
        return self._finish(ar, block)

    def pull(self, names, targets=None, block=None):
        """Read a name (or a list of names) from each target's namespace."""
        ar = self._each(targets, lambda e: self.client._send(
            protocol.PULL, engine_id=e, engine=e, names=names), "pull")
        return self._finish(ar, block)

    def __setitem__(self, key, value):
        self.push({key: value}, block=True)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.pull(key, block=True)
        raise TypeError("index a DirectView with a name to pull it")

    def update(self, ns):
        self.push(ns, block=True)

    def get(self, key):
        return self.pull(key, block=True)

    def keys(self, targets=None, block=None):
        ar = self._each(targets, lambda e: self.client._send(
            protocol.KEYS, engine_id=e, engine=e), "keys")
        return self._finish(ar, block)

    def clear(self, targets=None, block=None):
        """Empty each target's namespace."""
        ar = self._each(targets, lambda e: self.client._send(
            protocol.CLEAR, engine_id=e, engine=e), "clear")
        return self._finish(ar, block)

    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None):
        """Split `seq` into contiguous blocks, one per target, pushed as `key`."""
        if dist != "b":
            raise ValueError(f"unknown distribution {dist!r}: only 'b' (blocks) is supported")
        targets = self.targets if targets is None else targets
        ids = self.client._targets(targets)
        seq = _sequence(seq)
        futures = []
        for i, eid in enumerate(ids):
            part = _partition(seq, len(ids), i)
            if flatten and len(part) == 1:
                part = part[0]
            futures.append(self.client._send(protocol.PUSH, protocol.serialize({key: part}),
                                             engine_id=eid, engine=eid))
        ar = AsyncResult(self.client, futures, fname="scatter")
        return self._finish(ar, block)

    def gather(self, key, dist="b", targets=None, block=None):
        """Pull `key` from each target and concatenate the parts (inverse of scatter)."""
        if dist != "b":
            raise ValueError(f"unknown distribution {dist!r}: only 'b' (blocks) is supported")
        targets = self.targets if targets is None else targets
        ids = self.client._targets(targets)
        futures = [self.client._send(protocol.PULL, engine_id=e, engine=e, names=key)
                   for e in ids]
        pulled = AsyncResult(self.client, futures, fname="gather")
        ar = _Derived(self.client, pulled, lambda parts: _concat(
            [p if isinstance(p, (list, tuple)) or hasattr(p, "ndim") else [p] for p in parts]))
        return self._finish(ar, block)

    def map(self, f, *sequences, block=None):
        """Apply `f` element-wise, each target taking one contiguous block."""
        return self._finish(self._map(f, sequences), block)

    def _map(self, f, sequences, elementwise=True):
        if not sequences:
            raise ValueError("map needs at least one sequence")
        seqs = [_sequence(s) for s in sequences]
        n = min(len(s) for s in seqs)
        ids = self.client._targets(self.targets)
        fparts = protocol.serialize(f)
        futures = []
        for i, eid in enumerate(ids):
            chunks = [_partition(s[:n] if len(s) != n else s, len(ids), i) for s in seqs]
            if not len(chunks[0]):
                continue
            futures.append(self.client._apply(f, tuple(chunks), {}, engine_id=eid,
                                              fparts=fparts, map=elementwise))
        return AsyncResult(self.client, futures, fname=getattr(f, "__name__", "map"),
                           mapping=True)

    def shutdown(self, targets=None, hub=False, block=True):
        t = self.targets if targets is None else targets
        return self.client.shutdown(t, hub, block)


class _Derived(AsyncResult):
    """An AsyncResult whose value is computed from another's (gather's concatenation)."""

    def __init__(self, client, base, transform):
        concurrent.futures.Future.__init__(self)
        self._client, self._base, self._transform = client, base, transform
        self._children = base._children
        self._single = False
        self._mapping = False
        self._ordered = True
        self._left = 0
        self._fname = base._fname
        self._submitted = base._submitted
        base.add_done_callback(self._base_done)

    def _base_done(self, base):
        if base.exception() is not None:
            self.set_exception(base.exception())
        else:
            try:
                self.set_result(self._transform(base.result()))
            except Exception as e:
                self.set_exception(e)


class LoadBalancedView(_View):
    """Tasks given to whichever engine is free (the Task interface).

    Flags (attributes, ``set_flags``, ``temp_flags`` or keywords of ``apply``/``map``
    via ``temp_flags``): ``block``, ``targets``, ``after``, ``follow``, ``timeout``,
    ``retries``, ``recovery``, ``time_limit``.
    """

    _flag_names = ("block", "after", "follow", "timeout", "retries", "recovery", "time_limit")

    def __init__(self, client, targets=None, block=False):
        super().__init__(client, targets, block)
        self.after = None
        self.follow = None
        self.timeout = None
        self.retries = 0
        self.recovery = None
        self.time_limit = None

    def __repr__(self):
        return f"<LoadBalancedView {self.targets}>"

    def _dep(self, dep):
        if dep is None:
            return None
        if isinstance(dep, dict):
            return dep
        if hasattr(dep, "as_dict"):
            return dep.as_dict()
        ids = self.client._msg_ids(dep)
        return {"ids": ids, "all": True, "success": True, "failure": False} if ids else None

    def _task_fields(self):
        targets = self.targets
        if targets is not None and targets != "all":
            targets = [targets] if isinstance(targets, int) else list(targets)
        else:
            targets = None
        return {"lb": True, "targets": targets, "after": self._dep(self.after),
                "follow": self._dep(self.follow), "timeout": self.timeout,
                "retries": self.retries, "time_limit": self.time_limit}

    def _apply(self, f, args, kwargs, fparts=None, single=True, fields=None, **extra):
        fields = fields or self._task_fields()
        fut = self.client._apply(f, args, kwargs, fparts=fparts, **fields, **extra)
        return AsyncResult(self.client, [fut], fname=getattr(f, "__name__", "apply"),
                           single=single)

    def map(self, f, *sequences, block=None, chunksize=None, ordered=True):
        """Apply `f` element-wise as tasks of `chunksize` elements (default: about 4
        chunks per engine)."""
        ar = self._map(f, sequences, chunksize=chunksize, ordered=ordered)
        return self._finish(ar, block)

    def _map(self, f, sequences, elementwise=True, chunksize=None, ordered=True):
        if not sequences:
            raise ValueError("map needs at least one sequence")
        seqs = [_sequence(s) for s in sequences]
        n = min(len(s) for s in seqs)
        if chunksize is None:
            chunksize = max(1, -(-n // (4 * max(1, len(self.client.ids)))))
        fparts = protocol.serialize(f)
        fields = self._task_fields()
        futures = []
        for lo in range(0, n, chunksize):
            chunks = tuple(list(s[lo:lo + chunksize]) if isinstance(s, range) else
                           s[lo:lo + chunksize] for s in seqs)
            futures.append(self.client._apply(f, chunks, {}, fparts=fparts, map=elementwise,
                                              **fields))
        return AsyncResult(self.client, futures, fname=getattr(f, "__name__", "map"),
                           mapping=True, ordered=ordered)


