"""Dependencies of load-balanced tasks: functional (where a task can run) and graph
(when and where, relative to other tasks).

Functional dependencies travel with the task's function and are checked on the engine,
when the task starts::

    client: lview.apply(dependent(f, df, ...))  ──▶ scheduler ──▶ engine: df(...) is False?
                                                       ▲              │ raise UnmetDependency
                                                       └── "unmet" ───┘ (reply status)

An unmet task goes back to the scheduler, which tries an engine it has not tried yet, and
fails it with ``ImpossibleDependency`` when none is left. ``@require`` and ``@depend`` are
decorators that make a ``dependent``.

Graph dependencies (``Dependency``) are checked by the scheduler, never on an engine: the
client sends them in the task's header as a plain dict ``{"ids", "all", "success",
"failure"}`` (``Dependency._header_dict``), which is the shape ``scheduler.py`` reads. Whether
one is met or can never be met is decided in one place, ``is_met`` / ``is_unreachable``:
the scheduler calls them on the counts it keeps per task, ``Dependency.check`` /
``unreachable`` on counts made from sets of outcomes. ``dependency_fields`` turns a
view's ``after`` / ``follow`` flags into those dicts, and refuses what is not one.

``Reference(name)`` is here too: like a ``dependent``, an argument the engine unpickles
and turns into something of its own (the object `name` names in its namespace), with
``resolve_references``, which the engine calls only when unpickling a request made one.

This module imports only ``errors``: an engine unpickling a ``dependent`` or a
``Reference`` imports it and nothing of the client's.
"""

import importlib
import re
import sys

from .errors import UnmetDependency


# ---------------------------------------------------------------- functional dependencies

class dependent:
    """`f` that runs only where ``df(*dargs, **dkwargs)`` does not return False.

    Called on an engine: when the check returns False it raises ``UnmetDependency`` and
    the scheduler sends the task to another engine; anything else (None included) lets
    `f` run. A ``dependent`` pickles like its parts, so `f` and `df` may be functions
    defined interactively; on the engine both see its namespace as their globals.
    """

    def __init__(self, f, df, /, *dargs, **dkwargs):
        if not callable(f) or not callable(df):
            raise TypeError("dependent(f, df, *args, **kwargs) takes two callables: the task "
                            "and the function that checks whether it can run")
        self.f, self.df, self.dargs, self.dkwargs = f, df, dargs, dkwargs
        self.__name__ = getattr(f, "__name__", type(f).__name__)
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args, **kwargs):
        if self.df(*self.dargs, **self.dkwargs) is False:
            raise UnmetDependency(f"{self.__name__} cannot run on this engine: "
                                  f"{_call_repr(self.df, self.dargs, self.dkwargs)} is False")
        return self.f(*args, **kwargs)

    def __repr__(self):
        return f"<dependent {self.__name__} on {_call_repr(self.df, self.dargs, self.dkwargs)}>"

    def _rebind(self, bind):
        """A copy with `bind` applied to the task and the check (the engine's binding of
        interactive functions to its namespace)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, f=bind(self.f), df=bind(self.df))
        return new


class _required(dependent):
    """What ``@require`` makes: the names are imported where the task runs, or it is unmet."""

    def __call__(self, *args, **kwargs):
        _require(_globals_of(self.f), *self.dargs, **self.dkwargs)
        return self.f(*args, **kwargs)

    def __repr__(self):
        return f"<require {', '.join(self.dargs + tuple(self.dkwargs))} for {self.__name__}>"


def depend(f, /, *args, **kwargs):
    """Decorator: the task runs only on engines where ``f(*args, **kwargs)`` is not False.

    ::

        @depend(platform_is, "linux")
        def task(x): ...
    """
    def decorate(g):
        return dependent(g, f, *args, **kwargs)
    return decorate


def require(*objects, **mapping):
    """Decorator: the task runs only on engines that can import the named modules.

    `objects` are module names (``"numpy"``, ``"os.path"``) or modules, and functions
    or other named objects to define there. When the task runs, the modules are
    imported into its namespace (a function defined interactively can use ``numpy``),
    and `mapping` (name=object) is defined there too. An engine that cannot import one
    of them answers "unmet", and the task is tried on another engine.
    """
    names = []
    for obj in objects:
        if isinstance(obj, type(sys)):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(f"require takes module names, modules or named objects (functions, "
                            f"classes), not {type(obj).__name__}")

    def decorate(f):
        return _required(f, _require, *names, **mapping)
    return decorate


def _require(ns, /, *names, **mapping):
    """The check of ``@require``: import `names` into `ns`, define `mapping` there."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UnmetDependency(f"module {name!r} cannot be imported on this engine "
                                  f"({type(e).__name__}: {e})") from None
        top = name.partition(".")[0]
        ns[top] = sys.modules[top]
    ns.update(mapping)
    return True


def _globals_of(f):
    """The namespace `f` runs in: its globals (the engine's, for interactive functions)."""
    while isinstance(f, dependent):   # stacked decorators
        f = f.f
    g = getattr(f, "__globals__", None)
    return g if isinstance(g, dict) else {}


