"""The task scheduler: decides where and when load-balanced tasks run.

A plain object with no sockets, no threads and no clock. The controller's hub loop (its
only caller, one thread) turns task requests, replies and engine events into method
calls, and carries out the decisions each call returns. Time comes in as ``now`` (float
seconds on a clock that never jumps: the controller passes ``time.monotonic()``; only
dependency timeouts use it, as deadlines), so tests step it by hand::

    hub loop event        call                        returns decisions, in order:
    task request          submit(task, now)           Run(RUN, msg_id, engine)
    task reply            finished(id, e, status)     Done(DONE, msg_id)
    engine (un)register   engine_added / _removed     Fail(FAIL, msg_id, ename, evalue)
    properties change     set_properties              Recover(RECOVER, msg_id, recovery)
    client abort          abort(ids)                  Abort(ABORT, msg_id, engine)
    poll timeout          tick(now)                   Take(TAKE, msg_id, engine, running)
    task runs long        long(engine, id)
    take-back answered    taken_back(engine, ids)

A decision is a named tuple whose first field, `action`, says what to do with task
`msg_id`: RUN it on `engine`; it is DONE (final, with the reply its engine sent); FAIL
it with error `ename`: `evalue` (final); its retries are exhausted and its dormant
task `recovery` now runs to RECOVER it (its outcome becomes msg_id's); ABORT it, asking
`engine`, where it runs, to stop it (only ``abort`` returns these); TAKE it back from
`engine`, where it waits behind the long task `running` (see below). Being tuples, they
compare equal to plain ones: ``Done(DONE, "t") == ("done", "t")``.

A task's life::

    submit ─▶ WAITING ──deps met──▶ READY ──free slot──▶ ASSIGNED ──reply──▶ final
      │          │                    ▲                     │
      │          └─▶ fail             └───retry / unmet─────┤
      │              (impossible, invalid, timeout)         ▼ retries exhausted
      └─▶ DORMANT ──woken by its owner──▶ as submit       RECOVERING ──▶ final
          (a recovery task)                               (its recovery task's outcome)

A plain task (no targets, dependencies, timeout, retries or recovery) submitted while
nothing is queued and an engine has room goes from submit straight to ASSIGNED.

Routing schemes are plain functions over a list of loads (outstanding tasks per engine,
least recently used engine first) returning an index: ``leastload`` (default), ``lru``,
``twobin``, ``weighted``, ``plainrandom``. ``hwm`` caps the outstanding tasks per engine
(by default 2, and 64 while an engine's tasks take under a millisecond: AUTO_HWM);
tasks beyond it wait here, and a freed slot goes to the oldest runnable task (submission
order) that may use that engine, with one exception, between clients:

Clients take turns (``submit(task, now, client)``): each client's tasks that may run anywhere
wait in a line of their own, oldest first, and freed slots go round the clients with tasks
waiting, one task each (round-robin: a rotation of `_ring`, O(1) whatever the number of
clients). A class sharing a cluster: one student's task queued behind another's 20,000 gets
the next slot but one, not the 20,001st. Tasks restricted to some engines (targets, follow,
depend, retries) keep submission order among all clients. ``hold(client)`` sets a client's
tasks aside until ``release(client)``: the controller's back-pressure for a client that
reads its results slower than its engines make them (stopped, asleep).

Taking back (automatic prefetch only): an engine whose task runs long (``long``: its
engine said so after 0.1 s) takes no more tasks, and the tasks queued behind that one
would wait for it while other engines idle. So once another engine has room (at once, or
at a later reply or registration; nothing waits for an engine with room), the queued
ones that engine may run are taken back: TAKE decisions, which the controller sends as
one take-back. The engine answers with those it had not started (all of them, or none
if the long task had ended by then), and ``taken_back`` queues them again as they were
(same place in the line, no retry spent); the others run there and reply as usual. An
explicit ``hwm`` keeps ipyparallel's meaning, what is sent stays where it was sent: its
engines keep their cap while a task runs long, so a task taken back could be sent
straight back, and ``hwm=1`` queues nothing behind a running task anyway.

State (dicts, and a `_Task` per task with these keys as attributes; every state change goes
through ``_set_state``)::

    _tasks[msg_id] = {              # every task not final yet
        "msg_id", "seq": int,       # seq: submission order, the FIFO key
        "state": DORMANT|WAITING|READY|ASSIGNED|RECOVERING,
        "gen": int,                 # bumped whenever queue entries for it are remade
        "targets": frozenset|None, "depend": callable|None,
        "after": dep|None, "follow": dep|None,     # a spec until admitted, then a tracker:
            # {"ids": frozenset, "all", "success", "failure": bool,
            #  "pending": set (ids not final), "good": int, "bad": int (final ids that
            #  do / do not count), "engines": set (where the good ones ran)}
        "timeout": float|None, "deadline": float|None,   # deadline only while unassigned
        "retries": int (left), "failed_on", "unmet": None or a frozenset of engines,
        "recovery": str|None, "woke": bool, "owner": str|None,  # owner: the task it recovers
        "where": None (any engine) | set (the engines it may use now; empty: it waits),
        "engine": int|None, "aborting": bool}
    _long = {eid: msg_id}           # engines whose task msg_id runs long, with tasks queued
                                    # behind it, not yet asked back (auto prefetch only)
    _engines[eid] = {"tasks": {msg_id: None}, "completed": int, "cap": int|inf (of tasks),
                     "long": msg_id|None,   # its task said to run long, until it ends
                     "properties": dict, "stamp": int}  # stamp: orders _order, see _place
    _order = {eid: None}            # least recently assigned first: the order of `loads`
    _rooms  heap                    # (load, stamp, eid) of engines with room, leastload's
    _lines[client] = _Line          # READY tasks that may run anywhere, one line a client:
                                    # .queue deque / .late heap of (seq, gen, msg_id), .held
    _ring  deque of _Line           # the lines with tasks, not paused: whose turn is next
    _paused  set                    # clients held (hold / release)
    _heaps[eid]  heap               # (seq, gen, msg_id) READY tasks restricted to some engines
    _graph[dep_id] = {msg_id, ...}  # WAITING tasks to re-check when dep_id becomes final
    _done  OrderedDict              # msg_id -> (success, engine) of the last `history` finals
    _deadlines  heap                # (deadline, msg_id) for tick()
    _unknown  heap                  # (end of grace, msg_id): tasks that named ids not seen
                                    # yet (kept "pending"), checked by tick()

Policies where the seeds leave a choice:

- A retry waits for a live engine where the task has not failed, even a busy one; only
  when every engine it may use has failed does it go back to one of those.
- An unmet functional dependency excludes that engine for good; once every live engine
  it may use is excluded, ImpossibleDependency. With no engine at all, tasks just wait.
- Targets that are all gone (or, with engines present, none registered) fail the task.
- Recovery serves run failures only (errors, engine deaths) once retries are exhausted.
  A task that ends otherwise (success, aborted, time limit, dependency failure) has its
  dormant recovery chain discarded with TaskAborted, so every task gets a final state.
- Dependency timeouts bound the wait until a task is first assigned, not its retries.
- An after/follow id not seen yet is waited for UNKNOWN_GRACE_S (another client's task may
  arrive after its dependent), then the task fails with InvalidDependency. One that the
  controller knows as a direct request's (`lookup` says DIRECT) fails it at once.

Queue entries are never searched for or removed in the middle: an entry whose task has left
READY, or whose ``gen`` is old, is dropped when it reaches the head; `_rooms` likewise holds
an engine's entry from before its load changed until it surfaces. So a plain task's submit
and finished cost heap operations only, whatever the number of engines (with leastload;
the other schemes look at every engine with room) and of waiting tasks; only engine
arrival, departure and property changes re-examine the tasks restricted to some engines.
"""

