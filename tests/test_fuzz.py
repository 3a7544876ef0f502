"""Fuzzing: thousands of bad messages at every socket that receives, then real work.

Each test throws a seeded mix of bad messages at one receiver (the controller's client,
engine and pong sockets; an engine, through a fake controller holding its key; a client,
through a fake controller) and then checks three things: the receiver is still up, it
serves well-formed requests correctly afterwards, and its counters account for what it
dropped. Pickles that would create a marker file when unpickled ride in unsigned
headers, signed headers and parts whose digest does not match; the marker must never
appear (a positive control shows the marker does appear when a trusted, correctly
signed request carries such a pickle, so the check can fail).

The kinds of bad message (``Fuzzer``):
random frames; a delimiter with random signature and header; truncated messages; too
large ones (many frames over the limit, and one frame over it, which zmq answers by
dropping the connection); unsigned and wrongly signed ones; replays of valid ones;
correctly signed garbage headers (not a pickle, not a dict, no kind, classes inside);
correctly signed headers with parts that do not match their digest; unknown kinds;
known kinds with fields of every wrong type; requests for unknown msg_ids and engines.
"""

import marshal
import os
import pickle
import random
import struct
import threading
import time

import pytest
import zmq

import minipar
from minipar import errors, protocol

from .conftest import LocalCluster
from .fakes import FakeHub
from .helpers import wait_until

TIMEOUT = 180
pytestmark = pytest.mark.timeout(TIMEOUT)

SEED = int(os.environ.get("MINIPAR_FUZZ_SEED", "20240611"))
MAX_MESSAGE_SIZE = 1 << 20    # small, so "too large" costs little to send


