"""Engine-side helpers for the tests: functions that live in an importable module."""

from minipar import interactive


@interactive
def scaled(x):
    return x * scale  # noqa: F821 - `scale` is pushed to the engine's namespace