import collections
import functools
import heapq
import itertools
import logging
import math
import random

from . import errors, protocol
from .dependency import is_met, is_unreachable
from .protocol import ERROR, OK, STATUSES, TIMEOUT, UNMET  # finished()'s statuses

log = logging.getLogger(__name__)


# Prefetch when no hwm is given: an engine holds AUTO_HWM outstanding tasks, and up to
# AUTO_HWM_QUICK while the tasks it runs take under QUICK_TASK_S each. A task that short
# costs less than a round trip through the controller, so without a queue of them the
# engine would wait on the wire; a deeper queue of longer tasks would only keep them from
# engines that free up. Back at AUTO_HWM when a longer task finishes or the engine runs dry.
# A task still running after 0.1 s (Scheduler.long) sets the engine's cap to 1 until it
# ends, and the tasks already queued behind it are taken back once another engine has room
# (see "Taking back" in the module docstring), so no task waits behind a long one while an
# engine idles, as with ipyparallel's hwm of 1, and quick tasks still go 64 deep.
# 64 rather than 16: the controller and the engines then send tasks and replies in larger
# batches (map with chunksize 1: +20% items/s, -13% CPU per item); an engine holds at most
# 64 ms of such work that another engine could have taken.
AUTO_HWM = 2
AUTO_HWM_QUICK = 64
QUICK_TASK_S = 0.001

# Outcomes of final tasks kept for dependents submitted later; older ones come from
# `lookup`. Each costs ~150 bytes; 1,000..100,000 is reasonable.
FINISHED_HISTORY = 10_000

# How long a dependency on an id not seen yet waits for that task to be submitted before
# the dependent fails with InvalidDependency. Another client's task may reach the
# controller after a dependent naming it (each client holds a burst's requests for a few
# ms and sends them on its own socket), so failing at once made such dependencies fail
# now and then; an id that never comes costs this much delay. 0.5..10 s is reasonable.
UNKNOWN_GRACE_S = 2.0
# `lookup`'s answer for a direct request's id: no dependency, whether it runs or finished
DIRECT = "direct"

# Task states. A final task leaves the scheduler; DONE only marks its last record.
DORMANT = "dormant"        # a recovery task, held until the task it recovers needs it
WAITING = "waiting"        # its after/follow dependencies are not met yet
READY = "ready"            # may run; waits for a free slot on an engine it may use
ASSIGNED = "assigned"      # sent to an engine, its reply not back yet
RECOVERING = "recovering"  # retries exhausted: its outcome will be its recovery task's
DONE = "done"

_TRANSITIONS = {
    None: {DORMANT, WAITING, READY, ASSIGNED, DONE},   # ASSIGNED: a plain task, an engine free
    DORMANT: {WAITING, READY, DONE},        # woken, or discarded
    WAITING: {READY, DONE},
    READY: {ASSIGNED, DONE},
    ASSIGNED: {READY, RECOVERING, DONE},    # READY again: a retry or an unmet dependency
    RECOVERING: {DONE},
}


# Decisions (see the module docstring): the action, then its task and arguments.
RUN, FAIL, RECOVER, ABORT, TAKE = "run", "fail", "recover", "abort", "take"   # DONE: the state's
Run = collections.namedtuple("Run", "action msg_id engine")
Done = collections.namedtuple("Done", "action msg_id")
Fail = collections.namedtuple("Fail", "action msg_id ename evalue")
Recover = collections.namedtuple("Recover", "action msg_id recovery")
Abort = collections.namedtuple("Abort", "action msg_id engine")
Take = collections.namedtuple("Take", "action msg_id engine running")

# What the owner of a discarded recovery task did instead of needing it, by error name.
_ENDED = {"ImpossibleDependency": "could never run", "InvalidDependency": "could never run",
          "DependencyTimeout": "timed out waiting for its dependencies",
          "TaskAborted": "was aborted", "EngineError": "lost its engine",
          "TaskTimeout": "hit its time limit"}


# --------------------------------------------------------------------------- schemes

def leastload(loads):
    """The lowest load; on a tie the first, which is the least recently used."""
    return loads.index(min(loads))


def lru(loads):
    """The front of the line: `loads` come least recently used first."""
    return 0


def plainrandom(loads, rng=random):
    """Any engine, uniformly at random."""
    return rng.randrange(len(loads))


def twobin(loads, rng=random):
    """Two engines at random; the lesser loaded of the two (the LRU one on a tie).

    ipyparallel's twobin kept the LRU of the two whatever their loads; comparing loads
    too is the classic "power of two choices" and costs nothing more.
    """
    n = len(loads)
    a, b = rng.randrange(n), rng.randrange(n)
    return min((loads[a], a), (loads[b], b))[1]


def weighted(loads, rng=random):
    """Two engines at random with inverse load as weight; the lesser loaded of the two."""
    # an idle engine weighs a million times more than one with a single task
    weights = [1.0 / (1e-6 + load) for load in loads]
    a, b = rng.choices(range(len(loads)), weights, k=2)
    return min((loads[a], a), (loads[b], b))[1]


SCHEMES = {f.__name__: f for f in (leastload, lru, plainrandom, twobin, weighted)}
_RANDOM_SCHEMES = (plainrandom, twobin, weighted)


# The fields of a load-balanced request beyond the plain ones; most have none.
TASK_FIELDS = frozenset(("targets", "after", "follow", "timeout", "time_limit", "retries",
                          "recovery", "dormant", "depend"))


def task_of(header):
    """The scheduler's view of a load-balanced request."""
    if TASK_FIELDS.isdisjoint(header):
        return {"msg_id": header["msg_id"]}
    return {"msg_id": header["msg_id"], "targets": header.get("targets"),
            "after": header.get("after"), "follow": header.get("follow"),
            "timeout": header.get("timeout"), "retries": header.get("retries") or 0,
            "recovery": header.get("recovery"), "dormant": bool(header.get("dormant")),
            "depend": _depend(header)}


def _depend(header):
    """A classic ``Task(depend=f)``: `f` comes pickled in the header (`depend`, a list of
    frames) and is unpickled here, after the header's signature was checked: its sender
    holds the cluster key, like any client that runs code on the engines. The scheduler
    calls it with each engine's properties, in this process, so it must be quick."""
    frames = header.get("depend")
    if frames is None:
        return None
    try:
        f = protocol.deserialize(frames)
    except Exception as e:
        raise errors.InvalidDependency(
            f"task {header['msg_id']}: the controller could not unpickle its depend function "
            f"({type(e).__name__}: {e}); define it without modules the controller's Python "
            "lacks") from None
    if not callable(f):
        raise errors.InvalidDependency(
            f"task {header['msg_id']}: depend must be a function of the engine's properties, "
            f"not {type(f).__name__}")
    return f


