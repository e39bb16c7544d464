"""Write the Hugging Face Trainer stdout logs in this folder with the real Trainer.

Needs torch and transformers (not the test suite's dependencies); run it once per transformers
version, e.g. ``pip install torch==2.13.0 transformers==5.24.0 accelerate`` then
``python make_logs.py``. Each log is a tiny GPT-2 trained on fixed random tokens, with a
learning-rate spike at steps 30-33 (an explosion at a known step), written as a user's job leaves
it: stdout and stderr in one file (a SLURM ``.out``, ``nohup``), with Python's stdout buffered or
not, stdout alone, the Trainer's bar off, and a crash resumed into the same log. The run's own
``trainer_state.json`` (which holds each point's step) is kept beside its log as
``<name>.state.json``: the tests compare the two. This machine's paths in the logs (the output
folder, the venv) are replaced by ``output`` and ``venv``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TRAIN = r'''
import json, sys, torch, transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, TrainerCallback
out, steps, every, bar, info, resume, crash = sys.argv[1:8]
more = {"n": 200, "batch": 8, "accumulate": 1, "epochs": 0, **json.loads(sys.argv[8])}
if info == "1":
    transformers.logging.set_verbosity_info()
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=32))
data = torch.randint(0, 64, (more["n"], 32), generator=torch.Generator().manual_seed(1))
class Tokens(torch.utils.data.Dataset):
    def __len__(self): return len(data)
    def __getitem__(self, i): return {"input_ids": data[i], "labels": data[i]}
class Spike(TrainerCallback):  # the lr x500 at steps 30-33
    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        if 30 <= state.global_step < 34:
            for g in optimizer.param_groups: g["lr"] = 0.5
    def on_step_end(self, args, state, control, **kw):
        if int(crash) and state.global_step == int(crash): raise SystemExit("killed")
args = TrainingArguments(output_dir=out, per_device_train_batch_size=more["batch"],
                         gradient_accumulation_steps=more["accumulate"],
                         num_train_epochs=more["epochs"] or 3, logging_steps=int(every),
                         max_steps=-1 if more["epochs"] else int(steps), report_to="none",
                         save_strategy="steps",
                         save_steps=20, disable_tqdm=bar == "0", learning_rate=1e-3,
                         eval_strategy="steps", eval_steps=40, logging_first_step=True,
                         use_cpu=True, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=Tokens(),
                  eval_dataset=torch.utils.data.Subset(Tokens(), range(16)), callbacks=[Spike()])
trainer.train(resume_from_checkpoint=resume == "1")
trainer.save_state()
'''

#: name: (steps, logging_steps, bar, info, stdout buffered, stderr in the same file)
CASES = {
    "merged": (120, 2, "1", "0", False, True),
    "merged-buffered": (120, 2, "1", "0", True, True),
    "merged-info": (120, 5, "1", "1", True, True),
    "stdout-only": (120, 2, "1", "0", True, False),
    "no-bar": (120, 5, "0", "0", True, True),
}
#: gradient accumulation over a dataset it does not divide: the Trainer's epoch counts
#: micro-batches, up to a step ahead of the update steps (100 samples, 16 per step, 10 epochs)
ACCUMULATION = {"n": 100, "batch": 1, "accumulate": 16, "epochs": 10}


def run(name: str, steps: int, every: int, bar: str, info: str, buffered: bool,
        merged: bool, resume: str = "0", crash: int = 0, mode: str = "w",
        more: dict | None = None, out: Path | None = None) -> None:
    out = out or HERE / "work" / name
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None) if buffered else env.update(PYTHONUNBUFFERED="1")
    log = HERE / f"{name}.log"
    with log.open(mode) as fh, open(os.devnull, "w") as null:
        subprocess.run([sys.executable, "-c", TRAIN, str(out), str(steps), str(every), bar, info,
                        resume, str(crash), json.dumps(more or {})], stdout=fh,
                       stderr=fh if merged else null, env=env, check=not crash)


def main() -> None:
    import transformers

    version = transformers.__version__
    shutil.rmtree(HERE / "work", ignore_errors=True)
    for name, case in CASES.items():
        run(f"{version}-{name}", *case)
    # a crash at step 70, resumed from the checkpoint at step 60 into the same log (sbatch
    # --open-mode=append): steps 61-70 are logged twice
    name = f"{version}-resumed"
    run(name, 120, 2, "1", "1", True, True, crash=70)
    run(name, 120, 2, "1", "1", True, True, resume="1", mode="a")
    run(f"{version}-accumulation", 0, 1, "1", "0", True, True, more=ACCUMULATION)
    # two trainings appended to one log (200 samples, then 333: 25 and 42 steps per epoch)
    name = f"{version}-appended"
    run(name, 0, 5, "1", "0", True, True, more={"epochs": 3})
    run(name, 0, 5, "1", "0", True, True, mode="a", more={"epochs": 2, "n": 333},
        out=HERE / "work" / f"{name}.2")
    shutil.copy(HERE / "work" / f"{name}.2" / "trainer_state.json", HERE / f"{name}.2.state.json")
    for name in [*(f"{version}-{n}" for n in (*CASES, "resumed", "accumulation", "appended"))]:
        shutil.copy(HERE / "work" / name / "trainer_state.json", HERE / f"{name}.state.json")
        log = HERE / f"{name}.log"  # no path of this machine in a committed file
        text = log.read_bytes().replace(str(HERE / "work").encode(), b"output")
        log.write_bytes(text.replace(sys.prefix.encode(), b"venv"))
    shutil.rmtree(HERE / "work")


if __name__ == "__main__":
    main()
