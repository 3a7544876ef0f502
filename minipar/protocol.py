"""The wire: message kinds, frame layout, signing, serialization, connection files.

Every side (client, controller, engine) imports this module and nothing else of
minipar's except ``errors``. A message is a list of ZeroMQ frames::

    [routing ids ...] DELIM  signature  header  part  part ...
                              ^          ^       ^ pickles and their out-of-band buffers
                              |          +-- a plain dict: a routing prefix of fixed
                              |              layout (wire version, kind, msg_id, parent,
                              |              session, lb, engine, status, attempt, times),
                              |              then the rest marshalled, with `body`, the
                              |              SHA-256 of the parts (see body_digest)
                              +-- HMAC-SHA256(key, header)

A message of at most PACK_MAX bytes (most requests and replies of small data) travels
as one frame after its routing ids (see ``send``): each frame costs a send, a receive
and a GIL hand-off on both sides. A larger message goes frame by frame, buffers uncopied.

The controller reads headers only: it checks the signature over the header and never
touches the parts, so forwarding a 100 MB push costs it no hashing. Of a task's request
or reply it reads the routing prefix alone, one ``struct.unpack_from`` (``route_header``),
unless the rest holds a field it routes by (dependencies, targets, a label, an error).
A header of another wire version (a marshalled dict: a minipar from before the prefix) is
refused, naming both versions. The receiver of the parts (an engine or a client) checks
`body` against the parts before unpickling any of them. Every pickle is covered by the
digest; an out-of-band buffer (an array's raw memory, listed in the header's `raw`) by its
length only, as Jupyter's protocol leaves buffers unsigned: hashing 100 MB would halve the
bulk rate, and a buffer is never parsed, so changing one alters data but cannot run code
(``--curve`` encrypts and authenticates everything). Nothing is unpickled before its
signature is verified; a header, read only once verified too, is a fixed prefix of
numbers and ids and plain data in ``marshal``'s format, which
cannot name a class or function (reading it runs nothing).
A refused message is counted under one of DROP_REASONS; messages above the cluster's
max_message_size are refused on receipt and never sent.

A batch (kind BATCH, made by ``Session.pack``) carries several messages to one peer under
one signature, each with its own header and `body` digest. The controller sends what
one pass makes for an engine or a client this way, and a client a map's tasks.

``connect`` adds CurveZMQ encryption when the controller's files ask for it.

Serialization (``serialize`` / ``deserialize``): functions and closures with
cloudpickle; data with the C pickler (protocol 5), falling back to cloudpickle when
the data refers to ``__main__`` or cannot be pickled by reference. Buffers larger than
``BUFFER_THRESHOLD`` (numpy arrays, large bytes, bytearrays, memoryviews) leave the
pickle as frames of their own, sent with ``copy=False``.
"""

import _signal
import collections
import contextlib
import io
import itertools
import json
import marshal
import math
import os
import pickle
import re
import reprlib
import signal
import struct
import sys
import threading
import time
import types
import warnings
import weakref

import cloudpickle
import zmq

from .dependency import Reference
from .errors import ConnectionFileError, MiniparError, SerializationError, making_profile_folder

DELIM = b"<MINIPAR>"
REFUSED = b"refused"  # an unsigned notice sent back for a message that failed its check
SIGNATURE_SCHEME = "hmac-sha256"

# Buffers at least this large travel as frames of their own (no copy). Below it the
# cost of an extra frame outweighs a memcpy; 64 KiB..1 MiB is reasonable.
BUFFER_THRESHOLD = 64 * 1024

# A message of at most this many bytes leaves as one frame (see send): a 64 KiB copy costs a frame.
PACK_MAX = 1 << 16
PACKED = b"<MINIPAR:packed>"
_COUNT = struct.Struct("<I")

# How many recent signatures a receiver remembers to refuse replays. Each costs about
# 100 bytes; 2**16 is a few MB and covers far more than any message's time in flight.
REPLAY_HISTORY = 2**16

# A batch (several messages sent as one, see Session.pack) holds at most this many bytes.
BATCH_BYTES = 1 << 20

# Largest message accepted by default (bytes, all frames together): receivers drop larger
# ones (Session.check), zmq disconnects a peer sending a larger frame (ZMQ_MAXMSGSIZE),
# senders refuse them (check_size). The controller's --max-message-size sets it for all.
MAX_MESSAGE_SIZE = 2**31

# Message kinds. A request `x` is answered by `x_reply` (REPLY[x]).
APPLY = "apply"                  # call a function: parts = function, (args, kwargs)
EXECUTE = "execute"              # run a code string: parts = code
PUSH = "push"                    # update the namespace: parts = dict
PULL = "pull"                    # read names: header `names`
KEYS = "keys"
CLEAR = "clear"
PROPERTIES = "properties"        # engine properties: header `op` get/set/has/del/clear
PROPERTIES_UPDATE = "properties_update"  # an engine's properties changed: header `properties`
ABORT = "abort"                  # header `msg_ids`; `queued_only`: not one running;
                                 # `running`: a take-back of those queued behind it;
                                 # `behind`: a client's, a take-back if that one runs
ABORT_MARKED = "aborted"         # an engine has marked the requests of an abort: header
                                 # `parent`; `taken`: the ones a take-back got back
INTERRUPT = "interrupt"
SHUTDOWN = "shutdown"            # to engines: header `abort` ends the running request too
REGISTER = "register"            # header `take_back`: it answers take-backs (see ABORT)
READY = "ready"                  # an engine's request socket is connected: header `reg`
UNREGISTER = "unregister"        # header `reason`: to an engine, why it must register again
                                 # (`fatal`: it may not); from one, why it stopped if not told
                                 # to (a silent controller); `last_started`: none after it runs
CONNECT = "connect"
QUEUE_STATUS = "queue_status"
RESULT_REQUEST = "result_request"
PURGE = "purge"
RESUBMIT = "resubmit"
DB_QUERY = "db_query"
STREAM = "stream"                # stdout/stderr (header `text`) or published data (`name` "data",
                                 # the dict in parts) of a running task (`late`: printed after it)
STATS = "stats"                  # an engine's counters (messages dropped, requests run)
STARTED = "started"              # an engine started a request (with a time_limit, or still
                                 # running after STREAM_INTERVAL_S): header `parent`, `started`
STATUS = "status"                # what the cluster does now (rc.status, python -m minipar.top)
USAGE = "usage"                  # an engine's CPU time, memory and running request, sent
                                 # every engine.USAGE_PERIOD_S (see minipar.top)
BATCH = "batch"                  # several messages under one signature: header `items`
                                 # (their header bytes) and `nparts`; see Session.pack
BROADCAST = "broadcast"          # one request for several engines (a DirectView's): header
                                 # `request` (its kind), `targets` and one `msg_ids` each
SIGNAL = "signal"                # send a signal to engines' processes: header `sig`, `targets`
# notifications, published by the controller
ENGINE_REGISTERED = "engine_registered"
ENGINE_UNREGISTERED = "engine_unregistered"   # header `id`, `why`: how it left (a death:
ENGINE_DIED = "engine_died"                   # its pid, host and its log's last lines)
CONTROLLER_STOPPED = "controller_stopped"   # stopped without --reuse: header `why`

# Replies: written out, so no kind is built per message.
APPLY_REPLY = "apply_reply"
EXECUTE_REPLY = "execute_reply"
PUSH_REPLY = "push_reply"
PULL_REPLY = "pull_reply"
KEYS_REPLY = "keys_reply"
CLEAR_REPLY = "clear_reply"
PROPERTIES_REPLY = "properties_reply"
STATS_REPLY = "stats_reply"
ABORT_REPLY = "abort_reply"
SHUTDOWN_REPLY = "shutdown_reply"
REGISTER_REPLY = "register_reply"
CONNECT_REPLY = "connect_reply"
QUEUE_STATUS_REPLY = "queue_status_reply"
RESULT_REQUEST_REPLY = "result_request_reply"
PURGE_REPLY = "purge_reply"
RESUBMIT_REPLY = "resubmit_reply"
DB_QUERY_REPLY = "db_query_reply"
UNKNOWN_REPLY = "unknown_reply"  # the error answering a request of a kind nobody knows

