"""python -m minipar.top and rc.status(): against a real cluster, in a real terminal.

The live view runs in tmux (a private server, ``tmux -L``, killed at the end whatever
happens): its screen is captured while a workload runs and after it, and ``q`` must give
the shell back. ``--once --json`` is checked for exact counts, and for an engine killed
with SIGKILL showing as lost.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from .conftest import ROOT, START_TIMEOUT_S, LocalCluster, _env
from .helpers import wait_until

TIMEOUT = 120
pytestmark = pytest.mark.timeout(TIMEOUT)

PROMPT = "top-test$ "


def slow(seconds):
    import time

    time.sleep(seconds)
    return seconds


def square(x):
    return x * x


def fail(x):
    raise ValueError(f"bad input {x}\nmore detail on a second line")


def _top(cluster, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "minipar.top", "--file", cluster.client_file,
                           *args], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=timeout)


def _snapshot(cluster):
    out = _top(cluster, "--once", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tally_keeps_a_minute_of_seconds_and_totals_the_rest():
    from minipar import top

    tally = top.Tally(now=1000.0)
    tally.finished[1005, True] += 3
    tally.finished[1100, False] += 1
    tally.finished[1129, True] += 2
    tally.prune(1130.5)   # 1005 is older than a minute: folded into the totals
    assert dict(tally.finished) == {(1100, False): 1, (1129, True): 2}
    assert tally.outcomes() == {True: 5, False: 1}
    per_second = tally.per_second(1130.5)
    assert len(per_second) == top.WINDOW_S and per_second[-1] == 2 and sum(per_second) == 3


def test_text_and_html_show_every_state():
    from minipar import top

    row = {"host": "node7", "pid": 4242, "task": None, "msg_id": None, "running_s": None,
           "queued": 0, "done": 3, "failed": 1, "cpu_percent": None, "rss_bytes": None,
           "report_age_s": 0.4}
    snap = top.Status({
        "time": 0.0, "controller": {"host": "head", "pid": 1, "url": "tcp://h:1",
                                    "uptime_s": 3725.0},
        "engines_alive": 2, "engines_lost": 1, "engines_stopped": 0, "queued": 5,
        "running": 2, "done": 7, "failed": 1, "rate": 2.5, "per_second": [0] * 59 + [9],
        "engines": [dict(row, id=0, state="busy", task="fit", running_s=75.0,
                         cpu_percent=99.6, rss_bytes=3 << 30),
                    dict(row, id=1, state="busy", task="fit"),
                    dict(row, id=2, state="lost", lost_s=4.0, report_age_s=None)],
        "failures": [{"msg_id": "m1", "engine": 2, "ename": "EngineError",
                      "evalue": "engine 2 died <x>", "completed": 0.0}]})
    text = repr(snap)
    assert "up 1h02m" in text and "2 alive, 1 lost" in text and "5 queued" in text
    assert re.search(r"^\s*0 node7\s+4242 busy\s+fit\s+1m15s\s.*\b100\s+3\.0G$", text, re.M)
    assert re.search(r"^\s*1 node7\s+4242 busy\s+fit\s+<0\.4s\s", text, re.M)
    assert re.search(r"^\s*2 node7\s+4242 lost\s+-\s", text, re.M)
    assert "m1  engine 2  EngineError: engine 2 died <x>" in text
    assert all(len(line) <= 80 for line in text.splitlines()[1:7])
    assert top.sparkline([0, 1, 8]) == "▁▁█" and top.sparkline([0, 8], ascii=True) == "_#"
    html = snap._repr_html_()
    assert html.count("<tr>") == 4 and "died &lt;x&gt;" in html and "<x>" not in html


def test_status_shows_what_each_engine_runs(rc):
    """Each busy engine's row names the function it runs, for how long, its CPU and
    memory; the repr is the monitor's text and the HTML repr a table."""
    ar = rc.load_balanced_view().map_async(slow, [3] * 4)

    def all_busy():
        s = rc.status()
        rows = s["engines"]
        return s if (len(rows) == 4 and all(r["state"] == "busy" and r["task"] == "slow"
                                            and r["running_s"] is not None
                                            and r["rss_bytes"] for r in rows)) else None

    s = wait_until(all_busy, 15, "four engines busy running `slow`, with their memory")
    assert s["running"] == 4 and s["engines_alive"] == 4
    assert all(r["running_s"] < 10 for r in s["engines"])
    assert "slow" in repr(s) and "busy" in repr(s)
    html = s._repr_html_()
    assert "<table>" in html and html.count("<tr>") == 5
    ar.get(30)
    s = wait_until(lambda: (lambda s: s if s["done"] == 4 else None)(rc.status()), 10,
               "the four tasks counted as done")
    assert s["running"] == 0 and {r["state"] for r in s["engines"]} == {"idle"}


