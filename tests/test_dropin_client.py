"""ipyparallel's Client-level API, end to end: Reference, list-style indexing,
send_signal, hub_history, broadcast_view, wait_interactive and spin.

The tests that leave the engines as they found them share the module's cluster, each
with a client of its own (``rc``); those that stop an engine, set a signal handler on
one, or count every name in the engines' namespaces take ``cluster``, their own."""

import os
import pathlib
import re
import signal
import time

import pytest

import minipar
from minipar import Reference, RemoteError
from .helpers import absent_in_docs, wait_until

TIMEOUT = 30


@pytest.fixture
def rc(own_client):
    """A client of its own on the module's cluster: these tests wait for and count all of a
    client's requests (rc.wait(), rc.outstanding)."""
    return own_client


def _wait_started(ar, text="started", timeout=TIMEOUT):
    """Wait until every request of `ar` printed `text` (streamed while it runs)."""
    wait_until(lambda: all(text in f.metadata["stdout"] for f in ar.futures), timeout,
               "the request to start")


# ---------------------------------------------------------------- Reference

def test_reference_resolves_on_the_engine(rc):
    dv = rc[:]
    dv.execute("import os; a = os.getpid(); b = [1, 2, 3]", block=True)
    pids = dv.apply_sync(lambda x: x, Reference("a"))
    assert pids == dv.pull("a", block=True)
    assert len(set(pids)) == 4
    # keyword arguments too, and an expression; the other arguments are left alone
    assert rc[0].apply_sync(lambda x, n=0, y=None: (x, n, y), Reference("b"), n=5,
                            y=Reference("b[1:]")) == ([1, 2, 3], 5, [2, 3])
    lview = rc.load_balanced_view()
    assert lview.apply_sync(len, Reference("b")) == 3


def test_reference_to_a_missing_name_is_a_name_error(rc):
    with pytest.raises(NameError, match="nothing_here") as info:
        rc[0].apply_sync(lambda x: x, Reference("nothing_here"))
    assert isinstance(info.value, RemoteError) and info.value.ename == "NameError"


def test_reference_inside_a_short_container_argument_resolves(rc):
    """As ipyparallel's canning: one level inside a list, tuple or set argument of fewer
    than 64 items, and a dict argument's values, keyword values and values pushed too; not
    deeper, nor in a longer list (ipyparallel pickles that as it is), nor a dict's key."""
    dv, lview = rc[:], rc.load_balanced_view()
    dv.execute("a = 5", block=True)
    a = Reference("a")

    def kinds(*args, **kwargs):
        return args, kwargs
    assert dv.apply_sync(kinds, [a, 1], (a,), {a}, {"k": a}, y=[a]) == [
        (([5, 1], (5,), {5}, {"k": 5}), {"y": [5]})] * 4
    assert lview.apply_async(kinds, (1, a)).get(TIMEOUT) == (((1, 5),), {})
    nested, long_list = rc[0].apply_sync(kinds, [[a]], [a] * 64)[0]
    assert isinstance(nested[0][0], Reference) and isinstance(long_list[0], Reference)
    assert rc[0].apply_sync(lambda d: type(next(iter(d))).__name__, {a: 1}) == "Reference"
    dv.push({"b": [a, 2]}, block=True)
    assert dv.pull("b", block=True) == [[5, 2]] * 4


