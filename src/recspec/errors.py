"""Errors a user can act on. Each message names what is wrong and where (file, line, item, field)."""


class RecSpecError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class DataError(RecSpecError):
    """Malformed or inconsistent input data (files, ids, histories)."""


class CheckpointError(RecSpecError):
    """A checkpoint that is missing, malformed, or does not fit the data or the other model."""
