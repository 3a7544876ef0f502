"""See the cluster while it works: ``python -m minipar.top``, ``rc.status()``.

A monitor in the spirit of htop, for a terminal over plain ssh (stdlib ``curses``, no new
dependency). It is a client of the controller like any other; everything it shows comes
from one ``status`` query per refresh, answered from what the hub tracks anyway::

    engine receiver thread ── "usage" every USAGE_PERIOD_S ──▶ controller hub loop
      (CPU time, resident memory,                              engines, records, Tally
       running msg_id, name, start)                                  │
                                                       "status" query │ snapshot (a header)
    python -m minipar.top / rc.status() ◀─────────────────────────────┘

What each side does, and what it costs:

- an engine's receiver thread sends ``usage`` (``process_usage()``) every
  ``engine.USAGE_PERIOD_S``, with the request it runs now (msg_id, the function's
  ``__name__`` or the request kind, and when it started). Nothing is sent per task.
- the controller keeps the last report in the engine's dict (``on_usage``) and counts
  finished requests in a ``Tally``: one dict update per request, and failures in a short
  ring. ``snapshot(controller, now)`` builds the answer to a ``status`` query (and
  ``queue_status`` that to ``rc.queue_status()``).
- ``rc.status()`` returns the snapshot as a ``Status`` (a dict with a text ``repr`` and
  an HTML table for Jupyter); ``python -m minipar.top`` shows it, full screen, every
  ``--interval`` seconds, or prints it once with ``--once`` (its lines cut to $COLUMNS, else
  the terminal's width; ``--json``: as JSON).

The snapshot (``--once --json`` prints exactly this)::

    time            the controller's clock when it answered (seconds since the epoch)
    controller      {"host", "pid", "url", "uptime_s"}
    engines_alive   engines registered now
    engines_awaited engines of before a --reuse restart that it waits for (2 liveness
                    periods), not registered again yet
    engines_lost    engines declared dead (missed heartbeats), or awaited after a restart
                    and not back by its grace's end, and not back since
    engines_stopped engines that unregistered (shut down) and are not back since
    queued          requests waiting: in the scheduler, sent to a busy engine and
                    queued there behind the one it runs, or held for an awaited engine
    running         requests running now (one per busy engine)
    done            requests finished ok since the controller started (the text's "ok":
                    an engine row's done counts failures too)
    failed          requests finished otherwise (error, aborted, timeout, engine lost...)
    rate            requests finished per second over the last RATE_WINDOW_S (10) s
    per_second      requests finished in each of the last WINDOW_S (60) whole seconds,
                    oldest first (the sparkline)
    engines         one row per engine, by id:
                      id, host, pid,
                      state        "idle", "busy", "awaited", "lost" or "stopped"
                      task         what it runs: the function's name ("StringTask" for
                                   a classic one), the first line of the code an execute
                                   runs, or the request kind ("push", "execute"...); None
                                   when idle or not known yet
                      msg_id       the request it runs (None when idle or not known yet)
                      running_s    for how long it has run it (None when it started after
                                   the engine's last report: then less than report_age_s)
                      queued       requests sent to it, waiting behind the running one
                      done         requests it answered (failures included)
                      failed       requests that ended in an error on it, and failed
                                   tries of retried ones (both kept for its id: an
                                   engine back after being lost goes on)
                      cpu_percent  CPU used over the last report period (100 = one core)
                      rss_bytes    resident memory
                      report_age_s how old its last usage report is (None: none yet)
                      lost_s       (lost / stopped rows) how long ago it went (an
                                   awaited one: since the grace ended)
    failures        the last RECENT_FAILURES failures, oldest first:
                      msg_id, engine, ename, evalue (its first line), completed (time)

The monitor survives a controller restart (``Monitor``): the Client reconnects by itself
to one started with ``--reuse``, and one started anew (another pid in the connection file)
gets a new Client.
"""

import argparse
import collections
import contextlib
import functools
import html
import json
import locale
import logging
import math
import os
import shutil
import sys
import textwrap
import time

from . import errors, protocol
from .records import PENDING, _header

log = logging.getLogger(__name__)