def test_once_json_counts_and_a_killed_engine(cluster):
    rc = cluster.rc
    view = rc.load_balanced_view()
    good = [view.apply_async(square, i) for i in range(20)]
    bad = [view.apply_async(fail, i) for i in range(5)]
    assert [a.get(30) for a in good] == [i * i for i in range(20)]
    for a in bad:
        with pytest.raises(Exception):
            a.get(30)
    snap = _snapshot(cluster)
    assert (snap["done"], snap["failed"], snap["queued"], snap["running"]) == (20, 5, 0, 0)
    assert snap["engines_alive"] == 4 and snap["engines_lost"] == 0
    rows = snap["engines"]
    assert [r["id"] for r in rows] == sorted(rc.ids)
    assert sum(r["done"] for r in rows) == 25 and sum(r["failed"] for r in rows) == 5
    assert {r["pid"] for r in rows} == {p.pid for p in cluster.engines}
    assert sorted(f["evalue"] for f in snap["failures"]) == [f"bad input {i}" for i in range(5)]
    assert {f["ename"] for f in snap["failures"]} == {"ValueError"}
    # per_second has whole seconds only: this one's may still be counting
    assert sum(snap["per_second"]) <= 25 and snap["controller"]["pid"] == cluster.controller.pid
    text = _top(cluster, "--once")
    assert text.returncode == 0, text.stderr
    assert "4 alive, 0 lost" in text.stdout and "20 ok, 5 failed" in text.stdout
    assert "ValueError: bad input" in text.stdout

    victim = cluster.engines[0]
    eid = next(r["id"] for r in rows if r["pid"] == victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: rc.status()["engines_lost"] == 1, 20, "the killed engine declared lost")
    snap = _snapshot(cluster)
    assert snap["engines_alive"] == 3 and snap["engines_lost"] == 1
    row = next(r for r in snap["engines"] if r["id"] == eid)
    assert row["state"] == "lost" and row["pid"] == victim.pid and row["lost_s"] >= 0
    assert (snap["done"], snap["failed"]) == (20, 5)
    # once the second they finished in is whole (the engine's death, seen at the next
    # beat, may come within it)
    wait_until(lambda: sum(_snapshot(cluster)["per_second"]) == 25, 10, "25 in per_second")
    assert re.search(rf"^\s*{eid}\s.*\blost\b", _top(cluster, "--once").stdout, re.M)


def test_an_engine_back_after_a_freeze_keeps_its_counts(local_cluster):
    """An engine declared lost (frozen past its heartbeats) that registers again, as the
    same id, keeps its row's counts: DONE as FAIL did already. Before, DONE started
    again from 0 while FAIL, counted by id, did not."""
    engine, = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    assert [view.apply_async(square, i).get(30) for i in range(6)] == [i * i for i in range(6)]
    with pytest.raises(Exception):
        view.apply_async(fail, 0).get(30)
    row, = rc.status()["engines"]
    assert (row["done"], row["failed"]) == (7, 1)
    engine.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: rc.status()["engines_lost"] == 1, 20, "the frozen engine lost")
    finally:
        engine.send_signal(signal.SIGCONT)
    back = wait_until(lambda: (lambda s: s if s["engines_alive"] == 1 else None)(
        rc.status()), 30, "the engine registered again")
    row, = back["engines"]
    assert (row["id"], row["pid"], row["state"]) == (0, engine.pid, "idle")
    assert (row["done"], row["failed"]) == (7, 1)


def test_help_says_what_each_column_counts(local_cluster):
    """--help (and, in Jupyter, each heading's tooltip) says what each column counts and
    in which unit; MEM is named RSS, the memory it shows. Before, nothing said that FOR
    is how long the task has run, Q the requests queued on the engine, or that DONE
    counts failures too (the header's "ok" does not)."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    out = _top(local_cluster, "--help")
    assert out.returncode == 0, out.stderr
    legend = {line.split()[0]: line for line in out.stdout.splitlines()[-12:] if line.strip()}
    assert list(legend) == ["columns:", "ID", "HOST", "PID", "STATE", "TASK", "FOR", "Q",
                            "DONE", "FAIL", "CPU%", "RSS"]
    assert "how long" in legend["FOR"] and "queued" in legend["Q"]
    assert "failures included" in legend["DONE"] and "100 = one core" in legend["CPU%"]
    assert "resident memory" in legend["RSS"]
    once = _top(local_cluster, "--once").stdout
    assert re.search(r"^ ID HOST .* CPU%\s+RSS$", once, re.M)
    assert '<th title="how long it has run its task' in rc.status()._repr_html_()


def test_the_header_counts_ok_where_a_row_counts_answers(local_cluster):
    """The header's count of requests that succeeded is named "ok", not "done": a row's
    DONE counts every answer, failures included, and --help says how the two differ.
    Before, the header's "3 done" stood over a row's DONE of 5 for the same requests."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    assert [view.apply_async(square, i).get(30) for i in range(3)] == [0, 1, 4]
    for i in range(2):
        with pytest.raises(Exception):
            view.apply_async(fail, i).get(30)
    out = _top(local_cluster, "--once")
    assert out.returncode == 0, out.stderr
    assert "tasks: 0 queued, 0 running, 3 ok, 2 failed" in out.stdout
    assert " done" not in out.stdout.split("\n ID ")[0]   # nowhere in the header
    assert re.search(r"^\s*0\s.*\bidle\s+-\s+5\s+2\b", out.stdout, re.M), out.stdout  # DONE, FAIL
    assert "3 ok, 2 failed" in repr(rc.status()) and "3 ok" in rc.status()._repr_html_()
    legend = _top(local_cluster, "--help").stdout
    header = legend[legend.index("header:"):legend.index("columns:")]
    assert "ok (finished without error)" in header and "DONE" in header