def _call_repr(f, args, kwargs):
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{getattr(f, '__name__', repr(f))}({', '.join(parts)})"


# ---------------------------------------------------------------- graph dependencies

class Dependency(set):
    """A set of task msg_ids, and how to read their outcomes (ipyparallel's shape).

    ``all``: met when all of them are done (True) or any one (False). ``success`` /
    ``failure``: whether a task that succeeded / failed counts as done. Pass it as a
    task's ``after`` (when it may start) or ``follow`` (where: on the engine the tasks
    ran). `ids` are msg_ids, AsyncResults or a mix, or ``as_dict()``'s dict, whose
    ``all``, ``success`` and ``failure`` win over the arguments (as ipyparallel's).
    """

    def __init__(self, ids=(), all=True, success=True, failure=False):
        if isinstance(ids, dict):   # iterated, it would give its keys as msg_ids
            all, success, failure = (ids.get(k, v) for k, v in
                                     (("all", all), ("success", success), ("failure", failure)))
            ids = ids.get("dependencies", ())
        if not (success or failure):
            raise ValueError("a Dependency with success=False and failure=False can never be "
                             "met; set one of them")
        super().__init__(msg_ids(ids))
        self.all, self.success, self.failure = all, success, failure

    def check(self, completed, failed=None):
        """Whether the dependency is met, given the ids that succeeded and that failed."""
        return not self or is_met(self._tracker(completed, failed))

    def unreachable(self, completed, failed=None):
        """Whether it can never be met, given the ids that succeeded and that failed."""
        return bool(self) and is_unreachable(self._tracker(completed, failed))

    def _tracker(self, completed, failed):
        """The counts `is_met` and `is_unreachable` read, for these outcomes."""
        completed, failed = set(completed), set(failed or ())   # None: none failed
        finished = completed | failed
        counted = (completed if self.success else set()) | (failed if self.failure else set())
        good = len(self & counted)
        return {"all": self.all, "pending": len(self - finished), "good": good,
                "bad": len(self & finished) - good}

    def as_dict(self):
        """ipyparallel's plain dict of it, which ``Dependency()`` takes back; a task's
        header carries ``_header_dict()``'s, which names the ids "ids"."""
        return {"dependencies": sorted(self), "all": self.all, "success": self.success,
                "failure": self.failure}

    def _header_dict(self):
        return {"ids": sorted(self), "all": self.all, "success": self.success,
                "failure": self.failure}

    def __repr__(self):
        return (f"Dependency({sorted(self)}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")

    def __reduce__(self):
        return Dependency, (sorted(self), self.all, self.success, self.failure)


def is_met(dep):
    """Whether a dependency is met, from a tracker: a mapping with `all` and, of its ids,
    those not final (`pending`: a count or a collection) and the counts of final ones
    that count (`good`: success or failure as the dependency asks) or do not (`bad`).
    The scheduler keeps one per waiting task and updates it as tasks end, so a check
    costs nothing however many ids."""
    if dep["all"]:
        return not dep["pending"] and not dep["bad"]
    return dep["good"] > 0


def is_unreachable(dep):
    """Whether a dependency can never be met, from a tracker (see ``is_met``)."""
    if dep["all"]:
        return dep["bad"] > 0
    return not dep["pending"] and not dep["good"]


# The shape of protocol.new_id's msg_ids (a prefix and a count, hex) and of the plain hex
# ones minipar made before: a str of another shape can name no task.
_MSG_ID = re.compile(r"[0-9a-f]+(-[0-9a-f]+)?")
_DEPENDENCY_FORMS = ("a Dependency, a msg_id, an AsyncResult, a list of msg_ids and "
                     "AsyncResults, or None")


def dependency_fields(after=None, follow=None):
    """A task's ``after`` and ``follow`` flags as its header's fields: each None or
    ``Dependency._header_dict()``'s dict (a list of ids: all must succeed). What is not one of
    ``_DEPENDENCY_FORMS`` is a TypeError, and a str that is no msg_id a ValueError, each
    naming the flag; whether a msg_id names a task is for the scheduler to say
    (InvalidDependency)."""
    return {"after": _dependency_dict("after", after),
            "follow": _dependency_dict("follow", follow)}


def _dependency_dict(flag, dep):
    if dep is None:
        return None
    if not (isinstance(dep, (str, list, tuple, set, frozenset)) or hasattr(dep, "msg_ids")
            or hasattr(dep, "msg_id")):
        raise TypeError(f"{flag} takes {_DEPENDENCY_FORMS}; not {type(dep).__name__} "
                        f"{dep!r:.60}")
    try:
        ids = msg_ids(dep)
    except TypeError as e:   # an item of the list is neither
        raise TypeError(f"{flag}: {e} (it takes {_DEPENDENCY_FORMS})") from None
    for i in ids:
        if not _MSG_ID.fullmatch(i):
            raise ValueError(f"{flag}: {i!r:.60} is no msg_id (msg_ids are hex, as an "
                             "AsyncResult's msg_ids hold them)")
    if isinstance(dep, Dependency):
        return dep._header_dict() if dep else None
    return {"ids": ids, "all": True, "success": True, "failure": False} if ids else None


