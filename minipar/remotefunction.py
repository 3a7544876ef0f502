"""What a view's ``@view.remote()`` and ``@view.parallel()`` decorators make: functions
whose calls run through the view (its apply, or its map over parts of the arguments),
with its temp_flags and its ``_block``, ``_finish`` and ``_map``. client.py imports them
back, so ``minipar.client.ParallelFunction`` is where ipyparallel scripts look.

Here too is what a view's map, scatter, push and pull share: the split of sequences into
parts, one per engine or task (``dist='b'``: contiguous blocks, ipyparallel's default;
``'r'``: round-robin), the checks of their names, and ``interactive`` (sent by value).
"""

import ast
import collections.abc
import inspect
import keyword

from .asyncresult import _ctrl_c_aborts


def interactive(f):
    """Make `f` behave like a function defined in ``__main__``: it is sent by value and
    runs on the engine with the engine's namespace as its globals."""
    f.__module__ = "__main__"
    return f


class RemoteFunction:
    """A function whose calls run remotely through a view (``@view.remote()``)."""

    def __init__(self, view, f, block=None, **flags):
        self.view, self.func, self.block, self.flags = view, f, block, flags
        self.__name__ = getattr(f, "__name__", "remote_function")
        self.__doc__ = getattr(f, "__doc__", None)

    @_ctrl_c_aborts
    def __call__(self, /, *args, **kwargs):
        with self.view.temp_flags(**self.flags):
            block = self.view._block(self.block)   # before it sends
            return self.view._finish(self.view.apply_async(self.func, *args, **kwargs), block)


class ParallelFunction(RemoteFunction):
    """``@view.parallel()``: calling it splits the sequence arguments across engines and
    concatenates the results; ``.map(seq)`` applies it element-wise. Besides the view's
    flags it takes ipyparallel's ``chunksize``, ``ordered`` and ``return_exceptions``
    where the view's map takes them (a DirectView's: return_exceptions only)."""

    _MAP_OPTIONS = ("chunksize", "ordered", "return_exceptions")

    def __init__(self, view, f, dist="b", block=None, **flags):
        _check_dist(dist)
        takes = inspect.signature(view.map).parameters
        for k in self._MAP_OPTIONS:
            if k in flags and k not in takes:
                raise TypeError(f"{type(view).__name__}.map takes no {k}, so its parallel "
                                "functions take none either (a load-balanced view's map does)")
        options = {k: flags.pop(k) for k in self._MAP_OPTIONS if k in flags}
        super().__init__(view, f, block, **flags)
        self.return_exceptions = options.pop("return_exceptions", False)
        self.options = dict(options, dist=dist)   # of the view's _map: chunksize, ordered

    def __call__(self, /, *sequences, **kwargs):
        """Each part's call gets its part of each sequence and `kwargs` as they are (as
        ipyparallel's: ``f(part_a, part_b, **kwargs)`` on every engine or task)."""
        return self._map(sequences, elementwise=False, kwargs=kwargs)

    def map(self, *sequences):
        return self._map(sequences, elementwise=True)

    @_ctrl_c_aborts
    def _map(self, sequences, elementwise, kwargs=None):
        with self.view.temp_flags(**self.flags):
            ar = self.view._map(self.func, sequences, elementwise, kwargs=kwargs,
                                **self.options)
        ar._return_exceptions = self.return_exceptions
        return self.view._finish(ar, self.block)


# A load-balanced map's automatic chunks: four per engine registered when it is sent (as
# multiprocessing.Pool.map's), yet at least this many, so that engines registering after it
# (a batch system starting them as nodes free up, a script run right after the cluster's
# start) share it too, as ipyparallel's one task per item lets them. A parallel function's
# call makes four parts per engine. 16..1000 is reasonable: each task costs about 0.3 ms.
MAP_MIN_CHUNKS = 64


