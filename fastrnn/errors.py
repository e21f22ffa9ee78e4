"""The errors fastrnn raises that are its own (re-exported as ``fastrnn.BackendUnavailable``)."""


class BackendUnavailable(RuntimeError):
    """``backend='triton'`` (or the functional API) was asked to run a call the kernels cannot
    serve; the message lists every reason."""
