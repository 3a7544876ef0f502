"""ipyparallel 9 calls that real scripts make, each with ipyparallel's own parameter names
and defaults (read from its source: ``client/view.py``, ``client/client.py``,
``client/asyncresult.py``), against one controller and four engines for the module."""

import datetime
import importlib.machinery
import io
import json
import os
import re
import subprocess
import sys

import pytest

import minipar as ipp
from .conftest import START_TIMEOUT_S
from .helpers import wait_until

TIMEOUT = 60
pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster: no test here kills, stops or reconfigures an engine."""
    return shared_cluster.rc


def keywords(**kwargs):
    return sorted(kwargs.items())


def sleep_then(seconds, value):
    import time

    time.sleep(seconds)
    return value


def wait_for_file(path, seconds=TIMEOUT / 2):
    """Run on an engine: return True once `path` exists, False after `seconds`."""
    import os
    import time

    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_apply_passes_keywords_named_f_and_self_to_the_function(rc):
    """ipyparallel's apply takes its function positionally (``__ipp_f``), so every
    keyword, ``f=`` and ``self=`` too, is the function's own."""
    dv, lview = rc[:], rc.load_balanced_view()
    expected = [("f", 1), ("self", 2)]
    assert dv.apply_sync(keywords, f=1, self=2) == [expected] * 4
    assert rc[0].apply(keywords, f=1, self=2).get(TIMEOUT) == expected
    assert lview.apply_async(keywords, f=1, self=2).get(TIMEOUT) == expected
    assert lview.apply_sync(keywords, f=1, self=2) == expected
    assert rc.broadcast_view().apply_sync(keywords, f=1) == [[("f", 1)]] * 4
    assert dv.remote(block=True)(keywords)(f=1, self=2) == [expected] * 4


def test_views_take_their_flags_when_made_and_have_a_length(rc):
    """``rc.load_balanced_view(targets, **flags)`` and ``rc.direct_view(targets, **flags)``
    set the view's flags, as ipyparallel's (``View.__init__`` calls ``set_flags``); any
    view's len() is the number of engines it may use."""
    lview = rc.load_balanced_view(block=True, retries=2, label="made")
    assert (lview.block, lview.retries, lview.label) == (True, 2, "made")
    assert lview.apply(abs, -3) == 3            # blocking: a value, not an AsyncResult
    assert rc.load_balanced_view([1, 2], block=True).apply(abs, -4) == 4
    assert rc.direct_view(block=True).apply(abs, -5) == [5] * 4
    assert rc.direct_view(0, block=True).apply(abs, -6) == 6
    assert rc.broadcast_view(block=True, is_coalescing=True).apply(abs, -7) == [7] * 4
    assert rc.direct_view().block is False      # the default is unchanged
    with pytest.raises(KeyError, match="unknown flag 'nonsense'"):
        rc.load_balanced_view(nonsense=1)
    with pytest.raises(TypeError):
        rc.load_balanced_view(retries="two")    # checked as set_flags checks it
    assert len(rc.load_balanced_view()) == len(rc[:]) == len(rc.direct_view()) == 4
    assert len(rc.load_balanced_view([0, 3])) == 2 and len(rc[1]) == 1
    # an engine not registered is refused when the view is made, as ipyparallel does (its
    # tasks ran on the others, or failed when submitted)
    for make in (lambda: rc.load_balanced_view([0, 7]), lambda: rc.executor(targets=[7]),
                 lambda: rc.load_balanced_view(targets=7)):
        with pytest.raises(IndexError, match="engine 7 is not registered"):
            make()
    chunks = len(rc.load_balanced_view())        # as scripts size their chunks
    assert rc.load_balanced_view().map_sync(abs, range(-8, 0), chunksize=8 // chunks) \
        == list(range(8, 0, -1))


def test_track_is_a_flag_accepted_and_ignored(rc):
    """ipyparallel's ``track`` flag (its docs' temp_flags example is
    ``with view.temp_flags(track=True)``): every view has it, False by default; minipar
    has no send tracking, so it changes nothing (as push's ``track=``)."""
    dv, lview = rc[:], rc.load_balanced_view()
    assert dv.track is False and lview.track is False and rc.broadcast_view().track is False
    with dv.temp_flags(track=True, block=True):
        assert dv.track is True
        assert dv.apply(abs, -1) == [1] * 4
    assert dv.track is False
    lview.set_flags(track=True)
    assert lview.apply_async(abs, -2).get(TIMEOUT) == 2
    assert rc.load_balanced_view(track=True).track is True


def test_display_outputs_groups_as_asked_once_the_output_is_in(rc, capsys):
    """``ar.display_outputs(groupby='type'|'engine'|'order', result_only=False)`` waits
    for the output (``ar.wait_for_output()``) and prints it as ipyparallel does."""
    code = "import sys, time; time.sleep(0.3); print('out'); print('err', file=sys.stderr)"
    ar = rc[[0, 1]].execute(code, block=False)
    assert ar.wait_for_output(TIMEOUT) is True and ar.wait_for_output() is True
    shown = io.StringIO()
    ar.display_outputs(groupby="engine", file=shown)
    assert shown.getvalue().splitlines() == [
        "[stdout:0] out", "[stderr:0] err", "[stdout:1] out", "[stderr:1] err"]
    late = rc[[0, 1]].execute(code, block=False)
    late.display_outputs()              # not waited for first: it waits, all is shown
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[stdout:0] out", "[stdout:1] out"]
    assert err.splitlines() == ["[stderr:0] err", "[stderr:1] err"]
    # positional; one engine's (a single result: rc[0]) unprefixed, as ipyparallel's: its
    # display_outputs printed them with [stdout:0] as for rc[[0]] (ipyparallel's own test,
    # test_display_empty_streams_single, wants '5555\n' from rc[-1]'s print(5555))
    rc[0].execute(code, block=False).display_outputs("order")
    assert capsys.readouterr() == ("out\n", "err\n")
    rc[[0]].execute(code, block=False).display_outputs("order")   # a list of one: prefixed
    assert capsys.readouterr() == ("[stdout:0] out\n", "[stderr:0] err\n")
    ar.display_outputs(result_only=True)   # no execute results to show in minipar
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="groupby must be"):
        ar.display_outputs("nonsense")


