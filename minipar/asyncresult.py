"""AsyncResult: the result of one or more requests, a ``concurrent.futures.Future``.

The client registers a ``_MsgFuture`` per request under its msg_id; its I/O thread
completes it when the reply comes (``set_result`` / ``set_exception``) and fills in its
``metadata``. An ``AsyncResult`` is a Future over one or more of those (a map's chunks, a
DirectView's engines); a single request's result is its own future (``_OneRequest``), and
gather's concatenation is computed from another's (``_Derived``). ipyparallel keeps these
in its own module too (``ipyparallel.client.asyncresult``).
"""

import _thread
import collections
import concurrent.futures
import contextlib
import datetime
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import warnings

from . import errors, protocol
from .errors import CompositeError, TimeoutError

log = logging.getLogger(__name__)

# How long the last engine may be gone before the client warns that its requests wait for
# one: a launcher restarts a dead engine within seconds, which is no news. 2..30 is reasonable.
NO_ENGINES_WARN_S = 5.0

IO_THREAD = "minipar-client-io"   # the name of each Client's I/O thread, where callbacks run


class _Condition(_thread.RLock):
    """A Future's condition: the RLock that concurrent.futures.Future's threading.Condition
    is made over, with threading.Condition's own wait and notify, which need nothing else
    of it. One object the garbage collector tracks instead of eight (a threading.Condition
    binds five of its lock's methods per instance, and makes the deque of its waiters
    before any thread waits). The client holds a result per task, and these were most of
    what its collector walked: a sixth of its CPU for a burst of quick tasks. The lock's
    methods stay the RLock's own, in C: a Ctrl-C cannot land inside one, between taking
    the lock's state and keeping it, as it could in a method written here."""

    _waiters = ()   # a deque once a thread waits: most results are done before anyone does
    notify = threading.Condition.notify
    wait_for = threading.Condition.wait_for
    _wait = threading.Condition.wait

    def wait(self, timeout=None):
        if not self._waiters:   # its caller holds the lock, as notify's does
            self._waiters = collections.deque()
        return self._wait(timeout)

    def notify_all(self):
        if self._waiters:
            self.notify(len(self._waiters))


class _Waiters(list):
    """A future's ``concurrent.futures`` waiters: ``wait`` and ``as_completed`` add one to
    each future they wait on. One added in a client's I/O thread (a done callback) to a
    future not settled is refused, as ar.result() there is: that thread is the one that
    would settle it, so the wait could end only with its timeout (without one: never), all
    replies held meanwhile. `done` is set as the future settles, before its callbacks run
    (as_completed adds one to futures done too: a wait on those ends at once). A list of
    this kind costs a future about 50 ns more than a list; nothing else is done per request."""

    __slots__ = ("done",)

    def append(self, waiter):
        if not getattr(self, "done", False) and threading.current_thread().name == IO_THREAD:
            _not_in_io_thread(None, "results with concurrent.futures.wait or as_completed (to "
                              "poll, read each future's done())")
        super().append(waiter)


class _Future(concurrent.futures.Future):
    """A Future that drops its callbacks once they have run. An AsyncResult's callback on
    each of its requests' futures refers back to it, so without this every finished
    result is garbage in a cycle, left for the garbage collector to find: a tenth of the
    client's CPU for quick tasks. This way it is freed as soon as it is dropped.

    Its state is concurrent.futures.Future's (what ``concurrent.futures.wait`` and
    ``as_completed`` read), made lighter for the collector: a _Condition, and the list
    of callbacks made when the first is added (most futures never get one). Its waiters
    are a _Waiters: those stdlib waits refuse to start in a done callback."""

    _done_callbacks = ()

    def __init__(self):   # Future.__init__'s attributes, but _Condition's
        self._condition = _Condition()
        self._state = concurrent.futures._base.PENDING
        self._result = self._exception = None
        self._waiters = _Waiters()

    def add_done_callback(self, fn):
        """Call fn(future) once it is done, as concurrent.futures does: in the client's
        I/O thread (here, at once, if it is done already). Not in an asyncio loop: a
        callback that sets an asyncio future or Event wakes no loop (its await may never
        end); hand over with loop.call_soon_threadsafe, or await the AsyncResult."""
        with self._condition:
            if not self._done_callbacks:
                self._done_callbacks = []
        super().add_done_callback(fn)

    def _invoke_callbacks(self):
        self._waiters.done = True   # settled: a callback may wait on it (see _Waiters)
        super()._invoke_callbacks()
        self._done_callbacks = ()

    def _started(self):
        # executes in the I/O thread: an engine said it started this request
        with self._condition:
            if not (self.done() or self.running()):
                self.set_running_or_notify_cancel()


# the keys of a request's metadata that hold lists (made when it is first read)
_LISTS = ("attempts", "after", "follow", "outputs")
# the times of a request's metadata and of a task record (each of its attempts' too)
_TIMES = ("submitted", "started", "completed", "received")


