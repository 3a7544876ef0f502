"""ipyparallel 9's public names beside minipar's: which exist, and whose parameters match.

    python bench/compat.py [--json PATH] [--all]

A plain script, not a test (it needs ipyparallel, which minipar never imports and CI
does not install): run it from an environment where ``import ipyparallel`` works, with
pyzmq and cloudpickle for minipar, e.g.::

    python -m venv /tmp/ipp-venv && /tmp/ipp-venv/bin/pip install ipyparallel cloudpickle
    /tmp/ipp-venv/bin/python bench/compat.py

What it compares:

* the module: ipyparallel has no ``__all__``, so its public names are ``dir(ipyparallel)``
  without a leading underscore, less the standard-library modules it happens to import
  (``os``, ``sys``, ...); its subpackages (``ipyparallel.error``, ...) are listed as
  modules;
* the classes ``Client``, ``DirectView``, ``LoadBalancedView``, ``BroadcastView``,
  ``AsyncResult``, ``Cluster`` and ``ClusterManager``: every public method and property,
  and, for ``Cluster``, the ``<name>_sync`` twin that ipyparallel makes of each coroutine
  method. Names that come from traitlets' own base classes (``observe``, ``traits``,
  ``class_config_section``, ...) are counted, marked ``traitlets`` and left out of the
  table unless ``--all`` is given.

For each name: whether minipar has it (``hasattr`` on its class or module; failing that,
an instance attribute: ``self.<name> =`` in the source of the class or a base class,
since minipar sets view flags such as ``block`` in ``__init__``), and for callables on
both sides whether the parameter names match (``same``), ipyparallel's are all accepted
(``accepts``: minipar has more, or takes ``**kwargs``), or some are missing (``differs``).
The table goes to stdout, the full records to ``--json`` (default
``bench/results-compat.json``, ignored by git).

This is the mechanical half of the audit; docs/ipyparallel.rst is the checked half (each
name read in minipar's code and given its status by hand).
"""
import argparse
import inspect
import json
import os
import re
import sys
import types

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLASSES = ("Client", "DirectView", "LoadBalancedView", "BroadcastView", "AsyncResult",
           "Cluster", "ClusterManager")
STDLIB_MODULES = {"builtins", "os", "sys", "traceback", "traitlets"}


def traitlets_names():
    """Public names that ipyparallel's classes inherit from traitlets itself."""
    try:
        from traitlets.config import LoggingConfigurable
    except ImportError:
        return set()
    return {n for n in dir(LoggingConfigurable) if not n.startswith("_")}


