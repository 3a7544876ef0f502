"""Task records: where the controller keeps them (DictDB, NoDB, SQLiteDB) and the
db_query language that searches them.

Only the controller's hub loop (one thread) uses a DB; clients reach the records through
it, over the "client" socket (result_request, db_query, purge, resubmit)::

    client ── result_request / db_query / purge ──▶ hub loop ──▶ db.get / find_records / drop
    engine ── reply ─────────────────────────────▶ hub loop ──▶ db.finish(rec)
                                                  hub loop ──▶ db.flush()  (before a send: durable)

Three backends behind one interface (``--db dict|sqlite|none``, ``open_db``): add(rec),
get(msg_id), `msg_id in db`, len(db), finish(rec) (the record is final), drop(msg_id)
(False for a pending record, which is kept), records(), pending() (records not final:
what a restarted controller must pick up), find_records(query, keys) (db_query), flush()
(make the writes so far durable), close(), culled(msg_id) (why a record it once had is
gone, or None: what get_result of that id answers). ``durable``: the records survive the
controller, so what the hub sends to clients (results) waits for their commit (flush):
DictDB and NoDB, False; SQLiteDB, True.

    DictDB    in memory (default); bounded (--record-limit, --record-bytes): the oldest
              finished records are culled, and their ids remembered as culled
    NoDB      in memory, only while in flight: a finished record is dropped at once, its
              id remembered (culled says so)
    SQLiteDB  PROFILE_DIR/tasks.db; survives the controller; culls nothing

``Parked`` holds the controller's queries that wait for msg_ids not here yet (another
client's request may come after the question about it; see Controller._park). ``Backlogs``
holds the messages for clients whose pipes are full (see Controller._to_client).

A record is a plain dict holding only the RECORD_KEYS it has a value for (a dict of 9 keys
is 190 B; db_query answers every key, None for those missing)::

    rec = {
        "msg_id": str,
        "kind": str,                # the request's kind: apply, execute, push, ...
        "client": bytes,            # the routing id its reply goes to (a query may name
                                    # it by the client's session: rc.session.session)
        "engine": int | None,       # where it ran (or runs, or must run)
        "lb": bool,                 # load-balanced (went through the scheduler)
        "submitted": float,         # time.time() seconds, set by the controller (the
                                    # client's db_query makes them UTC datetimes)
        "started": float,           # when an engine began it
        "completed": float,         # when it reached its final state
        "status": PENDING | OK | ERROR | the engine's status (protocol.STATUSES),
        "header": dict,             # the request's header, read from `wire` when first
                                    # asked for (``_header``): not a second copy
        "wire": [frames],           # the request's frames from the delimiter on
        "result_header": dict,      # the reply's header: status, ename, evalue,
                                    # stdout, stderr, started, ... (its routing fields
                                    # until `result_hb`, its bytes, is read: _result_header)
        "result_parts": [frames],   # the reply's frames (the result, serialized)
        "attempts": [{"engine", "status", "started", "completed", "ename"}],
        "watchers": [bytes],        # other clients to deliver the result to
        "recovers": str,            # a recovery task: the task it recovers
        "label": str,               # the view's label flag, when it had one
    }

``find_records`` also answers ``stdout``, ``stderr``, ``ename`` and ``evalue``, taken from
the result header, and ``engine_uuid``, ipyparallel's name of the engine, as the str of
`engine` (minipar names an engine by its id; the uuid4 an engine routes by is forgotten
when it leaves, and a restarted engine takes the id back); it leaves out `wire` and
`result_parts` unless asked for. A query is a dict of keys to values (equal) or to
conditions ``{op: value}`` with ``$eq $ne $in $nin $gt $gte $lt $lte``, as ipyparallel's
(a MongoDB subset). ``$in``/``$nin`` take a list, or one str: ``{'$nin': ''}``, as
ipyparallel's SQLiteDB reads it, is "a str, not ''" (a record without the key matches
neither; ipyparallel's DictDB tests a substring, which agrees for '' and fails on None).
"""

import bisect
import collections
import contextlib
import gc
import io
import logging
import numbers
import operator
import os
import pickle

from . import errors, protocol

log = logging.getLogger(__name__)

