"""The client: Client, DirectView, LoadBalancedView, BroadcastView (AsyncResult, the
futures they return, is in asyncresult.py).

User threads send; one I/O thread receives. Any user thread may call the Client::

    user threads ── lock ── DEALER (send only) ──────────────────▶ controller "client"
         │ a burst: held, and a wake-up (inproc PUSH)
         ▼
    I/O thread ── sends what is held on that DEALER, under the lock
               ── DEALER (its identity gets the replies) ◀──────── controller "client"
               ── SUB ◀─────────────────────────────────────────── controller "notify"
    futures ◀── set_result / set_exception (I/O thread)

A request is serialized in the caller's thread (so a bad argument raises at the call),
registered as a ``_MsgFuture`` under its msg_id and sent at once, or held to leave with
the rest of a burst (see ``Client.send_request``). The I/O thread verifies and unpickles
the replies and completes the futures; it also waits out a controller restart (see
"losing the controller") and warns about engines on another Python or cloudpickle.

``classic.py`` and ``integrations.py`` use this module, which imports them only where
needed (``import minipar`` stays fast) and forwards the classic names (``__getattr__``, at
the end). Besides the public API they use this internal interface, in the wire's terms:
``Client.send_request(kind, parts, engine_id, **fields)`` (one request: its future),
``send_apply(f, args, kwargs, fparts, **fields)`` (one apply request, a task's header
fields among `fields`) and ``query(kind, **fields)`` (the controller's reply header).
"""

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import signal
import sys
import threading
import time
import warnings
import weakref

import zmq

from . import errors, protocol
from .asyncresult import (AsyncResult, ExecuteReply, _concat, _dated, _Derived, _fail, _forked,
                          _MsgFuture, _OneRequest, _abort_ids, _aborted_on_ctrl_c, _interleave,
                          _check_count, _ctrl_c_aborts, _last_engine_gone, _never_sent,
                          _next_result, _not_back, _not_in_io_thread, _not_registered,
                          _seconds, _waited, _seconds_check, _sent, _timeout_s, _blocking,
                          IO_THREAD, _not_back_yet, _noted)
from .dependency import dependency_fields, dependent, msg_ids
from .remotefunction import (ParallelFunction, RemoteFunction, _check_dist, _check_names,
                             _check_pulled, _partition, _sequence, _sequences, _task_slices,
                             interactive)
# CompositeError too: classic scripts catch `client.CompositeError`
from .errors import CompositeError, NoEnginesRegistered, TimeoutError

log = logging.getLogger(__name__)
__path__ = []   # so ipyparallel's paths into it are explained: errors.SUBMODULE_MOVED

# How long a Client waits for a controller that went away to come back (then it catches
# up by itself) before failing what is outstanding. 10..300 s is reasonable: a controller
# restarted with --reuse is back in about a second.
RECONNECT_TIMEOUT_S = 60.0
# A controller silent this long (stopped, frozen, its machine gone) is lost, as a closed
# connection is: ZeroMQ's heartbeat, which its I/O thread answers however busy it is.
CONTROLLER_SILENCE_S = 10.0
# Requests a map sends as one message (see Client._together): enough to cost the
# controller one receive per hundred tasks, few enough that engines start at once.
TOGETHER = 100
# A request made within this long of the one before, while that one is outstanding, is
# held and sent with those after it (see Client.send_request); a lone request leaves at once.
HOLD_AFTER_S = 0.002
_FLUSH = b"flush"   # the outbox's marker: send what is held (and b"": close)
_CLOSED = object()  # what an I/O pass returns at close()'s marker
_TIMER_SEQ = itertools.count()


def _io_thread(client_ref, ctx, ends_ctx, dealer, sub, outbox_in):
    # executes in the I/O thread: owns dealer, sub, outbox_in and the monitors. It holds its
    # Client only during a pass, so one no longer referred to is collected and closed, as a
    # file is: a loop making Clients without close() kept a thread and 17 descriptors for
    # each till the process ended ('Too many open files' after about 60, at 1,024).
    client = client_ref()
    sockets = (dealer, sub, outbox_in, client._monitor, client._sub_monitor)
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    events = []
    while client is not None:
        try:
            timeout = client._io_pass(events, dealer, sub, outbox_in)
        except BaseException as e:   # a bug: fail what waits on this thread, and say so
            log.exception("the client's I/O thread failed")
            client._gone = errors.MiniparError(
                f"this Client's I/O thread failed ({type(e).__name__}: {e}); make a new Client")
            return _fail(client, client._futures.values(), client._gone)
        del client   # were it the last reference, close() runs here: see ends_ctx
        if timeout is _CLOSED:
            break
        events = poller.poll(timeout)
        client = client_ref()
    dealer.disable_monitor()
    sub.disable_monitor()
    for s in sockets:
        s.close(linger=0)
    if ends_ctx.is_set():   # close() ran in this thread, so could not wait for the sockets
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- client