def _chunksize(n, engines, elementwise):
    """The items per task of a load-balanced map of `n` items (see MAP_MIN_CHUNKS)."""
    return max(1, -(-n // max(4 * engines, MAP_MIN_CHUNKS if elementwise else 4)))


def _check_dist(dist):
    if dist not in ("b", "r"):
        raise ValueError(f"unknown distribution dist={dist!r}: give 'b' (contiguous blocks) "
                         "or 'r' (round-robin: item j to part j % parts)")


def _partition(seq, n, i, dist="b"):
    """The i-th of n nearly equal parts of `seq`, the first len % n one longer: with
    dist 'b' contiguous blocks (ipyparallel's default: 10 on 4 engines is 3, 3, 2, 2),
    with 'r' every n-th item from the i-th (asyncresult._interleave joins them back)."""
    if dist == "r":
        part = seq[i::n]
    else:
        size, more = divmod(len(seq), n)
        part = seq[i * size + min(i, more):(i + 1) * size + min(i + 1, more)]
    return list(part) if isinstance(part, range) else part


def _task_slices(n, chunksize, engines, elementwise, dist):
    """A load-balanced map's tasks over its first `n` items, `chunksize` items each (None:
    see _chunksize), the last fewer: with dist 'b' consecutive items, with 'r' every k-th
    item (k tasks)."""
    if chunksize is None:
        chunksize = _chunksize(n, engines, elementwise)
    elif not hasattr(chunksize, "__index__") or chunksize < 1:   # range() takes ints only
        raise (ValueError if hasattr(chunksize, "__index__") else TypeError)(
            f"chunksize={chunksize!r:.40}: give a positive number of elements, an int")
    k = -(-n // chunksize)
    return [slice(i, n, k) if dist == "r" else slice(i * chunksize, min(n, (i + 1) * chunksize))
            for i in range(k)]


def _sequence(s):
    """`s` to split into parts (by scatter and map): a sequence as it is, another
    iterable as a list. A mapping is refused: it would be sliced by key, if at all."""
    if isinstance(s, collections.abc.Mapping) or not hasattr(s, "__iter__"):
        raise TypeError(f"{type(s).__name__} {s!r:.40} is not a sequence to split into parts: "
                        "give a list, tuple, range or array (of a dict: list(d.items()))")
    if getattr(s, "ndim", None) == 0:   # numpy's len() of one: "len() of unsized object"
        raise TypeError(f"a 0-d array ({s!r:.40}) has no items to split into parts: give an "
                        "array of one or more dimensions, or push the value itself")
    return s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s)


def _sequences(sequences, elementwise):
    """A map's arguments as sequences, and how many items it maps: the shortest's length,
    as map, zip and ipyparallel's map have it. A parallel function's call hands each
    engine a part of each sequence, so it refuses unequal lengths (as ipyparallel's)."""
    if not sequences:
        raise ValueError("map needs at least one sequence")
    seqs = [_sequence(s) for s in sequences]
    lengths = [len(s) for s in seqs]
    if not elementwise and len(set(lengths)) > 1:
        raise ValueError(f"all sequences must have equal length, but have {lengths}")
    return seqs, min(lengths)


def _check_names(kind, names):
    """push's and scatter's keys: names that code on the engines can refer to, or, as
    ipyparallel's push assigns ``key = value`` there, an attribute or item of one
    (``'a.b'``, ``'d["k"]'``: the engine sets it on what it holds)."""
    bad = [k for k in names if not (isinstance(k, str) and k.isidentifier()
                                    and not keyword.iskeyword(k) or _is_item(k))]
    if bad:
        raise ValueError(f"{kind}: {bad[0]!r} is not a Python name, so code on the engines "
                         "could never refer to it; use identifiers as keys (or an attribute "
                         "or item of one: 'a.b', 'd[0]')")


def _is_item(key):
    try:
        return isinstance(ast.parse(key, mode="eval").body, (ast.Attribute, ast.Subscript))
    except (SyntaxError, ValueError, TypeError):   # TypeError: not a str
        return False


def _check_pulled(kind, names):
    """pull's and gather's: a name (an expression) or a list of them."""
    if not (isinstance(names, str) or isinstance(names, (list, tuple))
            and all(isinstance(n, str) for n in names)):
        raise TypeError(f"{kind} takes a name (a str) or a list of names, not {names!r:.60}")
