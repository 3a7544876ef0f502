"""The classic IPython.kernel API (MultiEngineClient, TaskClient, StringTask, MapTask,
TaskResult, PendingResult) and the IPython magics (%px, %%px, %autopx, %pxresult,
%pxconfig), which a Client made inside IPython registers itself, as ipyparallel's does.

Scripts written for `from IPython.kernel import client` run with `from minipar import
client` (in Python 3 syntax). Everything here is a facade over client.py's Client and
views (their public API, plus ``send_request``, ``send_apply`` and ``query``), with the
classic names, defaults and printed forms:

    MultiEngineClient.execute/push/...  ──▶ DirectView(client, ids)  ──▶ AsyncResult
        block=True: the value                 block=False: PendingResult(AsyncResult)
    TaskClient.run(StringTask/MapTask)  ──▶ client.send_apply(lb=True, depend=, recovery=,
        int task id ──▶ get_task_result ──▶ TaskResult        dormant=, clear_before=...)
    %px, %%px, %autopx, %pxresult       ──▶ DirectView.execute, outputs printed as
                                            ipyparallel's ([stdout:0] ...); for a
                                            MultiEngineClient, its execute: <Results List>

Where minipar differs from IPython.kernel, on purpose:
- ``with mec:`` closes mec at the block's end, unless the block calls client.remote()
  first (then the rest of it runs on mec's targets, read back from its file or cell).
- get_result(i) reads this client's history (the last EXECUTE_HISTORY execute results
  per engine made through it or its magics): i=None or i < 0 counts back from the last,
  i >= 0 is the command number (the `number` shown as In [n]).
- Task ids are small integers counted per TaskClient, not per controller.
- get_task_result of a failed StringTask returns a TaskResult whose `failure` is set (its
  `ns`, `tr[key]` and `raise_exception()` raise it); a failed MapTask's result raises.
- A task's `depend(properties)` runs in the controller (the scheduler calls it for each
  engine), so it must be quick and picklable by value; one the controller cannot unpickle
  fails the task with InvalidDependency. A task waiting for a matching engine starts when
  an engine's properties change: spin() is a plain round trip.
"""

import collections
import concurrent.futures
import functools
import itertools
import linecache
import re
import shlex
import sys
import textwrap
import threading
import types

from . import protocol
from .asyncresult import _ctrl_c_aborts, _out_prompt
from .client import AsyncResult, Client, DirectView, interactive
from .errors import CompositeError, NoEnginesRegistered, RemoteError

# Execute results kept per engine for get_result / %result; each holds the command's
# output text, so 10..1000 is reasonable.
EXECUTE_HISTORY = 100

_NOTHING = object()

# The classic scripts' `TaskClient(client.default_task_address)`: a client finds the
# controller through its connection file, and None means the default profile's.
default_address = default_task_address = None


class ResultList(list):
    """The results of ``execute``: one dict per engine (``id``, ``number``, ``input``,
    ``stdout``, ``stderr``, and ``error`` when it failed), shown as a ``<Results List>``."""

    def __repr__(self):
        lines = ["<Results List>"]
        for r in self:
            eid, n = r["id"], r["number"]
            lines.append(f"[{eid}] In [{n}]: {r['input']['raw'].rstrip()}")
            shown = [f"[{eid}] {label}[{n}]: {r[key].rstrip()}"
                     for key, label in (("stdout", "Out"), ("stderr", "Err"), ("error", "Err"))
                     if r.get(key)]
            # a blank line after each engine's outputs, or its input of several lines (a
            # `with mec:` block), as IPython.kernel's lines ended in their text's newline
            lines += shown + [""] * bool(shown or "\n" in r["input"]["raw"].strip())
        return "\n".join(lines).rstrip("\n")


class PendingResult:
    """A classic non-blocking result: ``get_result(default=None, block=True)``, ``r`` and
    ``add_callback``. `future` is an AsyncResult (or any concurrent.futures.Future);
    `transform` turns its value into what get_result returns."""

    def __init__(self, future, transform=None, method=""):
        self.future = future
        self._transform = transform
        self._method = method
        self._callbacks = []
        self._value = _NOTHING
        self._lock = threading.Lock()

    def get_result(self, default=None, block=True):
        """The result; with ``block=False``, `default` while it is not ready. A failure
        raises again at every call (several engines' as one CompositeError)."""
        if not block and not self.future.done():
            return default
        with self._lock:
            if self._value is _NOTHING:
                try:
                    value = self.future.result()
                except CompositeError as error:
                    # named e, a plain local that outlives the except clause: %debug
                    # opens in this frame, where the classic documents inspect e.elist
                    e = CompositeError("one or more exceptions from call to method: "
                                       f"{self._method}", error.elist)
                    raise e from None
                self._value = value if self._transform is None else self._transform(value)
            while self._callbacks:  # each runs once, on the result of the one before
                f, args, kwargs = self._callbacks.pop(0)
                self._value = f(self._value, *args, **kwargs)
            return self._value

    @property
    def r(self):
        return self.get_result(block=True)

    def add_callback(self, f, *args, **kwargs):
        """Make get_result return ``f(result, *args, **kwargs)``; callbacks chain."""
        with self._lock:
            self._callbacks.append((f, args, kwargs))

    def __repr__(self):
        state = "done" if self.future.done() else "pending"
        return f"<PendingResult {self._method}: {state}>"


def _pending(value):
    """A PendingResult that is already done (for results this client already holds)."""
    f = concurrent.futures.Future()
    f.set_result(value)
    return PendingResult(f, method="get_result")


def _execute_entry(f, code):
    md = f.metadata
    entry = {"id": md["engine_id"], "number": md.get("execution_count"),
             "input": {"translated": code, "raw": code}, "stdout": md["stdout"],
             "stderr": md["stderr"]}
    e = f.exception()
    if e is not None:
        entry["error"] = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
    return entry