def test_reference_in_a_dict_inside_an_argument_resolves_at_any_depth(rc):
    """ipyparallel's uncanning goes on into every dict it meets, inside a short list, tuple
    or set argument, a dict argument, a keyword value, a map's element or a value pushed,
    however deep; into no list inside those. A dict holding itself is copied once."""
    dv, lview = rc[:], rc.load_balanced_view()
    dv.execute("a = 5", block=True)
    a = Reference("a")

    def kinds(*args, **kwargs):
        return args, kwargs
    assert dv.apply_sync(kinds, [{"k": a}], ({"k": {"j": a}}, 1), {"k": {"j": {"i": a}}},
                         y={"k": {"j": a}}, z=[{"k": a}]) == [
        (([{"k": 5}], ({"k": {"j": 5}}, 1), {"k": {"j": {"i": 5}}}),
         {"y": {"k": {"j": 5}}, "z": [{"k": 5}]})] * 4
    assert lview.apply_sync(kinds, [{"k": a}]) == (([{"k": 5}],), {})
    assert lview.map_sync(lambda d: d["k"], [{"k": a}, {"k": 1}]) == [5, 1]
    assert dv.map_sync(lambda d: d["k"], [{"k": a}] * 100) == [5] * 100
    big = {i: {"k": a} for i in range(100)}
    assert rc[0].apply_sync(lambda d: d[99]["k"], big) == 5
    dv.push({"b": [{"k": a}]}, block=True)
    assert dv.pull("b", block=True) == [[{"k": 5}]] * 4
    # a list inside a dict is left as it is, as ipyparallel's
    assert rc[0].apply_sync(lambda d: type(d["k"][0]).__name__, {"k": [a]}) == "Reference"
    looped = {"k": a}
    looped["self"] = looped
    assert rc[0].apply_sync(lambda x: (x[0]["k"], x[0]["self"] is x[0]), [looped]) == (5, True)


def test_reference_as_the_function_calls_the_engines(rc):
    """``dv.apply(Reference('f'), 2)`` calls each engine's f, as ipyparallel's; map too, and
    a map's elements that are References are the engine's objects."""
    dv, lview = rc[:], rc.load_balanced_view()
    dv.execute("import os\ndef f(x): return (x, os.getpid())\na = 7", block=True)
    pids = dv.pull("os.getpid()", block=True)
    assert dv.apply_sync(Reference("f"), 2) == [(2, pid) for pid in pids]
    assert dv.apply_async(Reference("f"), 3).get(TIMEOUT) == [(3, pid) for pid in pids]
    assert lview.apply_sync(Reference("f"), 4)[0] == 4
    assert [x for x, _ in dv.map_sync(Reference("f"), range(8))] == list(range(8))
    assert [x for x, _ in lview.map_sync(Reference("f"), range(8))] == list(range(8))
    assert lview.map_sync(lambda x: x, [Reference("a"), 1]) == [7, 1]
    assert dv.map_sync(lambda x: x, [Reference("a")] * 100) == [7] * 100


def test_reference_to_a_missing_name_in_a_list_or_as_the_function_is_a_name_error(rc):
    for f, args in ((lambda x: x, [[1, Reference("nothing_here")]]),
                    (Reference("nothing_here"), [1])):
        with pytest.raises(NameError, match="nothing_here") as info:
            rc[0].apply_sync(f, *args)
        assert isinstance(info.value, RemoteError) and info.value.ename == "NameError"


def test_reference_needs_a_name():
    with pytest.raises(TypeError):
        Reference(3)
    assert repr(Reference("a")) == "<Reference: 'a'>"


