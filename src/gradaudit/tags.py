"""Choose a run's grad-norm, loss and learning-rate series from the names frameworks log.

The names come from the training code of each framework (see docs/formats.md): Hugging Face
``train/grad_norm``, Megatron ``grad-norm``/``grad norm``, OLMo ``optim/total_grad_norm``,
fairseq ``gnorm``, Lightning ``grad_2.0_norm_total``, Composer ``l2_norm/grad/global``, ...
Known names win; otherwise a name that says grad+norm (or loss) is ranked: a total norm before
per-layer norms, step-indexed before sample-indexed series. Whatever their names, validation
series and norms logged after clipping rank after every other candidate, and, among names of
one kind, a series with under a tenth of the points of another (a per-epoch loss beside the
per-step one) after the denser ones. Auxiliary losses are never the loss. A user's glob
(``--grad-tag``/``--loss-tag``) restricts the candidates to the tags it matches. One series is
never both the grad norm and the loss.

W&B chart exports carry ``<metric>__MIN``/``__MAX`` beside each bucketed column: the grad norm is
read from ``__MAX`` (spikes live there), the loss from the plain column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

GRAD_NORM_NAMES: tuple[str, ...] = (
    "train/grad_norm",
    "grad_norm",
    "train/global_grad_norm",
    "global_grad_norm",
    "optim/total_grad_norm",
    "optim/total grad norm",
    "grad-norm",
    "grad norm",
    "train_inner/gnorm",
    "train/gnorm",
    "gnorm",
    "l2_norm/grad/global",
    "grad_2.0_norm_total",
    "grad_1.0_norm_total",  # (Lightning's grad_norm(norm_type=1) and norm_type="inf")
    "grad_inf_norm_total",
    "grad_norm_total",
    "total_grad_norm",
    "train/gradient_norm",
    "gradient_norm",
    "gradient_norm/total",
    "grad_norm/total",
    "trainer/grad_norm",
)

LOSS_NAMES: tuple[str, ...] = (
    "train/loss",
    "lm loss",
    "lm-loss",
    "lm_loss",  # (tensorboardX writes Megatron's "lm loss" so)
    "train/lm_loss",
    "train/lm loss",
    "train_loss",
    "train_loss_step",
    "train/loss_step",
    "train/crossentropyloss",
    "train/ce loss",
    "loss/train/total",
    "train_inner/loss",
    "loss_metrics/global_avg_loss",
    "reduced_train_loss",
    "training_loss",
    "train/train_loss",
    "total_loss",  # (detectron2's metrics.json, beside its loss_cls, loss_box_reg, ...)
    "loss",
)

LR_NAMES: tuple[str, ...] = (
    "train/learning_rate",
    "learning_rate",
    "learning-rate",
    "learning rate",
    "train/lr",
    "lr",
    "optim/lr (group 0)",
    "optim/lr",
    "lr-adamw",
    "lr-adam",
    "lr-sgd",
    "trainer/learning_rate",
    "train_inner/lr",
)

# Losses that a framework logs as the mean over the steps since its previous log, known by the
# tags logged beside them (the loss tag, its companions, how many of them must be there). The HF
# Trainer averages ``loss`` over its logging interval; its TensorBoard and W&B callbacks write
# ``train/loss`` next to ``train/learning_rate``, ``train/epoch`` and (4.38+) ``train/grad_norm``,
# and W&B also gets ``train/global_step``; its MLflow callback logs the Trainer's own keys,
# ``loss`` beside ``learning_rate``, ``epoch`` and ``grad_norm``. fairseq restarts its
# ``train_inner`` meters at each log: ``train_inner/loss`` in W&B, ``loss`` beside ``gnorm``,
# ``ups``, ``train_wall``... in the ``train_inner`` TensorBoard folder (its ``valid`` folder has
# none of those three). Megatron's TensorBoard ``lm loss`` is the iteration's own (only its stdout
# line averages). A loop of one's own that logs its current loss under all of the Trainer's names
# is read as the Trainer's; the run's notes say so.
INTERVAL_MEAN_SIGNATURES: tuple[tuple[str, frozenset[str], int], ...] = (
    ("train/loss", frozenset({"train/learning_rate", "train/epoch", "train/grad_norm"}), 3),
    ("train/loss", frozenset({"train/learning_rate", "train/epoch", "train/global_step"}), 3),
    ("loss", frozenset({"learning_rate", "epoch", "grad_norm"}), 3),
    ("train_inner/loss", frozenset({"train_inner/gnorm", "train_inner/wps", "train_inner/ups",
                                    "train_inner/wpb", "train_inner/bsz"}), 3),
    ("loss", frozenset({"gnorm", "ups", "train_wall", "wps", "wpb", "bsz"}), 5),
)

_BUCKET = re.compile(r"__(MIN|MAX)$")
_EVAL = re.compile(r"(^|[/_\-. ])(val|valid|validation|eval|evaluation|test|dev)([/_\-. ]|$)")
_SAMPLE_INDEXED = re.compile(r"vs samples|vs tokens|samples/|tokens/", re.IGNORECASE)
_GRAD_NORM = re.compile(r"(grad(ient)?s?[ _\-/.]*(l?[12][ _\-.]*|[12]\.0[ _\-]*|inf[ _\-]*)?norm"
                        r"|gnorm)", re.I)
_LOSS = re.compile(r"loss", re.IGNORECASE)
_OTHER_NORM = re.compile(r"grad(?:ient)?s?[ _\-/.]*(inf|l?1(?:\.0)?)[ _\-.]*norm", re.IGNORECASE)
# (and the auxiliary losses of mixture-of-experts and OLMo models: never the training loss)
_AUX_LOSS = re.compile(r"aux|z[ _\-]?loss|load[ _\-]?balanc|router", re.IGNORECASE)
_NOT_LOSS = re.compile(r"scale|scaler|ppl|perplexity|weight|coef|skipped|" + _AUX_LOSS.pattern,
                       re.IGNORECASE)
_NOT_GRAD = re.compile(r"ratio|scale|clip_coef|std|var|frac|count", re.IGNORECASE)
# a norm logged after clipping never shows a spike above the clip threshold ("unclipped",
# "pre_clipped", "non-clipped", "not_clipped", "before_clipped" are the norm before it)
_NOT_YET = ("un", "non", "pre", "not", "before")
_POST_CLIP = re.compile("".join(f"(?<!{w}{s})" for w in _NOT_YET for s in ("", "_", "-", " "))
                        + r"clipped|(after|post)[ _\-./]?clip", re.IGNORECASE)
SPARSE_FACTOR = 10  # a candidate with under 1/10 of another's points ranks after it
_LR = re.compile(r"(^|[/_\-. ])(lr|learning[ _\-]?rate)([/_\-. (]|$)", re.IGNORECASE)
_PER_PARAM = re.compile(r"(weight|bias|layer|block|param|\.\d+\.|/\d+/|embed)", re.IGNORECASE)


@dataclass(frozen=True)
class TagChoice:
    """The chosen tags (``None`` where a run logs no such series) and why not, if not."""

    grad_norm: str | None
    loss: str | None
    lr: str | None
    notes: tuple[str, ...] = ()


def _known_rank(tag: str, names: tuple[str, ...]) -> int | None:
    low = tag.lower()
    try:
        return names.index(low)
    except ValueError:
        return None


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_TRAIN = re.compile(r"(^|[/_\-. ])train(ing)?([/_\-. ]|$)")


def _words(tag: str) -> str:
    """``tag`` lower-cased with camelCase split: ``Metrics/ValLoss`` -> ``metrics/val_loss``."""
    return _CAMEL.sub("_", tag).lower()


def _last_resort(tag: str) -> bool:
    """A validation series, or a norm logged after clipping: chosen only where nothing else
    is."""
    return bool(_EVAL.search(_words(tag)) or _POST_CLIP.search(tag))


def _heuristic_penalty(tag: str) -> int:
    """Lower is better: sample-indexed, per-epoch and deep names rank last."""
    low = _words(tag)
    penalty = low.count("/") * 2
    if _TRAIN.search(low):
        penalty -= 1
    if _SAMPLE_INDEXED.search(tag):
        penalty += 50
    if "epoch" in low:
        penalty += 20
    return penalty


def _rank(
    tags: Iterable[str], names: tuple[str, ...], accept: re.Pattern[str],
    reject: re.Pattern[str], counts: Mapping[str, int] | None = None,
) -> list[str]:
    """Candidates best first: known names, then a known last part, then names that ``accept``
    (validation and post-clip series after all of them). Among known names (whole or last
    part), and among the others, a candidate with under 1/``SPARSE_FACTOR`` of the points of
    the densest one (``counts``), or a single point beside more, ranks after the rest:
    fairseq's W&B log has a per-epoch ``train/loss`` beside the per-update
    ``train_inner/loss``, Keras a per-epoch ``loss`` beside ``batch/loss``; a dense name that
    only says loss never displaces a known one."""
    found: list[tuple[tuple[bool, int], int, int, str]] = []  # (class, score, tie-break, tag)
    for tag in tags:
        if _BUCKET.search(tag):
            continue
        known = _known_rank(tag, names)
        last = tag.rsplit("/", 1)[-1]
        known_last = _known_rank(last, names)
        if known is not None:
            found.append(((_last_resort(tag), 0), 0, known, tag))
        elif known_last is not None:
            found.append(((_last_resort(tag), 1), _heuristic_penalty(tag), known_last, tag))
        elif accept.search(tag) and not reject.search(tag):
            found.append(((_last_resort(tag), 2), _heuristic_penalty(tag), len(tag), tag))
    def group(klass: tuple[bool, int]) -> tuple[bool, bool]:  # (known: whole or last part)
        return klass[0], klass[1] < 2

    most: dict[tuple[bool, bool], int] = {}  # the most points a candidate of each group has
    for klass, *_, tag in found:
        most[group(klass)] = max(most.get(group(klass), 0), (counts or {}).get(tag, 0))

    def sparse(klass: tuple[bool, int], tag: str) -> bool:
        # (one point is no series: the HF Trainer's closing ``train_loss`` beside the ``loss``
        # of a run logged 10 times or fewer)
        n, top = (counts or {}).get(tag, 0), most[group(klass)]
        return counts is not None and (SPARSE_FACTOR * n < top or n <= 1 < top)

    found.sort(key=lambda f: (f[0][0], not group(f[0])[1], sparse(f[0], f[3]), f[0][1], *f[1:]))
    return [tag for *_, tag in found]


def _grad_candidates(tags: list[str], counts: Mapping[str, int] | None = None) -> list[str]:
    ranked = _rank(tags, GRAD_NORM_NAMES, _GRAD_NORM, _NOT_GRAD, counts)

    def per_param(tag: str) -> bool:
        m = _GRAD_NORM.search(tag)
        tail = tag[m.end():] if m else ""
        return bool(tail.startswith("/") or _PER_PARAM.search(tag)) and not re.search(
            r"total|global", tag, re.I
        )

    totals = [t for t in ranked if not per_param(t)]
    return totals or ranked


def _apply_glob(tags: list[str], glob: str | None) -> list[str]:
    if glob is None:
        return tags
    return [t for t in tags if fnmatchcase(t, glob) or fnmatchcase(t.lower(), glob.lower())]


def interval_mean_tags(tags: Iterable[str]) -> frozenset[str]:
    """The loss tags among ``tags`` that their framework logs as interval means (see
    ``INTERVAL_MEAN_SIGNATURES``: the loss tag and at least ``need`` of its companions)."""
    present = set(tags)
    return frozenset(
        loss for loss, companions, need in INTERVAL_MEAN_SIGNATURES
        if loss in present and len(companions & present) >= need
    )


def choose_tags(
    tags: Iterable[str], grad_tag: str | None = None, loss_tag: str | None = None,
    counts: Mapping[str, int] | None = None,
) -> TagChoice:
    """Pick the grad-norm, loss and lr tags among ``tags`` (``counts``: points per tag, where
    known); globs restrict the candidates."""
    all_tags = sorted(set(tags))
    notes: list[str] = []

    def grads(pool: list[str]) -> list[str]:
        return _grad_candidates(pool, counts)

    def losses(pool: list[str]) -> list[str]:
        return _rank(pool, LOSS_NAMES, _LOSS, _NOT_LOSS, counts)

    def chosen(pool: list[str], ranked: list[str], other: list[str], glob: str | None,
               option: str) -> list[str]:
        """The candidates in order: with a glob, its tags ranked, or, where none is named as
        such, those it matches as they come - but for the other kind's by name (``other``)."""
        if glob is None:
            return ranked
        out = ranked or [t for t in pool if not _BUCKET.search(t) and t not in other]
        if not pool:
            notes.append(f"no tag matches {option} {glob!r}")
        elif not out:
            notes.append(f"{option} {glob!r} matches only {', '.join(map(repr, pool[:3]))}"
                         f"{', ...' if len(pool) > 3 else ''}: named as the "
                         f"{'loss' if option == '--grad-tag' else 'grad norm'}, not the "
                         f"{'grad norm' if option == '--grad-tag' else 'loss'}")
        return out

    grad_pool, loss_pool = _apply_glob(all_tags, grad_tag), _apply_glob(all_tags, loss_tag)
    grad_list = chosen(grad_pool, grads(grad_pool), [t for t in grad_pool if _LOSS.search(t)],
                       grad_tag, "--grad-tag")
    loss_list = chosen(loss_pool, losses(loss_pool), grads(loss_pool), loss_tag, "--loss-tag")
    # one series cannot be both (a clip "suggested" from the loss's values would be nonsense):
    # the loss chooses first and the grad norm takes its next candidate; where only
    # --loss-tag is given, the grad norm chooses first and that glob its next candidate
    if grad_tag is not None or loss_tag is None:
        loss = next(iter(loss_list), None)
        grad = next((t for t in grad_list if t != loss), None)
    else:
        grad = next(iter(grad_list), None)
        loss = next((t for t in loss_list if t != grad), None)
    for option, glob, got, lost in (("--grad-tag", grad_tag, grad, loss),
                                    ("--loss-tag", loss_tag, loss, grad)):
        if glob is not None and got is None and lost is not None and \
                (grad_list if option == "--grad-tag" else loss_list):
            notes.append(f"{option} {glob!r} matches only {lost!r}, read as the "
                         f"{'loss' if option == '--grad-tag' else 'grad norm'}")
    if loss is None and loss_tag is None:
        aux = [t for t in all_tags if _LOSS.search(t) and _AUX_LOSS.search(t)
               and not _BUCKET.search(t)]
        if aux:
            notes.append(f"no training loss chosen: {', '.join(map(repr, aux[:3]))}"
                         f"{', ...' if len(aux) > 3 else ''} read as auxiliary losses (name the "
                         "training loss with --loss-tag)")
    if grad is not None and _POST_CLIP.search(grad):
        notes.append(f"the grad norm {grad!r} is logged after clipping: a spike shows only up to "
                     "the clip threshold (log the norm before clipping: "
                     "torch.nn.utils.clip_grad_norm_ returns it)")
    other = _OTHER_NORM.search(grad) if grad is not None else None
    if other is not None:
        kind = "max (inf)" if other.group(1).lower() == "inf" else "1"
        notes.append(f"the grad norm {grad!r} is the {kind}-norm, not the 2-norm: clip thresholds "
                     f"below are in its units (clip_grad_norm_(..., norm_type="
                     f"{'inf' if kind.startswith('max') else '1'}) clips by it; the default is "
                     "the 2-norm)")
    indexed = [t for t in (grad, loss) if t is not None and _SAMPLE_INDEXED.search(t)]
    if indexed:  # (only where nothing indexed by step was there: they rank last)
        notes.append(f"{' and '.join(map(repr, indexed))} "
                     f"{'is' if len(indexed) == 1 else 'are'} logged against consumed samples or "
                     "tokens, not optimizer steps (DeepSpeed's Train/Samples/, Megatron's 'vs "
                     "samples'): its steps, onsets and the impact horizon are in those units")
    if grad is not None and f"{grad}__MAX" in all_tags:
        grad = f"{grad}__MAX"
    lr = next(iter(_rank(all_tags, LR_NAMES, _LR, _NOT_LOSS)), None)
    return TagChoice(grad_norm=grad, loss=loss, lr=lr, notes=tuple(notes))