def test_live_footer_with_no_engines(local_cluster):
    """The live view's last line, for a controller with no engine yet, says so. Before,
    it read "engines 1-0 of 0"."""
    from minipar import top

    rc = local_cluster.client()
    footer, _ = top._screen(rc.status(), "", 40, 100, 0, False)[-1]
    assert footer == "q quits   no engines registered"
    local_cluster.start_engines(1)
    rc.wait_for_engines(1, START_TIMEOUT_S)
    footer, _ = top._screen(rc.status(), "", 40, 100, 0, False)[-1]
    assert footer.endswith("engines 1-1 of 1")


def test_a_short_terminal_keeps_the_footer(local_cluster, tmux):
    """On a terminal of a few lines the live view's last line still says that q quits,
    and which engines it shows; the failures give way first, then engines. Before, the
    footer was the first line cut: a 6-line terminal never said how to quit."""
    from minipar import top

    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    with pytest.raises(Exception):
        rc.load_balanced_view().apply_async(fail, 0).get(30)
    snap = wait_until(lambda: (lambda s: s if s["failures"] else None)(rc.status()), 10,
                      "the failure in the snapshot")
    for height in range(1, 20):
        lines = top._screen(snap, "", height, 80, 0, False)
        assert len(lines) <= height and lines[-1][0].startswith("q quits"), (height, lines)
        rows = [line for line, _ in lines if re.match(r"^\s*\d+\s", line)]
        shown = re.search(r"engines 1-(\d+) of 2", lines[-1][0])
        assert (int(shown.group(1)) if shown else 0) == len(rows), (height, lines)
    assert top._screen(snap, "", 6, 80, 0, False)[-1][0].endswith("(1 more below)")
    assert top._screen(None, "", 1, 80, 0, False) == [("q quits", False)]

    def screen():
        return tmux("capture-pane", "-p", "-t", "t")

    tmux("resize-window", "-t", "t", "-y", "6")
    tmux("send-keys", "-t", "t", f"clear; cd {ROOT} && {sys.executable} -m minipar.top --file "
         f"{local_cluster.client_file} --interval 0.3; echo top exited $?", "Enter")
    wait_until(lambda: "2 alive" in screen() and "q quits" in screen(), 30,
               "the footer on a 6-line terminal")
    tmux("send-keys", "-t", "t", "q")
    wait_until(lambda: "top exited 0" in screen(), 15, "the view ended by q")


def fails_on_engine_0(x):
    import time

    from minipar import engine

    if engine.engine_id() == 0:
        raise ImportError("No module named 'numpy' (not installed on this engine)")
    time.sleep(0.1)
    return x


def test_a_try_that_failed_counts_on_its_engine_though_a_retry_succeeded(local_cluster):
    """An engine that fails every task it is given (a module missing there) shows it in
    FAIL, though the retries succeed elsewhere and the header counts no failure. Before,
    its FAIL stayed 0 while its DONE grew: the row looked healthy."""
    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    with view.temp_flags(retries=1):
        ars = [view.apply_async(fails_on_engine_0, i) for i in range(8)]
    assert [ar.get(30) for ar in ars] == list(range(8))
    assert any(len(ar.metadata.get("attempts") or ()) > 1 for ar in ars)
    s = wait_until(lambda: (lambda s: s if s["done"] == 8 else None)(rc.status()), 10,
                   "the eight tasks counted")
    assert s["failed"] == 0 and not s["failures"]
    row0, row1 = s["engines"]
    assert row0["done"] >= 1 and row0["failed"] == row0["done"], s["engines"]
    assert row1["failed"] == 0 and row0["done"] + row1["done"] == 8 + row0["failed"]