def test_reference_is_importable_without_the_client():
    import subprocess
    import sys

    code = ("import sys, pickle, minipar; from minipar import Reference; "
            "r = pickle.loads(pickle.dumps(Reference('x'))); assert r.name == 'x'; "
            "assert 'minipar.client' not in sys.modules, 'client loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


# ---------------------------------------------------------------- indexing

def test_indexing_as_a_list(rc):
    ids = rc.ids
    assert rc[-1].targets == ids[-1]
    assert rc[-1].apply_sync(lambda: 1) == 1
    assert rc[-2:].targets == ids[-2:]
    assert rc[::2].targets == ids[::2]
    assert rc[-len(ids)].targets == ids[0]
    for bad in (10, len(ids), -len(ids) - 1):
        with pytest.raises(IndexError):
            rc[bad]


def test_negative_ids_and_slices_as_targets_are_the_engines_now_as_ipyparallels(rc):
    # ipyparallel resolves -1 (the last engine) and slices wherever it takes targets, and
    # its views made with them hold the ids: minipar's rc[-1] did, but direct_view(-1) kept
    # -1, load_balanced_view(-1) raised "engine -1 is not registered", as did -1 given as
    # the targets of a call (apply, execute, clear, queue_status)
    ids = rc.ids
    assert rc.direct_view(-1).targets == ids[-1]
    assert rc.direct_view(slice(-2, None)).targets == ids[-2:]
    assert rc.direct_view(-1).apply_sync(os.getpid) == rc[ids[-1]].apply_sync(os.getpid)
    lview = rc.load_balanced_view(-1)
    assert lview.targets == [ids[-1]]
    assert lview.apply_sync(os.getpid) == rc[ids[-1]].apply_sync(os.getpid)
    assert rc.load_balanced_view("all").targets is None   # all, as None
    assert rc.load_balanced_view(ids[0]).targets == [ids[0]]
    dv = rc[:]
    assert dv.execute("x = 1", targets=-2, block=True).get() is not None
    assert dv.pull("x", targets=slice(-2, -1), block=True) == [1]
    assert sorted(rc.queue_status(-1)) == ["completed", "queue", "tasks"]
    rc.clear(targets=-2, block=True)
    with pytest.raises(minipar.RemoteError, match="NameError"):
        rc[ids[-2]].pull("x", block=True)
    with pytest.raises(IndexError):
        rc.direct_view(-len(ids) - 1)


def test_broadcast_view_of_a_negative_id_or_a_slice_holds_the_engines_now(rc):
    # ipyparallel's broadcast_view resolves its targets when made; minipar's kept -1, which
    # every call then refused ("engine -1 is not registered"). As direct_view(-1) now:
    ids = rc.ids
    bview = rc.broadcast_view(-1)
    assert bview.targets == ids[-1]
    assert bview.apply_sync(os.getpid) == rc[ids[-1]].apply_sync(os.getpid)   # one engine
    assert rc.broadcast_view(slice(-2, None)).targets == ids[-2:]
    assert rc.broadcast_view(-2, block=True).execute("y = 2").get() is not None
    assert rc.broadcast_view(slice(-2, -1)).pull("y", block=True) == [2]
    with pytest.raises(IndexError):
        rc.broadcast_view(-len(ids) - 1)


def test_a_client_iterates_its_engines_and_takes_a_range_as_ipyparallels(cluster):
    """ipyparallel's ``for view in rc`` gives one DirectView per registered engine, also
    once an engine is gone (ids 0, 2, 3), and ``rc[range(...)]`` is a list of ids."""
    rc = cluster.rc
    rc.shutdown(targets=[1], block=True)
    wait_until(lambda: rc.ids == [0, 2, 3], TIMEOUT, "engine 1 to be gone")
    views = [view for view in rc]
    assert [v.targets for v in views] == [0, 2, 3]
    assert [v.apply_sync(lambda x: x * 2, 21) for v in views] == [42] * 3
    assert rc[range(2, 4)].targets == [2, 3]
    assert rc[range(2, 4)].apply_sync(lambda: 1) == [1, 1]
    with pytest.raises(IndexError, match="engine 1 is not registered"):
        rc[range(2)].apply_sync(lambda: 1)


# ---------------------------------------------------------------- send_signal

def _sleep_long():
    import time
    print("started", flush=True)
    time.sleep(60)       # in C, the GIL released


def _spin_long():
    import time
    print("started", flush=True)
    deadline = time.time() + 60
    while time.time() < deadline:   # pure Python
        pass


@pytest.mark.parametrize("work", [_sleep_long, _spin_long])
def test_send_signal_sigint_interrupts_the_running_task(cluster, work):
    rc = cluster.rc
    ar = rc[0].apply_async(work)
    _wait_started(ar)
    t0 = time.monotonic()
    assert rc.send_signal(signal.SIGINT, targets=[0], block=True) is None
    with pytest.raises(RemoteError) as info:
        ar.get(TIMEOUT)
    assert info.value.ename == "KeyboardInterrupt"   # saying where it came from
    assert info.value.evalue == "SIGINT from a client (send_signal) to engine 0"
    assert time.monotonic() - t0 < 10
    # the engine goes on serving, and an idle one ignores SIGINT
    rc.send_signal("SIGINT", targets=0)
    assert rc[0].apply_sync(lambda: "alive") == "alive"
    assert len(rc.ids) == 4


def test_send_signal_to_several_engines_and_other_signals(cluster):
    rc = cluster.rc
    dv = rc[:]
    ar = dv.apply_async(_sleep_long)
    _wait_started(ar)
    rc.send_signal(signal.SIGINT, block=False)   # every engine
    with pytest.raises(minipar.CompositeError) as info:
        ar.get(TIMEOUT)
    assert [e.ename for e in info.value.elist] == ["KeyboardInterrupt"] * 4
    # a signal with a Python handler runs it in the engine's process
    dv.execute("import signal\nhits = []\n"
               "signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))", block=True)
    rc.send_signal(signal.SIGUSR1, targets=[1, 2])
    # each engine's receiver thread passes it on, in its own time: a request may come first
    wait_until(lambda: rc[[1, 2]].apply_sync(len, Reference("hits")) == [1, 1], TIMEOUT,
               "the handler to run on engines 1 and 2")
    assert rc[0].pull("hits", block=True) == []


def test_send_signal_to_an_unknown_engine(rc):
    with pytest.raises(IndexError):
        rc.send_signal(signal.SIGINT, targets=[9])


# ---------------------------------------------------------------- hub_history

def test_hub_history_lists_submitted_msg_ids_in_order(shared_cluster, rc):
    dv, lview = rc[:], rc.load_balanced_view()
    ids = []
    for i in range(3):
        ids += dv.apply_async(lambda: 1).msg_ids
        ids += lview.apply_async(lambda x: x, i).msg_ids
    ids += dv.push({"a": 1}).msg_ids
    rc.wait(timeout=TIMEOUT)
    history = rc.hub_history()
    assert [m for m in history if m in set(ids)] == ids
    # other clients' requests are in it too
    other = shared_cluster.client()
    mine = other[0].apply_async(lambda: 2)
    mine.get(TIMEOUT)
    assert rc.hub_history()[-1] == mine.msg_ids[0]


# ---------------------------------------------------------------- broadcast_view

def _broadcasts(rc):
    return rc.queue_status(verbose=True)["stats"].get("broadcast", 0)


def test_broadcast_view_results_are_direct_views(rc):
    bview = rc.broadcast_view()
    assert isinstance(bview, minipar.DirectView) and "BroadcastView" in repr(bview)
    dview = rc[:]
    before = _broadcasts(rc)
    ar = bview.apply_async(lambda x: x * 2, 21)
    assert ar.get(TIMEOUT) == [42] * 4
    assert sorted(ar.get_dict()) == rc.ids
    assert _broadcasts(rc) == before + 1     # one message from the client
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["engine"])
    assert sorted(r["engine"] for r in records) == rc.ids   # a record per engine

    import os
    assert bview.apply_sync(os.getpid) == dview.apply_sync(os.getpid)
    assert bview.push({"a": 5, "big": b"x" * 200_000}, block=True) == [None] * 4
    assert bview.pull("a", block=True) == [5] * 4
    assert bview.pull(["a", "big"], block=True)[2][1] == b"x" * 200_000
    assert [(r.engine_id, r.data) for r in bview.execute("b = a + 1", block=True).get(0)] == \
        [(r.engine_id, r.data) for r in dview.execute("c = 1", block=True).get(0)]
    assert bview["b"] == [6] * 4
    assert sorted(bview.keys(block=True)[0]) == ["a", "b", "big", "c"]
    assert bview.map_sync(lambda x: x + 1, range(10)) == list(range(1, 11))
    assert bview.apply_sync(lambda x: x, Reference("a")) == [5] * 4
    # map sends each engine its own part; the two dview calls with several targets broadcast
    assert _broadcasts(rc) == before + 11


