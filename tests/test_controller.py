"""The controller in-process, stepped by hand: no thread runs its loop and nothing sleeps.

A ``Controller`` is bound on loopback; the test holds plain zmq sockets that speak the
protocol with the controller's own key, and calls ``loop_once(now, timeout)`` itself::

    fake engine DEALER ──▶ ROUTER "engine" ┐
    fake heart  DEALER ──▶ ROUTER "pong"   ├─ Controller.loop_once, called by the test
    fake client DEALER ──▶ ROUTER "client" │
    fake client SUB    ◀── PUB "notify"    ┘

`now` is the test's clock, so heartbeats are counted in steps the test chooses; the
`timeout` of a step only bounds the wait for a message already on its way over loopback
(``STEP_S`` when one is expected, 0 when the step is only a tick of the clock).
"""

import marshal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from minipar import errors, protocol, top
from minipar.controller import PARKED_IDS, Controller
from minipar.scheduler import UNKNOWN_GRACE_S

from .helpers import wait_until

TIMEOUT = 30
pytestmark = pytest.mark.timeout(TIMEOUT)

PERIOD_S = 1.0   # the heartbeat period on the test's clock: no real second passes
LIVENESS = 3
STEP_S = 5       # bound on one step's wait for a message in flight on loopback


class Peer:
    """A plain zmq socket of the test's, signing and checking with the controller's key."""

    def __init__(self, ctx, hub, port, kind=zmq.DEALER, identity=None):
        self.session = protocol.Session(hub.session.key)
        self.sock = ctx.socket(kind)
        self.sock.linger = 0
        if identity:
            self.sock.identity = identity
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(f"tcp://127.0.0.1:{hub.ports[port]}")

    def send(self, kind, parts=(), **fields):
        header, frames = self.session.msg(kind, parts, **fields)
        self.sock.send_multipart(frames)
        return header

    def recv(self, timeout=STEP_S):
        """(routing ids, header, parts) of the next message, within `timeout` s."""
        assert self.sock.poll(timeout * 1000), "nothing arrived"
        idents, header, parts = self.session.check(self.sock.recv_multipart(), replay=False)
        return [bytes(i) for i in idents], header, [bytes(p) for p in parts]

    def recv_items(self, n):
        """The headers of the next `n` messages, each of a batch counted (see Session.pack)."""
        items = []
        while len(items) < n:
            _, header, parts = self.recv()
            items += [h for h, _ in self.session.unbatch(header, parts)]
        return items

    def recv_notice(self):
        """The next notification, skipping the probes of ``hub_of``."""
        while True:
            idents, header, _ = self.recv()
            if idents != [b"probe"]:
                return idents[0].decode(), header


@pytest.fixture
def hub(tmp_path):
    """A bound Controller with a fake client (``hub.client``, ``hub.notices``) and
    ``hub.clock``, the `now` of its next step."""
    c = Controller(profile_dir=str(tmp_path / "profile"), heartbeat_period=PERIOD_S,
                   heartbeat_liveness=LIVENESS)
    c.bind()
    c.test_ctx = zmq.Context()
    c.clock = 1000.0
    try:
        c.client = Peer(c.test_ctx, c, "client")
        c.notices = Peer(c.test_ctx, c, "notify", zmq.SUB)
        # a PUB drops what it sends before a subscription has arrived: publish probes on
        # the controller's own socket (this thread owns it) until one is heard
        def heard():
            c.sockets["notify"].send_multipart([b"probe", *c.session.msg("probe")[1]])
            return c.notices.sock.poll(10)

        wait_until(heard, TIMEOUT, "the fake client's subscription")
        step(c, timeout=0)   # the first beat
        yield c
    finally:
        c.close()
        c.test_ctx.destroy(linger=0)


def step(hub, timeout=STEP_S, beat=False):
    """One pass of the controller's loop; `beat`: the clock moves on one heartbeat period
    first, so this pass sends a ping and counts who missed the last one."""
    if beat:
        hub.clock += PERIOD_S
    hub.loop_once(hub.clock, timeout)