WINDOW_S = 60          # the sparkline's span, and how long per-second counts are kept
RATE_WINDOW_S = 10     # the span of `rate`; 5..30 is reasonable
RECENT_FAILURES = 20   # failures the controller keeps for the monitor
SHOWN_FAILURES = 5     # the newest of them that rc.status()'s text and HTML show
LOST_KEPT = 256        # lost / stopped engines remembered (oldest forgotten first)
WAIT_S = 60.0          # how long the monitor waits for a silent controller; as the Client's
                       # RECONNECT_TIMEOUT_S, 10..300 is reasonable

IDLE, BUSY, AWAITED, LOST, STOPPED = "idle", "busy", "awaited", "lost", "stopped"

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------- engine side

def process_usage():
    """This process's CPU time (user + system, all threads), resident memory (bytes) and
    a monotonic clock to measure the CPU % against: {"cpu_s", "rss", "clock_s"}."""
    t = os.times()
    usage = {"cpu_s": t.user + t.system, "clock_s": t.elapsed}
    try:
        with open("/proc/self/statm", "rb") as f:
            usage["rss"] = int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):   # not Linux: the peak, the best stdlib has
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        usage["rss"] = peak if sys.platform == "darwin" else peak * 1024
    return usage


# ---------------------------------------------------------------- controller side

def _number(v):
    return type(v) in (int, float)


# Tasks waiting this long with no engine ever registered make the controller say so, once:
# a user who forgot to start engines sees why nothing happens. 5..60 is reasonable.
NO_ENGINES_SAY_S = 10.0


def say_if_no_engines(controller, now):
    """Each heartbeat (hub loop): log once that tasks have waited NO_ENGINES_SAY_S while no
    engine ever registered with this controller, and where engines are to connect."""
    c, tally = controller, controller.tally
    if c.engines or tally.lost or tally.waiting_since is math.inf:
        return
    waiting = c.scheduler.status()["unassigned"]
    if not waiting or tally.waiting_since is None:
        tally.waiting_since = now if waiting else None
    elif now - tally.waiting_since >= NO_ENGINES_SAY_S:
        tally.waiting_since = math.inf   # said
        log.warning("%d task(s) waited %.0f s and no engine has registered yet: start engines "
                    "(`python -m %s.engine --file %s`, or a Cluster); an engine started "
                    "elsewhere must reach %s", waiting, NO_ENGINES_SAY_S, __package__,
                    c.engine_file, protocol.url(c.info, "engine"))


class Tally:
    """What the controller counts for ``status`` (executes in the hub loop).

    ``finished[(second, ok)]`` counts the requests finished in each second, ok or not (a
    bool, so any status an engine sends is a valid key): the hub's only work per request.
    ``prune(time.time())`` (each heartbeat) folds those older than WINDOW_S into ``totals``.
    ``failed(rec, header, ok)`` (failures, and requests tried more than once) counts each
    failed try on its engine and keeps the last RECENT_FAILURES; ``lost`` the engines
    gone, by id.
    """

    def __init__(self, now):
        self.started = now
        self.finished = collections.defaultdict(int)   # (int second, ok) -> requests
        self.totals = collections.Counter()           # ok -> requests, before those
        self.failures = collections.deque(maxlen=RECENT_FAILURES)
        self.failed_by_engine = collections.Counter()  # engine id -> tries failed there
        self.lost = {}                                # engine id -> its last row, oldest first
        self.waiting_since = None   # since when tasks wait with no engine: say_if_no_engines
        self.grace_ended = now      # when a --reuse restart's grace ended (the controller)

    def prune(self, now):
        oldest = int(now) - WINDOW_S
        for key in [k for k in self.finished if k[0] < oldest]:
            self.totals[key[1]] += self.finished.pop(key)

    def failed(self, rec, header, ok=False):
        # A load-balanced request lists its tries, an engine's for each: a try that failed
        # counts on that engine even if a retry then succeeded elsewhere, so an engine that
        # fails everything it is given (a module missing there) shows it
        tries = rec.get("attempts") or [{"engine": rec.get("engine"), "status": None}]
        for t in tries:
            if t["status"] != protocol.OK and t["engine"] is not None:
                self.failed_by_engine[t["engine"]] += 1
        if ok:
            return
        eid = rec.get("engine")
        evalue = str(header.get("evalue") or "").strip().splitlines()
        self.failures.append({"msg_id": rec["msg_id"], "engine": eid,
                              "ename": str(header.get("ename") or rec.get("status")),
                              "evalue": evalue[0][:200] if evalue else "",
                              "completed": rec.get("completed")})

    def engine_lost(self, engine, died, now):
        eid = engine["id"]
        self.lost.pop(eid, None)
        self.lost[eid] = {"id": eid, "host": engine.get("host"), "pid": engine.get("pid"),
                          "state": LOST if died else STOPPED, "at": now,
                          "done": engine.get("completed", 0)}
        while len(self.lost) > LOST_KEPT:
            del self.lost[next(iter(self.lost))]

    def per_second(self, now):
        """Requests finished in each of the last WINDOW_S whole seconds, oldest first."""
        end = int(now)
        counts = collections.Counter()
        for (second, _), n in self.finished.items():
            counts[second] += n
        return [counts[s] for s in range(end - WINDOW_S, end)]

    def outcomes(self):
        """{True: requests finished ok, False: the others} since the controller started."""
        counts = collections.Counter(self.totals)
        for (_, ok), n in self.finished.items():
            counts[ok] += n
        return counts


