"""publish_data: a running task sends data to its client while it runs (ipyparallel's
``datapub``)::

    task on an engine ── publish_data({'step': i}) ──▶ the engine's _Streamer
        receiver thread, every STREAM_INTERVAL_S ── stream (name "data") ──▶ controller
        ──▶ client: ar.data (that request's metadata['data']) is updated with it

The reply carries everything the task published, so ``ar.data`` is complete once the
result is in, also for a client that asks for the result later. The engine imports this
module (it imports nothing from the client) and sets ``_publish``.
"""

_publish = None   # set by the engine: its _Streamer.publish_data


def publish_data(data):
    """Publish `data` (a dict of picklable values) from the task running on this
    engine: its client's ``ar.data`` is updated with it (``dict.update``), within
    STREAM_INTERVAL_S. The values are pickled when sent, not when published: publish a
    new object rather than changing one already published."""
    if _publish is None:
        raise RuntimeError("publish_data works only inside a task running on an engine")
    _publish(dict(data))