def test_code_an_engine_is_stuck_in_shows_and_any_client_stops_it(local_cluster):
    """A student's execute stuck in a loop: its row's TASK is the code's first line (the
    teacher sees which code holds the engine up), and its msg_id stops it from the
    teacher's own client, as the README says. Before, TASK read "execute", as every
    other student's."""
    local_cluster.start_engines(2)
    student, teacher = local_cluster.client(), local_cluster.client()
    student.wait_for_engines(2, START_TIMEOUT_S)
    stuck = student[0].execute("\n  while True:   # mine\n    pass\n", block=False)
    student[1].execute("x = 1", block=True)

    def running():
        return next((r for r in teacher.status()["engines"] if r["id"] == 0 and r["msg_id"]),
                    None)

    row = wait_until(running, 15, "engine 0's row naming what it runs")
    assert (row["task"], row["msg_id"]) == ("while True:   # mine", stuck.msg_ids[0])
    assert re.search(r"^\s*0 .* busy\s+while True:~", _top(local_cluster, "--once").stdout,
                     re.M)
    assert teacher.abort(row["msg_id"]) == 1
    with pytest.raises(Exception, match="TaskAborted|aborted"):
        stuck.get(30)
    wait_until(lambda: {r["state"] for r in teacher.status()["engines"]} == {"idle"}, 15,
               "both engines idle")


def fail_in_colour():
    raise ValueError("\x1b[2J\x1b[31mscreen cleared\x07")


def test_failures_name_no_engine_and_show_no_escapes_and_engines_come_first(local_cluster):
    """What a class makes: a task whose dependency failed fails before any engine got it,
    and a student's error may hold escape sequences. The failures list says "no engine"
    for the first (before, "engine None") and shows the second's control characters as
    \\xNN, in --once as in rc.status() (before, they reached the terminal: this one
    cleared the teacher's screen). On a short screen the failures give way to the engines,
    as _screen's docstring says (before, all the engines but one gave way to them)."""
    from minipar import top

    local_cluster.start_engines(2)
    rc = local_cluster.client()
    rc.wait_for_engines(2, START_TIMEOUT_S)
    view = rc.load_balanced_view()
    for f in (fail_in_colour, fail):
        with pytest.raises(Exception):
            view.apply_async(f, *([0] if f is fail else [])).get(30)
    first = view.apply_async(fail, 1)
    with pytest.raises(Exception):
        first.get(30)
    with view.temp_flags(after=[first]), pytest.raises(Exception):
        view.apply_async(square, 2).get(30)
    snap = wait_until(lambda: (lambda s: s if len(s["failures"]) == 4 else None)(
        rc.status()), 10, "the four failures in the snapshot")
    assert [f["engine"] is None for f in snap["failures"]] == [False, False, False, True]
    for out in (repr(snap), _top(local_cluster, "--once").stdout):
        assert "engine None" not in out and "\x1b" not in out and "\x07" not in out, out
        assert re.search(r"  no engine  \w+", out) and "\\x1b[2J\\x1b[31mscreen" in out, out
    assert "engine None" not in snap._repr_html_()
    # four header lines, the columns, two engines, the footer, and three lines over: a
    # blank line, the heading and the newest failure
    lines = [line for line, _ in top._screen(snap, "", 11, 80, 0, False)]
    assert lines[-1].endswith("engines 1-2 of 2"), lines
    assert len([line for line in lines if re.match(r"^\s*\d+ \S", line)]) == 2, lines
    assert lines[-3:-1] == ["recent failures:", top.sections(snap)[3][-1]], lines


def test_text_and_html_show_as_many_failures_and_say_how_many_are_left_out(local_cluster):
    """rc.status()'s text and its HTML show the same newest failures (top.SHOWN_FAILURES)
    and both say how many older ones the snapshot holds besides. Before, the HTML showed
    the last 5 by a number of its own and neither said that any were left out."""
    from minipar import top

    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    n = top.SHOWN_FAILURES + 2
    for a in [rc.load_balanced_view().apply_async(fail, i) for i in range(n)]:
        with pytest.raises(Exception):
            a.get(30)
    snap = wait_until(lambda: (lambda s: s if len(s["failures"]) == n else None)(
        rc.status()), 10, f"the {n} failures in the snapshot")
    shown = [f["evalue"] for f in snap["failures"][-top.SHOWN_FAILURES:]]
    text, page = repr(snap), snap._repr_html_()
    for out in (text, page):
        assert "recent failures (2 older not shown: rc.status()[" in out, out
        assert [e for e in (f["evalue"] for f in snap["failures"]) if e in out] == shown, out
    assert page.count("<li>") == top.SHOWN_FAILURES


def test_a_lost_engine_row_says_since_when(local_cluster):
    """A lost engine's row shows, under FOR, how long ago it went (the snapshot's lost_s).
    Before, nothing in the text said when."""
    engine, = local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    engine.send_signal(signal.SIGKILL)
    engine.wait(10)
    wait_until(lambda: rc.status()["engines_lost"] == 1, 20, "the killed engine lost")
    out = _top(local_cluster, "--once")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s*0 \S+\s+\d+ lost\s+-\s+\d+(\.\d)?s\s", out.stdout, re.M), out.stdout


def test_once_says_clearly_when_there_is_no_controller(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--profile-dir",
                          str(tmp_path / "nothing")], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "no connection file" in out.stderr