def on_usage(engine, header, now):
    """Keep an engine's usage report in its dict (hub loop); a malformed one is ignored."""
    cpu, rss, clock = header.get("cpu_s"), header.get("rss"), header.get("clock_s")
    if not (_number(cpu) and _number(rss) and _number(clock)):
        return
    last = engine.get("usage") or {}
    percent = last.get("cpu_percent")
    if _number(last.get("clock_s")) and clock > last["clock_s"]:
        percent = max(0.0, 100.0 * (cpu - last["cpu_s"]) / (clock - last["clock_s"]))
    task, name, since = header.get("task"), header.get("name"), header.get("since")
    running = isinstance(task, str) and _number(since)
    name = str(name)[:80] if running and name is not None else None
    engine["usage"] = {"at": now, "cpu_s": cpu, "clock_s": clock, "rss": rss,
                       "cpu_percent": percent, "task": task if running else None,
                       "name": name, "since": since if running else None,
                       "last_name": name or last.get("last_name")}


def _running(controller, usage):
    """What an engine runs, by name: for code sent by ``execute`` its first line, read from
    the request's header (in a class, the ``while True:`` that holds an engine up shows as
    such, not as one more "execute"); else the function's name or the request kind."""
    rec = controller.db.get(usage["task"]) if usage["name"] == protocol.EXECUTE else None
    if rec is None:
        return usage["name"]
    code = str(_header(rec).get("code") or "")
    return next((line.strip()[:80] for line in code.splitlines() if line.strip()),
                usage["name"])


def snapshot(controller, now):
    """The answer to a ``status`` query, from the controller's state (hub loop): plain
    data, as the module docstring lists it."""
    c, tally = controller, controller.tally

    def new_row(eid, engine, state, done, usage):
        return {"id": eid, "host": engine.get("host"), "pid": engine.get("pid"),
                "state": state, "task": None, "msg_id": None, "running_s": None,
                "queued": 0, "done": done, "failed": tally.failed_by_engine[eid],
                "cpu_percent": usage.get("cpu_percent"), "rss_bytes": usage.get("rss"),
                "report_age_s": now - usage["at"] if usage else None}

    rows = []
    queued, running = c.scheduler.status()["unassigned"], 0
    for eid, e in sorted(c.engines.items()):
        outstanding = e["outstanding"]
        usage = e.get("usage") or {}
        row = new_row(eid, e, IDLE, e["completed"], usage)
        if outstanding:
            running += 1
            queued += len(outstanding) - 1
            row.update(state=BUSY, queued=len(outstanding) - 1)
            if usage.get("task") in outstanding:
                row.update(task=_running(c, usage), msg_id=usage["task"],
                           running_s=max(0.0, now - usage["since"]))
            else:   # it started another since its last report: most often the same function
                row["task"] = usage.get("last_name")
        rows.append(row)
    held = c._held or {}   # a --reuse restart's grace: requests for the engines not back yet
    for eid in sorted({*c._before, *held}):
        n = sum(rec["status"] == PENDING for rec in held.get(eid, ()))
        queued += n
        row = new_row(eid, c._before.get(eid, {}), AWAITED, 0, {})
        # not back by the grace's end: lost to the user, as an engine that missed heartbeats
        rows.append(dict(row, queued=n) if c._held is not None else
                    dict(row, state=LOST, lost_s=now - tally.grace_ended))
    for eid, gone in tally.lost.items():
        if eid not in c.engines:
            rows.append(dict(new_row(eid, gone, gone["state"], gone["done"], {}),
                             lost_s=now - gone["at"]))
    rows.sort(key=lambda r: r["id"])
    counts = tally.outcomes()
    per_second = tally.per_second(now)
    states = collections.Counter(r["state"] for r in rows)
    return {"time": now,
            "controller": {"host": c.info["host"], "pid": os.getpid(),
                           "url": protocol.url(c.info, "client"),
                           "uptime_s": now - tally.started},
            "engines_alive": len(c.engines), "engines_awaited": states[AWAITED],
            "engines_lost": states[LOST],
            "engines_stopped": states[STOPPED], "queued": queued, "running": running,
            "done": counts[True], "failed": counts[False],
            "rate": sum(per_second[-RATE_WINDOW_S:]) / RATE_WINDOW_S,
            "per_second": per_second, "engines": rows, "failures": list(tally.failures)}


