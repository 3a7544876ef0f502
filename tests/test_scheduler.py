"""Tests of minipar.scheduler: a plain object stepped with `now`, no sockets, no sleeps."""

import collections
import random

import pytest

from minipar import scheduler
from minipar.scheduler import Scheduler

TIMEOUT = 30
pytestmark = pytest.mark.timeout(TIMEOUT)


def task(msg_id, **kw):
    t = {"msg_id": msg_id, "targets": None, "after": None, "follow": None, "timeout": None,
         "retries": 0, "recovery": None, "dormant": False, "depend": None}
    t.update(kw)
    return t


def dep(*ids, all=True, success=True, failure=False):
    return {"ids": list(ids), "all": all, "success": success, "failure": failure}


def runs(decisions):
    return [(d[1], d[2]) for d in decisions if d[0] == "run"]


def fails(decisions):
    return {d[1]: d[2] for d in decisions if d[0] == "fail"}


def make(n_engines=2, **kw):
    s = Scheduler(**kw)
    for e in range(n_engines):
        s.engine_added(e, 0.0)
    return s


def run_on(s, msg_id, now=0.0, **kw):
    """Submit one task that must start at once; return its engine."""
    out = s.submit(task(msg_id, **kw), now)
    (ran,) = runs(out)
    assert ran[0] == msg_id
    return ran[1]


class FakeRng:
    def __init__(self, picks):
        self.picks = list(picks)

    def randrange(self, n):
        return self.picks.pop(0)


# --------------------------------------------------------------------------- schemes

def test_leastload_picks_the_first_lowest():
    assert scheduler.leastload([2, 0, 1, 0]) == 1
    assert scheduler.leastload([3]) == 0


def test_lru_picks_least_recently_used_whatever_the_load():
    assert scheduler.lru([9, 0, 0]) == 0
    s = make(2, scheme="lru", hwm=0)
    x = run_on(s, "a")
    y = run_on(s, "b")
    assert x != y
    s.finished("b", y, "ok", 1.0)          # y is idle now, x still has "a"
    assert run_on(s, "c") == x             # least recently used; leastload would take y


def test_leastload_scheduler_prefers_idle_engine():
    s = make(2, scheme="leastload", hwm=0)
    x = run_on(s, "a")
    y = run_on(s, "b")
    s.finished("b", y, "ok", 1.0)
    assert run_on(s, "c") == y


def test_twobin_keeps_the_lesser_loaded_of_two_random_picks():
    assert scheduler.twobin([3, 1, 0], FakeRng([0, 2])) == 2
    assert scheduler.twobin([3, 1, 0], FakeRng([1, 0])) == 1
    assert scheduler.twobin([1, 1, 1], FakeRng([2, 1])) == 1   # tie: the LRU one


def test_weighted_favours_low_loads():
    rng = random.Random(1)
    picks = [scheduler.weighted([1, 3], rng) for _ in range(4000)]
    share = picks.count(0) / len(picks)
    # two draws weighted 3:1, keep the lesser loaded: 1 - (1/4)**2 = 0.9375
    assert 0.9 < share < 0.97
    assert all(scheduler.weighted([0, 5, 5], rng) == 0 for _ in range(200))


def test_plainrandom_ignores_loads_and_covers_all():
    rng = random.Random(3)
    picks = {scheduler.plainrandom([100, 0, 0], rng) for _ in range(200)}
    assert picks == {0, 1, 2}


@pytest.mark.parametrize("name", ["plainrandom", "twobin", "weighted"])
def test_random_schemes_are_deterministic_under_seed(name):
    def sequence(seed):
        s = make(4, scheme=name, hwm=0, seed=seed)
        return [run_on(s, f"t{i}") for i in range(60)]

    first = sequence(11)
    assert first == sequence(11)
    assert len(set(first)) > 1
    assert first != sequence(12)


def test_callable_scheme_gets_loads_of_engines_with_room_in_lru_order():
    seen = []

    def last(loads):
        seen.append(list(loads))
        return len(loads) - 1

    s = make(3, scheme=last, hwm=2)      # added 0, 1, 2: each new one goes to the front
    order = [run_on(s, f"t{i}") for i in range(3)]
    # the most recently used engine comes last; once full (load 2 = hwm) it is not offered
    assert seen == [[0, 0, 0], [0, 0, 1], [0, 0]]
    assert order == [0, 0, 1]


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="leastload"):
        Scheduler(scheme="fastest")


# --------------------------------------------------------------------------- hwm

def test_hwm_caps_outstanding_tasks_and_frees_in_submission_order():
    s = make(2, hwm=2)
    out = []
    for i in range(6):
        out += s.submit(task(f"t{i}"), 0.0)
    assert len(runs(out)) == 4
    st = s.status()
    assert st["unassigned"] == 2
    assert {e: v["queue"] for e, v in st["engines"].items()} == {0: 2, 1: 2}
    first = s.outstanding(0)[0]
    out = s.finished(first, 0, "ok", 1.0)
    assert out == [("done", first), ("run", "t4", 0)]
    out = s.finished(s.outstanding(1)[0], 1, "ok", 1.0)
    assert runs(out) == [("t5", 1)]
    assert s.status()["unassigned"] == 0


def test_clients_take_turns_and_each_keeps_its_order():
    """Freed slots go round the clients with tasks queued, one task each (a task of one
    queued behind another's thousands gets the next slot but one), FIFO within each; a
    task whose dependency is met joins the turns when it is."""
    s = make(1, hwm=1)
    run_on(s, "busy")
    for i in range(1000):
        s.submit(task(f"a{i}"), 0.0, client="A")
    s.submit(task("b0"), 0.0, client="B")
    s.submit(task("b1"), 0.0, client="B")
    s.submit(task("c0", after=dep("a0")), 0.0, client="C")
    order, last = [], "busy"
    for k in range(8):
        (ran,) = runs(s.finished(last, 0, "ok", 1.0 + k))
        last = ran[0]
        order.append(last)
    assert order == ["a0", "b0", "a1", "c0", "b1", "a2", "a3", "a4"]   # c0: ready after a0
    # a retry (restricted: it prefers engines it has not failed on) keeps submission order
    # among all clients' restricted tasks, ahead of its client's later tasks
    s.submit(task("b2", retries=1), 0.0, client="B")
    s.submit(task("b3"), 0.0, client="B")
    for k, (msg_id, status, then) in enumerate([(last, "ok", "a5"), ("a5", "ok", "b2"),
                                                 ("b2", "error", "a6"), ("a6", "ok", "b2"),
                                                 ("b2", "ok", "b3"), ("b3", "ok", "a7")]):
        assert runs(s.finished(msg_id, 0, status, 10.0 + k)) == [(then, 0)]