def test_once_fits_its_lines_to_columns(local_cluster):
    """--once into a pipe cuts its lines to $COLUMNS (as shutil.get_terminal_size and the
    live view read it), "~" ending a line cut; with no COLUMNS a pipe gets whole lines.
    Before, COLUMNS was ignored: the table alone is 78 columns wide."""
    local_cluster.start_engines(1)
    wait_until(lambda: _snapshot(local_cluster)["engines_alive"] == 1, 30, "an engine")

    def once(env):
        out = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--file",
                              local_cluster.client_file], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    lines = once(dict(_env(), COLUMNS="40"))
    assert max(map(len, lines)) == 40 and lines[0].endswith("~"), lines
    assert lines[4].startswith(" ID HOST") and lines[5].startswith("  0 "), lines
    env = _env()
    env.pop("COLUMNS", None)
    whole = once(env)
    assert whole[4].rstrip().endswith("RSS") and "~" not in whole[0], whole


def test_live_view_into_a_pipe_says_what_to_do_without_the_usage(tmp_path):
    """The live view with stdout piped (a script, `| less`) is one line saying to run it in
    a terminal or use --once, status 1 as top's other errors. Before, argparse's usage came
    first and the status was 2, as for a wrong argument."""
    out = subprocess.run([sys.executable, "-m", "minipar.top", "--profile-dir",
                          str(tmp_path / "nothing")], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and "usage" not in out.stderr, out.stderr
    assert "needs a terminal" in out.stderr and "--once" in out.stderr, out.stderr


def test_once_into_a_closed_pipe_is_quiet(local_cluster):
    """`top --once | head -1`: the reader closing the pipe is no error of the monitor's.
    Before, it said "[Errno 32] Broken pipe" and exited 1 (failing a pipefail script)."""
    r, w = os.pipe()
    os.close(r)   # a reader gone before the first write: EPIPE whatever the timing
    try:
        out = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--file",
                              local_cluster.client_file], stdout=w, stderr=subprocess.PIPE,
                             text=True, env=_env(), cwd=ROOT, timeout=30)
    finally:
        os.close(w)
    assert (out.returncode, out.stderr) == (0, "")


@pytest.mark.parametrize("flag", ["--interval", "--wait"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_seconds_that_are_no_seconds_are_refused(tmp_path, flag, value):
    """--interval and --wait take a finite number of seconds, said at once. Before, NaN
    and infinity were taken: the live view then stopped with a ValueError or
    OverflowError traceback (--interval), or never gave up on a silent controller
    (--wait nan); --once printed a snapshot as if they meant something."""
    out = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--profile-dir",
                          str(tmp_path), flag, value], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=30)
    assert out.returncode == 2 and f"{flag}: {value!r} is not a number of seconds" in out.stderr


def test_once_interrupted_while_waiting_exits_130(local_cluster):
    """Ctrl-C in `top --once --wait 60`, still waiting for a (frozen) controller, exits
    130 (as the launcher does), so a script does not go on as if it had its snapshot.
    Before, it exited 0 with nothing printed."""
    local_cluster.controller.send_signal(signal.SIGSTOP)   # stop() sends SIGCONT
    p = subprocess.Popen([sys.executable, "-m", "minipar.top", "--once", "--wait", "60",
                          "--file", local_cluster.client_file], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        # its Client started (threads: zmq's and its I/O thread) is where it waits, in the
        # call that Ctrl-C ends; before that, a slow start on a busy machine, it is importing
        wait_until(lambda: p.poll() is not None or len(os.listdir(f"/proc/{p.pid}/task")) > 1,
                   START_TIMEOUT_S, "the monitor's client to start")
        with pytest.raises(subprocess.TimeoutExpired):   # waiting for its answer
            p.wait(2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
    assert (p.returncode, out) == (130, "") and "interrupted" in err
    assert "Traceback" not in err


def test_once_that_timed_out_says_how_to_wait_longer(local_cluster):
    """--once gives a silent controller a refresh interval (1 s) unless --wait says more:
    its error says so. Before, it said only "is it running?" of a controller running."""
    local_cluster.controller.send_signal(signal.SIGSTOP)   # stop() sends SIGCONT
    out = _top(local_cluster, "--once")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.rstrip().endswith("; --once waited 1 s: wait longer with --wait S"), \
        out.stderr
    out = _top(local_cluster, "--once", "--wait", "1")   # asked for: nothing to add
    assert out.returncode == 1 and "--wait" not in out.stderr, out.stderr


def test_once_waits_up_to_wait_for_the_controller(tmp_path):
    """--once --wait N waits up to N s in all for the controller: for a frozen one to
    answer, and for one not yet started to write its connection file. Before, --once
    gave up after the refresh interval (1 s), whatever --wait said."""
    def top(profile_dir):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "minipar.top", "--once", "--json", "--wait", "60",
             "--profile-dir", str(profile_dir)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT))
        return procs[-1]

    def snapshot(p):
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        return json.loads(out)

    clusters, procs = [], []
    for name in ("frozen", "late"):
        (tmp_path / name).mkdir()
    try:
        frozen = LocalCluster(tmp_path / "frozen")
        clusters.append(frozen)
        frozen.controller.send_signal(signal.SIGSTOP)
        waiting = top(frozen.profile_dir)
        with pytest.raises(subprocess.TimeoutExpired):   # still waiting 3 s on
            waiting.wait(3)
        frozen.controller.send_signal(signal.SIGCONT)
        assert snapshot(waiting)["controller"]["pid"] == frozen.controller.pid
        waiting = top(tmp_path / "late" / "profile")
        with pytest.raises(subprocess.TimeoutExpired):   # no connection file yet: it waits
            waiting.wait(2)
        late = LocalCluster(tmp_path / "late")
        clusters.append(late)
        assert snapshot(waiting)["controller"]["pid"] == late.controller.pid
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
        for c in clusters:
            c.stop()


