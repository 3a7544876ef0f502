"""The controller (hub): registration, heartbeats, routing, task records.

One process, one thread (the hub loop) owning every socket; all connections are
inbound, so only the controller's host needs open ports::

    client DEALER ──▶ ROUTER "client" ┐               ┌ ROUTER "engine" ◀── DEALER engine
    client SUB    ◀── PUB "notify"    ├─ hub loop ────┤ PUB "ping"      ──▶ SUB  ┐ heart
                                      ┘               └ ROUTER "pong"   ◀── DEALER┘ (zmq.proxy)

The hub reads headers only (a task's by its routing prefix: ``protocol.route_header``);
request and result parts pass through untouched. A direct request names its engine (`engine`);
load-balanced ones (`lb`) go to the ``scheduler.Scheduler``, whose decisions the hub
carries out in ``_act``. Every request gets a record in the DB (``--db``: ``DictDB``,
``SQLiteDB`` or ``NoDB``, in ``records``, whose docstring has the record's keys;
``db_query`` searches them), and every record reaches a final state: the engine's reply,
or an error the hub makes itself (engine died, aborted, impossible dependency).

Timers (heartbeat, scheduler deadlines, a waiting query's grace: _park) are deadlines
checked after each poll, not threads. ``loop_once(now)`` is one pass; tests may call it by
hand. Deadlines and the scheduler's `now` are ``time.monotonic()`` (a wall-clock jump
neither stops heartbeats nor fires timeouts); ``time.time()`` only stamps records for users.

Robustness: a message that fails its check is refused, counted by reason (queue_status ``stats``)
and logged sparingly; a signed header with fields of the wrong type becomes an error result, not a
half-made record. A reply from an earlier attempt of a task (an engine declared dead and back) is
refused as stale, so each request ends once. A client reading less than it is sent (stopped, asleep)
has its messages wait in order, and past a bound its tasks (_to_client). Started with ``--reuse --db
sqlite`` after a crash, ``_recover`` resubmits or fails what the previous controller left pending.
``--curve`` encrypts every socket with CurveZMQ. Stopping without ``--reuse`` (its key and ports go
with it), it first fails every request it holds and stops its engines (``_end_everything``): none
could wait for it. With ``--owner PID`` (a Cluster passes its own pid) the controller stops the
cluster, as a client's ``shutdown(hub=True)`` does, at the first heartbeat after that process ended,
and runs ``launcher stop`` of the cluster for what no message reaches (a batch job still pending): a
script killed by SIGTERM or SIGKILL runs no atexit, and would leave it all running."""

import argparse
import collections
import contextlib
import errno
import functools
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import zmq

from . import errors, protocol
from . import scheduler as _scheduler, top as _top
from .protocol import ERROR, OK
from .records import (PENDING, RECORD_BYTES, RECORD_LIMIT, Backlogs, Parked, _give_back_memory,
                      _header, _IdSet, _queried_ids, _result_header, open_db)

log = logging.getLogger(__name__)
__path__ = []   # so ipyparallel's paths into it are explained: errors.SUBMODULE_MOVED

HEARTBEAT_PERIOD_S = 1.0   # 0.1..5 is reasonable; tests use 0.1
HEARTBEAT_LIVENESS = 5     # missed beats before an engine is dead; 3..10 is reasonable
# The smallest --max-message-size: below it registration and connect replies (engine
# lists, the roster) do not fit, and the cluster cannot start. Data needs far more.
MIN_MESSAGE_SIZE = 64 * 1024

# Parts held once however many queued requests have them (see _submit): at most this
# many, of at most this size (a few MB in all).
SHARED_PARTS, SHARED_PART_MAX = 256, 8192

# How many ids the queries waiting for ids not here yet name in all (see _park; past it:
# answered at once). They wait the scheduler's UNKNOWN_GRACE_S, as a dependency does.
PARKED_IDS = 100_000

# A client reading less than its engines make (stopped, asleep, slow) neither holds the hub's
# memory nor loses results: its pipe takes CLIENT_PIPE_MSGS messages (batches of up to
# BATCH_BYTES), then they wait in records.Backlogs (tried again within BACKLOG_RETRY_S), and
# past CLIENT_BACKLOG_BYTES its queued tasks wait till half is sent. 4..256, 16..512 MB, 5..100 ms.
CLIENT_PIPE_MSGS, CLIENT_BACKLOG_BYTES, BACKLOG_RETRY_S = 16, 64 << 20, 0.02
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

LINGER_MS = 1000   # at close, for replies and shutdowns still to leave (see close)
GC_YOUNG_THRESHOLD = 10_000   # new objects between the collector's young passes (see main)

CURVE_FILE = "minipar-curve.json"   # the controller's own Curve key pair, 0600, for --reuse

# A client's abort waiting for engines to mark its requests (see _abort): the client's routing
# ids and request header, the engines not heard from yet (a set, emptied as they answer or go),
# its reply's fields (how many requests were pending, the unknown ids), and the time.monotonic()
# past which it is answered anyway: an engine whose task holds the GIL in one long C call marks
# nothing until the call returns. Under the Client's 10 s default timeout; 2..5 is reasonable.
_Aborting = collections.namedtuple("_Aborting", "idents header engines answer deadline")
ABORT_WAIT_S = 4.0

# The status of a failure the controller makes, as an engine would report it: a task
# aborted or timed out before an engine had it reads as one aborted or timed out there.
_STATUS_OF = {"TaskAborted": protocol.ABORTED, "TaskTimeout": protocol.TIMEOUT}

_DIRECT = {protocol.APPLY, protocol.EXECUTE, protocol.PUSH, protocol.PULL, protocol.KEYS,
           protocol.CLEAR, protocol.PROPERTIES, protocol.STATS}