def _utc(seconds):
    """A ``time.time()`` stamp as ipyparallel gives its times: an aware datetime in UTC."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _dated(record):
    """`record` (a request's metadata, a task record) with its times made datetimes, in
    place, and returned. The controller and the I/O thread keep ``time.time()`` floats,
    cheaper to stamp and to send; they are made what ipyparallel's are once read, so
    that a reply costs no conversion that nobody asks for."""
    for key in _TIMES:
        seconds = dict.get(record, key)   # dict's: Metadata's [] and get come here
        if isinstance(seconds, float):
            record[key] = _utc(seconds)
    for attempt in dict.get(record, "attempts") or ():
        _dated(attempt)
    return record


def _seconds(query):
    """`query` (db_query's) with each datetime in it as time.time() seconds, as records
    keep times, _dated's inverse (a naive one is local time, as ``datetime.now()`` gives)."""
    if isinstance(query, datetime.datetime):
        return query.timestamp()
    if isinstance(query, dict):
        return {k: _seconds(v) for k, v in query.items()}
    if isinstance(query, (list, tuple, set, frozenset)):
        return [_seconds(v) for v in query]
    return query


def _fail_in_forked_child(futures, error):
    """Fail `futures` (a Client's pending requests) and the AsyncResults waiting on them
    with `error`, in a forked child, in its only thread: no reply can come there, and
    concurrent.futures.wait and as_completed, which read a future's state and not our
    methods, would wait forever. Their locks may have been held at the fork by a thread
    the child does not have, so each gets a new one, unheld; no callback runs (they are
    the parent's). Runs only at a fork: nothing on the normal path."""
    todo = list(futures)
    while todo:
        f = todo.pop()
        if f._state in (concurrent.futures._base.PENDING, concurrent.futures._base.RUNNING):
            f._condition = threading.Condition()
            f._state, f._exception = concurrent.futures._base.FINISHED, error
            todo.extend(cb.__self__ for cb in f._done_callbacks
                        if isinstance(getattr(cb, "__self__", None), concurrent.futures.Future))


def _forked(client_ref):
    # executes in a forked child (multiprocessing's fork), in its only thread: no lock
    # taken, no socket touched; the parent's requests fail here too (see above)
    client = client_ref()
    if client is not None and not client._closed:
        client._closed = errors.MiniparError(
            f"this Client was made in process {os.getppid()}, which forked this one "
            f"({os.getpid()}): its I/O thread runs there only. Make a new Client here")
        _fail_in_forked_child(list(client._futures.values()), client._closed)


class Metadata(dict):
    """A request's metadata: a dict whose keys read as attributes too
    (``ar.metadata.engine_id``), as ipyparallel's ``Metadata``. Its times are datetimes
    (see _dated); one the I/O thread stored after this dict was read is made one as it
    is read, for a caller that kept the dict (``md = ar.metadata; ar.wait()``)."""

    def __getitem__(self, key):
        return self._read(key, super().__getitem__(key))

    def get(self, key, default=None):   # a read by key too: its times as []'s
        return self._read(key, dict.get(self, key, default))

    def _read(self, key, value):
        # all its times made datetimes in place, and `value` too: the I/O thread may have
        # stored a reply's float (or attempts) over the one read since
        if key in _TIMES or key == "attempts":
            _dated(self)
            if isinstance(value, float):
                return _utc(value)
            for attempt in value if key == "attempts" and value else ():
                _dated(attempt)
        return value

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no metadata {key!r}; there are: {', '.join(self)}") from None


class ExecuteReply:
    """What an execute's ``get()`` gives for each engine, as ipyparallel's: its request's
    metadata, read as keys or attributes (``r['stdout']``, ``r.engine_id``), its
    ``execution_count``, and ``data``: the mime bundle of the value its code ended in
    (``{'text/plain': ...}``), or None for no value or an execute run silent. IPython
    shows it as %px does, ``Out[engine:n]: text``."""

    def __init__(self, msg_id, metadata):
        self.msg_id, self.metadata = msg_id, metadata
        self.execution_count = metadata.get("execution_count")

    @property
    def data(self):
        return (self.metadata["execute_result"] or {}).get("data")

    def __getitem__(self, key):
        return self.metadata[key]

    def __getattr__(self, key):   # only for names not found otherwise: metadata keys
        md = self.__dict__.get("metadata", {})   # not yet there while unpickled
        if key.startswith("_") or key not in md:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return md[key]

    def __repr__(self):
        text = (self.data or {}).get("text/plain", "")
        text = text[:29] + "..." if len(text) > 32 else text
        return f"<ExecuteReply[{self.execution_count}]: {text}>"

    def _repr_pretty_(self, p, cycle):   # IPython's display(r); the repr where no value
        md = self.metadata   # (ipyparallel's shows nothing: a list of them read [, ])
        p.text(_out_prompt(md["engine_id"], md["execute_result"]) or repr(self))


def _out_prompt(engine_id, execute_result):
    """An execute's result as ipyparallel shows it, ``Out[engine:n]: text`` ('' for none):
    a text of several lines starts on the next line."""
    text = (execute_result or {}).get("data", {}).get("text/plain", "")
    if "\n" in text and not text.startswith("\n"):
        text = "\n" + text
    return text and f"Out[{engine_id}:{execute_result.get('execution_count')}]: {text}"


class _MsgFuture(_Future):
    """The future of one message; ``metadata`` is filled in by the I/O thread."""

    _pieces = None   # output streamed in (I/O thread) and not yet in metadata: see below
    _watched = False   # another client's request, followed through get_result: not ours
    _copies = ()   # a broadcast request's: its copies' futures (see Client._broadcast)

    def __init__(self, msg_id=None, engine_id=None, kind=None):
        super().__init__()
        if msg_id is not None:   # else send_request sets it, as the msg_id is made
            self._request(msg_id, engine_id, kind)

    def _request(self, msg_id, engine_id, kind=None):
        # kind: the request's (protocol.APPLY...), for an error made here (see _engine_info)
        self.msg_id, self._pieces, self._kind = msg_id, None, kind
        # ipyparallel's keys all there once read (see metadata), so code reading them finds
        # them: engine_uuid is the str of engine_id, as db_query answers it (an engine is
        # named by its id), execute_result is an execute's (see ExecuteReply). Its empty
        # lists are made when it is first read: a result held but never asked for its
        # metadata leaves four objects fewer for the garbage collector.
        self._md = Metadata(msg_id=msg_id, engine_id=engine_id, submitted=time.time(),
                            started=None, completed=None, received=None,
                            stdout="", stderr="", status=None,
                            data={}, label=None, engine_uuid=None,
                            execute_input=None, execute_result=None, error=None)

    def set_exception(self, exception):
        self._md["error"] = exception   # ipyparallel's metadata['error']
        super().set_exception(exception)

    def result(self, timeout=None):   # ar.futures' raise in a done callback, as ar's do
        self._waitable(timeout)
        return super().result(timeout)

    def exception(self, timeout=None):
        self._waitable(timeout)
        return super().exception(timeout)

    def _waitable(self, timeout):
        if timeout != 0 and not self.done() and threading.current_thread().name == IO_THREAD:
            _not_in_io_thread(None, "a request's result")

    def _streamed(self, name, text):
        # executes in the I/O thread: a request's output, kept to be joined once read
        # rather than added to metadata's text at each piece, which copied all of it each
        # time (100 MB printed took the I/O thread 30 s)
        with self._condition:
            self._pieces = self._pieces or []
            self._pieces.append((name, text))

    def _joined(self):
        # the metadata with the output streamed in so far, its times floats still (the
        # I/O thread's view: it stores a reply's over them)
        if self._pieces:
            with self._condition:
                pieces, self._pieces = self._pieces or (), None   # () if another joined them
                for name in ("stdout", "stderr"):
                    self._md[name] += "".join(t for n, t in pieces if n == name)
        return self._md

    @property
    def metadata(self):
        md = self._joined()
        md["engine_uuid"] = None if md["engine_id"] is None else str(md["engine_id"])
        for key in _LISTS:
            if key not in md:   # setdefault: the I/O thread may store a reply's attempts
                md.setdefault(key, [])
        return _dated(md)


class _InLoop:
    """asyncio's callback on an AsyncResult, called in the loop that added it, as an asyncio
    future's are (a loop closed since then calls nothing); equal to the callback it wraps."""

    __slots__ = ("fn", "loop")

    def __init__(self, fn):
        import asyncio

        self.fn, self.loop = fn, asyncio.get_running_loop()

    def __call__(self, future):
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.fn, future)

    def __eq__(self, other):
        return self.fn == getattr(other, "fn", other)

    __hash__ = None


class AsyncResult(_Future, errors.SaysWhyAbsent, errors.ClientSide,
                  absent=errors.ASYNCRESULT_ABSENT):
    """The result of one or more requests: a ``concurrent.futures.Future``.

    ``get(timeout)`` returns the result (or raises the remote error), ``wait``,
    ``ready``, ``successful``, ``get_dict``, ``.r``, ``msg_ids``, ``metadata``,
    ``elapsed``, ``data``; iterating yields the results as they arrive (in order).
    ``running()`` once an engine has started one of its requests (it says so for one
    still running after its STREAM_INTERVAL_S, or in the reply); ``cancel()`` stops
    only what has not started (``abort()`` interrupts running requests too).
    ``len()`` and ``progress`` count a map's items. ``await ar``, progress bars,
    printed output, timings and timelines: the methods at the end.
    """

    _sizes = None                 # a map's items per request (len, progress)
    _striped = False              # a map's parts are round-robin (dist='r'): _interleave
    _return_exceptions = False    # get()'s default: map(..., return_exceptions=True)

    def __init__(self, client, futures, fname="", single=False, mapping=False, ordered=True):
        # mapping: a map's; "r" (its dist) for round-robin parts, set before any settles it
        super().__init__()
        self._client = client
        self._children = list(futures)
        self._fname = fname
        self._single = single       # one request whose value is the result (not a list)
        self._mapping = mapping     # each child returns a list: the result is their concatenation
        self._striped = mapping == "r"
        self._ordered = ordered
        self._left = len(self._children)
        if not self._children:
            self.set_result([])
        for f in self._children:
            f.add_done_callback(self._child_done)

    def _child_done(self, _):
        with self._condition:   # the Future's own (reentrant) lock
            self._left -= 1
            if self._left or self.cancelled():  # cancel() settles it under this lock
                return
        errs = [(f, f.exception()) for f in self._children if f.exception() is not None]
        if errs:
            if self._single:
                self.set_exception(errs[0][1])
            else:   # one the client made (its controller lost...) names its engine too
                self.set_exception(CompositeError(
                    f"one or more exceptions raised in {self._fname or 'the request'}",
                    [e if isinstance(e, errors.RemoteError) else errors.wrap(e, _engine_info(f))
                     for f, e in errs]))
            return
        values = [f.result() for f in self._children]
        try:
            if self._mapping:
                values = (_interleave if self._striped else _concat)(values)
            elif self._single:
                values = values[0]
        except Exception as e:   # in the I/O thread: unsettled, every wait on it would hang
            return self.set_exception(e)
        self.set_result(values)

    @property
    def msg_ids(self):
        return [f.msg_id for f in self._children]

    @property
    def futures(self):
        """One future per request, in the order sent: each a concurrent.futures.Future
        with ``msg_id`` and ``metadata`` (a request's own result, engine and output)."""
        return list(self._children)

    def result(self, timeout=None):
        self._reachable(timeout)
        if timeout is None and not self.done():   # else a timeout says why it waited
            _warn_if_no_engines(self._client)
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._not_ready(timeout) from None

    def exception(self, timeout=None):
        if not self.done():   # else it returns a closed Client's error, which result() raises
            self._reachable(timeout)   # (so does a wait in a done callback: it never ended)
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise self._not_ready(timeout) from None

    def _not_ready(self, timeout):
        """The TimeoutError of a wait of `timeout` s: how many requests are outstanding and,
        if none can run them, why (concurrent.futures' says nothing at all)."""
        why, left = _no_engines(self._client), sum(not f.done() for f in self._children)
        return concurrent.futures.TimeoutError(
            f"result not ready after {timeout:.3g} s ({left} of {len(self._children)} requests "
            f"outstanding){': ' if why else ''}{why}")

    def _reachable(self, timeout=None):
        # raise at once where no reply can come: its Client is closed (in a forked child,
        # made so at the fork: the I/O thread that would read the reply is the parent's;
        # there it is also the error of what was pending, see _fail_in_forked_child), or
        # this is a done callback, in the I/O thread that reads it
        closed = self._client is not None and self._client._closed
        if closed and (self._exception is closed or not self.done()):
            raise closed
        if timeout != 0 and not self.done():
            _not_in_io_thread(self._client, "a result")

    def get(self, timeout=None, return_exceptions=None, return_when=None):
        """The result; raises TimeoutError if not ready within `timeout` seconds. With
        `return_exceptions` (default: False, or the map's flag) a failed request's
        error is returned in place of its result (of each item of a failed map chunk).
        ``return_when=FIRST_EXCEPTION`` (ipyparallel's): raise the first request's error
        as soon as it fails, not once all are done (FIRST_COMPLETED: as ALL_COMPLETED)."""
        timeout = _timeout_s(timeout)   # before the try: it would take a TypeError for a timeout
        self._reachable(timeout)        # (and a closed Client's error)
        if return_when == concurrent.futures.FIRST_EXCEPTION and not (
                self._return_exceptions if return_exceptions is None else return_exceptions):
            began = time.monotonic()
            done, pending = _waited(self._client, self._children, timeout, return_when)
            failed = [f for f in self._children if f in done and f.exception() is not None]
            if failed and not self.done():
                raise failed[0].exception()
            if timeout is not None:   # what is left of it (all done: this settles at once)
                timeout = max(0.0, timeout - (time.monotonic() - began)) if pending else None
        try:
            return self.result(timeout)
        except KeyboardInterrupt as e:   # a wait given up on: a note (Python 3.11+) says why
            # it waited, unless a view call's block aborts what it sent (_aborted_on_ctrl_c)
            why = getattr(_guarded, "sent", None) is None and _no_engines(self._client)
            if why and hasattr(e, "add_note"):
                e.add_note(why)
            raise
        except Exception as e:
            if not self.done():   # ipyparallel's error.TimeoutError, the builtin one
                raise TimeoutError(*e.args) from None
            if self.cancelled() or not (self._return_exceptions if return_exceptions is None
                                        else return_exceptions):
                raise
        values = [f.exception() or f.result() for f in self._children]
        if self._mapping:
            values = [[v] * n if isinstance(v, BaseException) else v
                      for v, n in zip(values, self._sizes or [1] * len(values))]
            values = _interleave(values) if self._striped else list(
                itertools.chain.from_iterable(values))
        return values[0] if self._single else values

    r = property(lambda self: self.get(), doc="get(): the result, waited for")

    def wait(self, timeout=None, return_when=None):
        """Wait until done (at most `timeout` seconds); return whether it is. With
        `return_when` (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED), as ipyparallel's:
        wait as ``concurrent.futures.wait`` does on the parts of ``split()``, and return
        its (done, pending) sets of them."""
        timeout = _timeout_s(timeout)
        self._reachable(timeout)
        if timeout is None and not self.done():
            _warn_if_no_engines(self._client)
        if return_when is not None:
            return _waited(self._client, self.split(), timeout, return_when)
        _waited(self._client, [self], timeout)
        return self.done()

    def split(self):
        """One AsyncResult per request: each engine's result, or each map chunk's list."""
        if len(self._children) == 1:
            return (self,)
        parts = []
        for i, f in enumerate(self._children):
            part = AsyncResult(self._client, [f], self._fname, single=not self._mapping,
                               mapping=self._mapping)
            part._return_exceptions = self._return_exceptions
            part._sizes = self._sizes and self._sizes[i:i + 1]
            parts.append(part)
        return tuple(parts)

    def ready(self):
        return self.done()

    def successful(self):
        # ipyparallel's RuntimeError, where multiprocessing's AsyncResult raises ValueError
        if not self.done():
            raise RuntimeError("the result is not ready yet: wait() for it first")
        return self.exception() is None

    def get_dict(self, timeout=None):
        """The results as {engine_id: result}: one request per engine (of a DirectView's map
        or gather, each engine's part, where ipyparallel's pairs them with the first items)."""
        results = self.get(timeout)
        if self._single or len(self._children) == 1 and self._mapping:
            results = [results]
        elif self._mapping or isinstance(self, _Derived):   # concatenated: the parts instead
            results = [part.get() for part in self.split()]
        ids = [f.metadata["engine_id"] for f in self._children]
        if len(set(ids)) != len(ids):
            raise ValueError("get_dict needs one request per engine")
        return dict(zip(ids, results))

    result_dict = property(lambda self: self.get_dict(), doc="ipyparallel's get_dict()")

    def _md_of(self, key):
        md = [f.metadata if key is None else f.metadata[key] for f in self._children]
        return md[0] if self._single else md

    metadata = property(lambda self: self._md_of(None))
    stdout = property(lambda self: self._md_of("stdout"))
    stderr = property(lambda self: self._md_of("stderr"))
    engine_id = property(lambda self: self._md_of("engine_id"))
    data = property(lambda self: self._md_of("data"),
                    doc="What the requests published (datapub.publish_data) so far: a dict")

    @property
    def _submitted(self):   # the first request's: they are made in order
        return self._children[0].metadata["submitted"]

    @property
    def elapsed(self):
        """Seconds from submission to the last result (or to now, while running)."""
        if not self._children:   # nothing to wait for: done when made
            return 0.0
        ends = [f.metadata["received"] for f in self._children]
        end = max(ends) if None not in ends else _utc(time.time())
        return (end - self._submitted).total_seconds()

    # ipyparallel's send tracking (the `track` flag): minipar tracks no sends, and a buffer
    # of 64 KiB or more leaves without a copy, so it is safe to change once done
    sent = property(lambda self: self.done(),
                    doc="Whether the requests' buffers may be changed again: once done")

    def wait_for_send(self, timeout=-1):
        """Wait until the requests' buffers may be changed again (see `sent`); whether
        they may. Without send tracking that is when the requests are done."""
        return self.wait(timeout)

    @property
    def progress(self):
        return sum(n for f, n in zip(self._children, self._sizes or itertools.repeat(1))
                   if f.done())

    def __len__(self):
        return sum(self._sizes) if self._sizes else len(self._children)

    def running(self):
        return not self.done() and any(f.running() or f.done() for f in self._children)

    def __iter__(self):
        """Yield results as they arrive; raises the first remote error met (with the map's
        return_exceptions: yields it in place of each item it failed, as get() returns)."""
        self._reachable()
        if self._striped and self._ordered:   # item j is in part j % parts: all of them first
            for j, value in enumerate(self.get(return_exceptions=True)):
                failed = self._children[j % len(self._children)].exception()
                if failed is not None and not self._return_exceptions:
                    raise failed
                yield value
            return
        sizes = dict(zip(self._children, self._sizes or itertools.repeat(1)))
        for f in self._children if self._ordered else concurrent.futures.as_completed(sizes):
            if self._return_exceptions and not f.cancelled() and f.exception() is not None:
                value = [f.exception()] * sizes[f] if self._mapping else f.exception()
            else:
                value = f.result()
            yield from value if self._mapping else (value,)

    def abort(self):
        """Abort the requests not yet finished (queued ones fail with TaskAborted, running
        ones are interrupted). RuntimeError once all are done, as ipyparallel's."""
        if self.ready():   # cancel() says so by returning False, as a concurrent.futures'
            raise RuntimeError(f"{self!r} is done already, so there is nothing to abort: "
                               "check ar.ready() first, or call ar.cancel(), which says False")
        self._client.abort(self)

    def cancel(self):
        """Cancel, as a concurrent.futures.Future: False once it is running() or done;
        else its requests are aborted and True. What has not started never runs; one that
        started before its engine said so runs to its end, never interrupted (its result
        is dropped). ``abort()`` interrupts running requests."""
        if not self._cancel_local():
            return self.cancelled()   # True again for a cancelled one
        _abort_quietly(self._client, [self], queued_only=True)
        return True

    def _cancel_local(self):
        # under the lock _child_done takes: the last reply cannot settle it meanwhile
        with self._condition:
            if not (self._left > 0 and not self.running() and super().cancel()):
                return False
        # what an executor's worker does with a cancelled future: without it,
        # concurrent.futures.wait and as_completed never count it as done
        self.set_running_or_notify_cancel()
        return True

    def __getitem__(self, key):
        """As ipyparallel's: ``ar[i]``, ``ar[i:j]`` index the result (TimeoutError while it
        is not ready); ``ar['started']`` is that metadata (a list, or one value for a
        single result), as is the attribute ``ar.started`` for any metadata key."""
        if isinstance(key, str):
            return self._md_of(key)
        value = self.get(0)
        return ([value] if self._single else value)[key]

    def __getattr__(self, key):   # only for names not found otherwise: metadata keys
        if key.startswith("_") or not self._children or key not in self._children[0].metadata:
            return super().__getattr__(key)   # AttributeError: for ipyparallel's, saying why
        return self._md_of(key)

    def __repr__(self):
        state = "finished" if self.done() else "pending"
        return f"<AsyncResult({self._fname}): {state}>"

    UNSENT = ("pass its value, ar.get(), or make the task wait for it with the flag "
              "after=[ar] (view.temp_flags(after=[ar]))")   # chaining tasks, say

    # ---- watching it: await, progress, output, timings, timeline (integrations.py)

    def __await__(self):
        """``await ar`` in a coroutine: the result, without blocking the event loop."""
        import asyncio  # here, not at the top: it doubles the time of `import minipar`

        return asyncio.wrap_future(self).__await__()

    def add_done_callback(self, fn):
        # asyncio.wait (Python 3.11+) adds its own callback as to an asyncio future, whose
        # callbacks run in its loop: run in the I/O thread, it woke no loop (the wait hung)
        if getattr(fn, "__module__", None) == "asyncio.tasks":
            fn = _InLoop(fn)
        super().add_done_callback(fn)

    def remove_done_callback(self, fn):
        """As an asyncio future's (asyncio.wait calls it): drop the callbacks `fn`; how many."""
        with self._condition:
            kept = [cb for cb in self._done_callbacks if cb != fn]
            removed = len(self._done_callbacks) - len(kept)
            if removed:
                self._done_callbacks = kept
        return removed

    def _ready_for(self, what):
        if not self.done():   # as ipyparallel's: not a figure that looks measured
            raise errors.TimeoutError(f"{what}: the result is not ready yet; wait() first")

    @property
    def serial_time(self):
        """Seconds of computation: the sum of the requests' run times (once ready)."""
        self._ready_for("serial_time")
        return sum((md["completed"] - md["started"]).total_seconds()
                   for md in (f.metadata for f in self._children)
                   if md["started"] is not None and md["completed"] is not None)

    @property
    def wall_time(self):
        """Seconds from the first submission to the last result received (once ready)."""
        self._ready_for("wall_time")
        received = [f.metadata["received"] for f in self._children
                    if f.metadata["received"] is not None]
        return (max(received) - self._submitted).total_seconds() if received else 0.0

    def timedelta(self, start, end, start_key=min, end_key=max):
        """Seconds from `start` to `end`, as ipyparallel's: each is a datetime or a list
        of them (``ar.submitted``, ``ar.received``...), of which `start_key` (the earliest)
        and `end_key` (the latest) pick one."""
        start = start if isinstance(start, datetime.datetime) else start_key(start)
        end = end if isinstance(end, datetime.datetime) else end_key(end)
        return (end - start).total_seconds()

    def wait_interactive(self, interval=0.1, timeout=None, widget=None, return_when=None):
        """Wait (at most `timeout` s), drawing a progress bar on stderr every `interval`
        s: requests done/total, rate and time left (tqdm's bar when it is installed; in
        Jupyter a widget, whatever ipyparallel's `widget` says). `return_when`
        FIRST_COMPLETED or FIRST_EXCEPTION stops at the first request done, or failed.
        Returns None, as ipyparallel's (IPython shows no ``Out[n]``): ``ar.done()`` says
        whether all are done."""
        from .integrations import _wait_with_bar

        _wait_with_bar(self, self._fname or "tasks", interval, _timeout_s(timeout), return_when)

    def stream_output(self, interval=0.1, timeout=None, file=None):
        """Print what the requests print, as the engines print it, each line prefixed
        with its stream and engine (``[stdout:0] ...``, stderr to sys.stderr), from a
        thread of its own, from now until all are done (or `timeout` s). As ipyparallel's,
        a context manager: ``with ar.stream_output(): ar.get()`` streams while inside, and
        stops at the block's end. ``.wait()`` (or ``bool()``) waits until it stops and
        says whether all are done."""
        from .integrations import _OutputStream

        return _OutputStream(self, interval, _timeout_s(timeout), file)

    def wait_for_output(self, timeout=-1):
        """Wait until all the requests' output is in (at most `timeout` s; -1 or None: no
        limit); return whether it is. Output comes with each reply: this is ``wait``."""
        return self.wait(timeout)

    def display_outputs(self, groupby="type", result_only=False, file=None):
        """Wait for the requests, then print their stdout and stderr as ipyparallel does
        (``[stdout:0] ...``, stderr to sys.stderr; both to `file` if given), what display()
        published (``[output:0]``, shown again in IPython, else its text/plain), and then
        an execute's result, ``Out[0:3]: ...``, grouped by 'type' (all stdout, then all
        stderr...; 'order' is the same: display data comes with the reply) or by 'engine'.
        With `result_only`, the results alone."""
        if groupby not in ("type", "engine", "order"):
            raise ValueError(f"groupby must be 'type', 'engine' or 'order', not {groupby!r}")
        self.wait_for_output()
        from .classic import _display_outputs

        _display_outputs(self, groupby, file, result_only)

    def timeline(self, filename=None, title=None):
        """A Gantt chart of the requests, per engine: see ``plot_timeline``."""
        from .integrations import plot_timeline

        return plot_timeline(self, filename, title)


class _OneRequest(AsyncResult):
    """The result of one request whose value is the result (an apply to one engine, a
    load-balanced task), which is also that request's future: the I/O thread settles it
    directly. Two futures joined by a callback cost a fifth of the client's CPU for a
    quick task."""

    _request = _MsgFuture._request   # called by Client.send_request, which knows the msg_id
    metadata, _joined, _streamed, _pieces, _watched = (_MsgFuture.metadata, _MsgFuture._joined,
                                                       _MsgFuture._streamed, None, False)
    running = concurrent.futures.Future.running
    _single, _mapping, _ordered = True, False, True

    def __init__(self, client, fname):
        _Future.__init__(self)
        self._client = client
        self._fname = fname

    @property
    def _children(self):
        return (self,)

    @property
    def _left(self):
        return 0 if self.done() else 1

    def set_result(self, result):
        self._settle(super().set_result, result)

    def set_exception(self, exception):
        self._md["error"] = exception   # ipyparallel's metadata['error']
        self._settle(super().set_exception, exception)

    def _settle(self, setter, value):
        # a reply can arrive just as the result is cancelled: it is no longer wanted
        try:
            setter(value)
        except concurrent.futures.InvalidStateError:
            if not self.cancelled():
                raise


class _Derived(AsyncResult):
    """An AsyncResult whose value is computed from another's (gather's concatenation)."""

    _single, _mapping, _ordered, _left = False, False, True, 0

    def __init__(self, client, base, transform):
        concurrent.futures.Future.__init__(self)
        self._waiters = _Waiters()   # it is settled in the I/O thread too
        self._client, self._transform = client, transform
        self._children = base._children
        self._fname = base._fname
        base.add_done_callback(self._base_done)

    def _base_done(self, base):
        if base.exception() is not None:
            self.set_exception(base.exception())
        else:
            try:
                self.set_result(self._transform(base.result()))
            except Exception as e:
                self.set_exception(e)


def _array_concatenate(parts):
    """numpy's function that joins `parts` into one array when each is an array of one or
    more dimensions (ipyparallel's test: an ndarray, a subclass too), else None. Masked
    arrays take numpy.ma's: numpy.concatenate would drop their masks, unmasking values."""
    numpy = sys.modules.get("numpy")   # no part is an array unless numpy was imported
    if numpy is None or not all(isinstance(p, numpy.ndarray) and p.ndim for p in parts):
        return None
    ma = sys.modules.get("numpy.ma")
    masked = ma is not None and any(isinstance(p, ma.MaskedArray) for p in parts)
    return ma.concatenate if masked else numpy.concatenate


def _concat(parts):
    """The parts of a map, a parallel function's call or a gather joined as ipyparallel
    joins them: lists and tuples into one list, numpy arrays into one array; other
    values (the sum each engine made of its part, say) listed as they are."""
    if all(isinstance(p, (list, tuple)) for p in parts):
        return list(itertools.chain.from_iterable(parts))
    concatenate = _array_concatenate(parts)
    return list(parts) if concatenate is None else concatenate(parts)


def _interleave(parts):
    """The parts of a round-robin map, call or gather (dist='r': item j of part p was item
    j * len(parts) + p) joined back in that order, as ipyparallel's RoundRobinMap joins
    them: lists and tuples into one list, numpy arrays into one array; other values
    listed as they are."""
    if all(isinstance(p, (list, tuple)) for p in parts):
        return [p[j] for j in range(max(map(len, parts), default=0)) for p in parts
                if j < len(p)]
    concatenate = _array_concatenate(parts)
    if concatenate is not None:
        joined = concatenate(parts)   # its shape and dtype; then each item's place
        for i, p in enumerate(parts):
            joined[i::len(parts)] = p
        return joined
    return list(parts)


def _timeout_s(timeout):
    """The seconds a wait's `timeout` allows: a number, or None for no limit. A negative
    one is no limit too (ipyparallel's ``timeout=-1``); NaN is a ValueError, and anything
    else (a str, a list, a bool) a TypeError at once, not a wait that fails late."""
    if timeout is None:
        return None
    import numbers   # here, not at import: only a wait with a timeout pays for it

    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not "
                        f"{type(timeout).__name__} {timeout!r:.40}")
    if timeout != timeout:
        raise ValueError("timeout=nan: give a number of seconds, or None for no limit")
    return timeout if timeout >= 0 else None