def msg_ids(jobs):
    """msg_ids from a msg_id, an AsyncResult (or any object with ``msg_ids`` or
    ``msg_id``), or an iterable of those."""
    if jobs is None:
        return []
    if isinstance(jobs, (str, int)) or hasattr(jobs, "msg_ids") or hasattr(jobs, "msg_id"):
        jobs = [jobs]
    out = []
    for j in jobs:
        if isinstance(j, str):
            out.append(j)
        elif hasattr(j, "msg_ids"):
            out.extend(j.msg_ids)
        elif hasattr(j, "msg_id"):
            out.append(j.msg_id)
        else:   # an int: an ipyparallel history index (rc.get_result(-1)); was "not iterable"
            raise TypeError(f"expected msg_ids or AsyncResults, not {type(j).__name__}" + (
                f" ({j}: minipar's client keeps no history to index, as ipyparallel's does; "
                "pass ar.msg_ids)" if isinstance(j, int) else ""))
    return out


# ---------------------------------------------------------------- references

class Reference:
    """An argument standing for the object `name` names in the engine's namespace when the
    request runs: ``view.apply(f, Reference('a'))`` calls ``f(a)`` with the engine's
    ``a``, which never travels. As ipyparallel's, it is resolved where it is the function
    (``dv.apply(Reference('f'), 2)`` calls the engine's ``f``; ``map`` too), an argument, a
    keyword argument's value or a value pushed (``push({'b': Reference('a')})`` sets b to
    a), one level inside those: an item of a list, tuple or set of fewer than
    REFERENCE_ITEMS_MAX items (``apply(f, [Reference('a'), 1])``), an element of a map's
    sequence; and a dict's value in any of those places, at any depth of dicts
    (``apply(f, [{'k': {'j': Reference('a')}}])``). Not in a list inside a list or a dict.
    `name` is evaluated there, so ``'a.shape'`` or ``'a[0]'`` work too; a name not defined
    there fails the request with NameError.
    """

    __slots__ = ("name",)
    # How many this process made, unpickling included: an engine looks for References in
    # a request only when unpickling it made one, so a request without any pays nothing.
    _made = 0

    def __init__(self, name):
        if not isinstance(name, str):
            raise TypeError(f"Reference takes the name of an engine's variable (a str), "
                            f"not {type(name).__name__}")
        self.name = name
        Reference._made += 1

    def __repr__(self):
        return f"<Reference: {self.name!r}>"

    def __reduce__(self):
        return Reference, (self.name,)

    def get_object(self, ns):
        """The object `name` names in namespace `ns` (on the engine)."""
        try:
            return eval(self.name, ns)
        except NameError as e:
            raise NameError(f"{self!r}: {e} in the engine's namespace; push it first, "
                            "or define it with execute") from None


# ipyparallel's canning looks inside a list, tuple or set argument of fewer items than this
# (jupyter_client's MAX_ITEMS) and pickles a longer one as it is, its References left as
# they are. Its uncanning resolves a Reference wherever it looks and goes on into every dict
# it meets (values only, exact dicts, whatever their size or depth); into no other container.
REFERENCE_ITEMS_MAX = 64
_SEQUENCES = (list, tuple, set)


def resolve_references(ns, f, args, kwargs, elementwise=False):
    """A request's function, args and kwargs with the References in them replaced by the
    objects they name in namespace `ns` (the engine's), as ``Reference`` says. Exact types
    only, as ipyparallel's: a namedtuple or an OrderedDict is left as it is. `elementwise`:
    the args are a map's chunks, each element resolved whatever their number (ipyparallel's
    load-balanced map sends every element as a task of its own)."""
    if type(f) is Reference:
        f = f.get_object(ns)
    limit = sys.maxsize if elementwise else REFERENCE_ITEMS_MAX
    return (f, [resolved(ns, a, limit) for a in args],
            {k: resolved(ns, v) for k, v in kwargs.items()})


def resolved(ns, obj, limit=REFERENCE_ITEMS_MAX):
    """`obj` with its References resolved in `ns`: a copy of it with each item so resolved
    if a list, tuple or set of fewer than `limit` items, else ``_uncanned(ns, obj)``."""
    memo = {}
    if type(obj) in _SEQUENCES and len(obj) < limit:
        return type(obj)([_uncanned(ns, i, memo) for i in obj])
    return _uncanned(ns, obj, memo)


def _uncanned(ns, obj, memo):
    """`obj` resolved in `ns` if a Reference; a copy of it with its values so resolved if a
    dict, at any depth; else `obj` itself. `memo` maps the id of each dict copied to its
    copy, so a dict met twice is copied once and one holding itself does not recurse."""
    kind = type(obj)
    if kind is Reference:
        return obj.get_object(ns)
    if kind is not dict:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = new = {}
    new.update((k, _uncanned(ns, v, memo)) for k, v in obj.items())
    return new
