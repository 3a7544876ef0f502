"""publish_data: a running task sends data to its client while it runs (ipyparallel's
``datapub``)::

    task on an engine ── publish_data({'step': i}) ──▶ the engine's Streamer
        receiver thread, every STREAM_INTERVAL_S ── stream (name "data") ──▶ controller
        ──▶ client: ar.data (that request's metadata['data']) is updated with it

The reply carries everything the task published, so ``ar.data`` is complete once the
result is in, also for a client that asks for the result later. The engine imports this
module (it imports nothing from the client), sets ``_publish`` and ``_shell``, and makes
``display`` a builtin, as on ipyparallel's engines (IPython kernels). It runs an
execute's code here too (run_cell), as such a kernel shows a cell: the value of its last
expression comes back as the reply's execute_result, ``Out[engine:n]`` in %px. What a
task prints goes to a ``Capture``, the engine's sys.stdout and sys.stderr while it runs,
which hands it to that Streamer too (``stream`` messages, names "stdout", "stderr").
"""

import ast
import contextlib
import importlib.util
import inspect
import io
import marshal
import sys
import threading

# An execute's result (%px's Out[engine:n]) is cut to this many characters of text, so its
# reply stays small whatever the repr; 10,000..1,000,000 is reasonable.
EXECUTE_RESULT_CHARS = 100_000
OUTPUT_TAIL_CHARS = 10_000   # what is kept of output the engine had no memory to send whole

_publish = None   # set by the engine: its Streamer.publish_data
_shell = None     # set by the engine: its InteractiveShell, made at the first call
_under = None     # the value run_cell last bound to `_`: a `_` the code bound is kept
# An execute's code may `await` at its top level, as a cell may in an IPython kernel (autoawait):
# it runs in this asyncio loop, one for the engine's life as a kernel's, and the main thread's
# current one (a task a cell starts, even with asyncio.ensure_future and no await, is there for
# the next cell to await). An interrupted one is cancelled and given this long to unwind (its
# `finally` blocks); 0.1..5 is reasonable.
_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_loop = None
CANCELLED_UNWIND_S = 1.0


def publish_data(data):
    """Publish `data` (a dict of picklable values) from the task running on this
    engine: its client's ``ar.data`` is updated with it (``dict.update``), within
    STREAM_INTERVAL_S. The values are pickled when sent, not when published: publish a
    new object rather than changing one already published."""
    if _publish is None:
        raise RuntimeError("publish_data works only inside a task running on an engine")
    _publish(dict(data))


def display(*objs, **kwargs):
    """IPython's display() in a task on an engine: each object's display data (its mime
    bundle: text/plain, ``'hi'`` for the string, and text/html, image/png... where it has
    them) goes to its request's ``ar.outputs``, as ipyparallel's, which %px and
    ``ar.display_outputs()`` show (``[output:0]`` then ``'hi'``). So does IPython.display's
    own, once a task imports IPython (see _ShellOnImport). Without IPython on the engine:
    each object's repr, printed."""
    if _shell is None:
        raise RuntimeError("this display works only inside a task running on an engine")
    try:
        from IPython.display import display
    except ImportError:
        return print(*map(repr, objs), sep="\n")
    _shell()   # without a shell, IPython's display prints str(x): hi, not 'hi'
    display(*objs, **kwargs)


def display_publisher(streamer):
    """The class of the engine's shell's display_pub (IPython's DisplayPublisher, so this
    imports IPython): what display() publishes goes to `streamer`'s running request's
    outputs, for its reply; between requests (a task's thread), or data a reply's header
    cannot carry, is printed as IPython's own does (text/plain), as output."""
    from IPython.core.displaypub import DisplayPublisher

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, *args, **kwargs):
            output = {"data": dict(data), "metadata": dict(metadata or {})}
            with contextlib.suppress(ValueError):   # marshal's: plain data only
                marshal.dumps(output)
                with streamer._lock:
                    if streamer.outputs is not None:
                        return streamer.outputs.append(output)
            return super().publish(data, metadata, *args, **kwargs)

    return Publisher


class _ShellOnImport:
    """A sys.meta_path finder: once a task imports IPython, the engine's shell is made (see
    display_publisher), for IPython.display.display, which prints where no shell exists, to
    keep display data. The engine imports no IPython itself: a task that uses none pays
    nothing, and one that does the shell's 0.1 s once."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "IPython":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(cls)   # once, and the search below is the other finders'
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if hasattr(loader, "exec_module"):
            run = loader.exec_module

            def exec_module(module):
                run(module)
                with contextlib.suppress(Exception):   # else display() prints, as before
                    _shell()
            loader.exec_module = exec_module
        return spec


def make_shell_on_import():
    """Make the engine's shell when a task imports IPython (at once if one has)."""
    if "IPython" in sys.modules:
        return _shell()
    if _ShellOnImport not in sys.meta_path:
        sys.meta_path.insert(0, _ShellOnImport)


