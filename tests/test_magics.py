"""The IPython magics as ipyparallel's (%px, %%px, %autopx, %pxresult, %pxconfig), in a
real IPython InteractiveShell in this process against a real cluster; and IPython syntax
(%timeit, !echo) run by engines with IPython, and refused clearly by engines without.

The tests of ``ip_rc`` share the module's cluster, each with a client of its own: they run
plain Python on the engines and leave them idle. Those that run IPython syntax there (it
loads IPython on the engine for good), or set a plotting backend, take ``own_ip_rc``, a
cluster of their own."""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

pytest.importorskip("IPython")

from minipar.errors import CompositeError, RemoteError  # noqa: E402

from .conftest import ROOT, START_TIMEOUT_S, _env  # noqa: E402
from .helpers import wait_until  # noqa: E402

TIMEOUT = 120


@pytest.fixture
def shell():
    """IPython's InteractiveShell, cleared afterwards so later tests see no IPython."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    main = sys.modules["__main__"]
    shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()
        sys.modules["__main__"] = main


def _shell_client(shell, client_file):
    """A Client made inside the shell, as a user would: ``rc``, the first there (the
    cluster's own client is made before the shell), so it has the magics. Afterwards what
    it left running is aborted (a failed test's: not to keep a shared engine busy)."""
    run(shell, f"import minipar\nrc = minipar.Client({client_file!r})")
    rc = shell.user_ns["rc"]
    try:
        yield rc
    finally:
        if rc.outstanding:   # after close(): none, close() failed them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "nothing to abort": answered meanwhile
                rc.abort()
        rc.close()


@pytest.fixture
def ip_rc(shared_cluster, shell):
    """The shell's client of the module's cluster."""
    yield from _shell_client(shell, shared_cluster.client_file)


@pytest.fixture
def own_ip_rc(cluster, shell):
    """The shell's client of a cluster of the test's own."""
    yield from _shell_client(shell, cluster.client_file)


def run(shell, cell, ok=True):
    """Run `cell` in the shell; what it printed (stdout and stderr together, in order)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        result = shell.run_cell(cell, store_history=True)
    out = buf.getvalue()
    assert result.success == ok, out
    return out


def test_client_in_ipython_registers_the_magics(shell, ip_rc):
    for name in ("px", "autopx", "pxresult", "pxconfig", "result"):
        assert shell.find_line_magic(name) is not None, name
    assert shell.find_cell_magic("px") is not None
    assert run(shell, "%px a = 5") == ""
    out = run(shell, "%px print(a)")
    assert out == "".join(f"[stdout:{i}] 5\n" for i in range(4))
    # several lines: the prefix on its own line, as ipyparallel
    out = run(shell, "%px print(1); print(2)")
    assert "[stdout:0] \n1\n2\n" in out
    # errors as ipyparallel shows them: [engine:execute]: then the engine's traceback
    out = run(shell, "%px 1/0", ok=False)
    for i in range(4):
        assert f"[{i}:execute]: \n" in out
    assert out.count("ZeroDivisionError: division by zero") == 4
    assert "<minipar-execute" in out   # the remote traceback, not this process's


def test_px_code_reads_the_engines_names_not_the_shells_as_ipyparallels(shell, ip_rc):
    """IPython expands {x} and $x in a line magic's line from the shell's names, unless the
    magic says not to, as ipyparallel's %px does: %px y = f"{x}" ran y = f"client" on the
    engines. A %%px cell's first line is expanded (-o {name}), its code is not."""
    run(shell, "x = 'client'\nrc[:].push({'x': 'engine'}, block=True)")
    run(shell, '%px y = f"{x}"')
    assert run(shell, "%px print(y)") == "".join(f"[stdout:{i}] engine\n" for i in range(4))
    run(shell, "%px z = '$x'")
    assert run(shell, "print(rc[:].pull('z', block=True))") == "['$x', '$x', '$x', '$x']\n"
    run(shell, 'name = "kept"\n')
    run(shell, '%%px -o {name}\nw = f"{x}"')
    assert run(shell, "print(len(kept), rc[:].pull('w', block=True))") == \
        "4 ['engine', 'engine', 'engine', 'engine']\n"


def test_px_awaits_at_the_top_level_as_on_ipyparallels_engines(shell, ip_rc):
    """A notebook user's `%px await ...` and a `%%px` cell that awaits run on the engines as
    on ipyparallel's (IPython kernels, autoawait): the awaited value is Out[engine:n]. It
    was a SyntaxError: 'await' outside function, from every engine."""
    run(shell, "%px import asyncio")
    out = run(shell, "%px await asyncio.sleep(0, result='slept')")
    assert re.findall(r"(?m)^Out\[(\d):\d+\]: 'slept'$", out) == list("0123"), out
    assert run(shell, "%%px\nawait asyncio.sleep(0)\nawaited = 6") == ""
    assert run(shell, "%px print(awaited)") == "".join(f"[stdout:{i}] 6\n" for i in range(4))


def test_px_error_on_many_engines_shows_four_tracebacks(local_cluster, shell):
    """As ipyparallel's magics (CompositeError.tb_limit): a %px that fails on six engines
    shows the first four tracebacks and then how many more there are."""
    local_cluster.start_engines(6)
    local_cluster.client().wait_for_engines(6, START_TIMEOUT_S)
    run(shell, f"import minipar\nrc = minipar.Client({local_cluster.client_file!r})")
    try:
        out = run(shell, "%px 1/0", ok=False)
    finally:
        shell.user_ns["rc"].close()
    assert [f"[{i}:execute]: " in out for i in range(6)] == [True] * 4 + [False] * 2, out
    assert out.count("ZeroDivisionError: division by zero") == 4
    assert out.rstrip().endswith("... 2 more exceptions ...")


def test_view_call_errors_show_the_engines_tracebacks(shell, ip_rc):
    """As ipyparallel's errors (their _render_traceback_), an engine's error raised by a
    view call shows in IPython as the engines' tracebacks, each after its [engine:kind]:,
    not as this process's stack down to ar.get()."""
    run(shell, "def fail(x):\n    return 1 / x")
    out = run(shell, "rc[:].apply_sync(fail, 0)", ok=False)
    assert [f"[{i}:apply]:" in out for i in range(4)] == [True] * 4, out
    assert out.count(", in fail") == 4 and out.count("ZeroDivisionError: division by") == 4
    assert "asyncresult.py" not in out and "Traceback (most recent call last)" in out
    out = run(shell, "rc[1].apply_sync(fail, 0)", ok=False)
    assert ", in fail" in out and "ZeroDivisionError: division by zero" in out
    assert "asyncresult.py" not in out, out
    # one made without a traceback (the controller's, for a lost engine) says what it is
    out = run(shell, "raise minipar.errors.error('EngineError', 'engine 2 died')", ok=False)
    assert out.strip() == "EngineError: engine 2 died", out


def test_wait_interactive_in_ipython(shell, ip_rc):
    """As ipyparallel's: rc.wait_interactive() and ar.wait_interactive() return None (no
    Out[n]; ar's gave True) and, with nothing outstanding, rc's draws no bar; a bar's rate
    counts only the work done while it waits."""
    assert run(shell, "rc.wait_interactive()") == ""
    run(shell, "ar = rc[:].apply_async(abs, -1)\nar.get()")
    out = run(shell, "rc.wait_interactive(ar)")
    assert out == "", out
    # done before the wait: 4/4 at once, at no rate (tqdm's '?', or the text bar's 0.00)
    out = run(shell, "ar.wait_interactive()")
    assert re.search(r"4/4 \[\d\d:\d\d<\?, (\?|0\.00 )tasks/s\]", out), out
    assert "Out[" not in out, out
    out = run(shell, "import time\nrc[:].apply_async(time.sleep, 0.5)\nrc.wait_interactive()")
    assert "4/4" in out and "Out[" not in out, out


def test_px_cell_options(shell, ip_rc):
    # --noblock: the AsyncResult at once, the outputs at %pxresult
    out = run(shell, "%%px --targets 0 --noblock\nimport time\ntime.sleep(0.3)\nprint('late')")
    assert "AsyncResult" in out and "[stdout" not in out
    assert run(shell, "%pxresult") == "late\n"   # one engine's (an int target): unprefixed
    assert run(shell, "%pxresult -o saved") == "late\n"
    assert shell.user_ns["saved"].get().engine_id == 0   # its ExecuteReply
    # --group-outputs: by type (default, and order), or by engine
    cell = "import sys\nprint('out')\nprint('err', file=sys.stderr)"
    by_type = ("[stdout:0] out\n[stdout:1] out\n[stderr:0] err\n[stderr:1] err\n")
    assert run(shell, f"%%px --targets 0,1\n{cell}") == by_type
    assert run(shell, f"%%px --targets [0,1] --group-outputs=order\n{cell}") == by_type
    assert run(shell, f"%%px -t 0:2 --group-outputs engine\n{cell}") == \
        "[stdout:0] out\n[stderr:0] err\n[stdout:1] out\n[stderr:1] err\n"
    assert run(shell, f"%%px -t 0,1 -e\n{cell}") == \
        "[stdout:0] out\n[stderr:0] err\n[stdout:1] out\n[stderr:1] err\n"
    # --local: here too, and the engines' outputs after
    out = run(shell, "%%px --local --targets 1 --verbose\nboth = 7\nprint('ran')")
    assert out == "Parallel execution on engine(s): 1\nran\nran\n"
    assert shell.user_ns["both"] == 7 and ip_rc[1].pull("both", block=True) == 7
    # a line %px takes the long options before its code
    assert run(shell, "%px --targets 2 print(-both if 'both' in dir() else 'no')") == "no\n"
    assert "unknown option --nope" in run(shell, "%%px --nope\npass", ok=False)
    for line in ("%px --targets 99 1", "%px --targets 5:9 1"):   # one line, not minipar's stack
        out = run(shell, line, ok=False)
        assert out.startswith("UsageError: ") and "registered: [0, 1, 2, 3]" in out \
            and "Traceback" not in out, out
    assert "--group-outputs 'x'" in run(shell, "%%px --group-outputs x\npass", ok=False)


def test_px_shows_the_value_of_a_last_expression_as_ipyparallel(shell, own_ip_rc):
    """A teacher's first %px: the value of the code's last expression, ``Out[0:3]: ...``
    per engine as ipyparallel's %px shows it, after the engines' output (by type, or by
    engine with ipyparallel's [output:0]), also with --stream, from %autopx, %pxresult
    and IPython syntax (%pwd); none for a statement or after a ';'. `_` is the value."""
    def shown(cell, *lines):
        out = run(shell, cell)
        assert re.fullmatch("".join(lines).replace("N", r"\d+"), out), out

    assert run(shell, "%px a = 5") == ""
    shown("%px a", *(rf"Out\[{i}:N\]: 5\n" for i in range(4)))
    assert run(shell, "%px a;") == ""
    shown("%px --targets 0 import numpy; numpy.arange(3)", r"Out\[0:N\]: array\(\[0, 1, 2\]\)\n")
    shown("%px --targets 1 print(_ + 1); _ + 2", r"6\n", r"Out\[1:N\]: 7\n")
    cell = "print('out')\na"
    shown(f"%%px --targets 0,1\n{cell}",
          r"\[stdout:0\] out\n\[stdout:1\] out\nOut\[0:N\]: 5\nOut\[1:N\]: 5\n")
    shown(f"%%px --targets 0,1 --group-outputs engine\n{cell}",
          *(rf"\[stdout:{i}\] out\n\[output:{i}\]\nOut\[{i}:N\]: 5\n" for i in (0, 1)))
    shown(f"%%px --targets 2 --stream\n{cell}", r"\[stdout:2\] out\nOut\[2:N\]: 5\n")
    shown("%px --targets 3 %pwd", r"Out\[3:N\]: '/.*'\n")
    assert "AsyncResult" in run(shell, "%px --targets 2 --noblock a * 2")
    shown("%pxresult", r"Out\[2:N\]: 10\n")
    assert run(shell, "%pxconfig --targets 0,3") == ""
    assert run(shell, "%autopx") == "%autopx enabled\n"
    shown("a + 1", r"Out\[0:N\]: 6\nOut\[3:N\]: 6\n")
    assert run(shell, "%autopx") == "%autopx disabled\n"
    run(shell, "%pxconfig --targets all")


def test_px_targets_as_ipyparallel_reads_them(shell, ip_rc):
    """ipyparallel's magics split their options as IPython does (a quoted value may hold
    spaces) and evaluate --targets, so -1 is the last engine, as in rc[-1]."""
    assert run(shell, "%%px --targets -1\nprint('last')") == "last\n"   # one engine
    assert run(shell, "%%px --targets [-1]\nprint('last')") == "[stdout:3] last\n"
    assert run(shell, "%%px -t -2,0\nprint('x')") == "[stdout:2] x\n[stdout:0] x\n"
    assert run(shell, "%px --targets \"[0, 2]\" print('q')") == "[stdout:0] q\n[stdout:2] q\n"
    assert run(shell, "%%px --targets='1, 3' --group-outputs 'engine'\nprint('e')") == \
        "[stdout:1] e\n[stdout:3] e\n"
    run(shell, "%pxconfig --targets \"(0, -1)\"")
    assert run(shell, "%px print('c')") == "[stdout:0] c\n[stdout:3] c\n"
    run(shell, "%pxconfig --targets all")
    out = run(shell, "%%px --targets -5\npass", ok=False)
    assert out.startswith("UsageError: --targets '-5': there is no such engine; registered: "
                          "[0, 1, 2, 3]"), out
    out = run(shell, "%%px --targets \"0, 1\npass", ok=False)
    assert out.startswith("UsageError: no closing quote in"), out


def test_px_takes_ipyparallels_stream_progress_and_signal_options(shell, ip_rc):
    """ipyparallel 7's %%px and %pxconfig options: --stream prints each engine's lines as
    they come, --no-stream when all are done (minipar's default); --progress-after and
    --signal-on-interrupt are accepted."""
    cell = "import time\nprint('first', flush=True)\ntime.sleep(0.3)\nprint('second')"
    assert run(shell, "%%px --targets 0 --stream --progress-after 1 --signal-on-interrupt "
                      f"SIGINT\n{cell}") == "[stdout:0] first\n[stdout:0] second\n"
    both = "import sys\nprint('out')\nprint('err', file=sys.stderr)"
    assert run(shell, f"%%px --targets 0,1 --no-stream\n{both}") == \
        "[stdout:0] out\n[stdout:1] out\n[stderr:0] err\n[stderr:1] err\n"
    out = run(shell, "%%px --targets 2 --stream\nprint('before')\n1/0", ok=False)
    assert out.startswith("[stdout:2] before\n") and "ZeroDivisionError" in out
    run(shell, "%pxconfig --stream --progress-after 0")
    assert run(shell, "%px --targets 1 print('s')") == "[stdout:1] s\n"
    run(shell, "%pxconfig --no-stream")
    assert "--progress-after 'soon'" in run(shell, "%%px --progress-after soon\npass", ok=False)


def test_pxconfig_and_autopx(shell, own_ip_rc):
    assert "there is none yet" in run(shell, "%pxresult", ok=False)
    run(shell, "%pxconfig --noblock")
    out = run(shell, "%px print('async')")
    assert "AsyncResult" in out and "[stdout" not in out
    assert run(shell, "%pxresult -e") == "".join(f"[stdout:{i}] async\n" for i in range(4))
    run(shell, "%pxconfig --block --targets 1,3 --verbose")
    assert run(shell, "%px print('x')") == \
        "Parallel execution on engine(s): [1, 3]\n[stdout:1] x\n[stdout:3] x\n"
    run(shell, "%pxconfig --no-verbose --targets all")
    assert run(shell, "%autopx") == "%autopx enabled\n"
    assert run(shell, "q = 3\nprint(q * 2)") == "".join(f"[stdout:{i}] 6\n" for i in range(4))
    assert "q" not in shell.user_ns
    # the cell goes as typed: its IPython syntax is the engines' to run
    out = run(shell, "!echo from-the-engines")
    assert out == "".join(f"[stdout:{i}] from-the-engines\n" for i in range(4))
    assert run(shell, "%autopx") == "%autopx disabled\n"
    assert run(shell, "print('here')") == "here\n"


def test_autopx_noblock_shows_no_out(shell, ip_rc):
    """As ipyparallel's %autopx: a non-blocking cell shows nothing (no Out[n] with its
    AsyncResult); %pxresult shows its outputs."""
    run(shell, "%pxconfig --noblock")
    assert run(shell, "%autopx") == "%autopx enabled\n"
    assert run(shell, "print('later')") == ""
    assert run(shell, "%autopx") == "%autopx disabled\n"
    assert run(shell, "%pxresult") == "".join(f"[stdout:{i}] later\n" for i in range(4))
    out = run(shell, "%px print('async')")
    assert out.startswith("Out[") and "AsyncResult" in out   # a plain %px still shows it


def test_a_second_client_leaves_the_magics_to_the_first(cluster, shell, own_ip_rc):
    """As ipyparallel's: the first Client made in IPython registers %px; a later one (a
    helper, another cluster's) leaves it there, so closing that one breaks nothing. Once
    the magics' Client is closed, %px says so in one line, and a new Client takes over."""
    run(shell, f"helper = minipar.Client({cluster.client_file!r}, timeout=1)")
    assert shell.find_line_magic("px").__self__.view.client is own_ip_rc
    run(shell, "helper.close()")
    assert run(shell, "%px print('still')") == "".join(f"[stdout:{i}] still\n" for i in range(4))
    run(shell, "rc.close()")
    out = run(shell, "%px print('closed')", ok=False)
    assert out.startswith("UsageError: the Client of %px is closed: make a new Client") \
        and "Traceback" not in out, out
    run(shell, f"rc2 = minipar.Client({cluster.client_file!r})")
    try:
        assert run(shell, "%px print('new')") == "".join(f"[stdout:{i}] new\n" for i in range(4))
    finally:
        shell.user_ns["rc2"].close()


def test_activate_with_a_suffix(shell, ip_rc):
    view = ip_rc.activate(targets=[0], suffix="_a")
    assert view.block and view.targets == [0]
    for name in ("px_a", "autopx_a", "pxresult_a", "pxconfig_a"):
        assert shell.find_line_magic(name) is not None, name
    assert run(shell, "%px_a print('a')") == "[stdout:0] a\n"
    dv = ip_rc[[2, 3]]
    dv.block = True
    dv.activate("_v")
    assert run(shell, "%%px_v\nprint('v')") == "[stdout:2] v\n[stdout:3] v\n"
    run(shell, "%pxconfig_v --targets 3")
    assert dv.targets == 3   # an int, as ipyparallel's evaluated text: one engine, unprefixed
    assert run(shell, "%px_v print('v')") == "v\n"
    run(shell, "%pxconfig_v -t [3]")
    assert dv.targets == [3] and run(shell, "%px_v print('v')") == "[stdout:3] v\n"
    # the plain ones still work on all engines
    assert run(shell, "%px print('all')") == "".join(f"[stdout:{i}] all\n" for i in range(4))


@pytest.mark.parametrize("magic", ["px", "autopx"])
def test_ctrl_c_in_a_blocking_px_stops_its_work_and_says_so(shell, ip_rc, magic):
    """Ctrl-C in a blocking %px (or an %autopx cell) aborts the code it started on the
    engines, as in a blocking view call: they are free for the next cell, not busy for
    five minutes. As ipyparallel's, it shows what the engines printed so far; then one
    line saying what it aborted, not a traceback through minipar down to threading."""
    magics = shell.find_line_magic("px").__self__
    main = threading.get_ident()
    # as at a terminal: a run in the background (`ci &`) has SIGINT ignored
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)

    def press_ctrl_c():   # once the code runs on every engine (its output streams back)
        wait_until(lambda: magics.last_result is not None and
                   all("started" in text for text in magics.last_result.stdout),
                   START_TIMEOUT_S, "the %px to start on every engine")
        signal.pthread_kill(main, signal.SIGINT)

    code = "print('started', flush=True); import time; time.sleep(300)"
    if magic == "autopx":
        run(shell, "%autopx")
    ctrl_c = threading.Thread(target=press_ctrl_c)
    ctrl_c.start()
    try:
        out = run(shell, code if magic == "autopx" else f"%px {code}", ok=False)
    finally:
        ctrl_c.join(START_TIMEOUT_S)
        signal.signal(signal.SIGINT, handler)
        if magic == "autopx":
            run(shell, "%autopx")
    assert out == "".join(f"[stdout:{i}] started\n" for i in range(4)) + \
        "KeyboardInterrupt: %px aborted its code on engine(s) [0, 1, 2, 3]\n", out
    with pytest.raises(CompositeError) as e:
        magics.last_result.get(START_TIMEOUT_S)
    assert [x.ename for x in e.value.elist] == ["TaskAborted"] * 4
    assert run(shell, "%px print('free')") == "".join(f"[stdout:{i}] free\n" for i in range(4))


def test_px_display_shows_the_display_data(shell, own_ip_rc):
    """display() is a builtin on the engines, as on ipyparallel's (IPython kernels), and
    IPython.display's display works there too: what they show is display data, kept in
    the request's ``ar.outputs``, which %px shows as ipyparallel's does, ``[output:0]`` then
    its text/plain ('hi' for the string), where minipar printed it as stdout. The same
    before and after the engine's IPython shell exists, and from an apply."""
    assert run(shell, "%px display('hi')") == "".join(f"[output:{i}]\n'hi'\n" for i in range(4))
    out = run(shell, "%px --targets 0 from IPython.display import display; display('a', 1)")
    assert out == "'a'\n1\n"   # one engine's (an int target): no [output:0]
    run(shell, "%px !true")
    assert run(shell, "%px --targets [1] display('hi')") == "[output:1]\n'hi'\n"
    ar = own_ip_rc[2].apply_async(lambda: display({"k": "v"}))   # noqa: F821 - the engine's
    ar.get(TIMEOUT)
    assert ar.stdout == ""
    assert ar.outputs == [{"data": {"text/plain": "{'k': 'v'}"}, "metadata": {}}]


def test_engines_with_ipython_run_its_syntax(shell, own_ip_rc):
    dv = own_ip_rc[:]
    # plain code does not load IPython on the engines
    dv.execute("a = 1", block=True)
    assert dv.apply_sync(lambda: __import__("sys").modules.get("IPython") is None) == [True] * 4
    out = run(shell, "%px %timeit -n1 -r1 x = a")
    assert out.count("per loop") == 4 and "[stdout:3] " in out
    assert run(shell, "%px !echo hi") == "".join(f"[stdout:{i}] hi\n" for i in range(4))
    out = run(shell, "%%px --targets 0\n%%timeit -n1 -r1\nx = a")
    assert not out.startswith("[") and "per loop" in out   # one engine's: unprefixed
    assert "UsageError" in run(shell, "%px %nosuchmagic", ok=False)
    ar = dv.execute("%%timeit -n1 -r1\ny = a + 1")
    ar.get(TIMEOUT)
    assert all("per loop" in text for text in ar.stdout)
    dv.execute("b = 2\nfiles = !echo x y\nprint(b)", block=True)
    assert dv.pull("files", block=True)[0] == ["x y"]
    # a plain SyntaxError stays one
    with pytest.raises(RemoteError) as e:
        own_ip_rc[0].execute("1 +", block=True)
    assert e.value.ename == "SyntaxError"


def test_px_matplotlib_inline_on_the_engines(shell, own_ip_rc):
    """ipyparallel's docs start plotting with %px %matplotlib inline: engines with
    IPython take it (an engine has no GUI loop to start), and then plot."""
    pytest.importorskip("matplotlib_inline")
    assert run(shell, "%px %matplotlib inline") == ""
    out = run(shell, "%px import matplotlib; print(matplotlib.get_backend())")
    # IPython 8.24+ with matplotlib 3.9+ names it "inline", older ones by its module
    inline = r"^\[stdout:\d\] (module://matplotlib_inline\.backend_)?inline$"
    assert len(re.findall(inline, out, re.M)) == 4, out
    out = run(shell, "%%px --targets 0\nimport matplotlib.pyplot as plt\n"
                     "fig = plt.figure()\nprint(len(plt.plot([1, 2])))")
    assert out == "1\n"   # one engine's (an int target): unprefixed


def test_engine_without_ipython(local_cluster, tmp_path):
    shim = tmp_path / "no-ipython" / "IPython"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no IPython here (test shim)')\n")
    env = _env()
    env["PYTHONPATH"] = str(shim.parent) + os.pathsep + env["PYTHONPATH"]
    local_cluster.start_engines(1, env=env)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    e0 = rc[0]
    ar = e0.execute("a = 1\nprint(a + 1)")
    ar.get(TIMEOUT)
    assert ar.stdout == "2\n"
    for code, syntax in (("%timeit x = 1", "%timeit"), ("a = 1\n!ls", "!ls"),
                         ("%%timeit\nx = 1", "%%timeit"), ("files = !ls", "!ls")):
        with pytest.raises(RemoteError) as e:
            e0.execute(code, block=True)
        assert e.value.ename == "SyntaxError"
        assert f"this code uses IPython syntax ({syntax})" in e.value.evalue
        assert "install IPython on the engines" in e.value.evalue
    with pytest.raises(RemoteError) as e:
        e0.execute("1 +", block=True)
    assert e.value.ename == "SyntaxError" and "IPython" not in e.value.evalue
    ar = e0.execute("print(a)\ndisplay('hi')")   # its display() prints the repr
    ar.get(TIMEOUT)
    assert ar.stdout == "1\n'hi'\n"
    value = {"k": list(range(40))}   # the repr, one line, for %px's Out (IPython's: wrapped)
    ar = e0.execute(f"{value!r}", silent=False, block=True)
    assert ar.execute_result["data"] == {"text/plain": repr(value)}
    # outside IPython a Client registers nothing and never imports IPython
    script = textwrap.dedent(f"""\
        import sys, minipar
        rc = minipar.Client({local_cluster.client_file!r})
        print("IPython" in sys.modules)
        rc.close()
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=TIMEOUT / 2, env=_env(), cwd=ROOT)
    assert done.stdout == "False\n", done.stdout + done.stderr


def test_activate_outside_ipython_warns_and_the_script_ends_cleanly(tmp_path):
    # as ipyparallel's: a warning, not an error; and a Client still alive when the
    # interpreter ends closes without a traceback (its module's globals are None by then)
    script = textwrap.dedent(f"""
        import warnings
        import minipar
        cluster = minipar.Cluster(n=1, profile_dir={str(tmp_path)!r})
        rc = cluster.start_and_connect_sync()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc[:].activate()
        print("warned:", [str(w.message) for w in caught])
        print(rc[0].apply_sync(lambda: 7))
        cluster.stop_cluster_sync()
    """)
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                         text=True, timeout=START_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert "work only inside IPython" in out.stdout
    assert out.stdout.strip().endswith("7")
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
