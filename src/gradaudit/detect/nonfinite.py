"""``nonfinite``: inf/NaN grad norms and losses.

An inf/NaN grad norm while the loss carries on finite is what an fp16 dynamic loss scaler leaves
behind: the step overflowed, the optimizer skipped it and halved the scale. Such steps form
episodes of kind ``nonfinite``, severity ``warning`` - never an explosion on their own. A
non-finite *loss*, or non-finite grad norms that last to the end of the run, is divergence.
"""

from __future__ import annotations

import numpy as np

ID = "nonfinite"


def nonfinite(values: np.ndarray) -> np.ndarray:
    """True where a value is inf or NaN (a logged but unusable value)."""
    return ~np.isfinite(np.asarray(values, dtype=np.float64))
