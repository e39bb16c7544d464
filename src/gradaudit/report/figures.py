"""Figures for the HTML report: the grad norm and the loss of one run, as an embedded PNG.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global state, no display needed).
Figures carry no text from the logs (no run names or tags): the HTML around them names the run,
so nothing untrusted ever ends up inside an image or an SVG.
"""

from __future__ import annotations

import base64
import io
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 4.6, 90
LOG_LOSS_SPAN = 1e3  # a positive loss spanning more than this is drawn on a log scale
MAX_POINTS = 1600  # about two points per pixel of the panel's width
DRAW_MAX = 1e100  # larger finite values are drawn at this height (matplotlib's transforms
# and margins overflow near the float maximum; a value past it is off any chart anyway)

_GRAD = "#2563eb"
_LOSS = "#374151"
_CF = "#16a34a"
_SHADE = {"explosion": "#dc2626", "warning": "#f59e0b"}
_CLIP = "#7c3aed"


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most about MAX_POINTS points, keeping each bucket's min and max (spikes survive).

    Non-finite points are rare and matter: all of them are kept.
    """
    n = steps.size
    if n <= MAX_POINTS:
        return steps, values
    width = -(-n // (MAX_POINTS // 2))  # points per bucket
    buckets = -(-n // width)
    finite = np.isfinite(values)
    pad = buckets * width - n
    low = np.concatenate([np.where(finite, values, np.inf), np.full(pad, np.inf)])
    high = np.concatenate([np.where(finite, values, -np.inf), np.full(pad, -np.inf)])
    base = np.arange(buckets) * width
    idx = np.concatenate([base + low.reshape(buckets, width).argmin(axis=1),
                          base + high.reshape(buckets, width).argmax(axis=1),
                          np.flatnonzero(~finite)])
    idx = np.unique(idx[idx < n])
    return steps[idx], values[idx]


def _drawable(values: Any) -> np.ndarray:
    """``values`` as float64 with finite ones clipped to +-``DRAW_MAX`` (NaN/inf kept)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(v), np.clip(v, -DRAW_MAX, DRAW_MAX), v)