# DictDB's bounds (controller --record-limit, --record-bytes). A finished record costs
# about 10 KB of memory beyond its frames, so the byte bound is usually the one reached
# first: about 50,000 small tasks in 512 MiB. 10,000..1,000,000 records is reasonable.
RECORD_LIMIT = 100_000
RECORD_BYTES = 512 << 20
# Culled ids DictDB remembers, in runs of consecutive ids (see _IdSet): a few MB at most.
CULLED_RUNS = 100_000
# SQLiteDB: a pass of the hub reads no more messages once it has this many records to
# write (30 us each, with their handling: a pass of a burst stays some tens of ms, where
# it took 0.3 s and more; fewer cost a commit more often). 100..5,000 is reasonable.
WRITES_PER_PASS = 1000

# Record states. A record changes state only through Controller._finish / _assign.
# Final ones are the reply's status (protocol.STATUSES: OK, ERROR, ABORTED, ...).
PENDING = "pending"
OK, ERROR = protocol.OK, protocol.ERROR


# ---------------------------------------------------------------- storage

class DictDB:
    """Task records in memory, keyed by msg_id (their shape: the module's docstring).

    Memory is bounded: beyond `record_limit` records or `record_bytes` bytes (frames and
    RECORD_OVERHEAD each), the oldest finished records (in the order they finished) are
    culled; a pending record is never culled. A warning is logged when a limit first
    culls. The culled ids are remembered with the limit that culled them (``culled``),
    so get_result of one says so instead of "unknown"; beyond CULLED_RUNS runs of ids
    the oldest are forgotten, and those ids read as unknown.
    """

    # What a finished record costs beyond its frames (header dicts, attempts, Frame
    # objects): about 10 KB measured with bench/soak.py. Counted against record_bytes.
    RECORD_OVERHEAD = 10_000

    def __init__(self, record_limit=RECORD_LIMIT, record_bytes=RECORD_BYTES):
        self.record_limit, self.record_bytes = record_limit, record_bytes
        self._records = {}
        self._finished = collections.OrderedDict()   # msg_id -> bytes held, oldest first
        self._bytes = 0
        self._culled = {"count": _IdSet(), "bytes": _IdSet()}   # by the limit that culled

    def add(self, rec):
        self._records[rec["msg_id"]] = rec

    def get(self, msg_id):
        return self._records.get(msg_id)

    def __contains__(self, msg_id):
        return msg_id in self._records

    def __len__(self):
        return len(self._records)

    def finish(self, rec):
        """A record reached its final state: it may be culled from now on. Called once
        per task, so it does no more than count the bytes (inline, not message_size)."""
        msg_id, hb = rec["msg_id"], rec.get("result_hb")
        out = (rec.get("result_header") or {}) if hb is None else {}   # output: in hb, or read
        size = (self.RECORD_OVERHEAD + sum(map(len, rec.get("wire") or ())) + len(hb or b"")
                + sum(map(len, rec.get("result_parts") or ()))
                + len(out.get("stdout") or "") + len(out.get("stderr") or ""))
        finished = self._finished
        if msg_id in finished:   # finished again (a recovered owner): counted once
            self._bytes -= finished.pop(msg_id)
        finished[msg_id] = size
        self._bytes += size
        while (len(self._records) > self.record_limit
               or self._bytes > self.record_bytes) and finished:
            self._cull(next(iter(finished)),
                       "count" if len(self._records) > self.record_limit else "bytes")

    def _cull(self, msg_id, by):
        if not self._culled[by]:   # this limit's first cull
            log.warning("culling the oldest finished task records from now on: the "
                        "controller keeps %s (%s); get_result of a culled task fails; start "
                        "the controller with --db sqlite to keep every result", *self._limit(by))
        self.drop(msg_id)
        self._culled[by].add(msg_id)

    def _limit(self, by):
        """The limit named `by` ("count" or "bytes") in words, and its option."""
        if by == "count":
            return f"at most {self.record_limit} records", "--record-limit"
        return f"at most {self.record_bytes} bytes of records", "--record-bytes"

    def culled(self, msg_id):
        """Why there is no record of `msg_id` although there was one (it was culled, by
        which limit, and what keeps it), or None."""
        for by, ids in self._culled.items():
            if msg_id in ids:
                limit, option = self._limit(by)
                return (f"the record of {msg_id} was culled because the controller keeps "
                        f"{limit}; start the controller with --db sqlite to keep every "
                        f"result (or raise {option})")
        return None

    @property
    def nbytes(self):
        """The bytes the finished records hold, as counted against record_bytes."""
        return self._bytes

    def drop(self, msg_id):
        if msg_id in self._finished or msg_id not in self._records:
            self._bytes -= self._finished.pop(msg_id, 0)
            self._records.pop(msg_id, None)
            return True
        return False  # pending: kept

    def records(self):
        return self._records.values()

    def pending(self):
        return [r for r in self._records.values() if r["status"] == PENDING]

    def find_records(self, query, keys=None):
        """Records matching `query` (see ``_match``), as new plain dicts with `keys`."""
        query = check_query(query, keys)
        ids = _queried_ids(query)
        found = (self._records.values() if ids is None else
                 filter(None, (self._records.get(m) for m in ids)))
        return [_view(r, keys) for r in found if _match(r, query)]

    full = False   # a pass may read all that waits (see SQLiteDB.full)
    durable = False   # gone with the controller: results wait for no commit

    def flush(self):
        pass

    def close(self):
        pass


