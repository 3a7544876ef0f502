"""A reduced run of bench/soak.py: nothing submitted is lost under load.

5,000 tasks submitted at once, 100,000 map items in 2,000 tasks, 50 simulated engines
registering at once (speaking the real protocol from two processes). Each phase must
report every item completed, none failed, none lost. The full figures (100,000 tasks,
1,000,000 map items, 200 engines, memory) come from ``python bench/soak.py``.
"""

import importlib.util
import os

import pytest

from .conftest import ROOT

TIMEOUT = 240
pytestmark = pytest.mark.timeout(TIMEOUT)


def _soak():
    spec = importlib.util.spec_from_file_location("soak", os.path.join(ROOT, "bench", "soak.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak():
    return _soak()


def _check(result, n):
    assert result["lost"] == 0 and result["failed"] == 0, result
    assert result["submitted"] == result["completed"] == n, result


def test_tasks_submitted_at_once_all_complete(soak, tmp_path):
    _check(soak.phase_tasks(5000, 2, str(tmp_path)), 5000)


def test_map_items_all_complete(soak, tmp_path):
    _check(soak.phase_map(100_000, 2, str(tmp_path)), 100_000)


def test_simulated_engines_all_register_and_answer(soak, tmp_path):
    _check(soak.phase_engines(50, str(tmp_path), per_process=25), 50)