class Evil:
    """Unpickling this runs a shell command: it must only ever happen to trusted data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


# Field values of every wrong type, for the fields the receivers read.
WEIRD = [None, True, -1, 0, 1, 2**70, 1e308, float("inf"), float("nan"), "", "x" * 300,
         "all", [], [1, 2], [[1]], ["a", None], {}, {"ids": 5}, {"ids": ["a"], "all": "no"},
         b"bytes", (1, "2"), {"a": {"b": [1, {2: 3}]}}]
NOT_STR = [w for w in WEIRD if not isinstance(w, str)]
# A routing prefix naming no field (see protocol.pack_header): the rest is read whole.
ROUTING = protocol.pack_header({})[:-len(marshal.dumps({}, 4))]
FIELDS = ["engine", "targets", "after", "follow", "timeout", "retries", "recovery",
          "time_limit", "msg_ids", "names", "code", "counts", "op", "keys", "lb", "query",
          "keys_", "hub", "id", "properties", "pid", "python", "reason", "parent", "name",
          "text", "dormant", "map", "session", "verbose", "cpu_s", "rss", "clock_s", "task",
          "since"]
# Kinds a signed fuzzer may send without stopping what it fuzzes (shutdown would, by design).
KINDS = [k for k in (protocol.APPLY, protocol.EXECUTE, protocol.PUSH, protocol.PULL,
                     protocol.KEYS, protocol.CLEAR, protocol.PROPERTIES, protocol.ABORT,
                     protocol.INTERRUPT, protocol.CONNECT, protocol.QUEUE_STATUS,
                     protocol.RESULT_REQUEST, protocol.PURGE, protocol.RESUBMIT,
                     protocol.DB_QUERY, protocol.STREAM, protocol.STATS, protocol.STATUS,
                     protocol.USAGE,
                     "no_such_kind", "apply_reply", "register_reply", "")]


class Fuzzer:
    """Makes bad messages (lists of frames, without routing ids) and counts by kind."""

    def __init__(self, key, seed=SEED, max_message_size=MAX_MESSAGE_SIZE):
        self.rng = random.Random(seed)
        self.key = key
        self.session = protocol.Session(key)
        self.stranger = protocol.Session(os.urandom(32).hex())
        self.max = max_message_size
        self.sent = {}

    def _count(self, what, frames):
        self.sent[what] = self.sent.get(what, 0) + 1
        return frames

    def _bytes(self, lo=0, hi=64):
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def _valid(self, kind=protocol.QUEUE_STATUS, parts=(), **fields):
        return self.session.msg(kind, parts, **fields)[1]

    # each returns frames; the name says which counter of the receiver it should move
    def malformed(self):
        r = self.rng.random()
        if r < 0.4:
            return self._count("malformed", [self._bytes(1) for _ in range(self.rng.randint(1, 5))])
        if r < 0.7:   # a packed message (see protocol.send) whose lengths do not add up
            return self._count("malformed", [protocol.PACKED + self._bytes()])
        return self._count("malformed", [protocol.DELIM, self._bytes()][:self.rng.randint(1, 2)])

    def bad_signature(self):
        r = self.rng.random()
        if r < 0.25:    # random signature and header
            frames = [protocol.DELIM, self._bytes(32, 32), self._bytes()]
            return self._count("bad signature", frames)
        if r < 0.5:     # signed with another key
            _, frames = self.stranger.msg(self.rng.choice(KINDS))
            return self._count("bad signature", frames)
        if r < 0.75:    # unsigned
            frames = self._valid()
            return self._count("bad signature", [frames[0], b"", *frames[2:]])
        frames = self._valid(protocol.PUSH, [self._bytes(1)])   # truncated header
        return self._count("bad signature", [frames[0], frames[1], frames[2][:-3], *frames[3:]])

    def bad_header(self):
        r = self.rng.random()
        # each unique (a nonce): a repeated header would be refused as a replay first
        nonce = self.rng.random()
        # after a routing prefix naming nothing (or none: another wire version), what is read
        head = ROUTING if self.rng.random() < 0.8 else b""
        if r < 0.2:
            hb = self._bytes(16)
        elif r < 0.3:   # marshal would allocate the count it is told: seconds, were it read
            code = self.rng.choice(b"([<>\xa8\xdb")
            hb = head + self._bytes(0, 32) + bytes([code]) + self.rng.randbytes(4) \
                + self._bytes(0, 8)
        elif r < 0.5:
            hb = head + pickle.dumps([self.rng.choice([[1, 2], "kind", 7, None]), nonce])
        elif r < 0.7:
            hb = head + pickle.dumps({"msg_id": self.rng.choice(NOT_STR),
                                      "kind": self.rng.choice(WEIRD), "nonce": nonce})
        elif r < 0.85:
            hb = head + pickle.dumps({"msg_id": "x", "kind": "apply", "f": os.system,
                                      "nonce": nonce})
        else:   # a valid header cut short, then signed: the signature is right, the rest not
            # (a task's whose prefix reads is answered by its engine instead: see below)
            hb = protocol.pack_header({"msg_id": protocol.new_id(), "kind": "connect"})[:-2]
        return self._count("bad header", [protocol.DELIM, self.session.sign(hb), hb])

    def replay(self, frames):
        """Frames of a valid message, to be sent twice: the second is the replay."""
        self._count("replayed", frames)
        return frames

    def too_large(self):
        n = self.rng.randint(2, 4)
        part = b"\0" * (self.max // n + 1)     # each frame under the limit, all of them over
        return self._count("too large", self._valid(protocol.PUSH, [part] * n, engine=0))

    def signed_weird(self, evil_path=None):
        """Correctly signed, well-formed headers of known and unknown kinds whose fields
        have every wrong type; parts are garbage, sometimes not matching their digest."""
        fields = {name: self.rng.choice(WEIRD) for name in self.rng.sample(FIELDS, 4)}
        fields.pop("session", None)
        if isinstance(fields.get("retries"), int) and fields["retries"] > 3:
            fields["retries"] = 3   # valid, but a task retried 2**70 times only wastes time
        kind = self.rng.choice(KINDS)
        parts = [self._bytes(1) for _ in range(self.rng.randint(0, 2))]
        header = {"msg_id": protocol.new_id(), "kind": kind, "session": self.session.session,
                  "parent": None, "date": time.time(), **fields}
        frames = self.session.frames(header, parts)
        if evil_path is not None and parts:
            # the digest covers the garbage; the evil pickle rides in its place
            frames = [*frames[:3], pickle.dumps(Evil(evil_path)), *frames[4:]]
        return self._count("signed", frames)


def check_serves(rc, n_engines):
    """A well-formed client gets correct answers from every engine and through the LB view."""
    rc.wait_for_engines(n_engines, 30)
    dv = rc[:]
    assert dv.apply_sync(lambda x: x * 2, 21) == [42] * len(rc.ids)
    dv.push({"a": 5}, block=True)
    assert dv.pull("a", block=True) == [5] * len(rc.ids)
    lview = rc.load_balanced_view()
    assert lview.map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]


# ------------------------------------------------------------------ the controller

@pytest.fixture
def fuzz_cluster(tmp_path):
    c = LocalCluster(tmp_path, controller_args=["--max-message-size", str(MAX_MESSAGE_SIZE)])
    try:
        c.start_engines(2)
        c.rc = c.client()
        c.rc.wait_for_engines(2, 30)
        yield c
    finally:
        c.stop()


def _dealer(ctx, info, name):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 0
    s.connect(protocol.url(info, name))
    return s


def test_controller_survives_fuzzing_and_counts_what_it_dropped(fuzz_cluster, tmp_path,
                                                                busy_cores):
    """On a machine with every core busy: a header that stalled the controller's loop
    for seconds (so that its engines, hearing no heartbeat, left) shows here."""
    c = fuzz_cluster
    info = protocol.read_connection_file(c.client_file)
    fz = Fuzzer(info["key"])
    evil = tmp_path / "controller-unpickled-something"
    ctx = zmq.Context()
    socks = {name: _dealer(ctx, info, name) for name in ("client", "engine", "pong")}
    expected = {"malformed": 0, "bad signature": 0, "bad header": 0, "replayed": 0,
                "too large": 0}
    try:
        for i in range(3000):
            name = ("client", "client", "engine")[i % 3]
            sock = socks[name]
            r = fz.rng.random()
            if r < 0.15:
                sock.send_multipart(fz.malformed())
                expected["malformed"] += 1
            elif r < 0.35:
                sock.send_multipart(fz.bad_signature())
                expected["bad signature"] += 1
            elif r < 0.5:
                sock.send_multipart(fz.bad_header())
                expected["bad header"] += 1
            elif r < 0.6:
                frames = fz.replay(fz._valid(protocol.QUEUE_STATUS))
                sock.send_multipart(frames)
                sock.send_multipart(frames)
                expected["replayed"] += 1
            elif r < 0.61:
                sock.send_multipart(fz.too_large())
                expected["too large"] += 1
            else:
                evil_path = str(evil) if fz.rng.random() < 0.2 else None
                protocol.send(sock, fz.signed_weird(evil_path))   # packed when small
        # an unsigned header that is an evil pickle, on both signed sockets
        for name in ("client", "engine"):
            hb = pickle.dumps(Evil(evil))
            socks[name].send_multipart([protocol.DELIM, b"\0" * 32, hb])
            expected["bad signature"] += 1
        # the pong socket takes unsigned beats: garbage, and beats from unknown hearts
        for i in range(1500):
            if i % 2:
                socks["pong"].send_multipart([fz._bytes(1) for _ in range(fz.rng.randint(1, 3))])
            else:   # a beat number, sometimes absurdly large
                socks["pong"].send(b"%d" % fz.rng.choice([fz.rng.randint(0, 10**6), 10**30]))
        # requests for unknown ids and engines, which must be answered, not dropped
        rc = c.rc
        with pytest.raises(errors.EngineError, match="not registered"):
            rc.send_apply(lambda: 1, (), {}, engine_id=99).result(30)
        with pytest.raises(KeyError, match="unknown or purged"):
            rc.get_result("no-such-msg-id").get(30)
        rc.abort(["no-such-msg-id"])
        assert rc.purge_results(["no-such-msg-id"]) in (0, 1)

        def stats():
            return rc.queue_status(verbose=True)["stats"]

        wait_until(lambda: all(stats().get("dropped_" + k.replace(" ", "_"), 0) >= n
                               for k, n in expected.items()), 30, what=f"drop counts {expected}")
        # one frame over the limit: zmq drops that connection; the controller carries on
        socks["client"].send_multipart([b"\0" * (MAX_MESSAGE_SIZE + 1)])
        s = stats()
        assert c.controller.poll() is None and all(e.poll() is None for e in c.engines)
        check_serves(rc, 2)
        assert s["dropped"] >= sum(expected.values())
        assert s.get("dropped_pong", 0) >= 700 and s.get("stale_pong", 0) >= 1
        assert not evil.exists(), "something unpickled data that failed its check"
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
    log = c.output("controller")
    assert "Traceback" not in log, log[-3000:]
    assert "refused a message on the client socket" in log


def test_nothing_is_unpickled_before_it_is_verified_end_to_end(fuzz_cluster, tmp_path):
    """Evil pickles in failing messages never run on the controller or an engine; the same
    pickle in a trusted, correctly signed request does run (so the check can fail)."""
    c = fuzz_cluster
    rc = c.rc
    info = protocol.read_connection_file(c.client_file)
    never = tmp_path / "never"
    control = tmp_path / "control"
    ctx = zmq.Context()
    sock = _dealer(ctx, info, "client")
    session = protocol.Session(info["key"])
    try:
        # signed header, parts not matching their digest: the engine refuses to unpickle
        fparts = protocol.serialize(lambda: 1)
        header, frames = session.msg(protocol.APPLY, [*fparts, b"x"], engine=0, counts=[1, 1])
        frames = [*frames[:3], pickle.dumps(Evil(never)), frames[4]]
        sock.send_multipart(frames)
        # a trusted request carrying the pickle, correctly signed: it runs, by design
        evil_parts = [pickle.dumps(Evil(control))]
        bad = session.msg(protocol.PUSH, evil_parts, engine=0)[1]
        sock.send_multipart(bad)
        wait_until(control.exists, 30, what="the positive control's marker")
        stats = wait_until(lambda: rc.engine_stats([0])[0]["dropped_reasons"].get("bad digest"),
                           30, what="the engine's bad-digest count")
        assert stats >= 1
        assert not never.exists()
    finally:
        sock.close(linger=0)
        ctx.term()


# The routing prefix's layout (see protocol.pack_header): version, flags, kind code, status
# code, engine, attempt, started, completed, then the byte lengths of msg_id, parent, session.
PREFIX = struct.Struct("<BBBBiHddBBB")


def _with_rest(header, rest):
    """Header bytes: `header`'s routing prefix (all its fields in it), then `rest`."""
    hb = protocol.pack_header(header)
    assert hb.endswith(marshal.dumps({}, 4)), "a field of `header` is not in its prefix"
    return hb[:-len(marshal.dumps({}, 4))] + rest


