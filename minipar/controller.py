"""The controller (hub): registration, heartbeats, routing, task records.

One process, one thread (the hub loop) owning every socket; all connections are
inbound, so only the controller's host needs open ports::

    client DEALER ──▶ ROUTER "client" ┐               ┌ ROUTER "engine" ◀── DEALER engine
    client SUB    ◀── PUB "notify"    ├─ hub loop ────┤ PUB "ping"      ──▶ SUB  ┐ heart
                                      ┘               └ ROUTER "pong"   ◀── DEALER┘ (zmq.proxy)

The hub reads headers only (``protocol.Session.check``); request and result parts pass
through untouched. Direct requests name their engine in the header (`engine`);
load-balanced ones (`lb`) go to the ``scheduler.Scheduler``, whose decisions the hub
carries out in ``_act``. Every request gets a record in the DB (``DictDB`` here; see its
docstring for the record's keys), and every record reaches a final state: the engine's
reply, or an error the hub makes itself (engine died, aborted, impossible dependency).

Timers (heartbeat, scheduler deadlines) are deadlines checked after each poll, not threads.
``loop_once(now)`` is one pass; tests may call it by hand.
"""

import argparse
import collections
import logging
import os
import signal
import socket
import sys
import time

import zmq

from . import errors, protocol
from . import scheduler as _scheduler

log = logging.getLogger(__name__)

HEARTBEAT_PERIOD_S = 1.0   # 0.1..5 is reasonable; tests use 0.1
HEARTBEAT_LIVENESS = 5     # missed beats before an engine is dead; 3..10 is reasonable
PORT_NAMES = ("client", "notify", "engine", "ping", "pong")

# Record states. A record changes state only through Controller._finish / _assign.
PENDING, OK, ERROR = "pending", "ok", "error"

_DIRECT = {protocol.APPLY, protocol.EXECUTE, protocol.PUSH, protocol.PULL, protocol.KEYS,
           protocol.CLEAR, protocol.PROPERTIES}


class DictDB:
    """Task records in memory, keyed by msg_id.

    A record is a dict::

        msg_id, kind, client (routing id), engine (int or None), lb (bool),
        submitted, started, completed (float seconds), status ("pending", "ok", "error",
        or the engine's status word), header (the request's header dict), parts (the
        request's frames from the delimiter on), result_header, result_parts, stdout, stderr,
        attempts (list of {engine, status, started, completed, ename}),
        watchers (other clients to deliver the result to)

    Memory is bounded: beyond `record_limit` records or `size_limit` bytes of parts,
    the oldest finished records are culled; a pending record is never culled.
    """

    def __init__(self, record_limit=100_000, size_limit=1 << 30):
        self.record_limit = record_limit
        self.size_limit = size_limit
        self._records = {}
        self._finished = collections.OrderedDict()   # msg_id -> bytes held, oldest first
        self._bytes = 0

    def add(self, rec):
        self._records[rec["msg_id"]] = rec

    def get(self, msg_id):
        return self._records.get(msg_id)

    def __contains__(self, msg_id):
        return msg_id in self._records

    def __len__(self):
        return len(self._records)

    def finish(self, rec):
        """A record reached its final state: it may be culled from now on."""
        size = _nbytes(rec.get("wire")) + _nbytes(rec.get("result_parts"))
        self._finished[rec["msg_id"]] = size
        self._bytes += size
        while self._finished and (len(self._records) > self.record_limit
                                  or self._bytes > self.size_limit):
            self.drop(next(iter(self._finished)))

    def drop(self, msg_id):
        if msg_id in self._finished or msg_id not in self._records:
            self._bytes -= self._finished.pop(msg_id, 0)
            self._records.pop(msg_id, None)
            return True
        return False  # pending: kept

    def records(self):
        return self._records.values()


class NoDB(DictDB):
    """Keeps only what is in flight: a finished record is dropped at once."""

    def finish(self, rec):
        self._records.pop(rec["msg_id"], None)


def _nbytes(frames):
    return sum(len(f) for f in frames) if frames else 0


