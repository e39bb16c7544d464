"""Settings of a scan, with their documented defaults."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gradaudit.parallel import DEFAULT_TIMEOUT

FAIL_ON = ("explosion", "warning", "regression", "never")
_GATE_LEVEL = {"explosion": 2, "warning": 1}
_STATUS_LEVEL = {"explosion": 2, "warning": 1}  # ok and error never fail the gate by themselves


def fails_gate(status: str, fail_on: str) -> bool:
    """Whether a run with ``status`` fails a gate set at ``fail_on`` (``regression``: no status
    does, only regressions against the baseline; ``never``: nothing does)."""
    if fail_on in ("regression", "never"):
        return False
    return _STATUS_LEVEL.get(status, 0) >= _GATE_LEVEL[fail_on]


#: No setting is meaningful above this (steps, points, ratios alike); larger values overflow.
MAX_SETTING = 1e9


#: The settings that are factors a value must rise by to count: each above 1 (at 1 or below,
#: every step counts); the baseline gate's factors may be 1 (any rise, or the delta alone).
RATIOS = ("spike_ratio", "level_ratio", "explosion_ratio", "lr_ratio")
BASELINE_RATIOS = ("baseline_grad_norm_ratio", "baseline_spike_rate_ratio")


@dataclass(frozen=True)
class Settings:
    """Everything a scan can be told. The CLI and ``[tool.gradaudit]`` fill the same fields.

    - ``grad_tag``/``loss_tag``: globs that restrict which tags are the grad norm and the loss.
    - ``impact_horizon``: steps after an onset over which the excess loss is averaged.
    - ``fail_on``: the lowest run status that fails the gate (``regression``: only regressions
      against ``baseline`` fail it; ``never`` turns the gate off).
    - ``baseline``: path of an earlier JSON report to compare against.
    - ``workers``: processes that read and audit runs (1 = in this process).
    - ``timeout``: seconds one input (a file, or a run's folder) may take to be read and
      audited in a worker process; past it, the process is ended and the input reported as an
      error (600; only with ``workers`` above 1: in this process, nothing can stop a reader
      stuck in native code).
    - ``spike_ratio``: grad norm / healthy level at which a point starts an episode (3x).
    - ``level_ratio``: a PELT level shift this many times the level before is an episode (2x).
    - ``merge_gap``: anomalous points at most this many logged points apart join one episode.
    - ``harm_excess``: lasting excess loss (the excess without the episode's own spike points;
      a fraction of the loss level, and at least 2 standard errors of the excess estimate - the
      Bonferroni level over the listed episodes in a chronically spiky run) that counts as harm
      (4 %: the loss averaged over the impact horizon was 4 % worse than the counterfactual -
      above the seed-to-seed spread of a run's smoothed loss and the estimate's own error of
      ~1-2 %, and 0.8x the 5 % that clearly hurts, where the benchmark's band of harm that is
      neither clear nor absent begins; at 3 %, an accurately estimated 3-4 % was an explosion:
      benchmarks/detection/README.md, "The harm bar").
    - ``harm_jump``: loss jump (fraction of the loss level, and at least 6 noise sigmas) that
      counts as harm (10 %). An episode is an explosion only when the loss was harmed.
    - ``explosion_ratio``: with no loss series, the peak ratio that makes an explosion (10x).
    - ``clip_max_cost``: the suggested clip threshold is the smallest option that clips at most
      this fraction of healthy steps (1 %: p99-healthy strength; judged by replay it removed a
      median 79 % of the lasting damage, at <= 1 % clean cost on 6 of 8 pairs, see clip.py).
    - ``lr_ratio``: an lr rise (outside the warm-up) by this factor is an ``lr-change``
      (1.25x: a decaying schedule never rises, so any clear rise is an event).
    - ``lr_lookahead``: an episode starting up to this many logged points after an lr rise's
      top is attributed to it, and its onset moves to the rise (50).
    - ``baseline_grad_norm_ratio``: against ``--baseline``, a healthy grad-norm level above this
      many times the baseline's is a regression (1.5x).
    - ``baseline_spike_rate_delta``/``baseline_spike_rate_ratio``: a spike rate (episodes per
      1000 steps) above the baseline's by this much *and* this many times is a regression
      (+1 and 2x).
    """

    grad_tag: str | None = None
    loss_tag: str | None = None
    impact_horizon: int = 200
    fail_on: str = "explosion"
    baseline: str | None = None
    workers: int = 1
    timeout: float = DEFAULT_TIMEOUT
    spike_ratio: float = 3.0
    level_ratio: float = 2.0
    merge_gap: int = 5
    harm_excess: float = 0.04
    harm_jump: float = 0.1
    explosion_ratio: float = 10.0
    clip_max_cost: float = 0.01
    lr_ratio: float = 1.25
    lr_lookahead: int = 50
    baseline_grad_norm_ratio: float = 1.5
    baseline_spike_rate_delta: float = 1.0
    baseline_spike_rate_ratio: float = 2.0

    def __post_init__(self) -> None:
        self._check_types()
        if self.fail_on not in FAIL_ON:
            raise ValueError(f"fail_on must be one of {', '.join(FAIL_ON)}, not {self.fail_on!r}")
        if int(self.impact_horizon) < 1:
            raise ValueError("impact_horizon must be a positive number of steps")
        if int(self.workers) < 1:
            raise ValueError("workers must be at least 1")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value) or value < 0 or (isinstance(value, float) and value == 0):
                raise ValueError(f"{f.name} must be a finite positive number, not {value!r}")
            if value > MAX_SETTING:
                raise ValueError(f"{f.name} must be at most {MAX_SETTING:g}, not {value!r}")
        for name in RATIOS:  # a rise "by" a factor of 1 or less flags every step
            if getattr(self, name) <= 1:
                raise ValueError(f"{name} is a factor and must be above 1, not "
                                 f"{getattr(self, name)!r}")
        for name in BASELINE_RATIOS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is a factor and must be at least 1, not "
                                 f"{getattr(self, name)!r}")
        if self.clip_max_cost >= 1:
            raise ValueError(f"clip_max_cost is a share of the healthy steps and must be below 1, "
                             f"not {self.clip_max_cost!r}")

    def _check_types(self) -> None:
        """Each field as its annotation says (a path may be a ``os.PathLike``, a whole float an
        int, an int a float): a wrong type is a ValueError here, not a failure in every run."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and "None" in kind:
                continue
            if kind.startswith("str"):
                if f.name == "baseline" and isinstance(value, os.PathLike):
                    value = os.fspath(value)
                if not isinstance(value, str):
                    raise ValueError(f"{f.name} must be a string, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{f.name} must be a number, not {value!r}")
            elif kind == "int":
                if not isinstance(value, numbers.Integral) and not float(value).is_integer():
                    raise ValueError(f"{f.name} must be a whole number, not {value!r}")
                value = int(value) if math.isfinite(value) else float(value)
            else:
                value = float(value)
            object.__setattr__(self, f.name, value)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