def _random_prefix(rng, session):
    """A signed-looking header: a routing prefix of random fields and lengths, then random
    strings and a rest that is marshal data or not. The attempt is left unset: a request
    naming one gets a reply the controller takes for another attempt's, and stays pending
    (as it did before the prefix, when the field was marshalled)."""
    nan = float("nan")
    msg_id = rng.choice([protocol.new_id(), "", "\u00e9" * 3, "x" * 200])
    texts = [t.encode() for t in (msg_id, rng.choice(["", "p", protocol.new_id()]), session)]
    if rng.random() < 0.2:   # not UTF-8
        texts[0] = rng.randbytes(rng.randint(1, 20))
    lengths = [len(t) if rng.random() < 0.8 else rng.randint(0, 255) for t in texts]
    prefix = PREFIX.pack(
        2, rng.randrange(256), rng.choice([*range(1, 17), 0, 17, 200, 255]),
        rng.choice([0, 1, 2, 5, 6, 255]), rng.choice([0, 1, 9, -1, -2**31, 2**31 - 1]),
        0xFFFF, rng.choice([nan, 1.0, -1e308, float("inf")]), rng.choice([nan, 2.0]), *lengths)
    rest = rng.choice([b"", marshal.dumps({}, 4), marshal.dumps({"counts": [1, 1]}, 4),
                       marshal.dumps({"targets": "x", "after": 5}, 4), rng.randbytes(12),
                       b"[" + struct.pack("<I", 2**31 - 1), marshal.dumps([1], 4)])
    return prefix + b"".join(texts) + rest