class NoDB(DictDB):
    """Keeps only what is in flight: a finished record is dropped at once. Its id is
    remembered (as DictDB's culled ones, in little memory), so a question about it says why
    at once rather than wait for it as for another client's request not here yet."""

    def __init__(self):
        super().__init__()
        self._dropped = _IdSet()

    def finish(self, rec):
        self._records.pop(rec["msg_id"], None)
        self._dropped.add(rec["msg_id"])

    def culled(self, msg_id):
        if msg_id not in self._dropped:
            return None
        return (f"the record of {msg_id} was dropped when it finished: the controller runs "
                "with --db none, which keeps no finished record; start it with --db dict "
                "(the default) or --db sqlite to ask for results later")


class SQLiteDB:
    """Task records in an SQLite file (stdlib ``sqlite3``): they survive the controller.

    Records have DictDB's keys. A record is written when it is added (with its request's
    frames, so a restarted controller can send it again) and when it is final; while
    pending, the controller changes it in place, so pending records are also held in
    memory and ``get`` returns that live dict. A restarted controller finds the records
    the previous one left unfinished with ``pending()``.

    Durability: the writes of one pass of the hub's loop are one transaction, committed
    by ``flush`` at the end of the pass, in a WAL journal with synchronous=NORMAL: what a
    pass wrote survives the controller's crash (not a power cut), without an fsync per
    record; a commit per record cost three times as much. A record changed twice in a pass
    is written once, as it is at the end (all in one executemany), and a pass stops
    reading once it has WRITES_PER_PASS records to write (``full``): a burst of 20,000
    tasks is many short passes, each committed, not one of seconds that holds back the
    heartbeat (and the replies). What the hub sends to clients waits for the commit
    (``durable``; Controller._flush): a result a client has seen is final on disk, never
    left "pending" to run again after a crash. Records on disk are unpickled
    with a loader that refuses every class and function: a tampered file cannot run code
    in the controller. Nothing is culled (--record-limit and --record-bytes bound DictDB
    only): the file grows until ``purge_results``.
    """

    durable = True

    def __init__(self, path):
        import sqlite3

        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:   # a file that is no database, a damaged one, or another program's
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS records (msg_id TEXT PRIMARY KEY, "
                             "status TEXT, submitted REAL, completed REAL, engine INTEGER, "
                             "data BLOB, wire BLOB, result_parts BLOB)")
            self._db.execute("CREATE INDEX IF NOT EXISTS records_status ON records (status)")
            self._db.execute("SELECT msg_id, status, submitted, completed, engine, data, wire, "
                             "result_parts FROM records LIMIT 0")
        except sqlite3.Error as e:
            raise errors.MiniparError(
                f"cannot keep task records in {path} ({type(e).__name__}: {e}): it is not "
                "a minipar task database, or is damaged; move it away (its records are "
                "lost to the new controller) or use another --db") from None
        self._live = {}    # msg_id -> the pending record the controller holds
        self._unwritten = {}   # msg_id -> a record changed in this pass: flush writes it
        self._dirty = False   # a transaction is open: flush() commits it

    @property
    def full(self):
        """This pass has enough to write: the hub reads no more messages before ``flush``."""
        return len(self._unwritten) >= WRITES_PER_PASS

    def _begin(self):
        if not self._dirty:
            self._db.execute("BEGIN")
            self._dirty = True

    def _write_out(self):
        """Write the records changed since the last call, in the open transaction (reads
        see them)."""
        if self._unwritten:
            self._begin()
            recs, self._unwritten = self._unwritten.values(), {}
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, "
                                 "?)", map(_row, recs))

    def add(self, rec):
        self._live[rec["msg_id"]] = self._unwritten[rec["msg_id"]] = rec

    def finish(self, rec):
        self._live.pop(rec["msg_id"], None)
        self._unwritten[rec["msg_id"]] = rec

    def get(self, msg_id):
        rec = self._live.get(msg_id) or self._unwritten.get(msg_id)
        if rec is None:
            row = self._db.execute("SELECT data, wire, result_parts FROM records WHERE "
                                   "msg_id = ?", (msg_id,)).fetchone()
            rec = row and _load_row(*row)
        return rec

    def __contains__(self, msg_id):
        return msg_id in self._live or msg_id in self._unwritten or self._db.execute(
            "SELECT 1 FROM records WHERE msg_id = ?", (msg_id,)).fetchone() is not None

    def __len__(self):
        self._write_out()
        return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    nbytes = 0   # the finished records are in the file, not in memory

    def drop(self, msg_id):
        if msg_id in self._live:
            return False  # pending: kept
        if self._unwritten.pop(msg_id, None) is None:   # else finished in this pass
            row = self._db.execute("SELECT status FROM records WHERE msg_id = ?",
                                   (msg_id,)).fetchone()
            if row is not None and row[0] == PENDING:
                return False  # left pending by a previous controller: kept for its restart
        self._begin()
        self._db.execute("DELETE FROM records WHERE msg_id = ?", (msg_id,))
        return True

    def records(self):
        """The live records, then the finished ones without their frames (``get`` has them);
        not those a previous controller left pending (``pending`` has them)."""
        yield from list(self._live.values())
        self._write_out()
        for (data,) in self._db.execute("SELECT data FROM records WHERE status != ?",
                                        (PENDING,)):
            yield _load(data)

    def pending(self):
        """Pending records: the live ones, then those a previous controller left on disk
        (with their request frames as bytes)."""
        out = list(self._live.values())
        self._write_out()
        rows = self._db.execute("SELECT data, wire, result_parts FROM records WHERE "
                                "status = ?", (PENDING,)).fetchall()
        out += [rec for rec in (_load_row(*row) for row in rows)
                if rec["msg_id"] not in self._live]
        return out

    def find_records(self, query, keys=None):
        query = check_query(query, keys)
        frames = [k for k in _FRAME_KEYS if keys is not None and k in keys]
        cols = ", ".join(["data", *frames])
        ids = _queried_ids(query)
        self._write_out()
        if ids is None:
            rows = self._db.execute(f"SELECT {cols} FROM records").fetchall()
        else:
            rows = []
            for i in range(0, len(ids), 500):   # SQLite caps the parameters of one query
                part = ids[i:i + 500]
                rows += self._db.execute(f"SELECT {cols} FROM records WHERE msg_id IN "
                                         f"({', '.join('?' * len(part))})", part).fetchall()
        out = []
        for data, *blobs in rows:
            rec = _load(data)
            live = self._live.get(rec["msg_id"])
            if live is not None:   # changed in memory since it was written
                rec = live
            else:
                rec.update(zip(frames, map(_load_frames, blobs)))
            if _match(rec, query):
                out.append(_view(rec, keys))
        return out

    def culled(self, msg_id):
        return None   # nothing is culled: a record not here is unknown or purged

    def flush(self):
        self._write_out()
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False

    def close(self):
        self.flush()
        self._db.close()


