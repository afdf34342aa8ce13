"""Reading a text file the user named (a JSON schema, a dataset, prompts to train a head on): a
missing, unreadable or non-UTF-8 file is a one-line SpecdecodeError naming it."""

from __future__ import annotations

from pathlib import Path

from .errors import SpecdecodeError


def read_user_text(path: str | Path, what: str = "") -> str:
    """The UTF-8 text of `path`; `what` names the file in the error ("the JSON schema")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SpecdecodeError(f"cannot read {what + ' ' if what else ''}{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecdecodeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