def _seconds_check(what):
    """A flag's check: seconds (int or float, as the controller takes), None or 0 for no
    limit; < 0 and NaN are a ValueError, what is no number a TypeError."""
    def check(name, value):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and value >= 0):
            raise (ValueError if number else TypeError)(
                f"{name}={value!r:.40}: give the seconds {what}, or None (or 0) for no limit")
    return check


def _check_count(name, value):
    """A flag's check: a count, an int >= 0 (what is no int: a TypeError)."""
    if type(value) is not int or value < 0:
        raise (ValueError if type(value) is int else TypeError)(
            f"{name}={value!r:.40}: give a count, an int >= 0 (0: none)")


def _no_engines(client):
    """Why requests wait, where no engine is registered ("" where one is): said by get()'s
    TimeoutError, by a wait that starts then, and by the client once the last one left
    (Client._on_engine_gone). Tasks wait for an engine by design; the user must know."""
    if client is None or client._engines:
        return ""
    # (id, time.time(), why) of the last to leave, or ([ids], ...) of those not back after the
    # controller restarted (_not_back): I/O thread
    gone = client._last_gone
    at = gone and time.strftime('%H:%M:%S', time.localtime(gone[1]))
    if gone is None:
        last = "None was since this client connected."
    elif isinstance(gone[0], list):
        last = (f"Engine(s) {', '.join(gone[2])} were registered before the controller "
                f"restarted (found at {at}) and have not registered again: start them again if "
                "they stopped (an engine gives up on a controller silent for its "
                "--max-missed-heartbeats)")
    else:   # a death's why ends with its log's last lines
        last = f"The last one, {gone[0]}, left at {at}: {gone[2]}"
    return ("no engine is registered; the tasks wait for one: start engines (rc.wait_for_"
            f"engines(n) waits for them) or abort them (rc.abort()). {last}")


