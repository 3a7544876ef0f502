"""The errors a user of minipar can meet, and the wrapping of exceptions raised remotely.

An engine turns an exception into a ``RemoteError`` with ``wrap`` (name, value and
traceback text, all plain strings, so it unpickles anywhere). The client turns it back
with ``unwrap``: when the original type is a builtin exception, the error raised is an
instance of both ``RemoteError`` and that type, so ``except ZeroDivisionError`` still
works; the remote traceback text is chained as ``__cause__`` (as concurrent.futures does
for process pools).
"""

import builtins
import contextlib
import traceback

TimeoutError = builtins.TimeoutError
# A remote traceback deeper than this (a recursion under a raised sys.setrecursionlimit) is
# sent as its first and last frames: formatting all of a million took an engine 20 s and
# 300 MB, and ended one short of memory. 100..10,000 is reasonable.
TB_FRAMES_SHOWN = 1000


class MiniparError(Exception):
    """Base class of minipar's errors."""


# ipyparallel's names for the base of its errors, so its ``except ipp.error.KernelError``
# (the dependencies example's, for an impossible dependency) catches what it caught there.
KernelError = IPythonError = MiniparError


class ConnectionFileError(MiniparError, FileNotFoundError):
    """A connection file is missing, unreadable or stale."""


@contextlib.contextmanager
def making_profile_folder(path, what):
    """Inside, folder `path` of a profile is made, for `what`: an OSError there (a file in its
    path, no permission, a read-only disk) is raised as a ConnectionFileError saying what to do."""
    try:
        yield
    except OSError as e:
        raise ConnectionFileError(f"cannot make {path} for {what} ({e.strerror}): give a "
                                  "profile folder you can write (--profile-dir)") from None


class SerializationError(MiniparError, TypeError):
    """An object could not be pickled (or unpickled) for the wire."""


class NoEnginesRegistered(MiniparError):
    """No engine is registered to run the work."""


class EngineError(MiniparError):
    """An engine died, or was lost, while work was outstanding on it."""


class TaskAborted(MiniparError):
    """A task was aborted before or while it ran."""


class TaskTimeout(MiniparError):
    """A task ran longer than its time_limit and was interrupted."""


class DependencyTimeout(MiniparError):
    """A task waited longer than its timeout for its dependencies."""


class UnmetDependency(MiniparError):
    """Raised on an engine to say a task cannot run there; it is routed elsewhere."""


class ImpossibleDependency(UnmetDependency):
    """A task's dependencies can never be met."""


class InvalidDependency(ImpossibleDependency):
    """A task depends on ids that do not exist, or on a direct request's (no dependency)."""


class RemoteError(MiniparError):
    """An exception raised on an engine: ``ename``, ``evalue`` and ``traceback`` describe
    it; ``engine_info`` says where (``engine_id``, ``msg_id``)."""

    def __init__(self, ename, evalue, traceback="", engine_info=None):
        # four arguments, which a builtin base (SyntaxError) takes where it refuses two
        super().__init__(ename, evalue, traceback, engine_info)
        self.args = (ename, evalue)   # ipyparallel's: code may unpack them
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = dict(engine_info or {})

    def __repr__(self):   # ipyparallel's: <RemoteError[0]:ZeroDivisionError(division by zero)>
        return (f"<{type(self).__qualname__}[{self.engine_info.get('engine_id', ' ')}]:"
                f"{self.ename}({self.evalue})>")

    def __str__(self):
        where = self.engine_info.get("engine_id")
        return f"{'' if where is None else f'[engine {where}] '}{self.ename}: {self.evalue}"

    def __reduce__(self):
        return _rebuild, (self.ename, self.evalue, self.traceback, self.engine_info)

    # ipyparallel's CompositeError.elist holds (ename, evalue, traceback, engine_info)
    # tuples: each RemoteError in minipar's unpacks and indexes as one
    def __iter__(self):
        return iter((self.ename, self.evalue, self.traceback, self.engine_info))

    def __getitem__(self, index):
        return tuple(self)[index]

    def render_traceback(self, excid=None):   # excid: CompositeError's (which engine's)
        return self.traceback.splitlines()

    def _render_traceback_(self):
        # IPython shows an exception with this method as these lines alone, as ipyparallel's
        # errors have it: the engines' tracebacks, where this process's stack down to
        # ar.get() says nothing of the cause. One made without a traceback says what it is.
        return self.render_traceback() or [str(self)]

    def print_traceback(self, excid=None):
        """Print ``render_traceback(excid)``, the remote traceback (ipyparallel's name)."""
        print("\n".join(self.render_traceback(excid)))


