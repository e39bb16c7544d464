"""Settings from ``[tool.gradaudit]`` in the nearest pyproject.toml (the command line wins).

Keys are Settings field names, with dashes or underscores (``fail-on = "warning"``,
``impact-horizon = 100``, ``baseline = "ci/last-good.json"``). A relative ``baseline`` is
relative to the folder of the pyproject.toml that names it. Unknown keys and wrong types are
usage errors.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from gradaudit.errors import UsageError
from gradaudit.settings import Settings


def find_pyproject(start: Path | None = None) -> Path | None:
    """The first pyproject.toml in ``start`` (default: the working folder) or above it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _expected_types() -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(Settings)
    out: dict[str, tuple[type, ...]] = {}
    for f in fields(Settings):
        hint = hints.get(f.name, Any)
        args = typing.get_args(hint) or (hint,)
        out[f.name] = tuple(a for a in args if isinstance(a, type))
    return out


def load_config(start: Path | None = None) -> dict[str, Any]:
    """The ``[tool.gradaudit]`` table as Settings field names (dashes become underscores)."""
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read [tool.gradaudit]: {exc}") from exc
    tool = data.get("tool", {})
    table = tool.get("gradaudit", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.gradaudit] must be a table")
    expected = _expected_types()
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in expected:
            raise UsageError(f"{path}: [tool.gradaudit] has an unknown key {key!r}; known: "
                             + ", ".join(k.replace("_", "-") for k in expected))
        types = expected[name]
        if float in types:
            types = (*types, int)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if types and not ok:
            want = " or ".join(t.__name__ for t in types if t is not type(None))
            raise UsageError(f"{path}: [tool.gradaudit] {key} must be {want}, not {value!r}")
        out[name] = value
    if isinstance(out.get("baseline"), str):
        out["baseline"] = str(path.parent / out["baseline"])
    return out
