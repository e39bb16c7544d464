"""Settings from ``[tool.gradaudit]`` in the nearest pyproject.toml (the command line wins)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gradaudit.errors import UsageError


def find_pyproject(start: Path | None = None) -> Path | None:
    """The first pyproject.toml in ``start`` (default: the working folder) or above it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> dict[str, Any]:
    """The ``[tool.gradaudit]`` table as Settings field names (dashes become underscores)."""
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read [tool.gradaudit]: {exc}") from exc
    table = data.get("tool", {}).get("gradaudit", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.gradaudit] must be a table")
    return {key.replace("-", "_"): value for key, value in table.items()}