def _spec(raw):
    """A dependency as given (a dict with "ids", or a plain list of ids) -> spec or None."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        raw = {"ids": raw}
    spec = {"ids": frozenset(raw.get("ids") or ()), "all": raw.get("all", True),
            "success": raw.get("success", True), "failure": raw.get("failure", False)}
    return spec if spec["ids"] else None


class _Task:
    """A task's state (`_tasks` in the module docstring), its keys as attributes: slots,
    because thousands may be queued and a dict of 19 keys costs twice as much, and
    ``t.state`` reads in a seventh of the time ``t["state"]`` took through
    ``__getitem__`` (about 30 reads per task: 1.4 µs)."""

    __slots__ = ("msg_id", "seq", "state", "gen", "targets", "depend", "after", "follow",
                 "timeout", "deadline", "retries", "failed_on", "unmet", "recovery", "woke",
                 "owner", "where", "engine", "aborting", "client")

    def __init__(self, msg_id, seq, targets, depend, after, follow, timeout, retries, recovery,
                 client=None):
        self.msg_id, self.seq, self.targets, self.depend = msg_id, seq, targets, depend
        self.client = client
        self.after, self.follow, self.timeout = after, follow, timeout
        self.retries, self.recovery = retries, recovery
        self.state = self.deadline = self.failed_on = self.unmet = self.owner = None
        self.where = self.engine = None
        self.gen = 0
        self.woke = self.aborting = False


class _Line:
    """One client's queue of READY tasks that may run anywhere (`_lines` in the module
    docstring): `queue` in submission order, `late` a heap of those queued again out of
    order (retries, dependencies met), `held` its restricted tasks met while it is paused."""

    __slots__ = ("client", "queue", "tail", "late", "held", "paused", "ringed")

    def __init__(self, client):
        self.client, self.queue, self.tail, self.late = client, collections.deque(), -1, []
        self.held, self.paused, self.ringed = {}, False, False


class Scheduler:
    """Load balancer for tasks, driven by the controller; see the module docstring."""

    def __init__(self, scheme="leastload", hwm=None, lookup=None, seed=None,
                 history=FINISHED_HISTORY):
        """`scheme`: a name from SCHEMES or a function of the loads returning an index.
        `hwm`: most outstanding tasks per engine, 0 for no limit; 1..4 keeps engines busy
        while leaving work to engines that free up; None: AUTO_HWM, deeper for quick
        tasks. `lookup(msg_id)`: None, DIRECT, or (status, engine) of a final task no longer
        in memory. `seed`: for random schemes. `history`: final outcomes kept in memory for
        dependents."""
        if hwm is not None and hwm < 0:
            raise ValueError(f"hwm={hwm} is negative; use 0 for no limit or a positive count")
        self._rng = random.Random(seed)
        if callable(scheme):
            self._choose = scheme
        elif scheme in SCHEMES:
            choose = SCHEMES[scheme]
            self._choose = (functools.partial(choose, rng=self._rng)
                            if choose in _RANDOM_SCHEMES else choose)
        else:
            raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(sorted(SCHEMES))}"
                             " or a function of the loads")
        self.hwm = hwm
        self._lookup = lookup
        self._history = history
        self._seq = itertools.count()
        self._tasks = {}
        self._engines = {}
        self._order = {}
        self._front = 0                 # the stamp of the engine added last (see _place)
        self._stamps = itertools.count(1)
        self._rooms = [] if self._choose is leastload else None
        self._removed = set()           # engines gone: targets/follow naming them can't be met
        self._lines = {}                # client -> its _Line of any-engine READY tasks
        self._ring = collections.deque()   # the _Lines with tasks, not paused: taken in turn
        self._paused = set()            # clients whose tasks wait (see hold)
        self._heaps = {}
        self._constrained = {}          # msg_id -> None: READY tasks with a `where` set
        self._located = {}              # msg_id -> None: WAITING tasks with targets or follow
        self._graph = {}
        self._deadlines = []
        self._n_deadlines = 0           # live entries in _deadlines, to know when to compact
        self._unknown = []
        self._done = collections.OrderedDict()
        self._released = collections.deque()   # (msg_id, success, engine) not yet propagated
        self._claims = {}               # recovery msg_id -> the task it recovers
        self._unneeded = collections.OrderedDict()  # recovery discarded before it arrived
        self._n_unassigned = 0
        self._n_readied = 0             # tasks ever made READY: finished() checks for news
        self._long = {}                 # engine id -> its long task, tasks queued behind it

    # ------------------------------------------------------------------ engine events

    def engine_added(self, engine_id, now, properties=None):
        """A new engine: at the head of the line, and tasks waiting for it may run. A known
        one registered again keeps its properties unless new ones come (None: none said)."""
        if engine_id in self._engines:
            return [] if properties is None else self.set_properties(engine_id, properties, now)
        out = []
        cap = AUTO_HWM if self.hwm is None else self.hwm or math.inf
        self._front -= 1
        self._engines[engine_id] = {"tasks": {}, "completed": 0, "cap": cap, "long": None,
                                    "properties": dict(properties or {}), "stamp": self._front}
        self._order = {engine_id: None, **self._order}
        self._has_room(engine_id)
        self._removed.discard(engine_id)
        self._recheck(out, waiting=False)
        self._schedule(out)
        if self._long:
            self._take_back(out)
        return out

    def engine_removed(self, engine_id, now, timed_out=None, how=None, clean=False,
                       running=None, ran=(), unstarted=()):
        """An engine is gone: retry its tasks elsewhere, or fail / recover them.
        `timed_out` maps the ones that ran past their time_limit (the engine was ended for
        it) to why: those fail with TaskTimeout, as a timed-out reply would. `how` it went,
        in words, when it said ("stopped because ...,": it gave up on a silent
        controller); else it "died". `clean`: it shut down when told to, having answered
        all it ran, so its tasks never started: each goes to another engine, retries kept.
        What the controller knows of its queue (its requests run in the order sent):
        `running`, the request it ran last as far as the controller knows (the last one it
        reported started, else the first unanswered; None: this engine's first task here);
        `ran`, those ahead of that one (their replies lost); `unstarted`, those that
        certainly never started there (never sent, or after the last one it began, as it
        said when it stopped): they go elsewhere, retries kept.
        A task queued behind `running` may have started, had `running` ended with its reply
        lost: with retries it goes back without spending one (it most likely never ran);
        without, it fails, as retries=0 promises it never runs twice."""
        out = []
        engine = self._engines.pop(engine_id, None)
        if engine is None:
            return out
        del self._order[engine_id]
        self._long.pop(engine_id, None)   # its queued tasks go back below, as they always did
        self._removed.add(engine_id)
        self._heaps.pop(engine_id, None)
        started = [m for m in engine["tasks"] if m not in unstarted]
        if running is None:
            running = started[0] if started else None
        for msg_id in engine["tasks"]:
            t = self._tasks[msg_id]
            if t.aborting:
                self._fail(t, "TaskAborted", f"task {msg_id} was aborted while running and its "
                           f"engine {engine_id} died before confirming; nothing more to do",
                           out, engine_id)
            elif timed_out and msg_id in timed_out:
                self._fail(t, "TaskTimeout", timed_out[msg_id], out, engine_id)
            elif clean or msg_id in unstarted:
                self._ready(t, out)
            elif t.retries > 0:
                if msg_id in ran or msg_id == running:   # it started there: a try spent
                    t.retries -= 1
                    t.failed_on = (t.failed_on or frozenset()) | {engine_id}
                self._ready(t, out)
            else:
                self._exhausted(t, now, out, engine_id, died=True, how=how,
                                when=_when_died(msg_id, running, ran, started[-1]))
        self._recheck(out, waiting=True)
        return self._settle_and_schedule(out)

    def set_properties(self, engine_id, properties, now):
        """The engine's whole properties dict changed: `depend` callables look again."""
        out = []
        engine = self._engines.get(engine_id)
        if engine is None:
            return out
        engine["properties"] = dict(properties)
        self._recheck(out, waiting=False)
        return self._settle_and_schedule(out)

    def long(self, engine_id, msg_id):
        """Task `msg_id` still runs on `engine_id` after a while (its engine said so).
        With automatic prefetch the engine takes no more tasks until it is done, so a
        quick one does not wait behind it (ipyparallel's hwm of 1, where it matters);
        its reply sets the cap again. The tasks already queued behind it are taken back
        (TAKE decisions) now if another engine has room, else when one has."""
        out = []
        engine = self._engines.get(engine_id)
        if self.hwm is None and engine is not None and msg_id in engine["tasks"]:
            engine["cap"], engine["long"] = 1, msg_id
            if next(reversed(engine["tasks"])) != msg_id:   # something queued behind it
                self._long[engine_id] = msg_id
                self._take_back(out)
        return out

    def taken_back(self, engine_id, msg_ids, now):
        """`engine_id` answered a take-back: `msg_ids`, those it had not started, will
        never run there (the others asked for run there and reply as usual). They are
        queued again where they were in the line, no retry spent; one aborted meanwhile
        ends as aborted before it started."""
        out = []
        engine = self._engines.get(engine_id)
        for msg_id in msg_ids if engine is not None else ():
            t = self._tasks.get(msg_id)
            if t is None or t.state is not ASSIGNED or t.engine != engine_id:
                continue   # a stale answer: the task moved on (its engine died meanwhile)
            del engine["tasks"][msg_id]
            t.engine = None
            if t.aborting:
                self._fail(t, "TaskAborted", f"task {msg_id} was aborted before it started", out)
            else:
                self._ready(t, out)
        if engine is not None:
            if self.hwm is None and not engine["tasks"]:
                engine["cap"] = AUTO_HWM   # its long task ended too: start over
            self._has_room(engine_id)
        return self._settle_and_schedule(out)

    def hold(self, client):
        """Assign none of `client`'s queued tasks until ``release(client)``: its results
        wait to be sent (it reads nothing, or less than its engines make), so running more
        of them would only pile up more. Other clients' tasks take its turns; what it has on
        engines runs on."""
        line = self._lines.get(client)
        if line is None:
            line = self._lines[client] = _Line(client)
        line.paused = True
        self._paused.add(client)

    def release(self, client, now):
        """`client`'s tasks may be assigned again, in their turn (see hold)."""
        out = []
        line = self._lines.get(client)
        if line is None or not line.paused:
            return out
        line.paused = False
        self._paused.discard(client)
        held, line.held = line.held, {}
        for msg_id in held:   # its restricted tasks met at a heap's head while it was held
            t = self._tasks.get(msg_id)
            if t is not None and t.state is READY and t.client == client:
                self._enqueue(t)
        if not line.ringed and (line.queue or line.late):
            line.ringed = True
            self._ring.append(line)
        elif not line.ringed:   # nothing queued: forgotten, as _any_head forgets an empty line
            del self._lines[client]
        self._schedule(out)
        return out

    def _take_back(self, out):
        """For each engine in `_long`, once another engine has room: TAKE decisions for
        the tasks queued behind its long task that some engine with room may run (any
        other stays: only its own engine will do). Each engine is asked once per long
        task: with a cap of 1 it gets nothing new to queue."""
        tasks = self._tasks
        for engine_id, running in list(self._long.items()):
            free = set(self._free())
            free.discard(engine_id)
            if not free:
                return
            del self._long[engine_id]
            queued = list(self._engines[engine_id]["tasks"])
            for msg_id in queued[queued.index(running) + 1:]:
                t = tasks[msg_id]
                if not t.aborting and (t.where is None or t.where & free):
                    out.append(Take(TAKE, msg_id, engine_id, running))

    # ------------------------------------------------------------------ task events

    def submit(self, task, now, client=None):
        """Take a new task (dict as in the controller's contract) of `client` (any hashable:
        the controller's routing id of the client; tasks of different clients take turns);
        see the module docstring."""
        out = []
        msg_id = task["msg_id"]
        if msg_id in self._tasks:
            raise ValueError(f"task {msg_id!r} is already scheduled; "
                             "give each submission its own msg_id")
        self._done.pop(msg_id, None)
        if len(task) == 1 or _is_plain(task):
            return self._submit_plain(msg_id, out, client)
        targets = task.get("targets")
        if isinstance(targets, int):
            targets = [targets]
        timeout = task.get("timeout")
        t = _Task(msg_id, next(self._seq), frozenset(targets) if targets else None,
                  task.get("depend"), _spec(task.get("after")), _spec(task.get("follow")),
                  timeout if timeout and timeout > 0 else None, task.get("retries") or 0,
                  task.get("recovery"), client)
        self._tasks[msg_id] = t
        problem = self._recovery_problem(t)
        if problem:
            t.recovery = None   # refused: that task is not this one's to discard
            self._fail(t, "InvalidDependency", problem, out)
        else:
            if t.recovery is not None:
                self._claims[t.recovery] = msg_id
            if task.get("dormant"):
                self._set_state(t, DORMANT)
                if msg_id in self._unneeded:
                    self._fail(t, "TaskAborted", self._unneeded.pop(msg_id), out)
            else:
                self._admit(t, now, out)
        return self._settle_and_schedule(out)

    def _submit_plain(self, msg_id, out, client):
        """submit() of a task with nothing to wait for and nowhere it must run (the common
        case): the general path's decisions, without resolving dependencies, targets and
        recovery."""
        t = _Task(msg_id, next(self._seq), None, None, None, None, None, 0, None, client)
        self._tasks[msg_id] = t
        # Every call leaves a task queued only where no engine it may use has room (a paused
        # client's aside). So with a task queued that may run anywhere, no engine has room;
        # with none, a free engine is this task's without overtaking anyone.
        engine_id = None if self._any_head() or (self._paused and client in self._paused) \
            else self._free_engine()
        if engine_id is None:
            self._set_state(t, READY)
            self._enqueue(t)
        else:
            self._set_state(t, ASSIGNED)
            self._place(t, engine_id, out)
        return out

    def finished(self, msg_id, engine_id, status, now, runtime=None):
        """`engine_id` replied to `msg_id` with `status`, having run it for `runtime` s
        (None: not known). A reply for a task that is not outstanding on that engine
        (moved away after the engine was declared dead, aborted, unknown) is stale:
        ignored, no decisions."""
        out = []
        readied = self._n_readied
        t = self._tasks.get(msg_id)
        if t is None or t.state is not ASSIGNED or t.engine != engine_id:
            log.debug("ignoring a stale reply for %s from engine %s", msg_id, engine_id)
            return out
        engine = self._engines[engine_id]
        del engine["tasks"][msg_id]
        if self._long and self._long.get(engine_id) == msg_id:
            del self._long[engine_id]   # its long task ended before any engine had room
        if self.hwm is None:
            if engine["long"] == msg_id:
                engine["long"] = None
            if not engine["tasks"]:
                engine["cap"] = AUTO_HWM                    # ran dry: start over
            # Not while a later task runs long: replies to those before it may come after
            # its `started` (on the engine's other socket, or held for their batch), and a
            # cap set again would queue tasks behind it that its take-back, asked once,
            # never gets back.
            elif engine["long"] is None and (runtime is not None or engine["cap"] < AUTO_HWM):
                quick = runtime is not None and runtime < QUICK_TASK_S
                engine["cap"] = AUTO_HWM_QUICK if quick else AUTO_HWM
        if status not in STATUSES:
            log.warning("task %s: unknown status %r from engine %s, taken as an error",
                        msg_id, status, engine_id)
            status = ERROR
        if status != UNMET:
            engine["completed"] += 1
        if status == OK:
            out.append(Done(DONE, msg_id))
            self._finalize(t, True, engine_id, out, "succeeded")
        elif status == UNMET and t.aborting:
            self._fail(t, "TaskAborted", f"task {msg_id} was aborted before it started", out)
        elif status == UNMET:
            t.unmet = (t.unmet or frozenset()) | {engine_id}
            self._ready(t, out)
        elif status == ERROR and t.retries > 0 and not t.aborting:
            t.retries -= 1
            t.failed_on = (t.failed_on or frozenset()) | {engine_id}
            self._ready(t, out)
        elif status == ERROR and not t.aborting:
            self._exhausted(t, now, out, engine_id)
        else:  # aborted, timed out, or an error after the client asked to abort: no retry
            out.append(Done(DONE, msg_id))
            self._finalize(t, False, engine_id, out,
                           "hit its time limit" if status == TIMEOUT else "was aborted")
        if self._released:
            self._settle(out)
        if self._n_readied == readied:
            self._fill(engine_id, out)
        else:
            self._schedule(out)
        self._has_room(engine_id)   # its load and cap changed; after _fill, often full again
        if self._long and len(engine["tasks"]) < engine["cap"]:
            self._take_back(out)    # it has room and nothing here to run
        return out

    def abort(self, msg_ids, now):
        """Abort tasks: fail those not on an engine, ask engines to stop the others."""
        out = []
        if isinstance(msg_ids, str):
            msg_ids = [msg_ids]
        for msg_id in msg_ids:
            t = self._tasks.get(msg_id)
            while t is not None and t.state is RECOVERING:
                t = self._tasks.get(t.recovery)   # its outcome is its recovery task's
            if t is None:
                continue
            if t.state is ASSIGNED:   # asked again too: a cancel() lets what started run
                t.aborting = True        # on, an abort() after it interrupts it
                out.append(Abort(ABORT, t.msg_id, t.engine))
            else:
                self._fail(t, "TaskAborted",
                           f"task {t.msg_id} was aborted before it started", out)
        return self._settle_and_schedule(out)

    def tick(self, now):
        """Fail the tasks whose dependency timeout has passed (DependencyTimeout)."""
        out = []
        # self._deadlines, not a local alias: failing a task may compact it into a new list
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, msg_id = heapq.heappop(self._deadlines)
            t = self._tasks.get(msg_id)
            if t is not None and t.deadline == deadline:
                self._fail(t, "DependencyTimeout",
                           f"task {msg_id} waited {t.timeout:g} s without its dependencies "
                           "being met or an engine it may use being free; raise timeout= or "
                           "check the tasks it depends on", out)
        while self._unknown and self._unknown[0][0] <= now:
            t = self._tasks.get(heapq.heappop(self._unknown)[1])
            missing = self._never_submitted(t) if t is not None else None
            if missing:
                self._fail(t, "InvalidDependency", f"task {t.msg_id} depends on unknown "
                           f"task id(s) {missing}, none submitted within {UNKNOWN_GRACE_S:g} s; "
                           "pass msg_ids of load-balanced tasks submitted to this cluster "
                           "(dependencies work only among those, not on direct requests)", out)
        return self._settle_and_schedule(out)

    def next_deadline(self):
        """The earliest `now` at which tick() has work, or None."""
        heap = self._deadlines
        while heap:
            deadline, msg_id = heap[0]
            t = self._tasks.get(msg_id)
            if t is not None and t.deadline == deadline:
                break
            heapq.heappop(heap)
        return min((h[0][0] for h in (heap, self._unknown) if h), default=None)

    def _never_submitted(self, t):
        """The ids `t` still waits for that were never submitted here (sorted), if it waits."""
        if t.state is not WAITING:
            return []
        return sorted(d for dep in (t.after, t.follow) if dep is not None
                      for d in dep["pending"] if d not in self._tasks)

    # ------------------------------------------------------------------ queries

    def status(self):
        """{"unassigned": tasks held here (waiting or queued, not dormant),
        "engines": {eid: {"queue": outstanding, "completed": replies}}}"""
        return {"unassigned": self._n_unassigned,
                "engines": {eid: {"queue": len(e["tasks"]), "completed": e["completed"]}
                            for eid, e in self._engines.items()}}

    def unassigned(self):
        """The msg_ids of the tasks held here (waiting or queued, not dormant), oldest first."""
        return [m for m, t in self._tasks.items() if t.state in (WAITING, READY)]

    def outstanding(self, engine_id):
        """The msg_ids assigned to `engine_id` and not replied to, oldest first."""
        engine = self._engines.get(engine_id)
        return list(engine["tasks"]) if engine else []

    # ------------------------------------------------------------------ states

    def _set_state(self, t, new):
        """The one place a task changes state, with the indexes that follow from it."""
        old = t.state
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"task {t.msg_id!r} cannot go from {old} to {new}")
        msg_id = t.msg_id
        if old is WAITING:
            self._n_unassigned -= 1
            self._located.pop(msg_id, None)
            for dep in (t.after, t.follow):
                for dep_id in dep["pending"] if dep else ():
                    waiters = self._graph.get(dep_id)
                    if waiters is not None:
                        waiters.discard(msg_id)
                        if not waiters:
                            del self._graph[dep_id]
        elif old is READY:
            self._n_unassigned -= 1
            self._constrained.pop(msg_id, None)
        if new is WAITING:
            self._n_unassigned += 1
            for dep in (t.after, t.follow):
                for dep_id in dep["pending"] if dep else ():
                    self._graph.setdefault(dep_id, set()).add(msg_id)
            if t.targets is not None or t.follow is not None:
                self._located[msg_id] = None
        elif new is READY:
            self._n_unassigned += 1
            self._n_readied += 1
            if t.where is not None:
                self._constrained[msg_id] = None
        t.state = new

    def _admit(self, t, now, out):
        """Start scheduling a new or woken task: resolve its dependencies, then fail it,
        let it wait, or queue it."""
        msg_id = t.msg_id
        forbidden = {msg_id}
        owner = t.owner
        while owner is not None:  # depending on the task it recovers would wait forever
            forbidden.add(owner)
            owner = self._tasks[owner].owner if owner in self._tasks else None
        unknown, direct = set(), set()
        for key in ("after", "follow"):
            spec = getattr(t, key)
            if spec is None:
                continue
            if spec["ids"] & forbidden:
                return self._fail(t, "InvalidDependency", f"task {msg_id} depends on itself or "
                                  "on the task it recovers; remove that id from after/follow", out)
            dep = dict(spec, pending=set(), good=0, bad=0, engines=set())
            for dep_id in spec["ids"]:
                if dep_id in self._tasks:
                    dep["pending"].add(dep_id)
                    continue
                known = self._outcome(dep_id)
                if known is DIRECT:
                    direct.add(dep_id)
                elif known is None:   # not submitted yet, perhaps: waited for, see tick()
                    unknown.add(dep_id)
                    dep["pending"].add(dep_id)
                else:
                    self._count(dep, *known)
            setattr(t, key, dep)
        if direct:
            return self._fail(t, "InvalidDependency", f"task {msg_id} depends on direct "
                              f"request(s) {sorted(direct)}; dependencies work only among "
                              "load-balanced tasks: submit those through a load-balanced "
                              "view, or wait for the direct ones before submitting", out)
        if unknown:
            heapq.heappush(self._unknown, (now + UNKNOWN_GRACE_S, msg_id))
        if t.timeout is not None:
            t.deadline = now + t.timeout
            heapq.heappush(self._deadlines, (t.deadline, msg_id))
            self._n_deadlines += 1
        if t.after is None and t.follow is None:
            self._ready(t, out)   # the common case: nothing to wait for
        else:
            self._evaluate(t, out)

    def _evaluate(self, t, out):
        """Fail, queue or keep waiting a task whose dependencies may have changed."""
        why = self._impossible(t)
        if why:
            self._fail(t, "ImpossibleDependency", why, out)
        elif (t.after is None or is_met(t.after)) and self._follow_met(t.follow):
            self._ready(t, out)
        elif t.state is not WAITING:
            self._set_state(t, WAITING)

    def _ready(self, t, out):
        """Make `t` runnable: find the engines it may use and queue it for them."""
        where, why = self._where(t)
        if why:
            return self._fail(t, "ImpossibleDependency", why, out)
        t.where = where
        self._set_state(t, READY)
        self._enqueue(t)

    def _exhausted(self, t, now, out, engine_id, died=False, how=None, when=None):
        """`t` failed with no retries left: wake its recovery task, or end it. `died`: its
        engine did (`how`), `when`, in words (see _when_died)."""
        msg_id, rid = t.msg_id, t.recovery
        r = self._tasks.get(rid) if rid is not None else None
        if r is not None and r.state is DORMANT:
            t.woke = True
            t.engine = None
            self._claims.pop(rid, None)
            self._set_state(t, RECOVERING)
            out.append(Recover(RECOVER, msg_id, rid))
            r.owner = msg_id
            self._admit(r, now, out)
        elif died:
            tried = sorted(t.failed_on or ())   # its retries were spent there
            self._fail(t, "EngineError", f"engine {engine_id} {how or 'died'} {when}; " + (
                f"its retries are spent (it failed on engines {tried} before): resubmit it"
                if tried else "resubmit it or use retries= to retry it elsewhere"), out, engine_id)
        else:
            if rid is not None:
                log.warning("task %s: recovery task %s is not held dormant here; "
                            "its failure stands", msg_id, rid)
            out.append(Done(DONE, msg_id))
            self._finalize(t, False, engine_id, out, "failed")

    def _fail(self, t, ename, evalue, out, engine=None):
        out.append(Fail(FAIL, t.msg_id, ename, evalue))
        self._finalize(t, False, engine, out, _ENDED.get(ename, "failed"))

    def _finalize(self, t, success, engine, out, ended):
        """`t` has its final outcome: forget it, remember the outcome, let dependents,
        its dormant recovery task and the task it recovers know."""
        msg_id = t.msg_id
        self._clear_deadline(t)
        self._set_state(t, DONE)
        del self._tasks[msg_id]
        if self._claims:
            self._claims.pop(msg_id, None)
        self._remember(msg_id, success, engine)
        if msg_id in self._graph:   # only waiters need telling (see _settle)
            self._released.append((msg_id, success, engine))
        if t.recovery is not None and not t.woke:
            self._discard(t.recovery, msg_id, "succeeded" if success else ended, out)
        owner = self._tasks.get(t.owner) if t.owner is not None else None
        if owner is not None and owner.state is RECOVERING:
            self._finalize(owner, success, engine, out, ended)

    def _discard(self, rid, owner, ended, out):
        """The dormant recovery task `rid` will never be needed: give it a final state."""
        self._claims.pop(rid, None)
        evalue = (f"recovery task {rid} was not needed: the task it recovers ({owner}) "
                  f"{ended}, so it never ran")
        r = self._tasks.get(rid)
        if r is not None:
            if r.state is DORMANT:
                out.append(Fail(FAIL, rid, "TaskAborted", evalue))
                self._finalize(r, False, None, out, "was not needed either")
        elif rid not in self._done:  # it is still to come in the same batch
            self._unneeded[rid] = evalue
            if len(self._unneeded) > self._history:
                self._unneeded.popitem(last=False)

    def _recovery_problem(self, t):
        """Why `t`'s recovery cannot be accepted, or None."""
        msg_id, rid = t.msg_id, t.recovery
        if rid is None:
            return None
        chain, step = [msg_id], rid
        while step is not None:
            if step in chain:
                return (f"recovery tasks form a loop ({' -> '.join(chain + [step])}); "
                        "give the last task of the chain no recovery")
            chain.append(step)
            step = self._tasks[step].recovery if step in self._tasks else None
        owner = self._claims.get(rid)
        if owner is not None and owner != msg_id:
            return (f"task {rid} is already the recovery task of {owner}; "
                    "give each task its own recovery task")
        r = self._tasks.get(rid)
        if (r is not None and r.state is not DORMANT) or rid in self._done:
            return (f"recovery task {rid} was submitted as an ordinary task; submit it with "
                    f"dormant=True so it waits until {msg_id} needs it")
        return None

    # ------------------------------------------------------------------ dependencies

    def _settle_and_schedule(self, out):
        """The end of most events: update the dependents of tasks that became final, then
        place what is queued; `out`, the event's decisions."""
        self._settle(out)
        self._schedule(out)
        return out

    def _settle(self, out):
        """Update the tasks waiting on tasks that just became final. A loop, not
        recursion: one failure can cascade down a chain of any length."""
        while self._released:
            msg_id, success, engine = self._released.popleft()
            for waiter in self._graph.pop(msg_id, ()):
                t = self._tasks.get(waiter)
                if t is None or t.state is not WAITING:
                    continue
                for dep in (t.after, t.follow):
                    if dep is not None and msg_id in dep["pending"]:
                        dep["pending"].discard(msg_id)
                        self._count(dep, success, engine)
                self._evaluate(t, out)

    @staticmethod
    def _count(dep, success, engine):
        if dep["success"] if success else dep["failure"]:
            dep["good"] += 1
            dep["engines"].add(engine)
        else:
            dep["bad"] += 1

    def _outcome(self, msg_id):
        """(success, engine) of a final task, from memory or the controller; DIRECT for a
        direct request's id; None if unknown."""
        known = self._done.get(msg_id)
        if known is None and self._lookup is not None:
            found = self._lookup(msg_id)
            if found is DIRECT:
                return DIRECT
            if found is not None:
                known = (found[0] == OK, found[1])
                self._remember(msg_id, *known)
        return known

    def _remember(self, msg_id, success, engine):
        self._done[msg_id] = (success, engine)
        if len(self._done) > self._history:
            self._done.popitem(last=False)

    def _impossible(self, t):
        """Why `t`'s after/follow/targets can never be met, or None (it may wait)."""
        msg_id = t.msg_id
        for key in ("after", "follow"):
            dep = getattr(t, key)
            if dep is not None and is_unreachable(dep):
                return _unreachable_reason(msg_id, key, dep)
        live = self._engines
        follow = t.follow
        if follow is not None and follow["all"]:
            engines = follow["engines"]
            if None in engines:
                return (f"task {msg_id} follows a task that never ran on an engine; "
                        "use after= for it instead of follow=")
            if len(engines) > 1:
                return (f"task {msg_id} follows tasks that ran on different engines "
                        f"{sorted(engines)}, so no engine satisfies follow with all=True; "
                        "use all=False or after= instead")
            if engines and not engines <= live.keys():
                return (f"engine {min(engines)}, where the tasks task {msg_id} follows ran, is "
                        "gone; resubmit it without follow= or rerun the tasks it follows")
        elif follow is not None and not follow["pending"]:
            if not any(e in live for e in follow["engines"]):
                return (f"none of the engines where the tasks task {msg_id} follows ran is still "
                        "registered; resubmit it without follow= or rerun the tasks it follows")
        if t.targets is not None and self._targets_gone(t.targets):
            return _targets_reason(msg_id, t.targets)
        return None

    def _follow_met(self, follow):
        if follow is None:
            return True
        if follow["all"]:
            return is_met(follow)
        return any(e in self._engines for e in follow["engines"])

    def _targets_gone(self, targets):
        # with no engine at all, tasks wait for one, unless their targets are known gone
        return (not any(e in self._engines for e in targets)
                and (bool(self._engines) or targets <= self._removed))

    # ------------------------------------------------------------------ placement

    def _where(self, t):
        """(engines, None): None for any engine, else the set `t` may use now (empty: it
        waits); or (None, why) when no engine ever will."""
        targets, follow, depend = t.targets, t.follow, t.depend
        unmet, failed_on = t.unmet, t.failed_on
        if targets is None and follow is None and depend is None and not unmet and not failed_on:
            return None, None
        live = self._engines
        msg_id = t.msg_id
        if targets is not None:
            if self._targets_gone(targets):
                return None, _targets_reason(msg_id, targets)
            engines = {e for e in targets if e in live}
        else:
            engines = set(live)
        if follow is not None:
            engines &= follow["engines"]
            if not engines:
                return None, (f"task {msg_id} must run where the tasks it follows ran "
                              f"({sorted(follow['engines'], key=str)}), and none of those engines "
                              "is registered and among its targets; resubmit it without follow=")
        if unmet:
            engines -= unmet
            if not engines and live:
                return None, (f"task {msg_id} found its functional dependencies unmet on every "
                              f"engine it may use ({sorted(unmet)}); provide what it requires "
                              "on an engine or relax its @require/@depend")
        if depend is not None:
            engines = {e for e in engines if _accepts(depend, live[e]["properties"])}
        if failed_on:
            # prefer engines where it has not failed; when none is left, any of them
            untried = engines - failed_on
            if untried:
                engines = untried
        return engines, None

    def _enqueue(self, t):
        t.gen += 1
        entry = (t.seq, t.gen, t.msg_id)
        if t.where is None:
            line = self._lines.get(t.client)
            if line is None:
                line = self._lines[t.client] = _Line(t.client)
            if entry[0] > line.tail:
                line.queue.append(entry)
                line.tail = entry[0]
            else:  # a retry or a task whose dependencies were met: older than the tail
                heapq.heappush(line.late, entry)
            if not line.ringed and not line.paused:
                line.ringed = True
                self._ring.append(line)
        else:
            for e in t.where:
                heapq.heappush(self._heaps.setdefault(e, []), entry)

    def _recheck(self, out, waiting):
        """Engines or their properties changed: recompute where the tasks restricted to
        some engines may run (rebuilding their heaps drops stale entries), and with
        `waiting` fail the waiting ones whose targets or followed engine are gone."""
        self._heaps = {}
        for msg_id in list(self._constrained):
            t = self._tasks.get(msg_id)
            if t is None or t.state is not READY:
                continue  # ended by an earlier failure's cascade
            where, why = self._where(t)
            if why:
                self._fail(t, "ImpossibleDependency", why, out)
            else:
                t.where = where
                self._enqueue(t)
        for msg_id in list(self._located) if waiting else ():
            t = self._tasks.get(msg_id)
            if t is not None and t.state is WAITING:
                why = self._impossible(t)
                if why:
                    self._fail(t, "ImpossibleDependency", why, out)

    def _head(self, heap):
        """The oldest valid entry of `heap`, dropping stale ones on the way, and setting
        aside (in their line's `held`) those of paused clients."""
        while heap:
            seq, gen, msg_id = heap[0]
            t = self._tasks.get(msg_id)
            if t is not None and t.state is READY and t.gen == gen:
                if not self._paused or t.client not in self._paused:
                    return heap[0]
                self._lines[t.client].held[msg_id] = None
            heapq.heappop(heap)
        return None

    def _any_head(self):
        """The oldest valid entry of the line whose turn it is (the head of `_ring`) of tasks
        that may run anywhere; lines found empty or paused leave the ring. Its loop is
        _head's, inline: it runs at every submit and reply (a call cost 3-5%)."""
        ring = self._ring
        while ring:
            line = ring[0]
            if not line.paused:
                queue = line.queue
                while queue:
                    seq, gen, msg_id = queue[0]
                    t = self._tasks.get(msg_id)
                    if t is not None and t.state is READY and t.gen == gen:
                        break
                    queue.popleft()
                late = self._head(line.late) if line.late else None
                if queue and (late is None or queue[0] < late):
                    return queue[0]
                if late is not None:
                    return late
                if not line.held:
                    del self._lines[line.client]   # empty: made again when it has tasks
            line.ringed = False
            ring.popleft()
        return None

    def _schedule(self, out):
        """Assign queued tasks, oldest first, while an engine they may use has room.

        Afterwards no queued task can be placed, so a task made READY later never
        overtakes an older one by taking a slot that task could have used.
        """
        engines = self._engines
        while True:
            best = self._any_head()
            if best is None and not self._heaps:
                return   # nothing queued
            free = self._free()
            if not free:
                return   # no engine has room
            for e, heap in self._heaps.items():   # only engines some task is restricted to
                if len(engines[e]["tasks"]) < engines[e]["cap"]:
                    head = self._head(heap)
                    if head is not None and (best is None or head < best):
                        best = head
            if best is None:
                return
            t = self._tasks[best[2]]
            where = t.where
            self._assign(t, free if where is None else [e for e in free if e in where], out)
            ring = self._ring   # from the line whose turn it was: the next line's turn
            if len(ring) > 1 and where is None and ring[0].client == t.client:
                ring.rotate(-1)

    def _fill(self, engine_id, out):
        """Like _schedule when only `engine_id` gained room and no task became READY:
        everywhere else nothing changed, so looking at that engine alone is enough."""
        engine = self._engines[engine_id]
        while len(engine["tasks"]) < engine["cap"]:
            best = self._any_head()
            heap = self._heaps.get(engine_id)
            head = self._head(heap) if heap else None
            if head is not None and (best is None or head < best):
                best = head
            if best is None:
                return
            t = self._tasks[best[2]]
            self._assign(t, [engine_id], out)
            ring = self._ring   # as in _schedule
            if len(ring) > 1 and t.where is None and ring[0].client == t.client:
                ring.rotate(-1)

    def _assign(self, t, candidates, out):
        """Put `t` on one of `candidates` (engines with room), chosen by the scheme."""
        self._set_state(t, ASSIGNED)
        self._clear_deadline(t)
        self._place(t, self._pick(candidates), out)

    def _free(self):
        """The engines with room, least recently used first."""
        engines = self._engines
        return [e for e in self._order if len(engines[e]["tasks"]) < engines[e]["cap"]]

    def _pick(self, candidates):
        if len(candidates) == 1:
            return candidates[0]
        return candidates[self._choose([len(self._engines[e]["tasks"]) for e in candidates])]

    def _free_engine(self):
        """The engine with room the scheme chooses for a task that may run anywhere, or
        None. leastload's is the head of `_rooms`: the lowest (load, stamp), which is the
        first lowest load in `_order`, as leastload(loads) picks it."""
        engines, rooms = self._engines, self._rooms
        if rooms is None:
            free = self._free()
            return self._pick(free) if free else None
        while rooms:
            load, stamp, engine_id = rooms[0]
            engine = engines.get(engine_id)
            if engine is not None and engine["stamp"] == stamp \
                    and len(engine["tasks"]) == load < engine["cap"]:
                return engine_id
            heapq.heappop(rooms)   # from before its load or stamp changed, or gone
        return None

    def _place(self, t, engine_id, out):
        """Put ASSIGNED `t` on `engine_id`, now the most recently used: the end of
        `_order`, and the highest stamp (an engine added goes to the front, the lowest)."""
        t.engine = engine_id
        engine = self._engines[engine_id]
        engine["tasks"][t.msg_id] = None
        engine["stamp"] = next(self._stamps)
        del self._order[engine_id]
        self._order[engine_id] = None
        self._has_room(engine_id)
        out.append(Run(RUN, t.msg_id, engine_id))

    def _has_room(self, engine_id):
        """After `engine_id`'s load, cap or stamp changed: its entry in `_rooms` if it has
        room (every engine with room has a current one). Stale entries are dropped at the
        head; should they pile up deeper, the heap is rebuilt, which is O(1) a call
        amortized."""
        rooms, engine = self._rooms, self._engines[engine_id]
        if rooms is None or len(engine["tasks"]) >= engine["cap"]:
            return
        heapq.heappush(rooms, (len(engine["tasks"]), engine["stamp"], engine_id))
        if len(rooms) > 2 * len(self._engines) + 64:
            self._rooms = [(len(e["tasks"]), e["stamp"], eid) for eid, e in self._engines.items()
                           if len(e["tasks"]) < e["cap"]]
            heapq.heapify(self._rooms)

    def _clear_deadline(self, t):
        """A deadline bounds the wait only: it ends once the task is assigned or final."""
        if t.deadline is None:
            return
        t.deadline = None
        self._n_deadlines -= 1
        if len(self._deadlines) > 2 * self._n_deadlines + 1024:
            # entries of tasks that got an engine in time pile up until their deadline;
            # rebuild rather than hold them for as long as the longest timeout
            self._deadlines = [(x.deadline, m) for m, x in self._tasks.items()
                               if x.deadline is not None]
            heapq.heapify(self._deadlines)


