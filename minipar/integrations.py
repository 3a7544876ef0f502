"""Ecosystem integrations: the concurrent.futures executor, progress bars, the joblib
backend, timeline plots, printed output, sync_imports.

Each imports its library (tqdm, joblib, matplotlib) when first used: none is a
dependency, and a missing one is said clearly. client.py imports this module inside the
methods that use it (``ar.wait_interactive()``, ``rc.wait_interactive()``,
``rc.wait_for_engines()``, ``ar.timeline()``, ``view.register_joblib_backend()``,
``ar.stream_output()``, ``dv.sync_imports()``); ``minipar.plot_timeline`` and
``minipar.register_joblib_backend`` are its public names.
"""

import builtins
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import sys
import threading
import time
import types

from .asyncresult import _abort_quietly, _timeout_s, _warn_if_no_engines
from .client import AsyncResult, Client, LoadBalancedView, interactive

# -- the executor

class ViewExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run as tasks of a LoadBalancedView
    (``view.executor``, ``rc.executor(targets)``).

    Its futures are AsyncResults: ``concurrent.futures.wait``, ``as_completed`` and
    ``await`` take them, and the view's flags (retries, time_limit, after...) apply.
    ``shutdown(cancel_futures=True)`` cancels the calls not started (running ones
    finish; ``abort()`` them to stop them); shutdown never closes the Client, which the
    executor does not own.
    """

    def __init__(self, view):
        self.view = view
        self._pending = set()   # AsyncResults not done; discarded by their done callback
        self._shutdown_lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            ar = self.view._apply(fn, args, kwargs)   # so no user keyword collides
            self._pending.add(ar)
        # runs in the client's I/O thread: set.discard needs no lock under the GIL
        ar.add_done_callback(self._pending.discard)
        return ar

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """``Executor.map``: results in order, `timeout` counted from this call;
        `chunksize` calls travel as one task (fewer messages for short calls). A generator,
        as concurrent.futures': closing it cancels the calls not started."""
        if chunksize < 1:
            raise ValueError(f"chunksize={chunksize}: give a positive number of calls")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(functools.partial(_apply_chunk, fn),
                              _chunks(zip(*iterables), chunksize), timeout=timeout)
        return _flattened(results)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown = True
        pending = [ar for ar in list(self._pending) if not ar.done()]
        if cancel_futures:
            _abort_quietly(self.view.client, [ar for ar in pending if ar._cancel_local()],
                           queued_only=True)
        if wait:
            if pending:
                _warn_if_no_engines(self.view.client)
            concurrent.futures.wait(pending)


def _apply_chunk(fn, chunk):
    # runs on an engine: one task for `chunksize` calls of ViewExecutor.map
    return [fn(*args) for args in chunk]


def _flattened(results):
    # ViewExecutor.map's items from its generator of chunks (lists); closing this closes
    # that one, which cancels the rest, as without chunks (an itertools.chain has no close)
    try:
        for chunk in results:
            yield from chunk
    finally:
        results.close()


def _chunks(items, size):
    it = iter(items)
    return iter(lambda: list(itertools.islice(it, size)), [])


class _AwaitableFuture(concurrent.futures.Future):
    """A concurrent.futures.Future that a coroutine may also await, as an AsyncResult:
    ``await rc.wait_for_engines(n, block=False)``, as ipyparallel's Cluster docs write it
    (whose own needs asyncio.wrap_future around it; that still works)."""

    def __await__(self):
        import asyncio   # here, not at the top: as AsyncResult.__await__

        return asyncio.wrap_future(self).__await__()


def _in_thread(fn, /, *args, **kwargs):
    """A Future of ``fn(*args, **kwargs)``, called in a daemon thread of its own (a
    blocking call made non-blocking: ``rc.wait_for_engines(n, block=False)``)."""
    future = _AwaitableFuture()

    def run():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:
                future.set_exception(e)

    threading.Thread(target=run, name=f"minipar-{fn.__name__}", daemon=True).start()
    return future