def test_a_held_clients_tasks_wait_and_the_others_take_its_turns():
    """hold(client): none of its queued tasks is assigned, not even to a free engine,
    restricted ones neither; the other clients' run. release: they run again, in order."""
    s = make(2, hwm=1)
    run_on(s, "busy0", targets=[0])
    run_on(s, "busy1", targets=[1])
    s.submit(task("a0"), 0.0, client="A")
    s.submit(task("a1", targets=[1]), 0.0, client="A")
    s.submit(task("a2"), 0.0, client="A")
    s.hold("A")
    s.submit(task("b0"), 0.0, client="B")
    assert runs(s.finished("busy0", 0, "ok", 1.0)) == [("b0", 0)]
    assert runs(s.finished("busy1", 1, "ok", 1.0)) == []
    assert runs(s.finished("b0", 0, "ok", 2.0)) == []
    assert runs(s.submit(task("a3"), 0.0, client="A")) == []   # engines free: it waits
    assert s.status()["unassigned"] == 4
    assert runs(s.release("A", 3.0)) == [("a0", 1), ("a2", 0)]   # engine 1: least recent
    assert runs(s.finished("a0", 1, "ok", 4.0)) == [("a1", 1)]
    assert runs(s.finished("a2", 0, "ok", 5.0)) == [("a3", 0)]
    assert s.release("A", 6.0) == [] and s.release("nobody", 6.0) == []
    s.hold("C")   # a client held with nothing queued (its direct requests' results wait)
    assert s.release("C", 7.0) == [] and "C" not in s._lines   # nothing kept for it


def test_hwm_zero_means_no_limit():
    s = make(1, hwm=0)
    out = []
    for i in range(100):
        out += s.submit(task(f"t{i}"), 0.0)
    assert len(runs(out)) == 100
    assert len(s.outstanding(0)) == 100
    assert s.status()["unassigned"] == 0


def test_default_prefetch_deepens_for_quick_tasks_only():
    s = make(1)                                    # no hwm given: AUTO_HWM, adaptive
    deep = scheduler.AUTO_HWM_QUICK
    out = []
    for i in range(2 * deep + 8):
        out += s.submit(task(f"t{i}"), 0.0)
    assert [m for m, _ in runs(out)] == ["t0", "t1"]
    quick = scheduler.QUICK_TASK_S / 10
    out = s.finished("t0", 0, "ok", 1.0, runtime=quick)
    assert len(s.outstanding(0)) == deep                      # refilled to the deep limit
    assert [m for m, _ in runs(out)] == [f"t{i}" for i in range(2, 2 + deep - 1)]
    out = s.finished("t1", 0, "ok", 2.0, runtime=scheduler.QUICK_TASK_S * 10)   # a long one
    assert runs(out) == [] and len(s.outstanding(0)) == deep - 1   # nothing until below 2
    for m in s.outstanding(0)[:deep - 3]:
        assert runs(s.finished(m, 0, "ok", 3.0)) == []        # run time unknown: no change
    assert len(s.outstanding(0)) == 2
    assert len(runs(s.finished(s.outstanding(0)[0], 0, "ok", 4.0, runtime=quick))) == deep - 1
    while s.outstanding(0):
        s.finished(s.outstanding(0)[0], 0, "ok", 5.0, runtime=quick)
    assert s.status()["unassigned"] == 0
    out = []
    for i in range(3):
        out += s.submit(task(f"later{i}"), 6.0)
    assert len(runs(out)) == scheduler.AUTO_HWM    # an engine that ran dry starts over


def test_an_engine_running_a_long_task_takes_no_more_until_it_is_done():
    s = make(2)                                   # no hwm given: 2 each, adaptive
    [(_, e)] = runs(s.submit(task("long"), 0.0))
    other = 1 - e
    s.long(e, "long")                             # its engine: still running after a while
    out = []
    for i in range(4):
        out += s.submit(task(f"q{i}"), 1.0)
    assert runs(out) == [("q0", other), ("q1", other)]    # none behind the long task
    assert s.outstanding(e) == ["long"]
    assert runs(s.finished("q0", other, "ok", 2.0, runtime=0.1)) == [("q2", other)]
    out = s.finished("long", e, "ok", 3.0)        # run time unknown: back to AUTO_HWM
    assert runs(out) == [("q3", e)]
    assert runs(s.submit(task("next"), 4.0)) == [("next", e)]
    s2 = make(1, hwm=3)                           # an explicit hwm is kept
    for i in range(3):
        s2.submit(task(f"t{i}"), 0.0)
    s2.long(0, "t0")
    assert runs(s2.finished("t1", 0, "ok", 1.0)) == [] and len(s2.outstanding(0)) == 2
    assert runs(s2.submit(task("t3"), 2.0)) == [("t3", 0)]


def takes(decisions):
    return [d[1:] for d in decisions if d[0] == scheduler.TAKE]


def deep(s):
    """Start "long" on the engine of one-engine `s`, taking AUTO_HWM_QUICK tasks as one
    that just ran a quick one (before "long") does."""
    e = run_on(s, "quick")
    run_on(s, "long")
    s.finished("quick", e, "ok", 0.0, runtime=scheduler.QUICK_TASK_S / 10)


def test_tasks_queued_behind_a_long_one_are_taken_back_once_another_engine_has_room():
    s = make(2)
    e = run_on(s, "long")
    other = 1 - e
    assert run_on(s, "x") == other and run_on(s, "b", retries=1) == e  # both engines full
    assert run_on(s, "y") == other
    assert s.long(e, "long") == []           # no engine has room: nothing to give b to
    out = s.finished("x", other, "ok", 1.0, runtime=0.5)
    assert takes(out) == [("b", e, "long")]  # now one has, and nothing waits for it
    assert takes(s.finished("y", other, "ok", 1.0)) == []   # asked once
    assert s.outstanding(e) == ["long", "b"]  # b stays there until the engine answers
    out = s.taken_back(e, ["b"], 2.0)
    assert runs(out) == [("b", other)] and s.outstanding(e) == ["long"]
    out = s.finished("b", other, "error", 3.0)   # taking back spent no retry: one is left
    # not on `other`, where it failed; e's cap is 1 while its long task runs: b waits
    assert runs(out) == [] and s.status()["unassigned"] == 1
    assert fails(out) == {} and [d for d in out if d[0] == "done"] == []


def test_a_take_back_is_asked_at_once_when_an_engine_is_free_and_not_with_a_given_hwm():
    s = make(1)
    deep(s)                                      # 64 deep: all go to engine 0
    for m in ("b", "c", "d"):
        run_on(s, m)
    s.engine_added(1, 0.0)
    assert takes(s.long(0, "long")) == [("b", 0, "long"), ("c", 0, "long"), ("d", 0, "long")]
    for hwm in (1, 3):     # 1: nothing is queued behind it; 3: given, so kept where it went
        s = make(1, hwm=hwm)
        for i in range(hwm):
            s.submit(task(f"t{i}"), 0.0)
        s.engine_added(1, 0.0)
        assert s.long(0, "t0") == []