def test_an_executes_value_as_ipyparallel_code_reads_and_shows_it(rc, capsys):
    """ipyparallel's ``execute(code, silent=False)`` (as its %px sends it) brings back the
    value of the code's last expression: ``ar.execute_result`` and each engine's
    ``metadata['execute_result']['data']['text/plain']``, ``get()``'s ExecuteReply
    (``execution_count``, ``['execute_result']``, ``data``, ``Out[0:3]`` for IPython);
    ``display_outputs`` prints it after the streams (alone with ``result_only``)."""
    ar = rc[[0, 1]].execute("import sys\nprint('out')\n'v'", silent=False, block=False)
    replies = ar.get(TIMEOUT)
    n = [r.execution_count for r in replies]
    assert [md["execute_result"] for md in ar.metadata] == ar.execute_result == [
        {"data": {"text/plain": "'v'"}, "execution_count": c, "metadata": {}} for c in n]
    assert replies[0]["execute_result"]["data"]["text/plain"] == "'v'"
    assert replies[1].data["text/plain"] == "'v'" and replies[1].metadata["engine_id"] == 1
    assert repr(replies[0]) == f"<ExecuteReply[{n[0]}]: 'v'>"
    pretty = pytest.importorskip("IPython.lib.pretty").pretty   # what IPython's display shows
    assert pretty(replies[1]) == f"Out[1:{n[1]}]: 'v'"
    shown = io.StringIO()
    ar.display_outputs(groupby="engine", file=shown)
    assert shown.getvalue().splitlines() == [
        "[stdout:0] out", "[output:0]", f"Out[0:{n[0]}]: 'v'",
        "[stdout:1] out", "[output:1]", f"Out[1:{n[1]}]: 'v'"]
    ar.display_outputs()
    assert capsys.readouterr().out.splitlines() == [
        "[stdout:0] out", "[stdout:1] out", f"Out[0:{n[0]}]: 'v'", f"Out[1:{n[1]}]: 'v'"]
    ar.display_outputs(result_only=True)
    assert capsys.readouterr().out == f"Out[0:{n[0]}]: 'v'\nOut[1:{n[1]}]: 'v'\n"
    one = rc[2].execute("2 ** 10", silent=False, block=True)   # one engine: its own value
    assert one.execute_result["data"] == {"text/plain": "1024"}
    assert one.get(0).execution_count == one.execute_result["execution_count"]


def test_an_executes_value_is_found_past_a_line_separator_in_a_string(rc):
    """The `;` that silences the last expression is looked for on the parser's line: a
    string holding U+2028 or a form feed (pasted text) made it read the line before, so
    the value of ``2`` below was taken as silenced and lost."""
    for sep in ("\u2028", "\x0c"):
        ar = rc[0].execute(f"a = '{sep}';\n2", silent=False, block=True)
        assert ar.execute_result["data"] == {"text/plain": "2"}, repr(sep)
        assert rc[0].execute(f"a = '{sep}'\n2;", silent=False).execute_result is None


def test_a_blocking_execute_returns_its_async_result_as_ipyparallel(rc, capsys, tmp_path):
    """ipyparallel's ``execute(code, block=True)`` (and ``run``) waits, raises an engine's
    error and returns the AsyncResult, done, whose output scripts then read."""
    ar = rc[:].execute("print('hi', end='')", block=True)   # an ExecuteReply per engine
    assert isinstance(ar, ipp.AsyncResult) and ar.ready()
    assert [(r.engine_id, r.data, r.stdout) for r in ar.get(0)] == [(e, None, "hi") for e in rc.ids]
    assert ar.stdout == ["hi"] * 4
    ar.display_outputs()
    assert capsys.readouterr().out.splitlines() == [f"[stdout:{e}] hi" for e in rc.ids]
    one = rc[1].execute("print('one')", block=True)   # one int target: its own value
    assert one.ready() and one.get(0).engine_id == 1 and one.stdout == "one\n"
    script = tmp_path / "script.py"
    script.write_text("print('ran')\n")
    ran = rc.direct_view([0, 2]).run(str(script), block=True)
    assert ran.ready() and ran.stdout == ["ran\n"] * 2
    with pytest.raises(ipp.CompositeError, match="ZeroDivisionError"):
        rc[:].execute("1/0", block=True)
    with pytest.raises(ipp.RemoteError, match="ZeroDivisionError"):
        rc[0].execute("1/0", block=True)
    assert [r.data for r in rc.broadcast_view().execute("b = 1", block=True).get(0)] == [None] * 4


