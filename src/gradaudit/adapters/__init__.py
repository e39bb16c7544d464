"""The explicit registry of adapters, one module per format, in the order they claim files.

Order matters where two formats share a suffix: a W&B chart export is a CSV that ``wandb-csv``
recognises by its header before ``csv`` sees it. fairseq logs come before Megatron's: a fairseq
job's start-up lines (``torch.distributed``) would send Megatron's sniff reading on for
megabytes in each of them. MLflow's file store comes first: its metric files are named by
the user's metric keys (``metrics/train.log`` is a key, not a log).
"""

from __future__ import annotations

from gradaudit.adapters import (
    csv_table,
    fairseq_log,
    hf_log,
    hf_trainer,
    json_table,
    megatron,
    mlflow_db,
    mlflow_files,
    parquet,
    tensorboard,
    wandb_csv,
    wandb_run,
)
from gradaudit.adapters.base import Adapter

REGISTRY: dict[str, Adapter] = {
    mlflow_files.FORMAT: mlflow_files,
    mlflow_db.FORMAT: mlflow_db,
    tensorboard.FORMAT: tensorboard,
    wandb_run.FORMAT: wandb_run,
    hf_trainer.FORMAT: hf_trainer,
    fairseq_log.FORMAT: fairseq_log,
    megatron.FORMAT: megatron,
    hf_log.FORMAT: hf_log,
    wandb_csv.FORMAT: wandb_csv,
    parquet.FORMAT: parquet,
    csv_table.FORMAT: csv_table,
    json_table.FORMAT: json_table,
}

__all__ = ["REGISTRY"]