def _png(fig: Figure) -> bytes:
    """The figure as an 8-bit palette PNG (about a third of the size of the RGBA one)."""
    from PIL import Image

    canvas = fig.canvas
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(),
                             "raw", "RGBA", 0, 1).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class RunFigure:
    """Reusable figures (grad norm on a log scale over the loss), drawn again for each run.

    The axes are made once per layout and only their data artists are replaced per run, which
    keeps a figure at a few tens of milliseconds (tick machinery dominates a fresh figure).
    """

    def __init__(self) -> None:
        self._layouts: dict[tuple[bool, bool], tuple[Figure, list[Any]]] = {}

    def _layout(self, grad: bool, loss: bool) -> tuple[Figure, list[Any]]:
        key = (grad, loss)
        if key not in self._layouts:
            fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN if grad and loss else HEIGHT_IN * 0.55),
                         dpi=DPI)
            FigureCanvasAgg(fig)
            n = int(grad) + int(loss)
            axes = list(fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0])
            for ax in axes:
                self._style(ax)
            if grad:
                axes[0].set_yscale("log")
                axes[0].yaxis.set_major_locator(LogLocator(base=10, numticks=6))
                axes[0].yaxis.set_minor_locator(NullLocator())
                axes[0].set_ylabel("grad norm (log)", fontsize=8, color="#374151")
            if loss:
                axes[-1].set_ylabel("loss", fontsize=8, color="#374151")
            axes[-1].set_xlabel("step", fontsize=8, color="#374151")
            two = n == 2
            fig.subplots_adjust(left=0.08, right=0.985, top=0.93 if two else 0.86,
                                bottom=0.11 if two else 0.2, hspace=0.12)
            self._layouts[key] = (fig, axes)
        fig, axes = self._layouts[key]
        for ax in axes:
            for artist in [*ax.lines, *ax.patches, *ax.collections, *ax.texts]:
                artist.remove()
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
            ax.set_autoscale_on(True)
        return fig, axes

    def zoom_data_uris(self, run: Any) -> list[tuple[int, str]]:
        """``(onset, figure URI)`` of each episode a long run's traces hold a full-resolution
        window of (``zoom:{onset}:*``, worst first): the whole-run figure shows it a pixel wide."""
        traces = run.traces or {}
        onsets = list(dict.fromkeys(int(k.split(":")[1]) for k in traces if k.startswith("zoom:")))
        out = []
        for on in onsets:
            grad, loss = traces.get(f"zoom:{on}:grad"), traces.get(f"zoom:{on}:loss")
            spans = [np.asarray(t[0]) for t in (grad, loss) if t is not None and len(t[0])]
            if not spans:
                continue
            lo = min(int(x[0]) for x in spans)
            hi = max(int(x[-1]) for x in spans)
            view = SimpleNamespace(
                traces={k: v for k, v in (("grad_norm", grad), ("loss", loss),
                                          (f"counterfactual:{on}",
                                           traces.get(f"counterfactual:{on}"))) if v is not None},
                episodes=[ep for ep in run.episodes if ep.onset_step <= hi and
                          (ep.end_step is None or ep.end_step >= lo)],
                clip=run.clip, first_step=lo, last_step=hi)
            uri = self.png_data_uri(view, (lo, hi))
            if uri is not None:
                out.append((on, uri))
        return out

    def png_data_uri(self, run: Any, xlim: tuple[int, int] | None = None) -> str | None:
        """The run's figure as a ``data:image/png;base64,...`` URI, or None without traces
        (``xlim``: the steps to show, for a zoom)."""
        traces = run.traces or {}
        grad = traces.get("grad_norm")
        loss = traces.get("loss")
        if grad is None and loss is None:
            return None
        fig, axes = self._layout(grad is not None, loss is not None)
        if grad is not None:
            self._grad_panel(axes[0], run, grad)
        if loss is not None:
            self._loss_panel(axes[-1], run, loss, traces)
        for ax in axes:
            ax.relim()
            ax.autoscale_view()
        if loss is not None:
            self._loss_limits(axes[-1], loss)
        if xlim is not None:
            axes[-1].set_xlim(*xlim)  # the axes share x
        handles, labels = [], []
        for ax in axes:
            h, lab = ax.get_legend_handles_labels()
            handles += h
            labels += lab
        fig.legends.clear()
        fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.985, 1.0))
        return "data:image/png;base64," + base64.b64encode(_png(fig)).decode("ascii")

    @staticmethod
    def _style(ax: Any) -> None:
        ax.grid(True, which="major", color="#e5e7eb", linewidth=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#9ca3af")
        ax.tick_params(labelsize=8, colors="#4b5563")
        ax.xaxis.set_major_locator(MaxNLocator(8))
        ax.yaxis.set_major_locator(MaxNLocator(5))

    def _shade(self, ax: Any, run: Any, mark_onset: bool) -> None:
        last = run.last_step
        first = run.first_step if run.first_step is not None else 0
        # Short episodes are widened to stay visible (1 % of the run's span at least).
        min_width = max(1.0, 0.01 * ((last if last is not None else 0) - first))
        for ep in run.episodes:
            color = _SHADE.get(ep.severity, "#f59e0b")
            end = ep.end_step if ep.end_step is not None else last
            if end is None or end <= ep.onset_step:
                end = ep.peak_step if ep.peak_step > ep.onset_step else ep.onset_step + 1
            end = max(end, ep.onset_step + min_width)
            ax.axvspan(ep.onset_step, end, color=color, alpha=0.16, linewidth=0)
            if mark_onset:
                ax.axvline(ep.onset_step, color=color, linewidth=1.0, linestyle="--")

    def _grad_panel(self, ax: Any, run: Any, grad: tuple[np.ndarray, np.ndarray]) -> None:
        steps, values = _thin(np.asarray(grad[0]), _drawable(grad[1]))
        self._shade(ax, run, mark_onset=True)
        positive = np.isfinite(values) & (values > 0)
        ax.plot(steps[positive], values[positive], color=_GRAD, linewidth=0.9, label="grad norm")
        bad = ~np.isfinite(values)
        if bad.any() and positive.any():
            top = float(np.max(values[positive]))
            ax.plot(steps[bad], np.full(int(bad.sum()), top), linestyle="none", marker="x",
                    color="#dc2626", markersize=5, label="non-finite")
        for ep in run.episodes:
            if ep.peak_grad_norm is not None and math.isfinite(ep.peak_grad_norm) \
                    and ep.peak_grad_norm > 0:
                ax.plot([ep.peak_step], [min(ep.peak_grad_norm, DRAW_MAX)], marker="v",
                        linestyle="none",
                        color=_SHADE.get(ep.severity, "#f59e0b"), markersize=6)
        clip = run.clip.suggested_threshold if run.clip is not None else None
        if clip is not None and math.isfinite(clip) and 0 < clip <= DRAW_MAX:
            ax.axhline(clip, color=_CLIP, linewidth=1.0, linestyle=":",
                       label=f"suggested clip {clip:.3g}")

    def _loss_panel(self, ax: Any, run: Any, loss: tuple[np.ndarray, np.ndarray],
                    traces: dict[str, Any]) -> None:
        steps, values = _thin(np.asarray(loss[0]), _drawable(loss[1]))
        self._shade(ax, run, mark_onset=True)
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], color=_LOSS, linewidth=0.9, label="loss")
        first = True
        for key in sorted(k for k in traces if k.startswith("counterfactual:")):
            cf_steps, cf_values = traces[key]
            cf_values = _drawable(cf_values)
            good = np.isfinite(cf_values)
            label = "loss without the episode (counterfactual)" if first else None
            ax.plot(np.asarray(cf_steps)[good], cf_values[good], color=_CF, linewidth=1.3,
                    linestyle="--", label=label)
            first = False

    @staticmethod
    def _loss_limits(ax: Any, loss: tuple[np.ndarray, np.ndarray]) -> None:
        """Y limits that keep the loss readable when a divergence shoots it up; a positive loss
        whose middle 99 % spans more than ``LOG_LOSS_SPAN`` x is drawn on a log scale (a run
        that diverged early is mostly its climb, to 1e21: linear, a flat line)."""
        ax.set_yscale("linear")  # the axes are reused from run to run
        ax.yaxis.set_major_locator(MaxNLocator(5))
        values = _drawable(loss[1])
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        lo, hi = np.percentile(values, [0.5, 99.5])
        if lo > 0 and hi / lo > LOG_LOSS_SPAN:
            ax.set_yscale("log")
            ax.set_ylim(float(values[values > 0].min()) / 1.5, float(values.max()) * 1.5)
            ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
            ax.yaxis.set_minor_locator(NullLocator())
            return
        peak = float(np.max(values))
        span = max(float(hi - lo), 1e-12)
        ax.set_ylim(lo - 0.05 * span, max(hi, min(peak, hi + 3 * span)) + 0.05 * span)