def params(obj):
    """Parameter names of a callable (without self/cls), and whether it takes **kwargs."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, False
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            names.append("*" + p.name)
        elif p.name not in ("self", "cls"):
            names.append(p.name)
    return names, var_kw


def kind_of(owner, name):
    """'property', 'trait', 'method', 'coroutine', 'class', 'function', 'constant'."""
    raw = None
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                raw = vars(klass)[name]
                break
    value = getattr(owner, name, None)
    if isinstance(raw, property):
        return "property"
    if raw is not None and type(raw).__module__.startswith("traitlets"):
        return "trait"
    if isinstance(raw, (classmethod, staticmethod)):
        return "method"
    if isinstance(value, types.ModuleType):
        return "module"
    if isinstance(value, type):
        return "class"
    if inspect.iscoroutinefunction(value):
        return "coroutine"
    if callable(value):
        return "method" if isinstance(owner, type) else "function"
    return "constant"


def _source_of_mro(cls):
    text = []
    for klass in getattr(cls, "__mro__", ()):
        if klass is object or not klass.__module__.startswith("minipar"):
            continue
        try:
            text.append(inspect.getsource(klass))
        except (OSError, TypeError):
            pass
    return "\n".join(text)


def minipar_has(owner, name, source):
    if hasattr(owner, name):
        return "yes"
    if source and re.search(r"\bself\.%s\s*(:[^=\n]*)?=" % re.escape(name), source):
        return "instance"
    return "no"


def compare_params(ipp_obj, mp_obj):
    ipp_names, _ = params(ipp_obj)
    mp_names, mp_kw = params(mp_obj)
    if ipp_names is None or mp_names is None:
        return "n/a", ipp_names, mp_names
    if ipp_names == mp_names:
        return "same", ipp_names, mp_names
    missing = [n for n in ipp_names if n not in mp_names]
    if not missing or mp_kw:
        return "accepts", ipp_names, mp_names
    return "differs", ipp_names, mp_names


def rows_for(ipp_owner, mp_owner, scope, names, skip):
    source = _source_of_mro(mp_owner) if isinstance(mp_owner, type) else ""
    rows = []
    for name in sorted(names):
        kind = kind_of(ipp_owner, name) if hasattr(ipp_owner, name) else "coroutine"
        row = {"scope": scope, "name": name, "kind": kind}
        if name in skip:
            row.update(kind="traitlets", minipar="-", params="-")
            rows.append(row)
            continue
        has = minipar_has(mp_owner, name, source) if mp_owner is not None else "no"
        row["minipar"] = has
        row["params"] = "-"
        if has == "yes" and kind in ("method", "coroutine", "function", "class"):
            ipp_obj = getattr(ipp_owner, name, None)
            if ipp_obj is None:   # a generated *_sync twin: compare with its coroutine
                ipp_obj = getattr(ipp_owner, name[:-len("_sync")])
            mp_obj = getattr(mp_owner, name)
            if isinstance(ipp_obj, type):   # compare constructors
                ipp_obj, mp_obj = ipp_obj.__init__, mp_obj.__init__
            status, ipp_p, mp_p = compare_params(ipp_obj, mp_obj)
            row.update(params=status, ipyparallel_params=ipp_p, minipar_params=mp_p)
        rows.append(row)
    return rows


def collect():
    import ipyparallel
    import minipar

    skip = traitlets_names()
    rows = []
    module_names = set()
    for name in dir(ipyparallel):
        if name.startswith("_") or name in STDLIB_MODULES:
            continue
        module_names.add(name)
    rows += rows_for(ipyparallel, minipar, "ipyparallel", module_names, set())
    for cls_name in CLASSES:
        ipp_cls = getattr(ipyparallel, cls_name)
        mp_cls = getattr(minipar, cls_name, None)
        names = {n for n in dir(ipp_cls) if not n.startswith("_")}
        if cls_name == "Cluster":   # AsyncFirst: every coroutine method has a _sync twin
            names |= {n + "_sync" for n in list(names)
                      if inspect.iscoroutinefunction(getattr(ipp_cls, n, None))}
        rows += rows_for(ipp_cls, mp_cls, cls_name, names, skip)
    return ipyparallel.__version__, rows


def print_table(version, rows, show_all):
    shown = [r for r in rows if show_all or r["kind"] != "traitlets"]
    width = max(len(f"{r['scope']}.{r['name']}") for r in shown) + 2
    print(f"ipyparallel {version} beside minipar ({ROOT})")
    print(f"{'name':<{width}}{'kind':<11}{'minipar':<10}params")
    for r in shown:
        line = f"{r['scope'] + '.' + r['name']:<{width}}{r['kind']:<11}{r['minipar']:<10}"
        line += r["params"]
        if r["params"] in ("differs", "accepts"):
            line += (f"  ipyparallel({', '.join(r['ipyparallel_params'])})"
                     f"  minipar({', '.join(r['minipar_params'])})")
        print(line)
    counted = [r for r in rows if r["kind"] != "traitlets"]
    present = sum(r["minipar"] != "no" for r in counted)
    same = sum(r["params"] == "same" for r in counted)
    differs = sum(r["params"] == "differs" for r in counted)
    print(f"\n{len(counted)} names ({len(rows) - len(counted)} more are traitlets' own, "
          f"{'shown' if show_all else 'hidden'}): {present} present in minipar "
          f"({sum(r['minipar'] == 'instance' for r in counted)} as instance attributes), "
          f"{len(counted) - present} absent; of the callables compared, {same} have the "
          f"same parameter names, {differs} lack some of ipyparallel's.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=os.path.join(BENCH_DIR, "results-compat.json"))
    ap.add_argument("--all", action="store_true", help="show traitlets' own names too")
    args = ap.parse_args()
    try:
        version, rows = collect()
    except ImportError as e:
        print(f"ipyparallel is not importable here ({e}); nothing to compare.")
        return 0
    print_table(version, rows, args.all)
    with open(args.json, "w") as f:
        json.dump({"ipyparallel": version, "names": rows}, f, indent=1)
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
