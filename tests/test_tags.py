"""Tag choice on the names real training code logs (FORMATS.md's table)."""

from __future__ import annotations

import pytest

from gradaudit.tags import choose_tags, interval_mean_tags

FRAMEWORKS = [
    # (tags a framework logs, grad norm, loss)
    (["train/grad_norm", "train/loss", "train/learning_rate", "train/epoch", "eval/loss"],
     "train/grad_norm", "train/loss"),
    (["grad-norm", "grad-norm vs samples", "lm loss", "lm loss vs samples", "learning-rate",
      "loss-scale", "validation/lm loss"], "grad-norm", "lm loss"),
    (["grad norm", "lm loss", "loss scale", "learning rate", "validation/lm loss"],
     "grad norm", "lm loss"),
    (["train_inner/gnorm", "train_inner/loss", "valid/loss", "train_inner/lr"],
     "train_inner/gnorm", "train_inner/loss"),
    (["optim/total_grad_norm", "train/CrossEntropyLoss", "optim/LR (group 0)",
      "optim/grad/blocks.0.attn.w_q.weight.norm"], "optim/total_grad_norm",
     "train/CrossEntropyLoss"),
    (["optim/total grad norm", "train/CE loss", "train/Z loss"], "optim/total grad norm",
     "train/CE loss"),
    (["l2_norm/grad/global", "l2_norm/grad/model.layer1.weight", "loss/train/total"],
     "l2_norm/grad/global", "loss/train/total"),
    (["grad_2.0_norm_total", "grad_2.0_norm/layer.0.weight", "grad_2.0_norm/layer.0.bias",
      "train_loss_step", "train_loss_epoch", "val_loss"], "grad_2.0_norm_total",
     "train_loss_step"),
    (["grad_norm", "loss_metrics/global_avg_loss", "loss_metrics/global_max_loss", "lr"],
     "grad_norm", "loss_metrics/global_avg_loss"),
    (["grad_norm", "reduced_train_loss", "val_loss", "lr"], "grad_norm", "reduced_train_loss"),
]


@pytest.mark.parametrize(("tags", "grad", "loss"), FRAMEWORKS)
def test_framework_names(tags, grad, loss):
    choice = choose_tags(tags)
    assert choice.grad_norm == grad
    assert choice.loss == loss


def test_learning_rate_names():
    assert choose_tags(["train/learning_rate", "train/loss"]).lr == "train/learning_rate"
    assert choose_tags(["learning-rate", "lm loss"]).lr == "learning-rate"
    assert choose_tags(["optim/LR (group 0)"]).lr == "optim/LR (group 0)"


def test_unknown_names_fall_back_to_heuristics():
    choice = choose_tags(["Metrics/GradientNorm", "Metrics/TrainingLoss", "Metrics/ValLoss"])
    assert choice.grad_norm == "Metrics/GradientNorm"
    assert choice.loss == "Metrics/TrainingLoss"


def test_validation_loss_is_never_preferred():
    assert choose_tags(["eval/loss", "train/loss"]).loss == "train/loss"
    assert choose_tags(["val/loss", "loss"]).loss == "loss"


def test_loss_scale_is_not_a_loss():
    assert choose_tags(["loss scale", "lm loss"]).loss == "lm loss"
    assert choose_tags(["loss_scale"]).loss is None


def test_no_grad_norm_is_none():
    choice = choose_tags(["train/loss", "train/learning_rate"])
    assert choice.grad_norm is None and choice.loss == "train/loss"


def test_wandb_export_grad_norm_comes_from_max_column():
    tags = ["train/grad_norm", "train/grad_norm__MIN", "train/grad_norm__MAX", "train/loss",
            "train/loss__MIN", "train/loss__MAX"]
    choice = choose_tags(tags)
    assert choice.grad_norm == "train/grad_norm__MAX"
    assert choice.loss == "train/loss"


def test_globs_override():
    tags = ["grad_norm", "my/custom_norm", "loss", "my/objective"]
    choice = choose_tags(tags, grad_tag="my/*norm", loss_tag="my/objective")
    assert choice.grad_norm == "my/custom_norm"
    assert choice.loss == "my/objective"


def test_glob_matching_nothing_says_so():
    choice = choose_tags(["grad_norm", "loss"], grad_tag="nothing*")
    assert choice.grad_norm is None
    assert any("nothing*" in note for note in choice.notes)