def print_then_wait_for(path):
    import os
    import time

    print("first", flush=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("second")


def wait_for_then_print(path):
    import os
    import time

    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("first", flush=True)
    print("second")


def test_stream_output_is_a_context_manager_streaming_while_inside(rc, capsys, tmp_path):
    """ipyparallel's form, ``with ar.stream_output(): ar.get()``: output is printed as it
    comes while inside (here before the task ends), and no more once the block is left."""
    go = tmp_path / "go"
    ar = rc[0].apply_async(print_then_wait_for, str(go))
    with ar.stream_output():
        wait_until(lambda: "[stdout:0] first" in capsys.readouterr().out, TIMEOUT,
                   "no output streamed while the task runs")
        go.touch()
        assert ar.get(TIMEOUT) is None
    assert capsys.readouterr().out == "[stdout:0] second\n"
    # printing only once "late" exists: on a busy machine, "first" could arrive before
    # the block is left, and be printed by its last pass
    late = rc[1].apply_async(wait_for_then_print, str(tmp_path / "late"))
    with late.stream_output(interval=0.01):
        pass   # left before anything was printed: nothing is printed after
    (tmp_path / "late").touch()
    late.get(TIMEOUT)
    assert capsys.readouterr().out == ""
    assert late.stream_output().wait() and capsys.readouterr().out == \
        "[stdout:1] first\n[stdout:1] second\n"   # minipar's blocking form, as before
    # wait takes a timeout, as every wait does (it was a TypeError): past it the
    # streaming ends, and it says the result is not done
    go.unlink()
    stuck = rc[2].apply_async(print_then_wait_for, str(go))
    stream = stuck.stream_output(interval=0.01)
    assert stream.wait(0.5) is False and not stuck.done()
    assert stream.wait(timeout=-1) is False   # ended already: at once, as before
    go.touch()
    assert stuck.get(TIMEOUT) is None
    assert stuck.stream_output().wait(TIMEOUT) is True


def test_timestamps_are_aware_utc_datetimes_as_ipyparallels(rc):
    """ipyparallel's ``ar.metadata`` times and its task records' are datetimes (aware, in
    UTC: ``util.utcnow``), so scripts take ``(md['completed'] - md['started'])``; a
    query takes datetimes or seconds."""
    before = datetime.datetime.now(datetime.timezone.utc)
    lview = rc.load_balanced_view()
    ar = lview.apply_async(sleep_then, 0.2, "slept")
    kept = ar.metadata   # kept from before the reply: its times still come as datetimes
    assert ar.get(TIMEOUT) == "slept"
    assert isinstance(kept["completed"], datetime.datetime) and kept.received == kept["received"]
    md = ar.metadata
    assert md is kept
    for key in ("submitted", "started", "completed", "received"):
        assert isinstance(md[key], datetime.datetime), key
        assert md[key].utcoffset() == datetime.timedelta(0), key
    assert before <= md["submitted"] <= md["started"] <= md["completed"] <= md["received"]
    assert (md["completed"] - md["started"]).total_seconds() >= 0.2
    assert all(isinstance(a[k], datetime.datetime) for a in md["attempts"]
               for k in ("started", "completed"))
    assert ar.serial_time >= 0.2 and ar.wall_time >= ar.serial_time and ar.elapsed > 0
    dv = rc[:].apply_async(abs, -1)
    dv.get(TIMEOUT)
    assert all(isinstance(t, datetime.datetime) for t in dv["completed"] + dv.received)
    assert isinstance(dv.metadata[0].started, datetime.datetime)
    again = rc.get_result(ar.msg_ids[0], block=True).metadata
    assert isinstance(again["started"], datetime.datetime)
    [rec] = rc.db_query({"msg_id": ar.msg_ids[0]})
    assert {k: type(rec[k]) for k in ("submitted", "started", "completed")} == \
        dict.fromkeys(("submitted", "started", "completed"), datetime.datetime)
    assert rec["started"] == md["started"] and rec["completed"].tzinfo is not None
    mine = {"msg_id": ar.msg_ids[0]}
    for t in (before, before.timestamp(), before.astimezone().replace(tzinfo=None)):
        assert rc.db_query(dict(mine, started={"$gte": t}), keys=["started"]) == \
            [{"msg_id": ar.msg_ids[0], "started": md["started"]}], t
        assert rc.db_query(dict(mine, completed={"$lt": t})) == []



def test_metadata_kept_from_before_the_reply_gives_datetimes_through_get_too(rc):
    """``md.get('completed')`` is a read by key as ``md['completed']`` is: a dict kept from
    before the reply gave the reply's float there while ``[]`` gave a datetime."""
    ar = rc.load_balanced_view().apply_async(sleep_then, 0.2, "slept")
    kept = ar.metadata
    assert kept["completed"] is None   # read before the reply
    assert ar.get(TIMEOUT) == "slept"
    for key in ("submitted", "started", "completed", "received"):
        assert isinstance(kept.get(key), datetime.datetime), key
    assert all(isinstance(a[k], datetime.datetime) for a in kept.get("attempts")
               for k in ("started", "completed"))

def test_execute_takes_silent_before_targets_as_ipyparallel(rc):
    """ipyparallel's ``execute(code, silent=True, targets=None, block=None)``: `silent`
    by keyword or in its place; False sends the value of a last expression back."""
    dv = rc[:]
    ar = dv.execute("s = 1\ns", silent=False, block=True)
    assert [r.data for r in ar.get(0)] == [{"text/plain": "1"}] * 4
    dv.execute("s = 2", True, [0, 1], True)          # silent, targets, block by position
    assert dv.pull("s", block=True) == [2, 2, 1, 1]
    assert rc[3].execute("s = 3\ns", silent=True).get(TIMEOUT).data is None
    assert rc[3]["s"] == 3


def test_client_get_result_takes_block_as_ipyparallel(rc):
    """``rc.get_result(msg_ids, block=None, owner=True)``: with ``block=True`` it returns
    once the requests are done, an AsyncResult still; ``block`` is its second argument."""
    lview = rc.load_balanced_view()
    ar = lview.apply_async(sleep_then, 0.3, "late")
    again = rc.get_result(ar.msg_ids, block=True)
    assert again.ready() and again.get() == ["late"]
    assert rc.get_result(ar.msg_ids[0], True).get() == "late"       # block by position
    assert rc.get_result(ar.msg_ids[0], block=False, owner=True).get(TIMEOUT) == "late"
    assert lview.get_result(ar, block=True).ready()                  # the view's, as before


def test_get_result_of_another_clients_request_keeps_when_it_was_submitted(shared_cluster):
    """Another client's ``get_result`` (ipyparallel: the hub's record) gives the request's
    own ``submitted`` time, not the time it asked, so ``started - submitted`` (as the
    docs' visualizing-tasks notebook computes it) is never negative; also when it asked
    while the request still ran."""
    rc = shared_cluster.rc
    ar = rc.load_balanced_view().apply_async(sleep_then, 0.5, "x")
    asked_early, asked_late = shared_cluster.client(), shared_cluster.client()
    try:
        early = asked_early.get_result(ar.msg_ids)
        assert ar.get(TIMEOUT) == "x"
        late = asked_late.get_result(ar.msg_ids, block=True)
        record, = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["submitted"])
        for got in (early, late):
            assert got.get(TIMEOUT) == ["x"]
            md = got.metadata[0]
            assert md["submitted"] == record["submitted"] <= md["started"] <= md["completed"]
    finally:
        asked_early.close()
        asked_late.close()


def test_wait_for_engines_as_ipyparallel(local_cluster):
    """``rc.wait_for_engines(n, timeout=-1, block=True, interactive=None, widget=None)``:
    -1 (its default) is no limit, and ``block=False`` returns a Future at once."""
    rc = local_cluster.client()
    one = rc.wait_for_engines(1, block=False)
    two = rc.wait_for_engines(2, timeout=-1, block=False)
    assert not one.done() and not two.done()
    local_cluster.start_engines(1)
    assert one.result(TIMEOUT) == [0]
    assert not two.done()                     # waits on, not timed out at once
    local_cluster.start_engines(1)
    assert two.result(TIMEOUT) == [0, 1]
    assert rc.wait_for_engines(2, timeout=-1, interactive=False, widget=False) == [0, 1]
    with pytest.raises(TimeoutError, match="wanted 3"):
        rc.wait_for_engines(3, timeout=0.1)
    with pytest.raises(TimeoutError, match="wanted 3"):
        rc.wait_for_engines(3, timeout=0.1, block=False).result(TIMEOUT)
    for wrong, error in [("2", TypeError), (None, TypeError), (-1, ValueError)]:
        with pytest.raises(error, match=rf"n={wrong!r}: give a count"):
            rc.wait_for_engines(wrong)


def test_ipp_error_is_the_module_of_exceptions(rc):
    """``except ipp.error.CompositeError as e: e.raise_exception()``, as ipyparallel's
    docs write it: ``ipp.error`` is minipar.errors, and ``from minipar import error``."""
    from minipar import error

    assert error is ipp.error and "error" in dir(ipp)
    assert (ipp.error.CompositeError, ipp.error.RemoteError, ipp.error.TaskAborted) == \
        (ipp.CompositeError, ipp.RemoteError, ipp.TaskAborted)
    dv = rc[:]
    dv.block = True
    with pytest.raises(ipp.error.RemoteError) as info:
        try:
            dv.execute("1/0")
        except ipp.error.CompositeError as e:
            e.raise_exception()
    assert info.value.ename == "ZeroDivisionError"
    with pytest.raises(AttributeError, match="no attribute 'errorz'"):
        ipp.errorz


def test_abort_takes_targets_and_block_as_ipyparallel(rc):
    """``rc.abort(jobs=None, targets=None, block=None)``: with `targets` and no jobs,
    what this client sent to those engines; `block` is accepted (done on return)."""
    on_zero = [rc[0].apply_async(sleep_then, 30, "long"), rc[0].apply_async(sleep_then, 0, 0)]
    on_one = rc[1].apply_async(sleep_then, 0.2, "one")
    assert rc.abort(targets=0, block=True) == 2
    for ar in on_zero:
        with pytest.raises(Exception, match="abort"):
            ar.get(TIMEOUT)
    assert on_one.get(TIMEOUT) == "one"
    task = rc.load_balanced_view().apply_async(sleep_then, 30, None)
    assert rc.abort(task, targets=None, block=False) == 1
    with pytest.raises(Exception, match="abort"):
        task.get(TIMEOUT)
    with pytest.raises(IndexError):
        rc.abort(targets=99)