def _not_back(client, header, engines):
    """What the controller's answer to connect (`header`; `engines`, its list), the first or
    a restarted controller's, says of the engines of before the restart not registered again
    (`before`): for _no_engines and _not_back_yet, ([ids], time.time(), [each id and where it
    ran]) of those, and of the client's list, that it lacks (a client connected after the
    restart knows only it).
    To a client that reconnected, it holds direct requests for them for `hold_s` (see
    Controller._route): Client.resolve_targets lets them through meanwhile, as the client
    took them for registered till then (`client._coming_back`: ids, monotonic deadline); a
    new client's targets are those registered, as ever. Holding _engines_changed."""
    if client._roster and client._roster[0] == header.get("session"):
        return   # the controller of the list held
    before = {int(k): v for k, v in (header.get("before") or {}).items()}
    if client._roster:
        client._coming_back = (before, time.monotonic() + header.get("hold_s", 0))
    before = {**client._engines, **before}
    if missing := sorted(set(before) - set(engines)):
        client._last_gone = (missing, time.time(), [
            f"{e} (pid {before[e].get('pid')} on {before[e].get('host')})" for e in missing])


def _not_back_yet(client):
    """For wait_for_engines' TimeoutError and resolve_targets' NoEnginesRegistered: the
    engines of before the controller restarted not registered again (_not_back), or ""."""
    gone = client._last_gone
    if gone is None or not isinstance(gone[0], list):
        return ""
    left = [where for e, where in zip(gone[0], gone[2]) if e not in client._engines]
    if not left:
        return ""
    return (f"; not registered again since the controller restarted: engine(s) "
            f"{', '.join(left)}: start them again if they stopped")