def register(hub, name, **fields):
    """A fake engine registered through the controller: (its socket, its id)."""
    engine = Peer(hub.test_ctx, hub, "engine", identity=name)
    reg = engine.send(protocol.REGISTER, pid=1234, host="fake", **fields)
    step(hub)
    _, reply, _ = engine.recv()
    assert reply["kind"] == protocol.REGISTER_REPLY
    assert reply["parent"] == reg["msg_id"]
    return engine, reply["id"]


def test_an_engine_registers_gets_its_id_and_clients_are_told(hub):
    engine, eid = register(hub, b"engine-a")
    assert eid == 0 and list(hub.engines) == [0]
    assert hub.engines[0]["ident"] == b"engine-a" and hub.engines[0]["pid"] == 1234
    kind, notice = hub.notices.recv_notice()
    assert kind == notice["kind"] == protocol.ENGINE_REGISTERED
    assert notice["id"] == 0 and notice["info"]["host"] == "fake"
    # the next gets the next id; one asking for a free id gets it
    _, second = register(hub, b"engine-b")
    _, wanted = register(hub, b"engine-c", id=7)
    assert (second, wanted) == (1, 7)
    assert [hub.notices.recv_notice()[1]["id"] for _ in range(2)] == [1, 7]
    # a client connecting now is told of all three
    connect = hub.client.send(protocol.CONNECT)
    step(hub)
    _, reply, _ = hub.client.recv()
    assert reply["parent"] == connect["msg_id"] and reply["status"] == "ok"
    assert sorted(reply["engines"]) == [0, 1, 7]


def test_a_registration_with_fields_of_the_wrong_type_is_refused(hub):
    engine = Peer(hub.test_ctx, hub, "engine", identity=b"liar")
    engine.send(protocol.REGISTER, pid="not a pid")
    step(hub)
    _, reply, _ = engine.recv()
    assert reply["kind"] == protocol.UNREGISTER and reply["fatal"]
    assert "registration refused" in reply["reason"]
    assert hub.engines == {}


def test_a_direct_request_reaches_its_engine_and_the_reply_its_client(hub):
    engines = dict(register(hub, name)[::-1] for name in (b"engine-a", b"engine-b"))
    request = hub.client.send(protocol.APPLY, [b"function", b"arguments"], engine=1,
                              counts=[1, 1])
    step(hub)
    idents, header, parts = engines[1].recv()
    assert header["msg_id"] == request["msg_id"] and parts == [b"function", b"arguments"]
    assert idents == [hub.engines[1]["reg"]]   # under the engine's current registration
    assert not engines[0].sock.poll(0)
    assert hub.db.get(request["msg_id"])["engine"] == 1
    engines[1].send(protocol.APPLY_REPLY, [b"result"],
                    parent=request["msg_id"], status="ok", engine=1)
    step(hub)
    _, reply, parts = hub.client.recv()
    assert reply["parent"] == request["msg_id"] and reply["status"] == "ok"
    assert parts == [b"result"]
    assert hub.db.get(request["msg_id"])["status"] == "ok"
    assert not hub.engines[1]["outstanding"]


def test_a_reply_routed_by_its_prefix_answers_queries_with_its_whole_header(hub):
    """The controller reads a task's reply by its routing prefix alone (status, times,
    parent); the rest of its header (stdout, ename...) is read when a query asks for it."""
    engines = dict(register(hub, name)[::-1] for name in (b"engine-a",))
    request = hub.client.send(protocol.APPLY, [b"f"], engine=0, counts=[1])
    step(hub)
    engines[0].recv()
    engines[0].send(protocol.APPLY_REPLY, [b"result"], parent=request["msg_id"],
                    status="ok", engine=0, started=1.5, completed=2.5, stdout="said so")
    step(hub)
    hub.client.recv()
    rec = hub.db.get(request["msg_id"])
    assert "stdout" not in rec["result_header"] and rec["result_header"]["status"] == "ok"
    query = hub.client.send(protocol.DB_QUERY, query={"msg_id": request["msg_id"]},
                            keys=["stdout", "result_header", "started", "status"])
    step(hub)
    _, reply, _ = hub.client.recv()
    assert reply["parent"] == query["msg_id"]
    [found] = reply["records"]
    assert found["stdout"] == "said so" and found["started"] == 1.5
    assert found["status"] == "ok" and found["result_header"]["completed"] == 2.5
    assert found["result_header"]["stdout"] == "said so"
    assert "result_hb" not in hub.db.get(request["msg_id"])


