"""Detectors: pure functions over NumPy arrays, each in its own module with a stable ID.

``DETECTORS`` maps the ID (as reported in an episode's ``detected_by``) to the function; each
function's docstring (and its module's) is its user documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradaudit.detect.ema_zscore import ema_zscore, olmo_skip
from gradaudit.detect.head_blowup import head_blowup
from gradaudit.detect.level_climb import level_climb
from gradaudit.detect.loss_rise import loss_rise
from gradaudit.detect.loss_spike import loss_spike
from gradaudit.detect.lr_change import lr_rises
from gradaudit.detect.nonfinite import nonfinite
from gradaudit.detect.pelt import level_shifts, pelt
from gradaudit.detect.robust_threshold import robust_threshold

DETECTORS: dict[str, Callable[..., Any]] = {
    "robust-threshold": robust_threshold,
    "ema-zscore": ema_zscore,
    "olmo-skip": olmo_skip,
    "pelt": level_shifts,
    "level-climb": level_climb,
    "nonfinite": nonfinite,
    "loss-spike": loss_spike,
    "loss-rise": loss_rise,
    "lr-change": lr_rises,
    "head-blowup": head_blowup,
}

__all__ = [
    "DETECTORS",
    "ema_zscore",
    "head_blowup",
    "level_climb",
    "level_shifts",
    "loss_rise",
    "loss_spike",
    "lr_rises",
    "nonfinite",
    "olmo_skip",
    "pelt",
    "robust_threshold",
]
