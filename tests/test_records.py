"""The task-record stores on their own (DictDB, NoDB, SQLiteDB) and the db_query
language: plain objects, no processes. End to end (a real controller answering
rc.db_query, --db sqlite across a restart): test_tasks.py."""

import os
import time

import pytest

from minipar import records
from minipar.records import check_query, _match

TIMEOUT = 30
pytestmark = pytest.mark.timeout(TIMEOUT)


def record(msg_id, status=records.PENDING, nbytes=10, **kw):
    rec = {"msg_id": msg_id, "kind": "apply", "client": b"c", "engine": None, "lb": True,
           "submitted": time.time(), "started": None, "completed": None, "status": status,
           "header": {"msg_id": msg_id}, "wire": [b"x" * nbytes],
           "result_header": None, "result_parts": None, "attempts": [], "watchers": None}
    rec.update(kw)
    return rec


def finish(db, rec, status="ok", engine=0, stdout=""):
    rec.update(status=status, engine=engine, completed=time.time(), result_parts=[b"r"],
               result_header={"status": status, "stdout": stdout})
    db.finish(rec)


def test_dictdb_culls_the_oldest_finished_records_never_a_pending_one():
    db = records.DictDB(record_limit=5)
    pending = [record(f"p{i}") for i in range(8)]
    for i, rec in enumerate(pending):
        db.add(rec)
        done = record(f"f{i}")
        db.add(done)
        finish(db, done)
    assert all(rec["msg_id"] in db for rec in pending)      # over the limit, all kept
    assert len(db) == 8 and len(db.pending()) == 8
    for rec in pending[:6]:
        finish(db, rec)
    assert len(db) == 5
    assert [r["msg_id"] for r in db.pending()] == ["p6", "p7"]
    assert {r["msg_id"] for r in db.records()} == {"p3", "p4", "p5", "p6", "p7"}

    by_size = records.DictDB(record_bytes=1000)
    big = record("big", nbytes=5000)
    by_size.add(big)
    for i in range(5):
        rec = record(f"s{i}", nbytes=300)
        by_size.add(rec)
        finish(by_size, rec)
    assert "big" in by_size and [r["msg_id"] for r in by_size.pending()] == ["big"]
    assert by_size.drop("big") is False
    finish(by_size, big)
    assert "big" not in by_size                               # final now: over the limit


def test_nodb_keeps_only_what_is_in_flight():
    db = records.NoDB()
    rec = record("a")
    db.add(rec)
    assert db.get("a") is rec and db.pending() == [rec]
    finish(db, rec)
    assert "a" not in db and len(db) == 0


@pytest.mark.parametrize("kind", ["dict", "sqlite"])
def test_find_records(tmp_path, kind):
    db = records.open_db(kind, str(tmp_path))
    t0 = time.time()
    for i in range(6):
        rec = record(f"m{i}", engine=i % 2)
        db.add(rec)
        if i < 4:
            finish(db, rec, status="ok" if i % 2 else "error", engine=i % 2, stdout=f"out{i}")
    assert {r["msg_id"] for r in db.find_records({"status": "pending"})} == {"m4", "m5"}
    assert {r["msg_id"] for r in db.find_records({"engine": 1, "status": {"$ne": "pending"}})} \
        == {"m1", "m3"}
    assert {r["msg_id"] for r in db.find_records({"msg_id": {"$in": ["m0", "m5", "zz"]}})} \
        == {"m0", "m5"}
    assert db.find_records({"completed": {"$gte": t0}, "stdout": "out2"},
                           keys=["engine"]) == [{"msg_id": "m2", "engine": 0}]
    assert len(db.find_records({"completed": {"$gt": t0}})) == 4     # None never compares
    full = db.find_records({"msg_id": "m1"}, keys=["wire", "result_parts", "header"])[0]
    assert full == {"msg_id": "m1", "wire": [b"x" * 10], "result_parts": [b"r"],
                    "header": {"msg_id": "m1"}}
    with pytest.raises(ValueError):
        db.find_records({"engine": {"$regex": "x"}})
    db.close()


