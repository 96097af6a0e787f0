"""``mlflow = true``: one MLflow run per fedmm run (through ``MlflowClient``): the config as
parameters, every round's metrics (step = round), and at the end the summary's numbers, the plots,
``summary.json`` and ``config.toml`` as artifacts.

The store is ``mlflow-uri``; empty: ``sqlite:///<out-dir>/mlflow.db``. A new experiment on a local
store keeps its artifacts in ``mlflow-artifacts/`` beside the database (or inside a file store's
directory). ``mlflow ui --backend-store-uri sqlite:///<out-dir>/mlflow.db`` shows the runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedmm.config import RunConfig
from fedmm.files import atomic_write
from fedmm.run_files import CONFIG_FILE, SUMMARY_FILE
from fedmm.tracking import flat_params, require, round_metrics

#: The database of the default store, in the run directory.
MLFLOW_DB = "mlflow.db"
#: Which MLflow run a run directory logs to (a resumed run goes on logging to it).
MLFLOW_RUN_FILE = "mlflow-run.json"
#: MLflow's limit of entries per ``log_batch`` call.
_BATCH = 100


def tracking_uri(out_dir: Path, config: RunConfig) -> str:
    """``mlflow-uri``, or ``sqlite:///<out-dir>/mlflow.db`` when it is empty."""
    return config.mlflow_uri or f"sqlite:///{(Path(out_dir) / MLFLOW_DB).resolve()}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of local store ``uri`` keeps artifacts: ``mlflow-artifacts/``
    beside a SQLite database, inside a file store's directory; ``None`` (the server's choice) for
    a remote store."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri.split("sqlite:///", 1)[-1]
        return (Path(path).resolve().parent / "mlflow-artifacts").as_uri() if path and path != ":memory:" else None
    if parsed.scheme in ("", "file"):
        return (Path(parsed.path or uri).resolve() / "mlflow-artifacts").as_uri()
    return None


def _quiet_loggers() -> None:
    """MLflow and its database migrations log each step at INFO; fedmm shows their warnings only
    (``fedmm -v`` shows everything: the root logger at INFO)."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


class MlflowTracker:
    """Logs one run to MLflow.

    Parameters
    ----------
    out_dir:
        The run directory (``mlflow-run.json`` records the MLflow run's id there).
    config:
        The resolved config (``mlflow-uri``, ``mlflow-experiment``).
    resume_after:
        ``None``: a new MLflow run. A round: a resumed run; it goes on logging to the MLflow run
        that ``mlflow-run.json`` names (a new one when the file or that run is gone).
    """

    def __init__(self, out_dir: Path, config: RunConfig, *, resume_after: int | None = None) -> None:
        mlflow = require("mlflow", "mlflow")
        _quiet_loggers()  # after the import: mlflow sets its logger's level when imported
        from mlflow.entities import Param

        self.out_dir = Path(out_dir)
        self.uri = tracking_uri(self.out_dir, config)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self.run_id = self._resumed_run() if resume_after is not None else None
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(config.mlflow_experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(
                    config.mlflow_experiment, artifact_location=artifact_location(self.uri)
                )
            )
            tags = {
                "fedmm.out-dir": str(self.out_dir.resolve()),
                **{f"fedmm.{k}": str(getattr(config, k)) for k in ("dataset", "strategy", "objective", "selection")},
            }
            run = self.client.create_run(experiment_id, run_name=self.out_dir.name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
            for i in range(0, len(params), _BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
            atomic_write(
                self.out_dir / MLFLOW_RUN_FILE,
                json.dumps({"tracking-uri": self.uri, "run-id": self.run_id}, indent=2) + "\n",
            )
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _resumed_run(self) -> str | None:
        path = self.out_dir / MLFLOW_RUN_FILE
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            run_id = str(recorded["run-id"])
            if recorded.get("tracking-uri") != self.uri:
                return None
            self.client.get_run(run_id)
            return run_id
        except Exception:  # no file, a damaged one, or a run deleted from the store: log a new run
            return None

    def log_round(self, row: Mapping[str, Any], client_rows: Sequence[Mapping[str, Any]] = ()) -> None:
        from mlflow.entities import Metric

        step, now = int(row["round"]), int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in round_metrics(row, client_rows).items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def finish(self, summary: Mapping[str, Any], plots: Sequence[Path], out_dir: Path) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(summary.get("rounds", 0))
        numbers = {
            f"summary/{k}": float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])
        for path in plots:
            self.client.log_artifact(self.run_id, str(path), "plots")
        for name in (SUMMARY_FILE, CONFIG_FILE):
            if (Path(out_dir) / name).is_file():
                self.client.log_artifact(self.run_id, str(Path(out_dir) / name))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if status == "failed" else "KILLED")