# request kind -> its reply's kind (REPLY.get(kind, UNKNOWN_REPLY) for any kind received)
REPLY = {
    APPLY: APPLY_REPLY, EXECUTE: EXECUTE_REPLY, PUSH: PUSH_REPLY, PULL: PULL_REPLY,
    KEYS: KEYS_REPLY, CLEAR: CLEAR_REPLY, PROPERTIES: PROPERTIES_REPLY, STATS: STATS_REPLY,
    ABORT: ABORT_REPLY, SHUTDOWN: SHUTDOWN_REPLY, REGISTER: REGISTER_REPLY,
    CONNECT: CONNECT_REPLY, QUEUE_STATUS: QUEUE_STATUS_REPLY,
    RESULT_REQUEST: RESULT_REQUEST_REPLY, PURGE: PURGE_REPLY, RESUBMIT: RESUBMIT_REPLY,
    DB_QUERY: DB_QUERY_REPLY,
}

# A reply's `status` (and a finished record's). A request's error has its `ename` and
# `evalue` in the header too, and the exception in its parts.
OK = "ok"
ERROR = "error"
UNMET = "unmet"          # a functional dependency (@require, @depend) failed on that engine
ABORTED = "aborted"      # aborted before or while it ran (TaskAborted)
TIMEOUT = "timeout"      # its run-time limit interrupted it (TaskTimeout)
STATUSES = (OK, ERROR, UNMET, ABORTED, TIMEOUT)

# The routing-id suffix of an engine's second socket, its main thread's (requests in,
# replies out): the controller knows both identities as that engine's.
REPLY_SUFFIX = b".r"


def client_identity(session):
    """A client's routing id, made of its session (``rc.session.session``): fixed, so the
    controller's records name where results go also after either end restarted."""
    return b"client-" + session.encode()


def new_id():
    """A new message id: this process's random prefix and a count. Unique like uuid4's,
    and no system call: os.urandom's releases the GIL, which a thread busy beside the
    caller (the client's I/O thread, an engine's receiver) then holds for a while."""
    return _id_prefix + format(next(_id_count), "x")


def is_new_id(msg_id):
    """Whether `msg_id` has new_id's shape (a prefix of 16 hex digits, '-', a hex count):
    what the controller's queries may wait for (see Controller._park)."""
    return isinstance(msg_id, str) and _NEW_ID.fullmatch(msg_id) is not None


_NEW_ID = re.compile(r"[0-9a-f]{16}-(?:0|[1-9a-f][0-9a-f]*)")


def _new_id_prefix():
    global _id_prefix
    _id_prefix = os.urandom(8).hex() + "-"   # a forked child counts from its own prefix


_id_count = itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


# ---------------------------------------------------------------- headers

# A header's bytes: the routing prefix, then the rest of the header marshalled. The prefix
# holds what the controller routes a task by and records, at fixed places (one
# struct.unpack_from): wire version, flags, kind and status as codes, engine, attempt,
# started, completed, then the byte lengths of msg_id, parent and session, whose UTF-8
# follows it. A field whose value has another type (or is out of range) stays in the rest.
WIRE_VERSION = 2   # 1: a header wholly marshalled (minipar before the routing prefix)
_PREFIX = struct.Struct("<BBBBiHddBBB")
_read_prefix, _PREFIX_SIZE = _PREFIX.unpack_from, _PREFIX.size
# Flags: `lb` is True; the rest holds no ROUTED field; then 4, 8, 16: msg_id, parent,
# session are in the prefix. Absent: kind and status code 0, engine -2**31, attempt 0xFFFF,
# times NaN (the sentinels below; `_NAN` is also what pack_header pops for a missing key).
_LB, _PLAIN = 1, 2
_NO_ENGINE, _NO_ATTEMPT, _NAN = -2**31, 0xFFFF, float("nan")
_TASKS = (APPLY, EXECUTE, PUSH, PULL, KEYS, CLEAR, PROPERTIES, STATS)   # sent to one engine
_CODED = (None, *_TASKS, *[REPLY[k] for k in _TASKS])
_KIND_CODE = {k: i for i, k in enumerate(_CODED) if k}
_STATUS_CODE = {s: i for i, s in enumerate(STATUSES, 1)}
# by code, None for a code no kind or status has (all 256: any byte is looked up safely)
_CODED, _STATUSES = (*_CODED, *[None] * 256)[:256], (None, *STATUSES, *[None] * 256)[:256]
# What the controller reads of a task's request or reply: with none of it in the rest (the
# prefix's _PLAIN flag), the prefix alone stands for the header there (see route_header).
ROUTED = frozenset(("msg_id", "kind", "parent", "session", "lb", "engine", "status",
                    "attempt", "started", "completed", "targets", "after", "follow",
                    "timeout", "time_limit", "retries", "recovery", "dormant", "depend",
                    "label", "ename"))


def pack_header(header):
    """The routing prefix, then the rest in marshal's format: plain data only, twice as
    quick to read as a restricted unpickler, and its keys come back interned. Version 4,
    which every Python since 3.4 reads. Written out field by field: the client packs one
    per task, and the engine one per reply."""
    rest = header.copy()
    pop, flags = rest.pop, 0
    # each popped, `_NAN` if absent; one whose value does not fit goes back in the rest.
    # At most 4 bytes a character: under 64 characters, the UTF-8 fits its length's byte.
    msg_id, parent, session = pop("msg_id", _NAN), pop("parent", _NAN), pop("session", _NAN)
    msg_id = msg_id.encode() if type(msg_id) is str and len(msg_id) < 64 \
        else _text(msg_id, rest, "msg_id")
    session = session.encode() if type(session) is str and len(session) < 64 \
        else _text(session, rest, "session")
    if parent is not _NAN:
        parent = _text(parent, rest, "parent")
    kind = pop("kind", _NAN)
    code = _KIND_CODE.get(kind, 0) if type(kind) is str else 0
    if not code and kind is not _NAN:
        rest["kind"] = kind
    lb = pop("lb", _NAN)
    if lb is True:
        flags = _LB
    elif lb is not _NAN:
        rest["lb"] = lb
    status = pop("status", _NAN)
    scode = _STATUS_CODE.get(status, 0) if type(status) is str else 0
    if not scode and status is not _NAN:
        rest["status"] = status
    engine = pop("engine", _NO_ENGINE)
    if engine is not _NO_ENGINE and (type(engine) is not int or not _NO_ENGINE < engine < 2**31):
        engine, rest["engine"] = _NO_ENGINE, engine
    attempt = pop("attempt", _NO_ATTEMPT)
    if attempt is not _NO_ATTEMPT and (type(attempt) is not int or not 0 <= attempt < 0xFFFF):
        attempt, rest["attempt"] = _NO_ATTEMPT, attempt
    started, completed = pop("started", _NAN), pop("completed", _NAN)
    if started is not _NAN and (type(started) is not float or started != started):
        started, rest["started"] = _NAN, started
    if completed is not _NAN and (type(completed) is not float or completed != completed):
        completed, rest["completed"] = _NAN, completed
    texts = []
    if msg_id is not _NAN:
        flags |= 4
        texts.append(msg_id)
    if parent is not _NAN:
        flags |= 8
        texts.append(parent)
    if session is not _NAN:
        flags |= 16
        texts.append(session)
    if code and ROUTED.isdisjoint(rest):
        flags |= _PLAIN
    return b"".join((_PREFIX.pack(WIRE_VERSION, flags, code, scode, engine, attempt, started,
                                  completed, len(msg_id) if flags & 4 else 0,
                                  len(parent) if flags & 8 else 0,
                                  len(session) if flags & 16 else 0),
                     *texts, marshal.dumps(rest, 4)))


def _text(value, rest, key):
    """`value`'s UTF-8 for the prefix, or _NAN (put back in `rest` unless absent)."""
    if type(value) is str:
        data = value.encode()
        if len(data) < 256:
            return data
    if value is not _NAN:
        rest[key] = value
    return _NAN


def plain(value):
    """Whether `value` is plain data, which a header may carry."""
    if type(value) in (type(None), str, bytes, bool, int, float):
        return True
    if type(value) in (list, tuple):
        return all(plain(v) for v in value)
    if type(value) is dict:
        return all(plain(k) and plain(v) for k, v in value.items())
    return False


def _prefix(data):
    """The values of the routing prefix of header bytes `data` (as _PREFIX packs them)."""
    if len(data) < _PREFIX_SIZE or data[0] != WIRE_VERSION:
        if data[:1] not in (b"{", b"\xfb"):   # marshal's dict, which version 1 began with
            raise ValueError(f"a header in no minipar wire format (this process speaks "
                             f"version {WIRE_VERSION})")
        raise ValueError(f"a header of minipar's wire version 1, from an older minipar; this "
                         f"process speaks version {WIRE_VERSION}: run the same minipar on the "
                         "client, the controller and the engines")
    return _read_prefix(data)


