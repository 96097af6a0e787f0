"""The ServerApp that ``flwr run .`` starts: reads ``[tool.flwr.app.config]`` and runs the loop."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmm.config import RunConfig
from fedmm.config_text import parse_overrides
from fedmm.progress import print_rounds
from fedmm.server.loop import run_federation
from fedmm.server.plan import prepare
from fedmm.strategies.roster import FederationTooSmall
from fedmm.workspace import scenario_note

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
    # printed, not logged: the ServerApp process mirrors its stdout into `flwr run --stream` and the
    # deployment's logs, where fedmm's logger (no handler there) would say nothing
    say(f"fedmm: writing results to {plan.out_dir}")
    if note := scenario_note(run):
        say(note)
    try:
        summary = run_federation(grid, plan, print_rounds(run.num_server_rounds))
    except FederationTooSmall as err:  # summary.json says interrupted, with this reason
        log.error("fedmm: error: %s", err)
        return
    if summary.get("status") == "failed":
        log.error("fedmm: run failed: %s; first client error: %s", summary["reason"], summary["first-client-error"])
        return
    say(f"fedmm: final test/acc {summary['final']['test/acc']:.4f} (best {summary['best-test/acc']:.4f} at round "
        f"{summary['best-round']}); results in {plan.out_dir}")


def say(line: str) -> None:
    """Print ``line`` at once (the ServerApp's stdout reaches ``flwr run --stream`` and the logs)."""
    print(line, flush=True)