def test_replies_after_a_long_tasks_started_queue_nothing_behind_it():
    """Replies to the quick tasks queued before a long one may come after the long one's
    `started` (on the engine's other socket). They set the engine's cap again, after its
    take-back had been asked, and the tasks sent behind it then waited for it to end."""
    s = make(1)
    e = run_on(s, "warm")
    run_on(s, "q0")
    s.finished("warm", e, "ok", 0.0, runtime=scheduler.QUICK_TASK_S / 10)   # 64 deep
    for m in ("q1", "long", "b"):
        run_on(s, m)
    s.engine_added(1, 0.0)
    assert takes(s.long(e, "long")) == [("b", e, "long")]   # asked at once: 1 has room
    assert runs(s.taken_back(e, ["b"], 1.0)) == [("b", 1)]
    out = []
    for m in ("q0", "q1"):   # quick, and replied to after "long" said it runs long
        out += s.finished(m, e, "ok", 2.0, runtime=scheduler.QUICK_TASK_S / 10)
    for i in range(4):
        out += s.submit(task(f"later{i}"), 3.0)
    assert s.outstanding(e) == ["long"] and {eid for _, eid in runs(out)} == {1}
    out = s.finished("long", e, "ok", 4.0, runtime=30.0)     # it ended: the cap is back
    assert runs(out) == [("later1", e), ("later2", e)]


def test_a_take_back_gets_only_what_the_engine_had_not_started():
    s = make(1)
    deep(s)
    for m in ("b", "c", "d"):
        run_on(s, m)
    assert s.long(0, "long") == []               # no other engine: wait for one
    assert len(takes(s.engine_added(1, 1.0))) == 3
    # the race: "long" ended and "b" started before the take-back came, so the engine
    # gives back c and d only (this engine answers all or none; the scheduler takes either)
    out = s.taken_back(0, ["c", "d"], 2.0)
    assert runs(out) == [("c", 1), ("d", 1)] and s.outstanding(0) == ["long", "b"]
    assert [d[1] for d in s.finished("long", 0, "ok", 3.0) if d[0] == "done"] == ["long"]
    assert [d[1] for d in s.finished("b", 0, "ok", 3.0) if d[0] == "done"] == ["b"]
    assert s.taken_back(0, ["b"], 4.0) == []     # late or repeated answers change nothing


def test_take_backs_with_aborts_deaths_and_dependencies():
    s = make(1)
    deep(s)
    run_on(s, "b")
    run_on(s, "c", retries=1)
    run_on(s, "f", follow=dep("quick"))          # must stay on 0, where "quick" ran
    run_on(s, "g")
    assert s.submit(task("h", after=dep("g")), 0.0) == []   # waits for g
    s.long(0, "long")
    assert takes(s.engine_added(1, 1.0)) == [("b", 0, "long"), ("c", 0, "long"),
                                             ("g", 0, "long")]
    assert s.abort(["b"], 1.5) == [("abort", "b", 0)]   # asked of the engine, as it holds b
    out = s.taken_back(0, ["b", "g"], 2.0)
    assert fails(out) == {"b": "TaskAborted"} and runs(out) == [("g", 1)]
    assert runs(s.finished("g", 1, "ok", 2.5)) == [("h", 1)]   # its dependent as before
    out = s.engine_removed(0, 3.0)               # dies before answering for c
    assert runs(out) == [("c", 1)]               # queued behind: back, no retry spent
    assert fails(out) == {"long": "EngineError", "f": "EngineError"}   # no retries: as before
    assert s.taken_back(0, ["c"], 4.0) == []     # an answer from the dead engine: ignored
    assert s.outstanding(1) == ["h", "c"]


def test_an_explicit_hwm_is_strict_however_quick_the_tasks():
    s = make(1, hwm=2)
    for i in range(10):
        s.submit(task(f"t{i}"), 0.0)
    for step in range(8):
        out = s.finished(s.outstanding(0)[0], 0, "ok", 1.0, runtime=1e-6)
        assert len(runs(out)) == 1 and len(s.outstanding(0)) == 2


def test_tasks_wait_without_engines_and_run_when_one_arrives():
    s = Scheduler(hwm=1)
    assert s.submit(task("a"), 0.0) == []
    assert s.submit(task("b"), 0.0) == []
    assert s.status()["unassigned"] == 2
    assert runs(s.engine_added(7, 1.0)) == [("a", 7)]
    assert runs(s.engine_added(8, 1.0)) == [("b", 8)]


def test_freed_slot_goes_to_oldest_runnable_task_across_kinds():
    s = make(2, hwm=1)
    run_on(s, "busy0", targets=[0])
    run_on(s, "busy1", targets=[1])
    s.submit(task("x", targets=[0]), 0.0)   # older, only engine 0
    s.submit(task("y"), 0.0)                # newer, anywhere
    assert runs(s.finished("busy1", 1, "ok", 1.0)) == [("y", 1)]  # x can't use engine 1
    s2 = make(2, hwm=1)
    run_on(s2, "busy0", targets=[0])
    run_on(s2, "busy1", targets=[1])
    s2.submit(task("y"), 0.0)               # older, anywhere
    s2.submit(task("x", targets=[0]), 0.0)
    assert runs(s2.finished("busy0", 0, "ok", 1.0)) == [("y", 0)]
    assert runs(s2.finished("y", 0, "ok", 2.0)) == [("x", 0)]


def test_dependent_submitted_earlier_beats_later_queued_task():
    s = make(1, hwm=1)
    run_on(s, "a")
    s.submit(task("c", after=dep("a")), 0.0)   # submitted before b, waits for a
    s.submit(task("b"), 0.0)
    assert runs(s.finished("a", 0, "ok", 1.0)) == [("c", 0)]
    assert runs(s.finished("c", 0, "ok", 2.0)) == [("b", 0)]


# --------------------------------------------------------------------------- graph dependencies

def test_after_waits_until_dependency_succeeds():
    s = make(2, hwm=0)
    e = run_on(s, "a")
    assert s.submit(task("b", after=dep("a")), 0.0) == []
    assert s.status()["unassigned"] == 1
    out = s.finished("a", e, "ok", 1.0)
    assert out[0] == ("done", "a")
    assert [r[0] for r in runs(out)] == ["b"]


def test_after_accepts_a_plain_list_of_ids():
    s = make(1, hwm=0)
    run_on(s, "a")
    assert s.submit(task("b", after=["a"]), 0.0) == []
    assert runs(s.finished("a", 0, "ok", 1.0)) == [("b", 0)]


def test_failed_dependency_makes_success_only_dependents_impossible():
    s = make(1, hwm=0)
    run_on(s, "a")
    s.submit(task("b", after=dep("a")), 0.0)
    s.submit(task("cleanup", after=dep("a", success=False, failure=True)), 0.0)
    out = s.finished("a", 0, "error", 1.0)
    assert fails(out) == {"b": "ImpossibleDependency"}
    assert runs(out) == [("cleanup", 0)]
    # submitted after the failure: refused at once
    assert fails(s.submit(task("c", after=dep("a")), 2.0)) == {"c": "ImpossibleDependency"}