def test_broadcast_view_targets_and_errors(rc):
    bview = rc.broadcast_view(targets=[1, 3], is_coalescing=True)
    assert bview.is_coalescing
    assert bview.apply_sync(lambda: 1) == [1, 1]
    assert bview.apply_async(lambda: 1).get_dict(TIMEOUT) == {1: 1, 3: 1}
    assert rc.broadcast_view(targets=2).apply_sync(lambda: 7) == 7    # one engine: a value
    with pytest.raises(minipar.CompositeError) as info:
        bview.apply_sync(lambda: 1 / 0)
    assert [e.ename for e in info.value.elist] == ["ZeroDivisionError"] * 2
    with pytest.raises(IndexError):
        rc.broadcast_view(targets=[0, 9]).apply_sync(lambda: 1)
    ar = bview.apply_async(lambda: 1)
    ar.get(TIMEOUT)
    again = rc.resubmit(ar)          # the copies are ordinary records
    assert again.get(TIMEOUT) == [1, 1]


def test_a_direct_view_sends_one_message_for_several_engines(cluster):
    """rc[:].push, execute and apply sent one message per engine, each with the payload: a
    100 MB push to 8 engines had the client send, and the controller hold, 8 copies. Now
    one, which the controller copies to each (a BroadcastView's), and what a user sees is
    as before: a msg_id, engine_id, record and result per engine, each aborted alone."""
    rc = cluster.rc
    dv, ids = rc[:], rc.ids
    dv.label = "several"
    before = _broadcasts(rc)
    ar = dv.push({"big": b"x" * 300_000}, block=False)
    assert ar.get(TIMEOUT) == [None] * 4
    assert _broadcasts(rc) == before + 1
    assert ar.engine_id == ids and len(set(ar.msg_ids)) == 4
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["engine", "kind"])
    assert sorted((r["msg_id"], r["engine"], r["kind"]) for r in records) == \
        sorted((m, e, "push") for m, e in zip(ar.msg_ids, ids))
    ex = dv.execute("n = len(big)", block=True)
    records = rc.db_query({"msg_id": {"$in": ex.msg_ids}}, keys=["engine", "label"])
    assert sorted((r["engine"], r["label"]) for r in records) == [(e, "several") for e in ids]
    assert [(m["engine_id"], m["label"], m["execute_input"]) for m in ex.metadata] == \
        [(e, "several", "n = len(big)") for e in ids]
    assert dv.apply_sync(lambda x: x, Reference("n")) == [300_000] * 4
    assert rc.get_result(ex.msg_ids[2], block=True).metadata["engine_id"] == ids[2]
    running = dv.execute("import time; time.sleep(60)")
    queued = dv.pull("n", block=False)   # behind it on each engine
    rc.abort(queued.msg_ids[1])
    rc.abort(running)
    with pytest.raises(minipar.TaskAborted):
        queued.futures[1].result(TIMEOUT)
    assert [queued.futures[i].result(TIMEOUT) for i in (0, 2, 3)] == [300_000] * 3
    assert _broadcasts(rc) == before + 5
    assert rc[[ids[0]]].pull("n", block=True) == [300_000]   # one engine: a request of its own
    assert _broadcasts(rc) == before + 5