def _fields(header, data, prefix):
    """`header` with the fields that `data`'s routing prefix holds (`prefix`, its values)
    set: into the marshalled rest's dict as it is, so the prefix wins, and no dict more."""
    _, flags, kind, status, engine, attempt, started, completed, a, b, c = prefix
    j = _PREFIX_SIZE + a
    k = j + b
    if flags & 4:
        header["msg_id"] = data[_PREFIX_SIZE:j].decode()
    if flags & 8:
        header["parent"] = data[j:k].decode()
    if flags & 16:
        header["session"] = data[k:k + c].decode()
    if kind:
        kind = header["kind"] = _CODED[kind]
        if kind is None:
            raise ValueError("a header of an unknown kind code")
    if flags & _LB:
        header["lb"] = True
    if status:
        status = header["status"] = _STATUSES[status]
        if status is None:
            raise ValueError("a header of an unknown status code")
    if engine != _NO_ENGINE:
        header["engine"] = engine
    if attempt != _NO_ATTEMPT:
        header["attempt"] = attempt
    if started == started:
        header["started"] = started
    if completed == completed:
        header["completed"] = completed
    return header


def route_header(data):
    """What the controller reads of verified header bytes: for a task's request or reply
    whose ROUTED fields are all in the prefix, the prefix's fields alone (the rest, which
    the engine or client reads, is not parsed); else the whole header (unpack_header)."""
    prefix = _prefix(data)
    if prefix[1] & _PLAIN and prefix[1] & 4:
        return _fields({}, data, prefix)
    return _unpack(data, prefix)


def unpack_header(data):
    """The header dict of verified bytes (marshal is not for unverified input).

    A signed header is still bounded before marshal reads it: marshal allocates a list
    or tuple for the count it is told before reading a single item, so a few signed bytes
    claiming 2**31 items would stall the reader for seconds (``_counts_fit``)."""
    return _unpack(data, _prefix(data))


def _unpack(data, prefix):
    rest = data[_PREFIX_SIZE + prefix[8] + prefix[9] + prefix[10]:]
    if _large_count(rest) and not _counts_fit(rest):
        raise ValueError("a header whose containers claim more items than it has bytes")
    try:
        header = marshal.loads(rest)
    except (EOFError, TypeError) as e:   # cut short, or a code marshal does not know
        raise ValueError(f"a header that is not plain data ({type(e).__name__})") from None
    if type(header) is not dict:
        raise ValueError("a header must be a dict with `kind` and `msg_id` strings")
    _fields(header, data, prefix)   # the prefix is what the controller routed by: it wins
    if type(header.get("kind")) is not str or type(header.get("msg_id")) is not str:
        raise ValueError("a header must be a dict with `kind` and `msg_id` strings")
    return header


# marshal's type codes (with and without its FLAG_REF bit, 0x80) for the containers
# whose count precedes their items: tuple and list, which marshal allocates by that count
# before reading an item, then set and frozenset, which it grows item by item (a false
# count costs them nothing, so they are no reason to walk a header).
_PREALLOCATED = b"([\xa8\xdb"
_COUNTED = _PREALLOCATED + b"<>\xbc\xbe"
# The preallocated codes marked 1, every other byte 0 (for bytes.translate).
_COUNTED_MARKS = bytes(b in _PREALLOCATED for b in range(256))


def _large_count(data):
    """Whether a tuple's or list's code is followed by a count of 256 or more. Where a header
    has none, marshal can waste at most 255 pointers per container still open when the
    data runs out (and it stops nesting at a depth of 2,000): a few MB at worst. A match
    is often a float's or a string's bytes, and then ``_counts_fit`` walks the header to
    be sure; most headers (a request's `counts` is [1, 1]) never need the walk. One
    translate and a find per marked byte: a third of a regex's time on a header."""
    marks = data.translate(_COUNTED_MARKS)
    i = marks.find(1)
    while i >= 0:
        if data[i + 2:i + 5] != b"\0\0\0":
            return True
        i = marks.find(1, i + 1)
    return False


# How many bytes follow each other type code that may appear in plain data: a fixed
# size, or SIZE1 / SIZE4 (a string of that many bytes follows a 1- or 4-byte length).
# Codes absent here (code objects, the old text floats) are refused.
_SIZE1, _SIZE4 = -1, -4
_FOLLOWS = {**dict.fromkeys(b"0NFTS.{", 0), **dict.fromkeys(b"ir", 4), b"I"[0]: 8,
            b"g"[0]: 8, b"y"[0]: 16, **dict.fromkeys(b"zZ", _SIZE1),
            **dict.fromkeys(b"stuaA", _SIZE4)}
_LONG, _SMALL_TUPLE = b"l"[0], b")"[0]
_INT32 = struct.Struct("<i")


def _counts_fit(data):
    """Whether the item counts `data`'s containers claim add up to at most its length.

    Each item takes at least one byte, so a well-formed header always fits; one that
    fits makes marshal allocate at most a few pointers per byte it reads. marshal's
    values follow one another with no closing marks (but a dict's, a code of its own),
    so one pass over the type codes finds every count: no recursion, linear time."""
    n, i, budget = len(data), 0, len(data)
    follows, counted, unpack = _FOLLOWS, frozenset(_COUNTED), _INT32.unpack_from
    while i < n:
        code = data[i] & 0x7F
        i += 1
        size = follows.get(code)
        if size is None:
            if code in counted:
                if i + 4 > n:
                    return False
                budget -= unpack(data, i)[0] & 0xFFFFFFFF
                i += 4
            elif code == _SMALL_TUPLE and i < n:
                budget -= data[i]
                i += 1
            elif code == _LONG and i + 4 <= n:
                i += 4 + 2 * abs(unpack(data, i)[0])
            else:
                return False
            if budget < 0:
                return False
        elif size == _SIZE1:
            i += 1 + (data[i] if i < n else 0)
        elif size == _SIZE4:
            i += 4 + (unpack(data, i)[0] & 0xFFFFFFFF if i + 4 <= n else 0)
        else:
            i += size
    return i == n


# ---------------------------------------------------------------- signing

# An empty SHA-256 from OpenSSL, made at the first body_digest (hashlib is imported there,
# not at import: OpenSSL's binding is a third of `import minipar`). A copy of it is
# quicker than a new one, which looks the hash up in OpenSSL every time.
_sha256 = None


def body_digest(parts, raw=()):
    """SHA-256 of the parts; of a raw buffer (index in `raw`), only its length: see the
    module's docstring for why, and --curve where the data must not be altered. One update
    per part: joining them would copy a large pickle."""
    global _sha256
    if _sha256 is None:
        import hashlib

        _sha256 = hashlib.sha256()
    h = _sha256.copy()
    if raw:
        for i, p in enumerate(parts):
            h.update(b"%d:" % len(p) if i in raw else p)
    else:
        for p in parts:
            h.update(p)
    return h.hexdigest()