def test_fuzzed_routing_prefixes_are_refused_or_end_their_task_once(fuzz_cluster):
    """The controller reads a task's request by its routing prefix alone (see
    protocol.route_header): signed headers with random prefix fields, lengths and rests
    are each refused and counted, or routed as a task that ends once (an engine answers a
    request whose rest it cannot read with that error, alone or in a batch). Nothing is
    left queued, and the cluster serves as before."""
    c = fuzz_cluster
    rc = c.rc
    info = protocol.read_connection_file(c.client_file)
    session = protocol.Session(info["key"])
    ctx = zmq.Context()
    sock = _dealer(ctx, info, "client")
    rng = random.Random(SEED)
    try:
        ids = []
        for lb in ({}, {"lb": True}):   # alone, direct and load-balanced, its rest unreadable
            ids.append(protocol.new_id())
            hb = _with_rest({"msg_id": ids[-1], "kind": protocol.APPLY, "engine": 0, **lb,
                             "session": session.session}, b"\x07not marshal")
            sock.send_multipart([protocol.DELIM, session.sign(hb), hb, b"f", b"args"])
        # in a batch, beside a good request
        ids.append(protocol.new_id())
        hb = _with_rest({"msg_id": ids[-1], "kind": protocol.KEYS, "engine": 1,
                         "session": session.session}, b"[" + struct.pack("<I", 2**31 - 1))
        good, frames = session.msg(protocol.KEYS, engine=1, signed=False)
        [batch] = session.pack([[protocol.DELIM, b"", hb], frames])
        protocol.send(sock, batch)
        for msg_id in ids:
            with pytest.raises(errors.RemoteError, match="could not be read past its routing"):
                rc.get_result(msg_id).get(30)
        assert isinstance(rc.get_result(good["msg_id"]).get(30), list)
        for _ in range(2000):
            hb = _random_prefix(rng, session.session)
            protocol.send(sock, [protocol.DELIM, session.sign(hb), hb,
                                 *[rng.randbytes(8) for _ in range(rng.randint(0, 2))]])

        def idle():
            status = rc.queue_status()
            return status.pop("unassigned") == 0 and all(
                s["queue"] == 0 for s in status.values())

        wait_until(idle, 60, what="every fuzzed task to end")
        stats = rc.queue_status(verbose=True)["stats"]
        assert stats.get("dropped_bad_header", 0) >= 100
        assert c.controller.poll() is None and all(e.poll() is None for e in c.engines)
        check_serves(rc, 2)
    finally:
        sock.close(linger=0)
        ctx.term()
    assert "Traceback" not in c.output("controller")