class _History:
    """The execute results of one MultiEngineClient per engine, for its get_result and
    %result. A get_result waits for the executes still outstanding on
    its engines, as the engines' own queues made a classic get_result wait."""

    def __init__(self):
        self._entries = {}          # engine id -> deque of execute entries
        self._outstanding = set()   # execute futures not recorded yet
        self._waiters = []          # (set of those futures, callback when it empties)
        self._lock = threading.Lock()

    def track(self, futures, code):
        with self._lock:
            self._outstanding.update(futures)
        for f in futures:
            f.add_done_callback(functools.partial(self._remember, code))

    def _remember(self, code, f):
        # executes in the client's I/O thread, in reply order
        entry = _execute_entry(f, code)
        with self._lock:
            self._entries.setdefault(entry["id"], collections.deque(
                maxlen=EXECUTE_HISTORY)).append(entry)
            self._outstanding.discard(f)
            for waiting, _ in self._waiters:
                waiting.discard(f)
            ready = [callback for waiting, callback in self._waiters if not waiting]
            self._waiters = [w for w in self._waiters if w[0]]
        for callback in ready:
            callback()

    def get(self, ids, i=None, block=True):
        """The ResultList of command `i` (see get_result) on each of `ids` having it;
        with block=False a PendingResult."""
        done = concurrent.futures.Future()

        def resolve():
            try:
                done.set_result(self._found(ids, i))
            except IndexError as e:
                done.set_exception(e)

        with self._lock:
            waiting = {f for f in self._outstanding if f.metadata["engine_id"] in ids}
            if waiting:
                self._waiters.append((waiting, resolve))
        if not waiting:
            resolve()
        pr = PendingResult(done, method="get_result")
        return pr.get_result() if block else pr

    def _found(self, ids, i):
        found = ResultList()
        with self._lock:
            for eid in ids:
                entries = self._entries.get(eid, ())
                if i is None or i < 0:
                    k = -1 if i is None else i
                    if len(entries) >= -k:
                        found.append(entries[k])
                else:
                    found.extend(e for e in entries if e["number"] == i)
        if not found:
            which = "no execute result" if i is None else f"no execute result {i}"
            raise IndexError(f"{which} on engines {ids} in this client's history (the last "
                             f"{EXECUTE_HISTORY} per engine of those executed through it)")
        return found


@interactive
def _pickled(keys):
    """Runs on an engine: the values of `keys` (a name or a list) as pickled bytes."""
    import cloudpickle

    ns = globals()
    names = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in names if k not in ns]
    if missing:
        raise NameError(f"name {missing[0]!r} is not defined")
    pickled = [cloudpickle.dumps(ns[k]) for k in names]
    return pickled[0] if isinstance(keys, str) else pickled


@interactive
def _unpickle_into_namespace(namespace):
    """Runs on an engine: unpickle the values of {name: pickled bytes} into the namespace."""
    import pickle

    globals().update({k: pickle.loads(v) for k, v in namespace.items()})


@interactive
def _string_task(expression, push, pull, _engine_module=__package__ + ".engine"):
    """Runs on an engine for a StringTask: push, execute, and return {name: value} of pull.

    While it runs, `id` is the engine's number (pulled as a plain int), as IPython.kernel's
    engines had it: the task document's ``Task("a = str(id)", pull=["a", "id"])``. It is
    the builtin's, for the task only, so the namespace holds no more names than before (a
    pushed or assigned `id` wins), and callable as the builtin too, so the task's code may
    still call ``id(obj)``; later requests have the engine's builtins. (`_engine_module` is
    a default, not a global: an interactive function's globals join the namespace.)"""
    import builtins
    import importlib

    class EngineNumber(int):
        __call__ = staticmethod(builtins.id)

    ns = globals()
    ns.update(push)
    eid = importlib.import_module(_engine_module).engine_id()
    # In the builtins module itself, not a copy set as the namespace's __builtins__:
    # Python 3.9 runs exec'd code with the builtins of the frame calling exec when both
    # share globals, as here. Other threads calling id() meanwhile get the builtin's answer.
    builtin_id = builtins.id
    if eid is not None:
        builtins.id = EngineNumber(eid)
    try:
        exec(compile(expression, "<StringTask>", "exec"), ns)
        missing = [k for k in pull if k not in ns and (k != "id" or eid is None)]
        if missing:
            raise NameError(f"name {missing[0]!r} is not defined: the task's pull names a "
                            "variable its expression did not set")
        values = {k: ns[k] if k in ns else eid for k in pull}
        return {k: int(v) if type(v) is EngineNumber else v for k, v in values.items()}
    finally:
        builtins.id = builtin_id


_string_task.__name__ = "StringTask"   # what rc.status and minipar.top show an engine runs


class _Mapper:
    """What ``mapper()`` returns: ``map(func, *sequences)`` with its options fixed."""

    def __init__(self, map_function, **options):
        self._map = map_function
        self.options = options

    def map(self, func, *sequences):
        return self._map(func, *sequences, **self.options)


def _parallel(mapper):
    """The decorator ``parallel()`` returns: calling the function maps it over sequences."""
    def decorator(f):
        @functools.wraps(f)
        def call(*sequences):
            return mapper.map(f, *sequences)
        return call
    return decorator


def _names(keys):
    return None if keys is None else [keys] if isinstance(keys, str) else list(keys)


def _task_ids(taskids):
    return [taskids] if isinstance(taskids, int) else list(taskids)