class Session:
    """Signs, verifies and (de)composes messages. One per process serves every socket's
    replay history: each header has a new msg_id, so signatures never repeat. A router's
    (the controller's) reads a task's header by its prefix alone: see route_header."""

    def __init__(self, key, max_message_size=MAX_MESSAGE_SIZE, router=False):
        import hashlib  # here, not at import: see body_digest
        import hmac

        self.key = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        self._compare = hmac.compare_digest   # constant time: a forger learns nothing
        # HMAC (RFC 2104) from the two padded-key hashes, copied per message: twice as
        # quick as hmac.digest, which looks the hash up in OpenSSL on every call
        block = (hashlib.sha256(self.key).digest() if len(self.key) > 64 else self.key)
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.session = new_id()
        self.max_message_size = max_message_size
        self._read = route_header if router else unpack_header
        self._seen = set()
        self._seen_order = collections.deque()
        self.dropped = collections.Counter()  # why messages were dropped, for queue_status/stats
        self._drop_lock = threading.Lock()    # an engine's two threads both count drops

    def sign(self, header_bytes):
        """HMAC-SHA256(key, header_bytes)."""
        inner, outer = self._inner.copy(), self._outer.copy()
        inner.update(header_bytes)
        outer.update(inner.digest())
        return outer.digest()

    def msg(self, kind, parts=(), parent=None, signed=True, **fields):
        """Build the frames of a new message (without routing ids). Returns (header, frames).
        Fields that are None are left out (readers use ``header.get``): a smaller header
        is quicker to sign, read and hold. Not `signed`: for a message that may go in a
        batch, signed as a whole (see pack); one sent alone goes through ``signed``."""
        header = {"msg_id": new_id(), "kind": kind, "session": self.session}
        if parent is not None:
            header["parent"] = parent
        for k, v in fields.items():
            if v is not None:
                header[k] = v
        return header, self.frames(header, parts, signed)

    def frames(self, header, parts=(), signed=True):
        """Frames for `header` and `parts`; the header is given a digest of the parts."""
        raw = [i for i, p in enumerate(parts) if type(p) is memoryview]  # serialize's buffers
        if raw:
            header["raw"] = raw
        header["body"] = body_digest(parts, raw) if parts else ""
        hb = pack_header(header)
        return [DELIM, self.sign(hb) if signed else b"", hb, *parts]

    def resign(self, header, parts):
        """Frames for a changed header over the same parts (the parts' digest is kept)."""
        hb = pack_header(header)
        return [DELIM, self.sign(hb), hb, *parts]

    def split(self, frames):
        """Split received frames into (routing ids, signature, header bytes, parts)."""
        frames = unpack(frames)
        for i, f in enumerate(frames):
            if f is DELIM or _bytes(f) == DELIM:   # unpack puts DELIM itself
                break
        else:
            raise ValueError("no delimiter frame")
        if len(frames) < i + 3:
            raise ValueError("message too short")
        return frames[:i], frames[i + 1], frames[i + 2], frames[i + 3:]

    def check(self, frames, replay=True):
        """Verify a received message. Returns (idents, header, parts) or raises ValueError.

        Only the header is verified here (cheap, what a router needs); a receiver that
        will unpickle the parts calls ``check_body`` as well. A refused message is counted
        in ``dropped`` under one of DROP_REASONS."""
        try:
            return self._check(frames, replay)
        except Exception as e:
            self.count_drop(drop_reason(e))
            raise

    def _check(self, frames, replay):
        size = message_size(frames)
        if size > self.max_message_size:
            raise ValueError(f"too large: {size} bytes, above max_message_size "
                             f"{self.max_message_size}")
        idents, sig, hb, parts = self.split(frames)
        sig, hb = _bytes(sig), _bytes(hb)
        if not self._compare(sig, self.sign(hb)):
            raise ValueError("bad signature")
        if replay:
            if sig in self._seen:
                raise ValueError("replayed signature")
            self._seen.add(sig)
            self._seen_order.append(sig)
            if len(self._seen_order) > REPLAY_HISTORY:
                self._seen.discard(self._seen_order.popleft())
        return idents, self._header(hb), parts

    def _header(self, hb):
        """The header of verified bytes (as the router or any other side reads them). A
        task's request whose prefix reads but whose rest does not (only a holder of the key
        can sign one) comes as its prefix's fields and `unreadable`, the reason: its engine
        answers it with that error (check_body), so it still ends once."""
        try:
            return self._read(hb)
        except ValueError as e:
            try:
                fields = _fields({}, hb, _prefix(hb))
            except ValueError:
                raise e from None
            if fields.get("kind") not in _TASKS or "msg_id" not in fields:
                raise
            self.count_drop("bad header")
            return dict(fields, unreadable=str(e))

    def pack(self, wires):
        """Messages (lists of frames) for `wires`, each a message's frames from the
        delimiter, in order: consecutive ones together as a batch of at most BATCH_BYTES
        (or half of max_message_size) under one signature, so a burst to one peer costs
        one send, receive, signature and wake-up. Each keeps its own header and `body`
        digest. One alone goes as it is, signed here if it was built unsigned."""
        limit = min(BATCH_BYTES, self.max_message_size // 2)
        i = 0
        while i < len(wires):
            # sum(map(len, ...)): message_size inline, as this runs for every item
            j, size = i + 1, sum(map(len, wires[i]))
            while j < len(wires):
                size += sum(map(len, wires[j]))
                if size > limit:
                    break
                j += 1
            batch, i = wires[i:j], j
            if len(batch) == 1:
                yield self.signed(batch[0])
            else:
                header = {"msg_id": new_id(), "kind": BATCH, "session": self.session,
                          "items": [_bytes(w[2]) for w in batch],
                          "nparts": [len(w) - 3 for w in batch]}
                hb = pack_header(header)
                yield [DELIM, self.sign(hb), hb, *[p for w in batch for p in w[3:]]]

    def signed(self, wire):
        """`wire`, signed if it has no signature (an item of a batch, or built unsigned)."""
        return wire if wire[1] else [DELIM, self.sign(_bytes(wire[2])), *wire[2:]]

    def unbatch(self, header, parts):
        """The (header, parts) of each message a checked message carries: a batch's items
        (see pack), else the message itself. Raises ValueError (counted) if malformed."""
        if header["kind"] != BATCH:
            return [(header, parts)]
        hbs, counts = header.get("items"), header.get("nparts")
        try:
            if type(hbs) is not list or type(counts) is not list or len(hbs) != len(counts) \
                    or any(type(n) is not int or n < 0 for n in counts) \
                    or sum(counts) != len(parts):
                raise ValueError("its `items` and `nparts` do not match its parts")
            out, i = [], 0
            for hb, n in zip(hbs, counts):
                if type(hb) is not bytes:
                    raise ValueError("an item is not header bytes")
                out.append((self._header(hb), parts[i:i + n]))
                i += n
            return out
        except (ValueError, TypeError, EOFError) as e:
            self.count_drop("bad header")
            raise ValueError(f"a malformed batch: {e}") from None

    def count_drop(self, reason):
        with self._drop_lock:
            self.dropped[reason] += 1

    def check_body(self, header, parts):
        if "unreadable" in header:
            raise ValueError(f"its header could not be read past its routing prefix "
                             f"({header['unreadable']}): a client that packs headers wrongly")
        if header.get("body", "") != (body_digest(parts, header.get("raw", ())) if parts else ""):
            self.count_drop("bad digest")
            raise ValueError("message parts do not match the signed digest")


# ---------------------------------------------------------------- refusals and limits

# Why a receiver dropped a message: a fixed set, so counters stay small whatever arrives.
DROP_REASONS = ("malformed", "too large", "bad signature", "replayed", "bad header", "bad digest")


def drop_reason(exc):
    """The DROP_REASONS entry for an exception raised by ``Session.check``."""
    text = str(exc)
    for reason in ("too large", "bad signature", "replayed"):
        if text.startswith(reason):
            return reason
    if isinstance(exc, ValueError) and ("delimiter" in text or "too short" in text):
        return "malformed"
    return "bad header"   # the signature was good but the header is not plain data


def message_size(frames):
    return sum(map(len, frames))


def check_size(frames, limit, what):
    """Raise SerializationError if a message we are about to send is above `limit`:
    better a clear error at the sender than a peer that drops it (or is disconnected)."""
    if (size := message_size(frames)) > limit:
        raise SerializationError(
            f"{what} is {size} bytes, above the cluster's max_message_size of {limit}: send "
            "less per message (split the data, or scatter it), or start the controller "
            "with a larger --max-message-size")


def _bytes(frame):
    """`frame` as bytes: itself if it is (a packed message's frames are, see unpack), else
    copied. The test first: a failed hasattr costs twice the call, raising inside."""
    if type(frame) is bytes:
        return frame
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def refusal(idents, reason):
    """The unsigned notice sent back to a peer whose message failed its check."""
    return [*idents, DELIM, REFUSED, reason.encode()]


def is_refusal(frames):
    return len(frames) == 3 and _bytes(frames[1]) == REFUSED


# ---------------------------------------------------------------- sockets

_MORE = int(zmq.SNDMORE)
# The backend's send, under pyzmq's Python `Socket.send` (which only adds the draft sockets'
# routing_id and group): 0.3 µs a frame against 0.8, two or three frames per message.
_send_frame = zmq.backend.Socket.send


def send(sock, wire, idents=()):
    """Send a message: routing `idents`, then `wire` (its frames from the delimiter).

    A message of at most PACK_MAX bytes leaves as one frame: PACKED, the count and
    lengths of the frames after the delimiter, then their bytes (``recv`` gives the
    frames back). Larger ones go frame by frame, buffers without a copy. Not pyzmq's
    ``send_multipart``, whose per-frame flag arithmetic is most of a small send."""
    s = _send_frame
    for i in idents:
        s(sock, i, _MORE, copy=False)
    if message_size(wire) <= PACK_MAX:
        frames = wire[1:]
        lengths = [len(f) for f in frames]
        s(sock, b"".join([PACKED, struct.pack(f"<{len(lengths) + 1}I", len(lengths),
                                              *lengths), *frames]), 0, copy=False)
        return
    with sigint_deferred():   # frames sent with _MORE wait for the rest: all or none
        for f in wire[:-1]:
            s(sock, f, _MORE, copy=False)
        s(sock, wire[-1], 0, copy=False)


_deferring = None   # the main thread's sigint_deferred block: [(signum, frame)] once one came


@contextlib.contextmanager
def sigint_deferred():
    """A block that a Ctrl-C does not cut short: in the main thread, a SIGINT coming in it
    is held and its handler (KeyboardInterrupt, by default) runs as the block ends. For
    sends that must be whole: a message half sent (a multipart message's frames, a client's
    batch of held requests) would have the socket's next message glued onto its rest, and
    both lost, or requests recorded as sent that never left. Blocks nest; in another thread,
    or where SIGINT's handler is not Python's, it does nothing. It costs two sigaction calls
    (`_signal`'s: `signal`'s enum wrappers raise inside, 3.3 µs a getsignal, not 0.04), so
    it guards batches and large sends, not each frame."""
    global _deferring
    handler = _signal.getsignal(signal.SIGINT)   # SIG_DFL, SIG_IGN as ints: not callable
    if (_deferring is not None or not callable(handler)
            or threading.get_ident() != threading.main_thread().ident):
        yield
        return
    came = []
    _signal.signal(signal.SIGINT, lambda *signum_frame: came.append(signum_frame))
    try:   # set in it, cleared before the handler is back: never left set by a Ctrl-C
        _deferring = came
        yield
    finally:
        _deferring = None
        _signal.signal(signal.SIGINT, handler)
        if came:
            handler(*came[0])


def unpack(frames):
    """`frames` as sent (routing ids, delimiter, signature, header, parts) if their last
    frame is a packed message (see send), else as they are. Packed means at most one
    routing id before it (an unpacked message has at least three frames). One that does
    not add up is left as it is, and fails its check as having no delimiter."""
    if len(frames) > 2:
        return frames
    data = _bytes(frames[-1])
    if not data.startswith(PACKED):
        return frames
    start = len(PACKED) + 4
    try:
        (n,) = _COUNT.unpack_from(data, len(PACKED))
        if start + 4 * n > len(data):
            return frames
        lengths = struct.unpack_from(f"<{n}I", data, start)
    except struct.error:
        return frames
    i = start + 4 * n
    if i + sum(lengths) != len(data):
        return frames
    out = [*frames[:-1], DELIM]
    for length in lengths:
        out.append(data[i:i + length])
        i += length
    return out


def drain(sock, limit=256):
    """The messages waiting on `sock`, at most `limit`: one poll per burst, not per message,
    yet a busy socket cannot starve the others."""
    for _ in range(limit):
        try:
            yield recv(sock, zmq.NOBLOCK)
        except zmq.Again:
            return


def keep(wire, small=1 << 16):
    """A message's frames from the delimiter (`wire`), to hold after handling it: the one
    DELIM, and small frames copied (a zero-copy frame of a small message pins the whole
    8 KB receive batch libzmq decoded it from). A tuple, which the garbage collector stops
    tracking once it holds only bytes (as lists: 955 ms of GC for 90,000 tasks, not 584).
    A tuple is taken as kept already (a batch's items: see Controller._items)."""
    if type(wire) is tuple:
        return wire
    return (DELIM, *[f.bytes if type(f) is zmq.Frame and len(f) < small else f
                     for f in wire[1:]])


def recv(sock, flags=0):
    """``recv_multipart(flags, copy=False)``, likewise; raises zmq.Again if nothing waits."""
    f = sock.recv(flags, copy=False)
    frames = [f]
    while f.more:
        f = sock.recv(0, copy=False)
        frames.append(f)
    return unpack(frames)


# ---------------------------------------------------------------- serialization

class _LargeBytes:
    """Wraps a large bytes object so it pickles out of band (pickle keeps bytes in band)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return bytes, (pickle.PickleBuffer(self.data),)


def _wrap_large_bytes(obj, depth=2):
    """`obj` with large bytes near the top (apply's args, push's dict) wrapped, and numpy arrays
    neither C- nor F-ordered (a[:, ::2]) in C order: numpy pickles those in band, copied twice."""
    t = type(obj)
    if t is bytes:
        return _LargeBytes(obj) if len(obj) >= BUFFER_THRESHOLD else obj
    if t.__name__ == "ndarray" and t.__module__ == "numpy" and not obj.flags.forc and (
            obj.nbytes >= BUFFER_THRESHOLD and not obj.dtype.hasobject):
        return obj.copy()
    if depth and (t is tuple or t is list or t is dict) and 0 < len(obj) <= 32:
        if t is dict:
            return {k: _wrap_large_bytes(v, depth - 1) for k, v in obj.items()}
        return t([_wrap_large_bytes(o, depth - 1) for o in obj])
    return obj


def _dumps(obj, buffers, by_value):
    def keep(buf):
        raw = buf.raw()
        if raw.nbytes >= BUFFER_THRESHOLD:
            buffers.append(raw)
            return False
        return True  # small: in band

    obj = _wrap_large_bytes(obj)
    if getattr(obj, "__module__", None) == "__main__":
        by_value = True  # a function or class of the client's script: pickle would fail
    if not by_value or _by_value is None:
        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=keep)
            # A reference into __main__ would not resolve on an engine, nor one into a module
            # the user asked to send by value (cloudpickle.register_pickle_by_value, which
            # is how to send a module the engines lack): send by value.
            registered = cloudpickle.list_registry_pickle_by_value()   # usually empty:
            if b"__main__" not in data and not (registered and any(   # skip the generator
                    m.encode() in data for m in registered)):
                return data
        except Exception:
            if _by_value is None:
                raise
        if _by_value is None:
            raise pickle.PicklingError(
                "it refers to __main__, which engines cannot import, and use_pickle() sends "
                "nothing by value: define it in a module the engines import, or use_cloudpickle()")
        del buffers[:]
    if _by_value is not cloudpickle:   # dill: buffers in band
        return _by_value.dumps(obj, protocol=5)
    with io.BytesIO() as f:
        _Pickler(f, protocol=5, buffer_callback=keep).dump(obj)
        return f.getvalue()


def _code_reduce(code, reduce=cloudpickle.Pickler.dispatch_table[types.CodeType]):
    make, args = reduce(code)   # cloudpickle 3.1 names every file '<dynamic-code>'
    return make, tuple(code.co_filename if isinstance(a, str) and a == "<dynamic-code>"
                       else a for a in args)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's, but a function sent by value keeps its file (a remote traceback names
    the client's file and line, as ipyparallel's, not '<dynamic-code>'), and a memoryview
    comes back a memoryview of its bytes (uncopied if large) as ipyparallel's, not bytes."""
    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce, memoryview: lambda m: (
        memoryview, (pickle.PickleBuffer(m) if m.contiguous else m.tobytes(),))},
                                          cloudpickle.Pickler.dispatch_table)