def _not_registered(client, eid, ids):
    """resolve_targets' IndexError's text for engine `eid`, not in `ids` (those registered).
    One registered before the controller restarted and not back (_not_back) is named so:
    "not registered" alone reads as a wrong id to a client connected after the restart."""
    gone = client._last_gone
    if gone is not None and isinstance(gone[0], list) and eid in gone[0]:
        return (f"engine {gone[2][gone[0].index(eid)]} was registered before the controller "
                f"restarted and has not registered again yet: start it again if it stopped, "
                f"rc.wait_for_engines(n) waits for engines, or pick others; registered: {ids}")
    return (f"engine {eid!r} is not registered; registered: {ids} (a view keeps the engines "
            "it was made with: rc.direct_view() follows all)")


def _last_engine_gone(client, eid, why):
    """Note that engine `eid`, the last, left because `why` (for _no_engines); the client's
    timer (deadline, function) that logs, if none came back by then, what now waits.
    Executes in the I/O thread: it logs (warnings are the user's, see _warn_if_no_engines)."""
    gone = client._last_gone = (eid, time.time(), why)

    def check():
        n = len(client.pending_requests())
        if client._last_gone is gone and n and not client._engines:
            log.warning("%d requests are outstanding, and %s", n, _no_engines(client))
    return time.monotonic() + NO_ENGINES_WARN_S, check