class Controller:
    def __init__(self, ip="127.0.0.1", port=0, ports=None, location=None, profile=None,
                 profile_dir=None, reuse=False, heartbeat_period=HEARTBEAT_PERIOD_S,
                 heartbeat_liveness=HEARTBEAT_LIVENESS, scheme="leastload", hwm=2,
                 db="dict", max_message_size=protocol.MAX_MESSAGE_SIZE):
        self.ip = ip
        self.location = location or (socket.gethostname() if ip in ("*", "0.0.0.0") else ip)
        self.profile_dir = protocol.profile_dir(profile, profile_dir)
        self.reuse = reuse
        self.heartbeat_period = heartbeat_period
        self.heartbeat_liveness = heartbeat_liveness
        self.max_message_size = max_message_size
        self.ports = dict(ports or {})
        if port:
            self.ports.setdefault("engine", port)
        sec = protocol.security_dir(self.profile_dir)
        self.client_file = os.path.join(sec, protocol.CLIENT_FILE)
        self.engine_file = os.path.join(sec, protocol.ENGINE_FILE)
        key = None
        if reuse and os.path.exists(self.client_file):
            old = _load_json(self.client_file)
            key = old.get("key")
            for name, p in old.get("ports", {}).items():
                self.ports.setdefault(name, p)
        self.session = protocol.Session(key or os.urandom(32).hex(), max_message_size)
        self.db = {"dict": DictDB, "none": NoDB}[db]() if isinstance(db, str) else db
        self.scheduler = _scheduler.Scheduler(scheme=scheme, hwm=hwm, lookup=self._lookup)
        self.engines = {}        # id -> engine dict (see _register)
        self._by_ident = {}      # engine routing id (bytes) -> id
        self._next_id = 0
        self._beat = 0
        self._next_beat = 0.0
        self._stop = False
        self.stats = collections.Counter()

    # ------------------------------------------------------------ setup

    def bind(self):
        self.ctx = zmq.Context()
        s = self.sockets = {}
        kinds = {"client": zmq.ROUTER, "notify": zmq.PUB, "engine": zmq.ROUTER,
                 "ping": zmq.PUB, "pong": zmq.ROUTER}
        for name, kind in kinds.items():
            sock = self.ctx.socket(kind)
            sock.linger = 0
            if kind == zmq.ROUTER:
                sock.router_mandatory = False
                sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
                sock.rcvhwm = sock.sndhwm = 0  # the hub never drops: tasks are bounded by the DB
            port = self.ports.get(name)
            addr = f"tcp://{self.ip}"
            if port:
                try:
                    sock.bind(f"{addr}:{port}")
                except zmq.ZMQError as e:
                    raise PortInUseError(f"cannot listen on {self.ip}:{port} for the {name} "
                                         f"socket: {e}; choose another --port or stop the "
                                         "process using it") from None
            else:
                port = sock.bind_to_random_port(addr)
            self.ports[name] = port
            s[name] = sock
        self.poller = zmq.Poller()
        for name in ("client", "engine", "pong"):
            self.poller.register(s[name], zmq.POLLIN)
        self._handlers = {s["client"]: self._on_client, s["engine"]: self._on_engine,
                          s["pong"]: self._on_pong}
        self._write_connection_files()
        log.info("minipar controller ready: %s", protocol.url(self.info, "client"))

    @property
    def info(self):
        return {"key": self.session.key.hex(), "signature_scheme": protocol.SIGNATURE_SCHEME,
                "transport": "tcp", "ip": self.ip, "location": self.location,
                "ports": dict(self.ports), "pid": os.getpid(), "host": socket.gethostname(),
                "heartbeat_period": self.heartbeat_period}

    def _write_connection_files(self):
        info = self.info
        protocol.write_connection_file(self.client_file, info)
        protocol.write_connection_file(self.engine_file, info)

    def close(self):
        if not self.reuse:
            for f in (self.client_file, self.engine_file):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.ctx.term()

    # ------------------------------------------------------------ loop

    def run(self):
        """Serve until stopped (SIGTERM, SIGINT or a client's shutdown(hub=True))."""
        self.bind()
        try:
            while not self._stop:
                self.loop_once(time.time())
        finally:
            self.close()
        log.info("controller stopped")

    def loop_once(self, now, timeout=None):
        if now >= self._next_beat:
            self._heartbeat(now)
        deadline = self._next_beat
        sd = self.scheduler.next_deadline()
        if sd is not None:
            if sd <= now:
                self._act(self.scheduler.tick(now))
            deadline = min(deadline, max(sd, now))
        if timeout is None:
            timeout = max(0.0, deadline - time.time())
        for sock, _ in self.poller.poll(timeout * 1000):
            handler = self._handlers[sock]
            # drain what is there before polling again: fewer syscalls under load
            for _ in range(256):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    handler(frames)
                except Exception as e:  # a bad message must never stop the hub
                    self.stats["dropped"] += 1
                    log.warning("dropped a message that could not be handled: %s: %s",
                                type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))

    def _check(self, sock, frames):
        """Verify a message; on failure count it, log it, send a refusal and return None."""
        try:
            return self.session.check(frames)
        except Exception as e:
            reason = str(e) or type(e).__name__
            self.stats["dropped"] += 1
            self.session.dropped[reason] += 1
            log.warning("refused a message on the %s socket: %s (a peer with the wrong key, "
                        "or a corrupt message)", self._name(sock), reason)
            try:
                idents, *_ = self.session.split(frames)
            except ValueError:
                idents = frames[:1]
            if sock.type == zmq.ROUTER and idents:
                sock.send_multipart(protocol.refusal(idents[:1], reason), zmq.NOBLOCK)
            return None

    def _name(self, sock):
        return next((n for n, s in self.sockets.items() if s is sock), "?")

    # ------------------------------------------------------------ heartbeat

    def _heartbeat(self, now):
        self._beat += 1
        self._next_beat = now + self.heartbeat_period
        self.sockets["ping"].send(b"%d" % self._beat)
        # Liveness counts beats, not seconds: a controller that was itself stalled (a
        # loaded machine) sent fewer beats and so declares nobody dead for its own delay.
        limit = self._beat - self.heartbeat_liveness
        for eid, e in list(self.engines.items()):
            if e["last_beat"] < limit:
                log.warning("engine %d missed %d heartbeats: declared dead", eid,
                            self.heartbeat_liveness)
                self._remove_engine(eid, died=True)

    def _on_pong(self, frames):
        eid = self._by_ident.get(frames[0].bytes)
        if eid is not None and len(frames) == 2:
            e = self.engines[eid]
            e["last_beat"] = max(e["last_beat"], int(frames[1].bytes))

    # ------------------------------------------------------------ engines

    def _on_engine(self, frames):
        checked = self._check(self.sockets["engine"], frames)
        if checked is None:
            return
        idents, header, parts = checked
        ident = idents[0].bytes
        kind = header["kind"]
        if kind == protocol.REGISTER:
            return self._register(ident, header)
        eid = self._by_ident.get(ident)
        if eid is None:
            # an engine we declared dead (frozen, then resumed) or from before a restart:
            # drop its message and tell it to register again; stale results are never delivered
            self.stats["stale"] += 1
            self._send(self.sockets["engine"], [ident], protocol.UNREGISTER,
                       reason="this engine is not registered (declared dead?)")
            return
        engine = self.engines[eid]
        engine["last_beat"] = self._beat  # any message is a sign of life
        if kind == protocol.UNREGISTER:
            return self._remove_engine(eid, died=False)
        if kind == protocol.STREAM:
            return self._on_stream(header, frames[len(idents):])
        if kind == protocol.PROPERTIES + "_update":
            engine["properties"] = header.get("properties", {})
            return self._act(self.scheduler.set_properties(eid, engine["properties"], time.time()))
        self._on_reply(eid, header, parts, frames)

    def _register(self, ident, header):
        if ident in self._by_ident:
            log.warning("engine %d registered twice; keeping its id", self._by_ident[ident])
            eid = self._by_ident[ident]
        else:
            want = header.get("id")
            if isinstance(want, int) and want >= 0 and want not in self.engines:
                eid = want
            else:
                while self._next_id in self.engines:
                    self._next_id += 1
                eid = self._next_id
            self._next_id = max(self._next_id, eid + 1)
            now = time.time()
            self.engines[eid] = {
                "id": eid, "ident": ident, "pid": header.get("pid"),
                "host": header.get("host"), "python": header.get("python"),
                "cloudpickle": header.get("cloudpickle"), "registered": now,
                # a new engine has full liveness from its registration's beat
                "last_beat": self._beat,
                "properties": header.get("properties") or {},
                "outstanding": set(), "completed": 0,
            }
            self._by_ident[ident] = eid
        engine = self.engines[eid]
        self._send(self.sockets["engine"], [ident], protocol.reply_kind(protocol.REGISTER),
                   parent=header["msg_id"], id=eid, heartbeat_period=self.heartbeat_period,
                   heartbeat_liveness=self.heartbeat_liveness)
        log.info("engine %d registered (pid %s on %s)", eid, engine["pid"], engine["host"])
        self._notify(protocol.ENGINE_REGISTERED, id=eid, info=self._engine_info(engine))
        self._act(self.scheduler.engine_added(eid, time.time(), engine["properties"]))

    def _engine_info(self, e):
        return {k: e[k] for k in ("id", "pid", "host", "python", "cloudpickle", "registered")}

    def _remove_engine(self, eid, died):
        engine = self.engines.pop(eid)
        self._by_ident.pop(engine["ident"], None)
        now = time.time()
        what = "died" if died else "unregistered"
        for msg_id in list(engine["outstanding"]):
            rec = self.db.get(msg_id)
            if rec is None:
                continue
            if rec["lb"]:
                rec["attempts"].append({"engine": eid, "status": "engine_died",
                                        "started": rec.get("started"), "completed": now,
                                        "ename": "EngineError"})
            else:
                self._fail(rec, "EngineError",
                           f"engine {eid} {what} before answering this request; "
                           "the work is lost: resubmit it to another engine")
        self._notify(protocol.ENGINE_DIED if died else protocol.ENGINE_UNREGISTERED, id=eid)
        if died:
            self._send(self.sockets["engine"], [engine["ident"]], protocol.UNREGISTER,
                       reason="declared dead: missed heartbeats")
        self._act(self.scheduler.engine_removed(eid, now))

    # ------------------------------------------------------------ clients

    def _on_client(self, frames):
        checked = self._check(self.sockets["client"], frames)
        if checked is None:
            return
        idents, header, parts = checked
        kind = header["kind"]
        if kind in _DIRECT:
            return self._submit(idents[0], header, parts, frames[len(idents):])
        handler = self._client_handlers.get(kind)
        if handler is None:
            self.stats["dropped"] += 1
            log.warning("unknown request kind %r from a client", kind)
            return self._reply(idents, header, status="error",
                               error=("ValueError", f"unknown request kind {kind!r}"))
        handler(self, idents, header, parts)

    def _reply(self, idents, header, **fields):
        self._send(self.sockets["client"], idents, protocol.reply_kind(header["kind"]),
                   parent=header["msg_id"], **fields)

    def _send(self, sock, idents, kind, parts=(), **fields):
        _, frames = self.session.msg(kind, parts, **fields)
        sock.send_multipart([*idents, *frames], copy=False)

    def _notify(self, kind, **fields):
        _, frames = self.session.msg(kind, **fields)
        self.sockets["notify"].send_multipart([kind.encode(), *frames])

    def _connect(self, idents, header, parts):
        self._reply(idents, header, status="ok",
                    engines={eid: self._engine_info(e) for eid, e in self.engines.items()})

    def _submit(self, client, header, parts, wire):
        now = time.time()
        msg_id = header["msg_id"]
        if msg_id in self.db:
            raise ValueError(f"duplicate msg_id {msg_id}")
        rec = {"msg_id": msg_id, "kind": header["kind"], "client": client.bytes,
               "engine": None, "lb": bool(header.get("lb")), "submitted": now,
               "started": None, "completed": None, "status": PENDING, "header": header,
               "wire": wire, "result_header": None, "result_parts": None,
               "attempts": [], "watchers": None}
        self.db.add(rec)
        if rec["lb"]:
            self._act(self.scheduler.submit(_task(header), now))
            return
        eid = header.get("engine")
        if eid not in self.engines:
            return self._fail(rec, "EngineError",
                              f"engine {eid} is not registered (registered: "
                              f"{sorted(self.engines)}); use rc.ids for the live engines")
        self._assign(rec, eid)

    def _assign(self, rec, eid):
        """Send a request to engine `eid`: as received the first time, re-signed after
        (a retry must not look like a replay to an engine that saw it before)."""
        engine = self.engines[eid]
        wire = rec["wire"]
        if rec["attempts"]:
            header = dict(rec["header"], attempt=len(rec["attempts"]), date=time.time())
            wire = self.session.resign(header, wire[3:])
        rec["engine"] = eid
        engine["outstanding"].add(rec["msg_id"])
        self.sockets["engine"].send_multipart([engine["ident"], *wire], copy=False)

    def _on_reply(self, eid, header, parts, frames):
        msg_id = header.get("parent")
        rec = self.db.get(msg_id)
        engine = self.engines[eid]
        engine["outstanding"].discard(msg_id)
        if rec is None or rec["status"] != PENDING or rec["engine"] != eid:
            self.stats["stale"] += 1  # e.g. a result from an engine the task was moved away from
            return
        rec["result_header"] = header
        rec["result_parts"] = parts
        rec["started"] = header.get("started")
        status = header.get("status", ERROR)
        if not rec["lb"]:
            return self._finish(rec, status)
        engine["completed"] += 1
        rec["attempts"].append({"engine": eid, "status": status, "started": header.get("started"),
                                "completed": header.get("completed"), "ename": header.get("ename")})
        self._act(self.scheduler.finished(msg_id, eid, status, time.time()))

    def _on_stream(self, header, wire):
        rec = self.db.get(header.get("parent"))
        if rec is not None and rec["status"] == PENDING:
            self.sockets["client"].send_multipart([rec["client"], *wire], copy=False)

    # ------------------------------------------------------------ final states

    def _finish(self, rec, status):
        """The one place a record becomes final: deliver its result to its client(s)."""
        rec["status"] = status
        rec["completed"] = time.time()
        header = rec["result_header"]
        if rec["engine"] in self.engines:
            self.engines[rec["engine"]]["outstanding"].discard(rec["msg_id"])
        header = dict(header, parent=rec["msg_id"], submitted=rec["submitted"],
                      engine=header.get("engine", rec["engine"]))
        if rec["attempts"]:
            header["attempts"] = rec["attempts"]
        frames = self.session.resign(header, rec["result_parts"] or ())
        sock = self.sockets["client"]
        for client in [rec["client"], *(rec["watchers"] or ())]:
            sock.send_multipart([client, *frames], copy=False)
        rec["result_header"] = header
        self.db.finish(rec)
        recovers = rec.get("recovers")
        if recovers:
            owner = self.db.get(recovers)
            if owner is not None and owner["status"] == PENDING:
                owner["result_header"] = dict(header, recovered_by=rec["msg_id"])
                owner["result_parts"] = rec["result_parts"]
                owner["engine"] = rec["engine"]
                self._finish(owner, status)

    def _fail(self, rec, ename, evalue):
        err = errors.error(ename, evalue, {"msg_id": rec["msg_id"], "engine_id": rec["engine"]})
        rec["result_header"] = {"msg_id": protocol.new_id(), "kind": protocol.reply_kind(rec["kind"]),
                                "status": ERROR, "ename": ename, "evalue": evalue,
                                "engine": rec["engine"], "counts": [1]}
        rec["result_parts"] = protocol.serialize(err)
        rec["result_header"]["body"] = protocol.body_digest(rec["result_parts"])
        self._finish(rec, ERROR)

    def _act(self, decisions):
        """Carry out the scheduler's decisions."""
        for d in decisions:
            rec = self.db.get(d[1])
            if rec is None:
                continue
            what = d[0]
            if what == "run":
                self._assign(rec, d[2])
            elif what == "done":
                self._finish(rec, rec["result_header"].get("status", ERROR))
            elif what == "fail":
                self._fail(rec, d[2], d[3])
            elif what == "recover":
                recovery = self.db.get(d[2])
                if recovery is not None:
                    recovery["recovers"] = d[1]
            elif what == "abort":
                engine = self.engines.get(d[2])
                if engine is not None:
                    self._send(self.sockets["engine"], [engine["ident"]], protocol.ABORT,
                               msg_ids=[d[1]])

    def _lookup(self, msg_id):
        rec = self.db.get(msg_id)
        if rec is None or rec["status"] == PENDING:
            return None
        return ("ok" if rec["status"] == OK else "error", rec["engine"])

    # ------------------------------------------------------------ queries

    def _queue_status(self, idents, header, parts):
        status = self.scheduler.status()
        per = {}
        for eid, e in self.engines.items():
            sched = status["engines"].get(eid, {})
            per[eid] = {"queue": len(e["outstanding"]), "tasks": sched.get("queue", 0),
                        "completed": e["completed"]}
        targets = header.get("targets")
        if targets is not None:
            per = {eid: v for eid, v in per.items() if eid in targets}
        stats = dict(self.stats, **{"dropped_" + k.replace(" ", "_"): v
                                    for k, v in self.session.dropped.items()})
        self._reply(idents, header, status="ok", engines=per,
                    unassigned=status["unassigned"], records=len(self.db), stats=stats)

    def _result_request(self, idents, header, parts):
        pending, done, unknown = [], [], []
        for msg_id in header.get("msg_ids", ()):
            rec = self.db.get(msg_id)
            if rec is None:
                unknown.append(msg_id)
            elif rec["status"] == PENDING:
                pending.append(msg_id)
                if rec["client"] != idents[0].bytes:
                    rec["watchers"] = (rec["watchers"] or []) + [idents[0].bytes]
            else:
                done.append(msg_id)
        self._reply(idents, header, status="ok", pending=pending, completed=done, unknown=unknown)
        for msg_id in done:  # then the results themselves, as ordinary replies
            rec = self.db.get(msg_id)
            rh = dict(rec["result_header"], date=time.time(), resent=True)
            self.sockets["client"].send_multipart(
                [idents[0], *self.session.resign(rh, rec["result_parts"] or ())], copy=False)

    def _purge(self, idents, header, parts):
        msg_ids = header.get("msg_ids")
        targets = header.get("targets")
        if msg_ids == "all" or (msg_ids is None and targets is None):
            msg_ids = [r["msg_id"] for r in self.db.records() if r["status"] != PENDING]
        elif msg_ids is None:
            msg_ids = [r["msg_id"] for r in self.db.records()
                       if r["status"] != PENDING and r["engine"] in targets]
        kept = [m for m in msg_ids if not self.db.drop(m)]
        self._reply(idents, header, status="ok", purged=len(msg_ids) - len(kept), pending=kept)

    def _abort(self, idents, header, parts):
        msg_ids = list(header.get("msg_ids", ()))
        now = time.time()
        direct = collections.defaultdict(list)
        lb = []
        for msg_id in msg_ids:
            rec = self.db.get(msg_id)
            if rec is None or rec["status"] != PENDING:
                continue
            if rec["lb"]:
                lb.append(msg_id)
            elif rec["engine"] in self.engines:
                direct[rec["engine"]].append(msg_id)
        self._act(self.scheduler.abort(lb, now))
        for eid, ids in direct.items():
            self._send(self.sockets["engine"], [self.engines[eid]["ident"]], protocol.ABORT,
                       msg_ids=ids)
        self._reply(idents, header, status="ok")

    def _shutdown(self, idents, header, parts):
        targets = header.get("targets")
        targets = sorted(self.engines) if targets is None else targets
        for eid in targets:
            if eid in self.engines:
                self._send(self.sockets["engine"], [self.engines[eid]["ident"]],
                           protocol.SHUTDOWN)
        self._reply(idents, header, status="ok")
        if header.get("hub"):
            log.info("shutdown requested by a client")
            self._stop = True

    def _properties(self, idents, header, parts):
        eid = header.get("engine")
        if eid not in self.engines:
            return self._reply(idents, header, status="error",
                               error=("EngineError", f"engine {eid} is not registered"))
        self._reply(idents, header, status="ok", properties=self.engines[eid]["properties"])

    _client_handlers = {
        protocol.CONNECT: _connect,
        protocol.QUEUE_STATUS: _queue_status,
        protocol.RESULT_REQUEST: _result_request,
        protocol.PURGE: _purge,
        protocol.ABORT: _abort,
        protocol.SHUTDOWN: _shutdown,
    }


