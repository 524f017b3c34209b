"""The one error a user's input raises: :class:`UsageError`, reported as one line.

Below every module that checks flags, files or teachers (``config``, the model
files of ``keras_softkd.models.loading``, ``experiment``, ``grid``), so that
each of them raises the same class without importing the others.
"""


class UsageError(ValueError):
    """A bad flag or input: reported as one line, without a traceback."""