_by_value = cloudpickle   # what pickles what must travel by value: see use_serializer


def use_serializer(name):
    """How this process pickles what must travel by value (functions of __main__,
    lambdas, closures, data that refers to them): 'cloudpickle' (the default), 'dill'
    (installed here and on the engines), or 'pickle': nothing by value, so a function
    travels by reference (module and name, which the engines import) or is refused.
    The views' and Client's use_cloudpickle() etc. set it here and on their engines."""
    global _by_value
    if name == "dill":
        try:
            import dill
        except ImportError:
            raise ImportError("use_dill() needs dill, which is not installed here: "
                              "pip install dill (on the engines' hosts too)") from None
        _by_value = dill
    elif name in ("cloudpickle", "pickle"):
        _by_value = cloudpickle if name == "cloudpickle" else None
    else:
        raise ValueError(f"unknown serializer {name!r}: use 'cloudpickle', 'dill' or 'pickle'")
    _function_cache.clear()   # pickles made the other way


# ipyparallel's module-level use_*(): the serializer of this process only (a view's or
# the Client's use_*() sets it on their engines too)
def use_cloudpickle():
    """Send functions and what refers to __main__ by value with cloudpickle (the default)."""
    use_serializer("cloudpickle")


def use_dill():
    """Send by value with dill (installed here and on the engines)."""
    use_serializer("dill")