class _RemoteTraceback(Exception):
    """Carries the remote traceback text (its one argument, so its str) as the
    ``__cause__`` of a RemoteError."""


_types = {}


def _rebuild(ename, evalue, tb, engine_info):
    """A RemoteError that is also an instance of the builtin exception `ename`, if any."""
    base = _MINIPAR_ERRORS.get(ename) or getattr(builtins, ename, None)
    cls = RemoteError
    if ename in _MINIPAR_ERRORS or isinstance(base, type) and issubclass(base, Exception) \
            and not issubclass(base, MiniparError):
        cls = _types.get(ename)
        if cls is None:
            try:
                # shown as RemoteError where a traceback names the class: its text names
                # the remote type already ("[engine 0] ZeroDivisionError: ..."), once
                cls = type(base.__name__, (RemoteError, base), {
                    "__module__": __name__, "__qualname__": RemoteError.__qualname__,
                    "__init__": RemoteError.__init__, "__str__": RemoteError.__str__})
            except TypeError:  # a base with its own instance layout cannot be mixed in
                cls = RemoteError
            _types[ename] = cls
    try:
        err = cls(ename, evalue, tb, engine_info)
    except TypeError:  # a base whose __init__ insists on its own arguments
        err = RemoteError(ename, evalue, tb, engine_info)
    if tb:
        err.__cause__ = _RemoteTraceback(tb)
    return err


# minipar's own errors raised remotely keep their type too (TaskTimeout, UnmetDependency...)
_MINIPAR_ERRORS = {c.__name__: c for c in (
    EngineError, TaskAborted, TaskTimeout, DependencyTimeout, UnmetDependency,
    ImpossibleDependency, InvalidDependency, SerializationError, NoEnginesRegistered)}


def wrap(exc, engine_info=None):
    """The RemoteError describing `exc` (called on the engine, in its except block). An
    exception whose __str__ raises, even SystemExit or KeyboardInterrupt, which traceback
    lets through, is described by what that raised: what a task raised must not end the
    engine that reports it."""
    if isinstance(exc, RemoteError):
        return exc
    try:
        evalue = str(exc)
        if isinstance(exc, SystemExit):   # its text is its code alone, often none: say what
            code = "" if exc.code is None else f"{exc.code!r:.80}"   # it was, and what not
            evalue = (f"the task called sys.exit({code}) (or raised SystemExit): that ends "
                      "the task, not its engine, which stays up; return from the task instead")
        elif isinstance(exc, KeyboardInterrupt) and not evalue:   # the engine's have a text
            evalue = ("the task raised it itself (`raise KeyboardInterrupt` in its code or a "
                      "library's, or a SIGINT handler it installed); an interrupt by the engine "
                      "names its sender (rc.send_signal, Ctrl-C at the engine's terminal, kill "
                      "-INT). The engine stays up")
        elif isinstance(exc, MemoryError) and not evalue:   # Python's own has no text
            evalue = ("the task ran out of memory: its engine's process could not allocate "
                      "more (the host's memory, or a limit on the process: ulimit -v, a "
                      "container's or a batch job's, is spent). The engine stays up, what the "
                      "task held freed; use less per task (smaller chunks, results saved to "
                      "files), fewer engines on that host, or give them more memory")
    except BaseException as failure:   # Python says "<exception str() failed>": and why
        evalue = f"{_STR_FAILED[:-1]}: {_described(failure)}>"
    try:
        tb = _traceback_text(exc)
        if tb.endswith(_STR_FAILED + "\n"):   # its last line as the text says it
            tb = tb[:-len(_STR_FAILED) - 1] + evalue + "\n"
    except BaseException:   # its text raised: its frames, with the text said above
        try:
            tb = "".join(["Traceback (most recent call last):\n", *traceback.format_tb(
                exc.__traceback__, TB_FRAMES_SHOWN), f"{type(exc).__name__}: {evalue}\n"])
        except BaseException:   # its frames too (memory short, a loader's get_source that
            tb = f"{type(exc).__name__}: {evalue}\n"   # raised): the task fails, not its engine
    return _rebuild(type(exc).__name__, evalue, tb, engine_info)