# -- progress bars

def _interactive():
    """Whether someone is probably watching: stderr is a terminal, or this is IPython."""
    # stderr may be replaced by an object without isatty(), or closed
    with contextlib.suppress(AttributeError, ValueError):
        if sys.stderr.isatty():
            return True
    ipython = sys.modules.get("IPython")
    return ipython is not None and ipython.get_ipython() is not None


def _progress_bar(total, desc, unit, initial=0):
    """tqdm's bar when tqdm is installed (a widget in Jupyter), else a _TextBar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(total, desc, unit, initial)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial)


def _wait_with_bar(ar, desc, interval, timeout, return_when=None):
    """``ar.wait_interactive()``: wait for AsyncResult `ar` (at most `timeout` s), redrawing
    a bar of its requests done every `interval` s. `return_when` FIRST_COMPLETED or
    FIRST_EXCEPTION (ipyparallel's) ends the wait once one request is done, or has failed."""
    if return_when not in (None, concurrent.futures.ALL_COMPLETED,
                           concurrent.futures.FIRST_COMPLETED, concurrent.futures.FIRST_EXCEPTION):
        raise ValueError(f"return_when={return_when!r}: give ALL_COMPLETED, FIRST_COMPLETED or "
                         "FIRST_EXCEPTION (concurrent.futures')")
    ends_it = {concurrent.futures.FIRST_COMPLETED: concurrent.futures.Future.done,
               concurrent.futures.FIRST_EXCEPTION: _failed}.get(return_when, lambda f: False)
    # the bar starts at what is done already, so its rate is of the work done in this wait
    bar = _progress_bar(len(ar), desc, "tasks", initial=ar.progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not ar.done() and not any(map(ends_it, ar._children)):
            left = interval if deadline is None else min(interval, deadline - time.monotonic())
            if left <= 0:
                break
            ar.wait(left)
            bar.update(ar.progress - bar.n)
    finally:
        bar.update(ar.progress - bar.n)
        bar.close()


def _failed(future):
    return future.done() and not future.cancelled() and future.exception() is not None


def _wait_interactive(client, jobs, interval, timeout):
    """``rc.wait_interactive()``: ``rc.wait(jobs)`` (default: all outstanding) with a bar,
    at most `timeout` s (< 0 or None: no limit). Returns None, as ipyparallel's (so a
    notebook shows no Out[n]); with nothing to wait for it draws no bar either."""
    ar = AsyncResult(client, [f for f in map(client._futures.get, client._msg_ids(jobs))
                              if f is not None])
    if len(ar):
        _wait_with_bar(ar, "tasks", interval, _timeout_s(timeout))


class _TextBar:
    """A progress bar in plain text on stderr, in tqdm's shape (``n``, ``update(k)``,
    ``close()``) and tqdm's look::

        map:  40%|#########             | 8/20 [00:02<00:03, 3.91 tasks/s]

    It is redrawn in place after a carriage return, which terminals and Jupyter's
    output area both honour.
    """

    WIDTH = 24

    def __init__(self, total, desc, unit, initial=0, file=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._initial = initial
        self.file = file or sys.stderr
        self._start = time.monotonic()
        self._last_len = 0
        self._draw()

    def update(self, k=1):
        self.n += k
        self._draw()   # also when k == 0: the rate and the time left still change

    def close(self):
        self._draw()
        self.file.write("\n")
        self.file.flush()

    def format(self):
        elapsed = time.monotonic() - self._start
        frac = min(1.0, self.n / self.total) if self.total else 1.0
        filled = int(frac * self.WIDTH)
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        left = _clock((self.total - self.n) / rate) if rate > 0 else "?"
        return (f"{self.desc}: {frac:4.0%}|{'#' * filled}{' ' * (self.WIDTH - filled)}| "
                f"{self.n}/{self.total} [{_clock(elapsed)}<{left}, {rate:.2f} {self.unit}/s]")

    def _draw(self):
        line = self.format()
        # pad over the end of a longer previous line
        self.file.write("\r" + line.ljust(self._last_len))
        self.file.flush()
        self._last_len = len(line)


def _clock(seconds):
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# -- joblib

def register_joblib_backend(name="minipar", view=None, make_default=False):
    """Register minipar as joblib backend `name`, so that inside
    ``with joblib.parallel_backend(name):`` joblib's work (and scikit-learn's
    ``n_jobs``) runs on the engines of `view` (default: a Client of the default
    profile, connected when joblib first needs it, closed after each Parallel call).
    Each batch of calls is one load-balanced task. The default name registers
    ipyparallel's too, so its scripts' ``parallel_backend("ipyparallel")`` runs here."""
    from joblib.parallel import register_parallel_backend

    for each in (name, "ipyparallel") if name == "minipar" else (name,):
        register_parallel_backend(each, functools.partial(_joblib_backend_class(), view=view),
                                  make_default=make_default)


@functools.lru_cache(maxsize=None)
def _joblib_backend_class():
    """The backend class, made on first use: joblib is imported only then."""
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

    class MiniparBackend(AutoBatchingMixin, ParallelBackendBase):
        """joblib's backend API (``submit``, ``retrieve_result_callback``) over a
        LoadBalancedView. joblib's batch-done callback dispatches the next batch, that
        is, it sends; it must not run in the client's I/O thread, which drains what is
        sent, so it runs in a thread of the backend's own."""

        supports_retrieve_callback = True

        def __init__(self, view=None, **kwargs):
            super().__init__(**kwargs)
            if view is not None and not isinstance(view, LoadBalancedView):
                view = LoadBalancedView(view.client, view.targets)
            self._view = view
            self._own_client = None
            self._callbacks = None
            self._outstanding = set()

        @property
        def view(self):
            if self._view is None:
                self._own_client = Client()
                self._view = self._own_client.load_balanced_view()
            return self._view

        def effective_n_jobs(self, n_jobs):
            # the engines are the workers, whatever n_jobs asks (as in ipyparallel)
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            return len(self.view.client.resolve_targets(self.view.targets))

        def submit(self, func, callback=None):
            ar = self.view.apply_async(func)
            self._outstanding.add(ar)
            ar.add_done_callback(self._outstanding.discard)
            if callback is not None:
                if self._callbacks is None:
                    self._callbacks = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="minipar-joblib")
                ar.add_done_callback(functools.partial(self._call_later, self._callbacks,
                                                       callback))
            return ar

        @staticmethod
        def _call_later(callbacks, callback, future):
            # executes in the client's I/O thread; RuntimeError: terminated, the Parallel
            # call is over and nothing waits
            with contextlib.suppress(RuntimeError):
                callbacks.submit(callback, future)

        apply_async = submit   # the name joblib < 1.3 calls

        def retrieve_result_callback(self, out):
            return out.result()

        def abort_everything(self, ensure_ready=True):
            _abort_quietly(self.view.client, list(self._outstanding))

        def get_nested_backend(self):
            # an engine is one worker already: Parallel calls nested in a task run in turn
            return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

        def terminate(self):
            if self._callbacks is not None:
                self._callbacks.shutdown(wait=False)
                self._callbacks = None
            if self._own_client is not None:
                self._own_client.close()
                self._own_client = self._view = None
            self.reset_batch_stats()

    return MiniparBackend


# -- timelines

def plot_timeline(ar, filename=None, title=None):
    """A Gantt chart of a run: engines on the y axis, seconds since the first submission
    on the x axis, one bar per task from its start to its end on the engine (failed
    attempts hatched red); the title gives the totals. `ar` is an AsyncResult or a
    list of them.

    Draws with matplotlib. With `filename` (.png, .svg, .pdf: by the extension) the
    figure is written without pyplot, so no GUI backend is involved; without it the
    figure is a pyplot one, which a notebook shows inline. Returns the Figure.
    """
    try:
        import matplotlib  # noqa: F401 - only to say what is missing
    except ImportError:
        raise ImportError("plot_timeline draws with matplotlib: pip install matplotlib") \
            from None
    ars = [ar] if isinstance(ar, concurrent.futures.Future) else list(ar)
    bars = _timeline_bars(ars)
    engines = sorted({b[0] for b in bars})
    row = {e: i for i, e in enumerate(engines)}
    t0 = min((f.metadata["submitted"].timestamp() for a in ars for f in a.futures),
             default=0.0)
    size = (10, 1.2 + 0.45 * max(len(engines), 3))
    if filename is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size)
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=size)
    ax = fig.add_subplot()
    seen = collections.Counter()
    for ok in (True, False):
        mine = [b for b in bars if (b[3] == "ok") == ok]
        if not mine:
            continue
        colors = []
        for e, *_ in mine:   # alternate two shades along each row: neighbours stay apart
            colors.append(("tab:blue", "cornflowerblue")[seen[e] % 2] if ok else "tab:red")
            seen[e] += 1
        ax.barh([row[b[0]] for b in mine], [b[2] - b[1] for b in mine],
                left=[b[1] - t0 for b in mine], height=0.7, color=colors,
                edgecolor="white", linewidth=0.5, hatch=None if ok else "//",
                label="task" if ok else "failed attempt")
    ax.set_yticks(range(len(engines)))
    ax.set_yticklabels([f"engine {e}" for e in engines])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first submission")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    if any(b[3] != "ok" for b in bars):
        ax.legend(loc="lower right")
    wall = max((b[2] for b in bars), default=t0) - t0
    busy = sum(b[2] - b[1] for b in bars)
    name = ars[0]._fname if len(ars) == 1 and ars[0]._fname else "run"
    ax.set_title(title or (
        f"{name}: {len(bars)} tasks on {len(engines)} engines, {wall:.2f} s wall, "
        f"{busy:.2f} s computing ({busy / wall / max(len(engines), 1):.0%} busy)"
        if wall > 0 else f"{name}: no finished tasks"))
    fig.tight_layout()
    if filename is not None:
        fig.savefig(filename, dpi=120)
    return fig