def test_max_message_size_is_enforced_on_every_side(fuzz_cluster):
    rc = fuzz_cluster.rc
    big = b"\1" * (MAX_MESSAGE_SIZE + 10)
    # the client refuses to send it, with a clear error at the call
    with pytest.raises(errors.SerializationError, match="max_message_size"):
        rc[0].push({"big": big})
    # an engine refuses to send a reply that large, and says so
    with pytest.raises(errors.SerializationError, match="above the cluster's max_message_size"):
        rc[0].apply_sync(lambda n: b"\1" * n, MAX_MESSAGE_SIZE + 10)
    assert rc[0].apply_sync(lambda n: len(b"\1" * n), MAX_MESSAGE_SIZE + 10) == \
        MAX_MESSAGE_SIZE + 10
    info = protocol.read_connection_file(fuzz_cluster.client_file)
    assert info["max_message_size"] == MAX_MESSAGE_SIZE


# ------------------------------------------------------------------ an engine

@pytest.fixture
def hub(tmp_path):
    h = FakeHub(tmp_path / "profile", max_message_size=MAX_MESSAGE_SIZE)
    try:
        yield h
    finally:
        h.close()


def test_engine_survives_fuzzing_and_counts_what_it_dropped(hub, tmp_path, busy_cores):
    engine = hub.start_engine(tmp_path / "engine.log")
    ident = hub.register()
    evil = tmp_path / "engine-unpickled-something"
    fz = Fuzzer(hub.key)
    expected = {"malformed": 0, "bad signature": 0, "bad header": 0, "replayed": 0,
                "too large": 0, "bad digest": 0}
    router = hub.sockets["engine"]
    for _ in range(3000):
        # to the receiver thread's control socket or the main thread's request socket
        to = [ident] if fz.rng.random() < 0.5 else hub.work(ident)
        r = fz.rng.random()
        if r < 0.15:
            frames = fz.malformed()
            expected["malformed"] += 1
        elif r < 0.35:
            frames = fz.bad_signature()
            expected["bad signature"] += 1
        elif r < 0.5:
            frames = fz.bad_header()
            expected["bad header"] += 1
        elif r < 0.6:
            frames = fz.replay(fz._valid(protocol.KEYS, engine=0))
            router.send_multipart([*to, *frames])
            expected["replayed"] += 1
        elif r < 0.61:
            frames = fz.too_large()
            expected["too large"] += 1
        elif r < 0.7:   # a signed request whose parts do not match: never unpickled
            parts = [pickle.dumps(Evil(evil)), b"args"]
            header = {"msg_id": protocol.new_id(), "kind": protocol.APPLY, "counts": [1, 1],
                      "session": fz.session.session, "date": time.time()}
            frames = fz.session.frames(header, [b"f", b"args"])
            frames = [*frames[:3], *parts]
            to = hub.work(ident)   # only the main thread reads a request's parts
            expected["bad digest"] += 1
        else:
            frames = fz.signed_weird(str(evil) if fz.rng.random() < 0.2 else None)
        router.send_multipart([*to, *frames])
    # then a real request: the engine answers it correctly, after everything before it
    fparts = protocol.serialize(lambda x: x + 1)
    aparts = protocol.serialize(((41,), {}))
    header, value = hub.request(ident, protocol.APPLY, [*fparts, *aparts], timeout=120,
                                counts=[len(fparts), len(aparts)])
    assert header["status"] == "ok" and value == 42

    def stats_reaching(want, timeout=30):
        """The engine's stats once its drop counts reach `want` (or the timeout): its
        receiver and main threads drain their sockets independently, so the answer to a
        request can overtake what the other thread has still to count."""
        def reached():
            stats = hub.request(ident, protocol.STATS)[1]
            reasons = stats["dropped_reasons"]
            return stats if all(reasons.get(r, 0) >= n for r, n in want.items()) else None

        return wait_until(reached, timeout, f"the engine's drop counts to reach {want}")

    stats = stats_reaching(expected)
    reasons = stats["dropped_reasons"]
    for reason, n in expected.items():
        assert reasons.get(reason, 0) >= n, (reason, reasons, expected)
    assert stats["dropped"] >= sum(expected.values()) - expected["bad digest"]
    # one frame over the limit: refused and counted, the connection stays up
    router.send_multipart([ident, b"\0" * (MAX_MESSAGE_SIZE + 1)])
    beats = hub.pongs[ident]
    fparts = protocol.serialize(lambda: "still here")
    aparts = protocol.serialize(((), {}))
    header, value = hub.request(ident, protocol.APPLY, [*fparts, *aparts],
                                counts=[len(fparts), len(aparts)])
    assert value == "still here"
    after = stats_reaching({"too large": reasons["too large"] + 1})
    assert after["dropped_reasons"]["too large"] == reasons["too large"] + 1
    wait_until(lambda: hub.pongs[ident] > beats + 5, 30, what="the engine's heart beating")
    assert engine.poll() is None
    assert not evil.exists(), "the engine unpickled data that failed its check"
    log = (tmp_path / "engine.log").read_text()
    assert "dropped a message from the controller" in log