_STR_FAILED = "<exception str() failed>"   # what traceback says where str(exc) raised


def _described(exc):
    """ "ValueError: its text", or the type alone where its text raises too."""
    try:
        text = str(exc)
    except BaseException:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback_text(exc):
    """`exc`'s traceback as Python prints it; one deeper than TB_FRAMES_SHOWN keeps its first
    and last TB_FRAMES_SHOWN // 2 frames, and says how many it leaves out between them."""
    tb, half = exc.__traceback__, TB_FRAMES_SHOWN // 2
    depth = sum(1 for _ in traceback.walk_tb(tb))
    deep = depth > TB_FRAMES_SHOWN   # the limit bounds what it chains (__cause__...) too
    te = traceback.TracebackException(type(exc), exc, tb, limit=half if deep else TB_FRAMES_SHOWN)
    text, last = "".join(te.format()), "".join(te.format_exception_only())
    if not deep or not text.endswith(last):
        return text
    for _ in range(depth - half):   # to the last frames: quicker than a negative limit
        tb = tb.tb_next
    return "".join([text[:-len(last)], f"  ... {depth - 2 * half} frames left out ...\n",
                    *traceback.format_tb(tb), last])


def unpickling_hint(exc):
    """What to do about `exc`, raised here unpickling what a task made (its result, its
    data): only a missing module or class is about what is importable here."""
    if isinstance(exc, (ImportError, AttributeError)):
        return "is the module that defines it importable here?"
    return ("the code its class runs to unpickle (a __reduce__'s callable, __setstate__) raised "
            "it here: return plain data (numbers, strings, lists, dicts) or fix that class")


def error(ename, evalue, engine_info=None):
    """A RemoteError made without an exception (by the controller: EngineError, ...)."""
    return _rebuild(ename, evalue, "", engine_info)


class CompositeError(RemoteError):
    """Errors from several engines: ``elist`` holds one RemoteError each. Its text and
    ``render_traceback()`` show the first ``tb_limit`` of them, as ipyparallel's; its
    ``args`` are their names, ``msg`` the message (``message``, IPython.kernel's name)."""

    tb_limit = 4   # ipyparallel's: a typo on 100 engines is not 100 tracebacks

    def __init__(self, message, elist):
        self.msg = self.message = message
        self.elist = list(elist)
        first = self.elist[0] if self.elist else RemoteError("CompositeError", message)
        super().__init__(first.ename, first.evalue, first.traceback)
        self.args = tuple(e.ename for e in self.elist)

    def __reduce__(self):
        return CompositeError, (self.msg, self.elist)

    def __repr__(self):
        return f"CompositeError({len(self.elist)})"

    def __str__(self):
        lines = [f"{_where(e)}{e.ename}: {e.evalue}" for e in self.elist[:self.tb_limit]]
        return "\n".join([self.msg, *lines, *self._more()])

    def _more(self):
        more = len(self.elist) - self.tb_limit
        return [f"... {more} more exceptions ..."] if more > 0 else []

    def raise_exception(self, excid=0):
        """Raise the `excid`-th engine's error, with its remote traceback."""
        raise self._error(excid)

    def _error(self, excid):
        try:
            return self.elist[excid]
        except IndexError:
            raise IndexError(f"an error with id {excid} does not exist; there are "
                             f"{len(self.elist)}") from None

    def render_traceback(self, excid=None):
        """The `excid`-th engine's traceback as lines, after its ``[0:execute]:``; with
        no `excid`, the first ``tb_limit`` engines' one after another."""
        if excid is not None:
            return _traceback_lines(self._error(excid))
        lines = []
        for e in self.elist[:self.tb_limit]:
            lines += [*_traceback_lines(e), ""]
        return lines + self._more()

    def print_tracebacks(self, excid=None):
        """Print every engine's traceback, or the `excid`-th (IPython.kernel's name)."""
        for i, e in enumerate(self.elist):
            if excid is None or i == excid:
                print(_where(e))
                print(e.traceback or f"{e.ename}: {e.evalue}")