def test_a_broadcast_views_metadata_has_its_label_and_code(rc):
    """A BroadcastView's (and now a DirectView's, several targets) AsyncResult had None for
    metadata['label'] and ['execute_input'], which a DirectView's request had set."""
    bview = rc.broadcast_view(targets=[0, 2])
    bview.label = "bv"
    ar = bview.execute("z = 3", block=True)
    assert [(m["engine_id"], m["label"], m["execute_input"]) for m in ar.metadata] == \
        [(0, "bv", "z = 3"), (2, "bv", "z = 3")]
    assert [m["label"] for m in bview.apply_async(abs, -1).metadata] == ["bv", "bv"]


# ---------------------------------------------------------------- wait_interactive, spin

def test_wait_interactive_returns_when_done(rc, capsys):
    lview = rc.load_balanced_view()
    ars = [lview.apply_async(time.sleep, 0.2) for _ in range(8)]
    assert rc.wait_interactive(interval=0.05) is None   # as ipyparallel's
    assert all(ar.ready() for ar in ars)
    assert "8/8" in capsys.readouterr().err
    assert rc.wait_interactive(ars[0], interval=0.05, timeout=-1) is None
    slow = rc[0].apply_async(time.sleep, 5)
    rc.wait_interactive(slow, interval=0.05, timeout=0.3)
    assert not slow.ready()
    slow.abort()
    assert rc.spin() is None


