"""The multiengine document's session, against a controller and four engines started by
hand with ``python -m`` (see conftest), the test process being the client."""

import io
import os
import re
import time

import numpy as np
import pytest
import zmq

import minipar
from minipar import protocol

from .conftest import LocalCluster
from .helpers import raw_engine, wait_until

TIMEOUT = 60
pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster: no test here kills, stops or reconfigures an engine."""
    return shared_cluster.rc


def test_ids_and_views(rc):
    assert rc.ids == [0, 1, 2, 3]
    assert len(rc) == 4
    assert rc[0].targets == 0
    assert rc[:].targets == [0, 1, 2, 3]
    assert rc[::2].targets == [0, 2]
    assert rc.direct_view().targets == "all"


def test_execute_on_all_and_some_with_persistent_namespaces(rc):
    dv = rc[:]
    dv.execute("a = 5", block=True)
    dv.execute("b = 10", targets=[0, 2], block=True)
    assert dv.pull("a", block=True) == [5, 5, 5, 5]
    done = dv.execute("c = a * 2", block=True).get(0)   # done: an AsyncResult
    assert [(r.engine_id, r.data) for r in done] == [(e, None) for e in range(4)]
    assert dv.pull("c", block=True) == [10, 10, 10, 10]
    assert dv.pull("b", targets=[0, 2], block=True) == [10, 10]
    with pytest.raises(minipar.CompositeError) as e:
        dv.pull("b", targets=[1], block=True)
    assert e.value.elist[0].ename == "NameError"


def test_execute_captures_stdout_per_engine(rc):
    ar = rc[:].execute("import os; print('hello from', os.getpid())")
    ar.wait(TIMEOUT)
    outs = ar.stdout
    assert len(outs) == 4 and all(o.startswith("hello from") for o in outs)
    assert len(set(outs)) == 4  # four processes


def test_execute_not_silent_sends_the_value_of_its_last_expression(rc):
    """As ipyparallel's: execute(code, silent=False), as %px sends it, evaluates a last
    expression as IPython does, binds it to `_` and sends its text/plain back as
    metadata['execute_result'] (``ar.execute_result``). get() gives an ExecuteReply per
    engine. silent=True (the default) sends none; nor does a None, a ';' after the
    expression, a statement or an apply. A long text is cut; a failing repr is said."""
    try:
        from IPython.lib.pretty import pretty
    except ImportError:
        pretty = repr
    dv = rc[:2]
    ar = dv.execute("x = 3\nx * 2", silent=False, block=True)
    counts = ar.execution_count
    assert ar.execute_result == [{"data": {"text/plain": "6"}, "execution_count": n,
                                  "metadata": {}} for n in counts]
    r = ar.get(TIMEOUT)[1]
    assert type(r).__name__ == "ExecuteReply" and r.msg_id == ar.msg_ids[1]
    assert r.engine_id == r["engine_id"] == 1 and r.execution_count == counts[1]
    assert r.data == {"text/plain": "6"} and repr(r) == f"<ExecuteReply[{counts[1]}]: 6>"
    shown = io.StringIO()
    ar.display_outputs(file=shown)
    assert shown.getvalue() == f"Out[0:{counts[0]}]: 6\nOut[1:{counts[1]}]: 6\n"
    ar = dv.execute("_ + 1", silent=False, block=True)
    assert [e["data"] for e in ar.execute_result] == [{"text/plain": "7"}] * 2
    for code, silent in (("x * 2", True), ("None", False), ("x * 2;  # quiet", False),
                         ("y = x", False), ("print(x)", False)):
        ar = dv.execute(code, silent=silent, block=True)
        assert ar.execute_result == [None, None] and ar.get(0)[0].data is None, code
    task = rc[0].apply_async(lambda: 1)
    assert task.get(TIMEOUT) == 1 and task.execute_result is None
    ar = rc[0].execute("list(range(30))", silent=False, block=True)
    assert ar.execute_result["data"]["text/plain"] == pretty(list(range(30)))
    shown = io.StringIO()
    ar.display_outputs(file=shown)   # several lines: from the next line on
    assert shown.getvalue() == f"Out[0:{ar.execution_count}]: \n{pretty(list(range(30)))}\n"
    text = rc[0].execute("'x' * 200_000", silent=False, block=True).execute_result["data"]
    assert text["text/plain"].startswith("'xxx") and len(text["text/plain"]) < 100_100
    assert text["text/plain"].endswith("(cut at 100000 of 200002 characters: pull the value, "
                                       "or print it)")
    bad = "class Bad:\n    def __repr__(self):\n        raise ValueError('no repr')\nBad()"
    ar = rc[0].execute(bad, silent=False, block=True)
    assert ar.execute_result is None
    assert ar.stderr == f"Out[{ar.execution_count}]: its text/plain raised ValueError: no repr\n"


def test_push_pull_one_and_several_names(rc):
    dv = rc[:]
    dv.push(dict(a=1, b="two", c=[3]), block=True)
    assert dv.pull("a", block=True) == [1] * 4
    assert dv.pull(("a", "b", "c"), targets=1, block=True) == [1, "two", [3]]
    assert rc[2].pull(["a", "c"], block=True) == [1, [3]]


def test_push_sets_an_attribute_or_item_as_ipyparallels(rc):
    # ipyparallel's push runs `key = value` on the engine, so view['a.b'] = 0 sets a's b
    # (its test_nested_getitem_setitem): minipar refused any key but a plain name
    dv = rc[:]
    dv.execute("class A: pass\na = A()\na.b = 128\nd = {'k': 1}\nl = [0, 0]", block=True)
    assert dv["a.b"] == [128] * 4
    dv["a.b"] = 0
    dv.push({"d['k']": 2, "l[1]": 5, "new": {}, "new['x']": 7}, block=True)
    assert dv.pull(["a.b", "d['k']", "l", "new"], block=True) == [[0, 2, [0, 5], {"x": 7}]] * 4
    dv.scatter("l[0]", range(4), flatten=True, block=True)
    assert dv.pull("l", block=True) == [[i, 5] for i in range(4)]
    with pytest.raises(minipar.RemoteError, match="NameError.*'nothere'"):
        rc[0].push({"nothere.b": 1}, block=True)
    for bad in ("f()", "a.b c", "a +1", "(a, b)", "a.class"):
        with pytest.raises(ValueError, match="not a Python name"):
            dv.push({bad: 1})


def test_a_blocking_scatter_returns_none_as_ipyparallels(rc):
    # ipyparallel's scatter waits when blocking and returns None (a notebook shows no
    # Out[]); minipar's returned each engine's push reply, [None, None, None, None]
    dv = rc[:]
    assert dv.scatter("s", range(8), block=True) is None
    dv.block = True
    assert dv.scatter("s", range(8)) is None and dv.pull("s") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rc.broadcast_view().scatter("s", range(4), block=True) is None
    ar = rc[:].scatter("s", range(4))   # not blocking: its AsyncResult
    assert ar.get(TIMEOUT) == [None] * 4


def test_push_refuses_names_code_cannot_use_and_pull_evaluates_expressions(rc):
    dv = rc[:]
    for bad in ("a b", "1x", "class", "", 7, ("t",)):
        with pytest.raises(ValueError, match="not a Python name"):
            dv.push({bad: 1})
    dv.push({"a": [10, 20], "s": "text"}, block=True)
    assert dv.pull("a[0]", block=True) == [10] * 4      # evaluated there, as ipyparallel does
    assert rc[0].pull(["len(s)", "a[-1] + 1", "s"], block=True) == [4, 21, "text"]
    with pytest.raises(minipar.RemoteError, match="NameError.*'nothere'"):
        rc[0].pull("nothere", block=True)
    with pytest.raises(minipar.RemoteError, match="NameError.*'nothere'"):
        rc[0].pull("nothere[0]", block=True)


def test_wrong_arguments_of_execute_pull_and_scatter_fail_here_before_a_send(rc,
                                                                            monkeypatch):
    def send_request(*args, **kwargs):
        raise AssertionError(f"sent a request: {args[:1]}")

    monkeypatch.setattr(rc, "send_request", send_request)
    dv = rc[:]
    calls = [(lambda: dv.execute(5, block=False), r"execute takes code as a str, not int 5"),
             (lambda: dv.pull(5, block=False), r"pull takes a name \(a str\) or a list of "
                                                r"names, not 5"),
             (lambda: rc[0].pull(["a", 5], block=False), r"pull takes .* not \['a', 5\]"),
             (lambda: dv.scatter("x", {"a": 1, "b": 2}, block=False),
              r"dict \{'a': 1, 'b': 2\} is not a sequence to split into parts: give a "
              r"list, tuple, range or array \(of a dict: list\(d.items\(\)\)\)"),
             (lambda: dv.scatter("x", 5, block=False),
              r"int 5 is not a sequence to split into parts"),
             (lambda: dv.map(str, {"a": 1}, block=False), r"dict .* is not a sequence")]
    for call, message in calls:
        with pytest.raises(TypeError, match=message):
            call()


def test_scatter_and_gather_refuse_a_key_that_is_no_name_before_a_send(rc, monkeypatch):
    """As push and pull: scatter's key must be a name code on the engines can use (it
    pushed {None: part} or {'1bad': part}, never to be read), and gather's a str (an int
    or None failed on each engine, None as the engine's own KeyError 'names')."""
    def send_request(*args, **kwargs):
        raise AssertionError(f"sent a request: {args[:1]}")

    monkeypatch.setattr(rc, "send_request", send_request)
    dv = rc[:]
    for key in ("1bad", "a b", "class", None, 5):
        with pytest.raises(ValueError, match=f"scatter: {re.escape(repr(key))} is not a "
                                             "Python name, so code on the engines"):
            dv.scatter(key, [1, 2, 3, 4], block=False)
    for key in (5, None):
        with pytest.raises(TypeError, match=f"gather takes a name \\(a str\\) or a list of "
                                            f"names, not {key}"):
            dv.gather(key, block=False)