SQLITE_FILE = "tasks.db"   # in the profile folder, beside security/


def open_db(kind, profile_dir, record_limit=RECORD_LIMIT, record_bytes=RECORD_BYTES):
    """The DB for ``--db`` `kind`: "dict" (default, bounded by `record_limit` records and
    `record_bytes` bytes), "sqlite" (unbounded) or "none"."""
    if kind == "sqlite":
        return SQLiteDB(os.path.join(profile_dir, SQLITE_FILE))
    if kind in ("dict", "none"):
        return DictDB(record_limit, record_bytes) if kind == "dict" else NoDB()
    raise ValueError(f"unknown db {kind!r}; use dict, sqlite or none")


# A purge of this many records, or of records holding this many bytes, hands the freed
# memory back to the system (malloc_trim: some ms on a large heap, so not after each small
# purge). By bytes too: 100 results of 1 MB freed at the C allocator stay in the process
# (glibc serves blocks that size from its heap once one has been freed), 100 MB of RSS
# that nothing uses. 1..64 MiB is reasonable.
TRIM_AFTER_RECORDS, TRIM_AFTER_BYTES = 1000, 8 << 20


def _give_back_memory(purged, freed_bytes):
    """After a purge of `purged` records holding `freed_bytes` (DictDB.nbytes): if it was
    large, hand the freed memory back to the system, as far as CPython allows (what the C
    allocator keeps of freed blocks; pymalloc returns an arena only when every object in
    it is gone)."""
    if purged < TRIM_AFTER_RECORDS and freed_bytes < TRIM_AFTER_BYTES:
        return
    import ctypes   # here, not at import: purges are rare

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)   # glibc's; elsewhere there is none to call