def test_engine_runs_every_request_of_a_batch_in_order(hub, tmp_path):
    """A batch (several requests under one signature, as the controller sends a burst)
    runs each request once, in order, with its own reply; a malformed one (well signed,
    items not matching its parts) runs nothing and the engine goes on serving."""
    hub.start_engine(tmp_path / "engine.log")
    ident = hub.register()
    hub.request(ident, protocol.EXECUTE, code="seen = []")
    wires, ids = [], []
    for x in "abc":
        header, frames = hub.session.msg(protocol.EXECUTE, code=f"seen.append({x!r})")
        wires.append(frames)
        ids.append(header["msg_id"])
    [batch] = list(hub.session.pack(wires))
    hub.sockets["engine"].send_multipart([*hub.work(ident), *batch])
    assert [hub.reply_to(msg_id)[0]["status"] for msg_id in ids] == ["ok"] * 3
    header = protocol.unpack_header(batch[2])
    bad = dict(header, msg_id=protocol.new_id(), nparts=header["nparts"][:-1])
    hb = protocol.pack_header(bad)
    hub.sockets["engine"].send_multipart([*hub.work(ident), protocol.DELIM,
                                          hub.session.sign(hb), hb, *batch[3:]])
    _, value = hub.request(ident, protocol.PULL, names="seen")
    assert value == ["a", "b", "c"]   # the malformed batch ran nothing
    log = (tmp_path / "engine.log").read_text()
    assert "malformed batch" in log


def _send_batch(hub, ident, codes):
    """Send `codes` to the engine as one batch of execute requests; their msg_ids."""
    wires, ids = [], []
    for code in codes:
        header, frames = hub.session.msg(protocol.EXECUTE, code=code)
        wires.append(frames)
        ids.append(header["msg_id"])
    [batch] = list(hub.session.pack(wires))
    hub.sockets["engine"].send_multipart([*hub.work(ident), *batch])
    return ids