def use_pickle():
    """Send nothing by value: functions by reference only (__main__'s are refused)."""
    use_serializer("pickle")


# Version skew: engines report their Python and cloudpickle versions when they register; a
# client warns about one that differs from its own, and names it when something fails to
# unpickle (by-value functions do not unpickle across Python minors, nor always cloudpickles).

def versions():
    """(Python version as [major, minor, micro], cloudpickle's version) of this process."""
    return list(sys.version_info[:3]), cloudpickle.__version__


def version_skew(engine_id, engines, prefix=""):
    """What differs between engine `engine_id` (its registration info in `engines`) and
    this process ("" if nothing), with `prefix` before it."""
    info = engines.get(engine_id) or {}
    python, theirs = info.get("python"), info.get("cloudpickle")
    same_python = not python or list(python[:2]) == list(sys.version_info[:2])
    if same_python and (not theirs or theirs == cloudpickle.__version__):
        return ""
    return (f"{prefix}engine {engine_id} runs Python {'.'.join(map(str, python or ['?']))} "
            f"with cloudpickle {theirs}, but this client runs Python "
            f"{'.'.join(map(str, sys.version_info[:3]))} with cloudpickle "
            f"{cloudpickle.__version__}: functions sent by value (lambdas, closures, "
            "functions defined in __main__) may not unpickle across them; run the same "
            "Python minor version and cloudpickle everywhere")


def serialize(obj, by_value=False):
    """Pickle `obj` into a list of frames: the pickle, then its out-of-band buffers."""
    buffers = []
    try:   # SystemExit too: a __reduce__ calling sys.exit must not end the engine pickling it
        data = _dumps(obj, buffers, by_value)
    except (Exception, SystemExit) as e:
        raise SerializationError(
            f"could not serialize {_describe(obj)}: {type(e).__name__}: {e}; only picklable "
            "objects (or functions cloudpickle can send) travel between client and engines"
        ) from e
    return [data, *buffers]


def serialize_from_task(obj):
    """serialize() for what a task made (an engine sends its result, its published data):
    pickling runs the task's code (a __reduce__, a __repr__ for the error), and whatever
    that raises, KeyboardInterrupt too, is a SerializationError failing the task, never an
    end of the engine. (Elsewhere a KeyboardInterrupt is its user's Ctrl-C.)"""
    try:
        return serialize(obj)
    except SerializationError:
        raise
    except BaseException as e:
        raise SerializationError(f"could not serialize a {type(obj).__name__} object: "
                                 f"pickling it raised {type(e).__name__}") from None


_function_cache = weakref.WeakKeyDictionary()   # function -> (code, defaults, globals used, frames)


def serialize_function(f):
    """``serialize(f)`` for a function, cached while what it pickles cannot change.

    cloudpickle sends a script's function by value, with the globals it uses; that is
    most of a small task's cost. The pickle is reused while the function has no closure,
    every global it names is a module or absent (modules travel by reference), and its
    code, defaults and those globals are the same objects as when it was cached."""
    if not isinstance(f, types.FunctionType):
        if not callable(f) and type(f) is not Reference:   # a Reference: the engine's function
            raise TypeError(f"the function to run must be callable, not {type(f).__name__} "
                            f"{f!r:.40}: pass the function itself, then its arguments")
        return serialize(f)
    g = f.__globals__
    hit = _function_cache.get(f)
    if hit is not None and hit[0] is f.__code__ and hit[1] is f.__defaults__ and all(
            g.get(n) is v for n, v in hit[2]):
        return hit[3]
    frames = serialize(f)
    # only a script's functions, sent by value: one of a module is a short pickle by name,
    # which cloudpickle.register_pickle_by_value may turn into one by value later
    if f.__module__ == "__main__" and _stateless(f):
        used = tuple((n, g.get(n)) for n in f.__code__.co_names)
        _function_cache[f] = (f.__code__, f.__defaults__, used, frames)
    return frames


def _stateless(f):
    """Whether function `f` carries nothing that a call could change or that changes
    without its code: no closure, no keyword-only defaults, no global but modules (or
    names it does not have)."""
    g = f.__globals__
    return f.__closure__ is None and not f.__kwdefaults__ and all(
        v is None or isinstance(v, types.ModuleType) for v in map(g.get, f.__code__.co_names))


def deserialize(frames):
    """Inverse of serialize: frames are bytes or zmq.Frame (buffers used without copy)."""
    buffers = [f.buffer if hasattr(f, "buffer") else f for f in frames[1:]]
    imported = len(sys.modules)
    try:
        return pickle.loads(_bytes(frames[0]), buffers=buffers)
    except Exception:
        raise
    except BaseException:
        # an interrupt (Ctrl-C, an engine's abort or time_limit) may cut an import short; it
        # lands in the main thread only (in another, new modules may be other threads')
        if threading.current_thread() is threading.main_thread():
            _forget_imports_since(imported)
        raise


def _forget_imports_since(n):
    """Drop the modules imported since sys.modules (a dict: in import order) held `n`. An
    import that an interrupt cut short (unpickling a task's function imports its module)
    leaves the submodules that had finished there, and the package imported again lacks
    them (NameError: name 'coroutines' is not defined, for asyncio): on an engine, every
    later request that imports it failed to unpickle. Imported afresh, they run again."""
    for name in list(sys.modules)[n:]:
        sys.modules.pop(name, None)


def deserialize_from_task(frames):
    """deserialize() for what a task made (a client reads its result, its published data):
    unpickling runs the task's code (a __reduce__'s callable), and a SystemExit or
    KeyboardInterrupt it raises (never a signal's: a client unpickles in its I/O thread) is
    a SerializationError too, never the end of the thread all its requests wait on."""
    try:
        return deserialize(frames)
    except Exception:
        raise
    except BaseException as e:
        raise SerializationError(f"unpickling it raised {type(e).__name__}") from None


def deserialize_many(frames, counts):
    starts = itertools.accumulate(counts, initial=0)
    return [deserialize(frames[i:i + n]) for i, n in zip(starts, counts)]


_loaded_functions = {}   # pickle -> function: see deserialize_function
LOADED_FUNCTIONS = 256   # at most this many kept; beyond, they are forgotten and made anew
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


def deserialize_function(frames):
    """``deserialize(frames)`` for a function, the one unpickled before reused when the
    same pickle comes again and nothing in it can change between calls: no closure, no
    attributes, constant defaults, and no global but modules. Unpickling a function by
    value is most of a small task's cost on an engine; one with state (a list default,
    a captured dict) is made anew for each call."""
    if len(frames) != 1:
        return deserialize(frames)
    data = _bytes(frames[0])
    f = _loaded_functions.get(data)
    if f is None:
        f = deserialize([data])
        if type(f) is types.FunctionType and _stateless(f) and not f.__dict__ \
                and all(type(d) in _CONSTANT_TYPES for d in f.__defaults__ or ()):
            if len(_loaded_functions) >= LOADED_FUNCTIONS:
                _loaded_functions.clear()
            _loaded_functions[data] = f
    return f


# What names an object in an error: reprlib bounds the depth and size of what it shows,
# and shows an object whose __repr__ raises (or recurses too deep) by its type and address:
# a deep linked structure that cannot be pickled must not end the engine that names it.
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 77


def _describe(obj):
    r = _repr.repr(obj)
    return r if len(r) < 80 else r[:77] + "..."


# ---------------------------------------------------------------- connection files

CLIENT_PORTS = ("client", "notify")        # what a client connects to
ENGINE_PORTS = ("engine", "ping", "pong")  # and an engine
CLIENT_FILE = "minipar-client.json"
ENGINE_FILE = "minipar-engine.json"


def log_level(text):
    """argparse type of each entry point's --log-level, whose default ($MINIPAR_LOG_LEVEL)
    argparse checks too: a name that is no level, given or from the environment, is a
    usage error naming the levels, where logging.basicConfig ended in a traceback."""
    import argparse   # only the entry points, which have both already, parse options
    import logging
    if not isinstance(logging.getLevelName(text.upper()), int):   # WARN, in any case, too
        env = (" ($MINIPAR_LOG_LEVEL is set to it: unset it or fix it)"
               if text == os.environ.get("MINIPAR_LOG_LEVEL") else "")
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level{env}: give DEBUG, "
                                         "INFO, WARNING, ERROR or CRITICAL")
    return text.upper()