def _timeline_bars(ars):
    """[(engine, started, completed, status)] of every attempt of every request, its
    times as time.time() seconds."""
    bars = []
    for a in ars:
        for f in a.futures:
            md = f.metadata
            # a load-balanced task lists each attempt (the last one too); others ran once
            attempts = md.get("attempts") or [{"engine": md["engine_id"], "status": md["status"],
                                               "started": md["started"],
                                               "completed": md["completed"]}]
            for att in attempts:
                if None not in (att.get("engine"), att.get("started"), att.get("completed")):
                    bars.append((att["engine"], att["started"].timestamp(),
                                 att["completed"].timestamp(), att.get("status")))
    return bars


# -- sync_imports

@contextlib.contextmanager
def sync_imports(view, local=True, quiet=False):
    """DirectView.sync_imports, as ipyparallel's: each import statement this thread runs
    in the block also runs on the view's engines, binding the module (or the names of
    a ``from`` import) in their namespaces, and prints ``importing numpy on engine(s)``
    unless `quiet`. Imports those imports make are left alone. An engine's ImportError
    is raised when the block ends. ``local=False``: not imported here (ipyparallel
    raises NotImplementedError): the names are bound to empty placeholder modules."""
    real_import, owner, results = builtins.__import__, threading.get_ident(), []

    def view_import(name, globals=None, locals=None, fromlist=(), level=0):
        if threading.get_ident() != owner or level:   # another thread's, or relative
            return real_import(name, globals, locals, fromlist, level)
        builtins.__import__ = real_import   # nested imports stay local
        try:
            if local:
                mod = real_import(name, globals, locals, fromlist, level)
            else:
                mod = types.ModuleType(name)
                for key in fromlist or ():
                    setattr(mod, key, types.ModuleType(f"{name}.{key}"))
            if not quiet:
                print(f"from {name} import {', '.join(fromlist)} on engine(s)" if fromlist
                      else f"importing {name} on engine(s)")
            results.append(view.apply_async(_remote_import, name, list(fromlist or ())))
            return mod
        finally:
            builtins.__import__ = view_import

    builtins.__import__ = view_import
    try:
        yield
    finally:
        builtins.__import__ = real_import
    for ar in results:
        ar.get()   # an engine's ImportError is raised here