class _ClassicClient:
    """What MultiEngineClient and TaskClient share: a Client of their own, or `client`."""

    def __init__(self, url_file=None, profile=None, profile_dir=None, timeout=10,
                 client=None):
        if isinstance(url_file, (tuple, list)):   # IPython.kernel's (host, port)
            raise TypeError(
                f"{type(self).__name__}({tuple(url_file)!r}): minipar connects through the "
                "controller's connection file, not an address: pass that file's path (the "
                "controller writes minipar-client.json in its profile's security folder; copy "
                "it to another machine, with the controller started with --ip '*' --location "
                "HOST), a profile=, or nothing for the default profile")
        self._own_client = client is None
        self.client = Client(url_file, profile, profile_dir, timeout) if client is None \
            else client

    def close(self):
        """Close the connection (unless it was given as `client`)."""
        if self._own_client:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MultiEngineClient(_ClassicClient):
    """The classic multiengine interface: every engine addressed explicitly.

    It connects as ``Client`` does (or shares `client`). The attributes ``targets``
    ('all', an id or a list of ids) and ``block`` (default True) are the defaults of every
    method's ``targets=`` and ``block=``. Results are lists with one item per target
    engine; with block=False methods return a PendingResult.
    """

    def __init__(self, url_file=None, profile=None, profile_dir=None, timeout=10,
                 client=None):
        super().__init__(url_file, profile, profile_dir, timeout, client)
        self.targets = "all"
        self.block = True
        self._history = _History()

    def __repr__(self):
        return f"<MultiEngineClient targets={self.targets!r} block={self.block}>"

    def __enter__(self):
        _with_blocks.__dict__.setdefault("open", []).append([self, False])
        return self

    def __exit__(self, exc_type, exc, tb):
        """Close the client, unless the block called client.remote(): the block ran on
        the engines (or could not be read) and the client goes on (mec.get_result() shows
        what it did)."""
        _, ran_remote = _with_blocks.open.pop()
        if not ran_remote:
            self.close()
        return exc_type is _RemoteBlock

    # ------------------------------------------------------------ plumbing

    def _ids(self, targets):
        return self.client.resolve_targets(self.targets if targets is None else targets)

    def _view(self, targets):
        return DirectView(self.client, self._ids(targets))

    def _block(self, block):
        return self.block if block is None else block

    def _finish(self, ar, block, method, transform=None):
        pr = PendingResult(ar, transform, method)
        return pr.get_result() if self._block(block) else pr

    # ------------------------------------------------------------ code and namespaces

    def get_ids(self):
        """The ids of the registered engines."""
        return self.client.ids

    @_ctrl_c_aborts
    def execute(self, lines, targets=None, block=None):
        """Run the code string `lines` on the targets: a ResultList (see ResultList)."""
        ar = self._view(targets).execute(lines, block=False)
        self._history.track(ar.futures, lines)
        return self._finish(ar, block, "execute", lambda _: ResultList(
            _execute_entry(f, lines) for f in ar.futures))

    def run(self, filename, targets=None, block=None):
        """Execute the Python file `filename` (read here) on the targets."""
        with open(filename) as f:
            return self.execute(f.read(), targets, block)

    def get_result(self, i=None, targets=None, block=None):
        """The ResultList of an earlier execute on each target: the last (i=None), the
        i-th from last (i<0) or command number i (i>=0), from this client's history."""
        return self._history.get(self._ids(targets), i, self._block(block))

    @_ctrl_c_aborts
    def push(self, namespace, targets=None, block=None):
        """Update each target's namespace with the dict `namespace`."""
        return self._finish(self._view(targets).push(namespace, block=False), block, "push")

    @_ctrl_c_aborts
    def pull(self, keys, targets=None, block=None):
        """A name's value (or a list of names' values) from each target."""
        return self._finish(self._view(targets).pull(keys, block=False), block, "pull")

    @_ctrl_c_aborts
    def zip_pull(self, keys, targets=None, block=None):
        """pull, regrouped by name: one tuple of the targets' values per key."""
        ar = self._view(targets).pull(_names(keys), block=False)
        return self._finish(ar, block, "zip_pull", lambda values: list(zip(*values)))

    def push_function(self, namespace, targets=None, block=None):
        """push for functions (they travel by value with cloudpickle)."""
        bad = [k for k, v in namespace.items() if not callable(v)]
        if bad:
            raise TypeError(f"push_function takes functions; {bad[0]!r} is not callable "
                            "(use push for data)")
        return self.push(namespace, targets, block)

    pull_function = pull

    @_ctrl_c_aborts
    def push_serialized(self, namespace, targets=None, block=None):
        """push values already pickled ({name: bytes}, as pull_serialized gives them):
        they are unpickled on the engines only."""
        ar = self._view(targets).apply_async(_unpickle_into_namespace, dict(namespace))
        return self._finish(ar, block, "push_serialized")

    @_ctrl_c_aborts
    def pull_serialized(self, keys, targets=None, block=None):
        """pull without unpickling here: each value as its pickled bytes."""
        ar = self._view(targets).apply_async(_pickled, keys)
        return self._finish(ar, block, "pull_serialized")

    def __setitem__(self, key, value):
        self.push({key: value}, block=True)

    def __getitem__(self, key):
        return self.pull(key, block=True)

    get = __getitem__

    def __len__(self):
        return len(self._ids(None))

    def update(self, namespace):
        self.push(namespace, block=True)

    @_ctrl_c_aborts
    def keys(self, targets=None, block=None):
        """The names defined in each target's namespace."""
        return self._finish(self._view(targets).keys(block=False), block, "keys")

    @_ctrl_c_aborts
    def reset(self, targets=None, block=None):
        """Empty each target's namespace."""
        return self._finish(self._view(targets).clear(block=False), block, "reset")

    # ------------------------------------------------------------ sequences

    @_ctrl_c_aborts
    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None):
        """Push contiguous blocks of `seq` as `key`, one block per target."""
        ar = self._view(targets).scatter(key, seq, dist, flatten, block=False)
        return self._finish(ar, block, "scatter")

    @_ctrl_c_aborts
    def gather(self, key, dist="b", targets=None, block=None):
        """Pull `key` from the targets and concatenate the blocks (inverse of scatter)."""
        ar = self._view(targets).gather(key, dist, block=False)
        return self._finish(ar, block, "gather")

    @_ctrl_c_aborts
    def map(self, func, *sequences, targets=None, block=None):
        """Parallel ``map``: each target applies `func` to one block of the sequences
        (no load balancing: see TaskClient.map for that)."""
        ar = self._view(targets).map(func, *sequences, block=False)
        return self._finish(ar, block, "map")

    def raw_map(self, func, seqs, dist="b", targets=None, block=None):
        """``raw_map(func, [s1, s2])`` is ``map(func, s1, s2)``."""
        return self.mapper(dist, targets, block).map(func, *seqs)

    def mapper(self, dist="b", targets=None, block=None):
        """An object whose ``map(func, *sequences)`` uses these options."""
        if dist != "b":
            raise ValueError(f"unknown distribution {dist!r}: only 'b' (blocks) is supported")
        return _Mapper(self.map, targets=targets, block=block)

    def parallel(self, dist="b", targets=None, block=None):
        """Decorator: ``f(seq)`` maps `f` over `seq` in parallel (``@mec.parallel()``)."""
        return _parallel(self.mapper(dist, targets, block))

    # ------------------------------------------------------------ engine properties

    @_ctrl_c_aborts
    def _properties(self, op, targets, block, parts=(), keys=None):
        futures = [self.client.send_request(protocol.PROPERTIES, parts, engine_id=e, engine=e,
                                            op=op, keys=keys) for e in self._ids(targets)]
        return self._finish(AsyncResult(self.client, futures, fname=f"{op}_properties"),
                            block, f"{op}_properties")

    def set_properties(self, properties, targets=None, block=None):
        """Update each target's properties dict (plain data reaches the scheduler, for
        Task(depend=...))."""
        return self._properties("set", targets, block, protocol.serialize(dict(properties)))

    def get_properties(self, keys=None, targets=None, block=None):
        """Each target's properties, or those of `keys`."""
        return self._properties("get", targets, block, keys=_names(keys))

    def has_properties(self, keys, targets=None, block=None):
        return self._properties("has", targets, block, keys=_names(keys))

    def del_properties(self, keys, targets=None, block=None):
        return self._properties("del", targets, block, keys=_names(keys))

    def clear_properties(self, targets=None, block=None):
        return self._properties("clear", targets, block)

    # ------------------------------------------------------------ control

    def barrier(self, pending_results):
        """Wait until every PendingResult (or AsyncResult) given is done; failures are
        kept for their get_result, not raised here."""
        if isinstance(pending_results, (PendingResult, concurrent.futures.Future)):
            pending_results = [pending_results]
        concurrent.futures.wait([getattr(p, "future", p) for p in pending_results])

    def queue_status(self, targets=None, block=None):
        """[(engine id, {'queue': requests sent to it and not answered, 'tasks',
        'completed'}), ...] for the targets."""
        status = self.client.queue_status(None)
        found = [(e, status[e]) for e in self._ids(targets) if e in status]
        return found if self._block(block) else _pending(found)

    def clear_queue(self, targets=None, block=None):
        """Abort this client's requests queued on the targets (they fail with
        TaskAborted). An engine runs its requests in order, so the oldest one outstanding
        on each engine is the running one, and is left alone."""
        ids = set(self._ids(targets))
        queued, running = [], set()
        for f in self.client.pending_requests():
            eid = f.metadata["engine_id"]
            if eid in ids and not f.done():
                if eid in running:
                    queued.append(f.msg_id)
                running.add(eid)
        if queued:
            self.client.abort(queued)

    def flush(self):
        """Make the controller forget the finished requests of the target engines
        (their results are delivered already; this frees the controller's memory)."""
        self.client.purge_results(targets=self._ids(None))

    clear_pending_results = flush   # IPython.kernel's other name for it

    def kill(self, controller=False, targets=None, block=None):
        """Stop the target engines, and with controller=True the controller as well."""
        self.client.shutdown(self.targets if targets is None else targets, hub=controller,
                             block=self._block(block))

    def benchmark(self, push_size=10000):
        """Latency of ``execute('pass')`` and throughput of pushing `push_size` float64
        values, on one engine and on all targets: {name: (value, unit)}."""
        try:
            import numpy
            data = numpy.zeros(push_size, dtype="float64")
        except ImportError:
            data = bytes(8 * push_size)
        ids = self._ids(None)
        one, every = DirectView(self.client, ids[:1]), DirectView(self.client, ids)

        import timeit

        def best(f):
            return min(timeit.repeat(f, repeat=3, number=10)) / 10

        def latency(view):
            return 1000 * best(lambda: view.execute("pass", block=True)), "msec"

        def rate(view):
            ns = {"_minipar_benchmark": data}
            return 8e-6 * push_size / best(lambda: view.push(ns, block=True)), "MB/sec"

        results = {"single_engine_latency": latency(one),
                   "all_engine_latency": latency(every),
                   "single_engine_push": rate(one), "all_engine_push": rate(every)}
        every.execute("del _minipar_benchmark", block=True)
        return results

    def activate(self, suffix=""):
        """Make this client the one IPython's %px, %%px, %autopx and %result use."""
        return _activate_magics(self, suffix)


