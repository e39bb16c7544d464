"""The runs logged into MLflow's stores for tests/test_mlflow.py, through MLflow's own client.

``make_db.py`` logs them into the committed ``mlflow.db.gz`` (MLflow's SQLite store, which
needs the full ``mlflow`` package); the tests log them again into a file store at test time
(``mlflow-skinny`` writes one). The values are the same each time: only the time stamps differ.
"""

from __future__ import annotations

import numpy as np

EXPERIMENT = "gradaudit-tests"
N = 600
ONSET = 400  # the exploded run's grad norm rises 40x here, for 5 steps
OVERFLOW = 520  # one non-finite grad norm (an fp16 overflow step) in the exploded run
RESUME_FROM = 250  # the resumed run's second session starts here, after steps 0-299 were logged


def series(seed: int, explode: bool) -> tuple[np.ndarray, np.ndarray]:
    """A healthy grad norm and a falling loss over N steps; with ``explode``, the grad norm
    40x at ONSET..ONSET+4 and the loss 1.5 higher there, decaying back over ~60 steps."""
    rng = np.random.default_rng(seed)
    s = np.arange(N)
    g = 0.5 * np.exp(rng.normal(0.0, 0.15, N))
    loss = 2.0 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0.0, 0.02, N)
    if explode:
        g[ONSET:ONSET + 5] *= 40.0
        after = s >= ONSET + 1
        loss[after] += 1.5 * np.exp(-(s[after] - ONSET - 1) / 60.0)
        g[OVERFLOW] = np.inf
    return g, loss


def log_runs(mlflow) -> dict[str, list[str]]:
    """Log the test runs with ``mlflow`` (the module, its tracking URI set); returns each run
    name's run ids, in the order logged."""
    mlflow.set_experiment(EXPERIMENT)
    ids: dict[str, list[str]] = {}

    def started(name: str):
        run = mlflow.start_run(run_name=name)
        ids.setdefault(name, []).append(run.info.run_id)
        return run

    g, loss = series(1, explode=True)
    with started("exploded"):
        for s in range(N):
            mlflow.log_metrics({"train/loss": float(loss[s]), "train/grad_norm": float(g[s]),
                                "train/learning_rate": 1e-3}, step=s)
        mlflow.log_metric("eval/loss", float("nan"), step=N - 1)

    g, loss = series(2, explode=False)
    with started("resumed") as run:
        for s in range(300):
            mlflow.log_metrics({"loss": float(loss[s]), "grad_norm": float(g[s])}, step=s)
    # resumed from a checkpoint at step 250: steps 250-299 are logged again, with new values
    g2, loss2 = series(3, explode=False)
    with mlflow.start_run(run_id=run.info.run_id):
        for s in range(RESUME_FROM, N):
            mlflow.log_metrics({"loss": float(loss2[s]), "grad_norm": float(g2[s])}, step=s)

    g, loss = series(4, explode=False)
    with started("stepless"):
        for s in range(200):  # log_metric without a step: MLflow stores step 0
            mlflow.log_metric("loss", float(loss[s]))
            mlflow.log_metric("grad_norm", float(g[s]))

    for seed in (5, 6):  # two runs of one name
        g, loss = series(seed, explode=False)
        with started("twin"):
            for s in range(0, N, 10):
                mlflow.log_metrics({"loss": float(loss[s]), "grad_norm": float(g[s])}, step=s)

    g, loss = series(7, explode=False)
    with started("deleted") as run:
        for s in range(100):
            mlflow.log_metrics({"loss": float(loss[s]), "grad_norm": float(g[s])}, step=s)
    mlflow.delete_run(run.info.run_id)
    return ids
