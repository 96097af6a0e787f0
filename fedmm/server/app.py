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
from fedmm.results import CONFIG_FILE
from fedmm.server.loop import run_federation
from fedmm.server.plan import prepare
from fedmm.server.resume import resume_checkpoint, resume_config
from fedmm.strategies.roster import FederationTooSmall
from fedmm.workspace import scenario_note

app = ServerApp()
log = logging.getLogger("fedmm")

#: The run-config key that carries namespaced options through ``flwr run``, which accepts only keys
#: declared in ``[tool.flwr.app.config]``: ``--run-config "overrides='objective.lambda2=0.5 encoder.audio=mlp'"``.
OVERRIDES_KEY = "overrides"
#: The run-config key that resumes the run whose checkpoint is in ``out-dir`` (a ServerApp killed
#: mid-run): submit the same ``--run-config`` again with ``resume=true``.
RESUME_KEY = "resume"


def run_config_from_flower(values: dict) -> RunConfig:
    """The fedmm config of a ``flwr run``: the declared keys, then the space-separated
    ``key=value`` pairs of ``overrides`` (for ``strategy.<param>``, ``objective.<param>``,
    ``selection.<param>``, ``dataset.<option>`` and ``encoder.<modality>``, which cannot be declared
    in advance)."""
    extra = parse_overrides(shlex.split(str(values.pop(OVERRIDES_KEY, ""))))
    values.pop(RESUME_KEY, None)
    return RunConfig.from_mapping({**values, **extra})


def check_resumable(run: RunConfig, out_dir: Path) -> None:
    """Check that ``run`` can continue the run in ``out_dir`` (the checks of ``fedmm simulate
    --resume``: its ``config.toml`` and checkpoint are readable and belong together, and the run has
    not completed) and that it is the config that run was started with.

    Parameters
    ----------
    run:
        The submitted run config (without ``resume``).
    out_dir:
        The run's ``out-dir``.

    Raises ``ValueError`` naming the directory, or the keys that differ, and what to do.
    """
    if not run.out_dir:
        raise ValueError(
            f"run-config key {RESUME_KEY!r} needs out-dir: the directory of the run to resume "
            "(its config.toml and checkpoint)"
        )
    stored = resume_config(out_dir)
    now, then = run.to_flat(), stored.to_flat()
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if changed:
        shown = ", ".join(f"{k} = {now.get(k)!r} (the run has {then.get(k)!r})" for k in changed[:3])
        raise ValueError(
            f"{RESUME_KEY}=true continues the run in {str(out_dir)!r} exactly as it was started, but "
            f"this run config differs from its {out_dir / CONFIG_FILE}: {shown}; submit the run's "
            f"--run-config again with {RESUME_KEY}=true, or drop {RESUME_KEY} to start it over"
        )


def is_resume(values: dict) -> bool:
    """Whether the run config asks to resume (``resume = true``; a string is refused)."""
    value = values.get(RESUME_KEY, False)
    if value is not True and value is not False:  # a TOML bool only (flwr run parses `true`)
        raise ValueError(f"run-config key {RESUME_KEY!r} must be true or false, got {value!r}")
    return value


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config; results go to ``out-dir`` (absolute paths
    are safest: the app runs from wherever the SuperLink was started), else ``results/run-<id>``."""
    try:
        resume = is_resume(dict(context.run_config))
        run = run_config_from_flower(dict(context.run_config))
        out_dir = Path(run.out_dir) if run.out_dir else Path.cwd() / "results" / f"run-{context.run_id}"
        if resume:
            check_resumable(run, out_dir)
        plan = prepare(run, out_dir, overwrite=True, resume=resume)
        checkpoint = resume_checkpoint(out_dir, run, plan.model) if resume else None
    except ValueError as err:  # a config or run directory to fix: one line, no traceback
        log.error("fedmm: error: %s", err)
        return
    # printed, not logged: the ServerApp process mirrors its stdout into `flwr run --stream` and the
    # deployment's logs, where fedmm's logger (no handler there) would say nothing
    if checkpoint is not None:
        say(f"fedmm: resuming {plan.out_dir} after round {checkpoint.server_round} of {run.num_server_rounds}")
    say(f"fedmm: writing results to {plan.out_dir}")
    if note := scenario_note(run):
        say(note)
    try:
        summary = run_federation(grid, plan, print_rounds(run.num_server_rounds), resume=checkpoint)
    except FederationTooSmall as err:  # summary.json says interrupted, with this reason
        log.error("fedmm: error: %s", err)
        return
    if summary.get("status") == "failed":
        log.error("fedmm: run failed: %s; first client error: %s", summary["reason"], summary["first-client-error"])
        return
    chosen = (
        f"at best val round {summary['best-val-round']}: {summary['test/acc-at-best-val']:.4f}"
        if "best-val-round" in summary
        else "no validation split"
    )
    say(f"fedmm: final test/acc {summary['final']['test/acc']:.4f} ({chosen}); results in {plan.out_dir}")


def say(line: str) -> None:
    """Print ``line`` at once (the ServerApp's stdout reaches ``flwr run --stream`` and the logs)."""
    print(line, flush=True)