_with_blocks = threading.local()   # .open: [MultiEngineClient, remote() called] per `with`


class _RemoteBlock(Exception):
    """Raised by remote() to skip the rest of a `with mec:` block here; mec's __exit__
    takes it."""


def _indent(line):
    return len(line) - len(line.lstrip())


def remote():
    """Called first in a ``with mec:`` block: run the rest of the block on mec's targets
    (``mec.execute`` of its lines) instead of here, as IPython.kernel did. The lines are
    read back from the file or IPython cell the block is in, so the block must be in one:
    at a plain ``python`` prompt use mec.execute(code)."""
    blocks = getattr(_with_blocks, "open", None)
    if not blocks:
        raise RuntimeError("client.remote() runs the rest of a `with mec:` block on mec's "
                           "engines: call it first inside one, or use mec.execute(code)")
    blocks[-1][1] = True   # mec stays open: for the block's run, or the mec.execute advised
    caller = sys._getframe(1)
    lines = linecache.getlines(caller.f_code.co_filename, caller.f_globals)
    here = caller.f_lineno   # lines[here - 1] calls remote(); the block goes on below it
    if len(lines) < here or "remote(" not in lines[here - 1]:
        raise NotImplementedError(
            f"client.remote() cannot read the block's lines from {caller.f_code.co_filename} "
            "(typed at a plain python prompt?): put the code in mec.execute(code), or in a "
            "%%px cell after mec.activate() in IPython")
    indent = _indent(lines[here - 1])
    block = itertools.takewhile(lambda line: not line.strip() or _indent(line) >= indent,
                                lines[here:])
    blocks[-1][0].execute(textwrap.dedent("".join(block)).strip("\n") + "\n")
    raise _RemoteBlock


# ---------------------------------------------------------------- tasks

class BaseTask:
    """What a TaskClient runs (see StringTask and MapTask). Every option may be given to
    the constructor or assigned later, before run():

    ``clear_before`` / ``clear_after``: empty the engine's namespace before / after it;
    ``retries``: run it again (elsewhere if possible) this many times after a failure;
    ``recovery_task``: a task to run instead when retries are exhausted (its result is
    this task's; it may have its own recovery_task; loops are refused);
    ``depend(properties)``: True when it may run on an engine with those properties
    (an exception counts as False).
    """

    def __init__(self, clear_before=False, clear_after=False, retries=0, recovery_task=None,
                 depend=None):
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend

    def _check(self):
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries={self.retries!r}: give a count, 0 or more")
        if self.recovery_task is not None and not isinstance(self.recovery_task, BaseTask):
            raise TypeError("recovery_task must be a StringTask or MapTask, not "
                            f"{type(self.recovery_task).__name__}")
        if self.depend is not None and not callable(self.depend):
            raise TypeError("depend must be a function of the engine's properties dict")


class StringTask(BaseTask):
    """Execute the code string `expression` after pushing the dict `push`; the result is
    a TaskResult of the names in `pull` (a name or a list of names)."""

    def __init__(self, expression, pull=None, push=None, clear_before=False,
                 clear_after=False, retries=0, recovery_task=None, depend=None):
        super().__init__(clear_before, clear_after, retries, recovery_task, depend)
        self.expression = expression
        self.pull = pull
        self.push = push

    def __repr__(self):
        return f"StringTask({self.expression!r}, pull={self.pull!r})"

    def _call(self):
        if not isinstance(self.expression, str):
            raise TypeError("a StringTask's expression is a code string; use MapTask for "
                            "a function")
        return _string_task, (self.expression, dict(self.push or {}), _names(self.pull) or []), {}


Task = StringTask   # the classic name


class MapTask(BaseTask):
    """Call ``function(*args, **kwargs)``; the result is its return value."""

    def __init__(self, function, args=None, kwargs=None, clear_before=False,
                 clear_after=False, retries=0, recovery_task=None, depend=None):
        super().__init__(clear_before, clear_after, retries, recovery_task, depend)
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __repr__(self):
        return f"MapTask({getattr(self.function, '__name__', self.function)!r})"

    def _call(self):
        if not callable(self.function):
            raise TypeError("a MapTask's function must be callable; use StringTask for code")
        return self.function, tuple(self.args or ()), dict(self.kwargs or {})


