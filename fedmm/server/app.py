"""The ServerApp that ``flwr run .`` starts: reads ``[tool.flwr.app.config]`` and runs the loop."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmm.config import RunConfig
from fedmm.server.loop import prepare, run_federation

app = ServerApp()
log = logging.getLogger("fedmm")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config; results go to ``out-dir`` (absolute paths
    are safest: the app runs from wherever the SuperLink was started), else ``results/run-<id>``."""
    run = RunConfig.from_mapping(dict(context.run_config))
    out_dir = Path(run.out_dir) if run.out_dir else Path.cwd() / "results" / f"run-{context.run_id}"
    plan = prepare(run, out_dir, overwrite=True)
    log.info("fedmm: writing results to %s", plan.out_dir)
    summary = run_federation(grid, plan)
    log.info("fedmm: final test/acc %.4f (best %.4f)", summary["final"]["test/acc"], summary["best-test/acc"])