# ---------------------------------------------------------------- names handed to the client

def test_views_get_result_purge_spin_outstanding_and_client_clear(rc):
    """ipyparallel's views hand get_result, purge_results, spin and outstanding to the
    client; Client.clear and purge_everything; ar.result_dict; track= (accepted,
    ignored) and label= on push, scatter, map."""
    dv, lview = rc[:], rc.load_balanced_view()
    assert dv.spin() is None and lview.spin() is None
    slow = rc[0].apply_async(time.sleep, 10)
    assert slow.msg_ids[0] in dv.outstanding and slow.msg_ids[0] in lview.outstanding
    slow.abort()
    wait_until(lambda: slow.msg_ids[0] not in lview.outstanding, TIMEOUT, "the abort")

    ar = lview.apply_async(pow, 2, 5)
    assert ar.get(TIMEOUT) == 32
    again = lview.get_result(ar.msg_ids[0], block=True)   # from the controller's records
    assert again is not ar and again.ready() and again.get() == 32
    assert dv.get_result([ar], block=False).get(TIMEOUT) == [32]
    with pytest.raises(TypeError, match="no history"):
        dv.get_result()          # ipyparallel: the last of the view's history

    each = dv.apply_async(lambda: 7)
    assert each.result_dict == {i: 7 for i in rc.ids}
    pair = rc[[0, 1]]
    mine = pair.apply_async(lambda: 8)
    mine.get(TIMEOUT)
    assert pair.purge_results(targets="all") >= 2      # the view's engines: 0 and 1
    with pytest.raises(KeyError):
        rc.get_result(mine.msg_ids[1]).get(TIMEOUT)
    assert rc.get_result(each.msg_ids[2]).get(TIMEOUT) == 7   # engine 2's is kept
    rc.purge_everything()
    with pytest.raises(KeyError):
        rc.get_result(each.msg_ids[2]).get(TIMEOUT)

    dv.push({"a": 1}, track=True, block=True)
    dv.scatter("s", list(range(8)), track=False, block=True)
    assert dv.pull("s", block=True) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    names = minipar.interactive(lambda: sorted(k for k in ("a", "s") if k in globals()))
    assert rc.clear(targets=[0], block=True) is None   # as ipyparallel's, not [None]
    assert dv.apply_sync(names) == [[], ["a", "s"], ["a", "s"], ["a", "s"]]
    rc.clear().get(TIMEOUT)      # every engine; not blocking: an AsyncResult
    assert dv.apply_sync(names) == [[]] * 4
    assert dv.clear(block=True) is None and rc[1].clear(block=True) is None

    mapped = dv.map(abs, [-1, -2, -3, -4], track=False, label="mapped", block=False)
    assert mapped.get(TIMEOUT) == [1, 2, 3, 4] and dv.label is None
    assert {md["label"] for md in mapped.metadata} == {"mapped"}
    tasks = lview.map(abs, [-1, -2], label="tasks", block=False)
    assert tasks.get(TIMEOUT) == [1, 2] and lview.label is None
    assert {md["label"] for md in tasks.metadata} == {"tasks"}


def test_client_takes_ipyparallels_connection_info_keyword(rc):
    # ipyparallel's Client(connection_info=path); minipar's ignored the keyword and waited
    # for the default profile's connection file, to fail saying none was there
    with minipar.Client(connection_info=rc.url_file, timeout=2) as other:
        assert other.url_file == rc.url_file and other.ids == rc.ids


# ipyparallel 9's keyword names, which minipar's named otherwise (jobs, msg_ids, key): code
# passing them by keyword got a TypeError