class TaskResult:
    """A StringTask's outcome: ``results`` ({name: value} of its pull), ``ns`` (the same
    as attributes), ``keys``, ``tr['a']``; ``engineid``, ``taskid``, ``submitted`` and
    ``completed`` (datetimes), ``duration`` (seconds it ran on the engine) and
    ``failure`` (the remote error, or None). ``ns``, ``tr[key]`` and
    ``raise_exception()`` raise the failure."""

    def __init__(self, results, engineid, taskid=None, submitted=None, completed=None,
                 duration=None, failure=None):
        self.failure = failure
        self.results = {} if failure is not None else dict(results)
        self.keys = list(self.results)
        self.engineid = engineid
        self.taskid = taskid
        self.submitted = submitted
        self.completed = completed
        self.duration = duration
        self._ns = types.SimpleNamespace()
        self._ns.__dict__.update(self.results)

    @property
    def ns(self):
        self.raise_exception()
        return self._ns

    def __getitem__(self, key):
        self.raise_exception()
        return self.results[key]

    def raise_exception(self):
        """Raise the remote failure here, if the task failed."""
        if self.failure is not None:
            raise self.failure

    def __repr__(self):
        if self.failure is not None:   # a remote error's text names its type already
            named = isinstance(self.failure, RemoteError)
            return f"TaskResult[ID:{self.taskid!r}]:<" \
                   f"{'' if named else type(self.failure).__name__ + ': '}{self.failure}>"
        return f"TaskResult[ID:{self.taskid!r}]:{self.results!r}"


def _datetime(utc):
    # as the old TaskResult's: local time, naive (ipyparallel's metadata: aware, in UTC)
    return None if utc is None else utc.astimezone().replace(tzinfo=None)


class TaskClient(_ClassicClient):
    """The classic task interface: tasks load-balanced over the engines.

    It connects as ``Client`` does (or shares `client`). ``run(task)`` returns an integer
    task id, for ``get_task_result``, ``barrier``, ``abort`` and ``clear``; ``map``,
    ``mapper`` and ``parallel`` run one MapTask per element.
    """

    def __init__(self, url_file=None, profile=None, profile_dir=None, timeout=10,
                 client=None):
        super().__init__(url_file, profile, profile_dir, timeout, client)
        self._tasks = {}   # task id -> {"task", "ar", "recovery": [msg_ids], "result"}
        self._next_id = itertools.count()
        self._string_task_parts = protocol.serialize(_string_task)

    def __repr__(self):
        return f"<TaskClient: {len(self._tasks)} tasks>"

    def _entry(self, taskid):
        try:
            return self._tasks[taskid]
        except (KeyError, TypeError):
            raise IndexError(f"no task with id {taskid!r}: ids are what this TaskClient's "
                             "run() returned, and clear() forgets finished ones") from None

    # ------------------------------------------------------------ submitting

    @_ctrl_c_aborts
    def run(self, task, block=False):
        """Submit `task` (a StringTask or MapTask); returns its integer id, or with
        block=True waits and returns its result (as get_task_result)."""
        taskid = self._run(task)
        return self.get_task_result(taskid, block=True) if block else taskid

    def _run(self, task, fparts=None):
        """Submit `task` after its recovery chain (dormant tasks); returns its id.
        `fparts`: the task's function already pickled (map sends one function often)."""
        if not isinstance(task, BaseTask):
            raise TypeError(f"run takes a StringTask or MapTask, not {type(task).__name__}")
        chain = [task]
        while chain[-1].recovery_task is not None:
            nxt = chain[-1].recovery_task
            if any(nxt is t for t in chain):
                raise ValueError("the recovery_task chain loops back to a task in it; end "
                                 "the chain with a task whose recovery_task is None")
            chain.append(nxt)
        for t in chain:
            t._check()
        rid, recovery = None, []
        for t in reversed(chain[1:]):   # the last of the chain first: the others name it
            rid = self._send(t, dormant=True, recovery=rid).msg_id
            recovery.append(rid)
        fut = self._send(task, dormant=False, recovery=rid, fparts=fparts)
        taskid = next(self._next_id)
        self._tasks[taskid] = {"task": task, "recovery": recovery, "result": None,
                               "ar": AsyncResult(self.client, [fut], fname="task", single=True)}
        return taskid

    def _send(self, task, dormant, recovery, fparts=None):
        f, args, kwargs = task._call()
        if f is _string_task:
            fparts = self._string_task_parts
        fields = {"lb": True, "targets": None, "retries": task.retries, "recovery": recovery,
                  "dormant": dormant}
        if task.depend is not None:   # pickled into the header, for the controller
            fields["depend"] = [bytes(b) for b in protocol.serialize(task.depend)]
        for flag in ("clear_before", "clear_after"):
            if getattr(task, flag):
                fields[flag] = True
        return self.client.send_apply(f, args, kwargs, fparts=fparts, **fields)

    # ------------------------------------------------------------ results

    def get_task_result(self, taskid, block=False):
        """The task's result: a TaskResult for a StringTask, the return value for a
        MapTask (its failure raises); None while it is not done, unless block=True."""
        entry = self._entry(taskid)
        ar = entry["ar"]
        if not ar.done():
            if not block:
                return None
            ar.wait()
        if isinstance(entry["task"], MapTask):
            return ar.result()
        if entry["result"] is None:
            entry["result"] = self._task_result(taskid, ar)
        return entry["result"]

    @staticmethod
    def _task_result(taskid, ar):
        md = ar.metadata
        failure = ar.exception()
        value = None if failure is not None else ar.result()
        if failure is None and not isinstance(value, dict):
            value = {"result": value}   # a MapTask recovered this StringTask
        started, completed = md.get("started"), md.get("completed") or md.get("received")
        duration = max(0.0, (completed - started).total_seconds()) if started and completed \
            else 0.0
        return TaskResult(value, md["engine_id"], taskid, _datetime(md["submitted"]),
                          _datetime(completed), duration, failure)

    def barrier(self, taskids):
        """Wait until the task(s) are done (failures are not raised here)."""
        concurrent.futures.wait([self._entry(t)["ar"] for t in _task_ids(taskids)])

    def queue_status(self, verbose=False):
        """{'scheduled': submitted and not running yet (waiting in the controller or queued
        on an engine behind another task), 'pending': running on an engine, 'succeeded',
        'failed'}: counts, or lists of ids with verbose=True. A task counts as running once
        its engine reports it (after the engine's STREAM_INTERVAL_S, 0.1 s): one that ends
        sooner goes from scheduled to done."""
        status = {"scheduled": [], "pending": [], "succeeded": [], "failed": []}
        for taskid, entry in list(self._tasks.items()):
            ar = entry["ar"]
            if ar.done():
                state = "succeeded" if ar.exception() is None else "failed"
            else:
                state = "pending" if ar.running() else "scheduled"
            status[state].append(taskid)   # in id order: _tasks is in the order run
        return status if verbose else {k: len(v) for k, v in status.items()}

    def abort(self, taskid):
        """Abort a task not finished yet: it fails with TaskAborted (a running one is
        interrupted). IndexError for a finished one."""
        ar = self._entry(taskid)["ar"]
        if ar.done():
            raise IndexError("Task Already Completed")
        self.client.abort(ar)

    def spin(self):
        """A round trip to the controller. Tasks waiting for an engine whose properties
        match their `depend` start when the properties change, so this is rarely needed."""
        self.client.queue_status()

    def clear(self, taskids=None):
        """Forget finished tasks (all, or those of `taskids`), here and in the controller;
        unfinished ones are kept."""
        ids = list(self._tasks) if taskids is None else _task_ids(taskids)
        done = [t for t in ids if self._entry(t)["ar"].done()]
        msg_ids = []
        for t in done:
            entry = self._tasks.pop(t)
            msg_ids += entry["ar"].msg_ids + entry["recovery"]
        if msg_ids:
            self.client.purge_results(jobs=msg_ids)

    # ------------------------------------------------------------ map

    @_ctrl_c_aborts
    def _map(self, func, *sequences, block=True, **options):
        fparts = protocol.serialize_function(func)
        ids = [self._run(MapTask(func, args, **options), fparts) for args in zip(*sequences)]
        if not block:
            return ids
        self.barrier(ids)
        try:
            return [self.get_task_result(t) for t in ids]
        finally:
            self.clear(ids)

    def map(self, func, *sequences):
        """Load-balanced ``map``: one task per element; the list of results."""
        return self._map(func, *sequences)

    def mapper(self, clear_before=False, clear_after=False, retries=0, recovery_task=None,
               depend=None, block=True):
        """An object whose ``map(func, *sequences)`` runs MapTasks with these options
        (block=False: it returns the task ids)."""
        return _Mapper(self._map, clear_before=clear_before, clear_after=clear_after,
                       retries=retries, recovery_task=recovery_task, depend=depend,
                       block=block)

    def parallel(self, clear_before=False, clear_after=False, retries=0, recovery_task=None,
                 depend=None, block=True):
        """Decorator: ``f(seq)`` maps `f` over `seq` as load-balanced tasks."""
        return _parallel(self.mapper(clear_before, clear_after, retries, recovery_task,
                                     depend, block))