def test_any_dependency_impossible_only_when_all_failed():
    s = make(1, hwm=0)
    run_on(s, "a1")
    run_on(s, "a2")
    s.submit(task("b", after=dep("a1", "a2", all=False)), 0.0)
    assert fails(s.finished("a1", 0, "error", 1.0)) == {}
    out = s.finished("a2", 0, "error", 2.0)
    assert fails(out) == {"b": "ImpossibleDependency"}
    assert "all failed" in out[-1][3]


def test_any_dependency_runs_after_first_success():
    s = make(1, hwm=0)
    run_on(s, "a1")
    run_on(s, "a2")
    s.submit(task("b", after=dep("a1", "a2", all=False)), 0.0)
    assert runs(s.finished("a1", 0, "ok", 1.0)) == [("b", 0)]
    # a2 finishing later must not disturb b
    assert s.finished("a2", 0, "ok", 2.0) == [("done", "a2")]


def test_failure_of_a_chain_cascades_without_recursion_limit():
    s = make(1, hwm=0)
    run_on(s, "t0")
    for i in range(1, 5000):
        assert s.submit(task(f"t{i}", after=dep(f"t{i - 1}")), 0.0) == []
    out = s.finished("t0", 0, "error", 1.0)
    assert len(fails(out)) == 4999
    assert s.status()["unassigned"] == 0
    assert s._graph == {}


def test_random_dag_runs_every_task_after_its_dependencies():
    rng = random.Random(5)
    s = make(3, hwm=2, seed=1)
    deps = {}
    done = set()
    pending = []
    for i in range(300):
        mid = f"t{i}"
        deps[mid] = rng.sample(sorted(deps), min(len(deps), rng.randrange(4)))
        pending += runs(s.submit(task(mid, after=dep(*deps[mid]) if deps[mid] else None), 0.0))
    now = 1.0
    while pending:
        mid, e = pending.pop(rng.randrange(len(pending)))
        assert set(deps[mid]) <= done, mid
        done.add(mid)
        now += 1.0
        pending += runs(s.finished(mid, e, "ok", now))
    assert len(done) == 300


@pytest.mark.parametrize("hwm", [None, 0, 1, 3])
def test_leastload_decides_as_the_scan_over_every_engine_it_replaces(hwm):
    """leastload keeps the engines with room in a heap; a scheme function of the same rule
    takes the scan over every engine (the other schemes' path). Over random submits,
    replies of quick and slow tasks (the automatic hwm moving), retries, and engines
    coming and going, both make the same decisions, and a plain task is queued only
    while every engine is full."""
    rng = random.Random(hwm)
    heap = make(4, hwm=hwm)
    scan = make(4, hwm=hwm, scheme=lambda loads: loads.index(min(loads)))
    assert heap._rooms is not None and scan._rooms is None
    running, engines, queued, seen = {}, set(range(4)), 0, collections.Counter()
    for i in range(3000):
        roll, now = rng.random(), float(i)
        if roll < 0.5:
            call = ("submit", task(f"t{i}", retries=1) if roll < 0.05 else task(f"t{i}"), now)
        elif roll < 0.93 and running:
            msg_id = rng.choice(sorted(running))
            call = ("finished", msg_id, running[msg_id], "error" if roll > 0.9 else "ok", now,
                    rng.choice([None, 1e-4, 0.01]))
        elif roll < 0.965 and len(engines) > 1:
            call = ("engine_removed", rng.choice(sorted(engines)), now)
        else:
            call = ("engine_added", max(engines) + 1, now)
        decisions = getattr(heap, call[0])(*call[1:])
        assert decisions == getattr(scan, call[0])(*call[1:]), (i, call)
        seen[call[0]] += 1
        if call[0] == "engine_removed":
            engines.discard(call[1])
            running = {m: e for m, e in running.items() if e != call[1]}
        elif call[0] == "engine_added":
            engines.add(call[1])
        elif call[0] == "finished":
            running.pop(call[1], None)
        for d in decisions:
            if d[0] == "run":
                running[d[1]] = d[2]
            elif d[1] in running:
                running.pop(d[1])
        status = heap.status()
        queued = max(queued, status["unassigned"])
        if status["unassigned"] and hwm:
            assert all(e["queue"] >= hwm for e in status["engines"].values()), (i, status)
    assert seen["engine_added"] > 50 and seen["engine_removed"] > 50
    assert (queued > 0) == (hwm != 0)   # hwm 0: no limit, nothing ever waits


def test_follow_runs_where_the_dependency_ran():
    s = make(2, hwm=0)
    e = run_on(s, "a")
    s.finished("a", e, "ok", 1.0)
    # `e` was used last, so leastload alone would pick the other engine
    assert run_on(s, "b", follow=dep("a")) == e


def test_follow_waits_for_pending_dependency():
    s = make(2, hwm=0)
    e = run_on(s, "a")
    assert s.submit(task("b", follow=dep("a")), 0.0) == []
    assert runs(s.finished("a", e, "ok", 1.0)) == [("b", e)]


def test_follow_all_over_two_engines_is_impossible():
    s = make(2, hwm=0)
    run_on(s, "a1", targets=[0])
    run_on(s, "a2", targets=[1])
    s.finished("a1", 0, "ok", 1.0)
    s.finished("a2", 1, "ok", 1.0)
    out = s.submit(task("b", follow=dep("a1", "a2")), 2.0)
    assert fails(out) == {"b": "ImpossibleDependency"}
    assert "different engines" in out[0][3]
    # any=True is fine: runs on one of them
    assert run_on(s, "c", follow=dep("a1", "a2", all=False)) in (0, 1)


def test_follow_all_detected_impossible_while_waiting():
    s = make(2, hwm=0)
    run_on(s, "a1", targets=[0])
    run_on(s, "a2", targets=[1])
    s.submit(task("b", follow=dep("a1", "a2")), 0.0)
    assert s.finished("a1", 0, "ok", 1.0) == [("done", "a1")]
    assert fails(s.finished("a2", 1, "ok", 2.0)) == {"b": "ImpossibleDependency"}


def test_follow_to_a_dead_engine_is_impossible():
    s = make(2, hwm=0)
    run_on(s, "a", targets=[1])
    run_on(s, "slow")
    s.finished("a", 1, "ok", 1.0)
    s.submit(task("w", after=dep("slow"), follow=dep("a")), 1.0)   # waiting on `slow`
    out = s.engine_removed(1, 2.0)
    assert fails(out).get("w") == "ImpossibleDependency"
    assert "gone" in [d for d in out if d[1] == "w"][0][3]
    out = s.submit(task("b", follow=dep("a")), 3.0)
    assert fails(out) == {"b": "ImpossibleDependency"}


def test_unknown_or_self_dependency_is_invalid():
    s = make(1)
    assert s.submit(task("b", after=dep("nope")), 0.0) == []   # may still come: see below
    assert s.next_deadline() == scheduler.UNKNOWN_GRACE_S
    assert s.tick(scheduler.UNKNOWN_GRACE_S - 0.1) == []
    out = s.tick(scheduler.UNKNOWN_GRACE_S)
    assert fails(out) == {"b": "InvalidDependency"}
    assert "nope" in out[0][3]
    assert s.next_deadline() is None
    assert fails(s.submit(task("c", follow=dep("c")), 0.0)) == {"c": "InvalidDependency"}