@pytest.mark.parametrize("kind", ["dict", "sqlite"])
def test_labels_and_engine_uuid_as_ipyparallels_task_label_example_asks(tmp_path, kind):
    """ipyparallel's basic_task_label.py: {'label': {'$nin': ''}} (one str: a str label,
    not '') with keys msg_id, label, engine_uuid (the str of the engine's id), alike in
    both stores; engine_uuid filters too."""
    db = records.open_db(kind, str(tmp_path))
    for i, label in enumerate(["mylabel_00", "mylabel_01", None, ""]):
        rec = record(f"m{i}", **({} if label is None else {"label": label}))
        db.add(rec)
        finish(db, rec, engine=i % 2)
    db.add(record("m4", label="queued"))    # no engine yet
    keys = ["msg_id", "label", "engine_uuid"]
    assert sorted(db.find_records({"label": {"$nin": ""}}, keys=keys),
                  key=lambda r: r["msg_id"]) == [
        {"msg_id": "m0", "label": "mylabel_00", "engine_uuid": "0"},
        {"msg_id": "m1", "label": "mylabel_01", "engine_uuid": "1"},
        {"msg_id": "m4", "label": "queued", "engine_uuid": None}]
    assert [r["msg_id"] for r in db.find_records({"label": {"$in": "mylabel_01"}})] == ["m1"]
    assert {r["msg_id"] for r in db.find_records({"engine_uuid": "1"})} == {"m1", "m3"}
    assert {r["msg_id"] for r in db.find_records({"engine_uuid": {"$in": ["0"]},
                                                  "label": {"$nin": ["", None]}})} == {"m0"}
    assert db.find_records({"msg_id": {"$in": "m2"}}, keys=["engine", "engine_uuid"]) == \
        [{"msg_id": "m2", "engine": 0, "engine_uuid": "0"}]
    db.close()


def test_sqlitedb_keeps_records_and_pending_ones_across_reopening(tmp_path):
    path = str(tmp_path / "tasks.db")
    db = records.SQLiteDB(path)
    waiting, done = record("w"), record("d")
    db.add(waiting)
    db.add(done)
    assert db.get("w") is waiting          # pending: the live dict the controller changes
    waiting["attempts"].append({"engine": 1, "status": "engine_died"})
    finish(db, done)
    assert db.drop("w") is False and len(db) == 2 and "d" in db
    db.close()

    again = records.SQLiteDB(path)
    left, = again.pending()               # what a restarted controller must pick up
    assert left["msg_id"] == "w" and left["wire"] == [b"x" * 10]
    rec = again.get("d")
    assert rec["status"] == "ok" and rec["result_parts"] == [b"r"]
    assert again.drop("w") is False       # left pending by the last controller: kept
    assert again.drop("d") is True and "d" not in again and len(again) == 1
    finish(again, left)
    assert again.pending() == [] and again.get("w")["status"] == "ok"
    again.close()


def test_sqlitedb_refuses_records_that_would_run_code(tmp_path):
    import pickle
    import sqlite3

    path = str(tmp_path / "tasks.db")
    records.SQLiteDB(path).close()
    evil = pickle.dumps({"msg_id": "e", "x": os.system})
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO records VALUES ('e', 'ok', 0, 0, 0, ?, NULL, NULL)", (evil,))
    db = records.SQLiteDB(path)
    with pytest.raises(pickle.UnpicklingError):
        db.get("e")
    db.close()


# ---------------------------------------------------------------- more of the stores

def test_dictdb_get_contains_len_and_drop():
    db = records.DictDB()
    rec = record("a")
    db.add(rec)
    assert db.get("a") is rec and "a" in db and len(db) == 1
    assert db.get("zz") is None and "zz" not in db
    assert db.drop("a") is False                   # pending: kept
    finish(db, rec)
    assert db.pending() == [] and [r["msg_id"] for r in db.records()] == ["a"]
    assert db.drop("a") is True and "a" not in db and len(db) == 0
    assert db.drop("zz") is True                   # nothing to keep


def test_dictdb_culls_in_finishing_order_by_count():
    db = records.DictDB(record_limit=3)
    recs = [record(f"m{i}") for i in range(6)]
    for rec in recs:
        db.add(rec)
    for i in (4, 0, 2, 5, 1):                       # finished out of submission order
        finish(db, recs[i])
    # six records, limit three: the three finished first (m4, m0, m2) are gone
    assert {r["msg_id"] for r in db.records()} == {"m1", "m3", "m5"}
    assert [r["msg_id"] for r in db.pending()] == ["m3"]


def test_dictdb_culls_by_bytes_counting_frames_and_overhead():
    each = records.DictDB.RECORD_OVERHEAD + 1000 + 1     # wire 1000 B, result_parts 1 B
    db = records.DictDB(record_bytes=3 * each)
    for i in range(5):
        rec = record(f"m{i}", nbytes=1000)
        db.add(rec)
        finish(db, rec)
    assert [r["msg_id"] for r in db.records()] == ["m2", "m3", "m4"]


def test_nodb_finds_only_pending_records():
    db = records.NoDB()
    a, b = record("a"), record("b")
    db.add(a)
    db.add(b)
    finish(db, a)
    assert [r["msg_id"] for r in db.find_records({})] == ["b"]
    assert db.get("a") is None