# ---------------------------------------------------------------- IPython magics
#
# Two flavours share one class: a DirectView's magics (those a Client registers itself
# inside IPython, rc.activate(), view.activate()) print as ipyparallel's do; a
# MultiEngineClient's return the classic <Results List> and keep %result's history.
# Where the DirectView's differ from ipyparallel's (no rich display data, --stream not the
# default, --progress-after and --signal-on-interrupt accepted and ignored...):
# docs/ipyparallel.rst, which keeps the list.

NO_LAST_RESULT = "%pxresult recalls the last %px result, and there is none yet"

# Options: name -> (what it sets, its value, or None when the next word is the value).
_EXEC_OPTIONS = {"--targets": ("targets", None), "-t": ("targets", None),
                 "--block": ("block", True), "-b": ("block", True),
                 "--noblock": ("block", False), "-a": ("block", False),
                 "--local": ("local", True), "--verbose": ("verbose", True),
                 "--no-verbose": ("verbose", False), "--stream": ("stream", True),
                 "--no-stream": ("stream", False), "--progress-after": ("progress_after", None),
                 "--signal-on-interrupt": ("signal_on_interrupt", None)}
_OUTPUT_OPTIONS = {"--group-outputs": ("groupby", None), "-e": ("groupby", "engine"),
                   "-r": ("groupby", "order"), "--out": ("out", None), "-o": ("out", None)}
_PX_OPTIONS = {**_EXEC_OPTIONS, **_OUTPUT_OPTIONS}
_CONFIG_OPTIONS = {k: v for k, v in _EXEC_OPTIONS.items() if v[0] != "local"}
_GROUPS = ("engine", "order", "type")


def _in_ipython(client):
    """What Client() does inside IPython, as ipyparallel's does: register the magics for
    a blocking view of all engines (evaluated at each call), unless %px is registered
    already, so a second Client (a helper, another cluster's) leaves it where it was; it
    takes the magics over from a closed Client. client.py calls this only when IPython
    is imported already, so a plain script never pays its import."""
    import IPython

    shell = IPython.get_ipython()
    if shell is None:   # imported, but no shell is running
        return
    px = shell.find_line_magic("px")
    mine = getattr(px, "__self__", None)
    if px is not None and not (isinstance(mine, _ParallelMagics) and mine.view.client._closed):
        return
    try:
        _activate_magics(DirectView(client, "all", block=True))
    except Exception as e:   # the client works without its magics: never fail for them
        import logging

        logging.getLogger(__name__).warning("the parallel magics were not registered: %s", e)


