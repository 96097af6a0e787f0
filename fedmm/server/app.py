"""The ServerApp that ``flwr run .`` starts: reads ``[tool.flwr.app.config]`` and runs the loop."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmm.config import RunConfig, parse_overrides
from fedmm.server.loop import prepare, run_federation
from fedmm.strategies.roster import FederationTooSmall

app = ServerApp()
log = logging.getLogger("fedmm")

#: The run-config key that carries namespaced options through ``flwr run``, which accepts only keys
#: declared in ``[tool.flwr.app.config]``: ``--run-config "overrides='objective.lambda2=0.5 encoder.audio=mlp'"``.
OVERRIDES_KEY = "overrides"


def run_config_from_flower(values: dict) -> RunConfig:
    """The fedmm config of a ``flwr run``: the declared keys, then the space-separated
    ``key=value`` pairs of ``overrides`` (for ``strategy.<param>``, ``objective.<param>``,
    ``selection.<param>``, ``dataset.<option>`` and ``encoder.<modality>``, which cannot be declared
    in advance)."""
    extra = parse_overrides(shlex.split(str(values.pop(OVERRIDES_KEY, ""))))
    return RunConfig.from_mapping({**values, **extra})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config; results go to ``out-dir`` (absolute paths
    are safest: the app runs from wherever the SuperLink was started), else ``results/run-<id>``."""
    run = run_config_from_flower(dict(context.run_config))
    out_dir = Path(run.out_dir) if run.out_dir else Path.cwd() / "results" / f"run-{context.run_id}"
    plan = prepare(run, out_dir, overwrite=True)
    log.info("fedmm: writing results to %s", plan.out_dir)
    try:
        summary = run_federation(grid, plan)
    except FederationTooSmall as err:  # summary.json says interrupted, with this reason
        log.error("fedmm: error: %s", err)
        return
    if summary.get("status") == "failed":
        log.error("fedmm: run failed: %s; first client error: %s", summary["reason"], summary["first-client-error"])
        return
    log.info("fedmm: final test/acc %.4f (best %.4f)", summary["final"]["test/acc"], summary["best-test/acc"])