def seconds(text, positive=False):
    """argparse type of an option of seconds: finite, 0 or more (`positive`: more than 0),
    else a usage error saying so (NaN, infinity, -1 ended in a traceback or a wait for ever)."""
    import argparse   # as log_level's
    with contextlib.suppress(ValueError):
        if math.isfinite(value := float(text)) and value >= 0 and (value or not positive):
            return value
    at_least = "more than 0" if positive else "0 or more"
    raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (finite, {at_least})")


def base_dir():   # absolute: a relative $MINIPAR_DIR named no folder for an engine elsewhere
    return os.path.abspath(os.path.expandvars(os.path.expanduser(
        os.environ.get("MINIPAR_DIR") or os.path.join("~", ".minipar"))))


def profile_dir(profile=None, profile_dir=None, ipython_dir=None):
    """The profile folder: `profile_dir` (``~`` and $VARS expanded, as ipyparallel's),
    else profile_NAME in `ipython_dir` (a Client's, as ipyparallel's) or base_dir(). A
    ValueError says what to pass for a name that is a path (--profile /data/run1 meant as
    --profile-dir); a profile's security folder as `profile_dir` means its profile."""
    if profile_dir:
        pdir = os.path.abspath(os.path.expandvars(os.path.expanduser(profile_dir)))
        if os.path.basename(pdir) == "security" and os.path.isfile(os.path.join(pdir, CLIENT_FILE)):
            warnings.warn(f"{pdir} is a profile's security folder: its profile folder, "
                          f"{os.path.dirname(pdir)}, is used (pass that)", stacklevel=2)
            pdir = os.path.dirname(pdir)
        return pdir
    if profile and (os.sep in profile or profile in (".", "..")):
        raise ValueError(f"profile {profile!r} is a path, not a name: pass a folder as "
                         f"--profile-dir (profile_dir=), or a name for {base_dir()}"
                         f"{os.sep}profile_NAME as --profile (profile=)")
    base = os.path.expandvars(os.path.expanduser(ipython_dir)) if ipython_dir else base_dir()
    return os.path.join(base, "profile_" + (profile or "default"))


def profile_name(text):
    """argparse type of each entry point's --profile: a path is a usage error saying to
    use --profile-dir (see profile_dir), before anything is started or written."""
    import argparse   # only the entry points, which have it already, parse options

    try:
        profile_dir(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def security_dir(pdir):
    d = os.path.join(pdir, "security")
    with making_profile_folder(d, "the connection files"):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
    return d


def write_connection_file(path, info):
    """Write `info` as JSON readable by its owner only (created 0600, never widened)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)


def wait_for_file(path, wait_s, say):
    """`path`, once it exists and is not stale, or after `wait_s` seconds (None: no bound),
    said once with `say` (a logging method): a controller started along with its reader
    (`controller & engine`) may not have written its connection file yet, and one started
    after a controller was killed (kill -9, a crash) has not yet replaced the file that one
    left, whose pid is gone. The reader says which it waits for."""
    if missing := _missing_or_stale(path):
        bound = "" if wait_s is None else f" up to {wait_s:g} s"
        say("%s: waiting%s for a controller to write it", missing, bound)
        deadline = math.inf if wait_s is None else time.monotonic() + wait_s
        while _missing_or_stale(path) and time.monotonic() < deadline:
            time.sleep(0.1)
    return path


def replacement(path, info):
    """What connection file `path` holds if it names another controller than `info` does
    (other ports or key: one started without --reuse), else None (the same, or a file
    that cannot be read, being replaced say)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError), open(path) as f:
        new = json.load(f)
        if (new["key"], new["ports"]) != (info["key"], info["ports"]):
            return new
    return None


def _missing_or_stale(path):
    """What keeps `path` from being a live controller's connection file, as words for a
    log line ("" when nothing does, or when only reading it can tell)."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return f"no connection file at {path} yet"
    except (OSError, ValueError):   # read_connection_file names what is wrong with it
        return ""
    pid = _dead_controller(info)
    return f"connection file {path} is stale (controller pid {pid} is not running)" if pid else ""


def _dead_controller(info):
    """The pid of the controller that wrote `info` if it ran on this host and has ended,
    else None (a pid of another host cannot be checked from here)."""
    if type(info) is dict and type(info.get("pid")) is int and info.get("host"):
        import socket   # here, not at import: `import minipar` stays quick

        if info["host"] == socket.gethostname() and not pid_alive(info["pid"]):
            return info["pid"]
    return None


def live_controller(profile_dir):
    """The connection-file info of the controller that holds `profile_dir`, or None.

    None when there is no readable file, when it was written on another host (its pid
    cannot be checked from here), or when it is stale: its pid is gone, or now belongs to
    a program that is not a controller (pids are reused).
    """
    import socket   # here, not at import: `import minipar` stays quick

    path = os.path.join(profile_dir, "security", CLIENT_FILE)
    try:
        info = read_connection_file(path)  # raises for a missing or stale file
    except ConnectionFileError:
        return None
    pid = info.get("pid")
    mine = info.get("host") == socket.gethostname() and isinstance(pid, int)
    return info if mine and pid != os.getpid() and _runs_controller(pid) else None


def _runs_controller(pid):
    """Whether `pid` runs a controller (``python -m <pkg>.controller`` or a
    ``*-controller`` script), not a program that got the pid after the controller died."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return True  # no /proc (macOS): the pid is all there is to go on
    program = itertools.takewhile(lambda a: not a.startswith("--"), argv)  # before options
    return any(a.rpartition(".")[2] == "controller" or a.endswith("-controller")
               for a in program)


def read_connection_file(path, ports=CLIENT_PORTS):
    """Read a connection file, with an error that says how to get one; it must name the
    `ports` its reader connects to (a client's: CLIENT_PORTS; an engine's: ENGINE_PORTS).
    One that group or others may read or write is still used, with a RuntimeWarning."""
    wanted = ENGINE_FILE if ports == ENGINE_PORTS else CLIENT_FILE   # named when mixed up
    try:
        with open(path) as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777   # of the file read, not a later one
            info = json.load(f)
    except FileNotFoundError:
        if "://" in path:   # IPython.parallel's Client("tcp://host:port"): a url has no key
            raise ConnectionFileError(
                f"{path} is a url, not a connection file: pass the controller's {wanted} "
                "(it holds the key as well as the address; ipyparallel refuses a url too), "
                "or its profile folder as profile_dir= (--profile-dir)") from None
        ours = os.path.join(os.path.dirname(path), wanted)   # ipyparallel's name, beside ours
        if os.path.basename(path).startswith("ipcontroller-") and os.path.isfile(ours):
            raise ConnectionFileError(
                f"no connection file at {path}: a minipar controller writes "
                f"{wanted}, not ipyparallel's ipcontroller-*.json; pass {ours}") from None
        # a Cluster of a script keeps its files in a folder of its own, not in a profile's
        raise ConnectionFileError(
            f"no connection file at {path}: start a controller with `{_start_command(path)}`"
            f", or pass the file's path or profile folder (`python -m {__package__}.launcher "
            "list` names those of the running clusters)") from None
    except IsADirectoryError:   # a profile folder, or its security folder
        inside = [os.path.join(path, "security", wanted), os.path.join(path, wanted)]
        found = [f for f in inside if os.path.isfile(f)]
        raise ConnectionFileError(
            f"{path} is a folder, not a connection file: pass the file "
            f"({found[0] if found else inside[0]}), or a profile folder as profile_dir= "
            "(--profile-dir)") from None
    except PermissionError as e:   # 0600, in a 0700 folder: it holds the cluster's key
        raise ConnectionFileError(
            f"cannot read connection file {path}: {e.strerror}; a controller makes it readable "
            "by its own user only (it holds the key that runs code on the engines): run this "
            "as the user who started the controller, or have them copy the file to you "
            "(keeping it private: chmod 600)") from None
    except OSError as e:
        raise ConnectionFileError(f"cannot read connection file {path}: {e.strerror}") from None
    except ValueError as e:   # cut short (a full disk, a copy interrupted), or not JSON
        raise ConnectionFileError(_not_written_by_a_controller(
            path, f"is not valid JSON ({e})")) from None
    if _dead_controller(info):
        raise ConnectionFileError(  # --reuse: without it, the engines waiting for it exit
            f"connection file {path} is stale: controller pid {info['pid']} is not running; "
            f"start a controller with `{_start_command(path, info.get('reuse'))}`" + (
                " (--reuse, as it ran: the engines waiting for it keep its ports and key; "
                "one started without it has new ones, and they exit)" if info.get("reuse")
                else ""))
    if type(info) is dict and "cluster" in info and "key" not in info:
        # a Cluster's own file, which lies beside the connection files: an easy mix-up
        raise ConnectionFileError(
            f"{path} is a Cluster's file (for Cluster.from_file and python -m "
            f"{__package__}.launcher), not a connection file: use "
            f"{os.path.join(os.path.dirname(path), wanted)}")
    problem = _connection_problem(info, ports)
    if problem:
        raise ConnectionFileError(_not_written_by_a_controller(path, problem))
    if mode & 0o077:   # copied without its mode, say: a controller writes it 0600
        warnings.warn(f"connection file {path} is readable or writable by group or others "
                      f"(mode {mode:04o}), yet it holds the key that signs messages: whoever "
                      f"reads it can run code on the engines; `chmod 600 {path}`",
                      RuntimeWarning, stacklevel=2)
    return info