# ---------------------------------------------------------------- the live view


@pytest.fixture
def tmux(tmp_path):
    """run(*args) for a private tmux server with one 100x40 pane running a plain shell."""
    if shutil.which("tmux") is None:
        if os.environ.get("MINIPAR_CI"):
            pytest.fail("tmux is missing: .ci/setup_tmux.sh should have installed it")
        pytest.skip("tmux is not installed (apt-get install tmux); CI installs it")
    name = f"minipar-top-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = dict(_env(), TERM="xterm", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.pop("TMUX", None)
    rcfile = tmp_path / "bashrc"
    rcfile.write_text(f"PS1='{PROMPT}'\n")   # bash takes no PS1 from its environment

    def run(*args):
        return subprocess.run(["tmux", "-L", name, *args], capture_output=True, text=True,
                              env=env, timeout=10, check=True).stdout

    try:
        run("-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "40", "-s", "t",
            f"bash --noprofile --rcfile {rcfile}")
        wait_until(lambda: PROMPT.strip() in run("capture-pane", "-p", "-t", "t"), 10,
               "a shell prompt in the tmux pane")
        yield run
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, timeout=10)


def _ok_failed(screen):
    m = re.search(r"(\d+) ok, (\d+) failed", screen)
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_live_view_in_a_terminal(cluster, tmux):
    rc = cluster.rc

    def screen():
        return tmux("capture-pane", "-p", "-t", "t")

    tmux("send-keys", "-t", "t", f"cd {ROOT} && {sys.executable} -m minipar.top --file "
         f"{cluster.client_file} --interval 0.3; echo top exited $?", "Enter")
    wait_until(lambda: "4 alive, 0 lost" in screen(), 30, "the view's header")

    view = rc.load_balanced_view()
    good = [view.apply_async(slow, 0.4) for _ in range(24)]   # a map would send chunks
    bad = [view.apply_async(fail, i) for i in range(3)]

    def busy_rows():
        s = screen()
        rows = [line for line in s.splitlines() if re.match(r"^\s*\d+\s", line)]
        busy = [line for line in rows if " busy " in line and "slow" in line]
        return s if len(rows) == 4 and len(busy) >= 3 else None

    first = wait_until(busy_rows, 30, "engine rows busy running `slow`")
    assert {0, 1, 2, 3} == {int(line.split()[0]) for line in first.splitlines()
                            if re.match(r"^\s*\d+\s", line)}
    counts = _ok_failed(first)
    assert counts is not None and counts[0] < 24
    wait_until(lambda: (_ok_failed(screen()) or (0, 0))[0] > counts[0], 30,
           "the done count growing")
    assert [a.get(60) for a in good] == [0.4] * 24
    for a in bad:
        with pytest.raises(Exception):
            a.get(30)

    # after the workload, its exact totals, every engine idle, the failures listed
    last = wait_until(lambda: (lambda s: s if _ok_failed(s) == (24, 3) else None)(screen()),
                  30, "the totals 24 ok, 3 failed")
    last = wait_until(lambda: (lambda s: s if s.count(" idle ") == 4 else None)(screen()), 10,
                  "four idle engines")
    assert "ValueError: bad input" in last and "0 queued, 0 running" in last

    tmux("send-keys", "-t", "t", "q")
    after = wait_until(lambda: (lambda s: s if "top exited 0" in s else None)(screen()), 15,
                   "the view ended by q, with status 0")
    assert after.rstrip().splitlines()[-1].strip() == PROMPT.strip()
    assert "4 alive" not in after   # the terminal's own screen is back
    assert tmux("display-message", "-p", "-t", "t", "#{pane_current_command}").strip() == "bash"