def test_open_db_kinds(tmp_path):
    assert type(records.open_db("dict", str(tmp_path))) is records.DictDB
    assert type(records.open_db("none", str(tmp_path))) is records.NoDB
    db = records.open_db("sqlite", str(tmp_path))
    assert isinstance(db, records.SQLiteDB)
    assert db.path == os.path.join(str(tmp_path), records.SQLITE_FILE)
    db.close()
    with pytest.raises(ValueError, match="unknown db 'mongo'"):
        records.open_db("mongo", str(tmp_path))


def test_sqlitedb_a_finished_record_survives_close_and_reopen(tmp_path):
    path = str(tmp_path / "tasks.db")
    db = records.SQLiteDB(path)
    rec = record("r", engine=3)
    db.add(rec)
    finish(db, rec, engine=3, stdout="hello")
    db.close()

    again = records.SQLiteDB(path)
    assert "r" in again and len(again) == 1 and again.pending() == []
    got = again.get("r")
    assert got is not rec
    assert (got["status"], got["engine"], got["wire"], got["result_parts"]) == \
        ("ok", 3, [b"x" * 10], [b"r"])
    assert again.find_records({"stdout": "hello"}, keys=["engine"]) == \
        [{"msg_id": "r", "engine": 3}]
    again.close()


def test_sqlitedb_unflushed_writes_are_rolled_back_with_the_connection(tmp_path):
    # durability is per flush (one transaction per pass of the hub's loop)
    path = str(tmp_path / "tasks.db")
    db = records.SQLiteDB(path)
    db.add(record("kept"))
    db.flush()
    db.add(record("lost"))
    db._db.close()   # as a crash before the pass ended would: no flush, nothing committed
    again = records.SQLiteDB(path)
    assert "kept" in again and "lost" not in again
    again.close()


def test_sqlitedb_reads_what_this_pass_changed_before_its_flush(tmp_path):
    # a pass's records are written at its end (one executemany): each read sees them first
    db = records.SQLiteDB(str(tmp_path / "tasks.db"))
    for i in range(3):
        db.add(record(f"r{i}"))
    finish(db, db.get("r1"), stdout="hi")
    assert "r1" in db and db.get("r1")["status"] == "ok" and len(db) == 3
    assert [r["msg_id"] for r in db.find_records({"stdout": "hi"})] == ["r1"]
    assert {r["msg_id"] for r in db.pending()} == {"r0", "r2"}
    finish(db, db.get("r2"))
    assert db.drop("r2") and "r2" not in db   # finished and purged in one pass: never kept
    assert not db.full
    for i in range(records.WRITES_PER_PASS):
        db.add(record(f"many{i}"))
    assert db.full
    db.flush()
    assert not db.full
    db.close()
    again = records.SQLiteDB(str(tmp_path / "tasks.db"))
    assert again.get("r1")["status"] == "ok" and "r2" not in again
    assert len(again) == 2 + records.WRITES_PER_PASS
    again.close()


# ---------------------------------------------------------------- db_query

REC = {"msg_id": "q", "engine": 2, "status": "ok", "completed": 10.0, "started": None,
       "result_header": {"stdout": "hi", "ename": None}}


@pytest.mark.parametrize("query, matches", [
    ({}, True),
    ({"engine": 2}, True),
    ({"engine": 3}, False),
    ({"engine": {"$eq": 2}}, True),
    ({"engine": {"$ne": 2}}, False),
    ({"engine": {"$ne": 3}}, True),
    ({"engine": {"$in": [1, 2]}}, True),
    ({"engine": {"$in": [1, 3]}}, False),
    ({"engine": {"$nin": [1, 3]}}, True),
    ({"engine": {"$nin": (2,)}}, False),
    ({"completed": {"$gt": 9.5}}, True),
    ({"completed": {"$gt": 10.0}}, False),
    ({"completed": {"$gte": 10.0}}, True),
    ({"completed": {"$lt": 10.0}}, False),
    ({"completed": {"$lte": 10.0}}, True),
    ({"completed": {"$gt": 5, "$lt": 11}}, True),      # every condition must hold
    ({"completed": {"$gt": 5, "$lt": 6}}, False),
    ({"engine": 2, "status": "error"}, False),          # every key must match
    ({"started": {"$lt": 1e12}}, False),                 # None never compares
    ({"started": {"$gt": 0}}, False),
    ({"started": None}, True),
    ({"label": None}, True),                             # a key it lacks is None
    ({"stdout": "hi"}, True),                            # from the result header
    ({"stdout": {"$in": ["ho"]}}, False),
    ({"label": {"$nin": ["x"]}}, True),                  # a list: None is not in it
    ({"label": {"$nin": "x"}}, False),                   # one str: None is no str
    ({"status": {"$nin": ""}}, True),
    ({"status": {"$in": "ok"}}, True),                   # one str: equal, no substring
    ({"status": {"$in": "okay"}}, False),
    ({"engine_uuid": "2"}, True),
    ({"engine_uuid": {"$ne": "2"}}, False),
])
def test_match_operators(query, matches):
    check_query(query)
    assert _match(REC, query) is matches