def _traceback_lines(e):
    return [_where(e).rstrip(" "), *(e.traceback or f"{e.ename}: {e.evalue}").splitlines()]


def _where(e):
    """``[engine_id:kind]: ``, what CompositeError shows before each engine's error."""
    return f"[{e.engine_info.get('engine_id', '?')}:{e.engine_info.get('kind', 'apply')}]: "


# Names of ipyparallel's Client and views that minipar leaves out on purpose, with what to
# use instead (docs/ipyparallel.rst has them all): asking for one says so.
IPYPARALLEL_ABSENT = dict.fromkeys(
    ("become_dask", "become_distributed", "stop_dask", "stop_distributed"),
    "there is no dask integration") | dict.fromkeys(
    ("spin_thread", "stop_spin_thread"), "the client always runs an I/O thread") | dict.fromkeys(
    ("curve_publickey", "curve_secretkey", "curve_serverkey"), "CurveZMQ keys live in the "
    "connection files (python -m minipar.controller --curve)") | dict.fromkeys(
    ("create_message_futures", "send_apply_request", "send_execute_request"),
    "ipyparallel's wire internals: send through a view (apply_async, execute)") | {
    "history": "no msg_id list is kept: keep the AsyncResults, or ask rc.hub_history()",
    "results": "results live in the AsyncResults; rc.get_result(msg_ids) asks the controller",
    "metadata": "metadata is per AsyncResult: ar.metadata",
    "purge_local_results": "nothing is cached beyond the AsyncResults you hold",
    "purge_hub_results": "use rc.purge_results",
    "debug": "the controller and engines log to their output (MINIPAR_DEBUG=1: verbose)",
    "profile": "a Client's constructor argument only (Client(profile=...))",
    "shutdown": "a load-balanced view has no engines of its own: rc.shutdown()",
}

# Names of ipyparallel's module that minipar leaves out on purpose (``ipp.bind_kernel()``).
_WIRE = "ipyparallel's serialization internals: minipar pickles with cloudpickle"
MODULE_ABSENT = dict.fromkeys(
    ("can", "uncan", "can_map", "uncan_map", "PrePickled", "serialize_object",
     "deserialize_object", "pack_apply_message", "unpack_apply_message", "wrap_exception",
     "unwrap_exception"), _WIRE) | {
    "bind_kernel": "engines are not IPython kernels (no %qtconsole or %connect_info there)",
    "AsyncHubResult": "rc.get_result returns an ipp.AsyncResult",
    "AsyncMapResult": "a map returns an ipp.AsyncResult (iterable, ordered=...)",
    "ParallelFunction": "use @view.parallel(); its class is not exported",
    "RemoteFunction": "use @view.remote(); its class is not exported",
    "parallel": "a view's decorator only: @view.parallel()",
    "remote": "a view's decorator only: @view.remote()",
    "TaskRejectError": "a task that cannot run on its engine raises UnmetDependency to run "
                       "on another (ImpossibleDependency: on none)",
    "version_info": "use minipar.__version__",
    "collect_exceptions": "views raise CompositeError themselves",
    "AlreadyDisplayedError": "there is no Jupyter display machinery",
    "MultipleInstanceError": "there is no traitlets singleton machinery",
    "load_jupyter_server_extension": "there is no Jupyter server extension",
}

