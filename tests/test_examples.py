"""Every script in examples/ runs as it is, so the examples never rot.

Each runs in a subprocess of its own session, with PYTHONPATH set to the repository (as
after ``pip install .``), MINIPAR_DIR in a temporary folder and a timeout. A script
that overruns gets SIGINT first (its ``with Cluster`` block then stops its controller
and engines), then SIGKILL for its whole process group. Afterwards no cluster folder
may be left in MINIPAR_DIR: the example stopped what it started.

README.rst's code runs as written too: its Python is in ``.. code-block:: python``
blocks (a ``::`` literal block that compiles as Python must be one), run in order as one
script on the controller and four engines that its "by hand" shell commands start, with
each ``# -> value`` claim checked.
"""

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap

import pytest

import minipar
from minipar import protocol

from .conftest import ROOT, START_TIMEOUT_S, _env
from .helpers import wait_until

TIMEOUT = 600
RUN_TIMEOUT_S = 240
README_RUN_TIMEOUT_S = 60   # a few seconds; slow only on a loaded machine
pytestmark = pytest.mark.timeout(TIMEOUT)
EXAMPLES = os.path.join(ROOT, "examples")
README = os.path.join(ROOT, "README.rst")
README_ENGINES = 4   # "once per engine (the tour has four)"
CLAIM = re.compile(r"^(?P<indent>\s*)(?P<expr>\S.*?)\s*# -> (?P<value>.+)$")