class _IdSet:
    """A set of msg_ids (DictDB's culled ones) in little memory.

    protocol.new_id's ids are a process's prefix and a hex count, and records are culled
    about in the order they were submitted, so the culled ids of one client are a few
    runs of consecutive counts: held per prefix as sorted, disjoint [first, last] pairs.
    Ids of another shape are held as they are. At most `limit` runs and ids are held;
    beyond, the oldest go (the first prefix's lowest run, ids of another shape first).
    """

    def __init__(self, limit=CULLED_RUNS):
        self.limit = limit
        self._runs = {}     # prefix -> ([first count, ...], [last count, ...]), sorted
        self._other = {}    # ids of another shape -> None, oldest first
        self._size = 0      # runs + other ids held

    @staticmethod
    def _split(msg_id):
        prefix, sep, count = str(msg_id).rpartition("-")
        try:
            n = int(count, 16)
        except ValueError:
            return None
        return (prefix, n) if sep and format(n, "x") == count else None

    def add(self, msg_id):
        split = self._split(msg_id)
        if split is None:
            self._size += msg_id not in self._other
            self._other[msg_id] = None
        else:
            firsts, lasts = self._runs.setdefault(split[0], ([], []))
            n = split[1]
            i = bisect.bisect_right(firsts, n) - 1
            if i >= 0 and lasts[i] >= n:
                return
            after = i >= 0 and lasts[i] == n - 1            # n extends run i
            before = i + 1 < len(firsts) and firsts[i + 1] == n + 1   # or starts run i+1
            if after and before:
                lasts[i] = lasts.pop(i + 1)
                del firsts[i + 1]
                self._size -= 1
            elif after:
                lasts[i] = n
            elif before:
                firsts[i + 1] = n
            else:
                firsts.insert(i + 1, n)
                lasts.insert(i + 1, n)
                self._size += 1
        while self._size > self.limit:
            self._forget_oldest()

    def _forget_oldest(self):
        self._size -= 1
        if self._other:
            del self._other[next(iter(self._other))]
            return
        prefix = next(iter(self._runs))
        firsts, lasts = self._runs[prefix]
        del firsts[0], lasts[0]
        if not firsts:
            del self._runs[prefix]

    def __contains__(self, msg_id):
        split = self._split(msg_id)
        if split is None:
            return msg_id in self._other
        firsts, lasts = self._runs.get(split[0], ((), ()))
        i = bisect.bisect_right(firsts, split[1]) - 1
        return i >= 0 and lasts[i] >= split[1]

    def __len__(self):
        return self._size