@interactive
def _remote_import(name, fromlist):
    # runs on an engine, its namespace as globals (see interactive)
    import importlib

    mod = importlib.import_module(name)
    ns = globals()
    if fromlist:
        for key in fromlist:
            ns[key] = getattr(mod, key) if hasattr(mod, key) else \
                importlib.import_module(f"{name}.{key}")
    else:
        top = name.partition(".")[0]   # `import a.b` binds `a`
        ns[top] = importlib.import_module(top)


# -- printed output

class _OutputStream:
    """AsyncResult.stream_output: prints the requests' output as it comes, from its own
    thread, from the call on until the result is done, `timeout` s pass, or the ``with``
    block it opens ends (ipyparallel's form: ``with ar.stream_output(): ar.get()``).
    ``wait()`` (or ``bool()``, minipar's older form) waits for the end and says whether
    the result is done.

        caller's thread                         the stream's thread
        stream_output() ──starts, returns──▶    every `interval` s: print the new lines;
                                                the result done (its callback wakes it) or
                                                the timeout passed: a last pass, and end
        __exit__, wait() ──_leave, _wake──▶     a last pass (lines not ended too), end;
                         ◀──joined──
    """

    def __init__(self, ar, interval, timeout, file):
        self._ar, self._file = ar, file
        self._leave = False             # set by __exit__ (then _wake): stop, the block is over
        self._wake = threading.Event()  # set when the result is done, or by __exit__
        self._thread = threading.Thread(target=self._run, args=(interval, timeout),
                                        name="minipar-stream-output", daemon=True)
        self._thread.start()
        ar.add_done_callback(lambda _: self._wake.set())

    def _run(self, interval, timeout):
        # executes in the stream's thread, the only one printing for it (`shown` is its own)
        shown = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = interval if deadline is None else min(interval, deadline - time.monotonic())
            self._wake.wait(max(0.0, left))   # once set it stays: this pass is the last
            leaving = self._leave   # the block is over: a line not ended yet is printed too
            _show_outputs(self._ar, shown, self._file, partial=leaving)
            if self._ar.done() or leaving or left <= 0:
                return

    def wait(self, timeout=None):
        """Wait until the streaming ends (done, or the timeout passed), at most `timeout`
        s (as every other wait takes), after which it ends too; whether it is done. A
        Ctrl-C while waiting stops the streaming too."""
        try:
            self._thread.join(_timeout_s(timeout))
        finally:
            self._stop()
        return self._ar.done()

    __bool__ = wait

    def _stop(self):
        self._leave = True
        self._wake.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop()


def _show_outputs(ar, shown, file, partial=False):
    # `shown` maps (request index, stream) to the text printed already. While a
    # request runs only whole lines are printed; its final output replaces what was
    # streamed, and starts afresh if a retry ran it again.
    for i, f in enumerate(ar._children):
        finished = f.done()   # first: once done, the metadata below is final
        md = f.metadata
        eid = "?" if md["engine_id"] is None else md["engine_id"]
        for name, out in (("stdout", file or sys.stdout), ("stderr", file or sys.stderr)):
            text = md[name]
            old = shown.get((i, name), "")
            if not text.startswith(old):
                old = ""
            new = text[len(old):]
            if not (finished or partial):
                new = new[:new.rfind("\n") + 1]
            if not new:
                continue
            shown[(i, name)] = old + new
            out.write("".join(f"[{name}:{eid}] {line}\n" for line in new.splitlines()))
            out.flush()