def queue_status(controller, header, held):
    """The answer to a ``queue_status`` query (hub loop), as ipyparallel's: for each engine
    (or those in `targets`), 'queue' (direct requests on it), 'tasks' (load-balanced ones)
    and 'completed'; the tasks 'unassigned'; the controller's counters ('stats'). With
    `verbose`, the msg_ids rather than their counts. After a --reuse restart, an engine not
    registered again yet that requests wait for (`held`: {id: [msg_id]}) has them as its
    'queue', and 'registered': False."""
    c, status = controller, controller.scheduler.status()
    per = {}
    for eid, e in c.engines.items():
        tasks = status["engines"].get(eid, {}).get("queue", 0)
        per[eid] = {"queue": max(0, len(e["outstanding"]) - tasks), "tasks": tasks,
                    "completed": e["completed"]}
    for eid, ids in held.items():
        per[eid] = {"queue": len(ids), "tasks": 0, "completed": 0, "registered": False}
    targets = header.get("targets")
    if targets is not None:
        per = {eid: v for eid, v in per.items() if eid in targets}
    unassigned = status["unassigned"]
    if header.get("verbose"):
        per, unassigned = _queue_ids(c, per, held), c.scheduler.unassigned()
    stats = dict(c.stats, **{"dropped_" + k.replace(" ", "_"): v
                             for k, v in c.session.dropped.items()})
    return {"engines": per, "unassigned": unassigned, "records": len(c.db), "stats": stats}


def _queue_ids(c, per, held):
    """queue_status(verbose=True)'s lists for the engines in `per` (and those `held` waits
    for): a scan of the records for 'completed' (those purged or culled are gone from it),
    so only asked for by hand, never on the task path."""
    done = collections.defaultdict(list)
    for rec in c.db.records():
        if rec["status"] != PENDING and rec["engine"] in per:
            done[rec["engine"]].append(rec["msg_id"])
    lists = {}
    for eid in per:
        tasks = c.scheduler.outstanding(eid)
        lb, queue = set(tasks), held[eid] if eid in held else c.engines[eid]["outstanding"]
        lists[eid] = {**per[eid], "queue": [m for m in queue if m not in lb], "tasks": tasks,
                      "completed": done[eid]}
    return lists


# ---------------------------------------------------------------- the snapshot, shown

_SPARKS = "▁▂▃▄▅▆▇█"
_SPARKS_ASCII = "_.-:=+*#"
# Control characters (C0, DEL, C1) as \xNN: a task's error text, or a function's or host's
# name, may hold escape sequences, which would recolour or clear the watching terminal
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
# (name, width, what it shows: for --help and the HTML table's tooltips): 78 columns in
# all, for an 80-column terminal
_COLUMNS = (
    ("ID", 3, "the engine's id"),
    ("HOST", 10, "the machine it runs on"),
    ("PID", 7, "its process id"),
    ("STATE", 7, "idle, busy, awaited (after a restart, not back yet), lost (missed its "
                 "heartbeats, or not back after a restart) or stopped (shut down)"),
    ("TASK", 12, "what it runs: function name, first line of executed code, or request kind"),
    ("FOR", 6, "how long it has run its task, or has been lost or stopped (<N: under N)"),
    ("Q", 3, "requests queued on it, behind the one it runs"),
    ("DONE", 6, "requests it answered, failures included (and each try of a retried one)"),
    ("FAIL", 4, "requests that ended in an error on it, and failed tries of retried ones"),
    ("CPU%", 4, "its CPU use over its last report, about a second (100 = one core)"),
    ("RSS", 6, "its resident memory (K, M, G: 1024, 1024^2, 1024^3 bytes)"),
)