def _not_written_by_a_controller(path, problem):
    return (f"connection file {path} {problem}: it was not written by a minipar controller, "
            f"or was changed since; start one with `{_start_command(path)}` to write it again")


def _start_command(path, reuse=False):
    """The command that starts a controller writing connection file `path`, with the
    profile that names its folder (none for the default one) and --reuse if `reuse`."""
    import shlex   # here, not at import: only an error message needs it

    security = os.path.dirname(os.path.abspath(path))
    pdir, base = os.path.dirname(security), os.path.abspath(base_dir())
    if os.path.basename(security) != "security" or pdir == os.path.join(base, "profile_default"):
        where = ""   # the default profile, or a file copied out of any profile
    elif os.path.dirname(pdir) == base and os.path.basename(pdir).startswith("profile_"):
        where = f" --profile {shlex.quote(os.path.basename(pdir)[len('profile_'):])}"
    else:
        where = f" --profile-dir {shlex.quote(pdir)}"
    return f"python -m {__package__}.controller{where}{' --reuse' if reuse else ''}"


def _connection_problem(info, needed):
    """What is wrong with a connection file's contents (None: nothing)."""
    if type(info) is not dict:
        return "is not a JSON object"
    missing = {"key", "ports", "location"} - set(info)
    if missing:
        return f"lacks {sorted(missing)}"
    try:
        if not bytes.fromhex(info["key"]):
            raise ValueError
    except (TypeError, ValueError):
        return "has no valid `key` (a hex string)"
    ports = info["ports"]
    bad = [n for n in (needed if type(ports) is not dict
                       else [*needed, *(n for n in ports if n not in needed)])
           if type(ports) is not dict or type(ports.get(n)) is not int
           or not 0 < ports[n] < 65536]
    if bad:
        return f"has no valid port for {', '.join(bad)} in `ports`"
    if not isinstance(info["location"], str) or not info["location"]:
        return "has no valid `location` (the controller's address)"
    if info.get("transport", "tcp") != "tcp":
        return f"has `transport` {info['transport']!r}: a controller listens on tcp only"
    if (scheme := info.get("signature_scheme", SIGNATURE_SCHEME)) != SIGNATURE_SCHEME:
        return f"has `signature_scheme` {scheme!r}: minipar signs with {SIGNATURE_SCHEME} only"
    return None


def in_foreground():
    """Whether this process's group is its terminal's foreground one, which a Ctrl-C
    typed there reaches. False with no controlling terminal (opening /dev/tty fails)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        finally:
            os.close(fd)
    except OSError:
        return False


def proc_stat(pid, field):
    """Field `field` of /proc/PID/stat after the command name (Linux), or None: 1 is the
    parent's pid, 19 the start time in clock ticks (it tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[field])
    except (OSError, IndexError, ValueError):
        return None


def _pids():
    """Every pid of this host's /proc (Linux; elsewhere none are known)."""
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def descendants(pids):
    """Every living descendant of `pids`, never this process (a `launcher stop` that a
    controller whose owner is gone starts is its child while it stops it)."""
    children = {}
    for pid in _pids():
        if (ppid := proc_stat(pid, 1)) is not None and pid != os.getpid():
            children.setdefault(ppid, []).append(pid)
    found = list(pids)
    for pid in found:   # the list grows as it is read: children's children are looked up too
        found.extend(children.get(pid, ()))
    return found[len(pids):]


def left_in_session(leader, start_time):
    """The processes other than `leader` in the session it leads (a LocalProcessLauncher's
    process leads its own): what it forked and left, a task's child that outlived its engine.
    None once the pid is another's (a pid is not reused while a session holds it), nor from
    this process's own session (a task stopping its cluster)."""
    if not leader or os.getsid(0) == leader or pid_alive(leader) \
            and not same_process(leader, start_time):
        return []
    return [p for p in _pids() if p != leader and proc_stat(p, 3) == leader
            and (proc_stat(p, 19) or 0) >= (start_time or 0)]   # started since it


def same_process(pid, start_time):
    """Whether `pid` is still the process that started at `start_time` (proc_stat's 19;
    None: any process with that pid)."""
    return bool(pid) and pid_alive(pid) and (
        start_time is None or proc_stat(pid, 19) in (None, start_time))


def pid_namespace():
    """This process's pid namespace (Linux; None elsewhere): pids of processes in
    another one (a container's) mean nothing here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_key(pid):
    """Process `pid` of this host named so that a process elsewhere (a batch job, an ssh
    host, a container) can tell whether the pid is one it can see: 'PID/START/HOST/PIDNS',
    START being its start time (proc_stat's 19)."""
    import socket   # here, not at import: `import minipar` stays quick
    start = proc_stat(pid, 19)
    return f"{pid}/{'' if start is None else start}/{socket.gethostname()}/{pid_namespace() or ''}"


def local_process(key):
    """(pid, start time) of the process `key` names (process_key's, or a bare pid: one of
    this host, its start time read now), or None where it runs on another host or in
    another pid namespace: its pid means nothing here, or another process."""
    import socket
    parts = key.split("/", 3)
    try:
        pid = int(parts[0])
        if len(parts) == 1:
            return pid, proc_stat(pid, 19)
        _, start, host, pidns = parts
        here = (host, pidns) == (socket.gethostname(), pid_namespace() or "")
        return (pid, int(start) if start else None) if here else None
    except ValueError:
        raise ValueError(f"{key!r} names no process: give a pid, or PID/START/HOST/PIDNS "
                         "(protocol.process_key)") from None


def pid_alive(pid):
    """True while `pid` runs (a zombie counts as gone: it only awaits its parent's wait)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def url(info, name):
    return f"{info.get('transport', 'tcp')}://{info['location']}:{info['ports'][name]}"


# ---------------------------------------------------------------- CurveZMQ

def connect(sock, info, name):
    """Connect `sock` to the controller's socket `name`, encrypted with CurveZMQ when the
    controller asks for it (started with --curve: its files hold `curve_serverkey`).

    Each socket gets a fresh key pair of its own: the controller does not authenticate
    Curve keys (the cluster key does that, in every message's signature), so Curve
    only makes the traffic unreadable and untamperable on an untrusted network."""
    server_key = info.get("curve_serverkey")
    if server_key:
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(url(info, name))
    return sock


def curve_keys(path, reuse, warn):
    """The controller's CurveZMQ key pair, kept in `path` (owner-only, like the connection
    files) so that a controller restarted with --reuse keeps the key everyone knows; a
    damaged file gets a new pair, and `warn` (the controller's log) says so."""
    if not zmq.has("curve"):
        raise MiniparError("--curve needs a libzmq built with CurveZMQ (libsodium), and "
                           "this pyzmq's has none: install pyzmq's wheel")
    if reuse and os.path.exists(path):
        try:   # as the controller's _reusable: a damaged file gets a new pair, said
            with open(path) as f:
                keys = json.load(f)
            public, secret = keys["public"].encode(), keys["secret"].encode()
            if len(public) == len(secret) == 40:   # Z85 text of 32-byte keys
                return public, secret
            raise ValueError("keys are not 40 characters of Z85")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            warn("--reuse: %s cannot be read (%s: %s): this controller makes a new key pair; "
                 "clients need the new connection file", path, type(e).__name__, e)
    public, secret = zmq.curve_keypair()
    write_connection_file(path, {"public": public.decode(), "secret": secret.decode()})
    return public, secret