def test_a_message_of_an_older_minipar_is_refused_naming_both_wire_versions(hub, caplog):
    """A client of a minipar before the routing prefix signs a marshalled header with the
    same key: the controller refuses it, telling it (and its log) both versions."""
    old = marshal.dumps({"msg_id": protocol.new_id(), "kind": protocol.APPLY, "engine": 0,
                         "session": hub.client.session.session}, 4)
    hub.client.sock.send_multipart([protocol.DELIM, hub.client.session.sign(old), old])
    with caplog.at_level("WARNING", logger="minipar.controller"):
        step(hub)
    assert hub.client.sock.poll(STEP_S * 1000)
    frames = hub.client.sock.recv_multipart()
    assert protocol.is_refusal(frames)
    says = "wire version 1, from an older minipar; this process speaks version 2"
    assert says in frames[2].decode() and says in caplog.text
    assert hub.session.dropped["bad header"] == 1 and not hub.db.find_records({}, ["msg_id"])


def test_a_request_for_an_unknown_engine_fails_at_once(hub):
    register(hub, b"engine-a")
    request = hub.client.send(protocol.APPLY, [b"f"], engine=5, counts=[1])
    step(hub)
    _, reply, parts = hub.client.recv()
    assert reply["parent"] == request["msg_id"] and reply["ename"] == "EngineError"
    assert "engine 5 is not registered" in reply["evalue"]
    error = protocol.deserialize(parts)   # labelled as CompositeError shows it: [5:apply]
    assert error.engine_info == {"msg_id": request["msg_id"], "kind": "apply", "engine_id": 5}


def test_an_engine_that_misses_heartbeats_is_declared_dead_and_its_request_fails(hub):
    silent, dead = register(hub, b"silent")
    heart = Peer(hub.test_ctx, hub, "pong", identity=b"beating")   # the other's heart
    beating, alive = register(hub, b"beating")
    request = hub.client.send(protocol.APPLY, [b"f"], engine=dead, counts=[1])
    step(hub)
    assert silent.recv()[1]["msg_id"] == request["msg_id"]   # it has it, and never answers
    for n in range(LIVENESS):
        heart.sock.send(b"%d" % hub._beat)   # a pong: the beat number, unsigned
        step(hub)                            # the pong arrives
        step(hub, timeout=0, beat=True)
        assert dead in hub.engines, f"declared dead after {n + 1} missed beats"
    heart.sock.send(b"%d" % hub._beat)
    step(hub)
    step(hub, timeout=0, beat=True)   # one more missed beat than the liveness allows
    assert dead not in hub.engines and alive in hub.engines
    _, reply, parts = hub.client.recv()
    assert reply["parent"] == request["msg_id"] and reply["status"] == "error"
    assert reply["ename"] == "EngineError"
    err = protocol.deserialize(parts)
    assert isinstance(err, errors.EngineError) and f"engine {dead} died" in str(err)
    kinds = [hub.notices.recv_notice()[0] for _ in range(3)]
    assert kinds == [protocol.ENGINE_REGISTERED] * 2 + [protocol.ENGINE_DIED]
    _, notice, _ = silent.recv()
    assert notice["kind"] == protocol.UNREGISTER and "missed heartbeats" in notice["reason"]


