"""minipar: parallel computing in the shape of IPython parallel, small enough to read.

A controller (``python -m minipar.controller``), engines (``python -m minipar.engine``)
and a ``Client`` that drives them directly (``rc[:]``, a DirectView) or load-balanced
(``rc.load_balanced_view()``). ``Cluster(n=4)`` starts a local one.
"""

__version__ = "0.1.0"

from .client import AsyncResult, Client, DirectView, LoadBalancedView, interactive
from .client import ViewExecutor
from .integrations import plot_timeline, register_joblib_backend  # ecosystem
from .classic import (MapTask, MultiEngineClient, PendingResult, StringTask, Task,  # classic
                      TaskClient, TaskResult)
from .dependency import Dependency, depend, dependent, require
from .errors import (CompositeError, DependencyTimeout, EngineError, ImpossibleDependency,
                     InvalidDependency, MiniparError, NoEnginesRegistered, RemoteError,
                     SerializationError, TaskAborted, TaskTimeout, TimeoutError,
                     UnmetDependency)


def __getattr__(name):
    # the launcher is imported on first use: `import minipar` stays fast for engines
    if name == "Cluster":
        from .launcher import Cluster

        return Cluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted([
    "AsyncResult", "Client", "Cluster", "CompositeError", "Dependency", "DependencyTimeout",
    "DirectView", "EngineError", "ImpossibleDependency", "InvalidDependency", "LoadBalancedView",
    "MiniparError", "NoEnginesRegistered", "RemoteError", "SerializationError", "TaskAborted",
    "TaskTimeout", "TimeoutError", "UnmetDependency", "depend", "dependent", "interactive",
    "require", "__version__",
    "ViewExecutor", "plot_timeline", "register_joblib_backend",                   # ecosystem
    "MapTask", "MultiEngineClient", "PendingResult", "StringTask", "Task", "TaskClient",
    "TaskResult",                                                                  # classic
])