class Parked:
    """Queries waiting for msg_ids that are no record yet (see Controller._park): each
    client sends on its own connection, so one's query can overtake the request another
    made just before. A query waits until all its ids have arrived or its deadline has
    passed; ``due`` then hands its item back, to be answered as if it came now.

    ``queries``: {query msg_id: (deadline, item, {ids not arrived}, weight)}, oldest (so
    soonest deadline) first; ``_waiting``: {id: {query msg_ids}}. Queries whose weights
    (the ids they name) add up past `limit` are refused (``park`` returns False), so a
    client asking for 100,000 bogus ids cannot grow it without bound.
    """

    def __init__(self, limit):
        self.limit = limit
        self.queries, self._waiting = {}, {}   # see the docstring
        self._ready = []    # queries whose ids have all arrived
        self._weight = 0

    def park(self, query_id, ids, weight, deadline, item):
        if not ids or query_id in self.queries or self._weight + weight > self.limit:
            return False
        self._weight += weight
        self.queries[query_id] = (deadline, item, set(ids), weight)
        for m in ids:
            self._waiting.setdefault(m, set()).add(query_id)
        return True

    def arrived(self, msg_id):
        """A record of `msg_id` now exists."""
        for q in self._waiting.pop(msg_id, ()):
            missing = self.queries[q][2]
            missing.discard(msg_id)
            if not missing:
                self._ready.append(q)

    def next_deadline(self):
        return next(iter(self.queries.values()))[0] if self.queries else None

    def due(self, now):
        """The items of the queries to answer now, taken out: those whose ids all arrived,
        and those whose deadline is `now` or before (`now` None: every one)."""
        due, self._ready = self._ready, []
        for q, (deadline, *_) in self.queries.items():
            if now is not None and deadline > now:
                break
            due.append(q)
        items = []
        for q in due:
            entry = self.queries.pop(q, None)
            if entry is None:   # ready and past its deadline: listed twice
                continue
            _, item, missing, weight = entry
            self._weight -= weight
            for m in missing:
                waiting = self._waiting[m]
                waiting.discard(q)
                if not waiting:
                    del self._waiting[m]
            items.append(item)
        return items


class Backlogs:
    """The hub's messages to clients, through ``send(ident, frames)`` (True: sent; False:
    that client's pipe is full; None: it is gone, and the message goes as a ROUTER drops
    it), and those waiting for clients that read less than the hub sends them (stopped,
    asleep, slow): in order, nothing dropped. A client's queue starts when its pipe is full;
    past `bound` bytes waiting, ``deliver`` says to hold its tasks (back-pressure), and once
    at most half of that waits, ``retry`` names it to release. The queues are tried again
    after a 16th of `most_s`, backing off to `most_s` while nothing moves (a stopped client
    costs the hub a few wake-ups a second; a reader behind for a moment waits little)."""

    def __init__(self, send, bound, most_s):
        self.send, self.bound, self.first_s, self.most_s = send, bound, most_s / 16, most_s
        self.queues = {}   # client routing id -> [bytes waiting, deque of messages, held]
        self.retry_s, self.retry_at = self.first_s, 0.0

    def deliver(self, ident, frames):
        """Send `frames` to client `ident`, or queue them after what waits for it; True
        once its queue passed the bound (its tasks should wait)."""
        queue = self.queues.get(ident)
        if queue is None:
            if self.send(ident, frames) is not False:
                return False
            queue = self.queues[ident] = [0, collections.deque(), False]
            self.retry_s, self.retry_at = self.first_s / 2, 0.0   # at the next pass
        queue[1].append(frames)
        queue[0] += protocol.message_size(frames)
        if queue[2] or queue[0] <= self.bound:
            return False
        queue[2] = True
        return True

    def retry(self, now):
        """Send what waits, in order, while the pipes take it; the clients held that may
        be released."""
        released, moved = [], False
        for ident, queue in list(self.queues.items()):
            messages = queue[1]
            while messages:
                sent = self.send(ident, messages[0])
                if sent is False:
                    break
                moved = True
                queue[0] -= protocol.message_size(messages.popleft())
                if sent is None:
                    queue[0] = 0
                    messages.clear()
            if not messages:
                del self.queues[ident]
            if queue[2] and queue[0] <= self.bound // 2:
                queue[2] = False
                released.append(ident)
        self.retry_s = self.first_s if moved else min(2 * self.retry_s, self.most_s)
        self.retry_at = now + self.retry_s
        return released


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (dicts, lists, str, bytes, numbers): never code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"a task record may hold plain data only, not "
                                     f"{module}.{name}")


def _dump(obj):
    return pickle.dumps(obj, protocol=5)


def _load(blob):
    return _PlainUnpickler(io.BytesIO(blob)).load()