# ---------------------------------------------------------------------- helpers

def _unreachable_reason(msg_id, key, dep):
    if dep["success"] and not dep["failure"]:
        if dep["all"]:
            return (f"task {msg_id} needs all of its {key} dependencies to succeed and one "
                    "failed; pass a Dependency with failure=True to run it anyway")
        return (f"task {msg_id} needs one of its {key} dependencies to succeed and all "
                "failed; pass a Dependency with failure=True to run it anyway")
    return (f"task {msg_id} can never meet its {key} Dependency(all={dep['all']}, "
            f"success={dep['success']}, failure={dep['failure']}) given how those tasks "
            "ended; check the tasks it depends on")


def what_ran(order, unsent, reported, said=False):
    """What a lost engine began of `order`, the requests it had not answered in the order
    sent (it runs them in that order), as far as the controller knows: (running, ran,
    unstarted) for Scheduler.engine_removed. `unsent`: those that never left the controller
    (its `ready` never came); `reported`: the last it reported started; `said`: the last it
    began (None: none), as it stopped on its own, no other ever starting; False: unsaid."""
    unstarted = set(unsent)
    sent = [m for m in order if m not in unstarted]
    if said is not False and (said is None or said in sent):
        began = sent.index(said) + 1 if said is not None else 0
        unstarted.update(sent[began:])
        del sent[began:]
        reported = said
    running = reported if reported in sent else sent[0] if sent else None
    return running, set(sent[:sent.index(running)]) if sent else set(), unstarted


