"""Watching an AsyncResult: ``await ar``, progress bars, what its requests print, their
timings and timeline. ``Watched`` is a base class of client.AsyncResult; the work is done
in integrations.py (imported when first used, as it imports tqdm, matplotlib...). This
module imports nothing of minipar's, so the client imports it at no cost.
"""


class Watched:
    """Methods of an AsyncResult (``_children``: one future with ``metadata`` per
    request, ``_submitted``, ``_fname``, ``wait``)."""

    def __await__(self):
        """``await ar`` in a coroutine: the result, without blocking the event loop."""
        import asyncio  # here, not at the top: it doubles the time of `import minipar`

        return asyncio.wrap_future(self).__await__()

    @property
    def serial_time(self):
        """Seconds of computation: the sum of the finished requests' run times."""
        return sum(md["completed"] - md["started"] for md in (f.metadata for f in self._children)
                   if md["started"] is not None and md["completed"] is not None)

    @property
    def wall_time(self):
        """Seconds from the first submission to the last result received (so far)."""
        received = [f.metadata["received"] for f in self._children
                    if f.metadata["received"] is not None]
        return max(received) - self._submitted if received else 0.0

    def wait_interactive(self, interval=0.1, timeout=None):
        """Wait (at most `timeout` s), drawing a progress bar on stderr every `interval`
        s: requests done/total, rate and time left (tqdm's bar when it is installed).
        Returns whether all are done."""
        from .integrations import _wait_with_bar

        return _wait_with_bar(self, self._fname or "tasks", interval, timeout)

    def stream_output(self, interval=0.1, timeout=None, file=None):
        """Print what the requests print, as the engines print it, each line prefixed
        with its stream and engine (``[stdout:0] ...``, stderr to sys.stderr), until
        all are done (or `timeout` s). Returns whether all are done."""
        from .integrations import _stream_output

        return _stream_output(self, interval, timeout, file)

    def display_outputs(self, file=None):
        """Print each request's stdout and stderr so far, prefixed like ``[stdout:0]``."""
        from .integrations import _show_outputs

        _show_outputs(self, {}, file, partial=True)

    def timeline(self, filename=None, title=None):
        """A Gantt chart of the requests, per engine: see ``plot_timeline``."""
        from .integrations import plot_timeline

        return plot_timeline(self, filename, title)