def _warn_if_no_engines(client):
    """Warn where a wait without a timeout starts with no engine to run what it waits for
    (else silent, maybe for ever): once per line of the caller, the first outside minipar
    and concurrent.futures (a map_sync's, an Executor.map's), as warnings are."""
    why = _no_engines(client)
    if why:
        level, frame = 1, sys._getframe()
        while frame.f_back and frame.f_globals.get("__name__", "").startswith(
                (__package__ + ".", "concurrent.futures.")):
            level, frame = level + 1, frame.f_back
        warnings.warn(why, RuntimeWarning, stacklevel=level)


# .sent: {client: [its futures]} of the requests this thread made inside the outermost
# _aborted_on_ctrl_c call it is in; None outside one
_guarded = threading.local()


def _aborted_on_ctrl_c(call, *args, **kwargs):
    """``call(*args, **kwargs)``, a call that sends requests: a Ctrl-C anywhere in it (as
    it sends, as it waits, or between the two) aborts those it sent, as the call then
    returns nothing to abort them with. Calls nest: the outermost one aborts.
    Client.send_request notes each request for it (``_sent``) before the request leaves.
    A function, not a with block: a Ctrl-C in a generator context manager's __enter__ or
    __exit__ would skip its cleanup and leave `_guarded.sent` set."""
    if getattr(_guarded, "sent", None) is not None:
        return call(*args, **kwargs)
    sent = {}
    try:   # set inside the try: a Ctrl-C right after it must not leave it set for good
        _guarded.sent = sent
        return call(*args, **kwargs)
    except KeyboardInterrupt:
        for client, futures in sent.items():
            _abort_quietly(client, [AsyncResult(client, futures)])
        raise
    finally:
        _guarded.sent = None