@pytest.mark.parametrize("query, error", [
    ([("engine", 1)], "a query is a dict"),
    ({"engine": {"$near": 1}}, "unknown query operator '\\$near'"),
    ({"engine": {"$in": 1}}, "\\$in for 'engine' takes a list \\(or one str\\), not int"),
    ({"engine": {"$nin": "ab"}}, "'ab' for 'engine' would match no record: .* an int"),
    ({"engine_uuid": 2}, "2 for 'engine_uuid' would match no record: .* a str"),
    ({"msg_idd": "k"}, "no record key 'msg_idd'; the keys are msg_id, kind"),
    # a value of a type the key never has would match nothing: said, not answered with []
    ({"status": {"$gt": 1}}, "1 for 'status' would match no record: a record's 'status' is a str"),
    ({"engine": "4f1c-uuid"}, "'4f1c-uuid' for 'engine' would match no record: .* an int"),
    ({"engine": {"$in": [0, "1"]}}, "'1' for 'engine' would match no record"),
    ({"client": 3}, "a record's 'client' is bytes, .* its session \\(rc.session.session\\)"),
    ({"completed": {"$gt": "yesterday"}}, "'completed' is a time"),
])
def test_check_query_refuses_what_match_cannot_answer(query, error):
    with pytest.raises(ValueError, match=error):
        check_query(query)


def test_a_dict_without_operators_is_a_value_to_equal():
    rec = {"msg_id": "d", "header": {"a": 1}}
    assert _match(rec, {"header": {"a": 1}}) and not _match(rec, {"header": {"a": 2}})


def test_key_selection():
    db = records.DictDB()
    rec = record("k", engine=1)
    db.add(rec)
    finish(db, rec, engine=1, stdout="out")
    assert db.find_records({"msg_id": "k"}, keys=["engine", "stdout"]) == \
        [{"msg_id": "k", "engine": 1, "stdout": "out"}]
    assert db.find_records({"msg_id": "k"}, keys=[]) == [{"msg_id": "k"}]
    full = db.find_records({"msg_id": "k"})[0]
    assert set(full) >= set(records.RECORD_KEYS) - {"wire", "result_parts"}
    assert "wire" not in full and "result_parts" not in full
    assert full["stdout"] == "out" and full["evalue"] is None
    framed = db.find_records({"msg_id": "k"}, keys=["wire"])[0]
    assert framed == {"msg_id": "k", "wire": [b"x" * 10]}
    assert framed["wire"] is not rec["wire"]          # a copy: the caller may keep it
    # ipyparallel's engine_uuid: the str of minipar's engine id, in every full record too
    assert db.find_records({"msg_id": "k"}, keys=["engine_uuid"]) == \
        [{"msg_id": "k", "engine_uuid": "1"}] and full["engine_uuid"] == "1"


@pytest.mark.parametrize("query, ids", [
    ({"engine": 1}, None),
    ({"msg_id": "a"}, ["a"]),
    ({"msg_id": {"$eq": "a"}}, ["a"]),
    ({"msg_id": {"$in": ["a", "b"]}}, ["a", "b"]),
    ({"msg_id": {"$in": "ab"}}, ["ab"]),
    ({"msg_id": {"$ne": "a"}}, None),
])
def test_queried_ids_limit_the_lookup(query, ids):
    assert records._queried_ids(query) == ids


# ---------------------------------------------------------------- culled ids

def test_dictdb_says_which_limit_culled_a_record(caplog):
    db = records.DictDB(record_limit=3)
    with caplog.at_level("WARNING", logger="minipar.records"):
        for i in range(6):
            rec = record(f"m{i}")
            db.add(rec)
            finish(db, rec)
    why = db.culled("m0")
    assert "m0 was culled" in why and "at most 3 records" in why
    assert "--db sqlite" in why and "--record-limit" in why
    assert db.culled("m2") is not None and db.culled("m3") is None    # m3..m5 kept
    assert db.culled("never") is None                                 # unknown, not culled
    assert db.get("m0") is None and "m0" not in db
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "at most 3 records (--record-limit)" in warned[0]

    db.drop("m4")                                 # purged by a client: not culled
    assert db.culled("m4") is None