def test_interval_mean_losses_are_known_by_their_companion_tags():
    hf = ["train/loss", "train/grad_norm", "train/learning_rate", "train/epoch", "eval/loss"]
    assert interval_mean_tags(hf) == {"train/loss"}
    wandb_hf = ["train/loss", "train/learning_rate", "train/epoch", "train/global_step"]
    assert interval_mean_tags(wandb_hf) == {"train/loss"}
    # HF-like names of a loop of one's own that logs its current loss are not enough: the
    # Trainer's TensorBoard log always has all three; Megatron's TensorBoard loss is per step
    assert interval_mean_tags(["train/loss", "train/learning_rate", "train/epoch"]) == set()
    assert interval_mean_tags(["lm loss", "grad-norm", "learning-rate"]) == frozenset()
    fairseq_wandb = ["train_inner/loss", "train_inner/gnorm", "train_inner/wps", "train_inner/ups"]
    assert interval_mean_tags(fairseq_wandb) == {"train_inner/loss"}
    fairseq_tb = ["loss", "nll_loss", "ppl", "wps", "ups", "wpb", "bsz", "lr", "gnorm",
                  "train_wall", "gb_free", "wall"]  # its train_inner folder
    assert interval_mean_tags(fairseq_tb) == {"loss"}
    assert interval_mean_tags(["loss", "nll_loss", "ppl", "wps", "wpb", "bsz"]) == set()  # valid
    assert interval_mean_tags(["loss", "grad_norm", "lr"]) == frozenset()
    # the Trainer's MLflow callback logs its own keys (its on_log hands them over as they are)
    assert interval_mean_tags(["loss", "grad_norm", "learning_rate", "epoch"]) == {"loss"}
    assert interval_mean_tags(["loss", "grad_norm", "learning_rate"]) == frozenset()


def test_one_point_is_no_loss_series_beside_one_of_several() -> None:
    # the HF Trainer's MLflow callback ends a run with its summary (train_loss, train_runtime,
    # ...): one point, which beside a loss logged 10 times or fewer was picked as the loss
    counts = {"loss": 5, "train_loss": 1, "learning_rate": 5, "epoch": 6, "grad_norm": 5,
              "train_runtime": 1}
    assert choose_tags(list(counts), counts=counts).loss == "loss"
    counts = {"loss": 1, "train_loss": 1}  # (one point each: the names decide, as before)
    assert choose_tags(list(counts), counts=counts).loss == "train_loss"


@pytest.mark.parametrize(("train", "held_out"), [
    ("train/ce_loss", "eval/loss"), ("train/total_loss", "val/loss"), ("loss_train", "val/loss"),
    ("Metrics/TrainObjective_loss", "validation/lm loss")])
def test_a_training_loss_of_any_name_wins_over_a_validation_loss_of_a_known_name(train,
                                                                                held_out):
    choice = choose_tags(["train/grad_norm", train, held_out])
    assert choice.loss == train
    assert choose_tags(["train/grad_norm", held_out]).loss == held_out  # where it is all there is


@pytest.mark.parametrize(("before", "after"), [
    ("train/grad_norm_before_clip", "train/grad_norm_after_clip"),
    ("grad_norm_unclipped", "grad_norm_clipped"),
    ("grad_norm/pre_clip", "grad_norm/post_clip"),
    ("optim/grad_norm", "optim/clipped_grad_norm"),
    ("opt/pre_clipped_grad_norm", "opt/clipped_grad_norm"),
    ("grad_norm_not_clipped", "grad_norm_after_clip"),
    ("grad_norm/non-clipped", "grad_norm/clipped"),
    ("grad_norm/non clipped", "grad_norm/post_clip")])
def test_the_norm_before_clipping_wins_over_the_norm_after_it(before, after):
    choice = choose_tags([after, before, "train/loss"])
    assert choice.grad_norm == before and choice.notes == ()
    only = choose_tags([after, "train/loss"])  # where it is all there is: read, and said
    assert only.grad_norm == after
    assert any("after clipping" in note for note in only.notes)


def test_a_per_epoch_loss_ranks_after_the_per_update_loss_beside_it():
    # fairseq's W&B log: train_inner/* every log interval, train/* once per epoch
    tags = ["train_inner/loss", "train_inner/gnorm", "train/loss", "train/gnorm", "valid/loss"]
    counts = {"train_inner/loss": 400, "train_inner/gnorm": 400, "train/loss": 3,
              "train/gnorm": 3, "valid/loss": 3}
    choice = choose_tags(tags, counts=counts)
    assert (choice.grad_norm, choice.loss) == ("train_inner/gnorm", "train_inner/loss")
    # at a tenth of the points or more, the name decides
    counts |= {"train/loss": 40}
    assert choose_tags(tags, counts=counts).loss == "train/loss"


def test_one_series_is_never_both_grad_norm_and_loss():
    tags = ["grad_norm", "loss", "val_loss"]
    choice = choose_tags(tags, loss_tag="grad_norm")
    assert (choice.grad_norm, choice.loss) == ("grad_norm", None)
    assert choice.notes == ("--loss-tag 'grad_norm' matches only 'grad_norm': named as the grad "
                            "norm, not the loss",)
    for glob in ("loss", "*loss*"):  # a glob naming only losses chooses no grad norm
        choice = choose_tags(tags, grad_tag=glob)
        assert (choice.grad_norm, choice.loss) == (None, "loss")
        assert choice.notes[0].startswith(f"--grad-tag {glob!r} matches only 'loss'")
    choice = choose_tags(tags, grad_tag="grad_norm", loss_tag="grad_norm")
    assert (choice.grad_norm, choice.loss) == ("grad_norm", None)
    # a glob's fallback (no tag named as its kind) leaves out the other kind's: a name decides
    tags = ["train/grad_norm", "train/objective"]
    for grad_tag in (None, "train/*"):
        choice = choose_tags(tags, grad_tag=grad_tag, loss_tag="train/*")
        assert (choice.grad_norm, choice.loss) == ("train/grad_norm", "train/objective")
    choice = choose_tags(["g1_norm", "loss"], grad_tag="*", loss_tag="loss")
    assert (choice.grad_norm, choice.loss) == ("g1_norm", "loss")