def test_get_result_takes_ipyparallels_indices_or_msg_ids_keyword(rc):
    ar = rc[0].apply_async(abs, -5)
    assert rc.get_result(indices_or_msg_ids=ar, block=True).get(TIMEOUT) == [5]
    assert rc.get_result(indices_or_msg_ids=ar.msg_ids[0]).get(TIMEOUT) == 5


def test_a_history_index_ipyparallel_takes_is_a_type_error_saying_there_is_none(rc):
    # it was "'int' object is not iterable", which said nothing of indices
    for call in (rc.get_result, rc.resubmit, rc.result_status, rc.wait):
        with pytest.raises(TypeError, match=r"not int \(-1: minipar's client keeps no "
                                            r"history to index.*pass ar.msg_ids\)"):
            call(-1)
    with pytest.raises(TypeError, match=r"not int \(0: .*no history"):
        rc.get_result([0])


def test_result_status_takes_ipyparallels_msg_ids_keyword(rc):
    ar = rc[1].apply_async(abs, -6)
    ar.get(TIMEOUT)
    status = rc.result_status(msg_ids=ar.msg_ids, status_only=False)
    assert status["completed"] == ar.msg_ids and status["pending"] == []
    assert status[ar.msg_ids[0]] == 6


def test_resubmit_takes_ipyparallels_keywords_and_ignores_metadata(rc):
    ar = rc.load_balanced_view().apply_async(abs, -7)
    assert ar.get(TIMEOUT) == 7
    again = rc.resubmit(indices_or_msg_ids=ar, metadata={"note": "ignored"}, block=True)
    assert again.get(0) == [7] and again.msg_ids != ar.msg_ids
    assert rc.resubmit(ar, None).get(TIMEOUT) == [7]   # ipyparallel's order: metadata second


def test_get_result_and_resubmit_follow_rc_block_as_ipyparallels(rc):
    # block=None was taken as False: with rc.block = True both returned at once
    ar = rc.load_balanced_view().apply_async(time.sleep, 0.5)
    rc.block = True
    assert rc.get_result(ar.msg_ids).ready()   # waited for
    assert rc.resubmit(ar).ready()
    rc.block = False
    assert not rc.resubmit(ar).ready()   # half a second of sleep to run first
    assert rc.get_result(ar, block=True).ready()


def test_direct_view_get_takes_ipyparallels_key_s_keyword(rc):
    dv = rc[:2]
    dv.push({"a": 1, "b": 2}, block=True)
    assert dv.get(key_s="a") == [1, 1]
    assert dv.get(key_s=("a", "b")) == [[1, 2], [1, 2]]
    assert rc.broadcast_view(targets=[0, 1]).get(key_s="b") == [2, 2]
    dv.execute("del a, b", block=True)


def test_execute_and_run_take_a_label_as_ipyparallels(rc, tmp_path):
    """ipyparallel's DirectView.execute and run take label= (the call's, over the view's
    flag); minipar's refused it, a TypeError."""
    dv = rc[:2]
    ar = dv.execute("e = 1", label="executed", block=True)
    assert [md["label"] for md in ar.metadata] == ["executed"] * 2 and dv.label is None
    (script := tmp_path / "script.py").write_text("f = 2\n")
    ar = rc[0].run(str(script), label="ran", block=True)
    assert ar.metadata["label"] == "ran" and rc[0]["f"] == 2
    assert rc.db_query({"label": "ran"}, keys=["label"]) == [{"msg_id": ar.msg_ids[0],
                                                             "label": "ran"}]
    with dv.temp_flags(label="flag"):
        assert dv.execute("g = 3", block=True).metadata[0]["label"] == "flag"
    with pytest.raises(TypeError, match="label must be a str"):
        dv.execute("h = 4", label=5)