def test_a_dependency_submitted_just_after_its_dependent_is_waited_for():
    # another client's task can reach the controller after a dependent naming it
    s = make(2, hwm=0)
    assert s.submit(task("b", after=dep("a")), 0.0) == []
    assert s.submit(task("f", follow=dep("a"), timeout=60), 0.0) == []
    e = run_on(s, "a", 0.5)
    assert s.tick(scheduler.UNKNOWN_GRACE_S + 1) == []      # "a" came: no longer unknown
    ran = dict(runs(s.finished("a", e, "ok", 3.0)))
    assert ran.keys() == {"b", "f"} and ran["f"] == e
    assert s.submit(task("c", after=dep("a", "never")), 4.0) == []
    assert fails(s.tick(4.0 + scheduler.UNKNOWN_GRACE_S)) == {"c": "InvalidDependency"}


# --------------------------------------------------------------------------- timeouts

def test_dependency_timeout_via_tick_and_next_deadline():
    s = make(1, hwm=0)
    assert s.next_deadline() is None
    run_on(s, "a")
    s.submit(task("b", after=dep("a"), timeout=5.0), 10.0)
    s.submit(task("c", after=dep("a"), timeout=2.0), 10.0)
    assert s.next_deadline() == 12.0
    assert s.tick(11.9) == []
    out = s.tick(12.0)
    assert fails(out) == {"c": "DependencyTimeout"}
    assert s.next_deadline() == 15.0
    assert fails(s.tick(20.0)) == {"b": "DependencyTimeout"}
    assert s.next_deadline() is None
    assert s.status()["unassigned"] == 0


def test_timeout_covers_waiting_for_a_slot_but_not_running():
    s = make(1, hwm=1)
    run_on(s, "a")
    s.submit(task("b", timeout=1.0), 0.0)          # queued behind a
    assert fails(s.tick(1.0)) == {"b": "DependencyTimeout"}
    assert runs(s.finished("a", 0, "ok", 2.0)) == []
    c = s.submit(task("c", timeout=1.0), 3.0)
    assert runs(c) == [("c", 0)]
    assert s.next_deadline() is None
    assert s.tick(100.0) == []                      # assigned in time: no timeout


def test_timeout_failure_releases_failure_dependents():
    s = make(1, hwm=0)
    run_on(s, "a")
    s.submit(task("b", after=dep("a"), timeout=1.0), 0.0)
    s.submit(task("on_fail", after=dep("b", success=False, failure=True)), 0.0)
    out = s.tick(1.0)
    assert fails(out) == {"b": "DependencyTimeout"}
    assert runs(out) == [("on_fail", 0)]


# --------------------------------------------------------------------------- retries

def test_retry_prefers_an_engine_where_it_has_not_failed():
    s = make(2, hwm=0)
    x = run_on(s, "filler")
    y = run_on(s, "t", retries=1)
    # y is now idle and x busy: leastload alone would rerun t on y
    assert runs(s.finished("t", y, "error", 1.0)) == [("t", x)]


def test_retry_waits_for_an_untried_engine_rather_than_rerun_where_it_failed():
    s = make(2, hwm=1)
    x = run_on(s, "filler")
    y = run_on(s, "t", retries=1)
    assert runs(s.finished("t", y, "error", 1.0)) == []
    assert runs(s.finished("filler", x, "ok", 2.0)) == [("t", x)]


def test_retry_falls_back_to_a_tried_engine():
    s = make(1, hwm=0)
    run_on(s, "t", retries=2)
    assert runs(s.finished("t", 0, "error", 1.0)) == [("t", 0)]
    assert runs(s.finished("t", 0, "error", 2.0)) == [("t", 0)]
    assert s.finished("t", 0, "error", 3.0) == [("done", "t")]


def test_retry_after_every_engine_failed_uses_any_of_them():
    s = make(2, hwm=0)
    a = run_on(s, "t", retries=2)
    (r1,) = runs(s.finished("t", a, "error", 1.0))
    assert r1[1] != a
    (r2,) = runs(s.finished("t", r1[1], "error", 2.0))
    assert r2[1] in (0, 1)


def test_retry_counts_an_error_then_success_is_done():
    s = make(1, hwm=0)
    run_on(s, "t", retries=1)
    s.finished("t", 0, "error", 1.0)
    assert s.finished("t", 0, "ok", 2.0) == [("done", "t")]


# --------------------------------------------------------------------------- recovery

def test_recovery_runs_when_retries_are_exhausted_and_stands_for_the_task():
    s = make(1, hwm=0)
    assert s.submit(task("r", dormant=True), 0.0) == []
    assert s.status()["unassigned"] == 0           # dormant tasks are not queued
    run_on(s, "a", retries=1, recovery="r")
    s.submit(task("d", after=dep("a")), 0.0)
    assert runs(s.finished("a", 0, "error", 1.0)) == [("a", 0)]
    out = s.finished("a", 0, "error", 2.0)
    assert out == [("recover", "a", "r"), ("run", "r", 0)]
    out = s.finished("r", 0, "ok", 3.0)
    assert out[0] == ("done", "r")
    assert runs(out) == [("d", 0)]                 # a counts as succeeded through r


def test_recovery_task_submitted_in_the_same_batch_after_its_owner():
    s = make(1, hwm=0)
    run_on(s, "a", recovery="r")
    s.submit(task("r", dormant=True), 0.0)
    assert s.finished("a", 0, "error", 1.0) == [("recover", "a", "r"), ("run", "r", 0)]


def test_recovery_chain():
    s = make(1, hwm=0)
    s.submit(task("r2", dormant=True), 0.0)
    s.submit(task("r1", dormant=True, recovery="r2"), 0.0)
    run_on(s, "a", recovery="r1")
    s.submit(task("d", after=dep("a")), 0.0)
    assert s.finished("a", 0, "error", 1.0) == [("recover", "a", "r1"), ("run", "r1", 0)]
    assert s.finished("r1", 0, "error", 2.0) == [("recover", "r1", "r2"), ("run", "r2", 0)]
    out = s.finished("r2", 0, "error", 3.0)
    assert out[0] == ("done", "r2")
    assert fails(out) == {"d": "ImpossibleDependency"}   # the whole chain failed


def test_recovery_failure_makes_owner_failed_for_dependents():
    s = make(1, hwm=0)
    s.submit(task("r", dormant=True), 0.0)
    run_on(s, "a", recovery="r")
    s.submit(task("on_fail", after=dep("a", success=False, failure=True)), 0.0)
    s.finished("a", 0, "error", 1.0)
    assert runs(s.finished("r", 0, "error", 2.0)) == [("on_fail", 0)]


