"""User-facing errors. The CLI prints these as one line and exits non-zero, never a traceback."""


class SpecdecodeError(Exception):
    """A mistake the user can fix (bad input, missing model, checksum mismatch...)."""


class ModelNotFoundError(SpecdecodeError):
    """A model name or path that cannot be resolved."""


class ModelLoadError(SpecdecodeError):
    """A model file that exists but cannot be read (truncated, wrong format, bad checksum)."""


class ContextLengthError(SpecdecodeError):
    """The prompt (plus the requested tokens) does not fit the model's context."""


class InvalidParameterError(SpecdecodeError, ValueError):
    """A setting out of range (temperature, top_p, max_new_tokens...). Also a ValueError, as
    these always were, so `except ValueError` in callers keeps working."""


class StructuredOutputError(SpecdecodeError):
    """The grammar engine stopped a constrained request midway (a grammar past its limits)."""