def test_a_views_abort_is_on_its_engines_as_ipyparallels(rc):
    """``view.abort(jobs=None, targets=None, block=None)`` is ipyparallel's: rc.abort on
    the view's targets, so of two views on different engines each aborts only what went
    to its own; `targets` overrides; a view on 'all' aborts queued tasks too."""
    v0, v1 = rc[0], rc[[1]]
    mine = [v0.apply_async(sleep_then, 30, "long"), v0.apply_async(sleep_then, 0, 0)]
    theirs = v1.apply_async(sleep_then, 30, "one")
    assert v0.abort(block=True) == 2            # not theirs: still pending
    for ar in mine:
        with pytest.raises(Exception, match="abort"):
            ar.get(TIMEOUT)
    other = v0.apply_async(sleep_then, 30, "other")
    assert v0.abort(targets=1) == 1             # theirs only
    with pytest.raises(Exception, match="abort"):
        theirs.get(TIMEOUT)
    lview = rc.load_balanced_view(targets="all")
    tasks = [lview.apply_async(sleep_then, 30, i) for i in range(len(rc.ids) + 2)]
    assert lview.abort() == len(tasks) + 1      # and `other`, on engine 0
    for ar in [*tasks, other]:
        with pytest.raises(Exception, match="abort"):
            ar.get(TIMEOUT)


def fail_fast_or_sleep(x):
    import time

    if x == 0:
        raise ValueError("first")
    time.sleep(30)
    return x


def test_return_when_as_ipyparallel_8(rc):
    """``ar.get(return_when=ipp.FIRST_EXCEPTION)`` raises as soon as one request fails;
    ``ar.wait(return_when=...)`` returns (done, pending) sets of ``ar.split()``'s parts."""
    import concurrent.futures as cf
    import time

    assert (ipp.FIRST_COMPLETED, ipp.FIRST_EXCEPTION, ipp.ALL_COMPLETED) == \
        (cf.FIRST_COMPLETED, cf.FIRST_EXCEPTION, cf.ALL_COMPLETED)
    lview = rc.load_balanced_view()
    ar = lview.map_async(fail_fast_or_sleep, range(4), chunksize=1)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="first"):
        ar.get(TIMEOUT, return_when=ipp.FIRST_EXCEPTION)
    assert time.monotonic() - t0 < 20 and not ar.done()
    done, pending = ar.wait(TIMEOUT, return_when=ipp.FIRST_EXCEPTION)
    assert len(done) == 1 and len(pending) == 3
    assert next(iter(done)).msg_ids == ar.msg_ids[:1]
    ar.abort()
    each = rc[:].apply_async(sleep_then, 0, "x")
    parts = each.split()
    assert [p.get(TIMEOUT) for p in parts] == ["x"] * 4 and len(parts) == 4
    done, pending = each.wait(TIMEOUT, return_when=ipp.ALL_COMPLETED)
    assert len(done) == 4 and not pending
    assert each.get(TIMEOUT, return_when=ipp.FIRST_EXCEPTION) == ["x"] * 4
    assert each.wait(TIMEOUT) is True              # without return_when: a bool, as before
    chunks = lview.map_async(abs, range(-6, 0), chunksize=3)
    assert [p.get(TIMEOUT) for p in chunks.split()] == [[6, 5, 4], [3, 2, 1]]
    slow = rc[0].apply_async(sleep_then, 30, None)
    with pytest.raises(ipp.TimeoutError):
        slow.get(0.2, return_when=ipp.FIRST_EXCEPTION)
    slow.abort()


def test_imap_return_exceptions_yields_the_errors(rc):
    """``lview.imap(f, *seqs, ordered=True, max_outstanding='auto',
    return_exceptions=False)``: with return_exceptions a failed task's error is yielded
    in its place and the iteration goes on."""
    lview = rc.load_balanced_view()
    results = list(lview.imap(lambda x: 1 / x, [1, 0, 2, 0, 4], return_exceptions=True))
    assert [r for r in results if not isinstance(r, BaseException)] == [1.0, 0.5, 0.25]
    assert all(isinstance(r, ipp.RemoteError) and r.ename == "ZeroDivisionError"
               for r in results[1::2])
    unordered = list(lview.imap(lambda x: 1 / x, [0, 1], ordered=False, max_outstanding=1,
                                return_exceptions=True))
    assert len(unordered) == 2 and 1.0 in unordered
    with pytest.raises(ZeroDivisionError):
        list(lview.imap(lambda x: 1 / x, [1, 0, 2]))        # the default: raised


def test_shutdown_takes_restart_second_as_ipyparallel(cluster):
    """``rc.shutdown(targets='all', restart=False, hub=False, block=None)`` and
    ``dview.shutdown(targets=None, restart=False, hub=False, block=None)``: restart=True
    needs ipyparallel's nannies, and is refused saying what to do instead."""
    rc = cluster.rc
    with pytest.raises(ValueError, match="no nanny.*restart_engines"):
        rc.shutdown(restart=True)
    with pytest.raises(ValueError, match="no nanny"):
        rc[0].shutdown(restart=True)
    assert rc.ids == [0, 1, 2, 3]                  # refused before anything was sent
    rc.shutdown([3], False, False, True)           # targets, restart, hub, block
    assert rc.ids == [0, 1, 2]
    rc[2].shutdown(restart=False, block=True)
    assert rc.ids == [0, 1]
    rc[[0, 1]].shutdown("all", False)              # 'all': the view's engines
    assert rc.ids == []


def test_a_views_queue_status_takes_targets_first(rc):
    """``view.queue_status(targets=None, verbose=False)``: the view's engines unless
    `targets` says otherwise, which comes first, as in ipyparallel."""
    pair = rc[[0, 1]]
    assert sorted(k for k in pair.queue_status() if k != "unassigned") == [0, 1]
    assert pair.queue_status(2).keys() == {"queue", "tasks", "completed"}   # one engine's
    assert sorted(k for k in pair.queue_status([1, 3], False) if k != "unassigned") == [1, 3]
    assert "stats" in rc.load_balanced_view().queue_status(verbose=True)
    assert sorted(k for k in rc.load_balanced_view([3]).queue_status()
                  if k != "unassigned") == [3]


def test_client_refuses_an_ssh_tunnel_saying_what_to_do(shared_cluster):
    """ipyparallel's ``Client(url_file, sshserver=...)`` tunnels through ssh; minipar's
    does not, and says so at once, not with a connection timeout later."""
    for option in ("sshserver", "sshkey", "password", "paramiko"):
        with pytest.raises(TypeError, match=rf"Client\({option}=...\): minipar's Client makes "
                                            r"no ssh tunnel; .*ssh -L"):
            ipp.Client(shared_cluster.client_file, **{option: "user@host"}, timeout=1)
    rc = ipp.Client(shared_cluster.client_file, debug=False)    # other options: accepted
    try:
        assert rc.ids == [0, 1, 2, 3]
    finally:
        rc.close()