def _activate_magics(view, suffix=""):
    """Register %px, %%px, %autopx, %pxresult and %pxconfig, each with `suffix` (and
    %result without one) for `view`, a DirectView or a MultiEngineClient (both have
    client, targets and block), in the running IPython. IPython is imported here only:
    it stays optional."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = type(None)
    shell = get_ipython()
    if shell is None:   # a warning, as ipyparallel's: a script that activates goes on
        import warnings

        return warnings.warn("the parallel magics (%px...) work only inside IPython: "
                             "activate() registered none; call execute() directly", stacklevel=3)
    magics = _ParallelMagics(shell, view, suffix)
    from IPython.core.magic import no_var_expand

    @no_var_expand   # as ipyparallel's %px: {x} and $x in its code are the engines' to read,
    def px(line):    # so IPython must not expand them first (a cell's line it may)
        return magics.px(line)
    px.__doc__, px.__self__ = magics.px.__doc__, magics   # its owner, as a method's (_in_ipython)
    shell.register_magic_function(px, "line", "px" + suffix)
    shell.register_magic_function(magics.px, "cell", "px" + suffix)
    shell.register_magic_function(magics.autopx, "line", "autopx" + suffix)
    shell.register_magic_function(magics.result, "line", "pxresult" + suffix)
    shell.register_magic_function(magics.pxconfig, "line", "pxconfig" + suffix)
    if not suffix:
        shell.register_magic_function(magics.result, "line", "result")


def _usage(message):
    from IPython.core.error import UsageError  # only magics call this: IPython is there

    return UsageError(message)


class _ParallelMagics:
    """The magics of one view. Its targets and block are read at each call (%pxconfig
    sets them), so changing them later counts; ``%%px --targets 0,2 --noblock``
    overrides them for one cell."""

    def __init__(self, shell, view, suffix):
        self.shell = shell
        self.view = view
        self.suffix = suffix
        self.classic = not isinstance(view, DirectView)   # a MultiEngineClient
        self.verbose = self.stream = False
        self.last_result = None   # the AsyncResult of the last %px, for %pxresult
        self._autopx = None       # the input transformer while %autopx is on
        self._autopx_off = re.compile(r"^\s*%autopx" + re.escape(suffix) + r"\b", re.M)

    @_ctrl_c_aborts
    def px(self, line, cell=None):
        """%px CODE, or %%px [options] over a cell: run the code on the engines.

        Options (of %%px; %px takes the long ones before its code): --targets T (all,
        3, -1, 0,2, "[0, 2]", 1:3), --block / --noblock, --local (run the cell here too),
        --verbose, --stream / --no-stream, --group-outputs engine|order|type (-e, -r),
        --out NAME (-o: keep the AsyncResult in NAME). A blocking %px prints each
        engine's output as ``[stdout:0] ...`` (as it comes, with --stream); a
        non-blocking one returns its AsyncResult (see %pxresult).
        """
        if cell is None:
            options, code = self._options(line, _PX_OPTIONS, long_only=True)
        else:
            options, rest = self._options(line, _PX_OPTIONS)
            if rest.strip():
                raise _usage(f"%%px takes only options on its first line, not {rest!r}")
            code = cell
        if not code.strip():
            raise _usage("nothing to execute: %px CODE, or %%px with the code below")
        if self.view.client._closed:
            raise _usage(f"the Client of %px{self.suffix} is closed: make a new Client (it "
                         "takes the magics over), or call activate() on an open one's view")
        targets = options.get("targets", self.view.targets)
        block = options.get("block", self.view.block)
        if self.classic and cell is None:   # IPython.kernel's %px line (not %autopx's cells)
            print("Executing command on Controller")
        if options.get("verbose", self.verbose):
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): "
                  f"{_shown_targets(targets)}")
        silent = {} if self.classic else {"silent": False}   # its Out[0:3], as ipyparallel's
        try:
            pr = self.view.execute(code, targets=targets, block=False, **silent)
        except (IndexError, NoEnginesRegistered) as e:   # one line, not our stack
            raise _usage(str(e)) from None
        ar = pr.future if self.classic else pr   # a PendingResult's AsyncResult, or it
        if not self.classic:
            self.last_result = ar
            if options.get("out"):
                self.shell.user_ns[options["out"]] = ar
        if options.get("local"):   # after sending: the engines and this shell run together
            self.shell.run_cell(code)
        if not block:
            return pr
        groupby, stream = options.get("groupby", "type"), options.get("stream", self.stream)
        try:
            if self.classic:
                return pr.get_result()
            _show(ar, groupby, stream)
        except KeyboardInterrupt as e:
            # as ipyparallel's %px: what the engines printed so far, then the interrupt;
            # but in one line saying what it aborts (the decorator does, on the way out),
            # not a traceback through minipar's wait down to threading's lock
            running = [f.metadata["engine_id"] for f in ar._children if not f.done()]
            if not (self.classic or stream):
                _display_outputs(ar, groupby)
            said = f": %px{self.suffix} aborted its code on engine(s) {running}" if running else ""
            e._render_traceback_ = lambda: ["KeyboardInterrupt" + said]
            raise

    def pxconfig(self, line=""):
        """%pxconfig [--targets T] [--block|--noblock] [--verbose|--no-verbose]
        [--stream|--no-stream]: the defaults of the %px magics (the view's targets and
        block)."""
        options, rest = self._options(line, _CONFIG_OPTIONS)
        if rest.strip():
            raise _usage(f"%pxconfig takes only options, not {rest!r}")
        for what, value in options.items():   # targets and block are the view's
            setattr(self.view if what in ("targets", "block") else self, what, value)

    def result(self, line=""):
        """%pxresult [--group-outputs engine|order|type] [-e] [-r] [-o NAME]: wait for the
        last %px (a non-blocking one, typically) and print its outputs as a blocking %px
        does. A MultiEngineClient's %result [i] / %pxresult [i] returns its classic
        results: the last (or i-th, see get_result) execute result per engine."""
        if self.classic:
            return self.view.get_result(int(line) if line.strip() else None, block=True)
        options, rest = self._options(line, _OUTPUT_OPTIONS)
        if rest.strip():
            raise _usage(f"%pxresult takes only options, not {rest!r}")
        if self.last_result is None:
            raise _usage(NO_LAST_RESULT)
        if options.get("out"):
            self.shell.user_ns[options["out"]] = self.last_result
        _show(self.last_result, options.get("groupby", "type"))

    def _options(self, line, known, long_only=False):
        """The leading options of `line` among `known`; returns ({what: value}, the
        rest). With `long_only` (the code of a line %px follows) only known --long
        options are read, so code such as ``-x`` is left alone."""
        options = {}
        rest = line.lstrip()
        while rest.startswith("-"):
            word, after = _next_word(rest)
            name, eq, value = word.partition("=")
            if name not in known or (long_only and not name.startswith("--")):
                if long_only:
                    break
                raise _usage(f"unknown option {name}; the options here are "
                             f"{', '.join(sorted(known))}")
            what, constant = known[name]
            rest = after
            if constant is None:
                if not eq:
                    value, rest = _next_word(rest)
                if not value:
                    raise _usage(f"{name} needs a value")
                options[what] = self._value(what, value)
            else:
                options[what] = constant
            rest = rest.lstrip()
        return options, rest

    def _value(self, what, text):
        if what == "targets":
            return self._targets(text)
        if what == "groupby" and text not in _GROUPS:
            raise _usage(f"--group-outputs {text!r}: give one of {', '.join(_GROUPS)}")
        if what == "progress_after":
            try:
                return float(text)
            except ValueError:
                raise _usage(f"--progress-after {text!r}: give seconds") from None
        return text

    def _targets(self, text):
        # ipyparallel's magics evaluate the text: 1 is one engine (its output unprefixed, as
        # rc[1]'s), while [1], 1, and 0,2 are lists
        one = not re.search(r"[][(),:]", text)
        text = text.strip().strip("[]()")
        try:
            if text == "all":
                return "all"
            if ":" in text:
                return self.view.client.ids[slice(*(int(p) if p else None
                                                    for p in text.split(":")))]
            ids = [int(t) for t in text.split(",") if t.strip()]
            # a negative id counts from the last engine, as in rc[-1] (and in ipyparallel's
            # magics, which evaluate the text)
            ids = [self.view.client.ids[i] if i < 0 else i for i in ids]
            return ids[0] if one and len(ids) == 1 else ids
        except (TypeError, ValueError):
            raise _usage(f"--targets {text!r}: give all, an id, ids like 0,2 or a slice "
                         "like 1:3") from None
        except IndexError:
            raise _usage(f"--targets {text!r}: there is no such engine; registered: "
                         f"{self.view.client.ids}") from None

    def autopx(self, line=""):
        """%autopx: run every following cell on the engines, until the next %autopx."""
        cleanups = self.shell.input_transformers_cleanup
        if self._autopx is None:
            name = "px" + self.suffix

            # ipyparallel's %autopx shows no Out[n] for a cell, not even a non-blocking
            # one's AsyncResult (%pxresult shows it): IPython's ';' silences it. The
            # classic one shows its <Results List>, as IPython.kernel's printed it.
            quiet = "" if self.classic else ";"

            # among the first transformers, so the engines get the cell as typed (its
            # %magics and !commands are theirs to run)
            def to_px(lines):
                code = "".join(lines)
                if self._autopx_off.search(code):
                    return lines
                return [f"get_ipython().run_cell_magic({name!r}, '', {code!r}){quiet}\n"]

            # IPython's is-the-input-complete check skips it: an unfinished block (a
            # line ending in ':') still asks for more lines at the terminal
            to_px.has_side_effects = True
            self._autopx = to_px
            cleanups.append(to_px)
            print(f"Auto Parallel Enabled\nType %autopx{self.suffix} to disable"
                  if self.classic else f"%autopx{self.suffix} enabled")
        else:
            if self._autopx in cleanups:
                cleanups.remove(self._autopx)
            self._autopx = None
            print("Auto Parallel Disabled" if self.classic else
                  f"%autopx{self.suffix} disabled")


# A word of a magic's options: one in quotes may hold spaces, as IPython's argument
# splitting reads ipyparallel's (--targets "[0, 2]", --targets='1, 3')
_WORD = re.compile(r"""(?:"[^"]*"|'[^']*'|[^\s"']+)+""")


