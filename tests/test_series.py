"""RunSeries and canonical_frame: TensorBoard's resume semantics, sorting, summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from gradaudit.series import RunSeries, canonical_frame


def _points(rows: list[tuple[int, str, float]]) -> pl.DataFrame:
    steps, tags, values = zip(*rows, strict=True)
    return pl.DataFrame({"step": list(steps), "tag": list(tags), "value": list(values)})


def test_resume_that_rewinds_keeps_the_later_write():
    # First file: steps 0..9; the job restarts from a checkpoint at step 6 and logs 6..12.
    first = [(s, "loss", float(s)) for s in range(10)]
    second = [(s, "loss", 100.0 + s) for s in range(6, 13)]
    frame, notes = canonical_frame(_points(first + second))
    assert frame["step"].to_list() == list(range(13))
    assert frame["value"].to_list() == [float(s) for s in range(6)] + [
        100.0 + s for s in range(6, 13)
    ]
    assert len(notes) == 1 and "6-9" in notes[0]


def test_rewind_only_affects_its_own_tag():
    rows = [(0, "a", 1.0), (1, "a", 2.0), (0, "b", 3.0), (1, "b", 4.0), (1, "a", 9.0)]
    frame, _ = canonical_frame(_points(rows))
    a = frame.filter(pl.col("tag").cast(pl.String) == "a")
    b = frame.filter(pl.col("tag").cast(pl.String) == "b")
    assert a["value"].to_list() == [1.0, 9.0]
    assert b["value"].to_list() == [3.0, 4.0]


def test_a_rewind_removes_every_later_step_even_unrepeated_ones():
    # Steps 0..5, then a resume at step 2 that only logs step 2: steps 3..5 are gone.
    rows = [(s, "g", float(s)) for s in range(6)] + [(2, "g", -1.0)]
    frame, _ = canonical_frame(_points(rows))
    assert frame["step"].to_list() == [0, 1, 2]
    assert frame["value"].to_list() == [0.0, 1.0, -1.0]


def test_unsorted_input_without_rewind_is_impossible_so_order_is_write_order():
    # Writing 5 then 3 is a rewind by definition: the later write (3) wins and 5 goes.
    frame, _ = canonical_frame(_points([(5, "g", 1.0), (3, "g", 2.0)]))
    assert frame["step"].to_list() == [3]


def test_series_accessors_and_summary():
    frame, _ = canonical_frame(
        _points([(s, "train/grad_norm", 1.0) for s in range(0, 50, 10)]
                + [(s, "train/loss", 2.0) for s in range(0, 50, 5)])
    )
    run = RunSeries(name="r", format="csv", files=["f.csv"], frame=frame,
                    grad_norm_tag="train/grad_norm", loss_tag="train/loss")
    steps, values = run.series("train/grad_norm")
    assert steps.dtype == np.int64 and values.dtype == np.float64
    assert steps.tolist() == [0, 10, 20, 30, 40]
    assert run.tag_counts() == {"train/grad_norm": 5, "train/loss": 10}
    assert run.step_summary() == (5, 0, 40)
    assert run.series("absent")[0].size == 0
    summary = run.summary_dict()
    assert summary["n_steps"] == 5 and summary["last_step"] == 40


def test_a_step_written_twice_with_the_same_value_is_no_rewrite() -> None:
    # a resume note is for values a later write replaced; the same value again is no news
    same = pl.DataFrame({"step": [1, 2, 2, 3], "tag": ["epoch"] * 4, "value": [0.0, 0.0, 0.0, 1.0]})
    frame, notes = canonical_frame(same)
    assert frame.height == 3 and notes == []
    changed = pl.DataFrame({"step": [1, 2, 3, 2, 3, 9, 9], "tag": ["loss"] * 5 + ["lr"] * 2,
                            "value": [5.0, 4.0, 3.0, 4.5, 3.5, 0.1, 0.1]})
    frame, notes = canonical_frame(changed)
    assert notes == ["steps 2-3 were written again later (a resume that rewound the step, or a "
                     "step logged twice): the later write wins for 'loss'"]


def test_lightning_csvlogger_metrics_has_no_false_resume_note() -> None:
    # written by lightning 2.6.6's CSVLogger (an 8-epoch MLP, grad norms logged per step; the
    # first 300 rows): the validation row and the epoch-end row repeat `epoch` at steps 127 and
    # 255, which read as "steps 127-255 were written again later (a resume ...)"
    import gradaudit

    (run,) = gradaudit.read_runs([Path(__file__).parent / "data" / "lightning-csvlogger"])
    assert run.grad_norm_tag == "grad_2.0_norm_total" and run.loss_tag == "train_loss_step"
    assert not any("written again" in n for n in run.notes), run.notes
    steps, _ = run.series("epoch")
    assert 127 in steps and 255 in steps and (np.diff(steps) > 0).all()
