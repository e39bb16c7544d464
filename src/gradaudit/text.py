"""Text from untrusted input made fit to write out as UTF-8.

A file or folder name that is not valid UTF-8 reaches Python with its odd bytes as lone
surrogates (``os.fsdecode``); writing them as UTF-8 fails. Every report shows such a byte as
``\\xNN`` instead (and any other lone surrogate as ``\\uXXXX``): the run keeps a readable name,
the report stays valid UTF-8 and valid JSON.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

#: The codec error handler that writes a lone surrogate as ``\xNN`` / ``\uXXXX`` text; report
#: streams are opened with ``errors=PRINTABLE``.
PRINTABLE = "gradaudit-printable"


def _escape(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name
            out.append(f"\\x{code - 0xDC00:02x}")
        else:  # another lone surrogate, or a character a narrower encoding lacks
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out), err.end


codecs.register_error(PRINTABLE, _escape)


def printable(text: str) -> str:
    """``text`` with its lone surrogates written out (module doc); unchanged when it has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", PRINTABLE).decode("utf-8")
    return text


def _printable_tree(obj: Any) -> Any:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if isinstance(k, str) else k: _printable_tree(v)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_printable_tree(v) for v in obj]
    return obj


#: C1 control characters (U+0080-U+009F): JSON escapes only those below U+0020, and a
#: terminal may act on these (U+009B is CSI) when the JSON is printed to it.
_C1 = re.compile("[\u0080-\u009f]")


def json_text(doc: Any, indent: int | None = 2) -> str:
    """``doc`` as strict JSON text (no NaN) that encodes as UTF-8, with no raw control
    character (module doc)."""
    text = json.dumps(doc, indent=indent, allow_nan=False, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # rare: a name with undecodable bytes; only then walk the tree
        text = json.dumps(_printable_tree(doc), indent=indent, allow_nan=False,
                          ensure_ascii=False)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def listed(names: list[str], limit: int) -> str:
    """``names`` as a reader sees them: the first ``limit`` quoted, then how many more."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