# ipyparallel's submodules that minipar has no module for, on purpose: their helper scripts
# import them by path (``from ipyparallel.util import interactive``), which with the package
# renamed is an ImportError saying what to use instead (the finder in minipar/__init__.py).
SUBMODULE_ABSENT = {
    "util": "its helpers are internal; util.interactive is minipar.interactive (from minipar "
            "import interactive), and the others (disambiguate_url, utcnow...) have no "
            "public counterpart",
    "serialize": "minipar pickles with cloudpickle (minipar.use_pickle, use_dill and "
                 "use_cloudpickle choose); can, uncan and serialize_object are wire "
                 "internals (minipar.protocol)",
    "cluster": "Cluster and ClusterManager are minipar.Cluster and minipar.ClusterManager "
               "(in minipar.launcher); ipcluster is python -m minipar.launcher",
    "apps": "ipcontroller, ipengine and ipcluster are python -m minipar.controller, "
            "minipar.engine and minipar.launcher",
    "joblib": "register the backend with view.register_joblib_backend() or "
              "minipar.register_joblib_backend(); its class is not exported",
    "traitlets": "minipar configures with plain keyword arguments, not traitlets",
    "nbextension": "there is no Jupyter server extension",
    "shellcmd": "the ssh launchers run their commands themselves (minipar.ssh)",
    "logger": "there is no iplogger: the controller and engines log to their output "
              "(MINIPAR_DEBUG=1: more)",
}

# ipyparallel's packages that minipar has as one module each (client.py, controller.py,
# engine.py), by ipyparallel's dotted path: an import by that path with the package renamed
# (``from minipar.client.view import DirectView``) is an ImportError saying where the names
# are (the finder in minipar/__init__.py), not Python's "'minipar.client' is not a
# package". Those modules have an empty ``__path__``, without which Python says that
# before it asks any finder; a path not here stays the plain "No module named".
_RUN = "run python -m minipar.{0} (its parts are internal to minipar.{0})"
SUBMODULE_MOVED = {
    "client.client": "Client is minipar's: from minipar import Client",
    "client.view": "DirectView, LoadBalancedView, BroadcastView and ViewExecutor are "
                   "minipar's: from minipar import DirectView",
    "client.asyncresult": "AsyncResult is minipar's (AsyncMapResult and AsyncHubResult are "
                          "AsyncResults too): from minipar import AsyncResult",
    "client.remotefunction": "use the decorators @view.remote() and @view.parallel(); "
                             "RemoteFunction and ParallelFunction are not exported",
    "client.magics": "%px and the other magics come with rc.activate(), or at once for a "
                     "Client made inside IPython",
    "client.futures": "every AsyncResult is a concurrent.futures.Future",
    "client.map": "scatter and map split sequences in blocks (dist='b') by themselves",
    "controller.dependency": "Dependency, depend, dependent and require are minipar's: from "
                             "minipar import Dependency",
    "controller.dictdb": "the task records are in minipar.records; query them with "
                         "rc.db_query",
    "controller.sqlitedb": "the task records are in minipar.records (python -m "
                           "minipar.controller --db sqlite); query them with rc.db_query",
    "engine.datapub": "from minipar.datapub import publish_data",
    **{f"controller.{m}": _RUN.format("controller") for m in (
        "app", "hub", "scheduler", "task_scheduler", "broadcast_scheduler", "heartmonitor")},
    **{f"engine.{m}": _RUN.format("engine") for m in ("app", "engine", "kernel", "nanny")},
}