class Streamer:
    """The running request's new output and published data (one for the engine's life),
    collected from whatever thread prints it and sent by the engine's receiver thread as
    ``stream`` messages every STREAM_INTERVAL_S (minipar.engine's).

    The receiver sends, not the printing thread: the main thread may compute for a minute
    after printing a line, and other threads print too. The reply carries the whole
    output anyway, so text pending when the request ends is dropped, not sent.

    What a request's threads print after it ended, until the next starts, is its too (as
    an IPython kernel's output goes with the last request's header): sent once every reply
    has gone (`replied`), marked ``late``, for its client's ``ar.stdout`` to grow."""

    def __init__(self):
        self._lock = threading.Lock()
        self.parent = None      # msg_id of the request whose output this is
        self.last = None        # ... of the request that ended last
        self.replied = False    # whether every reply has been sent (Engine._send_reply)
        self._pending = []      # [(name, text)] not yet sent
        self._late = []         # [(msg_id, name, text)] a request's threads printed after it
        self.outputs = None     # the running request's display data (display_publisher)
        self.data = {}          # what the request published (datapub), all of it
        self._new_data = {}     # ... and the part not yet sent

    def start(self, parent):
        with self._lock:
            self.parent, self._pending, self.outputs = parent, [], []

    def stop(self):
        """End the request's streaming; returns all the data it published, and its display
        data (ar.outputs)."""
        with self._lock:
            self.last, self.parent, self._pending, self.replied = self.parent, None, [], False
            data, self.data, self._new_data = self.data, {}, {}
            outputs, self.outputs = self.outputs, None
        return data, outputs

    def publish_data(self, data):
        # any thread of the running request (datapub.publish_data)
        with self._lock:
            if self.parent is None:
                raise RuntimeError("publish_data was called while no task runs on this "
                                   "engine: call it from inside a task")
            self.data.update(data)
            self._new_data.update(data)

    def take_data(self):
        """(parent, data published since the last call), or None."""
        with self._lock:
            if not self._new_data:
                return None
            data, self._new_data = self._new_data, {}
            return self.parent, data

    def add(self, name, text):
        with self._lock:
            if self.parent is not None:
                self._pending.append((name, text))
            elif self.last is not None and text:
                self._late.append((self.last, name, text))

    def take_late(self):
        """[(msg_id, {name: text})] of what requests' threads printed after them, once
        every reply has been sent (the client adds it to a finished request's output)."""
        with self._lock:
            if not self._late or not self.replied:
                return []
            late, self._late = self._late, []
        by_request = {}
        for msg_id, name, text in late:
            by_request.setdefault(msg_id, []).append((name, text))
        return [(msg_id, texts) for msg_id, pending in by_request.items()
                if (texts := _joined(pending)) is not None]

    def take(self):
        """(parent, {name: text}) of the output not yet sent, or None."""
        with self._lock:
            if not self._pending:
                return None
            pending, parent, self._pending = self._pending, self.parent, []
        texts = _joined(pending)
        return None if texts is None else (parent, texts)


def _joined(pending):
    """{name: text} of [(name, text)], joined once: adding each write to a string copies
    the text so far each time, which for a task printing 100,000 lines held the receiver
    thread (and with it streaming, aborts, time limits and shutdown) for minutes."""
    pieces = {}
    for name, text in pending:
        pieces.setdefault(name, []).append(text)
    try:
        return {name: "".join(texts) for name, texts in pieces.items()}
    except MemoryError:   # not sent meanwhile (the reply has its end): this thread died of
        return None       # it, and with it aborts, time limits and shutdown (RLIMIT_AS)


class Capture(io.TextIOBase):
    """The engine's stdout or stderr for requests (`name`): one object each for the engine's
    life, as an IPython kernel's, so what holds on to it (the handler of a task's
    logging.basicConfig, a thread a task left) writes to the request running at the time.
    While one runs, what is written is kept whole for its reply and handed to the `streamer`
    (the engine's Streamer) so the client sees it meanwhile; between requests it goes to
    the engine's own stream (its log) and to the client of the request that ended last. A
    task that closes it closes it for the rest of its request, as a file: the next request
    gets it open."""

    closed = False   # this request's (see close), not io's, which no request could undo
    # io's None failed code that reads it (sys.stdout.encoding.lower(), codecs.getwriter):
    # the text travels to the client as UTF-8, and an IPython kernel's says so too
    encoding = "utf-8"

    def __init__(self, name, streamer):
        self.name = name
        self.parts = None   # the running request's, else None
        self._streamer = streamer

    def writable(self):
        return True

    @property
    def buffer(self):   # none, as on an IPython kernel (hasattr is False), but saying why
        raise AttributeError(f"a task's sys.{self.name} on an engine has no buffer: it takes "
                             f"text, sent to its client; write str (bytes.decode()) to sys."
                             f"{self.name}, or bytes to a file")

    def close(self):
        # io's close() lasted the engine's life: every later request's flush (print(...,
        # flush=True), logging's) raised ValueError, "I/O operation on closed file."
        self.closed = True

    def flush(self):
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def write(self, s):
        if not isinstance(s, str):   # as a real text stream: this task's error, raised here,
            # not a TypeError later in the engine's own join, which ended the engine
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        parts = self.parts
        if parts is None:   # the engine's own (its log), and the last request's (see Streamer)
            self._streamer.add(self.name, s)
            return getattr(sys, f"__{self.name}__").write(s)
        parts.append(s)
        if s:
            self._streamer.add(self.name, s)
        return len(s)

    def start(self):
        self.parts = []

    def stop(self):
        """End the request's capture (open again, if it closed it); returns all it wrote."""
        parts, self.parts, self.closed = self.parts, None, False
        try:
            return "".join(parts)
        except MemoryError:   # a task near its memory limit (RLIMIT_AS) that printed 100 MB:
            return _tail(parts, OUTPUT_TAIL_CHARS)   # its engine died of it, its request lost