def test_the_c_locale_gets_ascii(local_cluster, tmux):
    """LANG=C / LC_ALL=C (a terminal that is not UTF-8): the sparkline in ASCII, printed
    and live. Before, Python's UTF-8 mode (on in the C locale) made the monitor think the
    terminal took UTF-8: --once printed block characters, and curses, in the C locale,
    drew the sparkline as blanks. And a LANG naming a locale not installed stopped the
    live view with a locale.Error traceback."""
    env = dict(_env(), LANG="C", LC_ALL="C")
    out = subprocess.run([sys.executable, "-m", "minipar.top", "--once", "--file",
                          local_cluster.client_file], capture_output=True, env=env, cwd=ROOT,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert b"|" + b"_" * 60 + b"|" in out.stdout and out.stdout.isascii()

    def screen():
        return tmux("capture-pane", "-p", "-t", "t")

    tmux("send-keys", "-t", "t", f"cd {ROOT} && LANG=C LC_ALL=C {sys.executable} -m "
         f"minipar.top --file {local_cluster.client_file} --interval 0.3", "Enter")
    wait_until(lambda: "|" + "_" * 60 + "|" in screen(), 30,
               "the live view's sparkline in ASCII")
    tmux("send-keys", "-t", "t", "q")
    wait_until(lambda: "0 alive" not in screen(), 15, "the view ended by q")
    # a locale not installed here: the view, in the C locale (before: locale.Error)
    tmux("send-keys", "-t", "t", f"env -u LC_ALL LANG=xx_YY.UTF-8 {sys.executable} -m "
         f"minipar.top --file {local_cluster.client_file} --interval 0.3", "Enter")
    wait_until(lambda: "0 alive, 0 lost" in screen(), 30,
               "the live view with LANG naming a locale not installed")
    tmux("send-keys", "-t", "t", "q")


def test_status_prints_in_the_c_locale_and_to_an_ascii_stdout(local_cluster):
    """``print(rc.status())`` in a script run with LC_ALL=C, or with PYTHONIOENCODING=ascii,
    prints ASCII, as ``--once`` does there: the sparkline's ASCII ramp, and the characters
    of names and errors escaped. Before, the C locale got block characters (Python's UTF-8
    mode) and an ASCII stdout a UnicodeEncodeError."""
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    with pytest.raises(Exception, match="caf"):
        rc[0].execute("raise ValueError('caf\u00e9 \u2603')", block=True)
    wait_until(lambda: rc.status()["failures"], 10, "the failure in the snapshot")
    script = (f"import minipar\nrc = minipar.Client({local_cluster.client_file!r})\n"
              "print(rc.status())\nrc.close()\n")
    for extra in ({"LANG": "C", "LC_ALL": "C"},
                  {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "ascii"}):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=ROOT,
                             env={**_env(), **extra}, timeout=30)
        assert out.returncode == 0, (extra, out.stderr.decode(errors="replace"))
        assert out.stdout.isascii(), (extra, out.stdout)
        # the sparkline in top's ASCII ramp (the failure may show in it: not all "_")
        assert re.search(rb"60s \|[_.\-:=+*#]{60}\|", out.stdout), (extra, out.stdout)
        assert b"1 failed" in out.stdout, extra
        assert b"ValueError: caf\\xe9 \\u2603" in out.stdout, (extra, out.stdout)


def test_live_view_started_before_the_controller_waits_for_it(tmp_path, tmux):
    """The live view started first (as htop, then the cluster) says it waits for the
    connection file, and shows the controller once it is up. Before, it exited at once
    with 'no connection file', though its screen has a 'waiting' state and --wait says
    how long it waits."""
    (tmp_path / "late").mkdir()
    profile_dir = tmp_path / "late" / "profile"

    def screen():
        return tmux("capture-pane", "-p", "-t", "t")

    tmux("send-keys", "-t", "t", f"cd {ROOT} && {sys.executable} -m minipar.top "
         f"--profile-dir {profile_dir} --interval 0.3; echo top exited $?", "Enter")
    wait_until(lambda: "waiting for the controller" in screen(), 30, "the waiting screen")
    assert "no connection file" in screen() and "top exited" not in screen()
    late = LocalCluster(tmp_path / "late")
    try:
        wait_until(lambda: "0 alive, 0 lost" in screen(), 30, "the controller's header")
        assert f"pid {late.controller.pid} " in screen()
        tmux("send-keys", "-t", "t", "q")
        wait_until(lambda: "top exited 0" in screen(), 15, "the view ended by q")
    finally:
        late.stop()



def test_live_view_in_a_terminal_terminfo_does_not_know(local_cluster, tmux, tmp_path):
    """Over ssh from a terminal this machine has no terminfo entry for (TERM=xterm-kitty,
    say, or no TERM), the live view says so, and what to do, and exits 1. Before, it
    stopped with a curses traceback (setupterm: could not find terminal)."""
    err = tmp_path / "stderr"
    tmux("send-keys", "-t", "t", f"clear; cd {ROOT} && TERM=no-such-terminal "
         f"{sys.executable} -m minipar.top --file {local_cluster.client_file} 2>{err}; "
         "echo top exited $?", "Enter")
    out = wait_until(lambda: re.search(r"^top exited (\d+)", tmux(
        "capture-pane", "-p", "-t", "t"), re.M), 30, "the view to exit")   # not the echo
    assert out.group(1) == "1", out.string
    said = err.read_text()
    assert "Traceback" not in said and "cannot drive this terminal" in said, said
    assert "'no-such-terminal'" in said and "--once" in said, said