def test_recovery_loop_is_refused():
    s = make(1)
    run_on(s, "a", recovery="b")
    out = s.submit(task("b", dormant=True, recovery="a"), 0.0)
    assert fails(out) == {"b": "InvalidDependency"}
    assert "recovery tasks form a loop" in out[0][3]
    assert s.finished("a", 0, "error", 1.0) == [("done", "a")]   # its recovery was refused
    out = s.submit(task("c", recovery="c"), 0.0)
    assert fails(out) == {"c": "InvalidDependency"}


def test_recovery_loop_through_a_chain_is_refused():
    s = make(1)
    s.submit(task("r1", dormant=True, recovery="r2"), 0.0)
    out = s.submit(task("r2", dormant=True, recovery="r1"), 0.0)
    assert fails(out) == {"r2": "InvalidDependency"}


def test_dormant_recovery_discarded_when_owner_succeeds():
    s = make(1, hwm=0)
    s.submit(task("r2", dormant=True), 0.0)
    s.submit(task("r", dormant=True, recovery="r2"), 0.0)
    run_on(s, "a", recovery="r")
    out = s.finished("a", 0, "ok", 1.0)
    assert out[0] == ("done", "a")
    assert fails(out) == {"r": "TaskAborted", "r2": "TaskAborted"}
    assert "not needed" in out[1][3] and "succeeded" in out[1][3]
    assert s._tasks == {}


def test_recovery_on_engine_death_without_retries():
    s = make(2, hwm=0)
    s.submit(task("r", dormant=True), 0.0)
    e = run_on(s, "a", recovery="r")
    out = s.engine_removed(e, 1.0)
    assert out == [("recover", "a", "r"), ("run", "r", 1 - e)]


def test_a_recovery_task_cannot_serve_two_owners():
    s = make(1)
    s.submit(task("r", dormant=True), 0.0)
    run_on(s, "a", recovery="r")
    assert fails(s.submit(task("b", recovery="r"), 0.0)) == {"b": "InvalidDependency"}
    # the refused claim left r to a
    assert s.finished("a", 0, "error", 1.0) == [("recover", "a", "r"), ("run", "r", 0)]


# --------------------------------------------------------------------------- engine departure

def test_engine_death_retries_or_fails_with_engine_error():
    s = make(2, hwm=0)
    e = run_on(s, "keep", retries=1)
    run_on(s, "lose", targets=[e])
    out = s.engine_removed(e, 1.0)
    assert runs(out) == [("keep", 1 - e)]
    assert fails(out) == {"lose": "EngineError"}
    assert f"engine {e} died with task lose queued behind task keep (it never started there " \
           "unless keep had ended, its reply lost)" in out[0][3]
    assert "retries=" in out[0][3]
    assert s.outstanding(e) == [] and e not in s.status()["engines"]
    assert s.finished("keep", 1 - e, "error", 2.0) == [("done", "keep")]   # retry used up


def test_engine_death_says_a_task_queued_behind_the_running_one_never_started():
    """Each task without retries on a dead engine was "died while running task X", the
    ones queued behind the running one too, which the engine never began. Then "before
    running task Y (queued behind X)", which was not so if X had ended, its reply lost with
    the engine: each says that much now."""
    s = make(1, hwm=0)
    e = run_on(s, "first")
    run_on(s, "queued", targets=[e])
    out = {d[1]: d[3] for d in s.engine_removed(e, 1.0) if d[0] == "fail"}
    assert f"engine {e} died while running task first (or, had it ended with its reply " \
           "lost, a task queued behind it);" in out["first"]
    assert f"engine {e} died with task queued queued behind task first (it never started " \
           "there unless first had ended, its reply lost);" in out["queued"]
    assert "retries=" in out["queued"]


def test_engine_death_reads_what_the_controller_knows_of_the_engines_queue():
    """`unstarted` tasks never started there (never sent, say): elsewhere, retries kept,
    whatever they are. Those `ran` (ahead of the one its engine reported started) ended,
    their replies lost: a retry spent (or the error says so). With a direct request
    `running`, every task here was queued behind it: none spends a retry."""
    s = make(1, hwm=0)
    for m in ("a", "b", "c", "d"):
        run_on(s, m, retries=int(m == "a"))
    out = s.engine_removed(0, 1.0, running="b", ran={"a"}, unstarted={"d"})
    said = {d[1]: d[3] for d in out if d[0] == "fail"}
    assert sorted(said) == ["b", "c"] and s.unassigned() == ["a", "d"]
    assert "died while running task b (or, had it ended with its reply lost" in said["b"]
    assert "died with task c queued behind task b (it never started there" in said["c"]
    assert runs(s.engine_added(1, 2.0)) == [("a", 1), ("d", 1)]
    assert s.finished("a", 1, "error", 3.0) == [("done", "a")]   # its retry: spent at 0
    s = make(1, hwm=0)
    run_on(s, "x", retries=1)
    run_on(s, "y")
    out = s.engine_removed(0, 1.0, running="r", ran={"x"})
    assert fails(out) == {"y": "EngineError"}
    assert [d[3] for d in out][0].startswith(
        "engine 0 died with task y queued behind task r (it never started there unless r had "
        "ended, its reply lost); resubmit it")
    s = make(1, hwm=0)
    run_on(s, "x", retries=1)
    assert s.engine_removed(0, 1.0, running="direct") == []
    assert runs(s.engine_added(1, 2.0)) == [("x", 1)]
    assert runs(s.finished("x", 1, "error", 3.0)) == [("x", 1)]   # its retry was left


def test_what_ran_reads_an_engines_queue_from_what_it_said():
    """Requests run in the order sent: those ahead of the last one reported started had
    ended; the unsent never started, nor, when it stopped saying the last it began, those
    after that one."""
    what_ran = scheduler.what_ran
    assert what_ran(["a", "b", "c"], [], None) == ("a", set(), set())
    assert what_ran(["a", "b", "c"], [], "b") == ("b", {"a"}, set())
    assert what_ran(["a", "b", "c"], ["c"], "gone") == ("a", set(), {"c"})
    assert what_ran(["a", "b", "c"], [], "a", said="b") == ("b", {"a"}, {"c"})
    assert what_ran(["a", "b"], [], "a", said=None) == (None, set(), {"a", "b"})
    assert what_ran(["a", "b"], [], "b", said="older") == ("b", {"a"}, set())   # not used
    assert what_ran([], ["x"], None, said=None) == (None, set(), {"x"})


def test_engine_death_after_the_retries_are_spent_says_so():
    s = make(2, hwm=0)
    e = run_on(s, "t", retries=1)
    (moved,) = runs(s.engine_removed(e, 1.0))
    out = s.engine_removed(moved[1], 2.0)
    assert fails(out) == {"t": "EngineError"}
    assert f"retries are spent (it failed on engines [{e}] before)" in out[0][3]
    assert "use retries=" not in out[0][3]


def test_stale_reply_from_removed_engine_is_ignored():
    s = make(2, hwm=0)
    e = run_on(s, "t", retries=1)
    (moved,) = runs(s.engine_removed(e, 1.0))
    assert s.finished("t", e, "ok", 2.0) == []
    assert s.finished("t", moved[1], "ok", 3.0) == [("done", "t")]