def test_a_url_or_ipyparallels_file_name_for_a_running_controller_says_what_to_pass(
        shared_cluster):
    """The controller runs: ``Client("tcp://host:port")`` (IPython.parallel's documents)
    and ``Client(".../security/ipcontroller-client.json")`` (ipyparallel's name) said
    "no connection file ...: start a controller", which sent the reader to start a second
    one. Each now says what to pass instead."""
    with open(shared_cluster.client_file) as f:
        port = json.load(f)["ports"]["client"]
    with pytest.raises(ipp.errors.ConnectionFileError) as caught:
        ipp.Client(f"tcp://127.0.0.1:{port}", timeout=1)
    assert f"tcp://127.0.0.1:{port} is a url, not a connection file" in str(caught.value)
    assert "holds the key as well as the address" in str(caught.value)
    assert "start a controller" not in str(caught.value)
    security = os.path.dirname(shared_cluster.client_file)
    with pytest.raises(ipp.errors.ConnectionFileError) as caught:
        ipp.Client(os.path.join(security, "ipcontroller-client.json"), timeout=1)
    assert f"not ipyparallel's ipcontroller-*.json; pass {shared_cluster.client_file}" \
        in str(caught.value)
    assert "start a controller" not in str(caught.value)


def test_composite_error_elist_entries_unpack_as_ipyparallel_tuples(rc):
    """ipyparallel's ``CompositeError.elist`` is a list of (ename, evalue, traceback,
    engine_info) tuples, which scripts unpack; minipar's RemoteErrors do so too."""
    with pytest.raises(ipp.CompositeError) as info:
        rc[[1, 2]].apply_sync(lambda: 1 / 0)
    seen = []
    for ename, evalue, tb, engine_info in info.value.elist:
        seen.append((ename, engine_info["engine_id"]))
        assert "division by zero" in str(evalue) and "ZeroDivisionError" in tb
    assert seen == [("ZeroDivisionError", 1), ("ZeroDivisionError", 2)]
    first = info.value.elist[0]
    assert first[0] == first.ename == "ZeroDivisionError" and first[-1]["engine_id"] == 1
    assert tuple(first)[:2] == (first.ename, first.evalue)


def test_cluster_says_what_to_pass_for_ipyparallel_options():
    """ipyparallel's Cluster takes traitlets options (``engine_timeout``, ``delay``...);
    minipar's refuses each at once, saying what to pass instead (``log_level``,
    ``controller_ip``, ``engine_launcher_class``... it takes: test_cluster_api)."""
    for option, says in (("engine_timeout", "timeout="), ("delay", "leave it out"),
                         ("send_engines_connection_env", "engines read the connection file"),
                         ("load_profile", "leave it out"), ("cluster_file", "cluster-<id>.json")):
        with pytest.raises(TypeError, match=rf"Cluster\(\) got an unexpected keyword argument "
                                            rf"'{option}': minipar leaves ipyparallel's out; "
                                            rf".*{says}"):
            ipp.Cluster(n=1, **{option: "*"})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'nonsense'$"):
        ipp.Cluster(n=1, nonsense=1)


def test_client_block_is_the_default_of_the_views_made_after_it(rc):
    """ipyparallel's ``rc.block = True`` (its older tutorials' first step): each view made
    afterwards blocks by default (``View.__init__``: ``self.block = client.block``)."""
    assert rc.block is False and rc[:].block is False
    try:
        rc.block = True
        assert rc[0].apply(abs, -1) == 1                        # a value: it blocked
        assert rc[:].apply(abs, -2) == [2] * 4
        assert rc.load_balanced_view().apply(abs, -3) == 3
        assert rc.direct_view().block and rc.broadcast_view().block
        assert rc.load_balanced_view(block=False).block is False   # a flag given wins
    finally:
        rc.block = False
    assert rc[:].block is False
    assert rc[0].apply(abs, -1).get(TIMEOUT) == 1


def test_sent_and_wait_for_send_for_code_that_tracks_sends(rc):
    """``with view.temp_flags(track=True): ar = view.apply(f, big); ar.wait_for_send()``
    then change `big`: without send tracking minipar says sent once it is safe, when the
    request is done (a buffer of 64 KiB or more leaves without a copy)."""
    big = bytearray(200_000)
    lview = rc.load_balanced_view()
    with lview.temp_flags(track=True):
        ar = lview.apply_async(sleep_then, 0.3, big)
    assert ar.wait_for_send(TIMEOUT) is True and ar.sent is True and ar.done()
    big[0] = 1                              # safe now: the engine has what was sent
    assert ar.get()[0] == 0
    slow = rc[0].apply_async(sleep_then, 30, None)
    assert slow.sent is False and slow.wait_for_send(0.1) is False
    slow.abort()


def test_joblib_backend_answers_to_ipyparallels_name_too(rc):
    """ipyparallel's docs: ``view.register_joblib_backend()`` then
    ``with parallel_backend("ipyparallel"):``; minipar registers that name with its own."""
    joblib = pytest.importorskip("joblib")
    import os

    lview = rc.load_balanced_view([2, 3])
    lview.register_joblib_backend()
    for name in ("ipyparallel", "minipar"):
        with joblib.parallel_backend(name):
            assert joblib.effective_n_jobs() == 2
            pids = joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(8))
        assert set(pids) <= set(rc[[2, 3]].apply_sync(os.getpid))


def test_wait_interactive_takes_widget_and_return_when(rc, capsys):
    """``ar.wait_interactive(interval=0.1, timeout=-1, widget=None,
    return_when=ALL_COMPLETED)``: FIRST_EXCEPTION stops at the first failure."""
    import time

    lview = rc.load_balanced_view()
    ar = lview.map_async(fail_fast_or_sleep, range(4), chunksize=1)
    t0 = time.monotonic()
    assert ar.wait_interactive(interval=0.05, widget=False,
                               return_when=ipp.FIRST_EXCEPTION) is None   # as ipyparallel's
    assert time.monotonic() - t0 < 20 and not ar.done()
    assert ar.wait_interactive(0.05, 0.1, None, ipp.FIRST_COMPLETED) is None   # one is done
    assert not ar.done()
    ar.abort()
    ok = lview.map_async(abs, range(-8, 0), chunksize=1)
    assert ok.wait_interactive(0.05, -1, widget=True, return_when=ipp.ALL_COMPLETED) is None
    assert ok.done()
    assert "8/8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="return_when="):
        ok.wait_interactive(return_when="sometimes")


def next_of_an_engine_iterator(view, name):
    """docs/source/examples/nwmerge.py's remote_iterator, its except clause unchanged."""
    from minipar.error import RemoteError

    view.execute(f"it{name} = iter({name})", block=True)
    while True:
        try:
            result = view.apply_sync(next, ipp.Reference("it" + name))
        except RemoteError as e:
            if e.ename == "StopIteration":
                return
            raise
        yield result


def test_ipp_error_imports_by_path_as_ipyparallels(rc):
    """``from ipyparallel.error import RemoteError`` (the nwmerge example) and
    ``import ipyparallel.error``: minipar.error is the module ``ipp.error`` names."""
    import minipar.error
    from minipar.error import CompositeError, RemoteError

    assert minipar.error is ipp.error
    assert (RemoteError, CompositeError) == (ipp.RemoteError, ipp.CompositeError)
    rc[0]["a"] = range(3)
    assert list(next_of_an_engine_iterator(rc[0], "a")) == [0, 1, 2]



def wait_and_fail(t):
    import time

    time.sleep(t)
    return 1 / 0