def test_purging_a_result_not_done_says_so(rc):
    """ipyparallel's hub refuses to purge a pending result ("msg pending"); minipar's
    purged the finished ones named, kept the other and returned a count, silent about
    it. It still purges the finished ones, and a ValueError says which one is kept and
    what to do; 'all' and targets= purge the finished ones alone, as before."""
    done = rc.load_balanced_view().apply_async(pow, 2, 3)
    assert done.get(TIMEOUT) == 8
    slow = rc[0].apply_async(time.sleep, 60)
    with pytest.raises(ValueError, match=f"1 results named are not done.*{slow.msg_ids[0]}"
                       ".*wait for them or abort them"):
        rc.purge_results([done, slow])
    with pytest.raises(KeyError, match="unknown or purged"):
        rc.get_result(done.msg_ids[0]).get(TIMEOUT)
    assert rc.purge_results("all") >= 0 and rc.purge_results(targets=[0]) >= 0
    slow.abort()
    wait_until(slow.done, TIMEOUT, "the abort")
    assert rc[:].purge_results(slow) == 1


def test_get_result_of_a_finished_request_has_its_metadata_at_once(rc):
    """ipyparallel's examples/customresults.py: wait on msg_ids, then for each one
    finished, ``ar = rc.get_result(msg_id)`` and read ``ar.engine_id`` and ``ar.stdout``
    at once ("we know these are done, so don't worry about blocking")."""
    lview = rc.load_balanced_view()

    def hello(i):
        print("hi", i)
        return i

    amr = lview.map(hello, range(16), chunksize=1)
    amr.get(TIMEOUT)
    assert rc.wait(amr.msg_ids, TIMEOUT) and not set(amr.msg_ids) & rc.outstanding
    for i, (msg_id, f) in enumerate(zip(amr.msg_ids, amr.futures)):
        ar = rc.get_result(msg_id)   # no longer held by this client: the controller's
        assert ar.ready(), f"request {i} not ready"
        assert ar.engine_id == f.metadata["engine_id"] in rc.ids
        assert ar.stdout == f"hi {i}\n" and ar.get() == [i]


def test_a_name_ipyparallel_has_and_minipar_leaves_out_says_what_to_use(rc):
    lview = rc.load_balanced_view()
    for obj, name, says in ((rc, "history", r"rc.hub_history\(\)"),
                            (rc[:], "results", "live in the AsyncResults"),
                            (lview, "results", "live in the AsyncResults")):
        with pytest.raises(AttributeError, match=rf"'{type(obj).__name__}' object has no "
                                                 rf"attribute '{name}': minipar leaves "
                                                 rf"ipyparallel's out; .*{says}"):
            getattr(obj, name)
    with pytest.raises(AttributeError, match=r"no attribute 'nonsense'$"):
        rc.nonsense   # any other name: the plain error
    # every name docs/ipyparallel.rst calls absent for the Client and the views says so
    # (rc.debug, rc.curve_serverkey, rc.send_apply_request, lview.shutdown... did not)
    objs = {"Client": rc, "DirectView": rc[:], "LoadBalancedView": lview,
            "BroadcastView": rc.broadcast_view()}
    checked = 0
    for section, obj in objs.items():
        for name in absent_in_docs(section):
            with pytest.raises(AttributeError, match=f"'{name}': minipar leaves"):
                getattr(obj, name)
            checked += 1
    assert checked >= 26   # 31 before DirectView and BroadcastView had imap and importer, 27
    # before the Client had `cluster`
    assert not hasattr(lview, "history") and lview.timeout is None   # flags still read


def test_the_counts_docs_ipyparallel_gives_are_its_rows_counts():
    # a row's status changed without its section's count (the Client's said 16 same and
    # 20 absent for 17 rows same and 19 absent)
    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "ipyparallel.rst").read_text()
    count = re.compile(r"(?m)^(?:Overall: )?(\d+) same, (\d+) different, (\d+) absent\.$")
    said = [(m.end(), tuple(map(int, m.groups()))) for m in count.finditer(text)]
    total, sections = said[0][1], said[1:]
    assert len(sections) == 8
    for (start, stated), end in zip(sections, [s for s, _ in sections[1:]] + [len(text)]):
        rows = re.findall(r"(?m)^   \* - ``\w+``\n     - (same|different|absent)\b",
                          text[start:end])
        assert stated == tuple(rows.count(s) for s in ("same", "different", "absent"))
    assert total == tuple(map(sum, zip(*(s for _, s in sections))))
