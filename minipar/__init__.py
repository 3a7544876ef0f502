"""minipar: parallel computing in the shape of IPython parallel, small enough to read.

A controller (``python -m minipar.controller``), engines (``python -m minipar.engine``)
and a ``Client`` that drives them directly (``rc[:]``, a DirectView) or load-balanced
(``rc.load_balanced_view()``). ``Cluster(n=4)`` starts a local one.
"""

__version__ = "0.1.0"

import importlib
import logging
import os
import sys

# pip reads requires-python; a vendored copy on an older Python is told here, in a
# sentence, rather than by a TypeError from the first newer syntax it meets.
if sys.version_info < (3, 9):
    raise ImportError("minipar needs Python 3.9 or newer; this is Python "
                      + ".".join(map(str, sys.version_info[:3])))


def _quiet_ctrl_c(kind, value, tb, previous=sys.excepthook):
    """sys.excepthook of ``python -m minipar.<command>``, from its package's import: a
    Ctrl-C as its modules import (a third of a second, before main() catches one) says
    "interrupted" and ends it by SIGINT (status 130), as one in main() does, where Python
    printed its traceback. MINIPAR_DEBUG=1 shows it; another program's errors pass on."""
    ours = sys.argv[0] == "-m" or os.path.dirname(os.path.abspath(sys.argv[0])) == __path__[0]
    if issubclass(kind, KeyboardInterrupt) and ours and not os.environ.get("MINIPAR_DEBUG"):
        print("interrupted", file=sys.stderr)
    else:
        previous(kind, value, tb)


if sys.argv[:1] == ["-m"]:   # Python is finding a module of this package to run as __main__
    sys.excepthook = _quiet_ctrl_c


class _UntilConfigured(logging.StreamHandler):
    """Today's stderr (as logging's lastResort, which shows WARNING and up alone) while this
    process has set up no logging; once the root logger has handlers, they show each line."""

    def emit(self, record):
        if not logging.getLogger().handlers:
            self.stream = sys.stderr   # pytest, a notebook replace it
            super().emit(record)


_UNTIL_CONFIGURED = _UntilConfigured()


def _show_log_lines(level, *modules):
    """Lines of this package's `modules` from `level` up on stderr, in a user's process
    (``Cluster(log_level=...)``, as ipyparallel's Cluster.log shows its own)."""
    for module in modules:
        logging.getLogger(f"{__name__}.{module}").setLevel(level)
    logging.getLogger(__name__).addHandler(_UNTIL_CONFIGURED)   # once: a second add is none
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION  # ipp's names

from . import errors
from .dependency import Dependency, Reference, depend, dependent, require
from .errors import (CompositeError, DependencyTimeout, EngineError, ImpossibleDependency,
                     InvalidDependency, IPythonError, KernelError, MiniparError,
                     NoEnginesRegistered, RemoteError, SerializationError, TaskAborted,
                     TaskTimeout, TimeoutError, UnmetDependency)

# ipyparallel's module of exceptions is ``ipyparallel.error``; minipar's ``errors`` goes by
# that name too, so ``except ipp.error.RemoteError`` and ``from ipyparallel.error import
# RemoteError`` (its nwmerge example) work with only the package name changed.
error = sys.modules[__name__ + ".error"] = errors

# The client side is imported on first use, from the module that holds it: every engine
# imports this package (``python -m minipar.engine``) and needs none of it.
_LAZY = {
    "AsyncResult": "client", "BroadcastView": "client", "Client": "client",
    "DirectView": "client", "LoadBalancedView": "client", "ViewExecutor": "integrations",
    "interactive": "client",
    "plot_timeline": "integrations", "register_joblib_backend": "integrations",
    "MapTask": "classic", "MultiEngineClient": "classic", "PendingResult": "classic",
    "StringTask": "classic", "Task": "classic", "TaskClient": "classic",
    "TaskResult": "classic",
    "Cluster": "launcher", "ClusterManager": "launcher",
    "use_cloudpickle": "protocol", "use_dill": "protocol", "use_pickle": "protocol",
}


class _AbsentSubmodules:
    """The finder of sys.meta_path that makes ``import minipar.util`` (ipyparallel's
    ``ipyparallel.util``, renamed) an ImportError saying what to use instead
    (errors.SUBMODULE_ABSENT), and ``from minipar.client.view import DirectView`` one
    saying where the name is (errors.SUBMODULE_MOVED). It is the last finder, so it is
    asked only about a module no other found: an import that works, here or in any
    other package, never reaches it."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != __name__:
            return None
        # no `name=` below: with one, `from minipar import util` would swallow the error
        # (importlib's rule for a fromlist's missing module) and say less
        why = errors.SUBMODULE_ABSENT.get(name)
        if why:
            raise ModuleNotFoundError(f"No module named {fullname!r}: minipar leaves "
                                      f"ipyparallel's {name} out on purpose: {why}")
        why = errors.SUBMODULE_MOVED.get(name)
        if why:
            module = name.partition(".")[0]
            raise ModuleNotFoundError(f"No module named {fullname!r}: minipar.{module} is one "
                                      f"module, not a package as ipyparallel.{module} is: {why}")
        return None


# one such finder, even if this module is loaded again (importlib.reload)
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__module__", None) != __name__]
sys.meta_path.append(_AbsentSubmodules)


def __getattr__(name):
    if name not in _LAZY:
        why = errors.MODULE_ABSENT.get(name) or errors.SUBMODULE_ABSENT.get(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}"
                             + (f": minipar leaves ipyparallel's out; {why}" if why else ""))
    value = getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    globals()[name] = value   # found directly from now on
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted([
    *_LAZY, "CompositeError", "Dependency", "DependencyTimeout", "EngineError",
    "ImpossibleDependency", "InvalidDependency", "IPythonError", "KernelError", "MiniparError",
    "NoEnginesRegistered", "Reference", "RemoteError", "SerializationError", "TaskAborted",
    "TaskTimeout", "TimeoutError", "UnmetDependency", "depend", "dependent", "require",
    "__version__", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION",   # futures' names
])
