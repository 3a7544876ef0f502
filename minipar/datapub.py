"""publish_data: a running task sends data to its client while it runs (ipyparallel's
``datapub``)::

    task on an engine ── publish_data({'step': i}) ──▶ the engine's _Streamer
        receiver thread, every STREAM_INTERVAL_S ── stream (name "data") ──▶ controller
        ──▶ client: ar.data (that request's metadata['data']) is updated with it

The reply carries everything the task published, so ``ar.data`` is complete once the
result is in, also for a client that asks for the result later. The engine imports this
module (it imports nothing from the client), sets ``_publish`` and ``_shell``, and makes
``display`` a builtin, as on ipyparallel's engines (IPython kernels).
"""

_publish = None   # set by the engine: its _Streamer.publish_data
_shell = None     # set by the engine: its InteractiveShell, made at the first call


def publish_data(data):
    """Publish `data` (a dict of picklable values) from the task running on this
    engine: its client's ``ar.data`` is updated with it (``dict.update``), within
    STREAM_INTERVAL_S. The values are pickled when sent, not when published: publish a
    new object rather than changing one already published."""
    if _publish is None:
        raise RuntimeError("publish_data works only inside a task running on an engine")
    _publish(dict(data))


def display(*objs, **kwargs):
    """IPython's display() in a task on an engine. minipar sends no rich display data:
    each object's plain text (IPython's text/plain, ``'hi'`` for the string) is printed,
    so %px shows it as ``[stdout:0] 'hi'`` (ipyparallel: ``[output:0]`` then ``'hi'``).
    Without IPython on the engine: each object's repr."""
    if _shell is None:
        raise RuntimeError("this display works only inside a task running on an engine")
    try:
        from IPython.display import display
    except ImportError:
        return print(*map(repr, objs), sep="\n")
    _shell()   # without a shell, IPython's display prints str(x): hi, not 'hi'
    display(*objs, **kwargs)