def _ctrl_c_aborts(call):
    """Decorator: `call` runs inside _aborted_on_ctrl_c from its first line, so a Ctrl-C
    between its send and its wait aborts too. Every view call that sends requests (and
    may wait for them) has it, but apply_async: the quickest, returning at once. One with
    a `block` parameter has it checked first (see _blocking; None: its view's `block`), so
    in a done callback a blocking execute, push or scatter raises before it sends."""
    params = inspect.signature(call).parameters
    param = params.get("block")
    at = list(params).index("block") if param and param.kind == param.POSITIONAL_OR_KEYWORD \
        else None

    @functools.wraps(call)
    def guarded(*args, **kwargs):
        if param is not None:
            block = kwargs.get("block", args[at] if at is not None and len(args) > at
                               else param.default)   # None, or a classic call's own default
            view = args[0]   # a view, MultiEngineClient or TaskClient (which has no `block`)
            _blocking(view.client, getattr(view, "block", False) if block is None else block)
        return _aborted_on_ctrl_c(call, *args, **kwargs)
    return guarded


def _sent(client, futures):
    """Register `client`'s requests `futures`, which this thread is about to send (the I/O
    thread settles them as replies come), and note them for _aborted_on_ctrl_c."""
    for f in futures:
        client._futures[f.msg_id] = f
    sent = getattr(_guarded, "sent", None)
    if sent is not None:
        sent.setdefault(client, []).extend(futures)


