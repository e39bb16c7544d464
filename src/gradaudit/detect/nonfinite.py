"""``nonfinite``: inf/NaN grad norms and losses.

An inf/NaN grad norm while the loss carries on finite is what an fp16 dynamic loss scaler leaves
behind: the step overflowed, the optimizer skipped it and halved the scale. Such steps form
episodes of kind ``nonfinite``, severity ``warning`` - never an explosion on their own. A
non-finite *loss* for good (``BROKE_RUN`` points in a row, or to the log's end:
:func:`breakdown_starts`), or non-finite grad norms that last to the end of the run, is
divergence; isolated non-finite losses the loss carried on after are not.
"""

from __future__ import annotations

import numpy as np

from gradaudit.detect._common import runs_of

ID = "nonfinite"
#: Non-finite losses in a row that are a breakdown, not isolated points the loss carried on after
BROKE_RUN = 3


def nonfinite(values: np.ndarray) -> np.ndarray:
    """True where a value is inf or NaN (a logged but unusable value)."""
    return ~np.isfinite(np.asarray(values, dtype=np.float64))


def breakdown_starts(bad: np.ndarray, to_end: bool = True) -> np.ndarray:
    """Indices where a breakdown starts in a stretch whose non-finite points are ``bad``: the
    first of each run of ``BROKE_RUN`` or more in a row, and, where the stretch runs to the
    log's end (``to_end``), of the run it ends with."""
    bad = np.asarray(bad, bool)
    starts = [a for a, b in runs_of(bad, 0)
              if b - a + 1 >= BROKE_RUN or (to_end and b == bad.size - 1)]
    return np.asarray(starts, dtype=np.int64)


def loss_broke(finite: np.ndarray, to_end: bool) -> bool:
    """The loss went non-finite for good in a stretch whose points are ``finite`` (True where
    finite): a breakdown starts there (:func:`breakdown_starts`). Fewer non-finite points in a
    row, with the loss finite again after them, are isolated (an overflow the optimizer
    skipped)."""
    return bool(breakdown_starts(~np.asarray(finite, bool), to_end).size)