def _row(rec):
    """A record as SQLiteDB's row: its frames apart, the rest pickled."""
    data = {k: _frame_bytes(v) if k == "result_hb" else v for k, v in rec.items()
            if k not in _FRAME_KEYS}   # a result_hb from 64 KiB: a zmq.Frame, no pickle
    if data.get("header") is None and rec.get("wire"):
        # queries read records without their frames: the header goes in as a dict
        data["header"] = protocol.unpack_header(_frame_bytes(rec["wire"][2]))
    return (rec["msg_id"], rec["status"], rec.get("submitted"), rec.get("completed"),
            rec.get("engine"), _dump(data), _dump_frames(rec.get("wire")),
            _dump_frames(rec.get("result_parts")))


def _dump_frames(frames):
    return None if frames is None else _dump([_frame_bytes(f) for f in frames])


def _frame_bytes(frame):
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _load_frames(blob):
    return None if blob is None else _load(blob)


def _load_row(data, wire, result_parts):
    return dict(_load(data), wire=_load_frames(wire),
                result_parts=_load_frames(result_parts))


# ---------------------------------------------------------------- db_query

# A record's keys (see the module docstring: db_query answers them all).
RECORD_KEYS = ("msg_id", "kind", "client", "engine", "lb", "submitted", "started",
               "completed", "status", "header", "wire", "result_header", "result_parts",
               "attempts", "watchers", "recovers", "label")
_FRAME_KEYS = ("wire", "result_parts")
_FROM_RESULT = ("stdout", "stderr", "ename", "evalue")   # answered from the result header
_ANSWERED = (*_FROM_RESULT, "engine_uuid")   # answered, though no record holds them
# ipyparallel's names for a record's keys, named in the error that refuses them
_IPYPARALLEL_KEYS = {"client_uuid": "client", "content": "header",
                     "result_content": "result_header", "buffers": "wire",
                     "result_buffers": "result_parts"}
_LISTS = (list, tuple, set, frozenset)   # what $in and $nin take a list as


def _compare(op):
    def cmp(value, arg):
        try:
            return value is not None and arg is not None and op(value, arg)
        except TypeError:   # an int against a str: no match, as in MongoDB
            return False
    return cmp


_OPS = {
    "$eq": lambda value, arg: value == arg,
    "$ne": lambda value, arg: value != arg,
    # a list, or one value (a str), which a record without the key never matches, as in SQL
    "$in": lambda value, arg: value in arg if isinstance(arg, _LISTS) else value == arg,
    "$nin": lambda value, arg: (value not in arg if isinstance(arg, _LISTS)
                                else value is not None and value != arg),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
}


def _is_condition(cond):
    return isinstance(cond, dict) and bool(cond) and all(
        isinstance(k, str) and k.startswith("$") for k in cond)


# The type of a record's values, by key (None, for a value it lacks, besides): a query
# value of another type could never match, and is refused as a misspelt key is
_KEY_TYPES = dict.fromkeys(("msg_id", "kind", "status", "label", "recovers", *_ANSWERED), str)
_KEY_TYPES.update(client=bytes, engine=numbers.Integral, lb=numbers.Integral,
                  submitted=numbers.Real, started=numbers.Real, completed=numbers.Real)
_WHAT = {"client": "bytes, the client's routing id, or the str of its session "
                   "(rc.session.session)", "engine": "an int, the engine's id (rc.ids)",
         "lb": "a bool", str: "a str", numbers.Real: "a time: time.time() seconds or a datetime"}