def test_kernel_error_is_the_base_of_the_errors_as_ipyparallels(rc):
    """ipyparallel's errors derive from ``KernelError`` (itself an ``IPythonError``): its
    dependencies example catches an impossible dependency with
    ``except ipp.error.KernelError``."""
    assert ipp.KernelError is ipp.error.KernelError and ipp.IPythonError is ipp.KernelError
    for error in (ipp.RemoteError, ipp.CompositeError, ipp.EngineError, ipp.TaskAborted,
                  ipp.TaskTimeout, ipp.UnmetDependency, ipp.ImpossibleDependency,
                  ipp.NoEnginesRegistered, ipp.DependencyTimeout):
        assert issubclass(error, ipp.error.KernelError), error
    lview = rc.load_balanced_view()
    failure = lview.apply_async(wait_and_fail, 0.05)
    with lview.temp_flags(after=ipp.Dependency(failure.msg_ids, all=False)):
        never = lview.apply_async(abs, -1)
    with pytest.raises(ipp.error.KernelError, match="ImpossibleDependency"):
        never.get(TIMEOUT)


def test_push_resolves_a_reference_on_each_engine_as_ipyparallel(rc):
    """ipyparallel's push sends its dict as the keywords of an apply, so a ``Reference``
    value is the engine's own variable, read before the push: ``dv.push({'b':
    ipp.Reference('a')})`` sets each engine's b to its a."""
    dv = rc[:]
    dv.scatter("a", rc.ids, flatten=True, block=True)
    dv.push({"b": ipp.Reference("a"), "a": "new", "c": 3}, block=True)
    assert dv.pull(("a", "b", "c"), block=True) == [["new", e, 3] for e in rc.ids]
    with pytest.raises(ipp.CompositeError, match="NameError"):
        dv.push({"d": ipp.Reference("never_defined")}, block=True)


def test_update_and_setitem_are_pushes_that_follow_the_views_block(rc, tmp_path):
    """ipyparallel's ``dv.update(ns)`` is ``dv.push(ns, block=dv.block)``, and ``dv[k] = v``
    an update: with block False the push is queued, not waited for (update returns its
    AsyncResult), with block True it is waited for. Both always waited and gave None."""
    gate = tmp_path / "gate"
    dv = rc.direct_view(targets=[0])   # a view of its own: block changed here only
    dv.block = False
    busy = dv.apply_async(wait_for_file, str(gate))
    ar = dv.update({"u": 1})
    dv["s"] = 2   # both queued behind `busy`: it still waits for its gate
    assert isinstance(ar, ipp.AsyncResult) and not ar.done() and not busy.done()
    gate.touch()
    assert busy.get(TIMEOUT) == [True] and ar.get(TIMEOUT) == [None]
    assert dv.pull(["u", "s"], block=True) == [[1, 2]]
    dv.block = True
    assert dv.update({"u": 3}) == [None]
    dv["s"] = 4
    assert dv.pull(["u", "s"], block=False).get(TIMEOUT) == [[3, 4]]


def test_a_module_name_minipar_leaves_out_says_what_to_use(rc):
    """ipyparallel's magics page runs ``%px import ipyparallel as ipp; ipp.bind_kernel()``
    on the engines: each name of ipyparallel's module that minipar leaves out on purpose
    is an AttributeError saying so in one line, there and here."""
    with pytest.raises(ipp.CompositeError, match="engines are not IPython kernels"):
        rc[:].execute("import minipar as ipp; ipp.bind_kernel()", block=True)
    for name, advice in [("AsyncMapResult", "ipp.AsyncResult"),
                         ("remote", "@view.remote()"), ("version_info", "__version__"),
                         ("can", "cloudpickle"), ("TaskRejectError", "ImpossibleDependency")]:
        with pytest.raises(AttributeError, match=rf"no attribute '{name}': minipar leaves "
                                                 rf"ipyparallel's out; .*{re.escape(advice)}"):
            getattr(ipp, name)
        assert not hasattr(ipp, name) and name not in dir(ipp)
    with pytest.raises(AttributeError, match=r"no attribute 'nonsense'$"):
        ipp.nonsense


def test_a_name_of_ipyparallels_error_module_minipar_leaves_out_says_what_to_use(rc):
    """ipyparallel's task code raises ``ipp.error.TaskRejectError`` to be run on another
    engine: in the ``error`` module, as at the package's top, a name minipar leaves out is
    an AttributeError saying what to use (UnmetDependency), there and here."""
    with pytest.raises(ipp.CompositeError, match="raises UnmetDependency to run on another"):
        rc[:].execute("import minipar as ipp\nraise ipp.error.TaskRejectError('not here')",
                      block=True)
    for name, advice in [("TaskRejectError", "UnmetDependency"),
                         ("AlreadyDisplayedError", "display"),
                         ("collect_exceptions", "CompositeError")]:
        with pytest.raises(AttributeError, match=rf"no attribute '{name}': minipar leaves "
                                                 rf"ipyparallel's out; .*{re.escape(advice)}"):
            getattr(ipp.error, name)
        assert not hasattr(ipp.error, name)
    with pytest.raises(AttributeError, match=r"no attribute 'nonsense'$"):
        ipp.error.nonsense