class Controller:
    def __init__(self, ip="127.0.0.1", port=0, ports=None, location=None, profile=None,
                 profile_dir=None, reuse=False, heartbeat_period=HEARTBEAT_PERIOD_S,
                 heartbeat_liveness=HEARTBEAT_LIVENESS, scheme="leastload", hwm=None,
                 db="dict", max_message_size=protocol.MAX_MESSAGE_SIZE, curve=False,
                 record_limit=RECORD_LIMIT, record_bytes=RECORD_BYTES, owner=None):
        # a period of 0 spins the hub loop, and a liveness of 0 declares every engine dead
        # at each beat: both ran without a word, with engines registering over and over
        if not heartbeat_period > 0:
            raise ValueError(f"heartbeat period must be above 0 s (0.1..5 is reasonable), "
                             f"not {heartbeat_period}")
        if not heartbeat_liveness >= 1:
            raise ValueError(f"heartbeat liveness must be 1 or more missed beats (3..10 is "
                             f"reasonable), not {heartbeat_liveness}")
        # a port past 65535 was dropped for a random one, and a tiny message size let no
        # engine register nor client connect, both without a word
        if port and not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port (1..65535), or 0 for any free one")
        if max_message_size < MIN_MESSAGE_SIZE:
            raise ValueError(f"max message size {max_message_size} is too small: the "
                             f"cluster's own messages need {MIN_MESSAGE_SIZE} bytes or more "
                             "(it is in bytes: 100000000 is 100 MB)")
        # a negative bound (-1 meant as no limit) culled every record as it finished
        for what, bound in (("record limit", record_limit), ("record bytes", record_bytes)):
            if bound < 0:
                raise ValueError(f"{what} {bound} is negative: give how many to keep (0 keeps "
                                 "no finished task's record); --db sqlite keeps them all")
        self.ip = ip
        self.location = location or (socket.gethostname() if ip in ("*", "0.0.0.0") else ip)
        self.profile_dir = protocol.profile_dir(profile, profile_dir)
        self.reuse = reuse
        self.heartbeat_period, self.heartbeat_liveness = heartbeat_period, heartbeat_liveness
        self.max_message_size = max_message_size
        self.ports = dict(ports or {})
        if port:
            self.ports.setdefault("engine", port)
        sec = protocol.security_dir(self.profile_dir)
        self.client_file = os.path.join(sec, protocol.CLIENT_FILE)
        self.engine_file = os.path.join(sec, protocol.ENGINE_FILE)
        key, back = None, {}
        if reuse and os.path.exists(self.client_file):
            old = _reusable(self.client_file)
            key, back = old.get("key"), old.get("engines")
            for name, p in old.get("ports", {}).items():
                self.ports.setdefault(name, p)
        self.session = protocol.Session(key or os.urandom(32).hex(), max_message_size, router=True)
        self._held = {} if key else None   # a restart's: engine id -> requests (see _route)
        # the previous controller's engines not back: id -> _engine_info (_connect); no new
        # engine takes their ids, as requests for them wait for them (ipyparallel's: none)
        self._before = {int(k): v for k, v in (back if isinstance(back, dict) else {}).items()
                        if k.isdigit() and isinstance(v, dict)}
        # (public, secret) CurveZMQ keys with --curve; the public one goes in the files
        self.curve_file = os.path.join(sec, CURVE_FILE)
        self.curve = protocol.curve_keys(self.curve_file, reuse, log.warning) if curve else None
        # db="dict" culls its oldest finished records beyond record_limit or record_bytes
        self.db = (open_db(db, self.profile_dir, record_limit, record_bytes)
                   if isinstance(db, str) else db)
        self.scheduler = _scheduler.Scheduler(scheme=scheme, hwm=hwm, lookup=self._lookup)
        log.info("tasks: scheme %s, hwm %s, records in %s", getattr(scheme, "__name__", scheme),
                 "auto" if hwm is None else hwm or "unlimited", type(self.db).__name__)
        self.engines = {}        # id -> engine dict (see _register)
        self._roster = 0         # changes made to `engines`, numbered for clients (_notify)
        self._unsaved = False    # `engines` changed since the client file was written
        self._by_ident = {}      # engine routing id (bytes) -> id
        self._clients = {}       # client session -> the routing id its replies go to
        self._pong_notified = {}  # unknown heart identity -> beat it was last told to register
        self._shared = {}         # a small part -> the one copy queued requests hold
        self._out = {}            # (socket, routing ids) -> what this pass sends there
        self._direct = False      # handling the first message of a drain: send at once
        self._backlog = Backlogs(self._send_client, CLIENT_BACKLOG_BYTES, BACKLOG_RETRY_S)
        self._aborting = {}       # a client's abort msg_id -> _Aborting
        self._taking = {}         # a take-back's msg_id -> (the engine asked, the msg_ids)
        self._epitaphs = {}       # dead engine id -> where it ran and its log's last lines
        self._parked = Parked(PARKED_IDS)   # queries waiting for their ids (see _park)
        self._purged = _IdSet()   # ids purged here: "unknown" at once, never waited for
        self._now = 0.0           # the pass's `now` once its poll returned, for _park
        self._next_id, self._beat, self._next_beat = 0, 0, 0.0
        self._stop, self._stopper = False, None   # _stopper: a `launcher stop` (_heartbeat)
        self._stopped_by = None   # the client whose shutdown(hub=True) stopped it
        self._host, self._pidns = socket.gethostname(), protocol.pid_namespace()
        # the process whose end stops the cluster (see _heartbeat), by pid and start time (not
        # a later one given its pid); unseen where its pid means nothing: another host, pid ns
        self.owner, where = owner, protocol.local_process(str(owner)) if owner else None
        self._owner_alive = where and functools.partial(protocol.same_process, *where)
        if owner and not where:
            log.warning("owner %s runs on another host or in another pid namespace: this "
                        "controller cannot see it end; `launcher stop` the cluster", owner)
        self.stats = collections.Counter()
        self.tally = _top.Tally(time.time())   # what rc.status / minipar.top report

    # ------------------------------------------------------------ setup

    def bind(self):
        self.ctx = zmq.Context()
        s = self.sockets = {}
        kinds = {"client": zmq.ROUTER, "notify": zmq.PUB, "engine": zmq.ROUTER,
                 "ping": zmq.PUB, "pong": zmq.ROUTER}
        for name, kind in kinds.items():
            sock = self.ctx.socket(kind)
            sock.linger = 0
            if self.curve:
                sock.curve_server, sock.curve_secretkey = True, self.curve[1]
            if kind == zmq.ROUTER:   # the hub never drops (a client's full pipe: _to_client)
                sock.router_mandatory = name == "client"
                sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
                sock.rcvhwm, sock.sndhwm = 0, CLIENT_PIPE_MSGS if name == "client" else 0
            port = self.ports.get(name)
            addr = f"tcp://{self.ip}"
            try:
                if port:
                    sock.bind(f"{addr}:{port}")
                else:
                    port = sock.bind_to_random_port(addr)
            except zmq.ZMQError as e:
                if port and e.errno != errno.EADDRNOTAVAIL:
                    raise PortInUseError(f"cannot listen on {self.ip}:{port} for the {name} "
                                         f"socket: {e}; choose another --port or stop the "
                                         "process using it") from None
                raise errors.MiniparError(
                    f"cannot listen on {self.ip} for the {name} socket: {e}; give --ip an "
                    "address of this machine, or '*' for all of them (--location sets the "
                    "one engines and clients use)") from None
            self.ports[name] = port
            s[name] = sock
        self.poller = zmq.Poller()
        for name in ("client", "engine", "pong"):
            self.poller.register(s[name], zmq.POLLIN)
        self._handlers = {s["client"]: self._on_client, s["engine"]: self._on_engine,
                          s["pong"]: self._on_pong}
        self._recover(time.monotonic())
        protocol.write_connection_file(self.engine_file, self.info)
        self._write_client_file()
        every = self.ip in ("*", "0.0.0.0")   # --ip's opt-in to be reached from other machines
        log.info("minipar controller ready: %s%s; connection files in %s",
                 protocol.url(self.info, "client"), " (listening on every interface)" * every,
                 os.path.dirname(self.client_file))
        if every and not self.curve:   # signing stops forged or altered messages, not reading
            log.warning("listening on every interface without --curve: messages are signed but "
                        "not encrypted, so whoever sees the traffic reads the tasks, data and "
                        "results; on a network you do not trust, restart with --curve")

    def _write_client_file(self):
        """The client file, with the engines (and in a restart's grace the previous controller's
        not back yet; not after, or a dead one is waited for at every restart): with --reuse,
        written at the beat after they change (_notify) and at the end, for the next (_connect)."""
        before = self._before if self._held is not None else {}
        engines = {**before, **{i: self._engine_info(e) for i, e in self.engines.items()}}
        protocol.write_connection_file(self.client_file, dict(self.info, engines=engines))
        self._unsaved = False

    # ------------------------------------------------------------ restart (--db sqlite)

    def _recover(self, now):   # now: time.monotonic(), for the scheduler
        """Take up what a previous controller left pending in the DB (--reuse --db sqlite).

        Each request may have been queued or running when it died; what became of a run
        is unknown (its engine's late reply is refused as stale: its attempt is old). So
        a load-balanced task with retries left is submitted again, spending one; every
        other request fails with a clear EngineError. The clients' reply routes come back
        from the records; the clients reconnect by themselves, and ask for the results
        of what they still wait for. Nothing is left pending forever."""
        left = sorted(self.db.pending(), key=lambda r: r.get("submitted") or 0)
        if not left:
            return
        again = 0
        for rec in left:
            header = _header(rec)
            session = header.get("session")
            if session and rec.get("client"):
                self._clients.setdefault(session, rec["client"])
            rec.update(engine=None, watchers=None, attempts=[*(rec.get("attempts") or ()), {
                "engine": None, "status": "controller_restart", "started": None,
                "completed": time.time(), "ename": "EngineError"}])
            self.db.add(rec)   # live again: the next attempt is re-signed, as a retry is
            retries = header.get("retries") or 0
            if rec["lb"] and retries > 0 and not _request_problem(header):
                try:
                    task = dict(_scheduler.task_of(header), retries=retries - 1)
                except errors.InvalidDependency as e:
                    self._fail(rec, "InvalidDependency", str(e))
                    continue
                self._act(self.scheduler.submit(task, now, rec.get("client")))
                again += 1
            else:
                self._fail(rec, "EngineError",
                           f"the controller restarted while request {rec['msg_id']} was "
                           "pending (queued or running), so whether it ran is unknown and "
                           "its result is lost; submit it again if running it twice is safe "
                           "(or give tasks retries, which are resubmitted after a restart)")
        log.warning("took up %d requests left pending by the previous controller: %d "
                    "submitted again, %d failed", len(left), again, len(left) - again)

    @property
    def info(self):
        info = {"key": self.session.key.hex(), "signature_scheme": protocol.SIGNATURE_SCHEME,
                "transport": "tcp", "ip": self.ip, "location": self.location,
                "ports": dict(self.ports), "pid": os.getpid(), "host": socket.gethostname(),
                "heartbeat_period": self.heartbeat_period, "reuse": self.reuse,  # to restart it
                "max_message_size": self.max_message_size}
        if self.curve:
            info["curve_serverkey"] = self.curve[0].decode()
        return info

    def close(self):
        self.db.close()
        if self._unsaved:   # for the next controller (see _connect)
            self._write_client_file()
        elif not self.reuse:
            for f in (self.client_file, self.engine_file, self.curve_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
        for name, sock in self.sockets.items():   # what _end_everything sent may leave
            sock.close(linger=LINGER_MS if name in ("client", "engine", "notify") else 0)
        self.ctx.term()

    # ------------------------------------------------------------ loop

    def run(self):
        """Serve until stopped (SIGTERM, SIGINT or a client's shutdown(hub=True))."""
        self.bind()
        try:
            while not self._stop:
                self.loop_once(time.monotonic())
            self._unpark(None)   # stopped by a signal after the pass's own check
            if not self.reuse:
                self._end_everything()
        finally:
            self.close()
        log.info("controller stopped")

    def _end_everything(self):
        """A controller stopping without --reuse takes its key and ports with it: no engine
        or client could wait for it to come back. Each request it holds fails now, and its
        engines stop, rather than wait their max_missed_heartbeats and reconnect_timeout
        (close() gives these messages a second to leave)."""
        for rec in self.db.pending():
            if rec["submitted"] < self.tally.started or rec["client"] == self._stopped_by:
                continue   # a crashed controller's (left for --reuse), or the stopper's
            self._fail(rec, "TaskAborted", f"the controller stopped before request "
                       f"{rec['msg_id']} ended; it was not started with --reuse, so it does "
                       "not come back: start a new one and submit the work again")
        gone = f"the controller (pid {os.getpid()}) stopped"   # clients' next calls fail at once
        self._tell(None, protocol.SHUTDOWN, why=gone, abort=True)
        self._notify(protocol.CONTROLLER_STOPPED, why=f"{gone}; it was not started with --reuse, "
                     "so it does not come back: start a new one and make a new Client")
        self._flush()

    def loop_once(self, now, timeout=None):
        if now >= self._next_beat:
            self._heartbeat(now)
        deadline = min(self._next_beat, self._parked.next_deadline() or self._next_beat)
        if self._backlog.queues:   # clients whose pipes were full (see _to_client)
            if now >= self._backlog.retry_at:
                for ident in self._backlog.retry(now):
                    log.info("client %r reads again: its tasks are assigned again", ident)
                    self._act(self.scheduler.release(ident, now))
            deadline = min(deadline, self._backlog.retry_at)
        sd = self.scheduler.next_deadline()
        if sd is not None:
            if sd <= now:
                self._act(self.scheduler.tick(now))
            deadline = min(deadline, max(sd, now))
        if timeout is None:
            timeout = max(0.0, deadline - time.monotonic())
        self._flush()
        polled, ready = time.monotonic(), self.poller.poll(timeout * 1000)
        now = self._now = now + time.monotonic() - polled   # on by the poll's wait: see _park
        for sock, _ in ready:
            if self._stop:   # stopped by a message just handled: what an engine said since
                break        # (it unregistered at the shutdown) must not fail requests
            handler = self._handlers[sock]
            # What the first message of a drain makes goes out at once (`_direct`): a lone
            # request must not wait (sending even a few µs later, after the next receive finds
            # nothing, cost 200-300 µs per round trip here). The rest's goes as batches.
            for n, frames in enumerate(protocol.drain(sock)):
                self._direct = not n
                try:
                    handler(frames)
                except Exception as e:  # a bad message must never stop the hub
                    self.stats["dropped"] += 1
                    log.warning("dropped a message that could not be handled: %s: %s",
                                type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                if self.db.full and handler != self._on_pong:   # pongs write nothing; the
                    break   # rest of a burst is read at the next pass (see SQLiteDB.full)
            self._direct = False
            self._flush()
        if self._parked.queries:   # after all was read: the ids they wait for may be in
            self._unpark(None if self._stop else now)
        self.db.flush()  # one commit per pass, not per record (a durable DB's: in _flush)

    def _check(self, sock, frames):
        """Verify a message; on failure count it, log it, send a refusal and return None."""
        try:
            return self.session.check(frames)
        except Exception as e:
            reason = str(e) or type(e).__name__
            self.stats["dropped"] += 1
            # the Session counted it by category; log the first few of each, then at
            # powers of two, so a flood of bad messages cannot flood the log as well
            n = self.session.dropped[protocol.drop_reason(e)]
            if n <= 10 or not n & (n - 1) or log.isEnabledFor(logging.DEBUG):
                name = next((k for k, s in self.sockets.items() if s is sock), "?")
                log.warning("refused a message on the %s socket: %s (a peer with the wrong "
                            "key, or a corrupt message; %d refused for this reason so far)",
                            name, reason, n)
            try:
                idents, *_ = self.session.split(frames)
            except ValueError:
                idents = frames[:1]
            if sock.type == zmq.ROUTER and idents:
                with contextlib.suppress(zmq.ZMQError):   # a client's pipe full, or it is gone
                    sock.send_multipart(protocol.refusal(idents[:1], reason), zmq.NOBLOCK)
            return None

    # ------------------------------------------------------------ heartbeat

    def _heartbeat(self, now):
        self._stop |= self._stopper is not None and self._stopper.poll() is not None
        if self._owner_alive is not None and not self._owner_alive():
            log.warning("owner process %s is gone: stopping its engines and controller", self.owner)
            self._tell(None, protocol.SHUTDOWN, why=f"the cluster's owner {self.owner} is gone",
                       abort=True)
            self._owner_alive = None
            # a pending batch job, an unregistered ssh engine: their launchers stop them (as the
            # cluster file says), then us. Till then (or that stop's end) we run: a batch
            # system would end that stop with our job
            from .launcher import cluster_stop_args   # only here: its owner is gone
            args = cluster_stop_args(os.getpid(), self.profile_dir, self.owner)
            self._stop = not args
            self._stopper = args and subprocess.Popen(
                [sys.executable, "-m", f"{__package__}.launcher", *args],
                stdin=subprocess.DEVNULL, start_new_session=True)
            return
        # A beat a period late or more: this controller was stopped (SIGSTOP) or starved.
        # An engine is judged gone by its pid (not in 5 beats) only at two beats on time:
        # what it sent before it ended (why it gave up, its death would hide) is read first.
        late = now - self._next_beat > self.heartbeat_period
        self._beat += 1
        self._next_beat = now + self.heartbeat_period
        self.sockets["ping"].send(b"%d" % self._beat)
        self.tally.prune(time.time())   # the counts are by wall-clock second
        if self._held is not None and self._beat > 2 * self.heartbeat_liveness:
            held, self._held = self._held, None   # the restart's grace is over (see _route)
            self._unsaved |= bool(self._before)   # no longer awaited: off the file
            self.tally.grace_ended = time.time()  # and lost rows in top (see top.snapshot)
            for eid, rec in [(eid, rec) for eid, recs in held.items() for rec in recs]:
                self._route(rec, eid)
        if self._unsaved:   # the engine list changed (see _notify)
            self._write_client_file()
        _top.say_if_no_engines(self, now)
        if not late:   # else the marks this controller has not read yet are not overdue
            self._abort_overdue(now)
        # Liveness counts beats, not seconds: a controller that was itself stalled (a
        # loaded machine) sent fewer beats and so declares nobody dead for its own delay.
        limit = self._beat - self.heartbeat_liveness
        for eid, e in list(self.engines.items()):
            if e["last_beat"] < limit:
                log.warning("engine %d missed %d heartbeats: declared dead", eid,
                            self.heartbeat_liveness)
                self._remove_engine(eid, died=True)
            elif late or not self._process_gone(e):
                e.pop("gone_at", None)
            elif e.setdefault("gone_at", self._beat) < self._beat:
                log.warning("engine %d: its process (pid %d) is gone", eid, e["pid"])
                self._remove_engine(eid, died=True)

    def _process_gone(self, e):
        """Whether engine `e` runs here, where its pid can be seen (this host, this pid
        namespace: not a container's), and its process has ended."""
        return self._pidns is not None and e.get("pidns") == self._pidns \
            and e["host"] == self._host and isinstance(e["pid"], int) \
            and not protocol.pid_alive(e["pid"])

    def _on_pong(self, frames):
        # Pongs are unsigned (the heart echoes in C); take only the beat number, and never
        # one from the future, so a forged pong cannot keep an engine alive for long.
        eid, beat = self._by_ident.get(frames[0].bytes), frames[-1].bytes
        if len(frames) != 2 or len(beat) > 20 or not beat.isdigit():
            self.stats["dropped_pong"] += 1
            return
        if eid is None:
            return self._notify_unknown_pong(frames[0].bytes)
        e = self.engines[eid]
        e["last_beat"] = max(e["last_beat"], min(int(beat), self._beat))

    def _notify_unknown_pong(self, ident):
        """A heart beats for an engine we do not know: one declared dead that came back,
        or one registered with a controller before a restart. Tell it (once per liveness
        period) so it registers again; the notice goes to its receiving socket, which has
        the heart's identity. A pong from anyone else reaches nobody."""
        self.stats["stale_pong"] += 1
        last = self._pong_notified.get(ident)
        if last is not None and self._beat - last < self.heartbeat_liveness:
            return
        if len(self._pong_notified) > 10_000:   # bounded whatever arrives
            self._pong_notified.clear()
        self._pong_notified[ident] = self._beat
        self._send(self.sockets["engine"], [ident], protocol.UNREGISTER,
                   reason="this engine is not registered (declared dead, or the controller "
                   "restarted)")

    # ------------------------------------------------------------ engines

    def _on_engine(self, frames):
        checked = self._check(self.sockets["engine"], frames)
        if checked is None:
            return
        idents, header, parts = checked
        ident, kind = idents[0].bytes, header["kind"]
        if kind == protocol.REGISTER:
            return self._register(ident, header)
        eid = self._by_ident.get(ident)
        if eid is None:
            # an engine we declared dead (frozen, then resumed) or from before a restart:
            # drop its message and tell it to register again; stale results are never delivered
            self.stats["stale"] += 1
            if ident.endswith(protocol.REPLY_SUFFIX):  # tell the engine's receiving socket
                ident = ident[:-len(protocol.REPLY_SUFFIX)]
            return self._send(self.sockets["engine"], [ident], protocol.UNREGISTER,
                              reason="this engine is not registered (declared dead?)")
        self.engines[eid]["last_beat"] = self._beat  # any message is a sign of life
        for header, parts, wire in self._items(header, parts, frames[len(idents):]):
            handler = self._engine_handlers.get(header["kind"])
            if handler is None:   # the common case: a reply to a request
                self._on_reply(eid, header, parts, wire)
            else:
                handler(self, eid, header, parts, wire)

    def _on_unregister(self, eid, header, parts, wire):
        reason = header.get("reason")   # why it left, if not told to, and the last it began
        why = reason if isinstance(reason, str) else None   # (see protocol)
        self._remove_engine(eid, False, why, header.get("last_started", False) if why else False)

    def _on_abort_marked(self, eid, header, parts, wire):
        parent, taken = header.get("parent"), header.get("taken")
        if not isinstance(parent, str):
            return
        asked = self._taking.get(parent)
        if asked is not None and asked[0] == eid:
            del self._taking[parent]
            return self._took_back(eid, asked[1], taken)
        for msg_id in taken if isinstance(taken, list) and parent in self._aborting else ():
            rec = self.db.get(msg_id) if isinstance(msg_id, str) else None
            if rec and rec["status"] == PENDING and rec["engine"] == eid and not rec["lb"]:
                self._fail(rec, "TaskAborted", "aborted before it started")   # see _abort
        self._abort_heard(eid, parent)

    def _on_usage(self, eid, header, parts, wire):
        _top.on_usage(self.engines[eid], header, time.time())

    def _on_properties_update(self, eid, header, parts, wire):
        properties = self.engines[eid]["properties"] = header.get("properties", {})
        self._act(self.scheduler.set_properties(eid, properties, time.monotonic()))

    def _register(self, ident, header):
        if ident in self._by_ident:
            # a repeated registration (its reply crossed a notice): answer it again, but
            # the engine is known already, so nobody is told twice
            eid = self._by_ident[ident]
            log.info("engine %d registered again; keeping its id", eid)
            engine = self.engines[eid]
            engine["reg"] = header["msg_id"].encode()
            if engine["work_ident"] != ident:
                engine["backlog"] = engine["backlog"] or []
            return self._send(self.sockets["engine"], [ident],
                              protocol.REGISTER_REPLY, parent=header["msg_id"],
                              id=eid, heartbeat_period=self.heartbeat_period,
                              heartbeat_liveness=self.heartbeat_liveness)
        problem = _register_problem(header)
        if problem:
            self.stats["dropped"] += 1
            log.warning("refused a registration: %s", problem)
            return self._send(self.sockets["engine"], [ident], protocol.UNREGISTER,
                              reason=f"registration refused: {problem}", fatal=True)
        want = header.get("id")
        if header.get("replaces") is not None:   # a launcher's replacement for a dead engine
            want = self._id_of_process(header["replaces"], header.get("host"))
        held = self.engines.get(want) if isinstance(want, int) else None
        if held is not None and self._process_gone(held):
            # its replacement (a restarted engine asks for the id it replaces) comes before
            # the heartbeats declare it dead: its process is gone, so it is dead now
            log.warning("engine %d: its process (pid %d) is gone", want, held["pid"])
            self._remove_engine(want, died=True)
        if isinstance(want, int) and want >= 0 and want not in self.engines:
            eid = want
        else:
            while self._next_id in self.engines or self._next_id in self._before:
                self._next_id += 1
            eid = self._next_id
        self._next_id = max(self._next_id, eid + 1)
        # requests go to the engine's main thread's socket, if it has one of its own
        work_ident = str(header.get("reply_ident") or "").encode() or ident
        # an engine back as the same id (declared dead, or replaced) goes on counting what
        # it answered, as Tally counts its failures by id: one row in the monitor
        gone = self.tally.lost.pop(eid, None)
        self._before.pop(eid, None)   # back after a restart
        engine = self.engines[eid] = {"id": eid, "ident": ident, "pid": header.get("pid"),
            "host": header.get("host"), "python": header.get("python"),
            "pidns": header.get("pidns"), "cloudpickle": header.get("cloudpickle"),
            "registered": time.time(), "log": header.get("log"),
            # a new engine has full liveness from its registration's beat
            "last_beat": self._beat, "properties": header.get("properties") or {},
            # it answers a take-back (see _take_back); an older engine reads one as an abort
            "take_back": header.get("take_back") is True,
            "outstanding": {}, "completed": gone["done"] if gone else 0,   # in the order sent
            # with the msg_id of this registration before them (see engine._request)
            "reg": header["msg_id"].encode(), "work_ident": work_ident,
            # requests waiting for the engine's `ready`; None once it came (at once for an
            # engine with one socket: it is connected already)
            "backlog": None if work_ident == ident else [], "started": None}   # see _on_started
        self._by_ident[ident] = self._by_ident[work_ident] = eid
        self._send(self.sockets["engine"], [ident], protocol.REGISTER_REPLY,
                   parent=header["msg_id"], id=eid, heartbeat_period=self.heartbeat_period,
                   heartbeat_liveness=self.heartbeat_liveness)
        log.info("engine %d registered (pid %s on %s)", eid, engine["pid"], engine["host"])
        self._notify(protocol.ENGINE_REGISTERED, id=eid, info=self._engine_info(engine))
        self._act(self.scheduler.engine_added(eid, time.monotonic(), engine["properties"]))
        for rec in self._held.pop(eid, ()) if self._held else ():   # sent while it was away
            self._route(rec, eid)

    def _id_of_process(self, pid, host):
        """The id of the engine that was process `pid` on `host` (registered, or lost
        lately), or None. A replacement names the process it replaces, which its launcher
        always knows, rather than that engine's id, which the engine may not have heard
        or logged before it was killed."""
        for engine in [*self.engines.values(), *self.tally.lost.values()]:
            if engine["pid"] == pid and engine["host"] == host:
                return engine["id"]
        return None

    def _engine_info(self, e):
        return {k: e[k] for k in ("id", "pid", "host", "python", "cloudpickle", "registered")}

    def _remove_engine(self, eid, died, why=None, said=False):
        """Remove engine `eid`: it died, or unregistered (having stopped because `why`, and
        begun no request after `said`, when it said: see _scheduler.what_ran)."""
        engine = self.engines.pop(eid)
        self._by_ident.pop(engine["ident"], None)
        self._by_ident.pop(engine["work_ident"], None)
        now = time.time()   # the engine's `started` stamps are wall-clock too
        how = f"stopped because {why}," if why else None   # the scheduler's words too
        what = how or ("died" if died else "unregistered")
        if why:
            log.warning("engine %d unregistered: it stopped because %s", eid, why)
        elif not died:   # a death is logged where it is found
            log.info("engine %d unregistered", eid)
        if died:
            self._epitaphs[eid] = _epitaph(engine)
            if len(self._epitaphs) > 100:   # bounded: the oldest go
                del self._epitaphs[next(iter(self._epitaphs))]
        timed_out = {}   # msg_id -> why, for the ones past their time_limit
        self.tally.engine_lost(engine, died, now)
        running, ran, unstarted = _scheduler.what_ran(   # what it began, as far as it said
            engine["outstanding"], [b[2] for b in engine["backlog"] or ()], engine["started"], said)
        for msg_id in list(engine["outstanding"]):
            rec = self.db.get(msg_id)
            if rec is None:
                continue
            if died and rec["status"] == PENDING and self._timed_out(rec, now):
                timed_out[msg_id] = _ended_for_time_limit(rec, eid)
                if not rec["lb"]:
                    self._fail(rec, "TaskTimeout", timed_out[msg_id])
                    continue
            if rec["lb"] and msg_id not in unstarted:   # one never started gets no attempt
                rec["attempts"] = [*rec["attempts"], {
                    "engine": eid, "status": "engine_died" if died else "engine_left",
                    "started": rec.get("started"), "completed": now, "ename": "EngineError"}]
            elif not rec["lb"]:
                self._fail(rec, "EngineError",
                           f"engine {eid} {what} before answering this request; "
                           "the work is lost: resubmit it to another engine")
        self._notify(protocol.ENGINE_DIED if died else protocol.ENGINE_UNREGISTERED, id=eid,
                     why=what.rstrip(",") + (self._epitaphs[eid] if died else ""))
        for parent in list(self._aborting):
            self._abort_heard(eid, parent)
        self._taking = {p: a for p, a in self._taking.items() if a[0] != eid}   # moved below
        if died:
            self._send(self.sockets["engine"], [engine["ident"]], protocol.UNREGISTER,
                       reason="declared dead: missed heartbeats")
        self._act(self.scheduler.engine_removed(eid, time.monotonic(), timed_out, how,
                                                not (died or why), running, ran, unstarted))

    # ------------------------------------------------------------ clients

    def _on_client(self, frames):
        checked = self._check(self.sockets["client"], frames)
        if checked is None:
            return
        idents, header, parts = checked
        for header, parts, wire in self._items(header, parts, frames[len(idents):]):
            self._on_client_message(idents[0].bytes, header, parts, wire)

    def _on_client_message(self, ident, header, parts, wire):
        kind = header["kind"]
        if kind == protocol.CONNECT:
            self._clients[header["session"]] = ident
        # a client sends from a send-only socket; its replies go to the socket it connected with
        idents = [self._clients.get(header["session"]) or ident]
        if kind in _DIRECT:
            return self._submit(idents[0], header, parts, wire)
        handler = self._client_handlers.get(kind)
        if handler is None:
            self.stats["dropped"] += 1
            self.stats["unknown_kind"] += 1
            n = self.stats["unknown_kind"]
            if n <= 10 or not n & (n - 1):   # not a log line per message of a flood
                log.warning("unknown request kind %r from a client (%d so far)", kind, n)
            return self._reply(idents, header, status=ERROR,
                               error=("ValueError", f"unknown request kind {kind!r}"))
        handler(self, idents, header, parts)

    def _reply(self, idents, header, **fields):
        # posted: never ahead of what this pass posted for the client (an abort's failures)
        self._post(self.sockets["client"], tuple(idents), self.session.msg(
            protocol.REPLY.get(header["kind"], protocol.UNKNOWN_REPLY), parent=header["msg_id"],
            signed=False, **fields)[1])

    def _post(self, sock, idents, wire):
        """Send `wire` (a message's frames from the delimiter): at once while handling the
        first message of a drain (not to a client, with a durable DB: see _flush), else at
        the end of the drain, together with what else it makes for the same peer."""
        if self._direct and not (self.db.durable and sock is self.sockets["client"]):
            send = self._to_client if sock is self.sockets["client"] else protocol.send
            return send(sock, self.session.signed(wire), idents)
        out = self._out.get((sock, idents))
        if out is None:
            self._out[sock, idents] = [wire]
        else:
            out.append(wire)

    def _flush(self):
        """Send what was posted: one message per peer, several as a batch (see
        protocol.Session.pack). An engine given a burst of tasks, or a client a burst of
        results, reads and checks one message instead of each. A durable DB commits first, once
        a drain: a result a client saw is never "pending" on disk, to run again (_recover)."""
        if self.db.durable:
            self.db.flush()
        out, self._out = self._out, {}
        for (sock, idents), wires in out.items():
            send = self._to_client if sock is self.sockets["client"] else protocol.send
            for frames in self.session.pack(wires):
                send(sock, frames, idents)

    def _to_client(self, sock, frames, idents):
        """protocol.send to a client, after what waits for it (its pipe was full); past
        CLIENT_BACKLOG_BYTES waiting, its tasks are held (see records.Backlogs)."""
        if self._backlog.deliver(idents[0], frames):
            log.info("client %r has %d MB of results waiting for it: its tasks wait until it "
                     "reads", idents[0], self._backlog.queues[idents[0]][0] >> 20)
            self.scheduler.hold(idents[0])

    def _send_client(self, ident, frames):
        """Send to a client: True; False if its pipe is full; None if it is gone."""
        sock = self.sockets["client"]
        try:
            protocol._send_frame(sock, ident, _MORE_NOBLOCK, copy=False)
        except zmq.ZMQError as e:   # EAGAIN: its pipe is full; EHOSTUNREACH: not connected
            if e.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                raise
            return None if e.errno == zmq.EHOSTUNREACH else False
        protocol.send(sock, frames)
        return True

    def _items(self, header, parts, wire):
        """(header, parts, wire) of each message that arrived as one: the items of a batch
        (wires unsigned, signed by Session.signed if sent on alone; tuples, which
        protocol.keep holds as they are, of the batch's frames kept once), or the message."""
        if header["kind"] != protocol.BATCH:
            return [(header, parts, wire)]
        self._direct = False   # what its items make goes as batches too
        parts = list(protocol.keep([None, *parts])[1:])
        return [(h, p, (protocol.DELIM, b"", hb, *p))
                for (h, p), hb in zip(self.session.unbatch(header, parts), header["items"])]

    def _send(self, sock, idents, kind, parts=(), **fields):
        _, frames = self.session.msg(kind, parts, **fields)
        protocol.send(sock, frames, idents)

    def _notify(self, kind, **fields):
        """Publish a change to the engine list, numbered (see client._take_engines)."""
        self._roster += 1
        _, frames = self.session.msg(kind, roster=self._roster, **fields)
        self.sockets["notify"].send_multipart([kind.encode(), *frames])
        # a file written once a beat at most: at each change, a thousand engines registering
        # at once would cost the hub seconds (the file grows with them)
        self._unsaved = self.reuse

    def _connect(self, idents, header, parts):
        # `before`: the engines not back after a restart; `hold_s`: how long requests for them
        # still wait for them (see _route; a beat spare): a reconnected client lets them through
        beats = 2 * self.heartbeat_liveness - self._beat if self._held is not None else 0
        self._reply(idents, header, status=OK, roster=self._roster, before=self._before,
                    engines={eid: self._engine_info(e) for eid, e in self.engines.items()},
                    hold_s=beats * self.heartbeat_period)

    def _submit(self, client, header, parts, wire):
        now = time.time()   # the record's `submitted`
        msg_id = header["msg_id"]
        if msg_id in self.db:
            raise ValueError(f"duplicate msg_id {msg_id}")
        wire = protocol.keep(wire)
        # held once, what many queued requests share: their first part (an apply's function)
        if len(wire) > 3 and len(wire[3]) <= SHARED_PART_MAX:
            if len(self._shared) >= SHARED_PARTS:
                self._shared.clear()
            wire = (*wire[:3], self._shared.setdefault(wire[3], wire[3]), *wire[4:])
        # the other RECORD_KEYS come once set: 9 keys take 190 B less than 15, per queued task
        rec = {"msg_id": msg_id, "kind": header["kind"], "client": client, "engine": None,
               "lb": bool(header.get("lb")), "submitted": now, "status": PENDING,
               "wire": wire, "attempts": ()}
        if "label" in header:   # a view's label flag, for db_query
            rec["label"] = header["label"]
        self.db.add(rec)
        if self._parked.queries:
            self._parked.arrived(msg_id)
        problem = _request_problem(header)
        if problem:
            self.stats["bad_request"] += 1
            return self._fail(rec, "ValueError", f"request {msg_id} refused: {problem}")
        if rec["lb"]:
            try:
                task = _scheduler.task_of(header)
            except errors.InvalidDependency as e:
                return self._fail(rec, "InvalidDependency", str(e))
            return self._act(self.scheduler.submit(task, time.monotonic(), client), rec)
        self._route(rec, header.get("engine"))

    def _route(self, rec, eid):
        """Send direct request `rec` to engine `eid`. A controller restarted (--reuse) hears from
        its engines a beat or two after it starts: one for an engine not back yet waits for it 2
        liveness periods, in beats (1 to be heard, 1 to register), then fails as at once."""
        if rec["status"] != PENDING:   # aborted while it waited
            return
        if eid in self.engines:
            return self._assign(rec, eid)
        if self._held is not None and eid >= 0:   # an int: see _request_problem
            return self._held.setdefault(eid, []).append(rec)
        was = self._before.get(eid)   # an engine of before the restart, not back
        why = was and (f" (pid {was.get('pid')} on {was.get('host')}) did not register again "
                       "after the controller restarted: start it again if it stopped")
        self._fail(rec, "EngineError", f"engine {eid}{why or ' is not registered'} (registered: "
                   f"{sorted(self.engines)}); use rc.ids for the live engines", eid)

    def _assign(self, rec, eid):
        """Send a request to engine `eid`: as received the first time, re-signed after
        (a retry must not look like a replay to an engine that saw it before)."""
        engine = self.engines[eid]
        wire = rec["wire"]
        if rec["attempts"]:
            # `date`: each header signed anew is unique, so no receiver takes it for a replay
            header = dict(_header(rec), attempt=len(rec["attempts"]), date=time.time())
            wire = self.session.resign(header, wire[3:])
        rec["engine"] = eid
        engine["outstanding"][rec["msg_id"]] = None
        # to the engine's main thread, under its current registration (requests queued
        # there from before it registered again are dropped)
        route = (engine["work_ident"], engine["reg"])
        if engine["backlog"] is None:
            self._post(self.sockets["engine"], route, wire)
        else:   # until its request socket is connected
            engine["backlog"].append((route, wire, rec["msg_id"]))

    def _on_ready(self, eid, header, parts, wire):
        """The engine's request socket is connected (a message came from it): send what
        waited for it here, as a ROUTER drops a message to a peer not yet connected."""
        engine = self.engines[eid]
        if str(header.get("reg")).encode() != engine["reg"] or engine["backlog"] is None:
            return   # for an earlier registration
        backlog, engine["backlog"] = engine["backlog"], None
        self._direct = False   # a burst: as batches
        for route, wire, _ in backlog:
            self._post(self.sockets["engine"], route, wire)

    def _on_reply(self, eid, header, parts, wire):
        msg_id = header.get("parent")
        rec = self.db.get(msg_id)
        engine = self.engines[eid]
        current = rec is not None and rec["status"] == PENDING and rec["engine"] == eid
        if not current or header.get("attempt", 0) != len(rec["attempts"]):
            # a result from an engine the task was moved away from, or from an earlier
            # attempt on this same engine (declared dead, back, given the retry): a task
            # gets one final state, never two
            if not current:
                engine["outstanding"].pop(msg_id, None)
            self.stats["stale"] += 1
            return
        wire = protocol.keep(wire)  # DELIM, signature, header, parts
        rec["result_header"], rec["result_hb"] = header, wire[2]   # see _result_header
        rec["result_parts"] = wire[3:]
        rec["reply_wire"] = wire
        rec["started"] = header.get("started")
        status = header.get("status", ERROR)
        engine["completed"] += 1   # direct and load-balanced, as queue_status reports it
        if not rec["lb"]:
            return self._finish(rec, status)   # which takes it off the engine's outstanding
        engine["outstanding"].pop(msg_id, None)
        started, completed = header.get("started"), header.get("completed")
        rec["attempts"] = [*rec["attempts"], {
            "engine": eid, "status": status, "started": started, "completed": completed,
            "ename": header.get("ename")}]
        runtime = completed - started if started and completed else None
        self._act(self.scheduler.finished(msg_id, eid, status, time.monotonic(), runtime), rec)

    def _on_started(self, eid, header, parts, wire):
        """A request started (one with a time_limit at once, others still running after the
        engine's STREAM_INTERVAL_S): its client's future is running. If its engine dies past
        a time_limit (code that held the GIL, which only ending the engine stops), it timed out."""
        rec, started = self.db.get(header.get("parent")), header.get("started")
        if rec is not None and rec["status"] == PENDING and rec["engine"] == eid \
                and _is_number(started):
            rec["started"], self.engines[eid]["started"] = started, rec["msg_id"]
            self._post(self.sockets["client"], (rec["client"],), wire)
            if rec["lb"] and header.get("long"):
                self._act(self.scheduler.long(eid, rec["msg_id"]))

    def _timed_out(self, rec, now):
        """Whether pending `rec`, on an engine that just died, had run past its time_limit."""
        limit, started = _header(rec).get("time_limit"), rec.get("started")
        return _is_number(limit) and _is_number(started) and now - started >= limit

    def _on_stream(self, eid, header, parts, wire):
        # `late`: what a request's threads printed after it ended, for its ar.stdout to grow
        rec = self.db.get(header.get("parent"))
        if rec is not None and (rec["status"] == PENDING or header.get("late") is True):
            self._post(self.sockets["client"], (rec["client"],), wire)

    # what an engine sends besides replies (and REGISTER, see _on_engine), by kind
    _engine_handlers = {protocol.UNREGISTER: _on_unregister, protocol.STREAM: _on_stream,
                        protocol.READY: _on_ready, protocol.ABORT_MARKED: _on_abort_marked,
                        protocol.STARTED: _on_started, protocol.USAGE: _on_usage,
                        protocol.PROPERTIES_UPDATE: _on_properties_update}

    # ------------------------------------------------------------ final states

    def _finish(self, rec, status):
        """The one place a record becomes final: deliver its result to its client(s)."""
        rec["status"] = status
        rec["completed"] = time.time()
        if rec["engine"] in self.engines:
            self.engines[rec["engine"]]["outstanding"].pop(rec["msg_id"], None)
        frames = rec.pop("reply_wire", None)
        if frames is None or len(rec["attempts"]) > 1:
            # made here, retried or recovered: a new header (the common case, an engine's
            # reply on the first attempt, goes on as it came, saving a pickle and an HMAC)
            header = _result_header(rec)
            header = dict(header, parent=rec["msg_id"], submitted=rec["submitted"],
                          engine=header.get("engine", rec["engine"]))
            if rec["attempts"]:
                header["attempts"] = rec["attempts"]
            frames = self.session.resign(header, rec["result_parts"] or ())
            rec["result_header"] = header
        sock = self.sockets["client"]
        for client in [rec["client"], *(rec.get("watchers") or ())]:
            self._post(sock, (client,), frames)
        self.db.finish(rec)
        # for rc.status: one dict update per request (failures are rare: a bit more)
        self.tally.finished[int(rec["completed"]), status == OK] += 1
        if status != OK or len(rec["attempts"]) > 1:   # failed, or tried again
            self.tally.failed(rec, _result_header(rec), status == OK)
        recovers = rec.get("recovers")
        if recovers:
            owner = self.db.get(recovers)
            if owner is not None and owner["status"] == PENDING:
                owner["result_header"] = dict(_result_header(rec), recovered_by=rec["msg_id"])
                owner["result_parts"] = rec["result_parts"]
                owner.pop("reply_wire", None)  # its own last failure is not what it ends with
                owner["engine"] = rec["engine"]
                self._finish(owner, status)

    def _fail(self, rec, ename, evalue, engine=None):
        """Finish `rec` with error `ename`; `engine`: the one a direct request was sent to,
        which never took it (else rec's), for the error's ``[engine:kind]`` label."""
        if ename == "EngineError" and rec["engine"] in self._epitaphs:
            evalue += self._epitaphs[rec["engine"]]
        info = {"msg_id": rec["msg_id"], "kind": rec["kind"],
                "engine_id": rec["engine"] if engine is None else engine}
        err = errors.error(ename, evalue, info)
        status = _STATUS_OF.get(ename, ERROR)
        rec["result_header"] = {"msg_id": protocol.new_id(),
                                "kind": protocol.REPLY.get(rec["kind"], protocol.UNKNOWN_REPLY),
                                "status": status, "ename": ename, "evalue": evalue,
                                "engine": rec["engine"], "counts": [1]}
        rec["result_parts"] = protocol.serialize(err)
        rec["result_header"]["body"] = protocol.body_digest(rec["result_parts"])
        rec.pop("reply_wire", None)
        self._finish(rec, status)

    def _act(self, decisions, known=None):
        """Carry out the scheduler's decisions (named tuples: see scheduler's docstring).
        ABORT ones are _abort's to carry out; TAKE ones go to each engine as one take-back.
        `known`: the record the caller holds (of the task just submitted or replied to,
        most decisions' task), not looked up again."""
        takes = None
        for d in decisions:
            if known is not None and d.msg_id == known["msg_id"]:
                rec = known
            else:
                rec = self.db.get(d.msg_id)
                if rec is None:
                    continue
            action = d.action
            if action == _scheduler.RUN:
                self._assign(rec, d.engine)
            elif action == _scheduler.DONE:
                self._finish(rec, rec["result_header"].get("status", ERROR))
            elif action == _scheduler.FAIL:
                self._fail(rec, d.ename, d.evalue)
            elif action == _scheduler.RECOVER:
                recovery = self.db.get(d.recovery)
                if recovery is not None:
                    recovery["recovers"] = d.msg_id
            elif action == _scheduler.TAKE:
                if takes is None:
                    takes = collections.defaultdict(list)
                takes[d.engine, d.running].append(d.msg_id)
        if takes:
            self._take_back(takes)

    def _take_back(self, takes):
        """Ask engines for the tasks queued behind a long one, {(engine, running): [msg_id]}:
        an abort naming the running task, which the engine answers with those it had not
        started, or none if `running` has ended (see engine._take_back, _took_back). An
        engine that did not register saying it can is not asked: it would abort them; they
        run there after `running`, as before take-backs."""
        for (eid, running), msg_ids in takes.items():
            if not self.engines[eid]["take_back"]:
                continue
            parent = protocol.new_id()
            self._taking[parent] = (eid, frozenset(msg_ids))
            self._tell([eid], protocol.ABORT, msg_ids=msg_ids, parent=parent, running=running)

    def _took_back(self, eid, asked, msg_ids):
        """Engine `eid` will never run `msg_ids`, of the `asked` ones: the scheduler queues
        them again. Each is signed anew (its next engine, maybe this one, must not take it
        for a replay), and gets no attempt: it never started. One not asked for (a bad
        engine's answer: its running task) stays, or it would run twice."""
        taken, engine = [], self.engines[eid]
        for msg_id in msg_ids if isinstance(msg_ids, list) else ():
            rec = self.db.get(msg_id) if isinstance(msg_id, str) and msg_id in asked else None
            if rec is None or rec["status"] != PENDING or rec["engine"] != eid:
                continue
            engine["outstanding"].pop(msg_id, None)
            rec["engine"] = None
            rec["header"] = header = dict(_header(rec), date=time.time())
            rec["wire"] = self.session.resign(header, rec["wire"][3:])
            taken.append(msg_id)
        self._act(self.scheduler.taken_back(eid, taken, time.monotonic()))

    def _lookup(self, msg_id):
        rec = self.db.get(msg_id)
        if rec is not None and not rec["lb"]:
            return _scheduler.DIRECT   # no dependency, running or finished: said at once
        if rec is None or rec["status"] == PENDING:
            return None
        return (OK if rec["status"] == OK else ERROR, rec["engine"])

    # ------------------------------------------------------------ queries

    def _park(self, idents, header, parts, unknown, weight):
        """Whether a query that would call `unknown` ids unknown waits for them: each client
        sends on its own connection, so another's request made just before may not be here
        yet. Only ids of protocol.new_id's shape, not culled nor purged, UNKNOWN_GRACE_S at
        most from when it came (`_now`: a quiet pass polls up to a heartbeat period), as for
        a dependency; _unpark answers it once they came, the grace ended or the hub stops."""
        if header.get("waited"):   # answered again by _unpark: it waits no more
            return False
        ids = [m for m in unknown if protocol.is_new_id(m) and m not in self._purged
               and not self.db.culled(m)]
        parked = self._parked.park(header["msg_id"], ids, weight,
                                   self._now + _scheduler.UNKNOWN_GRACE_S, (idents, header, parts))
        self.stats["parked"] += parked
        return parked

    def _unpark(self, now):
        """Answer the parked queries due by `now` (None: all), as they would be now."""
        for idents, header, parts in self._parked.due(now):
            try:
                self._client_handlers[header["kind"]](self, idents, dict(header, waited=True),
                                                      parts)
            except Exception as e:   # as in loop_once: never stops the hub
                self.stats["dropped"] += 1
                log.warning("dropped a query that waited: %s: %s", type(e).__name__, e)
        self._flush()   # what its handlers posted (a watched result, an abort's failures)

    def _queue_status(self, idents, header, parts):
        # the requests held for engines not registered again yet (see _route) are queued too
        held = {eid: [r["msg_id"] for r in recs if r["status"] == PENDING]
                for eid, recs in (self._held or {}).items()}
        self._reply(idents, header, status=OK, **_top.queue_status(self, header, held))

    def _status(self, idents, header, parts):
        """What the cluster does now, for rc.status and python -m minipar.top: made from
        what the hub tracks anyway (see minipar.top for the snapshot's keys)."""
        self._reply(idents, header, status=OK, snapshot=_top.snapshot(self, time.time()))

    def _result_request(self, idents, header, parts):
        # status_only (rc.result_status): the lists only; no results sent, no watching
        status_only = header.get("status_only", False)
        pending, done, unknown, running, watched = [], [], [], [], []
        culled = {}   # unknown ids the DB culled -> why (in `unknown` too, as before)
        submitted = {}   # id -> when this controller got it: the metadata of one asked for
        msg_ids = header.get("msg_ids", ())
        for msg_id in msg_ids:
            rec = self.db.get(msg_id)
            submitted[msg_id] = rec and rec["submitted"]
            if rec is None:
                unknown.append(msg_id)
                if why := self.db.culled(msg_id):
                    culled[msg_id] = why
            elif rec["status"] == PENDING:
                pending.append(msg_id)
                engine = self.engines.get(rec["engine"])
                if engine is not None and msg_id in engine["outstanding"]:
                    running.append(msg_id)  # sent to an engine (maybe queued behind another)
                if rec["client"] != idents[0] and not status_only:
                    watched.append(rec)
            else:
                done.append(msg_id)
        if unknown and self._park(idents, header, parts, unknown, len(msg_ids)):
            return
        for rec in watched:   # once the query is answered: not again if it waits
            rec["watchers"] = (rec.get("watchers") or []) + [idents[0]]
        self._reply(idents, header, status=OK, pending=pending, completed=done, unknown=unknown,
                    running=running, culled=culled, submitted=submitted)
        for msg_id in () if status_only else done:  # then the results, as ordinary replies
            rec = self.db.get(msg_id)
            self._post(self.sockets["client"], (idents[0],), self.session.resign(dict(
                _result_header(rec), date=time.time(), resent=True), rec["result_parts"] or ()))

    def _purge(self, idents, header, parts):
        msg_ids, targets = header.get("msg_ids"), header.get("targets")
        if msg_ids == "all" or (msg_ids is None and targets is None):
            msg_ids = [r["msg_id"] for r in self.db.records() if r["status"] != PENDING]
        elif msg_ids is None:
            msg_ids = [r["msg_id"] for r in self.db.records()
                       if r["status"] != PENDING and r["engine"] in targets]
        held, kept = self.db.nbytes, [m for m in msg_ids if not self.db.drop(m)]
        for m in set(msg_ids).difference(kept):   # remembered: a query says "unknown" at once
            self._purged.add(m)
        purged = len(msg_ids) - len(kept)
        self._reply(idents, header, status=OK, purged=purged, pending=kept)
        _give_back_memory(purged, held - self.db.nbytes)

    def _abort(self, idents, header, parts):
        """Tell each engine holding one of the requests; the client hears back once they
        have all marked them, so a queued request it aborted can no longer start."""
        msg_ids, now = list(header.get("msg_ids", ())), time.monotonic()
        asked = collections.defaultdict(list)   # engine -> the ids it is asked to mark
        lb, unknown, pending = [], [], 0
        for msg_id in msg_ids:
            rec = self.db.get(msg_id)
            if rec is None:
                unknown.append(msg_id)
            if rec is None or rec["status"] != PENDING:
                continue
            pending += 1
            if rec["lb"]:
                lb.append(msg_id)
            elif rec["engine"] in self.engines:
                asked[rec["engine"]].append(msg_id)
            else:   # waiting for its engine after a restart (see _route): never sent
                self._fail(rec, "TaskAborted", "aborted before it started")
        if unknown and self._park(idents, header, parts, unknown, len(msg_ids)):
            return
        decisions, direct = self.scheduler.abort(lb, now), set(asked)
        for d in decisions:
            if d.action == _scheduler.ABORT and d.engine in self.engines:
                asked[d.engine].append(d.msg_id)
                direct.discard(d.engine)
        self._act(d for d in decisions if d.action != _scheduler.ABORT)
        for eid, ids in asked.items():
            # requests run in the order sent: the direct ones behind the oldest, if it still
            # runs, come back as a take-back's, to fail at once (see _on_abort_marked)
            oldest = next(iter(self.engines[eid]["outstanding"]), None)
            self._tell([eid], protocol.ABORT, msg_ids=ids, parent=header["msg_id"],
                       queued_only=header.get("queued_only"),
                       behind=oldest if eid in direct and oldest not in ids else None)
        answer = dict(pending=pending, unknown=unknown)   # unknown: its client fails them
        if asked:
            self._aborting[header["msg_id"]] = _Aborting(idents, header, set(asked), answer,
                                                         now + ABORT_WAIT_S)
        else:
            self._reply(idents, header, status=OK, **answer)

    def _abort_heard(self, eid, parent):
        """Engine `eid` marked the requests of the client's abort `parent`, or is gone."""
        waiting = self._aborting.get(parent) if isinstance(parent, str) else None
        if waiting is None:
            return
        waiting.engines.discard(eid)
        if not waiting.engines:
            del self._aborting[parent]
            self._reply(waiting.idents, waiting.header, status=OK, **waiting.answer)

    def _abort_overdue(self, now):
        """Answer the aborts past their deadline, saying which engines have not marked
        their requests and why that most likely is: the client's `abort` warns with it."""
        for parent in [p for p, waiting in self._aborting.items() if now >= waiting.deadline]:
            waiting = self._aborting.pop(parent)
            late = ", ".join(f"{eid} (pid {self.engines[eid]['pid']} on "
                             f"{self.engines[eid]['host']})" for eid in sorted(waiting.engines))
            self._reply(waiting.idents, waiting.header, status=OK, **waiting.answer,
                        unmarked=f"engine {late} has not taken the abort in {ABORT_WAIT_S:g} s "
                        "though its heart beats: its task most likely holds the GIL in one long "
                        "C call, which no interrupt reaches until it returns. The abort acts "
                        "then (a request ending first keeps its result); to end it now, kill "
                        "that engine (SIGKILL if SIGTERM, whose handler waits for it, does not)")

    def _shutdown(self, idents, header, parts):
        self._tell(header.get("targets"), protocol.SHUTDOWN, why="a client's shutdown()")
        self._reply(idents, header, status=OK)
        if header.get("hub"):
            log.info("shutdown requested by a client")
            self._stop, self._stopped_by = True, idents[0]   # it fails its own requests

    def _tell(self, targets, kind, **fields):
        """Send `kind` (SHUTDOWN: `why`, its log says; `abort` the running request, else after
        it) to each target engine here (None: all); the ids it went to."""
        sent = [eid for eid in (sorted(self.engines) if targets is None else targets)
                if eid in self.engines]
        for eid in sent:
            self._send(self.sockets["engine"], [self.engines[eid]["ident"]], kind, **fields)
        return sent

    def _signal(self, idents, header, parts):
        """rc.send_signal: tell each target engine's receiver, which signals its process."""
        sig, targets = header.get("sig"), header.get("targets")
        if not _is_int(sig) or not (targets is None or isinstance(targets, list)):
            return self._reply(idents, header, status=ERROR, error=(
                "ValueError", "send_signal needs a signal number and a list of engine ids"))
        sent = self._tell(targets, protocol.SIGNAL, sig=sig)
        self._reply(idents, header, status=OK, targets=sent)

    def _broadcast(self, idents, header, parts):
        """A DirectView's request to several engines: one message, a record and a copy for
        each target engine under the msg_ids the client chose (its futures wait on them),
        so each reply comes back as a direct request's. Costs a signature per engine."""
        kind, targets, ids = header.get("request"), header.get("targets"), header.get("msg_ids")
        if kind not in _DIRECT or not isinstance(targets, list) or not isinstance(ids, list) \
                or len(targets) != len(ids) or not all(isinstance(m, str) for m in ids):
            self.stats["dropped"] += 1
            return log.warning("dropped a malformed broadcast request %s", header["msg_id"])
        self.stats["broadcast"] += 1
        parts = protocol.keep([protocol.DELIM, b"", b"", *parts])[3:]   # copied once
        base = {k: v for k, v in header.items() if k not in ("request", "targets", "msg_ids")}
        for eid, msg_id in zip(targets, ids):
            h = dict(base, kind=kind, msg_id=msg_id, engine=eid)
            try:
                self._submit(idents[0], h, parts, self.session.resign(h, parts))
            except ValueError as e:   # a msg_id in use: that copy only
                self.stats["dropped"] += 1
                log.warning("dropped part of broadcast %s: %s", header["msg_id"], e)

    # ------------------------------------------------------------ resubmit, db_query

    def _resubmit(self, idents, header, parts):
        """Submit finished requests again under the new msg_ids the client chose (it
        registered them before asking, so no result can arrive unexpected)."""
        old, new = list(header.get("msg_ids") or ()), list(header.get("new_ids") or ())
        problem = None
        recs = [self.db.get(m) for m in old]
        if len(new) != len(old) or len(set(new)) != len(new):
            problem = ("ValueError", "resubmit needs one new distinct msg_id per msg_id")
        for m, rec in zip(old, recs):
            if problem:
                break
            if rec is None or not rec.get("wire"):
                problem = ("KeyError", self.db.culled(m) or f"no record of {m} to resubmit: "
                           "unknown or purged (a controller started with --db none keeps no "
                           "finished requests)")
            elif rec["status"] == PENDING:
                problem = ("ValueError", f"task {m} is still pending; only finished tasks can "
                           "be resubmitted (abort it first, or wait for it)")
        for n in () if problem else new:
            if n in self.db:
                problem = ("ValueError", f"msg_id {n} is already in use")
                break
        if problem:
            return self._reply(idents, header, status=ERROR, error=problem)
        for rec, n in zip(recs, new):
            # the original request, under a new msg_id; its recovery was used or discarded
            h = {k: v for k, v in _header(rec).items() if k not in ("recovery", "dormant")}
            h.update(msg_id=n, date=time.time(), resubmitted=rec["msg_id"])
            self._submit(idents[0], h, (), self.session.resign(h, list(rec["wire"][3:])))
        self._reply(idents, header, status=OK)

    def _db_query(self, idents, header, parts):
        try:
            records = self.db.find_records(header.get("query") or {}, header.get("keys"))
        except ValueError as e:
            return self._reply(idents, header, status=ERROR, error=("ValueError", str(e)))
        ids = _queried_ids(header.get("query") or {}) or ()   # named msg_ids are waited for
        missing = [m for m in ids if protocol.is_new_id(m) and m not in self.db]
        if missing and self._park(idents, header, parts, missing, len(ids)):
            return
        self._reply(idents, header, status=OK, records=records)

    _client_handlers = {
        protocol.CONNECT: _connect, protocol.QUEUE_STATUS: _queue_status, protocol.STATUS: _status,
        protocol.RESULT_REQUEST: _result_request, protocol.PURGE: _purge, protocol.ABORT: _abort,
        protocol.SHUTDOWN: _shutdown, protocol.RESUBMIT: _resubmit, protocol.DB_QUERY: _db_query,
        protocol.SIGNAL: _signal, protocol.BROADCAST: _broadcast}


EPITAPH_LINES = 12   # the end of a dead engine's log quoted in its EngineErrors (or from
                     # faulthandler's "Fatal Python error", up to 40 lines)


def _epitaph(engine):
    """What a dead engine's log says last (faulthandler's trace of a crash, the exit
    status its launcher wrote), to add to the EngineError of its requests; read once, at
    its death, and only the last 8 KB."""
    where, path = f" (engine pid {engine['pid']} on {engine['host']})", engine.get("log")
    if not path or engine["host"] != socket.gethostname():
        return where
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = f.read().decode(errors="replace").splitlines()[-40:]
    except OSError:
        return where
    fatal = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
    lines = lines[fatal[-1]:] if fatal else lines[-EPITAPH_LINES:]
    if not lines:
        return where
    return f"{where}; the end of its log, {path}:\n" + "\n".join(lines)


def _ended_for_time_limit(rec, eid):
    return (f"the task ran longer than its time_limit of {_header(rec)['time_limit']} s in "
            "code that an interrupt cannot stop (a long call in C holding the GIL), so "
            f"engine {eid} was ended; raise time_limit or split the work")


# ---------------------------------------------------------------- header checks
#
# A header's signature proves who sent it, not that its fields make sense. A field of the
# wrong type would fail deep in the scheduler, after a record was half made; these checks
# turn it into an error result for that request (or a refused registration) instead.

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ids_problem(name, value):
    ids = value.get("ids") if isinstance(value, dict) else value
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
        return f"`{name}` must be a list of msg_ids (or a Dependency), not {value!r:.80}"
    if isinstance(value, dict) and not all(isinstance(value.get(k, True), bool)
                                           for k in ("all", "success", "failure")):
        return f"`{name}`'s all/success/failure must be True or False"
    return None


def _request_problem(header):
    """What is wrong with a request's routing fields, or None."""
    if "attempt" in header:   # its engine's reply would carry it, and be taken for stale
        return "`attempt` is the controller's to number a task's tries: leave it out"
    if not header.get("lb"):
        if not _is_int(header.get("engine")):
            return f"`engine` must be an engine id (int), not {header.get('engine')!r:.80}"
        return None
    if _scheduler.TASK_FIELDS.isdisjoint(header):
        return None
    targets = header.get("targets")
    if targets is not None and not _is_int(targets) and not (
            isinstance(targets, (list, tuple)) and all(_is_int(t) for t in targets)):
        return f"`targets` must be None, an engine id or a list of them, not {targets!r:.80}"
    for name in ("after", "follow"):
        problem = header.get(name) is not None and _ids_problem(name, header[name])
        if problem:
            return problem
    for name in ("timeout", "time_limit"):
        if header.get(name) is not None and not _is_number(header[name]):
            return f"`{name}` must be None or a number of seconds, not {header[name]!r:.80}"
        if header.get(name) is not None and not header[name] >= 0:   # NaN too
            return f"`{name}` must be >= 0, or None or 0 for no limit, not {header[name]!r}"
    retries = header.get("retries")
    if retries is not None and not (_is_int(retries) and retries >= 0):
        return f"`retries` must be a count (int >= 0), not {retries!r:.80}"
    if header.get("recovery") is not None and not isinstance(header["recovery"], str):
        return f"`recovery` must be None or a msg_id, not {header['recovery']!r:.80}"
    return None


def _register_problem(header):
    """What is wrong with a registration's fields, or None."""
    types = {"id": int, "replaces": int, "pid": int, "host": str, "python": list,
             "cloudpickle": str, "properties": dict, "reply_ident": str, "log": str}
    for name, kind in types.items():
        value = header.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"`{name}` must be {kind.__name__}, not {value!r:.80}"
    return None


def _lock_profile(pdir):
    """An open descriptor of `pdir`'s security folder that this process holds an exclusive
    flock on; MiniparError when another controller holds it (or the folder cannot be made).
    The check of the connection file (live_controller) misses a controller started at the
    same moment, which has not written its file yet: both started, one left unreachable."""
    import fcntl   # POSIX, as the signals the engines use

    path = protocol.security_dir(pdir)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.MiniparError(
            f"another controller is starting with profile dir {pdir} at this moment (it "
            f"holds {path}): a second one would overwrite its connection files. See `python "
            f"-m {__package__}.launcher list`, or use another profile (--profile or "
            "--profile-dir)") from None
    except OSError as e:   # a file system without locks (some NFS): the file's check alone
        log.info("cannot lock %s (%s): a controller started at the same moment is not "
                 "refused", path, e.strerror)
    return fd


def _reusable(path):
    """The connection file that --reuse takes the ports and key from, or {} when it is
    damaged (cut short by a crash or a full disk, edited): the controller then starts
    with new ones, as without --reuse, and says so, rather than end in a traceback."""
    try:
        with open(path) as f:
            info = json.load(f)
        problem = protocol._connection_problem(info, protocol.CLIENT_PORTS)
    except (OSError, ValueError) as e:
        problem = f"cannot be read ({e})"
    if problem is None:
        return info
    log.warning("--reuse: %s %s, so its ports and key cannot be reused: this controller "
                "writes new ones; engines and clients need the new file", path, problem)
    return {}


class PortInUseError(errors.MiniparError, OSError):
    """The port asked for is taken."""


class NoPortsLeftError(errors.MiniparError, OSError):
    """Too few of the candidate ports (--ports) are free."""


# Sockets that take ports from --ports, in order; the first is the one --port sets.
_PORT_NAMES = ("engine", "client", "notify", "ping", "pong")


def parse_ports(spec):
    """'10101-10120', '10101,10105,10110-10112' or '10101' as a list of ports; ValueError
    naming the part that is not a port or a range of them (low-high, within 1..65535)."""
    ports = []
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            span = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            span = range(0)
        if not span or span[0] < 1 or span[-1] > 65535:
            raise ValueError(f"--ports {spec}: {part.strip()!r} is not a port or a range of "
                             "ports within 1..65535 (10101, or 10101-10120)")
        ports += span
    return ports


def pick_ports(ip, candidates):
    """A free candidate port for each socket; one candidate means 'that port or fail'.

    Probed with a plain socket (SO_REUSEADDR, as zmq binds), so a port taken between the
    probe and the bind still ends in PortInUseError from bind()."""
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
                                description=(
        "Start a minipar controller. It writes its connection files to "
        f"{os.path.join(protocol.base_dir(), 'profile_NAME', 'security')} (--profile NAME, "
        "default: default; or --profile-dir), where clients and engines of that profile find "
        "them. Stop it with Ctrl-C or `kill PID` (SIGTERM), which removes them."))
    p.add_argument("--ip", default="127.0.0.1",
                   help="interface to listen on (default loopback; '*' for all)")
    p.add_argument("--port", type=int, default=0, help="registration port (default: any free one)")
    p.add_argument("--ports", help="candidate ports for every socket: 10101-10120, "
                   "10101,10105 or one port (registration; PortInUseError if taken)")
    p.add_argument("--location", help="host name or address that engines and clients use")
    p.add_argument("--reuse", action="store_true", help="keep ports and key across restarts")
    p.add_argument("--profile", type=protocol.profile_name, help="name: ~/.minipar/profile_NAME")
    p.add_argument("--profile-dir", help="profile folder (overrides --profile)")
    p.add_argument("--cluster-id", help=argparse.SUPPRESS)   # ipcontroller's: refused, saying why
    p.add_argument("--heartbeat-period", type=float, default=HEARTBEAT_PERIOD_S,
                   help="seconds between heartbeats (default %(default)s)")
    p.add_argument("--heartbeat-liveness", type=int, default=HEARTBEAT_LIVENESS,
                   help="missed heartbeats before an engine is dead (default %(default)s)")
    p.add_argument("--scheme", default="leastload",
                   choices=["leastload", "lru", "twobin", "weighted", "plainrandom"],
                   help="how load-balanced tasks pick an engine (default: leastload, the "
                        "engine with the fewest outstanding tasks)")
    p.add_argument("--hwm", type=int, default=None,
                   help=f"outstanding tasks per engine, 0: no limit (default: "
                        f"{_scheduler.AUTO_HWM}, and {_scheduler.AUTO_HWM_QUICK} while an "
                        "engine's tasks take under 1 ms)")
    p.add_argument("--db", default="dict", choices=["dict", "sqlite", "none"], help="task records "
                   "kept: in memory (bounded: --record-limit, --record-bytes), in "
                   "PROFILE_DIR/tasks.db (culls nothing), or only while in flight")
    p.add_argument("--nodb", dest="db", action="store_const", const="none", help="--db none")
    p.add_argument("--record-limit", type=int, default=RECORD_LIMIT, metavar="N",
                   help="with --db dict, task records kept: beyond N the oldest finished "
                        "ones are culled (logged) and get_result of one says so; --db sqlite "
                        "culls nothing (default %(default)s)")
    p.add_argument("--record-bytes", type=int, default=RECORD_BYTES, metavar="BYTES",
                   help="with --db dict, bytes of task records kept (requests, results and "
                        "about 10 KB each): beyond, the oldest finished are culled (default "
                        "%(default)s)")
    p.add_argument("--curve", action="store_true",
                   help="encrypt all traffic with CurveZMQ (for untrusted networks); the "
                        "server key goes in the connection files")
    p.add_argument("--max-message-size", type=int, default=protocol.MAX_MESSAGE_SIZE,
                   help="largest message in bytes (all frames) that any process of the "
                        "cluster accepts, larger ones refused and counted (default %(default)s)")
    p.add_argument("--owner", metavar="PID",
                   help="stop the engines and the controller once process PID (or "
                        "PID/START/HOST/PIDNS) has ended (a Cluster gives its own)")
    p.add_argument("--log-level", type=protocol.log_level,
                   default=os.environ.get("MINIPAR_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO (default, or $MINIPAR_LOG_LEVEL), WARNING or ERROR")
    args = errors.parse_args(p, argv)
    if args.cluster_id is not None:   # one controller per profile folder: its files name no id
        p.error(f"--cluster-id: only a cluster has one (`python -m {__package__}.launcher start "
                "--cluster-id ID`); give this controller and its engines a --profile-dir")
    logging.basicConfig(level="DEBUG" if os.environ.get("MINIPAR_DEBUG") else args.log_level,
                        format="%(asctime)s controller %(levelname)s %(message)s")
    # another live controller holding the profile stops this one (with --reuse too: it
    # would bind the same ports), before anything is written
    from .launcher import held_profile_message  # only here, at startup
    pdir = protocol.profile_dir(args.profile, args.profile_dir)
    holder = protocol.live_controller(pdir)
    try:
        if holder:
            raise errors.MiniparError(held_profile_message(holder, pdir))
        _lock_profile(pdir)   # held until this process ends, however it ends: an open descriptor
        ports = pick_ports(args.ip, parse_ports(args.ports)) if args.ports else None
        c = Controller(ip=args.ip, port=args.port, ports=ports, location=args.location,
                       profile=args.profile, profile_dir=args.profile_dir, reuse=args.reuse,
                       heartbeat_period=args.heartbeat_period,
                       heartbeat_liveness=args.heartbeat_liveness, scheme=args.scheme,
                       hwm=args.hwm, db=args.db, max_message_size=args.max_message_size,
                       curve=args.curve, record_limit=args.record_limit,
                       record_bytes=args.record_bytes, owner=args.owner)
    except ValueError as e:   # a bad --ports, or an option out of its range
        p.error(str(e))
    except errors.MiniparError as e:   # the profile held, or not writable; no ports left
        log.error("%s: %s", type(e).__name__, e)   # a Cluster reads a port error's class name
        return 1

    def stop(signum, frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        c._stop = True

    # SIGHUP, its terminal closed, too: its default action is kill -9's (files left, engines wait)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:   # nohup's: kept
            signal.signal(sig, stop)
    # a young collection every 700 new objects (the default) walked the records in flight
    # every 100 tasks: 2.4 µs of a load-balanced task, 1.9 of a direct one; 1.2 and 0.5 so
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    try:
        c.run()
    except errors.MiniparError as e:   # PortInUseError: a Cluster reads the class's name
        log.error("%s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