# What the header's counts are, for --help: its "ok" is not the rows' DONE
_HEADER_LEGEND = (
    "header:\n"
    "  tasks  requests queued (in the scheduler, or behind an engine's running one),\n"
    "         running, ok (finished without error) and failed (an error, an abort, a time\n"
    "         limit, a lost engine...), each once however often it was tried: ok is not\n"
    "         the rows' DONE, which counts failures and every try\n\n")


def sparkline(values, ascii=False):
    ramp = _SPARKS_ASCII if ascii else _SPARKS
    top = max(values, default=0)
    if not top:
        return ramp[0] * len(values)
    return "".join(ramp[min(len(ramp) - 1, v * len(ramp) // (top + 1))] if v else ramp[0]
                   for v in values)


def _duration(s):
    if s is None:
        return ""
    if s < 10:
        return f"{s:.1f}s"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def _bytes(n):
    if n is None:
        return ""
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if not unit else f"{n:.1f}{unit}"
        n /= 1024


def _cells(row):
    cpu = row.get("cpu_percent")
    gone = row.get("lost_s")   # a lost or stopped row: since when
    ran = _duration(row.get("running_s") if gone is None else gone)
    if not ran and row["state"] == BUSY and row.get("report_age_s") is not None:
        # it started what it runs after its last report: less than that report's age
        ran = "<" + _duration(row["report_age_s"])
    return (str(row["id"]), str(row.get("host") or "?").translate(_ESCAPED),
            str(row.get("pid") or "?"), row["state"],
            str(row.get("task") or "-").translate(_ESCAPED), ran,
            str(row.get("queued") or ""), str(row.get("done", "")), str(row.get("failed", "")),
            "" if cpu is None else f"{cpu:.0f}", _bytes(row.get("rss_bytes")))


def _line(cells):
    out = []
    for (name, width, _), cell in zip(_COLUMNS, cells):
        cell = cell if len(cell) <= width else cell[:width - 1] + "~"
        # names left, figures right, as top does
        out.append(cell.ljust(width) if name in ("HOST", "STATE", "TASK") else cell.rjust(width))
    return " ".join(out)


def sections(snap, ascii=False, failures=SHOWN_FAILURES):
    """(head lines, the table's column line, one line per engine, tail lines)."""
    c = snap["controller"]
    clock = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
    head = [
        f"minipar top {clock}   controller pid {c['pid']} on {c['host']}, up "
        f"{_duration(c['uptime_s'])}, {c['url']}".translate(_ESCAPED),
        f"engines: {snap['engines_alive']} alive"
        + (f", {snap['engines_awaited']} awaited" if snap.get("engines_awaited") else "")
        + f", {snap['engines_lost']} lost"
        + (f", {snap['engines_stopped']} stopped" if snap["engines_stopped"] else "")
        + f"   tasks: {snap['queued']} queued, {snap['running']} running, "
        f"{snap['done']} ok, {snap['failed']} failed",
        f"rate {snap['rate']:.1f}/s  {WINDOW_S}s |{sparkline(snap['per_second'], ascii)}|",
        "",
    ]
    columns = _line([name for name, _, _ in _COLUMNS])
    rows = [_line(_cells(r)) for r in snap["engines"]]
    tail = []
    if snap["failures"] and failures:
        tail = ["", _failures_heading(snap["failures"], failures) + ":"]
        for f in snap["failures"][-failures:]:
            tail.append(f"  {f['msg_id']}  {_where(f)}  {f['ename']}: {f['evalue']}"
                        .translate(_ESCAPED))
    if ascii:   # a host, a task's name or an error's text may hold any character: escaped
        head, rows, tail = ([line.encode("ascii", "backslashreplace").decode("ascii")
                             for line in lines] for lines in (head, rows, tail))
    return head, columns, rows, tail


def _failures_heading(failures, shown):
    """"recent failures", and how many older ones the snapshot holds that are not shown."""
    older = len(failures) - shown
    return "recent failures" + (f" ({older} older not shown: rc.status()['failures'] has "
                                "them)" if older > 0 else "")


def _where(failure):
    """Where a failure happened: its engine, or none (aborted, or its dependencies unmet,
    before the scheduler gave it to one)."""
    return "no engine" if failure["engine"] is None else f"engine {failure['engine']}"


def text(snap, ascii=False, failures=SHOWN_FAILURES):
    head, columns, rows, tail = sections(snap, ascii, failures)
    return "\n".join([*head, columns, *rows, *tail])


class Status(dict):
    """``rc.status()``: the snapshot (keys in this module's docstring), shown as
    ``python -m minipar.top --once`` shows it (in ASCII where stdout or the locale takes
    no UTF-8, as there), and as an HTML table in Jupyter."""

    def __repr__(self):
        return text(self, ascii=_ascii())

    def _repr_html_(self):
        head, _, _, _ = sections(self, failures=0)
        e = html.escape
        cells = "".join(f'<th title="{e(what)}">{e(name)}</th>' for name, _, what in _COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in _cells(r)) + "</tr>"
                       for r in self["engines"])
        fails = "".join(f"<li><code>{e(f['msg_id'])}</code> {e(_where(f))}: "
                        f"<b>{e(f['ename'])}</b>: {e(f['evalue'])}</li>"
                        for f in self["failures"][-SHOWN_FAILURES:])
        heading = e(_failures_heading(self["failures"], SHOWN_FAILURES))
        return ("<div>" + "<br>".join(e(line) for line in head if line)
                + f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
                + (f"<p>{heading}:</p><ul>{fails}</ul>" if fails else "") + "</div>")


# ---------------------------------------------------------------- the monitor

class Gone(errors.MiniparError):
    """The controller went away for good (the monitor exits saying so)."""


class Monitor:
    """Asks the controller for a snapshot; finds it again after a restart.

    ``poll()`` returns a Status, or None when the controller did not answer (``note``
    says why, for the view); it raises ``Gone`` when the connection file was removed
    (the controller stopped) or nothing answered for `wait_s` seconds. Until a first
    answer, a missing connection file is a controller not started yet: waited for.
    """

    def __init__(self, url_file, timeout=2.0, wait_s=WAIT_S):
        self.url_file = url_file
        self.timeout = timeout
        self.wait_s = wait_s
        self.rc = None
        self.note = ""
        self._pid = None
        self._last_ok = time.monotonic()

    def connect(self, timeout=None):
        """Connect a Client, waiting `timeout` s (default: the monitor's) for the answer."""
        from .client import Client   # here: an engine imports this module too

        self.rc = Client(self.url_file, timeout=self.timeout if timeout is None else timeout,
                         reconnect_timeout=self.wait_s)
        self._pid = self.rc.info.get("pid")

    def close(self):
        if self.rc is not None:
            self.rc.close()
            self.rc = None

    def poll(self):
        now = time.monotonic()
        try:
            if self.rc is None:
                self.connect()
            snap = self.rc.status()
        except (errors.MiniparError, OSError) as e:   # TimeoutError is an OSError
            return self._missed(now, e)
        self._last_ok = now
        self.note = ""
        return snap

    def _missed(self, now, error):
        if not os.path.exists(self.url_file) and self._pid is not None:
            raise Gone(f"the controller stopped: its connection file {self.url_file} is gone")
        try:
            info = protocol.read_connection_file(self.url_file)
        except errors.MiniparError as e:   # most often stale: its controller is not running
            info, error = {}, e
        pid = info.get("pid")
        if self.rc is not None and pid is not None and pid != self._pid:
            # another controller (not started with --reuse: maybe other ports and key)
            self.close()
        silent = now - self._last_ok
        where = protocol.url(info, "client") if info.get("ports") else self.url_file
        if silent > self.wait_s and self._pid is None:   # none ever answered: say why
            raise Gone(f"{error} (waited {silent:.0f} s)")
        if silent > self.wait_s:
            raise Gone(f"the controller at {where} has not answered for {silent:.0f} s: it "
                       "is gone; restart it (with --reuse to keep its address) and run "
                       "this again")
        if self._pid is None and not os.path.exists(self.url_file):
            self.note = (f"no connection file yet (waiting up to {self.wait_s:.0f} s for a "
                         f"controller to write it): {self.url_file}")
        else:
            self.note = (f"no answer from the controller at {where} for {silent:.0f} s "
                         f"(waiting up to {self.wait_s:.0f} s): {error}")
        return None


def _view(stdscr, monitor, interval, ascii):
    """The full-screen view (curses.wrapper restores the terminal however it ends)."""
    import curses

    with contextlib.suppress(curses.error):
        curses.curs_set(0)
        curses.use_default_colors()
    snap, offset, next_poll = None, 0, 0.0
    while True:
        if time.monotonic() >= next_poll:
            snap = monitor.poll() or snap
            next_poll = time.monotonic() + interval
        height, width = stdscr.getmaxyx()
        lines = _screen(snap, monitor.note, height, width, offset, ascii)
        stdscr.erase()
        for y, (line, bold) in enumerate(lines[:height]):
            with contextlib.suppress(curses.error):
                stdscr.addnstr(y, 0, line, max(1, width - 1),
                               curses.A_REVERSE if bold else curses.A_NORMAL)
        stdscr.refresh()
        stdscr.timeout(max(10, int((next_poll - time.monotonic()) * 1000)))
        key = stdscr.getch()
        if key in (ord("q"), ord("Q")):
            return
        step = {curses.KEY_DOWN: 1, ord("j"): 1, curses.KEY_UP: -1, ord("k"): -1,
                curses.KEY_NPAGE: height // 2, curses.KEY_PPAGE: -(height // 2)}.get(key, 0)
        rows = len(snap["engines"]) if snap else 0
        offset = max(0, min(rows - 1, offset + step))


def _screen(snap, note, height, width, offset, ascii):
    """[(line, highlighted)] for a screen of `height` lines, engines from `offset`. The
    last is the footer ("q quits..."), there at any height: above it, the header, the
    column names, the engines and the failures. On a short screen the failures give way
    first (the oldest first; with no room for one, the heading goes too), then the
    header's blank line, the engines but one, and the header's end. The note (why the
    controller does not answer) is wrapped to `width`: its end says why."""
    note = textwrap.wrap(note, max(20, width - 3), initial_indent="! ",
                         subsequent_indent="  ")
    room = max(0, height - 1)   # above the footer
    if snap is None:
        lines = ["minipar top - waiting for the controller...", *note]
        return [(line, False) for line in lines[:room]] + [("q quits", False)]
    head, columns, rows, tail = sections(snap, ascii, RECENT_FAILURES)   # as many as fit
    if note:
        head[-1:] = note
    elif len(head) + 1 + len(rows) - offset > room:   # the blank line, for an engine's
        head.pop()
    above = ([(line, False) for line in head] + [(columns, True)])[:room]
    fit = room - len(above)
    shown = rows[offset:offset + fit]
    more = len(rows) - offset - len(shown)
    left = fit - len(shown)   # the failures' lines: a blank line, a heading, the newest
    tail = tail[:2] + tail[2:][max(0, len(tail) - left):] if left > 2 else []
    if not rows:
        footer = "q quits   no engines registered"
    elif not shown:
        footer = f"q quits   {len(rows)} engines: a taller terminal shows them"
    else:
        footer = (f"q quits   arrows/PgUp/PgDn scroll   engines {offset + 1}-"
                  f"{offset + len(shown)} of {len(rows)}"
                  + (f" ({more} more below)" if more else ""))
    return above + [(line, False) for line in [*shown, *tail, footer]]


@contextlib.contextmanager
def _note(monitor):
    """Inside, the Client's log lines go to the monitor's note: the screen is curses'."""
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: setattr(monitor, "note", record.getMessage())
    logger = logging.getLogger(__package__)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv=None):
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name if __spec__ else 'top'}",
        description="Watch a minipar cluster at work, as htop does a machine: engines,\n"
                    "what each runs, tasks queued / running / ok / failed. q quits.",
        epilog=_HEADER_LEGEND + "columns:\n"
        + "\n".join(f"  {name:<6} {what}" for name, _, what in _COLUMNS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", help="the controller's minipar-client.json")
    p.add_argument("--profile", type=protocol.profile_name,
                   help="profile name (~/.minipar/profile_NAME)")
    p.add_argument("--profile-dir", help="profile folder (overrides --profile)")
    p.add_argument("--interval", type=functools.partial(protocol.seconds, positive=True),
                   default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot as text and exit (lines cut to $COLUMNS, else "
                        "to a terminal's width)")
    p.add_argument("--json", action="store_true",
                   help="print one snapshot as JSON and exit (implies --once; fields: see "
                        "the module docstring)")
    p.add_argument("--wait", type=protocol.seconds, metavar="S",
                   help="seconds to wait for the controller before exiting: with --once, for "
                        "its connection file and its answer (default: --interval, 1 to 5); "
                        f"live, for one not started yet or that stopped answering (default "
                        f"{WAIT_S:.0f})")
    args = p.parse_args(argv)
    url_file = args.file or os.path.join(protocol.profile_dir(args.profile, args.profile_dir),
                                         "security", protocol.CLIENT_FILE)
    once = args.once or args.json
    try:   # the terminal's, for _ascii(); curses draws UTF-8 only with the locale set
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:   # LANG names a locale not installed here: C's, in ASCII
        pass
    if not once and not (sys.stdout.isatty() and sys.stdin.isatty()):
        # an error of where it runs, not of its arguments: one line and status 1, as top's
        # others (argparse's usage and status 2 are for a wrong command line)
        which = "stdout" if not sys.stdout.isatty() else "stdin"
        print(f"{p.prog}: the live view needs a terminal, and its {which} is none: run it in "
              "a terminal, or print one snapshot with --once (--once --json for a script)",
              file=sys.stderr)
        return 1
    monitor = Monitor(url_file, timeout=max(1.0, min(args.interval, 5.0)),
                      wait_s=WAIT_S if args.wait is None else args.wait)
    try:
        if once:   # --wait bounds it all: the connection file, the connection, the answer
            wait_s = monitor.timeout if args.wait is None else args.wait
            deadline = time.monotonic() + wait_s
            protocol.wait_for_file(url_file, wait_s, log.info)
            monitor.connect(timeout=round(max(0.1, deadline - time.monotonic()), 1))
            snap = monitor.rc.status(timeout=round(max(0.1, deadline - time.monotonic()), 1))
            try:
                print(json.dumps(snap, indent=2) if args.json
                      else _fit(text(snap, ascii=_ascii())))
                sys.stdout.flush()
            except BrokenPipeError:   # `top --once | head -1`: the reader has what it wanted;
                # what is left goes nowhere, or Python's flush at exit would fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        # a file missing, or stale (its controller killed, not started again yet): the view
        # waits for a controller (up to --wait); a file wrong otherwise stops it here
        if not protocol._missing_or_stale(url_file):
            monitor.connect()
        import curses

        with _note(monitor):
            try:
                curses.wrapper(_view, monitor, args.interval, _ascii())
            except curses.error as e:   # most often a TERM that terminfo does not know
                print(f"{p.prog}: the live view cannot drive this terminal (TERM="
                      f"{os.environ.get('TERM', '')!r}: {e}): set TERM to one this machine "
                      "knows (`TERM=xterm-256color python -m minipar.top`), or use --once",
                      file=sys.stderr)
                return 1
        return 0
    except (errors.MiniparError, OSError) as e:
        # --once waits but a refresh interval unless told: a controller busy, far or being
        # debugged may answer later
        longer = (f"; --once waited {monitor.timeout:g} s: wait longer with --wait S"
                  if once and args.wait is None and isinstance(e, TimeoutError) else "")
        print(f"{p.prog}: {e}{longer}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # live, it quits as q does; --once got nothing: a script stops
        if not once:
            return 0
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        monitor.close()


def _fit(text):
    """Each line of `text` cut to --once's width ("~" ends a line cut, as it does a cell),
    as the live view cuts its lines to the screen's: $COLUMNS, else the terminal's, as
    shutil.get_terminal_size() (and curses) find it; none (a pipe, no COLUMNS): whole lines
    for a script or a file."""
    width = shutil.get_terminal_size((0, 0)).columns
    if width <= 0:
        return text
    return "\n".join(line if len(line) <= width else line[:width - 1] + "~"
                     for line in text.split("\n"))


def _ascii():
    """Whether to draw in ASCII only: stdout, or the terminal as the locale (set by main(),
    else Python's LC_CTYPE from the environment) names its encoding, takes no UTF-8. The
    locale too, as in the C locale Python writes UTF-8 anyway (its UTF-8 mode), which a
    terminal set so may not show nor curses draw."""
    try:
        codeset = locale.nl_langinfo(locale.CODESET)
    except AttributeError:   # Windows: no nl_langinfo (and no curses)
        codeset = "utf-8"
    encodings = (getattr(sys.stdout, "encoding", None) or "ascii", codeset)
    return any(e.lower().replace("-", "") != "utf8" for e in encodings)


if __name__ == "__main__":
    sys.exit(main())