def test_a_call_given_no_callable_fails_here_before_a_send(rc, monkeypatch):
    """apply_sync(f(x)) (the function called, not passed) or map(5, ...) was sent, and
    each engine failed with "'int' object is not callable"; now a TypeError here, as
    ipyparallel's, saying to pass the function itself."""
    def send_request(*args, **kwargs):
        raise AssertionError(f"sent a request: {args[:1]}")

    monkeypatch.setattr(rc, "send_request", send_request)
    dv, lview = rc[:], rc.load_balanced_view()
    for call in (lambda: dv.apply_sync(5), lambda: dv.map(5, [1, 2], block=False),
                 lambda: lview.apply_async(None), lambda: lview.map(5, [1, 2], block=False),
                 lambda: lview.imap("len", ["ab"])):
        with pytest.raises(TypeError, match=r"the function to run must be callable, not "
                                            r"(int 5|NoneType None|str 'len'): pass the "
                                            r"function itself, then its arguments"):
            call()


def test_dictionary_interface(rc):
    dv = rc[:]
    dv["x"] = 42
    assert dv["x"] == [42, 42, 42, 42]
    rc[1]["y"] = "only one"
    assert rc[1]["y"] == "only one"


def test_scatter_and_gather(rc):
    dv = rc[:]
    dv.scatter("a", range(16), block=True)
    assert dv.pull("a", block=True) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                        [12, 13, 14, 15]]
    assert dv.gather("a", block=True) == list(range(16))
    arr = np.arange(10.0)
    dv.scatter("arr", arr, block=True)
    back = dv.gather("arr", block=True)
    assert isinstance(back, np.ndarray) and (back == arr).all()
    dv.scatter("one", [7, 8, 9, 10], flatten=True, block=True)
    assert dv["one"] == [7, 8, 9, 10]
    # blocks laid out as ipyparallel's: the first len % engines are one longer, and with
    # fewer items than engines the last engines get none
    dv.scatter("b", range(10), block=True)
    assert dv["b"] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    dv.scatter("c", [1, 2, 3], block=True)
    assert dv["c"] == [[1], [2], [3], []]
    assert dv.map_sync(lambda x: x, range(10)) == list(range(10))