def _when_died(msg_id, running, ran, last):
    """When, in words, an engine died for its task `msg_id` (see engine_removed): what the
    controller knows, and no more. Its reply may be lost too: a task that ended just before
    the engine died (a batch's reply is held a few ms), which `ran` tells only when the
    engine had reported starting a later one. `last`: its last task that may have started."""
    if msg_id in ran:
        return (f"after running task {msg_id}, before its reply came back (it had started "
                f"task {running} since)")
    if msg_id != running:
        return (f"with task {msg_id} queued behind task {running} (it never started there "
                f"unless {running} had ended, its reply lost)")
    if last == msg_id:
        return f"while running task {msg_id}"
    return (f"while running task {msg_id} (or, had it ended with its reply lost, a task "
            "queued behind it)")


def _targets_reason(msg_id, targets):
    return (f"task {msg_id} may only run on engines {sorted(targets)} and none of them is "
            "registered; resubmit it with targets among the live engines")


def _is_plain(task):
    """No targets, dependencies, timeout, retries or recovery: see _submit_plain."""
    get = task.get
    return (get("targets") is None and get("depend") is None and get("recovery") is None
            and not (get("after") or get("follow") or get("timeout") or get("retries")
                     or get("dormant")))


def _accepts(depend, properties):
    """A classic Task(depend=f): f(properties) true allows the engine; raising refuses it."""
    try:
        return bool(depend(properties))
    except Exception:
        log.debug("depend function %r raised; engine refused", depend, exc_info=True)
        return False