def _tail(parts, n):
    """The last `n` characters of the text in `parts`, said to be that, joined without
    joining the rest (for which memory was short)."""
    tail, size = [], 0   # a running size: summing `tail` again at each part was quadratic
    for part in reversed(parts):
        tail.append(part[-(n - size):])
        if (size := size + len(tail[-1])) >= n:
            break
    return (f"[the engine was short of memory for the {sum(map(len, parts))} characters this "
            f"task wrote here; the last {n}:]\n" + "".join(reversed(tail)))


def compile_cell(code, name, silent):
    """An execute's code compiled, or (not `silent`, as %px sends it) parsed for run_cell
    to split off its last expression; a SyntaxError as compile's."""
    return compile(code, name, "exec", _AWAIT | (0 if silent else ast.PyCF_ONLY_AST))


def _run(code, ns):
    """eval `code` in `ns`; code with a top-level await is a coroutine's: run in `_loop`."""
    result = eval(code, ns)
    if not code.co_flags & inspect.CO_COROUTINE:
        return result
    import asyncio   # here: only such code pays for it
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)   # again: a task's asyncio.run() leaves none set
    task = _loop.create_task(result)
    try:   # not run_until_complete(task): its frame would be in the task's error's traceback
        _loop.run_until_complete(asyncio.wait([task]))
    finally:
        if not task.done():   # an interrupt (abort, time_limit, Ctrl-C) left the loop's wait
            task.cancel()
            _loop.run_until_complete(asyncio.wait([task], timeout=CANCELLED_UNWIND_S))
    return task.result()


def run_cell(compiled, source, name, ns, count, trap=False):
    """Run compile_cell's `compiled` (from `source`) in the namespace `ns` (with the shell's
    get_ipython() a builtin if `trap`). Its AST runs as IPython's 'last_expr' does: a last
    expression statement is evaluated apart and its value, unless None or silenced by a ';'
    after it, is bound to `_` and returned as ipyparallel's execute_result ({'data':
    {'text/plain': ...}, 'execution_count': `count`, 'metadata': {}}); else None. Code that
    awaits at its top level runs in the engine's asyncio loop (see _AWAIT)."""
    global _under
    with _shell().builtin_trap if trap else contextlib.nullcontext():
        if not isinstance(compiled, ast.Module):   # silent: nothing comes back
            return _run(compiled, ns)   # None: a module's code returns nothing
        body = compiled.body
        last = body.pop() if body and isinstance(body[-1], ast.Expr) else None
        _run(compile(compiled, name, "exec", _AWAIT), ns)
        if last is None:
            return None
        value = _run(compile(ast.Expression(last.value), name, "eval", _AWAIT), ns)
    line = source.encode().splitlines()[last.end_lineno - 1]   # the parser's (not str's: \x0c)
    if value is None or line[last.end_col_offset:].lstrip().startswith(b";"):
        return None
    if ns.get("_", _under) is _under:   # as IPython's displayhook, not over the code's own
        ns["_"] = _under = value        # `_` (gettext's)
    try:   # IPython's text/plain, as its displayhook shows it (pretty-printed)
        from IPython.lib.pretty import pretty
    except ImportError:
        pretty = repr
    try:
        text = pretty(value)
    except Exception as e:   # as IPython's: said, and no Out
        print(f"Out[{count}]: its text/plain raised {type(e).__name__}: {e}", file=sys.stderr)
        return None
    if len(text) > EXECUTE_RESULT_CHARS:
        text = (f"{text[:EXECUTE_RESULT_CHARS]}\n... (cut at {EXECUTE_RESULT_CHARS} of "
                f"{len(text)} characters: pull the value, or print it)")
    return {"data": {"text/plain": text}, "execution_count": count, "metadata": {}}