def _task(header):
    """The scheduler's view of a load-balanced request."""
    return {"msg_id": header["msg_id"], "targets": header.get("targets"),
            "after": header.get("after"), "follow": header.get("follow"),
            "timeout": header.get("timeout"), "retries": header.get("retries") or 0,
            "recovery": header.get("recovery"), "dormant": bool(header.get("dormant")),
            "depend": None}


def _load_json(path):
    import json

    with open(path) as f:
        return json.load(f)


class PortInUseError(errors.MiniparError, OSError):
    """The port asked for is taken."""


class NoPortsLeftError(errors.MiniparError, OSError):
    """Too few of the candidate ports (--ports) are free."""


# Sockets that take ports from --ports, in order; the first is the one --port sets.
_PORT_NAMES = ("engine", "client", "notify", "ping", "pong")


def parse_ports(spec):
    """'10101-10120', '10101,10105,10110-10112' or '10101' as a list of ports."""
    ports = []
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        ports += range(int(lo), int(hi or lo) + 1)
    return ports


def pick_ports(ip, candidates):
    """A free candidate port for each socket; one candidate means 'that port or fail'.

    Probed with a plain socket (SO_REUSEADDR, as zmq binds), so a port taken between the
    probe and the bind still ends in PortInUseError from bind().
    """
    if len(candidates) == 1:
        return {_PORT_NAMES[0]: candidates[0]}
    free = []
    for port in candidates:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("" if ip in ("*", "0.0.0.0") else ip, port))
            except OSError:
                continue
        free.append(port)
        if len(free) == len(_PORT_NAMES):
            return dict(zip(_PORT_NAMES, free))
    raise NoPortsLeftError(
        f"only {len(free)} of the {len(candidates)} candidate ports are free on {ip} "
        f"({candidates[0]}..{candidates[-1]}) and the controller needs {len(_PORT_NAMES)}: "
        "give a wider --ports range, or stop what uses them")


