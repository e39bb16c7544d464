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