def _noted(f, fields):
    """`f`, its metadata given what a request's header `fields` say ipyparallel's has: its
    label, the msg_ids it waited on (after, follow), an execute's code. Returns `f`."""
    if "label" in fields:
        f._md["label"] = fields["label"]
    for key in ("after", "follow"):
        if fields.get(key):
            f._md[key] = fields[key]["ids"]
    if "code" in fields:
        f._md["execute_input"] = fields["code"]
    return f


def _fail(client, futures, err):
    """Fail `client`'s `futures` (None ones skipped) with `err`; it waits for them no more."""
    for f in list(futures):
        if f is not None:
            client._futures.pop(f.msg_id, None)
            with contextlib.suppress(concurrent.futures.InvalidStateError):   # done already
                f.set_exception(err)


def _next_result(outstanding, ordered, return_exceptions):
    """imap's next value: the first of the futures `outstanding` (a deque, in the order
    sent) or, not `ordered`, the first of those done, which leaves it once waited for."""
    done = outstanding if ordered else concurrent.futures.wait(
        outstanding, return_when=concurrent.futures.FIRST_COMPLETED).done
    fut = next(f for f in outstanding if f in done)   # the first sent (of those done)
    value = fut.exception() if return_exceptions and fut.exception() else fut.result()
    outstanding.remove(fut)   # after its wait: a Ctrl-C in it aborts it with the rest
    return value


def _engine_info(f):
    """Where request future `f` went, as an engine's error says it: ``[engine_id:kind]``."""
    md = getattr(f, "_md", {})
    info = {"engine_id": md.get("engine_id"), "msg_id": getattr(f, "msg_id", None),
            "kind": getattr(f, "_kind", None)}
    return {k: v for k, v in info.items() if v is not None}


def _never_sent():
    """The error of a request a Ctrl-C stopped before it left (pending for ever, else)."""
    return errors.TaskAborted("aborted: it never reached the controller (a Ctrl-C cut its "
                              "send short), so it never ran")


def _in_io_thread(client):
    """Whether this is `client`'s I/O thread, where done callbacks run: a wait there for
    anything the controller sends would wait for ever, as that thread is its reader."""
    return client is not None and threading.current_thread() is client._io


def _not_in_io_thread(client, what):
    """Raise where a wait for `what`, which the controller sends, is made in a done
    callback: that runs in `client`'s I/O thread, the one that would read it, so the wait
    could only end with its timeout (without one: never), all replies held meanwhile.
    `client` None: the caller found this is a client's I/O thread (a request's future
    does not know its client)."""
    if client is None or _in_io_thread(client):
        raise RuntimeError(f"cannot wait for {what} in a done callback: callbacks run in the "
                           "client's I/O thread, which receives what the wait is for; wait in "
                           "another thread, or chain callbacks (add_done_callback)")


def _waited(client, futures, timeout, return_when=concurrent.futures.ALL_COMPLETED):
    """``concurrent.futures.wait(futures, timeout, return_when)`` (`timeout` a float or
    None), which raises at once in a done callback unless a poll (timeout 0) or all are
    done: see _not_in_io_thread. A poll is made here: the stdlib's would add waiters, which
    _Waiters refuses there (it cannot tell a poll)."""
    if timeout == 0:
        done = {f for f in futures if f.done()}
        return concurrent.futures._base.DoneAndNotDoneFutures(done, set(futures) - done)
    if not all(f.done() for f in futures):
        _not_in_io_thread(client, "results")
    return concurrent.futures.wait(futures, timeout, return_when)


def _blocking(client, block):
    """`block`, a view call's flag, checked before its requests are sent: with it, in a
    done callback, it raises (see _not_in_io_thread), where its tasks would run unwaited."""
    if block:
        _not_in_io_thread(client, "a blocking call's result (use the *_async call)")
    return block


def _abort_ids(client, msg_ids, queued_only=False):
    """``client._abort(msg_ids, queued_only)``: how many were pending. In a done callback
    (the I/O thread, which reads the answer) the abort is sent, its answer not waited for
    (None): "first failure aborts the rest" works in a callback. So at interpreter exit,
    when the I/O thread has stopped for good (a cancel() in a __del__, or a map generator
    finalized then): a wait there lasted the client's timeout (10 s) per call. At exit the
    send lock is waited for a second at most: finalization stops a daemon thread where it
    stands, and the I/O thread stopped in a flush keeps it for ever (the exit hung)."""
    finalizing = sys.is_finalizing()
    if not (finalizing or _in_io_thread(client)):
        return client._abort(msg_ids, queued_only)
    if msg_ids and finalizing and (getattr(client, "_lock_lost", False)
                                   or not client._send_lock.acquire(timeout=1.0)):
        client._lock_lost = True   # the next call waits no more
        log.warning("at exit: the abort of %d requests could not be sent (the client's I/O "
                    "thread stopped holding its lock); they may run on", len(msg_ids))
    elif msg_ids:
        if finalizing:   # free: nothing else takes it now
            client._send_lock.release()
        client._send_query(protocol.ABORT, dict(msg_ids=msg_ids, queued_only=queued_only))
    return None


def _abort_quietly(client, ars, queued_only=False):
    """Abort the requests of AsyncResults `ars` still waiting for their replies (a
    cancelled _OneRequest is done, but its request is not), in one round trip; with
    `queued_only`, those that have not started (one that started since its engine last
    said so runs to its end, its reply dropped). A failure is logged, not raised:
    cancel() must work while the controller is gone. While the connection is lost no
    answer can come: the abort waits in the client's queue for the controller to come
    back (with --reuse), and is not waited for. Nor is it in a done callback, which runs
    in the I/O thread: the answer comes through that thread, so waiting for it there
    stalled the client for its timeout per cancel() while the tasks it named started."""
    ids = [f.msg_id for ar in ars for f in ar._children if f.msg_id in client._futures]
    if ids and not client._closed:
        try:
            lost = client._lost_at
            if lost is None:
                return _abort_ids(client, ids, queued_only)
            client._send_query(protocol.ABORT, dict(msg_ids=ids, queued_only=queued_only))
            log.warning("the controller is unreachable (lost %.1f s ago): the %d request(s) "
                        "stopped here are aborted (or failed) when it comes back, or fail if "
                        "it is not back within %s s of its loss (reconnect_timeout)",
                        time.monotonic() - lost, len(ids), client.reconnect_timeout)
        except Exception as e:
            log.warning("could not abort %d requests: %s: %s", len(ids), type(e).__name__, e)