def test_engine_sends_the_replies_to_a_batch_together(hub, tmp_path):
    """The replies to a batch of quick requests come back in fewer messages than there
    were requests (each reply intact, in its own item), so the controller reads less."""
    hub.start_engine(tmp_path / "engine.log")
    ident = hub.register()
    ids = _send_batch(hub, ident, [f"x{i} = {i}" for i in range(20)])
    messages = 0
    while not set(ids) <= hub.replies.keys():
        _, header, parts = hub.recv("engine")
        replies = {h["parent"]: (h, p) for h, p in hub.session.unbatch(header, parts)
                   if h.get("parent") in ids}
        messages += bool(replies)
        hub.replies.update(replies)
    assert [hub.reply_to(m)[0]["status"] for m in ids] == ["ok"] * 20
    assert messages < 20
    _, value = hub.request(ident, protocol.PULL, names=["x0", "x19"])
    assert value == [0, 19]


def test_a_quick_reply_does_not_wait_for_a_long_request_after_it(hub, tmp_path):
    """A reply held to go with the rest of its batch leaves while the next request runs
    on (the receiver thread sends it), not when that request ends."""
    hub.start_engine(tmp_path / "engine.log")
    ident = hub.register()
    quick, slow = _send_batch(hub, ident, ["y = 1", "import time; time.sleep(20)"])
    header, _ = hub.reply_to(quick, timeout=10)
    assert header["status"] == "ok"
    assert slow not in hub.replies
    with pytest.raises(TimeoutError):
        hub.reply_to(slow, timeout=1)   # still running: its reply cannot have come yet


# ------------------------------------------------------------------ a client

def test_client_survives_fuzzing_and_never_unpickles_unverified_data(hub, tmp_path):
    """A client, talking to a fake controller that sends it garbage, evil pickles and
    mismatched parts, stays usable: a result whose parts fail their digest becomes a
    clear error, never an unpickled object."""
    evil = tmp_path / "client-unpickled-something"
    router = hub.sockets["client"]
    fz = Fuzzer(hub.key)
    answered = threading.Event()

    def serve():
        # executes in a helper thread: answer connect (asked again when the client's
        # notification socket connects), then fuzz the client
        pending = []   # the apply requests the client sends
        while len(pending) < 2:
            if not router.poll(30_000):
                return   # the client sent nothing: the test's own bounded waits fail
            idents, h, _ = hub.session.check(router.recv_multipart(), replay=False)
            if h["kind"] != protocol.CONNECT:
                pending.append(h["msg_id"])
                continue
            ident = idents[0]
            _, frames = hub.session.msg(protocol.CONNECT_REPLY,
                                        parent=h["msg_id"], status="ok", engines={})
            router.send_multipart([ident, *frames])
            answered.set()
        for i in range(2000):
            r = fz.rng.random()
            frames = (fz.malformed() if r < 0.3 else fz.bad_signature() if r < 0.6 else
                      fz.bad_header() if r < 0.8 else fz.signed_weird(str(evil)))
            router.send_multipart([ident, *frames])
        # the first pending request: a reply whose parts do not match their digest
        header = {"msg_id": protocol.new_id(), "kind": "apply_reply", "status": "ok",
                  "parent": pending[0], "session": hub.session.session, "date": time.time()}
        frames = hub.session.frames(header, [protocol.serialize(1)[0]])
        router.send_multipart([ident, *frames[:3], pickle.dumps(Evil(evil))])
        # the second: a good reply
        _, frames = hub.session.msg("apply_reply", protocol.serialize(7), parent=pending[1],
                                    status="ok", engine=0)
        router.send_multipart([ident, *frames])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    rc = minipar.Client(hub.client_file, timeout=30)
    try:
        # the client can have the reply before the helper thread, preempted between its
        # send and set() on a busy machine, sets the event
        assert answered.wait(30)
        f1 = rc.send_apply(lambda: 1, (), {}, engine_id=0)
        f2 = rc.send_apply(lambda: 7, (), {}, engine_id=0)
        with pytest.raises(errors.SerializationError, match="digest"):
            f1.result(60)
        assert f2.result(60) == 7
        assert rc._io.is_alive()
    finally:
        rc.close()
        t.join(30)
    assert not evil.exists(), "the client unpickled data that failed its check"