def _next_word(text):
    """The first word of `text`, its quotes dropped, and the text after it."""
    text = text.lstrip()
    match = _WORD.match(text)
    if match is None:
        if text:
            raise _usage(f"no closing quote in {text!r}")
        return "", ""
    return shlex.split(match.group())[0], text[match.end():]


def _shown_targets(targets):
    """Targets as ipyparallel's verbose line shows them: a long list shortened."""
    if isinstance(targets, list) and len(targets) > 10:
        return str(targets[:4])[:-1] + ", ..., " + str(targets[-4:])[1:]
    return str(targets)


def _show(ar, groupby, stream=False):
    """Wait for `ar` and print its outputs as ipyparallel's magics do (`stream`: as they
    come); its engines' errors then raise, shown as ipyparallel shows them
    (``[0:execute]:`` and each engine's traceback)."""
    if stream:
        ar.stream_output().wait()
    try:
        ar.get()
        error = None
    except RemoteError as e:   # a Ctrl-C or a lost controller raises as it is
        error = e
    # display data comes with the reply, not streamed: shown after the streams either way
    _display_outputs(ar, groupby, kinds=_KINDS[2:] if stream else _KINDS)
    if error is not None:
        # IPython shows an exception with _render_traceback_ as these lines alone
        error._render_traceback_ = functools.partial(_render_errors, error)
        raise error


_KINDS = ("stdout", "stderr", "outputs", "execute_result")


def _display_outputs(ar, groupby="type", file=None, result_only=False, kinds=_KINDS):
    """Each engine's stdout and stderr, ``[stdout:0] ...`` (stderr to sys.stderr, both to
    `file` if given), its display data (``[output:0]``, see _display_data), then its
    execute's result, ``Out[0:3]: ...`` (alone with `result_only`): grouped by type (all
    stdout, then all stderr...) or by engine. `order` is `type` here: minipar's display
    data comes with the reply, so when it came among the output is not known. A single
    result's (rc[0]'s: ``ar.stdout`` is a str) has no prefix, as ipyparallel's."""
    md = ar.metadata
    single = isinstance(md, dict)
    rows = [md] if single else md
    kinds = ("execute_result",) if result_only else kinds
    outputs = [(m["engine_id"], k, m[k]) for m in rows for k in kinds]
    if groupby != "engine":   # by type: every stdout, then every stderr (a stable sort)
        outputs.sort(key=lambda o: kinds.index(o[1]))
    for eid, kind, output in outputs:
        if kind == "outputs":
            _display_data(output, eid, file, header=not single)
        elif kind != "execute_result":
            _display_stream(output, "" if single else f"[{kind}:{eid}] ",
                            file or getattr(sys, kind))
        elif output and (out := _out_prompt(eid, output)):   # by engine: [output:0] first
            print(f"[output:{eid}]\n{out}" if groupby == "engine" and not single else out,
                  file=file or sys.stdout, flush=True)


def _display_data(outputs, eid, file, header=True):
    """What display() published on engine `eid`, as ipyparallel shows it: ``[output:0]``,
    then each one published again in IPython (a notebook shows its html, its image), or
    else (or to `file`) printed as its text/plain."""
    if not outputs:
        return
    if header:
        print(f"[output:{eid}]", file=file or sys.stdout, flush=True)
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and file is None else None
    for output in outputs:
        if shell is not None:
            shell.display_pub.publish(data=output["data"],
                                      metadata={**output.get("metadata", {}), "engine": eid})
        else:
            print(output["data"].get("text/plain", ""), file=file or sys.stdout, flush=True)


def _display_stream(text, prefix, file):
    # as ipyparallel: one line follows its prefix, several start on the next line
    if not text:
        return
    text = text.replace("\r\n", "\n")   # !commands run under a pty (pexpect) end lines so
    if text.count("\n") > int(text.endswith("\n")) and not text.startswith("\n"):
        prefix += "\n"
    print(prefix + text, file=file, end="" if text.endswith("\n") else "\n")
    file.flush()


def _render_errors(error):
    """The first ``tb_limit`` engines' tracebacks and how many more failed, as
    ipyparallel's magics show a CompositeError: a typo on 100 engines is not 100."""
    lines = []
    composite = isinstance(error, CompositeError) and error.elist
    for e in error.elist[:error.tb_limit] if composite else [error]:
        info = e.engine_info or {}
        lines.append(f"[{info.get('engine_id', '?')}:{info.get('kind', 'execute')}]: ")
        lines.extend((e.traceback or f"{e.ename}: {e.evalue}").splitlines())
        lines.append("")
    return lines + (error._more() if composite else [])