def test_a_submodule_minipar_leaves_out_says_what_to_use(rc, tmp_path, monkeypatch):
    """ipyparallel's helper modules import its submodules by path (``from ipyparallel.util
    import interactive``): with the package renamed, one minipar leaves out on purpose is
    an ImportError saying what to use instead, here and on the engines, in each form of
    import. Before, it was a bare "No module named 'minipar.util'"."""
    import sys

    (tmp_path / "ipp_style_helpers.py").write_text(
        "from minipar.util import interactive\n\n@interactive\ndef where():\n"
        "    return __name__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    advice = r"minipar leaves ipyparallel's util out on purpose: .*minipar\.interactive"
    with pytest.raises(ModuleNotFoundError, match=advice):
        import ipp_style_helpers   # noqa: F401
    for statement in ("import minipar.util", "from minipar import util",
                      "import minipar.util.more"):
        with pytest.raises(ImportError, match=advice):
            exec(statement, {})
    with pytest.raises(ipp.CompositeError, match="minipar.interactive"):
        rc[:].execute("from minipar.util import interactive", block=True)
    with pytest.raises(ModuleNotFoundError, match=r"serialize out on purpose: .*cloudpickle"):
        import minipar.serialize   # noqa: F401
    with pytest.raises(AttributeError, match=r"no attribute 'util': .*minipar\.interactive"):
        ipp.util
    # the helper as the message says, which runs on the engines as ipyparallel's
    (tmp_path / "ipp_style_helpers.py").write_text(
        "from minipar import interactive\n\n@interactive\ndef where():\n"
        "    return __name__\n")
    sys.modules.pop("ipp_style_helpers", None)
    import ipp_style_helpers

    assert rc[:].apply_sync(ipp_style_helpers.where) == ["__main__"] * 4
    # any other missing module, of minipar or not, is the plain error it was
    for statement, text in (("import minipar.nonsense", "No module named 'minipar.nonsense'"),
                            ("import no_such_module_here", "No module named "
                                                           "'no_such_module_here'")):
        with pytest.raises(ModuleNotFoundError) as info:
            exec(statement, {})
        assert str(info.value) == text
    # asked only once the import system's own finders failed (a package imported later,
    # mpi4py or six, may append its own finder after it: it asks minipar's names nothing)
    finders = [getattr(f, "__module__", None) for f in sys.meta_path]
    assert finders.index("minipar") > sys.meta_path.index(importlib.machinery.PathFinder)


def test_a_path_into_an_ipyparallel_package_minipar_has_as_a_module_says_where_to_look(rc):
    """ipyparallel's client, controller and engine are packages (``from
    ipyparallel.client.view import DirectView``); minipar's are modules, so with the
    package renamed such an import was Python's "No module named 'minipar.client.view';
    'minipar.client' is not a package". It is an ImportError saying where the name is,
    here and on the engines, in each form of import; what those modules have still
    imports from them, and a name they lack is the plain error it was."""
    for statement, advice in (
            ("from minipar.client.view import DirectView", "from minipar import DirectView"),
            ("import minipar.client.view", "from minipar import DirectView"),
            ("from minipar.client import view", "from minipar import DirectView"),
            ("from minipar.client.asyncresult import AsyncResult",
             "from minipar import AsyncResult"),
            ("from minipar.client.client import Client", "from minipar import Client"),
            ("from minipar.controller.dependency import require",
             "from minipar import Dependency"),
            ("from minipar.engine.datapub import publish_data",
             "from minipar.datapub import publish_data")):
        with pytest.raises(ModuleNotFoundError, match=r"minipar\.(\w+) is one module, not a "
                           r"package as ipyparallel\.\1 is: .*" + re.escape(advice)):
            exec(statement, {})
    with pytest.raises(ipp.CompositeError, match=re.escape("from minipar import DirectView")):
        rc[:].execute("from minipar.client.view import DirectView", block=True)
    exec("from minipar.client import Client, DirectView\n"
         "from minipar.asyncresult import AsyncResult", {})
    with pytest.raises(ImportError, match=r"^cannot import name 'nonsense' from "
                                          r"'minipar\.client'"):
        exec("from minipar.client import nonsense", {})
    with pytest.raises(ModuleNotFoundError) as info:
        exec("import minipar.client.nonsense", {})
    assert str(info.value) == "No module named 'minipar.client.nonsense'"


def test_an_engine_imports_from_the_folder_it_is_in_as_ipyparallels(rc, tmp_path,
                                                                     monkeypatch):
    """ipyparallel's engines put '' on sys.path, so its word count example moves them to
    the client's folder (``view.apply_sync(os.chdir, os.getcwd())``) and applies a function
    of a module there (``from wordfreq import wordfreq``), which travels by name."""
    import os

    (tmp_path / "beside_the_script.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import beside_the_script

    dv = rc[:]
    before = dv.apply_sync(os.getcwd)
    try:
        dv.apply_sync(os.chdir, str(tmp_path))
        assert dv.apply_sync(beside_the_script.twice, 4) == [8] * 4
    finally:   # the module's engines are shared: each goes back where it was
        for engine_id, folder in zip(rc.ids, before):
            rc[engine_id].apply_sync(os.chdir, folder)


def test_successful_before_the_result_is_done_is_a_runtime_error(rc, tmp_path):
    """ipyparallel's ``ar.successful()`` raises RuntimeError while the result is not ready
    (multiprocessing's, ValueError): ``except RuntimeError`` around it catches minipar's."""
    go = tmp_path / "go"
    ar = rc[0].apply_async(wait_for_file, str(go))
    with pytest.raises(RuntimeError, match="not ready"):
        ar.successful()
    go.touch()
    assert ar.get(TIMEOUT) is True and ar.successful()


def test_composite_and_remote_errors_have_ipyparallels_args_msg_and_repr(rc):
    """ipyparallel's CompositeError has ``msg``, the engines' error names as ``args`` and
    the repr ``CompositeError(n)``; its RemoteError's ``args`` are ``(ename, evalue)`` and
    its repr ``<RemoteError[0]:ZeroDivisionError(division by zero)>``. minipar's text
    stays the readable one: the message, then each engine's error."""
    with pytest.raises(ipp.CompositeError) as info:
        rc[:].apply_sync(lambda: 1 / 0)
    e = info.value
    assert e.args == ("ZeroDivisionError",) * 4 and repr(e) == "CompositeError(4)"
    assert e.msg.startswith("one or more exceptions raised in")
    assert str(e).splitlines()[:2] == [e.msg, "[0:apply]: ZeroDivisionError: division by zero"]
    with pytest.raises(ipp.RemoteError) as info:
        rc[1].apply_sync(lambda: 1 / 0)
    ename, evalue = info.value.args
    assert (ename, evalue) == ("ZeroDivisionError", "division by zero")
    assert repr(info.value) == "<RemoteError[1]:ZeroDivisionError(division by zero)>"
    assert str(info.value) == "[engine 1] ZeroDivisionError: division by zero"
    with pytest.raises(SyntaxError) as info:   # a builtin base taking its own arguments
        rc[2].execute("x = (", block=True)
    assert info.value.args[0] == "SyntaxError" and isinstance(info.value, ipp.RemoteError)


def test_resubmit_gives_a_list_whatever_it_resubmits(rc):
    """ipyparallel's ``rc.resubmit`` returns an AsyncHubResult over a list of msg_ids, so
    its result is a list, one per request, for one msg_id or one AsyncResult too."""
    one = rc[0].apply_async(abs, -2)
    assert one.get(TIMEOUT) == 2
    assert rc.resubmit(one).get(TIMEOUT) == [2]
    assert rc.resubmit(one.msg_ids[0]).get(TIMEOUT) == [2]
    task = rc.load_balanced_view().apply_async(abs, -3)
    assert task.get(TIMEOUT) == 3
    assert rc.resubmit(task, block=True).get(0) == [3]
    mapped = rc.load_balanced_view().map_async(abs, [-1, -2, -3, -4], chunksize=2)
    assert mapped.get(TIMEOUT) == [1, 2, 3, 4]
    assert rc.resubmit(mapped).get(TIMEOUT) == [[1, 2], [3, 4]]   # one list per chunk


def test_send_signal_returns_a_future_unless_blocking(rc):
    """ipyparallel's ``rc.send_signal(sig)`` returns a Future (``block`` is False by
    default), and None with ``block=True``; an idle engine ignores SIGINT."""
    import concurrent.futures
    import signal

    future = rc.send_signal("SIGINT", targets=[0])
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(TIMEOUT) is None
    assert rc.send_signal(signal.SIGINT, targets=0, block=True) is None
    assert rc[0].apply_sync(abs, -1) == 1


def test_db_query_finds_a_clients_records_by_its_session(rc, shared_cluster):
    """ipyparallel's docs query ``{'client_uuid': rc.session.session}``; minipar names that
    key 'client' (and says so), so the session, what a user has, must match the records of
    that client's requests, and only those; a value no record's key can have is said."""
    other = ipp.Client(shared_cluster.client_file)
    try:
        theirs = other[0].apply_async(abs, -6)
        assert theirs.get(TIMEOUT) == 6
        mine = rc[0].apply_async(abs, -5)
        assert mine.get(TIMEOUT) == 5
        with pytest.raises(ValueError, match="ipyparallel's client_uuid is minipar's 'client'"):
            rc.db_query({"client_uuid": rc.session.session})
        found = [r["msg_id"] for r in rc.db_query({"client": rc.session.session}, ["engine"])]
        assert mine.msg_ids[0] in found and theirs.msg_ids[0] not in found
        sessions = [rc.session.session, other.session.session]
        found = rc.db_query({"client": {"$in": sessions}, "engine": rc.ids[0]}, ["client"])
        assert {theirs.msg_ids[0], mine.msg_ids[0]} <= {r["msg_id"] for r in found}
        assert rc.db_query({"client": "no-such-session"}) == []
        with pytest.raises(ValueError, match="'0' for 'engine' would match no record: a "
                                             r"record's 'engine' is an int, the engine's id"):
            rc.db_query({"engine": "0"})
    finally:
        other.close()


def test_a_profiles_security_folder_given_as_its_profile_folder_means_the_profile(
        local_cluster):
    """The connection files lie in PROFILE/security, so a newcomer passes that folder as
    --profile-dir (profile_dir=): the engine, the client and top looked in
    security/security, waited and said to start a controller there. Each now uses the
    profile, saying so."""
    security = os.path.join(local_cluster.profile_dir, "security")
    engine = local_cluster._spawn("engine", ["--profile-dir", security])
    local_cluster.engines.append(engine)
    with pytest.warns(UserWarning, match="is a profile's security folder: its profile folder"):
        rc = ipp.Client(profile_dir=security, timeout=START_TIMEOUT_S)
    local_cluster.clients.append(rc)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert rc[:].apply_sync(abs, -3) == [3]
    top = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--profile-dir",
                          security], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert top.returncode == 0 and "engine" in top.stdout, top.stderr
    assert f"its profile folder, {local_cluster.profile_dir}, is used" in top.stderr


def as_list(part):
    return [list(part)]


def inverse(x):
    return 1 / x


def test_a_striped_map_whose_replies_all_came_first_keeps_the_items_order(rc):
    """A ``dist='r'`` map whose replies had all come in before its AsyncResult was made
    (quick tasks, a client thread slowed down) joined its parts block by block, not
    interleaved: ``[5, 1, 4, 3, 2]`` for ``abs`` over ``range(-5, 0)`` (seen under load),
    as the map was marked striped only after the AsyncResult had settled. Here the test
    holds the client's thread until the replies are in, at the AsyncResult's making."""
    from minipar.asyncresult import AsyncResult

    def replies_first(frame, event, arg):   # sys.settrace's: each call, in this thread
        if event == "call" and frame.f_code is AsyncResult.__init__.__code__:
            futures = list(frame.f_locals["futures"])
            wait_until(lambda: all(f.done() for f in futures), TIMEOUT, "the map's replies")

    views = (rc.direct_view([0, 1, 2, 3], block=True), rc.load_balanced_view(block=True))
    sys.settrace(replies_first)
    try:
        got = [view.parallel(dist="r")(abs).map(range(-5, 0)) for view in views]
    finally:
        sys.settrace(None)
    assert got == [[5, 4, 3, 2, 1]] * 2


def test_dist_r_stripes_scatter_gather_and_parallel_functions_as_ipyparallel(rc):
    """ipyparallel's ``dist='r'`` (scatter, gather, ``@view.parallel``): item j goes to
    part j % parts, and the parts are joined back in the items' order. minipar refused it
    with a ValueError ("only 'b' (blocks) is supported")."""
    import numpy as np

    dv = rc.direct_view([0, 1, 2, 3], block=True)
    dv.scatter("a", range(10), dist="r")
    assert dv["a"] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    assert dv.gather("a", dist="r") == list(range(10))
    assert dv.gather("a") == [0, 4, 8, 1, 5, 9, 2, 6, 3, 7]   # 'b' joins them as they lie
    dv.scatter("m", np.arange(18.0).reshape(9, 2), dist="r")
    assert [p.shape for p in dv["m"]] == [(3, 2), (2, 2), (2, 2), (2, 2)]
    assert (dv.gather("m", dist="r") == np.arange(18.0).reshape(9, 2)).all()
    with pytest.raises(ValueError, match="dist='x': give 'b' .* or 'r'"):
        dv.scatter("a", range(3), dist="x")

    assert dv.parallel(dist="r")(as_list)(range(6)) == [[0, 4], [1, 5], [2], [3]]
    double = dv.parallel(dist="r", block=False)(lambda xs: [2 * x for x in xs])
    ar = double(range(10))
    assert ar.get(TIMEOUT) == [2 * x for x in range(10)] and list(ar) == ar.get()
    assert dv.parallel(dist="r")(abs).map(range(-5, 0)) == [5, 4, 3, 2, 1]
    # iterating a striped map yields in order, up to the first item whose part failed
    failing = dv.parallel(dist="r", block=False)(inverse).map([1, 2, 4, 0, 8, 5])
    got = []
    with pytest.raises(ZeroDivisionError):
        for value in failing:
            got.append(value)
    assert got == [1.0, 0.5, 0.25]   # the part of 0 (engine 3's: [0]) failed

    lv = rc.load_balanced_view()
    assert lv.parallel(dist="r", chunksize=3, block=True)(as_list)(range(10)) == [
        [0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]   # 4 tasks of 3 items at most
    squares = lv.parallel(dist="r", chunksize=3, block=False)(lambda x: x * x).map(range(10))
    assert squares.get(TIMEOUT) == [x * x for x in range(10)] and len(squares) == 10
    assert list(squares) == squares.get() and len(squares.msg_ids) == 4
    partly = lv.parallel(dist="r", chunksize=2, return_exceptions=True, block=True)(inverse)
    got = partly.map([1, 0, 2, 4, 5])   # tasks [1, 4], [0, 5], [2]: the second fails
    assert [type(v).__name__ for v in got] == ["float", "ZeroDivisionError", "float", "float",
                                               "ZeroDivisionError"]
    assert [got[0], got[2], got[3]] == [1.0, 0.5, 0.25]


def test_a_direct_views_imap_and_importer_and_close_linger_as_ipyparallels(shared_cluster, rc,
                                                                             capsys):
    """ipyparallel 9's DirectView (and BroadcastView) has imap, an iterator over its map's
    results, and ``importer``, sync_imports() as a property; its Client.close takes
    ``linger``. minipar raised AttributeError ("imap is a load-balanced view's") and
    TypeError for them."""
    for view in (rc.direct_view([0, 1, 2]), rc.broadcast_view([0, 1, 2])):
        results = view.imap(abs, [-1, -2, -3, -4, -5])
        assert iter(results) is results and next(results) == 1
        assert list(results) == [2, 3, 4, 5]
        assert list(view.imap(pow, [2, 3], [3, 2])) == [8, 9]
        with view.importer:
            import colorsys
        assert "importing colorsys on engine(s)" in capsys.readouterr().out
        assert view.apply_sync(lambda: colorsys.__name__) == ["colorsys"] * 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunksize'"):
        rc[:].imap(abs, [1], chunksize=2)   # a DirectView's map takes none, as ipyparallel's
    other = shared_cluster.client()
    ar = other[:].apply_async(abs, -7)
    assert ar.get(TIMEOUT) == [7] * 4
    other.close(linger=0)
    with pytest.raises(RuntimeError, match="this Client is closed"):
        other[:].apply_sync(abs, -1)
