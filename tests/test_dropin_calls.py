"""ipyparallel 9 calls that real scripts make, each with ipyparallel's own parameter names
and defaults (read from its source: ``client/view.py``, ``client/client.py``,
``client/asyncresult.py``), against one controller and four engines for the module."""

import pytest

TIMEOUT = 60
pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture
def rc(shared_cluster):
    """The module's cluster: no test here kills, stops or reconfigures an engine."""
    return shared_cluster.rc


def keywords(**kwargs):
    return sorted(kwargs.items())


def test_apply_passes_keywords_named_f_and_self_to_the_function(rc):
    """ipyparallel's apply takes its function positionally (``__ipp_f``), so every
    keyword, ``f=`` and ``self=`` too, is the function's own."""
    dv, lview = rc[:], rc.load_balanced_view()
    expected = [("f", 1), ("self", 2)]
    assert dv.apply_sync(keywords, f=1, self=2) == [expected] * 4
    assert rc[0].apply(keywords, f=1, self=2).get(TIMEOUT) == expected
    assert lview.apply_async(keywords, f=1, self=2).get(TIMEOUT) == expected
    assert lview.apply_sync(keywords, f=1, self=2) == expected
    assert rc.broadcast_view().apply_sync(keywords, f=1) == [[("f", 1)]] * 4
    assert dv.remote(block=True)(keywords)(f=1, self=2) == [expected] * 4