# ipyparallel Cluster's traitlets options that minipar's Cluster has no argument for, and
# its other names that minipar's lacks (a keyword argument's TypeError, an AttributeError)
_BY_ID = "ipyparallel 9's raises NotImplementedError (it cannot find an engine by id): "
CLUSTER_ABSENT = {
    # taken as arguments (their values go to controller_args, engines, controller); not kept
    "controller_ip": 'a constructor argument only: pass controller_args=["--ip", ip] or '
                     'controller_ip=ip ("*": every interface); read cluster.controller_args',
    "controller_location": "a constructor argument only (controller_location=host): read "
                           "cluster.controller_args",
    "engine_launcher_class": 'a constructor argument only, a name as engines= takes ("local", '
                             '"mpi", "ssh", "slurm"...): read cluster.engine_kind',
    "controller_launcher_class": 'a constructor argument only, a name as controller= takes '
                                 '("local", "ssh"...): read cluster.controller_kind',
    "engine_timeout": "pass timeout=, the seconds the whole start may take",
    "delay": "leave it out: engines start once the controller's connection file exists",
    "send_engines_connection_env": "leave it out: engines read the connection file",
    "load_profile": "leave it out: there is no traitlets configuration to load",
    "cluster_file": "leave it out: the file is <profile_dir>/security/cluster-<id>.json",
    # not a Cluster's option in ipyparallel either ($IPYTHONDIR is); Client(ipython_dir=)'s is
    "ipython_dir": "pass profile_dir=<that folder>/profile_<name>, or set $MINIPAR_DIR to it "
                   "(the folder of the profiles, as ipython_dir is of ipyparallel's)",
    # its methods and other attributes
    "profile": "a constructor argument only (Cluster(profile=...)): read cluster.profile_dir",
    "profile_config": "there is no traitlets configuration to load",
    "from_dict": "use Cluster.from_file (the cluster file holds to_dict())",
    "engine_set": "engine sets are in cluster.engines (engine_set_id -> launcher)",
    **dict.fromkeys(("write_cluster_file", "update_cluster_file", "remove_cluster_file"),
                    "not needed: the cluster file is written as the controller and engine "
                    "sets start and stop, and removed once nothing of the cluster runs"),
    **dict.fromkeys(("stop_engine", "stop_engine_sync"), _BY_ID + "rc.shutdown(targets=[i]), "
                    "or cluster.stop_engines(engine_set_id)"),
    **dict.fromkeys(("restart_engine", "restart_engine_sync"), _BY_ID + "cluster.restart_"
                    "engines(engine_set_id) restarts a set; Cluster(restart_engines="
                    "'on_failure') restarts those that die"),
    **dict.fromkeys(("signal_engine", "signal_engine_sync"), _BY_ID + "rc.send_signal(sig, "
                    "targets=[i]), or cluster.signal_engines(sig, engine_set_id)"),
}

# ipyparallel AsyncResult's names that minipar's leaves out
ASYNCRESULT_ABSENT = {
    "join": "keep the AsyncResult you split() (it is the joined one); to wait for several, "
            "concurrent.futures.wait(ars)",
    "owner": "not needed: the client caches no results for an owner to clear; they live in "
             "the AsyncResults that hold them",
}


# ipyparallel.error's names that minipar's errors (ipp.error) lacks: asking for one says why
_ERROR_ABSENT = ("TaskRejectError", "AlreadyDisplayedError", "collect_exceptions",
                 "wrap_exception", "unwrap_exception")


def __getattr__(name):   # only for a name the module lacks: ``ipp.error.TaskRejectError``
    why = MODULE_ABSENT[name] if name in _ERROR_ABSENT else None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}"
                         + (f": minipar leaves ipyparallel's out; {why}" if why else ""))


_NO_TUNNEL = ("minipar makes no ssh tunnels: run it where the controller's address (its "
              "connection file's location) is reachable, or forward the ports with ssh -L")