class Client(errors.SaysWhyAbsent, errors.ClientSide):
    """A connection to a controller: reads its ``minipar-client.json`` (`url_file`, or the
    profile's, which it waits for up to `timeout` s) and connects; raises a clear error when
    the file is missing or stale, the key is refused, or the controller does not answer
    within `timeout` seconds."""

    def __init__(self, url_file=None, profile=None, profile_dir=None, timeout=10,
                 reconnect_timeout=RECONNECT_TIMEOUT_S, **kwargs):
        tunnel = sorted(set(kwargs) & {"sshserver", "sshkey", "password", "paramiko"})
        if tunnel:   # not ignored as ipyparallel's other options: it would end in a timeout
            raise TypeError(f"Client({tunnel[0]}=...): minipar's Client makes no ssh tunnel; "
                            "run it where the controller's ip (in its connection file) is "
                            "reachable, or forward its ports with ssh -L and set ip 127.0.0.1")
        _timeout_s(timeout)   # a str: a TypeError saying so, not "'>' not supported" in a wait
        url_file = kwargs.get("connection_info") if url_file is None else url_file   # ipyparallel's
        if profile_dir is None and kwargs.get("ipython_dir"):   # ipyparallel's: its profile_NAME
            profile_dir = protocol.profile_dir(profile, ipython_dir=kwargs["ipython_dir"])
        if url_file is None and kwargs.get("cluster_id"):   # ipyparallel's: that cluster's
            from .launcher import cluster_profile_dir   # here: launcher imports this module
            profile_dir = cluster_profile_dir(profile, profile_dir, kwargs["cluster_id"])
        if url_file is None:   # as ipyparallel's Client: one named is not waited for
            url_file = protocol.wait_for_file(os.path.join(protocol.profile_dir(
                profile, profile_dir), "security", protocol.CLIENT_FILE), timeout, log.warning)
        self.url_file, self.timeout, self.reconnect_timeout = url_file, timeout, reconnect_timeout
        self.info = protocol.read_connection_file(url_file)
        self.session = protocol.Session(self.info["key"], self.info.get(
            "max_message_size", protocol.MAX_MESSAGE_SIZE))
        self._engines, self._futures, self._replied = {}, {}, weakref.WeakValueDictionary()
        self.block, self.cluster = False, None   # views' default block; the Cluster that made it
        self._engines_changed = threading.Condition()
        self._closed = None         # the error every call raises once close()d
        # a forked child has this Client's memory but not its I/O thread: there, it is closed
        os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))
        self.ctx, self._outbox_addr = zmq.Context(), f"inproc://client-outbox-{id(self)}"
        outbox_in = self.ctx.socket(zmq.PULL)
        outbox_in.bind(self._outbox_addr)
        self._outbox = self.ctx.socket(zmq.PUSH)
        self._outbox.connect(self._outbox_addr)
        # Requests leave from the caller's thread on a send-only socket (under a lock); the
        # controller routes replies to the I/O thread's socket, known from `connect`.
        self._send_lock = threading.Lock()
        self._local = threading.local()   # .held: this thread's requests kept to send together
        self._held = []                   # requests held to leave together: under _send_lock
        self._last = (float("-inf"), type(None))  # (when, weakref to the future) of the
        # last request sent or held: weak, so a finished result the user drops is freed
        self._sender = self.ctx.socket(zmq.DEALER)
        self._sender.linger = 1000
        self._sender.sndhwm = 0   # queued while the controller is away: the I/O thread,
        # which sends held requests, must never block in a send
        protocol.connect(self._sender, self.info, "client")
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        # a fixed identity: the controller's records name it as where results go, also
        # after it restarted (and the connection was made again)
        dealer.identity = protocol.client_identity(self.session.session)
        dealer.heartbeat_ivl, dealer.heartbeat_timeout = 250, int(CONTROLLER_SILENCE_S * 1000)
        self._monitor = dealer.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._connected = False     # a handshake succeeded once (I/O thread): else, no loss
        self._lost_at = None        # when the connection went, till connect is answered again
        self._waiting = []          # (future, frames) of queries made meanwhile: _send_lock
        self._gone = None           # the error every call raises once it did not come back
        self._stopped_hub = None    # the error once this client shut the controller down
        self._warned_skew = set()   # engines whose other Python/cloudpickle was warned about
        self._last_gone, self._coming_back = None, ((), 0.0)  # asyncresult: _no_engines, _not_back
        self._timers = []           # heap of (deadline, seq, function): I/O thread
        protocol.connect(dealer, self.info, "client")
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # monitored before it connects, as the dealer: a handshake done first is unheard
        self._sub_monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        protocol.connect(sub, self.info, "notify")
        self._roster = None         # (controller session, number) of the engine list held
        self._io_ends_ctx = threading.Event()   # set by close() run in the I/O thread
        self._io = threading.Thread(target=_io_thread, name=IO_THREAD, daemon=True, args=(
            weakref.ref(self), self.ctx, self._io_ends_ctx, dealer, sub, outbox_in))
        self._io.start()
        try:
            reply = self.query(protocol.CONNECT, timeout=timeout)
        except BaseException:
            self.close()
            raise
        with self._engines_changed:
            self._take_engines(reply)
        self._check_versions(self._engines)
        if "IPython" in sys.modules:   # %px etc. inside IPython, as ipyparallel (classic.py)
            from .classic import _in_ipython
            _in_ipython(self)

    # ------------------------------------------------------------ I/O thread

    def _io_pass(self, events, dealer, sub, outbox_in):
        # executes in the I/O thread (see _io_thread): handles what one poll read, runs the
        # timers due; the next poll's timeout, or _CLOSED at close()'s marker
        for sock, _ in events:
            for frames in protocol.drain(sock):
                if sock is outbox_in:
                    if len(frames) == 1 and frames[0].bytes == _FLUSH:
                        with self._send_lock:
                            self._flush()
                        continue
                    if len(frames) == 1:  # close() marker
                        return _CLOSED
                    try:   # never wait here: with no connection (a peer that fails
                        # the handshake has none) the query times out, saying so
                        dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        log.debug("no connection to send a query on: it will time out")
                    continue
                try:   # nothing a message does may end this thread: every request waits on it
                    if sock is self._monitor:
                        self._on_connection_event(dealer, frames)
                    elif sock is self._sub_monitor:   # notifications may have been missed
                        self._ask_engines(dealer)
                    elif sock is dealer:
                        self._on_reply(frames)
                    else:
                        self._on_notification(dealer, frames[1:])
                except Exception as e:   # its traceback too with MINIPAR_DEBUG=1
                    log.warning("dropped a message from the controller: %s: %s",
                                type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
        return self._run_timers()

    # ---- losing the controller, and finding it again (I/O thread)
    #
    # The I/O socket's monitor says when the connection goes and comes back. Gone for longer than
    # `reconnect_timeout`: everything outstanding fails with a clear error, and so does every call
    # after it, at once, until the controller is back.
    # Back (the controller restarted with --reuse, or the network healed): connect again (the
    # controller learns where replies go, and we learn its engines), then ask for the results of
    # everything outstanding. The finished ones are sent again, pending ones arrive when done; ones
    # it has no record of fail (one sent during the outage may arrive after the question: the
    # controller waits a moment for it, see _park). Queries made until connect is answered wait,
    # then leave: the controller answers on the route connect gives it (one sent before was answered
    # to no socket). Requests need not wait: the question above fetches their results.
    # A controller this client shut down (shutdown(hub=True)) is not waited for: what is outstanding
    # fails when the connection goes.

    def _on_connection_event(self, dealer, frames):
        from zmq.utils.monitor import parse_monitor_message

        event = parse_monitor_message([f.bytes for f in frames])["event"]
        if not self._connected:   # a peer that closes before the first handshake (no
            # controller, or one refusing this client's keys) lost nothing: connect times out
            self._connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            return
        now = time.monotonic()
        if event == zmq.EVENT_DISCONNECTED and self._lost_at is None:
            self._lost_at = lost = now
            if self._stopped_hub:
                return self._give_up(lost)
            log.warning("lost the connection to the controller at %s: waiting up to %s s for it "
                        "to come back", protocol.url(self.info, "client"), self.reconnect_timeout)
            self._at(now + self.reconnect_timeout, lambda: self._give_up(lost))
            self._check_replaced(lost)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._lost_at is not None:
            log.warning("connected to the controller again after %.1f s: asking for what is "
                        "outstanding", now - self._lost_at)
            self._gone = self._stopped_hub = None
            self._io_query(dealer, protocol.CONNECT, self._on_reconnected)

    def _check_replaced(self, lost):
        # once a second (a file read) while the controller is lost: one started without
        # --reuse over it holds the profile, so it cannot come back (engines check it too),
        # nor can one without --reuse whose process ended (killed: no notice said so)
        if self._lost_at == lost and self._gone is None:
            new = protocol.replacement(self.url_file, self.info)
            if new is not None or not self.info.get("reuse") and protocol._dead_controller(
                    self.info):
                return self._give_up(lost, new or {})
            self._at(time.monotonic() + 1.0, lambda: self._check_replaced(lost))

    def _give_up(self, lost, new=None):
        # the controller did not come back in time, `new` (its file's content) replaced it, or
        # (new == {}) its process ended, started without --reuse
        if self._lost_at != lost:
            return   # it came back in time
        if self._stopped_hub:
            return _fail(self, self._futures.values(), self._stopped_hub)
        if self._gone is not None:
            return   # given up already: the file named another controller
        if new is None:
            why, then = (f"it did not come back within {self.reconnect_timeout} s (reconnect_"
                         "timeout)", "Restart it with --reuse (same address and key) and this "
                         "client reconnects by itself, or start a new controller and a new Client")
        elif new:
            why, then = (f"a new controller (pid {new.get('pid')}) replaced it, started without "
                         f"--reuse (other ports and key in {self.url_file})", "Make a new Client "
                         "of the same profile (or of that file) to use the new controller")
        else:
            why, then = (f"its process (pid {self.info.get('pid')}) ended, started without "
                         "--reuse: it cannot come back", "Start a new controller and a new Client")
        url = protocol.url(self.info, "client")
        err = errors.MiniparError(f"lost the controller at {url}: {why}, so the outcome of this "
                                  f"request is unknown (submit it again). {then}")
        with self._engines_changed:   # a wait_for_engines waiting on it raises self._gone now
            self._gone = errors.MiniparError(f"the controller at {url} is gone: {why}. {then}")
            self._engines_changed.notify_all()
        _fail(self, self._futures.values(), err)
        log.error("%s", err)

    def _on_reconnected(self, dealer, header):
        """Ask what became of the requests outstanding. One sent during the outage may
        arrive after the question: the controller waits a moment for an id not here yet
        before it calls it unknown (its _park), so one question is enough. A cancelled one
        its engine runs on is asked too: one the controller lost is never answered. The
        one back may be another process (--reuse): its pid and --reuse judge the next loss."""
        with contextlib.suppress(errors.ConnectionFileError):
            now = protocol.read_connection_file(self.url_file)
            self.info.update(pid=now.get("pid"), host=now.get("host"), reuse=now.get("reuse"))
        self._on_engines(dealer, header)
        with self._send_lock:   # the queries made while it was lost, but for those given up
            self._lost_at, waiting, self._waiting = None, self._waiting, []
            for f, frames in waiting:
                if self._futures.get(f.msg_id) is f:   # not timed out, nor failed
                    self._sender.send_multipart(frames)
        msg_ids = [m for m, f in list(self._futures.items()) if not f._md.get("query")]
        if msg_ids:
            self._io_query(dealer, protocol.RESULT_REQUEST, self._on_outstanding, msg_ids=msg_ids)

    def _on_outstanding(self, dealer, header):
        for m in header.get("unknown", ()):
            _fail(self, [self._futures.get(m)], errors.MiniparError(
                f"the controller has no record of request {m}: it restarted and the request "
                "was lost with the old one (it keeps records across restarts only with --db "
                "sqlite); submit it again"))

    def _io_query(self, dealer, kind, on_reply, **fields):
        """A query sent from the I/O thread; `on_reply(dealer, header)` runs in it too."""
        f, frames = self._query_future(kind, fields)

        def done(f):
            if f.exception() is None:
                on_reply(dealer, f.result())
            elif self._closed is None:   # close() failing it is no failure to report
                log.warning("%s from the I/O thread failed: %s", kind, f.exception())

        f.add_done_callback(done)
        try:   # never block the I/O thread: one that cannot leave is asked on reconnecting
            dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._futures.pop(f.msg_id, None)

    def _at(self, deadline, function):
        import heapq  # here, not at import (as in _run_timers): timers are rare
        heapq.heappush(self._timers, (deadline, next(_TIMER_SEQ), function))

    def _run_timers(self):
        """Run the timers that are due; milliseconds until the next one (None: none)."""
        while self._timers and self._timers[0][0] <= time.monotonic():
            import heapq
            _, _, function = heapq.heappop(self._timers)
            try:
                function()
            except Exception:
                log.exception("a client timer failed")
        return max(0.0, (self._timers[0][0] - time.monotonic()) * 1000) if self._timers else None

    def _on_reply(self, frames):
        # executes in the I/O thread
        if protocol.is_refusal(frames):
            reason = frames[2].bytes.decode(errors="replace")
            err = errors.MiniparError(
                f"the controller refused a request ({reason}): the key in {self.url_file} "
                "does not match the controller's; use the file the running controller wrote")
            for f in list(self._futures.values()):
                if not f.done() and f._md.get("query"):
                    f.set_exception(err)
            log.error("%s", err)
            return
        _, header, parts = self.session.check(frames)
        for header, parts in self.session.unbatch(header, parts):
            try:   # one that cannot be handled is dropped alone, not the rest of its batch
                self._on_message(header, parts)
            except Exception as e:
                log.warning("dropped a message from the controller: %s: %s", type(e).__name__, e)

    def _on_message(self, header, parts):
        # executes in the I/O thread: one reply or stream message (a batch carries several)
        handler = self._message_handlers.get(header["kind"])
        if handler is not None:
            return handler(self, header, parts)
        # the common case: a reply
        f = self._futures.pop(header.get("parent"), None)
        if f is None or f.done():
            return
        self._replied[f.msg_id] = f   # while its AsyncResult lives: late output (_on_running)
        try:
            self._on_result(f, header, parts)
        except Exception as e:   # its request must not wait for ever: it fails, saying why
            with contextlib.suppress(concurrent.futures.InvalidStateError):   # done already
                f.set_exception(errors.error("MiniparError", (
                    f"the reply to request {f.msg_id} could not be handled ({type(e).__name__}: "
                    f"{e}): a field of its header has the wrong type; is every engine "
                    "running this same minipar?"), {"msg_id": f.msg_id}))

    def _on_result(self, f, header, parts):
        md = f._joined()   # its times stay floats: made datetimes when read (_dated)
        if dict.get(md, "query"):   # dict's get: quicker, this is the I/O thread
            if header.get("status") == protocol.ERROR:
                ename, evalue = header.get("error", ("MiniparError", "request failed"))
                return f.set_exception(errors.error(ename, evalue))
            return f.set_result(header)
        with f._condition:   # a reader joining streamed output (_joined) must not put
            md["received"] = time.time()   # its partial text back over the whole
            for k in ("started", "completed", "stdout", "stderr", "status", "attempts",
                      "execution_count", "recovered_by", "resubmitted", "outputs"):
                if k in header:
                    md[k] = header[k]
        md["engine_id"] = header.get("engine", dict.get(md, "engine_id"))
        try:
            self.session.check_body(header, parts)
            nd = header.get("ndata")
            if nd:   # what the request published, after the result's frames
                md["data"], parts = protocol.deserialize_from_task(parts[-nd:]), parts[:-nd]
            value = protocol.deserialize_from_task(parts) if parts else None
        except Exception as e:   # where, as an engine's own error says it
            kind = {reply: kind for kind, reply in protocol.REPLY.items()}.get(header.get("kind"))
            return f.set_exception(errors.error("SerializationError",
                f"could not unpickle the result of {f.msg_id}: {type(e).__name__}: {e}; "
                f"{errors.unpickling_hint(e)}"
                f"{protocol.version_skew(md['engine_id'], self._engines, ' ')}",
                {"engine_id": md["engine_id"], "msg_id": f.msg_id, "kind": kind}))
        if header.get("status") == protocol.OK:
            if header.get("kind") == protocol.EXECUTE_REPLY:   # its value: the execute_result
                md["execute_result"], value = value, ExecuteReply(f.msg_id, md)
            f.set_result(value)
        elif header.get("ename") == "SerializationError" and (
                skew := protocol.version_skew(md["engine_id"], self._engines)):
            # the engine could not unpickle the request: say why that is likely
            err = errors.error("SerializationError", f"{header.get('evalue', '')}; {skew}",
                               getattr(value, "engine_info", None))
            err.__cause__ = value if isinstance(value, BaseException) else None
            f.set_exception(err)
        else:
            f.set_exception(value if isinstance(value, BaseException) else errors.error(
                header.get("ename", "MiniparError"), header.get("evalue", "")))

    def _on_running(self, header, parts):
        # executes in the I/O thread: output, published data or the start of a running
        # request; its final reply replaces them (no duplicates), but for `late` output, which
        # its threads printed after it ended: added to it
        late = header.get("late") is True and header.get("name") in ("stdout", "stderr")
        f = self._futures.get(header.get("parent")) or self._replied.get(header.get("parent"))
        if f is None or f.done() != late or dict.get(f._md, "query"):   # _md: metadata joins
            return
        md, name = f._md, header.get("name")
        if md["engine_id"] is None:
            md["engine_id"] = header.get("engine")
        if header["kind"] == protocol.STARTED:
            md["started"] = header.get("started")
            f._started()
        elif name == "data":
            self.session.check_body(header, parts)
            md["data"].update(protocol.deserialize_from_task(parts))
        elif name in ("stdout", "stderr"):
            f._streamed(name, header.get("text", ""))

    # what the controller sends besides replies, by kind
    _message_handlers = {protocol.STREAM: _on_running, protocol.STARTED: _on_running}

    # ---- version skew (see protocol.version_skew): warned about once per engine

    def _check_versions(self, engines, warn=True):
        """Log (and with `warn`, in the user's thread, warn) each skewed engine once."""
        for eid in engines:
            skew = protocol.version_skew(eid, self._engines)
            if skew and eid not in self._warned_skew:
                self._warned_skew.add(eid)
                log.warning("%s", skew)
                if warn:
                    warnings.warn(skew, RuntimeWarning, stacklevel=3)

    # ---- the engine list (I/O thread)
    #
    # The controller numbers the changes to its engine list (`roster`, in each notification
    # and in its answer to `connect`). Notifications come on a socket of their own, so one
    # can overtake an older answer, or be lost while that socket connects again after a
    # controller restart. A notification out of sequence, an answer older than what was
    # heard since, or the notification socket connecting (again) asks for the whole list.

    def _take_engines(self, header):
        # holding _engines_changed: whether `header` (connect's answer) was the newer list
        roster = header.get("roster")
        seq = (header.get("session"), roster if type(roster) is int else 0)
        if self._roster and seq[0] == self._roster[0] and seq[1] < self._roster[1]:
            return False
        engines = {int(k): v for k, v in header.get("engines", {}).items()}
        _not_back(self, header, engines)
        self._engines, self._roster = engines, seq
        return True

    def _ask_engines(self, dealer):
        self._io_query(dealer, protocol.CONNECT, self._on_engines)

    def _on_engines(self, dealer, header):
        with self._engines_changed:
            current = self._take_engines(header)
            self._engines_changed.notify_all()
        if not current:
            self._ask_engines(dealer)

    def _on_notification(self, dealer, frames):
        _, header, _ = self.session.check(frames)
        handler = self._notification_handlers.get(header["kind"])
        seq, known = (header.get("session"), header.get("roster")), self._roster
        numbered = type(seq[1]) is int   # a controller older than the numbers: none
        if numbered and known and seq[0] == known[0] and seq[1] <= known[1]:
            return   # the list held has it already
        with self._engines_changed:
            if handler is not None:
                handler(self, header)
            if numbered and known and seq[0] == known[0]:   # else: see _take_engines
                self._roster = seq
            self._engines_changed.notify_all()
        if numbered and (not known or seq != (known[0], known[1] + 1)):
            self._ask_engines(dealer)

    def _on_engine_registered(self, header):
        # executes in the I/O thread, holding _engines_changed
        self._engines[header["id"]] = header.get("info", {})
        # before waiters wake; the I/O thread only logs (warnings are the user's)
        self._check_versions([header["id"]], warn=False)

    def _on_engine_gone(self, header):
        # executes in the I/O thread, holding _engines_changed
        self._engines.pop(header["id"], None)
        if not self._engines:   # what is outstanding waits: said in a while, if still so
            self._at(*_last_engine_gone(self, header["id"], header.get("why") or "it left"))

    def _on_controller_stopped(self, header):   # I/O thread: it never comes back
        self._gone = self._stopped_hub = self._stopped_hub or errors.MiniparError(header["why"])

    _notification_handlers = {protocol.ENGINE_REGISTERED: _on_engine_registered,
        protocol.ENGINE_UNREGISTERED: _on_engine_gone, protocol.ENGINE_DIED: _on_engine_gone,
        protocol.CONTROLLER_STOPPED: _on_controller_stopped}

    # ------------------------------------------------------------ sending

    def send_request(self, kind, parts=(), engine_id=None, future=None, **fields):
        """Send a request of protocol kind `kind` (frames `parts`, header `fields`) to
        engine `engine_id` or the scheduler; returns its future, registered before it
        leaves: `future` when given (an AsyncResult that is its own request's future),
        else a new one with ``msg_id`` and ``metadata``. `engine_id` a list: one message
        for those engines (see DirectView._each), and their futures. Internal interface."""
        self._check_usable()
        if type(engine_id) is list:
            return self._broadcast(kind, parts, engine_id, fields)
        header, frames = self.session.msg(kind, parts, signed=False, **fields)
        protocol.check_size(frames, self.session.max_message_size, f"this {kind} request")
        f = _MsgFuture() if future is None else future
        f._request(header["msg_id"], engine_id, kind)
        _noted(f, fields)
        # registered as it is held or sent, not before: else a Ctrl-C between leaves it pending
        held = getattr(self._local, "held", None)
        if held is not None:   # a Ctrl-C from here on fails it unsent (see _together)
            held.append((f, frames))
            _sent(self, (f,))
            if len(held) >= TOGETHER:
                self._send_held(held)
            return f
        now = time.monotonic()
        with self._send_lock:
            (then, last), self._last = self._last, (now, weakref.ref(f))
            last = last()
            # one of a burst: the I/O thread sends what is held when it next runs (this thread
            # blocks, sends, or has run for the GIL's 5 ms switch interval): requests and replies
            # go in batches. A lone one, or a burst's first and its wake-up, leaves whole.
            if self._held:   # a burst's later one: a Ctrl-C before its registration takes it
                try:         # back (where a sigint_deferred would cost two sigactions each)
                    self._held.append(frames)
                    _sent(self, (f,))
                except KeyboardInterrupt:
                    self._futures.pop(f.msg_id, None)
                    self._held[:] = [h for h in self._held if h is not frames]
                    raise
                if len(self._held) >= TOGETHER:
                    self._flush()
                return f
            burst = now - then < HOLD_AFTER_S and last is not None and not last.done()
            with protocol.sigint_deferred():   # held (or sent) only with its registration
                if burst:
                    self._held.append(frames)
                _sent(self, (f,))
                if not burst:
                    protocol.send(self._sender, self.session.signed(frames))
                else:   # zmq.Again: the I/O thread has markers enough
                    with contextlib.suppress(zmq.Again):
                        self._outbox.send(_FLUSH, zmq.NOBLOCK)
        return f

    def _together(self, make):
        """make()'s result; the requests this thread makes in it leave TOGETHER at a time as
        one batch (see protocol.Session.pack): one send and receive per hundred. A call, not
        a with block, for the reason _aborted_on_ctrl_c gives; one nested: batched less."""
        return _aborted_on_ctrl_c(self._batched, make)   # which aborts those sent on Ctrl-C

    def _batched(self, make):
        held = []
        try:   # a Ctrl-C in make() or before they leave: those held fail at once
            try:
                self._local.held = held   # in the try: never left set by a Ctrl-C
                result = make()
            except Exception:   # what was made leaves still, as without the error
                self._send_held(held)
                raise
            finally:
                self._local.held = None
            self._send_held(held)
            return result
        except KeyboardInterrupt:
            with protocol.sigint_deferred():
                _fail(self, [c for f, _ in held for c in (f, *f._copies)], _never_sent())
                del held[:]
            raise

    def _send_held(self, held):
        with protocol.sigint_deferred(), self._send_lock:   # all sent, or none
            self._held.extend(frames for _, frames in held)
            del held[:]
            self._flush()

    def _flush(self):
        """Send the held requests in order, each once and whole (the caller holds _send_lock)."""
        with protocol.sigint_deferred():
            held, self._held = self._held, []
            for frames in self.session.pack(held):
                protocol.send(self._sender, frames)

    def _check_usable(self):
        if self._closed or self._gone:   # raised afresh: not with the traceback of its last raise
            raise (self._closed or self._gone).with_traceback(None)

    def query(self, kind, timeout=None, **fields):
        """A request of protocol kind `kind` to the controller itself: its reply header,
        waited for `timeout` s at most (default: the Client's). Internal interface."""
        _not_in_io_thread(self, f"the controller's answer to {kind}")
        f, timeout = self._send_query(kind, fields), self.timeout if timeout is None else timeout
        try:
            return f.result(timeout)
        except concurrent.futures.TimeoutError:
            self._futures.pop(f.msg_id, None)
            raise TimeoutError(
                f"the controller at {protocol.url(self.info, 'client')} did not answer {kind} "
                f"within {timeout} s: is it running? (connection file {self.url_file})") from None

    def _send_query(self, kind, fields):
        """Send a query from the caller's thread; its future, which the I/O thread settles."""
        if kind != protocol.CONNECT:
            self._check_usable()
        with protocol.sigint_deferred(), self._send_lock:   # registered only if it leaves
            f, frames = self._query_future(kind, fields)
            self._flush()   # after the requests made before it
            if kind == protocol.CONNECT:   # through the I/O thread's socket: its identity
                self._outbox.send_multipart(frames)   # is where every reply will go
            elif self._lost_at is None:
                self._sender.send_multipart(frames)
            else:   # sent once connect is answered: see "losing the controller"
                self._waiting.append((f, frames))
        return f

    def _query_future(self, kind, fields):
        """A query's frames, and its future, registered (the I/O thread settles it)."""
        header, frames = self.session.msg(kind, **fields)
        f = _MsgFuture(header["msg_id"])
        f._md["query"] = True
        self._futures[f.msg_id] = f
        return f, frames

    def send_apply(self, f, args, kwargs, engine_id=None, fparts=None, future=None, **fields):
        """Send ``f(*args, **kwargs)`` as one apply request, as send_request does; `fparts` is
        `f` already serialized (a map sends one function many times). `fields` are the header's:
        for a task, ``lb=True`` and the scheduler's fields (``targets``, ``retries``,
        ``recovery``, ``dormant``, ``depend``, ``clear_before``...). Internal interface."""
        if fparts is None:
            fparts = protocol.serialize_function(f)
        aparts = protocol.serialize((args, kwargs))
        return self.send_request(protocol.APPLY, [*fparts, *aparts], engine_id=engine_id,
                                 future=future, engine=engine_id,
                                 counts=[len(fparts), len(aparts)], **fields)

    # ------------------------------------------------------------ engines

    @property
    def ids(self):
        """The registered engines' ids, sorted."""
        with self._engines_changed:
            self._check_usable()   # closed, or its controller gone: never a stale list
            return sorted(self._engines)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, key):
        # none registered: NoEnginesRegistered, as ipyparallel's (a view made now stays empty)
        ids = self.resolve_targets("all")
        if isinstance(key, int):   # as a list's: rc[-1] is the last engine (resolve_targets)
            return DirectView(self, self.resolve_targets(key)[0])
        if isinstance(key, (slice, list, tuple, range)):
            return DirectView(self, ids[key] if isinstance(key, slice) else list(key))
        raise TypeError(f"index a Client with an int, a slice or a list, not {type(key).__name__}")

    def __iter__(self):
        # one view per registered engine, as ipyparallel's: without it Python would index
        # 0, 1, 2... and stop at the first id not registered (an engine gone)
        return (DirectView(self, e) for e in self.ids)

    # a view's flags (block, label, retries...) may be given when it is made, as ipyparallel's
    def direct_view(self, targets="all", **flags):   # -1, a slice: the engines now, as there
        if isinstance(targets, slice) or isinstance(targets, int) and targets < 0:
            targets = self[targets].targets
        return DirectView(self, targets, **flags)

    def broadcast_view(self, targets="all", is_coalescing=False, **flags):
        targets = self.direct_view(targets).targets   # -1, a slice: the engines now, as there
        return BroadcastView(self, targets, is_coalescing=is_coalescing, **flags)

    def activate(self, targets="all", suffix=""):
        """Register %px{suffix} and the other IPython magics for a blocking view of
        `targets` (see classic.py); returns the view."""
        (view := self.direct_view(targets, block=True)).activate(suffix)
        return view

    def load_balanced_view(self, targets=None, **flags):
        targets = None if targets == "all" else targets   # as ipyparallel's, resolved when
        if targets is not None and self.ids:   # made (with none yet, its tasks wait for them)
            targets = self.resolve_targets(targets)
        return LoadBalancedView(self, targets, **flags)

    def executor(self, targets=None):
        """A concurrent.futures.Executor running calls as load-balanced tasks."""
        return self.load_balanced_view(targets).executor

    # use_cloudpickle(), use_dill(), use_pickle(): a view's (_View._use), on every engine
    use_cloudpickle, use_dill, use_pickle = (functools.partialmethod(
        lambda self, name: self.direct_view()._use(name), name)
        for name in ("cloudpickle", "dill", "pickle"))

    def wait_for_engines(self, n=None, timeout=None, progress=None, *, block=True,
                         interactive=None, widget=None):
        """Wait until at least `n` engines are registered (None: rc.cluster's, as ipyparallel's);
        TimeoutError after `timeout` s (None or negative, ipyparallel's -1: no limit). `progress`
        (ipyparallel's `interactive`; `widget` is ignored) draws a bar of the engines registered
        (default: when interactive). Returns their ids; with ``block=False`` a Future of them."""
        from .integrations import _in_thread, _interactive, _progress_bar

        if n is None and self.cluster is not None:
            n = self.cluster.n or sum(e.n for e in self.cluster.engines.values())
        _check_count("n", n)   # wait_for_engines("2"): said here, not as a failed comparison
        progress, timeout = interactive if progress is None else progress, _timeout_s(timeout)
        if not block:
            return _in_thread(self.wait_for_engines, n, timeout, progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        show = len(self) < n and (_interactive() if progress is None else progress)
        bar = _progress_bar(n, "engines", "engines", initial=len(self)) if show else None
        try:
            with self._engines_changed:
                while len(self) < n:   # raises once the client is closed (close() wakes it)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"{len(self._engines)} engines registered after "
                                           f"{timeout} s, wanted {n}{_not_back_yet(self)}")
                    self._engines_changed.wait(left)
                    if bar is not None:
                        bar.update(min(n, len(self._engines)) - bar.n)
        finally:
            if bar is not None:
                bar.close()
        return self.ids

    def resolve_targets(self, targets):
        """The engine ids that `targets` names ('all' or None: every registered engine;
        an id; a list of ids), each checked: NoEnginesRegistered when there are none,
        IndexError for one not registered (nor, after a restart, waited for: _not_back)."""
        ids, (back, until) = self.ids, self._coming_back
        back = back if back and time.monotonic() < until else ()   # no clock read per request
        if targets is None or targets == "all":
            targets = sorted({*ids, *back})
        elif isinstance(targets, str):   # list("0") would be ["0"], not engine 0
            raise TypeError(f"targets={targets!r}: give 'all', an engine id (an int) or a "
                            "list of them")
        elif isinstance(targets, slice) or isinstance(targets, int) and 0 < -targets <= len(ids):
            targets = ids[targets]   # as ipyparallel's: rc[-1], targets=-1 the last engine
        targets = [targets] if isinstance(targets, int) else list(targets)
        if not targets:
            raise NoEnginesRegistered(   # an empty selection, as rc[5:] of 2 engines
                f"the targets select no engine; registered: {ids}" if ids else
                f"no engines are registered: start some with `python -m {__package__}.engine` or "
                f"Cluster(n=...), or rc.wait_for_engines(n){_not_back_yet(self)}")
        bad = [t for t in targets if t not in ids and t not in back]
        if bad:
            raise IndexError(_not_registered(self, bad[0], ids))
        return targets

    # ------------------------------------------------------------ queries and control

    def queue_status(self, targets=None, verbose=False):
        """{id: {'queue', 'tasks', 'completed'}, 'unassigned'}; for one int id, its own."""
        t = None if targets in (None, "all") else self.resolve_targets(targets)
        reply = self.query(protocol.QUEUE_STATUS, targets=t, verbose=verbose)
        status = {int(k): v for k, v in reply["engines"].items()}
        status["unassigned"] = reply["unassigned"]
        if verbose:
            status["stats"] = reply.get("stats", {})
        return status[t[0]] if isinstance(targets, int) else status

    def status(self, timeout=None):
        """What the cluster does now, as ``python -m minipar.top`` shows it: a dict
        (engines and what each runs, tasks queued / running / done / failed, recent
        failures; keys in minipar.top's docstring) with a text repr and an HTML table."""
        from .top import Status

        return Status(self.query(protocol.STATUS, timeout=timeout)["snapshot"])

    # ---- ipyparallel's spin, wait_interactive, send_signal, hub_history; broadcasting

    def spin(self):
        """Nothing to do: the I/O thread takes in replies as they come."""

    def clear(self, targets=None, block=None):
        """Empty the target engines' namespaces: ``rc[targets].clear()``."""
        return self.direct_view("all" if targets is None else targets).clear(block=block)

    def wait_interactive(self, jobs=None, interval=1.0, timeout=-1):
        from .integrations import _wait_interactive

        return _wait_interactive(self, jobs, interval, timeout)

    def send_signal(self, sig, targets=None, block=None):
        """Send signal `sig` (number or name) to the target engines' processes. SIGINT
        interrupts the request each runs (KeyboardInterrupt, in a C call too); an idle engine
        ignores it. Once passed on: None, or a done Future (not `block`, ipyparallel's way)."""
        sig = int(getattr(signal, sig) if isinstance(sig, str) else sig)
        self.query(protocol.SIGNAL, sig=sig, targets=self.resolve_targets(targets))
        if not (self.block if block is None else block):
            (future := concurrent.futures.Future()).set_result(None)
            return future

    def hub_history(self):
        """The msg_ids of all requests the controller has records of, in submission order."""
        records = self.db_query({}, keys=["submitted"])
        return [r["msg_id"] for r in sorted(records, key=lambda r: r["submitted"])]

    def _broadcast(self, kind, parts, engine_ids, fields):
        # one message, which the controller copies to each engine under these msg_ids
        futures = [_noted(_MsgFuture(protocol.new_id(), e, kind), fields) for e in engine_ids]
        fields.pop("engine", None)
        with protocol.sigint_deferred():   # the copies registered only with their request
            _sent(self, futures)
            try:
                f = self.send_request(protocol.BROADCAST, parts, request=kind, targets=engine_ids,
                                      msg_ids=[f.msg_id for f in futures], **fields)
            except Exception as e:   # refused (too large, the client closed): so are they
                _fail(self, futures, e)
                raise
            self._futures.pop(f.msg_id).set_result(None)   # nothing answers it but the copies
            f._copies = futures   # held unsent (see _batched): failed with it on a Ctrl-C
        return futures

    def engine_stats(self, targets="all", timeout=None):
        """Each engine's counters, {id: {'requests', 'dropped', 'dropped_reasons', ...}}:
        requests it ran and messages it dropped (refused, malformed, too large)."""
        ids = self.resolve_targets(targets)
        futures = [self.send_request(protocol.STATS, engine_id=e, engine=e) for e in ids]
        ar = AsyncResult(self, futures, fname="engine_stats")
        return dict(zip(ids, ar.get(self.timeout if timeout is None else timeout)))

    def _msg_ids(self, jobs):
        """dependency.msg_ids(jobs); None: every outstanding request's."""
        if jobs is None:
            return [f.msg_id for f in self.pending_requests()]
        # a Future is one job, not an iterable (a plain one: the TypeError names it)
        return msg_ids([jobs] if isinstance(jobs, concurrent.futures.Future) else jobs)

    outstanding = property(lambda self: set(self._msg_ids(None)), doc="pending_requests' msg_ids")

    def pending_requests(self):
        """The futures of this client's requests not answered yet, oldest first (queries to the
        controller, and other clients' requests it follows through get_result, left out: as
        ipyparallel's ``outstanding``, what abort() and wait() take by default); each has ``msg_id``
        and ``metadata``, whose ``engine_id`` is the engine it went to (None: not known yet)."""
        return [f for f in list(self._futures.values())
                if not f._md.get("query") and not f._watched]

    def get_result(self, indices_or_msg_ids, block=None, owner=False):
        """An AsyncResult for msg_ids or AsyncResults (no indices: no history is kept), also
        other clients'. Those already finished are finished in it, with their metadata
        (engine_id, stdout...). With `block` (None: rc.block), returned once all are done."""
        single = isinstance(indices_or_msg_ids, str)
        futures, asked = [], {}
        for m in self._msg_ids(indices_or_msg_ids):
            f = self._futures.get(m)
            if f is None:
                f = asked[m] = _MsgFuture(m)
                f._watched = True   # another client's, or one of ours already answered
                self._futures[m] = f
            futures.append(f)
        if asked:
            reply = self.query(protocol.RESULT_REQUEST, msg_ids=list(asked))
            culled = reply.get("culled") or {}   # why, for ids the controller culled
            for m, t in (reply.get("submitted") or {}).items():   # not when it was asked for
                asked[m]._md["submitted"] = t or asked[m]._md["submitted"]
            for m in reply["unknown"]:
                _fail(self, [self._futures.get(m)], KeyError(
                    culled.get(m) or f"no record of {m}: unknown or purged msg_id"))
            # the controller sends the finished ones' results right after its reply: wait
            # for them, as ipyparallel's client, which keeps finished results, needs not
            concurrent.futures.wait([asked[m] for m in reply["completed"]], self.timeout)
        ar = AsyncResult(self, futures, fname="get_result", single=single)
        if self.block if block is None else block:   # as ipyparallel's: None is rc.block
            ar.wait()
        return ar

    def wait(self, jobs=None, timeout=None):
        """Wait for jobs (default: all outstanding) at most `timeout` s; True if all done."""
        futures = [f for f in map(self._futures.get, self._msg_ids(jobs)) if f is not None]
        return not _waited(self, futures, _timeout_s(timeout)).not_done

    def abort(self, jobs=None, targets=None, block=None):
        """Abort jobs (msg_ids or AsyncResults; None or 'all': every request this client
        made and has no answer to, a cancelled one its engine runs on too but not another
        client's it follows through get_result, or with `targets` (not 'all') those sent to
        these engines): queued ones fail with TaskAborted, running ones are interrupted. Done
        when it returns (in a done callback: sent; `block` is accepted); warns if none was left."""
        self._check_usable()
        on = None if targets is None or str(targets) == "all" else self.resolve_targets(targets)
        ids = ([f.msg_id for f in self.pending_requests() if on is None or f._md["engine_id"] in on]
               if jobs is None or jobs == "all" else self._msg_ids(jobs))
        if (pending := _abort_ids(self, ids)) == 0:   # None in a done callback: not waited for
            warnings.warn(f"nothing to abort: none of the {len(ids)} requests named is pending "
                          "(finished already, or unknown to the controller)", RuntimeWarning, 2)
        return pending

    def _abort(self, msg_ids, queued_only=False):
        """Abort `msg_ids` (not running ones if `queued_only`); how many were pending."""
        reply = msg_ids and self.query(protocol.ABORT, msg_ids=msg_ids,
                                       queued_only=queued_only) or {}
        _fail(self, map(self._futures.get, reply.get("unknown", ())), _never_sent())   # never came
        if reply.get("unmarked"):   # an engine did not take it in time (a task holds the GIL)
            warnings.warn(reply["unmarked"], RuntimeWarning, stacklevel=3)
        return reply.get("pending", 0)

    def purge_results(self, jobs=None, targets=None):
        """Forget finished results in the controller: jobs, 'all', or those of targets."""
        if jobs is None and targets is None:
            raise ValueError("say which results to purge: jobs=..., jobs='all' or targets=...")
        msg_ids = "all" if jobs == "all" else (None if jobs is None else self._msg_ids(jobs))
        t = None if targets is None else self.resolve_targets(targets)
        reply = self.query(protocol.PURGE, msg_ids=msg_ids, targets=t)
        if reply.get("pending"):   # kept, as ipyparallel's hub refuses them ("msg pending")
            raise ValueError(f"{len(reply['pending'])} results named are not done, so not purged "
                             f"({reply['pending'][0]}...): wait for them or abort them first")
        return reply["purged"]

    purge_everything = functools.partialmethod(purge_results, "all")   # no history here to clear

    # ------------------------------------------------------------ tasks: resubmit, status, db

    def resubmit(self, indices_or_msg_ids, metadata=None, block=None):
        """Run finished requests again, as new requests with new msg_ids.

        `indices_or_msg_ids`: msg_ids or AsyncResults (no indices: no history is kept), also
        of other clients; `metadata` is ignored, as ipyparallel's. Load-balanced tasks go
        back to the scheduler with their flags (not their recovery, which was used or
        discarded); direct requests go to the same engine. A pending request cannot be
        resubmitted (ValueError), nor a purged or unknown one (KeyError). Returns an
        AsyncResult over the new requests whose result is a list, one per request (a map's:
        one per chunk), as ipyparallel's AsyncHubResult, whatever was named."""
        old = self._msg_ids(indices_or_msg_ids)
        if not old:
            raise ValueError("resubmit needs at least one msg_id or AsyncResult")
        # registered before the request leaves: results may come at once
        futures = [_MsgFuture(protocol.new_id()) for _ in old]
        self._futures.update((f.msg_id, f) for f in futures)
        try:
            self.query(protocol.RESUBMIT, msg_ids=old, new_ids=[f.msg_id for f in futures])
        except BaseException as e:   # they never return: settled, not left pending
            _fail(self, futures, e)
            raise
        ar = AsyncResult(self, futures, fname="resubmit")
        if self.block if block is None else block:
            ar.wait()
        return ar

    def result_status(self, msg_ids, status_only=True):
        """``{'pending': [msg_ids], 'completed': [msg_ids]}`` for msg_ids or AsyncResults.

        With ``status_only=False`` the completed ones' results are fetched too, keyed by
        msg_id (a failure raises, as ``AsyncResult.get`` does). An id the controller has no
        record of (unknown, purged, culled, never kept with ``--db none``): KeyError."""
        ids = self._msg_ids(msg_ids)
        reply = self.query(protocol.RESULT_REQUEST, msg_ids=ids, status_only=True)
        if reply["unknown"]:
            raise KeyError(" ".join((reply.get("culled") or {}).values())
                           or f"no record of {reply['unknown']}: unknown or purged msg_ids "
                           "(a controller started with --db none keeps no finished records)")
        content = {"pending": reply["pending"], "completed": reply["completed"]}
        if not status_only and content["completed"]:
            values = self.get_result(content["completed"]).get()
            content.update(zip(content["completed"], values))
        return content

    def db_query(self, query, keys=None):
        """Task records matching `query`, as plain dicts.

        `query` is {key: value} or {key: {op: value}} with ops ``$in $nin $eq $ne $gt $gte
        $lt $lte``, all to hold: ``{'completed': {'$gt': t}}``, ``{'engine': {'$in': [0, 1]}}``.
        `keys` lists the record keys to return (``msg_id`` always is); by default all but the
        frames of request and result (``wire``, ``result_parts``), which come only when named
        (records.DictDB lists the keys). Times are datetimes (aware, UTC), as ipyparallel's; a
        query takes them, or ``time.time()`` seconds."""
        keys = [keys] if isinstance(keys, str) else None if keys is None else list(keys)
        records = self.query(protocol.DB_QUERY, query=_seconds(query), keys=keys)["records"]
        return [_dated(r) for r in records]

    def shutdown(self, targets="all", restart=False, hub=False, block=True):
        """Stop engines, each once its running request ends (block: wait `timeout` s, then
        TimeoutError), and with hub=True the controller: what this Client waits for fails at
        once, as does every call after; a second one does nothing. ipyparallel's `restart`
        needs its engines' nannies: minipar refuses it."""
        if restart:
            raise ValueError("shutdown(restart=True): minipar's engines have no nanny to "
                             "restart them; use cluster.restart_engines_sync() or Cluster("
                             "restart_engines='on_failure'), or start new ones after shutdown")
        if hub and self._stopped_hub:
            return
        t = None if targets in (None, "all") else self.resolve_targets(targets)
        if hub:
            # before the request: the controller may be gone before its reply is read
            self._stopped_hub = errors.MiniparError(
                f"this Client shut down the controller at {protocol.url(self.info, 'client')} "
                "(shutdown(hub=True)) before this request finished or was made; start a "
                "controller, make a new Client and submit the work again")
            try:
                self.query(protocol.SHUTDOWN, targets=t, hub=True)
            except BaseException:
                self._stopped_hub = None
                raise
            self._gone = self._stopped_hub
            return
        self.query(protocol.SHUTDOWN, targets=t, hub=False)
        t, deadline = t or list(self._engines), time.monotonic() + self.timeout
        with self._engines_changed:
            while block and any(e in self._engines for e in t) and time.monotonic() < deadline:
                self._engines_changed.wait(deadline - time.monotonic())
        if block and any(e in self._engines for e in t):   # said, not returned as if gone
            raise TimeoutError(f"engines {[e for e in t if e in self._engines]} had not stopped "
                               f"{self.timeout} s after shutdown: each stops once its running "
                               "request ends; rc.abort() it, or end it by rc.send_signal(SIGTERM)")

    def close(self, linger=None):
        """Requests just made have `linger` ms to leave (zmq's LINGER; None: 1000; 0: none)."""
        if self._closed:
            return
        with self._engines_changed:   # wakes wait_for_engines, to raise it
            self._closed = RuntimeError("this Client is closed; make a new Client")
            self._engines_changed.notify_all()
        with self._send_lock:
            self._flush()
            # what is queued (a request just made) has a second to leave, but none while
            # the controller is gone (the I/O thread saw the connection lost): nothing can
            # reach it, and ending the context (term) would wait out that second
            lost = self._lost_at is not None or self._gone is not None
            self._sender.close(linger=0 if lost else 1000 if linger is None else linger)
            with contextlib.suppress(zmq.Again):   # an I/O thread that saw us collected is gone
                self._outbox.send(b"", zmq.NOBLOCK)
            self._outbox.close(linger=1000)
        if threading.current_thread() is self._io:   # collected there (see _io_thread)
            self._io_ends_ctx.set()
        else:
            self._io.join(5)
            if not self._io.is_alive():   # else stuck, or frozen at interpreter exit: its
                self.ctx.destroy(linger=0)   # sockets would hold term() forever
        _fail(self, self._futures.values(), RuntimeError("this Client was closed before the "
            "reply came; it may still run: get_result from a new Client"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
    def __del__(self, _suppress=contextlib.suppress):   # bound now: at interpreter exit,
        with _suppress(Exception):   # the module's globals are None; __init__ may have failed
            self.close()


# ---------------------------------------------------------------- views

class _View(errors.SaysWhyAbsent, errors.ClientSide):
    _flag_names = ("block", "label", "track")

    def __init__(self, client, targets="all", block=None, **flags):   # None: rc.block
        self.client, self.targets = client, targets
        self.block = client.block if block is None else block
        self.label = None   # kept in the task records: ar.metadata['label'], db_query
        self.track = False  # accepted and ignored, as push's track= (docs/ipyparallel.rst)
        self.set_flags(**flags)

    def __repr__(self):
        return f"<{type(self).__name__} {self.targets}>"

    def __len__(self):   # the engines it may use: its targets', or all registered
        return len(self.client.resolve_targets(self.targets))
    def _label(self, label=None):
        """The `label` flag (or a call's own `label`) as header fields (none when None)."""
        label = self.label if label is None else label
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, not {type(label).__name__}")
        return {} if label is None else {"label": label}

    @_ctrl_c_aborts
    def _use(self, name):
        """use_cloudpickle() (the default), use_dill() or use_pickle() (nothing by value:
        functions by reference only), here and on this view's engines: see
        protocol.use_serializer. Returns as apply does."""
        protocol.use_serializer(name)
        return DirectView(self.client, self.targets, block=self.block).apply(
            protocol.use_serializer, name)

    use_cloudpickle, use_dill, use_pickle = map(functools.partial(functools.partialmethod, _use),
                                                ("cloudpickle", "dill", "pickle"))

    def set_flags(self, **flags):
        """Set the view's flags, all or (one refused) none."""
        for k in sorted(set(flags) - set(self._flag_names) - {"targets"}):
            raise KeyError(f"unknown flag {k!r}; flags are {sorted(self._flag_names)}")
        saved = {k: getattr(self, k) for k in flags}
        try:
            for k, v in flags.items():
                setattr(self, k, v)
        except BaseException:
            for k, v in saved.items():
                setattr(self, k, v)
            raise

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        saved = {k: getattr(self, k, None) for k in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def _block(self, block):   # checked: see _blocking
        return _blocking(self.client, self.block if block is None else block)

    def _finish(self, ar, block):
        return ar.get() if self._block(block) else ar

    @_ctrl_c_aborts
    def apply(self, f, /, *args, **kwargs):
        return self.apply_sync(f, *args, **kwargs) if self.block else self._apply(f, args, kwargs)

    def apply_async(self, f, /, *args, **kwargs):
        return self._apply(f, args, kwargs)

    @_ctrl_c_aborts
    def apply_sync(self, f, /, *args, **kwargs):
        return self._block(True) and self._apply(f, args, kwargs).get()

    def apply_with_flags(self, f, args=None, kwargs=None, block=None, **flags):
        """``f(*args, **kwargs)`` with `flags` for this call alone (the seed's task docs)."""
        return RemoteFunction(self, f, block, **flags)(*(args or ()), **(kwargs or {}))

    def map_async(self, f, *sequences, **kwargs):
        return self.map(f, *sequences, block=False, **kwargs)

    def map_sync(self, f, *sequences, **kwargs):
        return self.map(f, *sequences, block=True, **kwargs)

    def remote(self, block=None, **flags):
        """Decorator: calling the function runs it through this view's apply."""
        return lambda f: RemoteFunction(self, f, block=block, **flags)

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: the function is applied to parts of its arguments in parallel."""
        return lambda f: ParallelFunction(self, f, dist=dist, block=block, **flags)

    # handed to the client, as ipyparallel's views do (views keep no msg_id history, so
    # `outstanding` holds every view's msg_ids, not this view's alone; abort, its engines')
    wait, spin, outstanding = (property(lambda self, name=name: getattr(self.client, name))
                               for name in ("wait", "spin", "outstanding"))

    def abort(self, jobs=None, targets=None, block=None):   # ipyparallel's: on its targets
        return self.client.abort(jobs, self.targets if targets is None else targets, block)

    def get_result(self, indices_or_msg_ids=None, block=None, owner=False):
        """``rc.get_result(msg_ids, owner)``, waited for if `block`: msg_ids or
        AsyncResults only (there is no history to index)."""
        if indices_or_msg_ids is None or isinstance(indices_or_msg_ids, int):
            raise TypeError("get_result takes msg_ids or AsyncResults: views keep no history")
        return self.client.get_result(indices_or_msg_ids, self._block(block), owner)

    def purge_results(self, jobs=(), targets=()):
        """``rc.purge_results``; `targets` None or 'all': this view's engines."""
        targets = self.targets if targets is None or targets == "all" else targets
        jobs, targets = (None if isinstance(x, (list, tuple)) and not x else x
                         for x in (jobs, targets))
        return self.client.purge_results(jobs, targets)

    @property
    def executor(self):
        """A concurrent.futures.Executor over this view's engines: each call is one
        load-balanced task (also on a DirectView, whose targets it keeps)."""
        from .integrations import ViewExecutor

        lb = isinstance(self, LoadBalancedView)
        return ViewExecutor(self if lb else LoadBalancedView(self.client, self.targets))

    def register_joblib_backend(self, name="minipar", make_default=False):
        """Make ``joblib.parallel_backend(name)`` run joblib's work on this view."""
        from .integrations import register_joblib_backend

        register_joblib_backend(name, self, make_default)

    def queue_status(self, targets=None, verbose=False):   # targets: the view's by default
        return self.client.queue_status(self._target_list() if targets is None else targets,
                                        verbose)

    def _target_list(self):
        return None if self.targets in (None, "all") else self.targets


class DirectView(_View):
    """Requests addressed to engines directly (the MultiEngine interface). ``targets``
    is 'all', one engine id (results are plain values) or a list of ids (results are
    lists, one per engine). Flags: ``block``, ``targets``."""

    def activate(self, suffix=""):
        """Make this the view of IPython's %px{suffix}, %%px, %autopx, %pxresult, %pxconfig."""
        from .classic import _activate_magics

        return _activate_magics(self, suffix)

    importer = property(lambda self: self.sync_imports(), doc="ipyparallel's sync_imports()")

    def sync_imports(self, local=True, quiet=False):
        """``with dv.sync_imports(): import numpy``: the block's imports run here and on
        the engines (names bound in their namespaces); see integrations.sync_imports."""
        from .integrations import sync_imports

        return sync_imports(self, local, quiet)

    def _each(self, targets, send, fname):
        """`send(engine_id, future)` makes one target's request, returning its future;
        `send(engine_ids, None)`, one request the controller copies to each (the client
        sends and the controller holds its parts once), returning their futures."""
        targets = self.targets if targets is None else targets
        ids = self.client.resolve_targets(targets)
        if isinstance(targets, int):   # one engine, whose value is the result
            return send(ids[0], _OneRequest(self.client, fname))
        futures = ([send(ids[0], None)] if len(ids) == 1   # sent at once, with what is held
                   else self.client._together(lambda: send(ids, None)))
        return AsyncResult(self.client, futures, fname=fname)

    def _apply(self, f, args, kwargs, targets=None):
        fparts = protocol.serialize_function(f)
        label = self._label()
        return self._each(targets, lambda e, future: self.client.send_apply(
            f, args, kwargs, engine_id=e, fparts=fparts, future=future, **label),
            getattr(f, "__name__", "apply"))

    @_ctrl_c_aborts
    def _send_each(self, kind, targets, block, parts=(), **fields):
        """The same `kind` request to each target (see _each), finished as `block` says."""
        return self._finish(self._each(targets, lambda e, future: self.client.send_request(
            kind, parts, engine_id=e, future=future, engine=e, **fields), kind), block)

    @_ctrl_c_aborts
    def execute(self, code, silent=True, targets=None, block=None, label=None):
        """Run a code string in each target's namespace. An AsyncResult with `block` too,
        as ipyparallel's (waited for, errors raised: ``ar.stdout`` follows); each engine's
        result is an ExecuteReply. With `silent` False (%px's) the value of a last
        expression comes back too, as ``ar.execute_result`` (``Out[0:3]: ...``). `label`:
        this call's, else the view's flag."""
        if not isinstance(code, str):
            raise TypeError(f"execute takes code as a str, not {type(code).__name__} "
                            f"{code!r:.40}")
        ar = self._send_each(protocol.EXECUTE, targets, False, code=code, silent=bool(silent),
                             **self._label(label))
        if self._block(block):
            ar.get()   # output comes with each reply: nothing else to wait for
        return ar

    def run(self, filename, targets=None, block=None, label=None):
        """Run a Python file's code in each target's namespace (see execute)."""
        with open(filename) as f:
            return self.execute(f.read(), targets=targets, block=block, label=label)

    def push(self, ns, targets=None, block=None, track=None):
        """Update each target's namespace with the dict `ns`. `track`: ignored (see
        docs/ipyparallel.rst: a large buffer must not change until the push is done)."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        _check_names("push", ns)
        return self._send_each(protocol.PUSH, targets, block, protocol.serialize(ns))

    def pull(self, names, targets=None, block=None):
        """Read a name (or a list of names) from each target's namespace."""
        _check_pulled("pull", names)
        return self._send_each(protocol.PULL, targets, block, names=names)

    def __setitem__(self, key, value):   # an update: not waited for unless blocking
        self.update({key: value})

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.pull(key, block=True)
        raise TypeError("index a DirectView with a name to pull it")

    def update(self, ns):   # push, as ipyparallel's: an AsyncResult unless `block`
        return self.push(ns)

    def get(self, key_s):   # ipyparallel's name for pull's `names`
        return self.pull(key_s, block=True)

    def keys(self, targets=None, block=None):
        return self._send_each(protocol.KEYS, targets, block)

    def clear(self, targets=None, block=None):
        """Empty each target's namespace: None once done if blocking, as ipyparallel's."""
        ar = self._send_each(protocol.CLEAR, targets, False)
        if not self._block(block):
            return ar
        ar.get()   # its errors raise

    @_ctrl_c_aborts
    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None, track=None):
        """Split `seq` into parts, one per target, pushed as `key`: contiguous blocks, or with
        ``dist='r'`` round-robin (item j to the j % len(targets)-th). `track`: ignored."""
        _check_dist(dist)
        _check_names("scatter", [key])
        ids = self.client.resolve_targets(self.targets if targets is None else targets)
        seq, futures = _sequence(seq), []
        for i, eid in enumerate(ids):
            part = _partition(seq, len(ids), i, dist)
            part = part[0] if flatten and len(part) == 1 else part
            futures.append(self.client.send_request(
                protocol.PUSH, protocol.serialize({key: part}), engine_id=eid, engine=eid))
        ar = AsyncResult(self.client, futures, fname="scatter")
        return ar if self._finish(ar, block) is ar else None   # blocking: None, as ipyparallel's

    @_ctrl_c_aborts
    def gather(self, key, dist="b", targets=None, block=None):
        """Pull `key` from each target and join the parts as scatter with `dist` split them."""
        _check_dist(dist)
        _check_pulled("gather", key)
        ids = self.client.resolve_targets(self.targets if targets is None else targets)
        futures = [self.client.send_request(protocol.PULL, engine_id=e, engine=e, names=key)
                   for e in ids]
        pulled = AsyncResult(self.client, futures, fname="gather")
        ar = _Derived(self.client, pulled, lambda parts: (_interleave if dist == "r" else _concat)(
            [p if isinstance(p, (list, tuple)) or hasattr(p, "ndim") else [p] for p in parts]))
        return self._finish(ar, block)

    def imap(self, f, *sequences, **kwargs):   # ipyparallel's View.imap: map's results
        return iter(self.map_async(f, *sequences, **kwargs))   # as they come (lview's: lazy)

    @_ctrl_c_aborts
    def map(self, f, *sequences, block=None, track=False, return_exceptions=False, label=None):
        """Apply `f` element-wise, each target taking one contiguous block.
        `return_exceptions`: a failed block's error stands in for each of its items.
        `label`: the label flag for this call; `track`: ignored, as push's."""
        with self.temp_flags(**({} if label is None else {"label": label})):
            ar = self._map(f, sequences)
        ar._return_exceptions = return_exceptions
        return self._finish(ar, block)

    def _map(self, f, sequences, elementwise=True, dist="b", kwargs=None):
        seqs, n = _sequences(sequences, elementwise)   # kwargs: each call's (a parallel call)
        ids = self.client.resolve_targets(self.targets)
        fparts = protocol.serialize_function(f)
        futures, sizes = [], []
        for i, eid in enumerate(ids):
            chunks = [_partition(s[:n] if len(s) != n else s, len(ids), i, dist) for s in seqs]
            if not len(chunks[0]):
                continue
            sizes.append(len(chunks[0]))
            futures.append(self.client.send_apply(f, tuple(chunks), kwargs or {}, engine_id=eid,
                                                  fparts=fparts, map=elementwise, **self._label()))
        ar = AsyncResult(self.client, futures, fname=getattr(f, "__name__", "map"), mapping=dist)
        ar._sizes = sizes if elementwise else None
        return ar

    def shutdown(self, targets=None, restart=False, hub=False, block=True):
        t = self.targets if targets is None or targets == "all" else targets
        return self.client.shutdown(t, restart, hub, block)


class BroadcastView(DirectView):
    """ipyparallel's: a DirectView, whose requests to several engines leave the client once
    (the controller sends a copy to each; map, scatter and gather send each engine its own
    part). `is_coalescing` is only kept: replies come batched."""

    def __init__(self, client, targets="all", block=None, is_coalescing=False, **flags):
        super().__init__(client, targets, block, **flags)
        self.is_coalescing = is_coalescing


class LoadBalancedView(_View):
    """Tasks given to whichever engine is free (the Task interface).

    Flags (attributes, ``set_flags`` or ``with view.temp_flags(...)``; never keywords
    of ``apply``, which are the function's own): ``block``, ``targets`` (engines the
    tasks may use), ``after`` (start only when these tasks are done), ``follow`` (run
    on the engine where these ran), each a ``Dependency``, msg_ids or AsyncResults;
    ``timeout`` (seconds a task may wait for its dependencies: ``DependencyTimeout``; 0: none),
    ``retries`` (times a failed task is run again, elsewhere if possible),
    ``recovery`` (what runs when retries are exhausted, see below) and ``time_limit``
    (seconds a task may run before it is interrupted: ``TaskTimeout``, never retried).

    ``recovery`` is a function, called with the task's own arguments, or a list of functions
    (a chain: each recovers the one before), or the AsyncResult / msg_id of a task made with
    ``recovery_task``. The recovery call is sent with the task, as a dormant task that runs
    only if the task fails for good; its result becomes the task's result, and the task's
    ``metadata['attempts']`` lists the failed attempts. A recovery task has the view's
    ``targets`` and ``time_limit``, no dependencies and no retries of its own. If the task
    succeeds, its dormant recovery ends with ``TaskAborted`` without running."""

    _flag_names = ("block", "label", "track", "after", "follow", "timeout", "retries",
                   "recovery", "time_limit")

    def __init__(self, client, targets=None, block=None, **flags):
        self.after = self.follow = self.timeout = self.recovery = self.time_limit = None
        self.retries = 0
        super().__init__(client, targets, block, **flags)   # then the flags given

    def _checked_flag(name, check):   # checked when set, so set_flags and temp_flags refuse
        def set_it(self, value):       # a wrong value before anything is sent
            check(name, value)
            setattr(self, "_" + name, value)
        return property(lambda self: getattr(self, "_" + name), set_it)

    after = _checked_flag("after", lambda name, v: dependency_fields(**{name: v}))
    follow = _checked_flag("follow", lambda name, v: dependency_fields(**{name: v}))
    timeout = _checked_flag("timeout", _seconds_check("a task may wait for its dependencies"))
    time_limit = _checked_flag("time_limit", _seconds_check("a task may run"))
    retries = _checked_flag("retries", _check_count)
    del _checked_flag

    # ------------------------------------------------------------ header fields

    def _task_fields(self):   # the flags set only: a plain task hands down 1 keyword, not 9
        fields, targets = {"lb": True, **self._label()}, self._target_list()
        if targets is not None:
            fields["targets"] = [targets] if isinstance(targets, int) else list(targets)
        if self._after is not None or self._follow is not None:
            fields.update(dependency_fields(self._after, self._follow))
        fields.update(timeout=self._timeout, retries=self._retries or None,
                      time_limit=self._time_limit)
        return {k: v for k, v in fields.items() if v is not None}

    # ------------------------------------------------------------ submission

    def _recovery_chain(self):
        """The `recovery` flag as [(function, its frames), ...] to submit with each task,
        or the msg_id of a dormant task made beforehand, or None."""
        rec = [self.recovery] if callable(self.recovery) else self.recovery
        if rec is None:
            return None
        if isinstance(rec, (list, tuple)) and rec and all(callable(g) for g in rec):
            return [(g, protocol.serialize(g)) for g in rec]
        ids = msg_ids(rec)
        if len(ids) != 1:
            raise ValueError(f"recovery= names {len(ids)} tasks; give one function, a list of "
                             "functions (a chain), or one task made with view.recovery_task")
        return ids[0]

    def _send(self, f, args, kwargs, fparts, fields, chain, future=None, **extra):
        """Submit one task (and first its dormant recovery tasks); returns its future."""
        if chain is not None:
            fields = dict(fields, recovery=self._send_recovery(chain, args, kwargs, fields, extra))
        if isinstance(f, dependent):
            extra["dependent"] = True   # an ImportError unpickling it means "unmet"
        return self.client.send_apply(f, args, kwargs, fparts=fparts, future=future,
                                      **fields, **extra)

    def _send_recovery(self, chain, args, kwargs, fields, extra):
        """Submit `chain`'s dormant tasks; the msg_id of its first (None: no chain)."""
        if chain is None or isinstance(chain, str):
            return chain
        rid = None
        for g, gparts in reversed(chain):   # the last of the chain first: others name it
            rid = self._send_dormant(g, args, kwargs, gparts, fields, rid, extra).msg_id
        return rid

    def _send_dormant(self, g, args, kwargs, gparts, fields, rid, extra):
        return self.client.send_apply(
            g, args, kwargs, fparts=gparts, lb=True, dormant=True, targets=fields.get("targets"),
            time_limit=fields.get("time_limit"), recovery=rid,
            **dict(extra, **({"dependent": True} if isinstance(g, dependent) else {})))

    def _apply(self, f, args, kwargs, fparts=None, fields=None, **extra):
        fields = fields or self._task_fields()
        ar = _OneRequest(self.client, getattr(f, "__name__", "apply"))
        self._send(f, args, kwargs, fparts, fields, self._recovery_chain(), future=ar, **extra)
        return ar

    def recovery_task(self, f, /, *args, **kwargs):
        """Submit ``f(*args, **kwargs)`` as a dormant task, to be named by another task's
        ``recovery=``: it runs only if that task fails for good (and ends with TaskAborted, unrun,
        if it succeeds). Its own ``recovery`` flag makes a chain. Returns its AsyncResult."""
        fields = self._task_fields()
        rid = self._send_recovery(self._recovery_chain(), args, kwargs, fields, {})
        fut = self._send_dormant(f, args, kwargs, None, fields, rid, {})
        return AsyncResult(self.client, [fut], fname=getattr(f, "__name__", "recovery"),
                           single=True)

    # ------------------------------------------------------------ map

    @_ctrl_c_aborts
    def map(self, f, *sequences, block=None, chunksize=None, ordered=True,
            return_exceptions=False, label=None):
        """Apply `f` element-wise as tasks of `chunksize` elements (default: 4 per engine, 64 at
        least: MAP_MIN_CHUNKS). The result is in input order; `ordered=False` makes iterating
        over it yield chunks as they finish. `return_exceptions`: a failed chunk's error stands
        in for each of its items, instead of raising. `label`: the label flag for this call."""
        block = self._block(block)   # before it sends
        with self.temp_flags(**({} if label is None else {"label": label})):
            ar = self._map(f, sequences, chunksize=chunksize, ordered=ordered)
        ar._return_exceptions = return_exceptions
        return self._finish(ar, block)

    def _map(self, f, sequences, elementwise=True, chunksize=None, ordered=True, dist="b",
             kwargs=None):
        seqs, n = _sequences(sequences, elementwise)
        tasks = _task_slices(n, chunksize, len(self.client.ids), elementwise, dist)
        fparts, fields = protocol.serialize_function(f), self._task_fields()
        chain = self._recovery_chain()
        if isinstance(chain, str) and len(tasks) > 1:
            raise ValueError("recovery= names one task, which can recover one task only; "
                             "this map makes several: give a function instead")

        def send_all():   # a Ctrl-C in it aborts what it sent
            return [self._send(f, tuple(list(s[t]) if isinstance(s, range) else s[t] for s in seqs),
                               kwargs or {}, fparts, fields, chain, map=elementwise) for t in tasks]
        ar = AsyncResult(self.client, self.client._together(send_all), mapping=dist,
                         fname=getattr(f, "__name__", "map"), ordered=ordered)
        ar._sizes = [len(range(n)[t]) for t in tasks] if elementwise else None
        return ar

    def imap(self, f, *iterables, ordered=True, max_outstanding="auto", return_exceptions=False):
        """Lazy map: an iterator over ``f(*items)``, one task per item.

        The inputs are read only as results are consumed: at most `max_outstanding` tasks are
        in flight ('auto': four per engine, enough to keep every engine's queue full while a
        result travels back). `ordered=False` yields results as they finish. A failed task
        raises its error (`return_exceptions`: yields it); stopping early aborts the rest."""
        if not iterables:
            raise ValueError("imap needs at least one iterable")
        if max_outstanding == "auto":
            max_outstanding = 4 * max(1, len(self.client.ids))
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding={max_outstanding}: give a positive number")
        # flags are read now, as map reads them, not when the first item is asked for
        return self._imap(f, zip(*iterables), protocol.serialize_function(f), self._task_fields(),
                          self._recovery_chain(), ordered, max_outstanding, return_exceptions)

    def _imap(self, f, items, fparts, fields, chain, ordered, max_outstanding, return_exceptions):
        outstanding = collections.deque()
        try:
            for args in items:
                outstanding.append(self._send(f, args, {}, fparts, fields, chain))
                while len(outstanding) >= max_outstanding:
                    yield _next_result(outstanding, ordered, return_exceptions)
            while outstanding:
                yield _next_result(outstanding, ordered, return_exceptions)
        finally:
            left = [fut for fut in outstanding if not fut.done()]
            if left and not self.client._closed:
                _abort_ids(self.client, self.client._msg_ids(left))   # at exit: not waited for


_MOVED = {"ViewExecutor": "integrations", **dict.fromkeys((
    "BaseTask", "MapTask", "MultiEngineClient", "PendingResult", "ResultList", "StringTask", "Task",
    "TaskClient", "TaskResult", "default_address", "default_task_address", "remote"), "classic")}


def __getattr__(name):
    # the classic API moved to classic.py and ViewExecutor to integrations.py; `from minipar
    # import client` scripts still find them here (imported on first use: they import this one)
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module("." + _MOVED[name], __package__), name)