def check_query(query, keys=None):
    """`query` as ``_match`` answers it, a client named by its session (what its user has:
    ``rc.session.session``) by its routing id. Raise ValueError for a query it cannot
    answer, a key (in `query` or `keys`) no record has, or a value no record's key can
    have: a misspelt key, a str engine id, would match nothing, or answer None, unsaid."""
    if not isinstance(query, dict):
        raise ValueError(f"a query is a dict of record keys to values or conditions, not "
                         f"{type(query).__name__}")
    for key in (*query, *(keys or ())):
        if key not in RECORD_KEYS and key not in _ANSWERED:
            ipp = _IPYPARALLEL_KEYS.get(key)
            raise ValueError(f"no record key {key!r}" + (f" (ipyparallel's {key} is "
                             f"minipar's {ipp!r})" if ipp else "") + "; the keys are "
                             + ", ".join((*RECORD_KEYS, *_ANSWERED)))
    for key, cond in query.items():
        if not _is_condition(cond):
            continue
        for op, arg in cond.items():
            if op not in _OPS:
                raise ValueError(f"unknown query operator {op!r} for {key!r}; use one of "
                                 f"{', '.join(_OPS)}")
            if op in ("$in", "$nin") and not isinstance(arg, (str, *_LISTS)):
                raise ValueError(f"{op} for {key!r} takes a list (or one str), not "
                                 f"{type(arg).__name__}")
            if op not in ("$in", "$nin") and isinstance(arg, _LISTS) and key in _KEY_TYPES:
                raise ValueError(f"{op} for {key!r} compares with one value, not {arg!r:.60}; "
                                 "for any of several use $in ($nin: none of them)")
    return {key: {op: [_value(key, v) for v in arg] if isinstance(arg, _LISTS)
                  else _value(key, arg) for op, arg in cond.items()}
            if _is_condition(cond) else _value(key, cond) for key, cond in query.items()}


def _value(key, value):
    """A query's `value` for `key` as records hold it, or ValueError if none can."""
    if key == "client" and isinstance(value, str):
        value = protocol.client_identity(value)
    kind = _KEY_TYPES.get(key)
    if value is None or kind is None or isinstance(value, kind):
        return value
    raise ValueError(f"{value!r:.60} for {key!r} would match no record: a record's {key!r} "
                     f"is {_WHAT.get(key) or _WHAT[kind]}")


def _match(rec, query):
    """Whether `rec` meets every condition of `query` (the module docstring's language)."""
    for key, cond in query.items():
        value = _field(rec, key)
        if _is_condition(cond):
            if not all(_OPS[op](value, arg) for op, arg in cond.items()):
                return False
        elif value != cond:
            return False
    return True


def _queried_ids(query):
    """The msg_ids a query is limited to (so a DB can look them up), each once, or None."""
    cond = query.get("msg_id")
    if cond is None or not _is_condition(cond):
        return None if cond is None else [cond]
    if "$eq" in cond:
        return [cond["$eq"]]
    if "$in" not in cond:
        return None
    ids = cond["$in"]   # an id listed twice: its record once, as a condition matches
    return list(dict.fromkeys(ids)) if isinstance(ids, _LISTS) else [ids]


def _field(rec, key):
    if key in _FROM_RESULT and key not in rec:
        return (_result_header(rec) or {}).get(key)
    if key == "engine_uuid":
        return None if rec.get("engine") is None else str(rec["engine"])
    if key == "header":
        return _header(rec)
    if key == "result_header":
        return _result_header(rec)
    return rec.get(key)


def _header(rec):
    """A record's request header, read from its frames when first asked for: a queued
    request holds only its frames, not a second copy as a dict."""
    if rec.get("header") is None:
        rec["header"] = protocol.unpack_header(_frame_bytes(rec["wire"][2]))
    return rec["header"]


def _result_header(rec):
    """A record's reply header. The controller keeps the routing fields it read (see
    protocol.route_header) and the header's bytes (`result_hb`), read when first asked for.
    A whole header (one the controller made, or read whole) has its `body`."""
    hb = rec.pop("result_hb", None)
    if hb is not None and "body" not in rec["result_header"]:
        try:
            rec["result_header"] = protocol.unpack_header(_frame_bytes(hb))
        except ValueError as e:   # signed, yet its rest unreadable: what it was routed by
            rec["result_header"] = dict(rec["result_header"], ename="ValueError",
                                        evalue=f"its reply's header could not be read: {e}")
    return rec.get("result_header")


def _view(rec, keys):
    """A record as db_query answers it: a new dict of plain data, with frames (as bytes)
    only when `keys` names them; `keys` None means every other key."""
    _result_header(rec)   # read, so `result_hb` is no key of it
    if keys is None:
        keys = [k for k in dict.fromkeys((*RECORD_KEYS, *rec, *_ANSWERED))
                if k not in _FRAME_KEYS]
    out = {"msg_id": rec["msg_id"]}
    for k in keys:
        v = _field(rec, k)
        out[k] = [_frame_bytes(f) for f in v] if k in _FRAME_KEYS and v is not None else v
    return out