def test_queued_tasks_survive_other_engines_leaving():
    s = make(2, hwm=1)
    run_on(s, "a", targets=[0])
    run_on(s, "b", targets=[1])
    s.submit(task("q"), 0.0)
    out = s.engine_removed(1, 1.0)
    assert fails(out) == {"b": "EngineError"}
    assert runs(s.finished("a", 0, "ok", 2.0)) == [("q", 0)]


# --------------------------------------------------------------------------- targets

def test_targets_restrict_engines():
    s = make(3, hwm=0)
    assert {run_on(s, f"t{i}", targets=[2]) for i in range(5)} == {2}


def test_targets_all_gone_is_impossible():
    s = make(2, hwm=1)
    run_on(s, "busy", targets=[0])
    s.submit(task("t", targets=[0]), 0.0)          # waits for engine 0's slot
    out = s.engine_removed(0, 1.0)
    assert fails(out)["t"] == "ImpossibleDependency"
    assert fails(s.submit(task("u", targets=[0]), 2.0)) == {"u": "ImpossibleDependency"}


def test_targets_wait_while_no_engine_is_registered():
    s = Scheduler()
    assert s.submit(task("t", targets=[3]), 0.0) == []
    assert runs(s.engine_added(3, 1.0)) == [("t", 3)]


def test_waiting_task_fails_when_its_targets_leave():
    s = make(2, hwm=0)
    run_on(s, "a", targets=[1])
    s.submit(task("w", after=dep("a"), targets=[0]), 0.0)
    out = s.engine_removed(0, 1.0)
    assert fails(out) == {"w": "ImpossibleDependency"}


# --------------------------------------------------------------------------- depend callables

def test_depend_waits_until_properties_match():
    s = Scheduler(hwm=0)
    s.engine_added(0, 0.0, {})
    s.engine_added(1, 0.0, {"RAM": 2 ** 30})

    def big(props):
        return props["RAM"] > 2 ** 32           # KeyError on engine 0: counts as False

    assert s.submit(task("t", depend=big), 0.0) == []
    assert s.status()["unassigned"] == 1
    assert s.set_properties(0, {"RAM": 2 ** 20}, 1.0) == []
    assert runs(s.set_properties(1, {"RAM": 2 ** 33}, 2.0)) == [("t", 1)]


def test_depend_matches_a_newly_added_engine():
    s = make(1, hwm=0)
    assert s.submit(task("t", depend=lambda p: p.get("gpu")), 0.0) == []
    assert runs(s.engine_added(5, 1.0, {"gpu": True})) == [("t", 5)]


def test_engine_added_again_without_properties_keeps_them():
    # a known engine registered again saying nothing of its properties: they stand, and a
    # task that needs them still runs there; new ones given replace them
    s = Scheduler(hwm=0)
    s.engine_added(0, 0.0, {"gpu": True})
    assert s.engine_added(0, 1.0) == []
    assert runs(s.submit(task("t", depend=lambda p: p.get("gpu")), 1.0)) == [("t", 0)]
    s.engine_added(0, 2.0, {})
    assert s.submit(task("u", depend=lambda p: p.get("gpu")), 2.0) == []


def test_depend_is_not_reevaluated_on_unrelated_events():
    calls = []

    def never(props):
        calls.append(1)
        return False

    s = make(2, hwm=1)
    s.submit(task("picky", depend=never), 0.0)
    before = len(calls)
    for i in range(200):
        e = run_on(s, f"t{i}")
        s.finished(f"t{i}", e, "ok", 1.0)
    assert len(calls) == before                 # no scan of waiting tasks per event
    assert s.status()["unassigned"] == 1


# --------------------------------------------------------------------------- unmet

def test_unmet_reroutes_never_twice_to_the_same_engine_then_impossible():
    s = make(3, hwm=0)
    tried = [run_on(s, "t", retries=5)]
    for now in (1.0, 2.0):
        (r,) = runs(s.finished("t", tried[-1], "unmet", now))
        tried.append(r[1])
    assert sorted(tried) == [0, 1, 2]
    out = s.finished("t", tried[-1], "unmet", 3.0)
    assert fails(out) == {"t": "ImpossibleDependency"}
    assert "unmet on every engine" in out[0][3]


def test_unmet_waits_for_a_busy_untried_engine():
    s = make(2, hwm=1)
    x = run_on(s, "busy")
    y = run_on(s, "t")
    assert runs(s.finished("t", y, "unmet", 1.0)) == []
    assert runs(s.finished("busy", x, "ok", 2.0)) == [("t", x)]


def test_unmet_within_targets():
    s = make(3, hwm=0)
    e = run_on(s, "t", targets=[0, 2])
    (r,) = runs(s.finished("t", e, "unmet", 1.0))
    assert r[1] == 2 - e
    assert fails(s.finished("t", r[1], "unmet", 2.0)) == {"t": "ImpossibleDependency"}


# --------------------------------------------------------------------------- abort

def test_abort_queued_and_running():
    s = make(1, hwm=1)
    run_on(s, "running", retries=3)
    s.submit(task("queued"), 0.0)
    s.submit(task("after_q", after=dep("queued")), 0.0)
    out = s.abort(["queued", "running", "unknown"], 1.0)
    assert ("abort", "running", 0) in out
    assert fails(out) == {"queued": "TaskAborted", "after_q": "ImpossibleDependency"}
    assert "aborted before it started" in [d for d in out if d[1] == "queued"][0][3]
    # the engine confirms: final, no retry despite retries=3
    assert s.finished("running", 0, "aborted", 2.0) == [("done", "running")]
    assert s.abort(["running"], 3.0) == []
    assert s.status()["unassigned"] == 0


def test_a_task_aborted_again_is_asked_of_its_engine_again():
    """A cancel()'s abort lets a request that started run on (the engine applies it to what
    has not started); an abort() after it must still reach the engine to interrupt it."""
    s = make(1, hwm=0)
    run_on(s, "t")
    assert s.abort(["t"], 1.0) == [("abort", "t", 0)]
    assert s.abort(["t"], 2.0) == [("abort", "t", 0)]
    assert s.finished("t", 0, "aborted", 3.0) == [("done", "t")]


def test_error_after_abort_request_is_not_retried():
    s = make(1, hwm=0)
    run_on(s, "t", retries=3)
    s.abort("t", 1.0)
    assert s.finished("t", 0, "error", 2.0) == [("done", "t")]


def test_abort_a_recovering_task_aborts_its_recovery():
    s = make(1, hwm=0)
    s.submit(task("r", dormant=True), 0.0)
    run_on(s, "a", recovery="r")
    s.finished("a", 0, "error", 1.0)
    assert s.abort(["a"], 2.0) == [("abort", "r", 0)]


