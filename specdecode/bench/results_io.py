"""results.json on disk: its name and the atomic, compact writer (harness and report both write it)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"
_NUMBER_LIST = re.compile(r"\[(?:\s*-?[0-9][0-9.eE+-]*,)*\s*-?[0-9][0-9.eE+-]*\s*\]")  # one line per token list


def save_json(obj: Any, path: Path) -> None:
    """Write atomically: a Ctrl-C mid-write never leaves a truncated results.json."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    text = _NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