def main(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'controller'}",
                                description="Start a minipar controller.")
    p.add_argument("--ip", default="127.0.0.1",
                   help="interface to listen on (default loopback; '*' for all)")
    p.add_argument("--port", type=int, default=0, help="registration port (others random)")
    p.add_argument("--ports", help="candidate ports for every socket: 10101-10120, "
                   "10101,10105 or one port (registration; PortInUseError if taken)")
    p.add_argument("--location", help="host name or address that engines and clients use")
    p.add_argument("--reuse", action="store_true", help="keep ports and key across restarts")
    p.add_argument("--profile", help="profile name (~/.minipar/profile_NAME)")
    p.add_argument("--profile-dir", help="profile folder (overrides --profile)")
    p.add_argument("--heartbeat-period", type=float, default=HEARTBEAT_PERIOD_S,
                   help="seconds between heartbeats")
    p.add_argument("--heartbeat-liveness", type=int, default=HEARTBEAT_LIVENESS,
                   help="missed heartbeats before an engine is declared dead")
    p.add_argument("--scheme", default="leastload",
                   choices=["leastload", "lru", "twobin", "weighted", "plainrandom"])
    p.add_argument("--hwm", type=int, default=2, help="outstanding tasks per engine (0: no limit)")
    p.add_argument("--db", default="dict", choices=["dict", "none"])
    p.add_argument("--log-level", default=os.environ.get("MINIPAR_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(level="DEBUG" if os.environ.get("MINIPAR_DEBUG") else args.log_level.upper(),
                        format="%(asctime)s controller %(levelname)s %(message)s")
    try:
        ports = pick_ports(args.ip, parse_ports(args.ports)) if args.ports else None
    except NoPortsLeftError as e:
        log.error("NoPortsLeftError: %s", e)
        return 1
    c = Controller(ip=args.ip, port=args.port, ports=ports, location=args.location,
                   profile=args.profile, profile_dir=args.profile_dir, reuse=args.reuse,
                   heartbeat_period=args.heartbeat_period,
                   heartbeat_liveness=args.heartbeat_liveness, scheme=args.scheme,
                   hwm=args.hwm, db=args.db)

    def stop(signum, frame):
        log.info("signal %d: stopping", signum)
        c._stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        c.run()
    except PortInUseError as e:
        log.error("PortInUseError: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