def test_a_controller_that_did_not_run_for_many_periods_declares_no_engine_dead(hub):
    """Liveness counts the beats this controller sent, not seconds: a pass many periods
    late (the controller itself starved or stopped, its engines' pongs still unread) is
    one beat, and costs no engine its life."""
    _, eid = register(hub, b"engine-a")
    hub.clock += 10 * LIVENESS * PERIOD_S
    step(hub, timeout=0, beat=True)
    assert eid in hub.engines
    for _ in range(LIVENESS):   # but beats it sent and nobody answered still count
        step(hub, timeout=0, beat=True)
    assert eid not in hub.engines


def test_an_engine_whose_process_ended_is_heard_out_before_it_is_declared_dead(hub):
    """An engine seen gone by its pid is declared dead only at the next beat still gone:
    its unregister, sent just before it ended (why it gave up on a frozen controller),
    may still be on its way. Before, the first beat on time that saw its pid gone failed
    its request as a death, hiding that reason (test_restart's frozen-controller test
    failed so once under load)."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    heart = Peer(hub.test_ctx, hub, "pong", identity=b"e")
    engine = Peer(hub.test_ctx, hub, "engine", identity=b"e")
    engine.send(protocol.REGISTER, pid=ended.pid, host=hub._host, pidns=hub._pidns)
    step(hub)
    eid = engine.recv()[1]["id"]
    request = hub.client.send(protocol.APPLY, [b"f"], engine=eid, counts=[1])
    step(hub)
    assert engine.recv()[1]["msg_id"] == request["msg_id"]
    heart.sock.send(b"%d" % hub._beat)
    step(hub)
    step(hub, timeout=0, beat=True)   # its pid is gone: at the first beat, kept
    assert eid in hub.engines
    engine.send(protocol.UNREGISTER, reason="it stopped because the controller was silent")
    step(hub)
    _, reply, parts = hub.client.recv()
    assert reply["parent"] == request["msg_id"] and reply["ename"] == "EngineError"
    assert "the controller was silent" in str(protocol.deserialize(parts))
    again = Peer(hub.test_ctx, hub, "engine", identity=b"again")   # one that says nothing
    again.send(protocol.REGISTER, pid=ended.pid, host=hub._host, pidns=hub._pidns)
    step(hub)
    second = again.recv()[1]["id"]
    step(hub, timeout=0, beat=True)
    assert second in hub.engines
    step(hub, timeout=0, beat=True)   # still gone a beat later: dead
    assert second not in hub.engines


def test_a_beat_folds_the_status_counts_of_long_ago_into_the_totals(hub):
    """The per-second counts are keyed by wall-clock seconds and each beat folds the old
    ones into the totals. The beat passed its monotonic clock, so nothing was ever folded:
    the counts grew by a key a second for as long as the controller ran."""
    long_ago = int(time.time()) - 10 * top.WINDOW_S
    hub.tally.finished[long_ago, True] += 3
    step(hub, timeout=0, beat=True)
    assert (long_ago, True) not in hub.tally.finished
    assert hub.tally.outcomes()[True] == 3   # still counted as done


@pytest.mark.parametrize("beat", [{"heartbeat_period": 0}, {"heartbeat_period": -1},
                                  {"heartbeat_liveness": 0}])
def test_a_heartbeat_that_cannot_work_is_refused(tmp_path, beat):
    # a period of 0 spun the hub loop; a liveness of 0 declared each engine dead at each beat
    with pytest.raises(ValueError, match="heartbeat (period|liveness) must be"):
        Controller(profile_dir=str(tmp_path), **beat)


def test_an_engine_gone_in_the_pass_that_stopped_the_controller_fails_no_request(hub):
    """A client's shutdown(hub=True) tells the engines to stop; one that unregisters at
    once could be heard in the same pass of the loop, after the controller had stopped,
    and its request failed as EngineError ("unregistered before answering") rather than
    left to the client, which fails it as shut down with the controller (seen as a flaky
    test_client::test_after_shutting_the_controller_down_the_client_says_so_at_once)."""
    engine, eid = register(hub, b"engine-a")
    request = hub.client.send(protocol.APPLY, [b"f"], engine=eid, counts=[1])
    step(hub)
    assert engine.recv()[1]["msg_id"] == request["msg_id"]
    shutdown = hub.client.send(protocol.SHUTDOWN, hub=True)
    engine.send(protocol.UNREGISTER, reason="shutdown requested")
    wait_until(lambda: all(hub.sockets[s].poll(0) for s in ("client", "engine")), STEP_S,
               "the shutdown and the unregister at the controller")
    step(hub)   # the client's socket is polled first: the shutdown, then the unregister
    assert hub._stop
    _, reply, _ = hub.client.recv()
    assert reply["parent"] == shutdown["msg_id"] and reply["status"] == "ok"
    assert not hub.client.sock.poll(500), "a reply for the request the stopper waits on"
    assert hub.db.get(request["msg_id"])["status"] == "pending"



def _queued_behind_a_long_task(hub, take_back):
    """Fake engine A (registered with `take_back`, or without the field as an engine of
    an older minipar) holds load-balanced tasks R and U; engine B comes with room, and A
    says R runs long. Returns (A's socket, A's id, R's msg_id, U's msg_id)."""
    fields = {} if take_back is None else {"take_back": take_back}
    engine, eid = register(hub, b"engine-a", **fields)
    ids = [hub.client.send(protocol.APPLY, [b"f"], lb=True, counts=[1])["msg_id"]
           for _ in range(2)]
    wait_until(lambda: step(hub) or all(hub.db.get(m) and hub.db.get(m)["engine"] == eid
                                        for m in ids), TIMEOUT, "both tasks sent to A")
    register(hub, b"engine-b", take_back=True)
    engine.send(protocol.STARTED, parent=ids[0], engine=eid, started=time.time(), long=True)
    step(hub)
    return engine, eid, ids[0], ids[1]


def _controls_before_a_probe(hub, engine, eid):
    """The control messages `engine` receives before a direct request sent now (one
    connection, in order: all the controller sent it so far)."""
    probe = hub.client.send(protocol.APPLY, [b"f"], engine=eid, counts=[1])["msg_id"]
    step(hub)
    seen = []
    while True:
        _, header, _ = engine.recv()
        if header.get("msg_id") == probe:
            return seen
        if header["kind"] not in (protocol.APPLY, protocol.BATCH):
            seen.append(header)


@pytest.mark.parametrize("take_back", [None, True])
def test_only_an_engine_that_registered_saying_it_takes_back_is_asked_to(hub, take_back):
    """An engine of a minipar from before take-backs reads one as an abort of the tasks it
    names: they would fail as TaskAborted though nobody aborted them. So an engine that
    did not register with `take_back` is not asked; it runs what waits behind its long
    task, as before."""
    engine, eid, running, queued = _queued_behind_a_long_task(hub, take_back)
    controls = _controls_before_a_probe(hub, engine, eid)
    if take_back:
        assert [(h["kind"], h["running"], h["msg_ids"]) for h in controls] == [
            (protocol.ABORT, running, [queued])]
    else:
        assert controls == []
        assert hub.db.get(queued)["engine"] == eid


def test_a_take_back_answer_naming_tasks_not_asked_for_moves_only_those_asked(hub):
    """An engine's answer is trusted only for the tasks its take-back named: one naming
    its running task too (a bad engine) must not have it run a second time elsewhere."""
    engine, eid, running, queued = _queued_behind_a_long_task(hub, take_back=True)
    (ask,) = _controls_before_a_probe(hub, engine, eid)
    engine.send(protocol.ABORT_MARKED, parent=ask["parent"], taken=[running, queued])
    step(hub)
    assert hub.db.get(running)["engine"] == eid
    assert hub.db.get(queued)["engine"] != eid


def test_a_query_overtaking_another_clients_request_waits_for_it(hub):
    """Each client sends on its own connection, so client 2's question about a request
    client 1 just made can come first: it waits for the request rather than call it
    unknown, and so does a db_query naming it."""
    _, eid = register(hub, b"engine-a")
    other = Peer(hub.test_ctx, hub, "client")
    header, frames = hub.client.session.msg(protocol.APPLY, [b"f"], engine=eid, counts=[1])
    msg_id = header["msg_id"]   # handed to the other client before its request left
    asks = [other.send(protocol.RESULT_REQUEST, msg_ids=[msg_id]),
            other.send(protocol.RESULT_REQUEST, msg_ids=[msg_id], status_only=True),
            other.send(protocol.DB_QUERY, query={"msg_id": msg_id}, keys=["engine"])]
    wait_until(lambda: step(hub, timeout=0.1) or hub.stats["parked"] == 3
               or other.sock.poll(0), TIMEOUT, "the questions read, before the request")
    assert not other.sock.poll(0), "answered before the request came"
    hub.client.sock.send_multipart(frames)
    step(hub)
    replies = {h["parent"]: h for h in other.recv_items(len(asks))}   # as one batch
    for ask in asks[:2]:
        reply = replies[ask["msg_id"]]
        assert (reply["pending"], reply["unknown"]) == ([msg_id], [])
    assert replies[asks[2]["msg_id"]]["records"] == [{"msg_id": msg_id, "engine": eid}]
    assert len(hub.db.get(msg_id)["watchers"]) == 1   # get_result's, not again as it waited


def test_an_abort_overtaking_the_request_it_names_aborts_it(hub):
    """Another client's abort of a task that has not come yet waits for it, so the task
    is aborted rather than run (it once found nothing to abort)."""
    other = Peer(hub.test_ctx, hub, "client")
    header, frames = hub.client.session.msg(protocol.APPLY, [b"f"], lb=True, counts=[1])
    abort = other.send(protocol.ABORT, msg_ids=[header["msg_id"]])
    wait_until(lambda: step(hub, timeout=0.1) or hub.stats["parked"] or other.sock.poll(0),
               TIMEOUT, "the abort read, before the task")
    assert not other.sock.poll(0), "answered before the task came"
    hub.client.sock.send_multipart(frames)
    step(hub)
    _, reply, _ = other.recv()
    assert reply["parent"] == abort["msg_id"] and reply["pending"] == 1
    _, failed, _ = hub.client.recv()
    assert failed["parent"] == header["msg_id"] and failed["ename"] == "TaskAborted"


def test_a_reply_goes_after_what_the_same_pass_posted_for_its_client(hub):
    """Within one drain of the loop, what requests make for their client is posted, to
    go at the drain's end: the answer to a later request went out at once, ahead of it.
    An abort's answer came before the failures of the tasks it aborted, so a client whose
    abort() had returned could find them not done yet."""
    session = hub.client.session
    task, task_wire = session.msg(protocol.APPLY, [b"f"], lb=True, counts=[1], signed=False)
    abort, abort_wire = session.msg(protocol.ABORT, msg_ids=[task["msg_id"]], signed=False)
    [batch] = session.pack([task_wire, abort_wire])   # read in one drain, whatever the load
    hub.client.sock.send_multipart(batch)
    step(hub)
    heard = hub.client.recv_items(2)
    assert [h["parent"] for h in heard] == [task["msg_id"], abort["msg_id"]]
    assert heard[0]["ename"] == "TaskAborted" and heard[1]["pending"] == 1


def test_an_id_that_never_comes_is_unknown_after_the_grace_and_others_at_once(hub):
    """A query naming an id of minipar's shape that never comes says "unknown" after
    UNKNOWN_GRACE_S; one of another shape, one purged, or one past the bound on what
    waits is answered at once, and waiting queries are answered as the controller stops."""
    other = Peer(hub.test_ctx, hub, "client")
    never = protocol.new_id()
    waits = other.send(protocol.RESULT_REQUEST, msg_ids=[never, "no-such-id"])
    foreign = other.send(protocol.RESULT_REQUEST, msg_ids=["no-such-id"])
    too_many = other.send(protocol.RESULT_REQUEST,
                          msg_ids=[protocol.new_id() for _ in range(PARKED_IDS)])
    answered = []
    wait_until(lambda: step(hub, timeout=0.1) or other.sock.poll(0) and answered.append(
        other.recv()) or len(answered) == 2, TIMEOUT, "the answers of those not waiting")
    assert sorted(h["parent"] for _, h, _ in answered) == sorted(
        [foreign["msg_id"], too_many["msg_id"]])
    assert hub.stats["parked"] == 1 and not other.sock.poll(0)
    hub.clock += UNKNOWN_GRACE_S + STEP_S   # from when it was read: a step's wait after
    step(hub, timeout=0)
    _, reply, _ = other.recv()
    assert reply["parent"] == waits["msg_id"] and reply["unknown"] == [never, "no-such-id"]
    # a purged id is known to be gone: no wait
    hub.client.send(protocol.PURGE, msg_ids=[never])
    step(hub)
    hub.client.recv()
    purged = other.send(protocol.RESULT_REQUEST, msg_ids=[never])
    step(hub)
    _, reply, _ = other.recv()
    assert reply["parent"] == purged["msg_id"] and reply["unknown"] == [never]
    # one still waiting as a client stops the controller is answered then
    waits = other.send(protocol.RESULT_REQUEST, msg_ids=[protocol.new_id()])
    wait_until(lambda: step(hub, timeout=0.1) or hub.stats["parked"] == 2, TIMEOUT,
               "the question read")
    hub.client.send(protocol.SHUTDOWN, hub=True)
    wait_until(lambda: step(hub, timeout=0.1) or hub._stop, TIMEOUT, "the shutdown read")
    _, reply, _ = other.recv()
    assert reply["parent"] == waits["msg_id"] and len(reply["unknown"]) == 1


def test_a_question_read_late_in_a_quiet_pass_waits_its_whole_grace(hub):
    """A quiet controller's pass waits up to a heartbeat period (0.1..5 s) for a message;
    a question read late in it still waits UNKNOWN_GRACE_S from when it came for the
    request it names (it once counted from the pass's start: after a wait that long, no
    grace at all, and "unknown" for a request a moment behind it)."""
    other = Peer(hub.test_ctx, hub, "client")
    header, frames = hub.client.session.msg(protocol.APPLY, [b"f"], lb=True, counts=[1])
    asked = []   # the question comes this late in the pass, sent by a timer's thread
    timer = threading.Timer(UNKNOWN_GRACE_S + 0.5, lambda: asked.append(other.send(
        protocol.RESULT_REQUEST, msg_ids=[header["msg_id"]], status_only=True)))
    timer.start()
    hub.loop_once(time.monotonic(), UNKNOWN_GRACE_S + STEP_S)   # as run() calls it
    timer.join()
    assert hub.stats["parked"] == 1
    hub.loop_once(time.monotonic(), 0)   # the next pass, at once
    hub.client.sock.send_multipart(frames)   # the request, a moment behind the question
    wait_until(lambda: hub.loop_once(time.monotonic(), 0.1) or other.sock.poll(0), TIMEOUT,
               "the answer")
    _, reply, _ = other.recv()
    assert reply["parent"] == asked[0]["msg_id"]
    assert (reply["pending"], reply["unknown"]) == ([header["msg_id"]], [])


def test_after_a_reuse_restart_a_direct_request_waits_for_its_engine_a_bounded_time(tmp_path):
    """A controller restarted with --reuse hears from its engines a beat or two later: a
    direct request for an engine not back yet waits for it (delivered once it registers,
    failed if aborted), up to 2 liveness periods, then fails as one for an engine never
    seen; past that grace such a request fails at once."""
    profile = str(tmp_path / "profile")
    first = Controller(profile_dir=profile, reuse=True)
    first.bind()
    first.close()   # as killed: --reuse leaves its files
    hub = Controller(profile_dir=profile, reuse=True, heartbeat_period=PERIOD_S,
                     heartbeat_liveness=LIVENESS)
    hub.bind()
    hub.test_ctx, hub.clock = zmq.Context(), 1000.0
    try:
        assert hub.ports == first.ports and hub.session.key == first.session.key
        hub.client = Peer(hub.test_ctx, hub, "client")
        step(hub, timeout=0)   # the first beat
        waits, aborted, gone = (hub.client.send(protocol.APPLY, [b"f"], engine=e, counts=[1])
                                for e in (0, 1, 5))
        step(hub)
        abort = hub.client.send(protocol.ABORT, msg_ids=[aborted["msg_id"]])
        step(hub)
        replies = {h["parent"]: h for h in hub.client.recv_items(2)}
        assert replies[aborted["msg_id"]]["ename"] == "TaskAborted"
        assert replies[abort["msg_id"]]["status"] == protocol.OK
        engine, eid = register(hub, b"engine-a", id=0)
        assert eid == 0
        _, request, _ = engine.recv()
        assert request["msg_id"] == waits["msg_id"]
        engine.send(protocol.UNREGISTER)   # it has no heart here: gone before the beats below
        step(hub)
        _, reply, _ = hub.client.recv()
        assert reply["parent"] == waits["msg_id"] and "unregistered" in reply["evalue"]
        for _ in range(2 * LIVENESS - 1):   # the first beat was at the start
            step(hub, timeout=0, beat=True)
        assert not hub.client.sock.poll(200)   # engine 5 may still come
        step(hub, timeout=0, beat=True)   # 2 liveness periods after the start
        _, reply, _ = hub.client.recv()
        assert reply["parent"] == gone["msg_id"] and reply["ename"] == "EngineError"
        assert "engine 5 is not registered (registered: [])" in reply["evalue"]
        late = hub.client.send(protocol.APPLY, [b"f"], engine=6, counts=[1])
        step(hub)
        _, reply, _ = hub.client.recv()
        assert reply["parent"] == late["msg_id"] and "engine 6 is not registered" in reply["evalue"]
    finally:
        hub.close()
        hub.test_ctx.destroy(linger=0)


def test_a_burst_to_sqlite_is_written_a_bounded_chunk_a_pass(tmp_path):
    """--db sqlite wrote every record a pass read: the pass that found a burst of 20,000
    no-op tasks waiting (256 batches of them) wrote thousands, 0.3-1.9 s with no heartbeat
    sent and no reply, and engines with a short heartbeat gave up. A pass now stops reading
    at WRITES_PER_PASS records to write (one batch more at most, each socket), and commits.
    Real engines and a real client; this test steps the hub (a thread, till they are in)."""
    import minipar
    from minipar.records import WRITES_PER_PASS
    hub = Controller(profile_dir=str(tmp_path / "profile"), db="sqlite")
    hub.bind()
    engines, stop = [], threading.Event()
    serving = threading.Thread(target=lambda: [hub.loop_once(time.monotonic(), 0.01)
                                               for _ in iter(stop.is_set, True)])
    serving.start()
    try:
        engines += [subprocess.Popen([sys.executable, "-m", "minipar.engine", "--file",
                                      hub.engine_file], stdin=subprocess.DEVNULL)
                    for _ in range(2)]
        rc = minipar.Client(hub.client_file)
        rc.wait_for_engines(2, TIMEOUT)
        stop.set()
        serving.join(TIMEOUT)
        lview = rc.load_balanced_view()
        ars = [lview.apply_async(abs, -i) for i in range(20_000)]   # waiting, till we step
        writes = []
        while not all(ar.done() for ar in ars):
            before = hub.db._db.total_changes
            hub.loop_once(time.monotonic(), 0.01)
            writes.append(hub.db._db.total_changes - before)
        assert [ar.get(0) for ar in ars] == list(range(20_000))
        assert max(writes) <= 2 * WRITES_PER_PASS, sorted(writes)[-5:]
        assert len(hub.engines) == 2 and all(e.poll() is None for e in engines)
        rc.close()
    finally:
        stop.set()
        serving.join(TIMEOUT)
        hub.close()
        for e in engines:
            e.kill()
            e.wait(TIMEOUT)