def test_run_time_limit_is_final():
    s = make(1, hwm=0)
    s.submit(task("r", dormant=True), 0.0)
    run_on(s, "t", retries=2, recovery="r")
    out = s.finished("t", 0, "timeout", 1.0)
    assert out[0] == ("done", "t")
    assert fails(out) == {"r": "TaskAborted"}
    assert runs(out) == []


# --------------------------------------------------------------------------- queries, memory

def test_status_and_outstanding():
    s = make(2, hwm=1)
    run_on(s, "a", targets=[0])
    run_on(s, "b", targets=[1])
    s.submit(task("c"), 0.0)
    assert s.outstanding(0) == ["a"] and s.outstanding(1) == ["b"]
    assert s.outstanding(9) == []
    s.finished("a", 0, "ok", 1.0)
    assert s.status() == {"unassigned": 0, "engines": {0: {"queue": 1, "completed": 1},
                                                      1: {"queue": 1, "completed": 0}}}
    assert s.outstanding(0) == ["c"]


def test_lookup_answers_for_ids_no_longer_in_memory():
    asked = []
    db = {"old_ok": ("ok", 1), "old_err": ("error", 0)}

    def lookup(msg_id):
        asked.append(msg_id)
        return db.get(msg_id)

    s = make(2, hwm=0, lookup=lookup, history=2)
    for i in range(5):
        e = run_on(s, f"t{i}")
        s.finished(f"t{i}", e, "ok", 1.0)
    assert len(s._done) == 2
    assert runs(s.submit(task("y2", after=dep("t4")), 2.0))   # still in memory: no lookup
    assert asked == []
    assert s.submit(task("x", after=dep("t0")), 2.0) == []
    assert "t0" in asked
    out = s.tick(2.0 + scheduler.UNKNOWN_GRACE_S)
    assert fails(out) == {"x": "InvalidDependency"}      # evicted and unknown to the DB
    assert run_on(s, "y", follow=dep("old_ok")) == 1
    assert fails(s.submit(task("z", after=dep("old_err")), 3.0)) == {"z": "ImpossibleDependency"}


def test_memory_stays_bounded():
    s = make(4, hwm=2, history=50)
    now = 0.0
    for i in range(3000):
        for mid, e in runs(s.submit(task(f"t{i}", timeout=60.0), now)):
            s.finished(mid, e, "ok", now)
        now += 0.01
    assert len(s._done) == 50
    assert s._tasks == {} and s._graph == {} and not s._constrained
    assert len(s._deadlines) <= 1025     # entries of tasks assigned in time are compacted
    assert s.next_deadline() is None


@pytest.mark.parametrize("seed", range(12))
def test_random_workload_gives_every_task_exactly_one_final_state(seed):
    rng = random.Random(seed)
    s = Scheduler(scheme=rng.choice(sorted(scheduler.SCHEMES)), hwm=rng.choice([0, 1, 2]),
                  seed=seed, history=rng.choice([5, 10_000]),
                  lookup=lambda mid: finals_status.get(mid))
    finals_status = {}      # what the controller's DB would answer
    final = {}              # msg_id -> number of final decisions
    recovered = {}          # owner -> recovery task
    running = {}            # msg_id -> engine
    submitted = []
    next_engine = [0]
    now = 0.0
    client_of, held = {}, set()   # clients take turns; a held one's tasks are not assigned

    def act(decisions):
        for d in decisions:
            if d[0] == "run":
                assert d[1] not in running, d
                assert client_of.get(d[1]) not in held, d
                running[d[1]] = d[2]
            elif d[0] in ("done", "fail"):
                final[d[1]] = final.get(d[1], 0) + 1
                assert d[1] not in running, d
                finals_status[d[1]] = ("ok" if d[0] == "done" and d[1] in ok else "error",
                                       None)
            elif d[0] == "recover":
                recovered[d[1]] = d[2]
        # every outstanding task is on a live engine, once
        on_engines = [m for e in s.status()["engines"] for m in s.outstanding(e)]
        assert sorted(on_engines) == sorted(running)

    ok = set()
    for _ in range(3):
        act(s.engine_added(next_engine[0], now, {"n": next_engine[0]}))
        next_engine[0] += 1
    for step in range(400):
        now += rng.random()
        r = rng.random()
        live = sorted(s.status()["engines"])
        if r < 0.45:
            mid = f"t{step}"
            kw = {"retries": rng.choice([0, 0, 1, 2])}
            if submitted and rng.random() < 0.3:
                kw["after"] = dep(*rng.sample(submitted, min(2, len(submitted))),
                                  all=rng.random() < 0.7, failure=rng.random() < 0.3)
            if submitted and rng.random() < 0.15:
                kw["follow"] = dep(rng.choice(submitted), all=rng.random() < 0.5)
            if live and rng.random() < 0.15:
                kw["targets"] = rng.sample(live, 1)
            if rng.random() < 0.1:
                kw["depend"] = lambda p: p["n"] % 2 == 0
            if rng.random() < 0.2:
                kw["timeout"] = rng.choice([0.5, 3.0])
            if rng.random() < 0.2:
                rid = f"r{step}"
                act(s.submit(task(rid, dormant=True), now))
                submitted.append(rid)
                kw["recovery"] = rid
            client_of[mid] = rng.choice("ABC")
            act(s.submit(task(mid, **kw), now, client_of[mid]))
            submitted.append(mid)
        elif r < 0.85 and running:
            mid = rng.choice(sorted(running))
            status = rng.choice(["ok", "ok", "ok", "error", "unmet", "timeout", "aborted"])
            if status == "ok":
                ok.add(mid)
            act(s.finished(mid, running.pop(mid), status, now))
        elif r < 0.9:
            act(s.tick(now))
        elif r < 0.94 and submitted:
            act(s.abort([rng.choice(submitted)], now))
        elif r < 0.955:
            c = rng.choice("ABC")
            if rng.random() < 0.5:
                held.add(c)
                s.hold(c)
            else:
                held.discard(c)
                act(s.release(c, now))
        elif r < 0.97 and len(live) > 1:
            gone = rng.choice(live)
            for mid in s.outstanding(gone):
                del running[mid]
            act(s.engine_removed(gone, now))
        else:
            act(s.engine_added(next_engine[0], now, {"n": next_engine[0]}))
            next_engine[0] += 1
    # drain: engines that accept everything, then finish whatever runs
    held.clear()
    for c in "ABC":
        act(s.release(c, now))
    for e in list(s.status()["engines"]):
        act(s.set_properties(e, {"n": 0}, now))
    act(s.engine_added(next_engine[0], now, {"n": 0}))
    while running or s.status()["unassigned"]:
        now += 1.0
        act(s.tick(now))
        for mid in sorted(running):
            if mid in running:
                ok.add(mid)
                act(s.finished(mid, running.pop(mid), "ok", now))
    for mid in submitted:
        if mid in recovered:
            assert mid not in final, mid
            while mid in recovered:
                mid = recovered[mid]
        assert final.get(mid) == 1, (mid, final.get(mid))
    assert s._tasks == {} and s._graph == {} and not s._paused