def test_dictdb_culled_by_bytes_names_the_byte_limit():
    db = records.DictDB(record_bytes=2 * (records.DictDB.RECORD_OVERHEAD + 100))
    for i in range(4):
        rec = record(f"b{i}", nbytes=99)
        db.add(rec)
        finish(db, rec)
    why = db.culled("b0")
    assert why and "bytes of records" in why and "--record-bytes" in why
    assert "--db sqlite" in why and db.culled("b3") is None


def test_culled_ids_of_new_id_shape_are_held_as_runs():
    ids = records._IdSet()
    prefix = "0123456789abcdef-"
    order = list(range(1000))
    order[10:20] = reversed(order[10:20])          # finished a little out of order
    for n in order:
        ids.add(prefix + format(n, "x"))
        ids.add(prefix + format(n, "x"))           # twice: no change
    assert len(ids) == 1                           # one run of 1000 ids
    assert all(prefix + format(n, "x") in ids for n in range(1000))
    for absent in (prefix + format(1000, "x"), "fedcba9876543210-0", prefix + "0x10",
                   prefix + "A", prefix + "-1", "plain"):
        assert absent not in ids
    ids.add(prefix + format(1002, "x"))
    assert len(ids) == 2 and prefix + format(1001, "x") not in ids
    ids.add(prefix + format(1001, "x"))            # starts the second run earlier
    assert len(ids) == 2 and prefix + format(1000, "x") not in ids
    ids.add(prefix + format(1000, "x"))            # joins the two runs
    assert len(ids) == 1 and all(prefix + format(n, "x") in ids for n in range(1003))
    ids.add("a client's own id")
    assert "a client's own id" in ids and len(ids) == 2


def test_culled_ids_are_bounded_forgetting_the_oldest():
    ids = records._IdSet(limit=3)
    ids.add("odd")
    for n in (0, 2, 4, 6):                          # four runs of one id each
        ids.add("p-" + format(n, "x"))
    assert len(ids) == 3
    assert "odd" not in ids and "p-0" not in ids   # the oldest went first
    assert all(f"p-{n}" in ids for n in (2, 4, 6))


def test_nodb_and_sqlitedb_cull_nothing(tmp_path):
    nodb = records.NoDB()
    sql = records.SQLiteDB(str(tmp_path / "tasks.db"))
    for i in range(300):
        for db in (nodb, sql):
            rec = record(f"s{i}", nbytes=10_000)
            db.add(rec)
            finish(db, rec)
    assert len(sql) == 300 and sql.get("s0")["result_parts"] == [b"r"]
    assert sql.culled("s0") is None
    # NoDB dropped each as it finished, by no limit: it says so (its ids remembered)
    assert "--db none" in nodb.culled("s0") and nodb.culled("never-here") is None
    sql.close()


def test_backlogs_keep_a_clients_messages_in_order_and_say_when_to_hold_and_release():
    """What waits for a client whose pipe is full goes after it in order, none dropped;
    past the bound its tasks are to be held, at half of it released; a client gone has
    its queue dropped, as a ROUTER drops a message to it; retries back off while stuck."""
    room = {"a": 0, "b": 10}           # how many messages each pipe takes now
    got = {"a": [], "b": []}

    def send(ident, frames):
        if ident == "gone":
            return None
        if not room[ident]:
            return False
        room[ident] -= 1
        got[ident].append(frames[0])
        return True

    b = records.Backlogs(send, bound=250, most_s=1.6)
    msg = [bytes(100)]
    assert [b.deliver("a", [bytes([i]) + bytes(99)]) for i in range(4)] == \
        [False, False, True, False]   # 300 bytes waiting: past 250, said once
    assert not b.deliver("b", msg) and got["b"] == [msg[0]] and "b" not in b.queues
    assert b.retry_at == 0.0   # a new queue: tried at the next pass
    waits = []
    for now in range(5):
        assert b.retry(now) == []
        waits.append(round(b.retry_at - now, 6))
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6]   # backing off while nothing moves
    room["a"] = 3
    assert b.retry(10) == ["a"] and b.retry_at == 10.1   # 100 bytes left: released
    assert b.deliver("a", [bytes([9])]) is False   # after those waiting, not before
    room["a"] = 10
    assert b.retry(11) == [] and not b.queues
    assert [f[0] for f in got["a"]] == [0, 1, 2, 3, 9]
    assert [b.deliver("gone", msg) for _ in range(2)] == [False, False]   # dropped at once
    assert not b.queues
