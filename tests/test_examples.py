"""Every script in examples/ runs as it is, so the examples never rot.

Each runs in a subprocess of its own session, with PYTHONPATH set to the repository (as
after ``pip install .``), MINIPAR_DIR in a temporary folder and a timeout. A script
that overruns gets SIGINT first (its ``with Cluster`` block then stops its controller
and engines), then SIGKILL for its whole process group. Afterwards no cluster folder
may be left in MINIPAR_DIR: the example stopped what it started.
"""

import os
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, _env

TIMEOUT = 600
RUN_TIMEOUT_S = 240
pytestmark = pytest.mark.timeout(TIMEOUT)
EXAMPLES = os.path.join(ROOT, "examples")


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