def run_example(name, tmp_path, *args, env=None):
    minipar_dir = tmp_path / "minipar-dir"
    env = dict(_env(), MINIPAR_DIR=str(minipar_dir), MPLBACKEND="Agg", **(env or {}))
    p = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, cwd=tmp_path, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate(timeout=30)
        pytest.fail(f"{name} ran longer than {RUN_TIMEOUT_S} s:\n{out}\n{err}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
    assert p.returncode == 0, f"{name} exited with {p.returncode}:\n{out}\n{err}"
    left = [f for f in os.listdir(minipar_dir) if f.startswith("cluster_")] \
        if minipar_dir.exists() else []
    assert not left, f"{name} left clusters behind: {left}"
    return out, err


def test_every_example_has_a_test():
    tested = {"quickstart.py", "monte_carlo_pi.py", "param_sweep.py", "dag.py",
              "mpi_engines.py", "classic_kernel.py", "timeline.py", "from_ipyparallel.py"}
    assert {f for f in os.listdir(EXAMPLES) if f.endswith(".py")} == tested


def test_quickstart(tmp_path):
    out, _ = run_example("quickstart.py", tmp_path)
    assert "sum of squares 1..1000" in out and "the cluster is stopped" in out


def test_monte_carlo_pi(tmp_path):
    out, err = run_example("monte_carlo_pi.py", tmp_path, "--darts", "400000")
    assert out.count("pi ~ 3.1") == 3, out
    assert "32/32" in err   # the progress bar


def test_param_sweep_retries_the_failures(tmp_path):
    out, _ = run_example("param_sweep.py", tmp_path)
    assert "cycle of 2" in out and "chaos" in out
    assert "18 tasks;" in out and "needed a retry" in out, out
    assert ": error -> engine" in out   # a failed attempt, then the retry elsewhere


def test_dag_runs_in_dependency_order(tmp_path):
    out, _ = run_example("dag.py", tmp_path)
    assert "the report says 10.0" in out
    assert "report" in out.split("step")[1]


def test_mpi_engines_or_a_clean_skip(tmp_path):
    # OpenMPI refuses root without these; CI runs as root
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    out, _ = run_example("mpi_engines.py", tmp_path, env=env)
    if out.startswith("skipped:"):
        pytest.skip(out.strip())
    assert "is MPI rank 3 of 4" in out and "pi ~ 3.14159265" in out, out


def test_mpi_engines_skips_cleanly_without_mpiexec(tmp_path):
    out, _ = run_example("mpi_engines.py", tmp_path, env={"PATH": "/nonexistent"})
    assert out.startswith("skipped: mpiexec is not installed"), out


def test_classic_kernel(tmp_path):
    out, _ = run_example("classic_kernel.py", tmp_path)
    assert "<Results List>" in out and "StringTask results: [0, 1, 4, 9" in out
    assert "MapTask with retries: 81" in out


def test_timeline_writes_a_chart(tmp_path):
    out, _ = run_example("timeline.py", tmp_path, "run.png")
    png = tmp_path / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "200 tasks on 4 engines" in out


def test_ipyparallel_doc_examples_run_with_the_import_changed(tmp_path):
    out, _ = run_example("from_ipyparallel.py", tmp_path)
    for part in ("front page", "direct interface", "task interface", "asyncresult",
                 "futures", "asyncio", "outputs and progress", "async with Cluster",
                 "await start_and_connect"):
        assert part + ":" in out, out
    assert "every example ran" in out


# The calls of ipyparallel's docs/source/examples/basic_task_label.py, in its order and
# with its arguments, on `import minipar as ipp` and with tasks of 0.1 s (not 2): a cluster
# of 2, ten labelled one-task maps on a load-balanced view, view.wait of them all, then
# db_query({'label': {'$nin': ''}}, keys=['msg_id', 'label', 'engine_uuid']) printed.
BASIC_TASK_LABEL = '''
import minipar as ipp


def wait(t):
    import time

    t0 = time.time()
    time.sleep(t)
    return time.time() - t0


cluster = ipp.Cluster(n=2)
cluster.start_cluster_sync()
rc = cluster.connect_client_sync()
rc.wait_for_engines(n=2)
view = rc.load_balanced_view()
ars = [view.map_async(wait, [0.1], label=f"mylabel_{i:02}") for i in range(10)]
view.wait(ars)
for rec in rc.db_query({"label": {"$nin": ""}}, keys=["msg_id", "label", "engine_uuid"]):
    print(f"msg_id={rec['msg_id']}; label={rec['label']}; engine_uuid={rec['engine_uuid']}")
cluster.stop_cluster_sync()
'''


def test_ipyparallels_basic_task_label_calls_run_as_ipyparallel_prints_them(tmp_path):
    """Its query, {'label': {'$nin': ''}} with keys msg_id, label and engine_uuid, answers
    the ten labelled tasks, each with the engine (its id as a str) that ran it."""
    script = tmp_path / "basic_task_label.py"
    script.write_text(BASIC_TASK_LABEL)
    out, _ = run_example(str(script), tmp_path)
    lines = re.findall(r"^msg_id=(\S+); label=(\S+); engine_uuid=(\S+)$", out, re.M)
    assert sorted(label for _, label, _ in lines) == [f"mylabel_{i:02}" for i in range(10)], out
    assert len({msg_id for msg_id, _, _ in lines}) == 10
    assert {engine for _, _, engine in lines} <= {"0", "1"}, out


def readme_blocks():
    """README.rst's literal blocks in order: (kind, first line number, dedented text), kind
    "python" for a ``.. code-block:: python`` and "literal" for one after ``::``."""
    lines = open(README).read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        head = lines[i].strip()
        kind = "python" if head == ".. code-block:: python" else \
            "literal" if head.endswith("::") and not head.startswith("..") else None
        i += 1
        if kind is None:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        start = i
        while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
            i += 1
        blocks.append((kind, start + 1, textwrap.dedent("\n".join(lines[start:i])).rstrip()))
    return blocks


def readme_script():
    """The Python blocks as one script whose line N is README.rst's line N (tracebacks
    point into the README); a line ending in ``# -> value`` asserts that it returns it."""
    script = []
    for kind, first, text in readme_blocks():
        if kind != "python":
            continue
        for n, line in enumerate(text.splitlines(), first):
            claim = CLAIM.match(line)
            if claim:
                value = ast.literal_eval(claim["value"])
                said = f"README.rst line {n}: {claim['expr']} returns {value!r} there, here "
                line = f"{claim['indent']}_got = {claim['expr']}; " \
                       f"assert _got == {value!r}, {said!r} + repr(_got)"
            script += [""] * (n - 1 - len(script)) + [line]
    return "\n".join(script) + "\n"


def test_readme_python_is_in_python_blocks():
    literal = [(n, text) for kind, n, text in readme_blocks() if kind == "literal"]
    assert literal, "found no literal block: has README.rst's layout changed?"
    for n, text in literal:
        try:
            compile(text, "README.rst", "exec")
        except SyntaxError:
            continue
        pytest.fail(f"README.rst line {n}: this block is Python: make it a "
                    f"'.. code-block:: python' so that test_readme_runs_as_written runs it")


def test_readme_runs_as_written(tmp_path):
    """The three terminals, then every Python block in order, in a session of its own."""
    env = dict(_env(), MINIPAR_DIR=str(tmp_path / "minipar-dir"))
    by_hand = next(text for kind, _, text in readme_blocks()
                   if kind == "literal" and "python -m minipar.controller" in text)
    controller, engine, client = [shlex.split(line, comments=True)
                                  for line in by_hand.splitlines() if line.strip()[:1] != "#"]
    procs = []

    def spawn(argv, name):
        assert argv[0] == "python", argv
        with open(tmp_path / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, *argv[1:]], stdout=log, env=env,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=tmp_path))

    def run(argv, **kwargs):
        p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=README_RUN_TIMEOUT_S, **kwargs)
        if p.returncode:
            logs = "".join(f"--- {f.name}\n{f.read_text()}" for f in tmp_path.glob("*.log"))
            pytest.fail(f"{argv[1:2]} exited with {p.returncode}:\n{p.stdout}\n{p.stderr}\n{logs}")
        return p.stdout

    try:
        spawn(controller, "controller")
        for i in range(README_ENGINES):
            spawn(engine, f"engine{i}")
        security = tmp_path / "minipar-dir" / "profile_default" / "security"
        wait_until(lambda: (security / protocol.CLIENT_FILE).exists(), START_TIMEOUT_S,
                   "the controller's connection file")
        rc = minipar.Client(str(security / protocol.CLIENT_FILE))
        try:   # the third terminal is typed after the engines are up
            rc.wait_for_engines(README_ENGINES, START_TIMEOUT_S)
        finally:
            rc.close()
        assert client[:2] == ["python", "-c"], client
        assert run([sys.executable, *client[1:]]).strip() == str([42] * README_ENGINES)

        out = run([sys.executable, "-"], input=readme_script())
        assert str([n ** 2 for n in range(32)]) in out, out   # the quick start's print
        left = [f for f in os.listdir(tmp_path / "minipar-dir") if f.startswith("cluster_")]
        assert not left, f"the quick start left clusters behind: {left}"

        procs[0].send_signal(signal.SIGINT)   # "Ctrl-C on the controller stops it and its engines"
        for p in procs:
            p.wait(START_TIMEOUT_S)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