def test_density_orders_candidates_only_within_one_kind_of_name():
    """A dense aux or validation loss, or a dense clipped norm, never displaces a sparser main
    series (Megatron's MoE losses every iteration, its lm loss every log interval; an HF
    Trainer evaluating more often than it logs)."""
    counts = {"lm loss": 50, "grad-norm": 50, "z_loss": 1000, "load_balancing_loss": 1000}
    assert choose_tags(counts, counts=counts).loss == "lm loss"
    counts = {"train/loss": 2, "eval/loss": 100, "train/grad_norm": 2}
    assert choose_tags(counts, counts=counts).loss == "train/loss"
    counts = {"train/loss": 50, "train/z_loss": 1000, "train/aux_loss": 1000}
    assert choose_tags(counts, counts=counts).loss == "train/loss"
    counts = {"my_lm_loss": 50, "moe/load_balancing_loss": 1000, "router_z_loss": 1000}
    assert choose_tags(counts, counts=counts).loss == "my_lm_loss"  # aux losses: never the loss
    counts = {"grad_norm_unclipped": 10, "grad_norm_clipped": 1000, "loss": 1000}
    assert choose_tags(counts, counts=counts).grad_norm == "grad_norm_unclipped"
    # a known last part counts as known: Keras's per-epoch loss beside its batch/loss
    counts = {"loss": 10, "batch/loss": 1000}
    assert choose_tags(counts, counts=counts).loss == "batch/loss"


def test_an_auxiliary_loss_is_never_the_loss_nor_a_globs_grad_norm():
    moe = ["grad_norm", "lm loss", "load_balancing_loss", "z_loss"]
    choice = choose_tags(moe, grad_tag="*_loss")
    assert (choice.grad_norm, choice.loss) == (None, "lm loss")
    choice = choose_tags(["grad_norm", "train/total_loss_with_aux"])
    assert choice.loss is None
    assert choice.notes == ("no training loss chosen: 'train/total_loss_with_aux' read as "
                            "auxiliary losses (name the training loss with --loss-tag)",)
    assert choose_tags(["grad_norm", "train/total_loss_with_aux"],
                       loss_tag="train/total*").loss == "train/total_loss_with_aux"


def test_lightning_s_other_norm_types_are_grad_norms():
    # Lightning's grad_norm(norm_type=1) / norm_type="inf": grad_1.0_norm_total and
    # grad_inf_norm_total beside a norm per parameter; no grad norm was chosen before
    for kind in ("1.0", "inf"):
        tags = [f"grad_{kind}_norm_total", f"grad_{kind}_norm/layer.0.weight", "train_loss_step",
                "epoch"]
        choice = choose_tags(tags)
        assert choice.grad_norm == f"grad_{kind}_norm_total"
        # its clip thresholds are in that norm's units, not clip_grad_norm_'s default 2-norm
        norm_type = "1" if kind == "1.0" else "inf"
        assert any("norm, not the 2-norm" in n and f"norm_type={norm_type})" in n
                   for n in choice.notes), choice.notes
    both = ["grad_inf_norm_total", "grad_2.0_norm_total", "train_loss"]
    assert choose_tags(both).grad_norm == "grad_2.0_norm_total"
    assert not choose_tags(both).notes


def test_detectron2_s_total_loss_wins_over_its_parts():
    tags = ["total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "lr",
            "fast_rcnn/cls_accuracy", "data_time", "time"]
    assert choose_tags(tags).loss == "total_loss"


def test_series_logged_against_samples_say_so():
    # DeepSpeed's TensorBoard monitor logs Train/Samples/* at global_samples: a step there is
    # a batch's worth of samples, and the horizon of 200 "steps" a few optimizer steps
    choice = choose_tags(["Train/Samples/train_loss", "Train/Samples/lr",
                          "Train/Samples/loss_scale"])
    assert choice.loss == "Train/Samples/train_loss"
    assert any("'Train/Samples/train_loss' is logged against consumed samples" in n
               for n in choice.notes), choice.notes
    # beside a series by step, the one by samples is not chosen, and no note
    choice = choose_tags(["lm loss", "lm loss vs samples", "grad-norm", "grad-norm vs samples"])
    assert (choice.loss, choice.grad_norm) == ("lm loss", "grad-norm")
    assert not any("consumed samples" in n for n in choice.notes)
