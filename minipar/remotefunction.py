"""What a view's ``@view.remote()`` and ``@view.parallel()`` decorators make: functions
whose calls run through the view (its apply, or its map over parts of the arguments).

They use only the view's public flags and its ``_finish`` / ``_map``; client.py imports
them back, so ``minipar.client.ParallelFunction`` is where ipyparallel scripts look.
"""

from .asyncresult import _ctrl_c_aborts


class RemoteFunction:
    """A function whose calls run remotely through a view (``@view.remote()``)."""

    def __init__(self, view, f, block=None, **flags):
        self.view, self.func, self.block, self.flags = view, f, block, flags
        self.__name__ = getattr(f, "__name__", "remote_function")
        self.__doc__ = getattr(f, "__doc__", None)

    @_ctrl_c_aborts
    def __call__(self, *args, **kwargs):
        with self.view.temp_flags(**self.flags):
            return self.view._finish(self.view.apply_async(self.func, *args, **kwargs), self.block)


class ParallelFunction(RemoteFunction):
    """``@view.parallel()``: calling it splits the sequence arguments across engines and
    concatenates the results; ``.map(seq)`` applies it element-wise."""

    def __init__(self, view, f, dist="b", block=None, **flags):
        super().__init__(view, f, block, **flags)
        self.dist = dist

    @_ctrl_c_aborts
    def __call__(self, *sequences):
        with self.view.temp_flags(**self.flags):
            return self.view._finish(self.view._map(self.func, sequences, elementwise=False),
                                     self.block)

    @_ctrl_c_aborts
    def map(self, *sequences):
        with self.view.temp_flags(**self.flags):
            return self.view._finish(self.view._map(self.func, sequences), self.block)