# ---------------------------------------------------------------- losing the controller


def test_monitor_follows_a_restart_then_says_the_controller_is_gone(tmp_path):
    """The monitor finds a controller restarted with --reuse (engines back, a new pid);
    killed for good, it gives up after its wait with a message saying so."""
    from minipar import top

    from .test_restart import ENGINE_ARGS, _restart_controller

    cluster = LocalCluster(tmp_path, controller_args=["--reuse"])
    monitor = top.Monitor(cluster.client_file, timeout=1.0, wait_s=4)
    try:
        cluster.start_engines(2, ENGINE_ARGS)
        cluster.client().wait_for_engines(2, START_TIMEOUT_S)
        assert monitor.poll()["engines_alive"] == 2
        _restart_controller(cluster, ["--reuse"], "controller2")
        snap = wait_until(lambda: (lambda s: s if s and s["engines_alive"] == 2 else None)(
            monitor.poll()), 60, "the monitor seeing the restarted controller's engines")
        assert snap["controller"]["pid"] == cluster.controller.pid and snap["done"] == 0
        cluster.controller.send_signal(signal.SIGKILL)
        cluster.controller.wait(10)
        assert monitor.poll() is None and "no answer from the controller" in monitor.note
        with pytest.raises(top.Gone, match="has not answered for"):
            wait_until(monitor.poll, 20, "the monitor giving up")
    finally:
        monitor.close()
        cluster.stop()


def test_monitor_says_a_killed_controller_is_not_running(local_cluster):
    """Killed (-9), the controller leaves its connection file: the view says at once that
    its pid is not running, on as many lines as the note takes, while it waits for one to
    start again. Before, it said "is it running?", cut at the terminal's width."""
    from minipar import top

    monitor = top.Monitor(local_cluster.client_file, timeout=1.0, wait_s=30)
    try:
        snap = monitor.poll()
        local_cluster.controller.send_signal(signal.SIGKILL)
        local_cluster.controller.wait(10)
        assert monitor.poll() is None
        gone = f"controller pid {local_cluster.controller.pid} is not running"
        assert gone in monitor.note
        lines = top._screen(snap, monitor.note, 40, 60, 0, False)
        first = next(i for i, (line, _) in enumerate(lines) if line.startswith("! "))
        columns = next(i for i, (_, heading) in enumerate(lines) if heading)
        note = [line for line, _ in lines[first:columns]]
        assert len(note) > 1 and all(len(line) < 60 for line in note)
        assert gone in " ".join(line[2:] for line in note)
    finally:
        monitor.close()


def test_live_view_started_while_the_controller_is_down_waits_for_it(tmp_path, tmux):
    """The teacher opens the view before restarting a controller that was killed: its
    connection file is stale. The view waits, saying so, as for a file not written yet,
    and shows the controller once it is back (--reuse). Before, it exited at once."""
    from .test_restart import _restart_controller

    cluster = LocalCluster(tmp_path, controller_args=["--reuse"])

    def screen():
        return tmux("capture-pane", "-p", "-t", "t")

    try:
        first = cluster.controller
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        tmux("send-keys", "-t", "t", f"cd {ROOT} && {sys.executable} -m minipar.top --file "
             f"{cluster.client_file} --interval 0.3; echo top exited $?", "Enter")
        wait_until(lambda: "! no answer from the controller" in screen(), 30,
                   "the view waiting, with a note")
        assert re.search(rf"pid\s+{first.pid}\s+is\s+not\s+running", screen()), screen()
        assert not re.search(r"^top exited", screen(), re.M), screen()
        _restart_controller(cluster, ["--reuse"], "controller2")
        wait_until(lambda: f"controller pid {cluster.controller.pid} " in screen(), 30,
                   "the restarted controller's header")
        tmux("send-keys", "-t", "t", "q")
        wait_until(lambda: re.search(r"^top exited 0", screen(), re.M), 15, "q to end it")
    finally:
        cluster.stop()


def test_monitor_says_the_controller_stopped_when_its_file_goes(local_cluster):
    from minipar import top

    monitor = top.Monitor(local_cluster.client_file, timeout=1.0, wait_s=30)
    try:
        assert monitor.poll()["engines_alive"] == 0
        local_cluster.controller.terminate()   # it removes its files (no --reuse)
        local_cluster.controller.wait(10)
        with pytest.raises(top.Gone, match="connection file .* is gone"):
            wait_until(monitor.poll, 10, "the monitor noticing the controller stopped")
    finally:
        monitor.close()