# options of ipengine and ipcontroller that minipar's entry points leave out, with what to do
IPYPARALLEL_OPTIONS = dict.fromkeys(("--ssh", "--sshkey", "--enginessh"), _NO_TUNNEL) | {
    "--mpi": "not needed: an engine under mpiexec takes its rank from mpiexec's environment "
             "(the engine property mpi_rank); tasks use MPI as any program does (mpi4py)",
    # IPython.kernel's, of the classic documents: its .furl files are minipar's .json ones
    "--furl-file": "give the controller's minipar-engine.json (in its profile's security "
                   "folder, or a copy of it) with --file PATH",
    **dict.fromkeys(("--client-port", "--engine-port"), (
        "the controller takes --port (registration) or --ports (a range or list of candidate "
        "ports for all its sockets); --reuse keeps the ports and key across restarts, so "
        "copied connection files stay valid"))}


def parse_args(parser, argv=None):
    """`parser`'s parse_args, where an option of ipyparallel's that minipar leaves out
    (``ipengine --ssh=host``, as its documents write it) is a usage error saying what to do
    instead of argparse's bare 'unrecognized arguments', as is ipcluster's ``-n 4`` given to
    one process. A prefix of an option is not taken for it (as ipyparallel takes none):
    ``controller --n 4`` was --nodb and a refused '4', and ``--n`` alone ran it with no records."""
    parser.allow_abbrev = False
    args, unknown = parser.parse_known_args(argv)
    for option in unknown:
        why = IPYPARALLEL_OPTIONS.get(option.partition("=")[0])
        if why:
            parser.error(f"{option}: ipyparallel's option; {why}")
        if option.partition("=")[0].rstrip("0123456789") in ("-n", "--n"):
            parser.error(f"{option}: {parser.prog} starts one process, not a number of engines: "
                         f"`python -m {__package__}.launcher start -n 4` starts a controller and "
                         f"4 engines, `python -m {__package__}.launcher engines -n 4` adds 4 "
                         "engines to a running cluster")
    if unknown:
        parser.error("unrecognized arguments: " + " ".join(unknown))
    return args


def refuse_absent(owner, given, absent):
    """The TypeError for keyword arguments `given` that `owner` lacks, saying what to do
    instead for one in `absent` (name -> advice)."""
    for name in sorted(given, key=lambda k: k not in absent):
        why = absent.get(name)
        raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}"
                        + (f": minipar leaves ipyparallel's out; {why}" if why else ""))


def _public_name(obj):
    """The name of `obj`'s class, or of the first public one it derives from: an
    AsyncResult's, not ``_OneRequest``."""
    return next(c.__name__ for c in type(obj).__mro__ if not c.__name__.startswith("_"))


class ClientSide:
    """A base of what lives in the client only (Client, the views, AsyncResult): one sent
    to the engines (a task's function uses it, or gets it as an argument) is a TypeError
    saying what to do (`UNSENT`), not pickle's failure deep inside on a socket or a lock."""

    UNSENT = "use it on the client side only, and send the task the values it needs"

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a minipar {_public_name(self)} cannot be sent to the engines (a "
                        f"task's function refers to it, or it is an argument): {self.UNSENT}")

    def __copy__(self):   # copy.copy would use __reduce_ex__: a shallow copy, as before
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new


class SaysWhyAbsent:
    """A base of Client, the views, AsyncResult and Cluster: a name one lacks is an
    AttributeError which, for a name ipyparallel's has, says what to use instead, from
    the class's table (``class Cluster(SaysWhyAbsent, absent=CLUSTER_ABSENT)``: name ->
    what to use; IPYPARALLEL_ABSENT by default). dir() and tab completion leave those out."""

    _absent = IPYPARALLEL_ABSENT

    def __init_subclass__(cls, absent=None, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._absent = absent or cls._absent

    def __getattr__(self, name):   # only for a name the object lacks
        why = self._absent.get(name)
        raise AttributeError(f"{_public_name(self)!r} object has no attribute {name!r}"
                             + (f": minipar leaves ipyparallel's out; {why}" if why else ""))
