"""Version skew: an engine on another Python or cloudpickle is reported clearly.

The engine here is a real engine that lies: a small script replaces the function that
reports its versions (Python 3.99.0, cloudpickle 0.0.1) and makes unpickling a request
fail the way a bytecode mismatch does. The client must warn when it meets the engine
(a RuntimeWarning at connect; a log line when the engine registers later) and turn the
failure into a SerializationError naming both sides' versions, not an obscure TypeError.
"""

import logging
import subprocess
import sys
import warnings

import pytest

from minipar import errors

from .conftest import START_TIMEOUT_S, _env

TIMEOUT = 60
pytestmark = pytest.mark.timeout(TIMEOUT)

LYING_ENGINE = """
import sys
from minipar import engine, protocol

protocol.versions = lambda: ([3, 99, 0], "0.0.1")

def deserialize_function(frames):   # what unpickling across Python versions looks like
    raise TypeError("code expected at most 16 arguments, got 18")

protocol.deserialize_function = deserialize_function
sys.exit(engine.main(sys.argv[1:]))
"""


def _start_lying_engine(cluster):
    log = open(cluster.log_dir / "liar.log", "wb")
    p = subprocess.Popen([sys.executable, "-c", LYING_ENGINE, "--file", cluster.engine_file],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=_env())
    cluster.procs.append(p)   # stopped by pid with the rest
    return p


def test_an_engine_registering_later_is_warned_about(local_cluster, caplog):
    caplog.set_level(logging.WARNING, logger="minipar.client")
    local_cluster.start_engines(1)
    rc = local_cluster.client()
    rc.wait_for_engines(1, START_TIMEOUT_S)
    assert not [r for r in caplog.records if "runs Python" in r.getMessage()]
    _start_lying_engine(local_cluster)
    rc.wait_for_engines(2, START_TIMEOUT_S)
    (liar,) = [e for e in rc.ids if rc._engines[e]["cloudpickle"] == "0.0.1"]
    skews = [r.getMessage() for r in caplog.records if "runs Python" in r.getMessage()]
    assert len(skews) == 1 and f"engine {liar} runs Python 3.99.0 with cloudpickle 0.0.1" \
        in skews[0]
    assert f"this client runs Python {sys.version_info.major}.{sys.version_info.minor}" \
        in skews[0]


def test_a_skewed_engine_gives_a_clear_error_not_an_unpickling_one(local_cluster):
    local_cluster.start_engines(1)
    _start_lying_engine(local_cluster)
    first = local_cluster.client()
    first.wait_for_engines(2, START_TIMEOUT_S)
    with pytest.warns(RuntimeWarning, match=r"runs Python 3\.99\.0 with cloudpickle 0\.0\.1"):
        rc = local_cluster.client()
    (liar,) = [e for e in rc.ids if rc._engines[e]["python"] == [3, 99, 0]]
    (honest,) = [e for e in rc.ids if e != liar]
    with pytest.raises(errors.SerializationError) as e:
        rc[liar].apply_sync(lambda: 1)
    text = str(e.value)
    assert "could not unpickle the request" in text and "TypeError: code expected" in text
    assert "runs Python 3.99.0 with cloudpickle 0.0.1" in text
    assert "run the same Python minor version and cloudpickle everywhere" in text
    # an engine on the same versions: no warning, and it works
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rc[honest].apply_sync(lambda: 1) == 1


@pytest.mark.parametrize("start", ["import minipar",
                                   "runpy.run_module('minipar.engine', run_name='__main__')"])
def test_an_older_python_is_told_the_version_minipar_needs(start):
    # Python 3.8 meeting a vendored copy (pip would refuse to install it): the check reads
    # only sys.version_info, so this Python can stand in for 3.8
    fake = f"import runpy, sys; sys.version_info = (3, 8, 18, 'final', 0); {start}"
    p = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True,
                       env=_env(), timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == \
        "ImportError: minipar needs Python 3.9 or newer; this is Python 3.8.18"