def test_map_equals_serial_map(rc):
    assert rc[:].map_sync(lambda x: x ** 10, range(32)) == [x ** 10 for x in range(32)]
    assert rc[:].map_sync(lambda x, y: x + y, range(5), range(10, 15)) == \
        [x + y for x, y in zip(range(5), range(10, 15))]


def test_parallel_and_remote_decorators(rc):
    dv = rc[:]

    @dv.parallel(block=True)
    def f(x):
        return 10.0 * x ** 4

    assert f.map(range(32)) == [10.0 * x ** 4 for x in range(32)]

    @dv.parallel(block=True)
    def chunk_len(chunk):
        return [len(chunk)]

    assert chunk_len(list(range(16))) == [4, 4, 4, 4]

    @rc[0].remote(block=True)
    def getpid():
        import os
        return os.getpid()

    assert isinstance(getpid(), int)


def test_parallel_function_call_passes_keywords_to_every_call(rc):
    """A parallel function's call takes keyword arguments, as ipyparallel's does: each
    part's call gets its part of the sequences and the keywords unchanged, on a direct
    and a load-balanced view, blocking or not. Before, the call took no keywords
    (TypeError: unexpected keyword argument)."""
    def scaled_sum(xs, ys, scale=1, offset=0):
        return [sum(x * y for x, y in zip(xs, ys)) * scale + offset]

    xs, ys = list(range(16)), list(range(16, 32))
    for view in (rc[:], rc.load_balanced_view()):
        parts = view.parallel(block=True)(scaled_sum)(xs, ys, scale=10, offset=3)
        assert len(parts) > 1 and all(p % 10 == 3 for p in parts)   # one sum per part
        assert sum(parts) == 10 * sum(x * y for x, y in zip(xs, ys)) + 3 * len(parts)
        ar = view.parallel(block=False)(scaled_sum)(xs, ys, offset=1)
        assert ar.get(TIMEOUT) == [(p - 3) // 10 + 1 for p in parts]


def test_parallel_function_results_joined_as_ipyparallel_joins_them(rc):
    """The direct interface tutorial's ``@dview.parallel`` ``pmul(A, B)`` on numpy
    arrays is an array; a function that returns one value per part (a sum) gives the
    list of them, and a join that fails raises instead of leaving the call waiting."""
    dv = rc[:]
    A, B = np.arange(24.0).reshape(8, 3), np.ones((8, 3)) * 2

    @dv.parallel(block=True)
    def pmul(A, B):
        return A * B

    C = pmul(A, B)
    assert isinstance(C, np.ndarray) and (C == A * B).all()

    @dv.parallel(block=True)
    def psum(x):
        return sum(x)

    assert psum(range(16)) == [6, 22, 38, 54]

    @dv.parallel(block=False)
    def ragged(x):   # arrays of different widths: numpy cannot join them
        return np.zeros((1, len(x) + x[0]))

    with pytest.raises(ValueError):
        ragged(list(range(8))).get(TIMEOUT)


def test_masked_arrays_gathered_and_joined_keep_their_masks(rc):
    """A scientist scatters a numpy masked array (missing values masked) and gathers it,
    with dist 'b' and 'r', or calls a parallel function over it: the parts came back as a
    list of four masked arrays, as numpy.ma's module is not "numpy"; ipyparallel's join
    (numpy.concatenate) would unmask the missing values. One masked array now, its data,
    mask and dtype kept."""
    dv = rc[:]
    data = np.ma.masked_array(np.arange(10, dtype=np.int32), mask=[0, 1, 0, 0, 1] * 2)
    for dist in ("b", "r"):
        dv.scatter("m", data, dist=dist, block=True)
        back = dv.gather("m", dist=dist, block=True)
        assert isinstance(back, np.ma.MaskedArray) and back.dtype == np.int32
        assert (back.mask == data.mask).all() and (back.data == data.data).all()

    @dv.parallel(block=True)
    def doubled(x):
        return x * 2

    back = doubled(data)
    assert isinstance(back, np.ma.MaskedArray) and (back.mask == data.mask).all()
    assert (back.compressed() == data.compressed() * 2).all()


def test_memoryviews_and_bytearrays_come_back_as_they_were_sent(rc):
    """A memoryview returned by a task (or passed to one) came back as bytes, as cloudpickle
    makes it: `.tobytes()`, `.nbytes` and `.cast()` failed where ipyparallel's code used
    them. It is a memoryview of the same bytes now, a large one sent uncopied;
    bytearrays were already bytearrays."""
    big = b"0123456789" * 100_000
    for value in (b"abc", big):
        back = rc[0].apply_sync(lambda v: (memoryview(v), type(v).__name__), memoryview(value))
        assert isinstance(back[0], memoryview) and back[0].tobytes() == value
        assert back[1] == "memoryview"
        back = rc[0].apply_sync(bytearray, value)
        assert type(back) is bytearray and back == value
    array_view = rc[0].apply_sync(lambda: memoryview(np.arange(4, dtype=np.int32)))
    assert array_view.tobytes() == np.arange(4, dtype=np.int32).tobytes()


def test_scatter_or_map_of_a_0d_array_says_what_to_give_before_a_send(rc, monkeypatch):
    """scatter('x', np.array(5.0)) raised numpy's "len() of unsized object", naming
    neither the argument nor what to give instead."""
    def send_request(*args, **kwargs):
        raise AssertionError(f"sent a request: {args[:1]}")

    monkeypatch.setattr(rc, "send_request", send_request)
    dv, scalar = rc[:], np.array(5.0)
    for call in (lambda: dv.scatter("x", scalar, block=False),
                 lambda: dv.map(abs, scalar, block=False),
                 lambda: rc.load_balanced_view().map(abs, scalar, block=False)):
        with pytest.raises(TypeError, match=r"a 0-d array \(array\(5\.\)\) has no items to "
                                            r"split into parts: give an array of one or more "
                                            r"dimensions, or push the value itself"):
            call()


def test_parallel_takes_what_the_direct_views_map_takes(rc):
    dv = rc[:]

    @dv.parallel(block=True, return_exceptions=True)
    def inverse(x):
        return 1 / x

    out = inverse.map([1, 0, 2, 4, 5, 8, 10, 20])   # one block per engine: [1, 0] fails
    assert [type(e).__name__ for e in out[:2]] == ["ZeroDivisionError"] * 2
    assert out[2:] == [0.5, 0.25, 0.2, 0.125, 0.1, 0.05]
    for option in ("chunksize", "ordered"):   # a load-balanced view's map takes them
        with pytest.raises(TypeError, match=rf"DirectView.map takes no {option}"):
            dv.parallel(**{option: 2})(inverse)
    with pytest.raises(ValueError, match=r"dist='c': give 'b' \(contiguous blocks\) or 'r'"):
        dv.parallel(dist="c")(inverse)
    with pytest.raises(ValueError, match=r"equal length, but have \[4, 3\]"):
        dv.parallel(block=True)(np.add)(range(4), range(3))
    assert dv.map_sync(np.add, range(4), range(3)) == [0, 2, 4]   # map: the shortest's length


def test_non_blocking_results_polled_and_waited(rc):
    ar = rc[:].apply_async(time.sleep, 0.5)
    assert not ar.ready()
    assert ar.wait(TIMEOUT)
    assert ar.ready() and ar.successful()
    assert ar.get() == [None] * 4
    assert len(ar.msg_ids) == 4
    md = ar.metadata
    assert [m["engine_id"] for m in md] == [0, 1, 2, 3]
    assert all(m["submitted"] <= m["started"] <= m["completed"] <= m["received"] for m in md)
    assert ar.get_dict() == {0: None, 1: None, 2: None, 3: None}
    assert ar.elapsed >= 0.5


def test_get_dict_of_a_map_or_gather_gives_each_engine_its_part(rc):
    """A DirectView map's (or gather's) get_dict paired each engine with one item of the
    joined result ({0: 0, 1: 1, ...} for eight items on four engines), as ipyparallel's
    does: each engine's part now, as the engines computed or held them."""
    parts = {e: [2 * e, 2 * e + 1] for e in range(4)}
    assert rc[:].map_async(abs, range(0, -8, -1)).get_dict(TIMEOUT) == parts
    assert rc[[2]].map_async(abs, [-4, -5]).get_dict(TIMEOUT) == {2: [4, 5]}
    rc[:].scatter("part", list(range(8)), block=True)
    assert rc[:].gather("part").get_dict(TIMEOUT) == parts


def test_execute_error_is_composite_with_the_engines_traceback(rc):
    with pytest.raises(minipar.CompositeError) as info:
        rc[:].execute("1/0", block=True)
    err = info.value
    assert len(err.elist) == 4
    with pytest.raises(ZeroDivisionError) as z:
        err.raise_exception()
    assert isinstance(z.value, minipar.RemoteError)
    assert "ZeroDivisionError" in z.value.traceback and "1/0" in z.value.traceback
    assert z.value.engine_info["engine_id"] == 0
    # the user's frames only, as an apply's: run_cell's exec() frame (datapub.py) said
    # nothing to them
    frames = re.findall(r'File "([^"]+)"', z.value.traceback)
    assert frames and all(f.startswith("<minipar-execute-") for f in frames), frames


def _execute_sources():
    import linecache
    return sum(name.startswith("<minipar-execute-") for name in linecache.cache)


def test_a_loop_of_executes_keeps_a_bounded_number_of_sources(rc):
    """Each execute's source goes into the engine's linecache (for its tracebacks): only
    the latest EXECUTE_SOURCES_KEPT stay, else a loop of executes grows the engine for
    good. The latest still gives a failing line's text."""
    from minipar.engine import EXECUTE_SOURCES_KEPT

    view = rc[0]
    ars = [view.execute(f"k = {i}", block=False) for i in range(EXECUTE_SOURCES_KEPT + 500)]
    for ar in ars:
        ar.get(TIMEOUT)
    assert view.apply_sync(_execute_sources) <= EXECUTE_SOURCES_KEPT
    with pytest.raises(ZeroDivisionError) as z:
        view.execute("k = 1/0", block=True)
    assert "k = 1/0" in z.value.traceback


def test_execute_awaits_at_the_top_level_as_an_ipython_kernel(rc):
    """Code sent to execute (and %px) may `await` at its top level, as a cell may on
    ipyparallel's engines (IPython kernels, autoawait): it runs in the engine's asyncio loop,
    the same for every execute, so a task one starts is there for a later one to await.
    An error's traceback shows its code, not asyncio's. Aborted while it awaits, its coroutine
    is cancelled (its `finally` runs) and the next execute awaits as before. It was a
    SyntaxError: 'await' outside function."""
    view = rc[0]
    view.execute("import asyncio\nasync def twice(x):\n    await asyncio.sleep(0)\n"
                 "    return 2 * x\nawaited = await twice(21)", block=True)
    assert view.pull("awaited", block=True) == 42
    ar = view.execute("await twice(4)", silent=False, block=False)   # as %px sends it
    assert ar.get(TIMEOUT) is not None and ar.execute_result["data"]["text/plain"] == "8"
    with pytest.raises(ZeroDivisionError) as e:   # its traceback: its frames, none of asyncio's
        view.execute("await twice(0)\n1/0", block=True)
    assert e.value.traceback.splitlines()[1].startswith('  File "<minipar-execute-'), \
        e.value.traceback
    view.execute("asyncio.run(twice(0))", block=True)   # it leaves no current loop set
    view.execute("await twice(0)", block=True)
    view.execute("later = asyncio.ensure_future(twice(5))", block=True)   # no await in it
    assert view.execute("await later", silent=False, block=True).get(
        TIMEOUT).execute_result["data"]["text/plain"] == "10"
    ar = view.execute("unwound = False\ntry:\n    print('waiting', flush=True)\n"
                      "    await asyncio.sleep(300)\nfinally:\n    unwound = True")
    wait_until(lambda: "waiting" in ar.stdout, TIMEOUT, "the execute to start awaiting")
    ar.abort()
    with pytest.raises(minipar.TaskAborted):
        ar.get(TIMEOUT)
    assert view.pull("unwound", block=True) is True
    view.execute("awaited = await twice(1)", block=True)
    assert view.pull("awaited", block=True) == 2


def test_composite_error_tracebacks_as_ipyparallel_shows_them(rc, monkeypatch, capsys):
    """The direct interface tutorial's "Parallel exceptions": ``e.print_traceback(1)``,
    and ``ipp.CompositeError.tb_limit`` bounding what is shown."""
    assert minipar.CompositeError.tb_limit == 4
    monkeypatch.setattr(minipar.CompositeError, "tb_limit", 2)
    with pytest.raises(minipar.CompositeError) as info:
        rc[:].execute("x = z", block=True)
    err = info.value
    assert str(err).splitlines()[1:] == ["[0:execute]: NameError: name 'z' is not defined",
                                         "[1:execute]: NameError: name 'z' is not defined",
                                         "... 2 more exceptions ..."]
    err.print_traceback(3)
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "[3:execute]:" and shown[-1] == "NameError: name 'z' is not defined"
    err.print_traceback()
    shown = capsys.readouterr().out
    assert shown.count("Traceback (most recent call last)") == 2
    assert shown.startswith("[0:execute]:\n") and shown.endswith("... 2 more exceptions ...\n")
    with pytest.raises(IndexError):
        err.render_traceback(4)
    with pytest.raises(NameError) as one:
        rc[2].execute("x = z", block=True)
    one.value.print_traceback()
    assert "NameError: name 'z' is not defined" in capsys.readouterr().out


def test_single_engine_error_is_raised_directly(rc):
    def fail():
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        rc[0].apply_sync(fail)
    assert isinstance(info.value, minipar.RemoteError)
    assert "fail" in str(info.value.__cause__)


def test_function_from_main_sees_pushed_names(rc):
    rc[:].push({"offset": 100}, block=True)
    ns = {"__name__": "__main__"}
    exec("def add(x):\n    return x + offset\n", ns)
    assert rc[:].apply_sync(ns["add"], 1) == [101] * 4


def test_client_globals_follow_the_client_until_the_engine_sets_them(rc):
    ns = {"__name__": "__main__", "factor": 2}
    exec("import math\ndef f(x):\n    return math.floor(x * factor)\n", ns)
    assert rc[0].apply_sync(ns["f"], 5) == 10
    ns["factor"] = 3  # the client changed it: the next call sees the new value
    assert rc[0].apply_sync(ns["f"], 5) == 15
    rc[0].push({"factor": 10}, block=True)  # set on the engine: the engine's value wins
    assert rc[0].apply_sync(ns["f"], 5) == 50


def test_interactive_function_from_a_module(rc):
    rc[:].push({"scale": 3}, block=True)
    from tests import helpers

    assert rc[0].apply_sync(helpers.scaled, 2) == 6


def test_large_numpy_array_round_trip(rc):
    a = np.random.default_rng(0).random(100 * 2 ** 20 // 8)  # 100 MB
    rc[0].push({"big": a}, block=True)
    check = minipar.interactive(lambda: (big.nbytes, float(big.sum()), big.flags.writeable))  # noqa: F821
    assert rc[0].apply_sync(check) == (a.nbytes, float(a.sum()), True)
    b = rc[0].pull("big", block=True)
    assert b.dtype == a.dtype and (a == b).all()


def test_clear_keys_and_queue_status(rc):
    dv = rc[:]
    dv["k"] = 1
    assert all("k" in keys for keys in dv.keys(block=True))
    dv.clear(block=True)
    assert dv.keys(block=True) == [[], [], [], []]
    status = rc.queue_status()
    assert set(status) == {0, 1, 2, 3, "unassigned"}
    assert status[0]["queue"] == 0


def test_flags_and_temp_flags(rc):
    dv = rc[:]
    assert dv.block is False
    with dv.temp_flags(block=True, targets=[1]):
        assert dv.apply(lambda: 5) == [5]
    assert dv.block is False and dv.targets == [0, 1, 2, 3]
    dv.set_flags(block=True)
    assert dv.apply(lambda: 1) == [1, 1, 1, 1]
    for refused in (lambda: dv.set_flags(block=False, nonsense=1),
                    lambda: dv.temp_flags(block=False, nonsense=1).__enter__()):
        with pytest.raises(KeyError, match="unknown flag 'nonsense'"):
            refused()
        assert dv.block is True   # none set: not those before the unknown one


def _wait_for(path):
    """Run on an engine until file `path` exists (at most TIMEOUT s)."""
    wait_until(lambda: os.path.exists(path), TIMEOUT, f"the test's file {path}")
    return "released"


def test_results_of_another_client(shared_cluster, rc, tmp_path):
    ar = rc[1].apply_async(lambda: "shared")
    ar.get(TIMEOUT)
    other = shared_cluster.client()
    assert other.get_result(ar.msg_ids[0]).get(TIMEOUT) == "shared"
    go = tmp_path / "go"   # pending while followed: a 0.5 s sleep could be over by then
    slow = rc[2].apply_async(_wait_for, str(go))
    # the other client's question may reach the controller before rc's request (two
    # connections, no order between them): rc's own query after it waits for it
    rc.queue_status()
    pending = other.get_result(slow.msg_ids)
    try:
        assert not pending.ready()
    finally:
        go.touch()   # the module's engine 2 free again, whatever happened
    assert pending.get(TIMEOUT) == ["released"]
    with pytest.raises(KeyError, match="unknown or purged"):
        other.get_result("no-such-id").get(TIMEOUT)
    assert rc.purge_results("all") >= 1
    with pytest.raises(KeyError):
        other.get_result(ar.msg_ids[0]).get(TIMEOUT)


def test_wait_and_iteration(rc):
    ar = rc[:].map_async(lambda x: x * 2, range(8))
    assert rc.wait([ar], TIMEOUT)
    assert list(ar) == [x * 2 for x in range(8)]
    assert rc.wait(timeout=TIMEOUT)


def test_a_call_on_several_engines_leaves_as_one_message(rc, monkeypatch):
    """A direct view's call on all its engines sends one message (a batch) for all of
    them, and each engine still runs its own request."""
    sent = []
    send = protocol.send
    monkeypatch.setattr(protocol, "send", lambda sock, frames: (
        sent.append(1) if sock is rc._sender else None, send(sock, frames)))
    ar = rc[:].apply_async(os.getpid)
    assert len(sent) == 1
    assert len(set(ar.get(TIMEOUT))) == len(rc.ids) > 1


def test_a_burst_travels_as_one_batch_each_way(tmp_path):
    """Requests waiting for an engine leave the controller together as one batch, and a
    batch of replies reaches the client as one: each request and result intact, in
    order. The engine is a socket of the test's, to see what the controller sends."""
    c = LocalCluster(tmp_path, controller_args=["--heartbeat-period", "1"])
    ctx = zmq.Context()
    try:
        session, control, work, reg, eid = raw_engine(ctx, c.engine_file, "raw")
        rc = c.client()
        rc.wait_for_engines(1, 10)
        ars = [rc[eid].apply_async(pow, 2, i) for i in range(5)]
        # the controller holds them until the engine's request socket says it is ready
        wait_until(lambda: rc.queue_status()[eid]["queue"] == 5, 10,
                   "the requests to reach the controller")
        work.send_multipart(session.msg(protocol.READY, reg=reg)[1])
        assert work.poll(10_000)
        _, header, parts = session.check(work.recv_multipart())
        assert header["kind"] == protocol.BATCH
        requests = session.unbatch(header, parts)
        assert [h["msg_id"] for h, _ in requests] == [ar.msg_ids[0] for ar in ars]
        received = []
        original = rc._on_reply
        rc._on_reply = lambda frames: received.append(1) or original(frames)
        replies = []
        for h, p in requests:
            session.check_body(h, p)
            f, (args, kwargs) = protocol.deserialize_many(p, h["counts"])
            replies.append(session.msg(protocol.REPLY[h["kind"]],
                                       protocol.serialize(f(*args, **kwargs)),
                                       parent=h["msg_id"], status="ok", engine=eid)[1])
        [batch] = list(session.pack(replies))
        work.send_multipart(batch)
        assert [ar.get(10) for ar in ars] == [1, 2, 4, 8, 16]
        assert received == [1]   # five results, one message
    finally:
        ctx.destroy(linger=0)
        c.stop()


def test_a_function_with_state_is_made_afresh_for_each_call(rc):
    """An engine reuses the function it unpickled for the same pickle only when nothing
    in it can change: a mutable default starts afresh on every call, as it did."""
    import math

    @minipar.interactive
    def grow(x, acc=[]):
        acc.append(x)
        return len(acc)

    @minipar.interactive
    def root(x):
        return math.sqrt(x)

    assert [rc[0].apply_sync(grow, i) for i in range(3)] == [1, 1, 1]
    assert [rc[0].apply_sync(root, x) for x in (4, 9, 16)] == [2.0, 3.0, 4.0]
