"""``fedmm simulate | tune | datasets | report | compare | bench | config | deploy | prepare``.

Why one module of this size: the argument parser of every command; each command's body is a thin
function calling its module.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("fedmm")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # plugins first: their objectives, policies, datasets (and prepare commands) join the parser
        _import_plugin_option(argv)
    except (ValueError, ImportError) as err:
        print(f"fedmm: error: {err}", file=sys.stderr)
        return 2
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"fedmm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a simulation (loading data, between benchmark runs)
        return _interrupted(signal.SIGINT, "interrupted (SIGINT)")
    except BrokenPipeError:  # `fedmm config | head`: the reader left; say nothing more, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail
        return 128 + int(signal.SIGPIPE)
    except Exception as err:
        from fedmm.server.stopping import Interrupted

        if not isinstance(err, Interrupted):
            raise
        return _interrupted(err.signum, f"interrupted ({err.signal_name}); the run under way was dropped")


def _interrupted(signum: int, message: str) -> int:
    """Print ``message`` as the one error line of a stopped command and return the shell's exit
    code for ``signum`` (130 for SIGINT, 143 for SIGTERM); further Ctrl-Cs are ignored while the
    process exits, so none of them prints a traceback.

    Parameters
    ----------
    signum:
        The signal that stopped the command.
    message:
        What the user reads after ``fedmm: error:``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"fedmm: error: {message}", file=sys.stderr)
    return 128 + int(signum)


def _plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="MODULE[,MODULE]",
        help="import these modules first (as the config key plugins does), so that every "
        "command sees the objectives, policies, datasets and strategies they register; "
        "repeatable",
    )


def _overrides_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` of the commands that build run configs."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _protocol_options(parser: argparse.ArgumentParser, case: str, note: str) -> None:
    """``--protocol``, ``--trials``, ``--jobs`` and ``--pruner`` of a benchmark over ``case``s
    (``note``: what of a case is tuned, shown after its name)."""
    parser.add_argument(
        "--protocol",
        default="defaults",
        help=f"defaults (fedmm's defaults), paper (preset=paper) or tuned (each {case}{note} tuned on "
        "validation with --trials trials, then run on the seeds)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=20,
        help=f"--protocol tuned: trials per {case} (the same budget for every {case})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="--protocol tuned: worker processes per study")
    parser.add_argument("--pruner", default="median", help="--protocol tuned: median, asha or none")


def _tune_settings(args: argparse.Namespace) -> Any:
    """The :class:`fedmm.tune.TuneSettings` of a benchmark's ``--protocol tuned``, else ``None``."""
    if args.protocol != "tuned":
        return None
    from fedmm.tune import TuneSettings

    return TuneSettings(trials=args.trials, jobs=args.jobs, pruner=args.pruner)


def _import_plugin_option(argv: Sequence[str]) -> tuple[str, ...]:
    """Import the modules of ``--plugins`` (before the command's parser is built); one error naming
    the option and the module when one cannot be imported."""
    from fedmm.config import import_plugins

    early = argparse.ArgumentParser(add_help=False)
    _plugin_option(early)
    known, _ = early.parse_known_args(argv)
    names = [n.strip() for item in known.plugins for n in item.split(",") if n.strip()]
    try:
        return import_plugins(names) if names else ()
    except ValueError as err:
        raise ValueError(str(err).replace("config key 'plugins'", "--plugins", 1)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmm", description="Federated multimodal learning simulator.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower and Ray logs")
    _plugin_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="simulate a federation (on Ray, or in this process with engine=inline) and write its results",
        description="Simulate a federation: the clients train for num-server-rounds rounds; the server\n"
        "aggregates and evaluates the global model every round and writes rounds.csv, clients.csv,\n"
        "summary.json, the final model and a plot to --out. Progress: a live bar in a terminal, one\n"
        "line per round otherwise. Every config key: `fedmm config`. Without --config: HAPT, one\n"
        "client per user, FedAvg, 20 rounds.",
        epilog="examples:\n"
        "  fedmm simulate --set dataset=segment --set num-server-rounds=5 --set engine=inline --out results/first\n"
        "  fedmm simulate --config experiments/configs/demo.toml --out results/demo --overwrite\n"
        "  fedmm simulate --resume results/demo    # continue a stopped run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--config", type=Path, help="TOML file of config keys (see README)")
    _overrides_option(sim, "override a config key; repeatable (e.g. --set num-server-rounds=5)")
    sim.add_argument("--out", type=Path, help="results directory (default: the config's out-dir)")
    sim.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    sim.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the stopped run in DIR from its last checkpoint (no --config/--set)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress display")
    sim.set_defaults(func=_simulate)

    data = sub.add_parser("datasets", help="list datasets, their modalities, sizes and availability")
    data.set_defaults(func=_datasets)

    report = sub.add_parser("report", help="print a readable summary and the last rounds of results directories")
    report.add_argument("run_dirs", nargs="+", metavar="DIR", help="results directories (globs allowed)")
    report.add_argument("--last", type=int, default=10, help="how many of the last rounds to show (default 10)")
    report.set_defaults(func=_report)

    comp = sub.add_parser(
        "compare",
        help="compare runs: what differs in their configs, their results, overlay plots",
        description="A table of the runs (the config keys that differ, final test accuracy, "
        "best on validation where it exists, last rounds' mean, weak modality, bytes, time) and, "
        "with --out, compare.md, compare.csv and one overlay plot per metric.",
        epilog="example: fedmm compare 'results/*' --out results/compare",
    )
    comp.add_argument(
        "run_dirs",
        nargs="+",
        metavar="DIR",
        help="results directories or globs; a directory of runs (a benchmark's) stands for its runs",
    )
    comp.add_argument("--out", type=Path, help="write compare.md, compare.csv and compare-<metric>.png here")
    comp.set_defaults(func=_compare)

    deploy = sub.add_parser("deploy", help="TLS certificates; a SuperLink and SuperNodes on this machine")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    local = deploy_sub.add_parser("local", help="start a SuperLink and N SuperNodes on loopback until Ctrl-C")
    local.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (partition-id 0..N-1)")
    local.add_argument("--tls", action="store_true", help="serve over TLS with generated certificates")
    local.add_argument(
        "--auth",
        action="store_true",
        help="SuperNode authentication: admit only nodes whose "
        "keys are registered with `flwr supernode register` (implies --tls)",
    )
    local.add_argument("--port", type=int, default=9092, help="SuperLink port")
    local.add_argument("--workdir", type=Path, default=Path(".fedmm-deploy"), help="logs, state, certificates")
    local.set_defaults(func=_deploy_local)
    certs = deploy_sub.add_parser("certs", help="write a CA and a SuperLink certificate for the given hosts")
    certs.add_argument("--host", action="append", required=True, help="name or IP the SuperNodes dial; repeatable")
    certs.add_argument("--out", type=Path, default=Path("certificates"))
    certs.set_defaults(func=_deploy_certs)

    bench = sub.add_parser("bench", help="benchmark grids of runs")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    sel = bench_sub.add_parser("selection", help="the same federation and budget under each selection policy")
    sel.add_argument("--config", type=Path, help="TOML file of the federation (see README)")
    _overrides_option(sel, "override a config key of every run; repeatable")
    sel.add_argument("--policies", default="random,powd,divfl,cmsfed", help="comma-separated selection policies")
    sel.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    sel.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/out/selection"),
        help="directory of the runs, CSVs, table and plot (finished runs are not repeated)",
    )
    _protocol_options(sel, "policy", ", its own parameters and the shared ones,")
    sel.set_defaults(func=_bench_selection)
    meth = bench_sub.add_parser("methods", help="every strategy and objective on every shipped dataset")
    meth.add_argument(
        "--datasets",
        help="comma-separated federations: a dataset's name is its skewed federation (hapt: its natural "
        "users, competition: IID), <name>-iid or <name>-skewed the other one (default: all ten; with --quick: "
        "synthetic)",
    )
    meth.add_argument("--methods", help="comma-separated methods (default: all; see README)")
    meth.add_argument(
        "--seeds", help="comma-separated seeds (default 0,1,2; --protocol paper or tuned: 0-4; with --quick: 0)"
    )
    meth.add_argument("--quick", action="store_true", help="smoke runs: 2 rounds of 1 local epoch, 6 clients")
    _overrides_option(meth, "override a config key of every run; repeatable")
    meth.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/out/methods"),
        help="directory of the runs, the CSV and the table (finished runs are not repeated)",
    )
    _protocol_options(meth, "method", "")
    meth.set_defaults(func=_bench_methods)

    tune = sub.add_parser(
        "tune",
        help="tune one method on one federation on validation accuracy (Optuna study in --out; run again to resume)",
    )
    tune.add_argument("--config", type=Path, help="TOML file of the method and federation")
    _overrides_option(tune, "override a config key of the base config; repeatable")
    tune.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the study's directory (study.journal, best.toml, trials.csv, plots); the same --out resumes the study",
    )
    tune.add_argument(
        "--trials",
        type=int,
        default=20,
        help="trials the study should hold (default 20; finished ones from an earlier run count)",
    )
    tune.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study (one per core)")
    tune.add_argument("--pruner", default="median", help="median (default), asha or none (docs/tuning.md)")
    tune.add_argument(
        "--params", help="comma-separated keys to tune (default: every key with a search range, see `fedmm config`)"
    )
    tune.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    tune.set_defaults(func=_tune)

    keys = sub.add_parser("config", help="list every config key with its constraints, default and meaning")
    keys.add_argument(
        "namespace", nargs="?", help="only this part: run, objective, selection, dataset, encoder, devices"
    )
    keys.add_argument("name", nargs="?", help="only this component of the namespace (e.g. fedmm config objective mnl)")
    keys.add_argument(
        "--markdown",
        action="store_true",
        help="print the configuration reference page (fedmm config --markdown > docs/configuration.md)",
    )
    keys.set_defaults(func=_config_keys)

    prep = sub.add_parser("prepare", help="build a user-owned dataset's directory (CREMA-D frames at 1 fps)")
    prep_sub = prep.add_subparsers(dest="dataset", required=True, metavar="dataset")
    from fedmm.data.registry import DATASETS

    for name, entry in DATASETS.items():  # the datasets whose entry has a prepare command
        if entry.prepare is not None:
            one = prep_sub.add_parser(name, help=f"prepare {name}: {entry.description}")
            one.set_defaults(func=entry.prepare(one))
    return parser


def _simulate(args: argparse.Namespace) -> int:
    from fedmm.config import load_config
    from fedmm.runlock import directory_lock
    from fedmm.server.resume import resume_config

    if args.resume:
        if args.config or args.overrides or args.out:
            raise ValueError(
                "--resume DIR continues the run exactly as configured in DIR/config.toml; "
                "drop --config, --set and --out"
            )
        if not args.resume.is_dir():
            resume_config(args.resume)  # raises, naming what is missing (the lock would create the directory)
        with directory_lock(args.resume, flag="--resume directory"):  # before the run's files are read
            return _simulate_in(resume_config(args.resume), args.resume, args)
    run = load_config(args.config, args.overrides)
    out = args.out or (Path(run.out_dir) if run.out_dir else None)
    if out is None:
        raise ValueError("no output directory: pass --out DIR (or set out-dir in the config)")
    with directory_lock(out):  # one run per directory, held until it ends (fedmm.runlock)
        return _simulate_in(run, out, args)


def _simulate_in(run: Any, out: Path, args: argparse.Namespace) -> int:
    """``fedmm simulate`` of the resolved ``run`` into ``out``, whose lock the caller holds."""
    from fedmm.progress import watch
    from fedmm.server.plan import prepare
    from fedmm.server.stopping import Interrupted
    from fedmm.simulation import simulate
    from fedmm.workspace import scenario_note

    plan = prepare(run, out, overwrite=args.overwrite, resume=bool(args.resume))
    if note := scenario_note(run):
        print(note, flush=True)
    try:
        with watch(run.num_server_rounds, enabled=not args.quiet) as on_round:
            summary = simulate(run, out, plan=plan, on_round=on_round, resume=bool(args.resume))
    except Interrupted as err:
        if err.last_round is None:
            advice = "no round finished; run the same command again (with --overwrite)"
        else:
            advice = (
                f"rounds 0-{err.last_round} of {run.num_server_rounds} are in {plan.out_dir}; "
                f"continue with `fedmm simulate --resume {plan.out_dir}`"
            )
        return _interrupted(err.signum, f"interrupted ({err.signal_name}), the round under way was dropped; {advice}")
    if summary.get("status") == "failed":
        print(
            f"fedmm: error: run stopped, {summary['reason']}; first client error: {summary['first-client-error']}; "
            f"fix its cause and rerun (finished rounds are in {plan.out_dir})",
            file=sys.stderr,
        )
        return 1
    final = summary["final"]
    per_mod = "  ".join(f"{k.rsplit('/', 1)[1]} {v:.3f}" for k, v in final.items() if k.startswith("test/acc/"))
    chosen = (
        f"at best val round {summary['best-val-round']}: {summary['test/acc-at-best-val']:.4f}"
        if "best-val-round" in summary
        else f"best {summary['best-test/acc']:.4f} at round {summary['best-round']}, no validation split"
    )
    print(f"test/acc {final['test/acc']:.4f} ({chosen})  alone: {per_mod}  in {summary['total-seconds']:.0f} s")
    if summary.get("collapsed"):
        print(f"warning: the run collapsed at round {summary['collapsed']['round']}: {summary['collapsed']['reason']}")
    print(f"results: {plan.out_dir}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from fedmm.config import load_config
    from fedmm.tune import STUDY_FILE, TuneSettings, tune

    run = load_config(args.config, args.overrides)
    settings = TuneSettings(
        trials=args.trials,
        jobs=args.jobs,
        pruner=args.pruner,
        seed=args.seed,
        params=tuple(_names(args.params)) if args.params else None,
    )
    try:
        result = tune(run, args.out, settings)
    except KeyboardInterrupt:  # a Ctrl-C outside a trial's own handlers: the finished trials are in the journal
        return _interrupted(
            signal.SIGINT,
            f"interrupted; the study keeps its finished trials in {args.out / STUDY_FILE}; "
            "run the same command again to continue (a trial under way is marked failed)",
        )
    done = (
        f"{result.complete} complete and {result.pruned} pruned trials ({result.rounds} rounds trained) "
        f"in {result.seconds:.0f} s"
    )
    if result.status == "interrupted":
        return _interrupted(
            signal.SIGINT,
            f"interrupted; the study keeps its {done.split(' in ')[0]} in "
            f"{args.out / STUDY_FILE}; run the same command again to continue",
        )
    print(f"study {result.study}: {done}")
    if result.best_config is None:
        print("no trial completed (all pruned); widen the search or add trials")
        return 1
    values = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(f"best mean val/acc (last rounds) {result.best_value:.4f}: {values}")
    print(f"best config: {result.best_config} (fedmm simulate --config {result.best_config} --out DIR)")
    return 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _bench_methods(args: argparse.Namespace) -> int:
    from fedmm.bench import METHOD_FEDERATIONS, METHODS, methods_benchmark

    datasets = _names(args.datasets or ("synthetic" if args.quick else ",".join(METHOD_FEDERATIONS)))
    methods = _names(args.methods or ",".join(METHODS))
    seeds = _seeds(args.seeds or ("0" if args.quick else "0,1,2" if args.protocol == "defaults" else "0,1,2,3,4"))

    def progress(row: dict) -> None:
        print(
            f"{row['dataset']} {row['method']} seed {row['seed']}: test/acc {row['test/acc']:.4f} "
            f"in {row['seconds']:.0f} s",
            flush=True,
        )

    table = methods_benchmark(
        datasets,
        methods,
        seeds,
        args.out,
        args.overrides,
        quick=args.quick,
        on_row=progress,
        on_start=_say,
        protocol=args.protocol,
        tune_settings=_tune_settings(args),
    )
    print(table)
    print(f"results: {args.out}")
    return 0


def _bench_selection(args: argparse.Namespace) -> int:
    from fedmm.bench import selection_benchmark

    policies = _names(args.policies)
    seeds = _seeds(args.seeds)

    def progress(row: dict) -> None:
        print(
            f"{row['policy']} seed {row['seed']}: test/acc {row['test/acc']:.4f} in {row['seconds']:.0f} s", flush=True
        )

    table = selection_benchmark(
        args.config,
        args.overrides,
        policies,
        seeds,
        args.out,
        on_row=progress,
        on_start=_say,
        protocol=args.protocol,
        tune_settings=_tune_settings(args),
    )
    print(table)
    print(f"results: {args.out}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _datasets(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from fedmm.data import dataset_table

    # one line of facts per dataset, its description wrapped under it: fits an 80-column terminal
    width = max(shutil.get_terminal_size((100, 24)).columns, 40) - 1
    print(f"{'name':10s} {'classes':>7s} {'train':>6s} {'test':>5s}  modalities (example shape)")
    for row in dataset_table():
        mods = (
            " ".join(f"{m}{_shape(s)}" for m, s in row["modalities"].items())
            if row.get("modalities")
            else "(from data-dir)"
        )
        facts = (
            f"{row['name']:10s} {row.get('num_classes', '-')!s:>7s} {row.get('train', '-')!s:>6s} "
            f"{row.get('test', '-')!s:>5s}  "
        )
        print(textwrap.fill(mods, width, initial_indent=facts, subsequent_indent=" " * len(facts)))
        about = row["description"] + ("" if row["installed"] else " [not installed]")
        print(textwrap.fill(about, width, initial_indent=" " * 11, subsequent_indent=" " * 11))
    return 0


def _shape(shape: Sequence[int]) -> str:
    """``(3, 128)`` -> ``(3,128)``: an example shape without spaces, so a line wraps between modalities."""
    return "(" + ",".join(map(str, shape)) + ")"


def _report(args: argparse.Namespace) -> int:
    from fedmm.compare import expand_run_dirs
    from fedmm.reporting import load_run, report_text

    dirs = expand_run_dirs(args.run_dirs)
    print("\n\n".join(report_text(load_run(d), last=args.last) for d in dirs))
    if len(dirs) > 1:
        print(f"\n{len(dirs)} runs; side by side: fedmm compare {' '.join(map(str, args.run_dirs))}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fedmm.compare import compare_runs, markdown, rich_table

    table, written = compare_runs(args.run_dirs, args.out)
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(rich_table(table))
    else:
        print(markdown(table))
    if written:
        print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    return 0


def _deploy_local(args: argparse.Namespace) -> int:
    import time

    from fedmm.deploy import CONNECTION, DeployError, LocalDeployment, stop_on_signals

    tls = args.tls or args.auth
    try:
        with (
            stop_on_signals(),
            LocalDeployment(args.workdir, args.nodes, tls=tls, port=args.port, auth=args.auth) as deployment,
        ):
            security = "TLS, SuperNode authentication" if args.auth else "TLS" if tls else "insecure"
            print(
                f"SuperLink on {deployment.address} ({security}), {args.nodes} SuperNodes; logs in {deployment.workdir}"
            )
            print(
                "Submit the app from this directory with:\n"
                f"  FLWR_HOME={deployment.flwr_home} flwr run . {CONNECTION} --stream "
                f"--run-config \"num-clients={args.nodes} partition='iid' "
                f"out-dir='{Path.cwd() / 'results' / 'deploy'}'\""
            )
            print("Ctrl-C (or SIGTERM, SIGHUP) stops every process started here.", flush=True)
            while True:
                time.sleep(1)
    except DeployError as err:
        print(f"fedmm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped every process started here")
    return 0


def _deploy_certs(args: argparse.Namespace) -> int:
    from fedmm.deploy import generate_certificates

    paths = generate_certificates(args.out, args.host)
    print(f"CA: {paths.ca}\nSuperLink certificate: {paths.server_cert}\nSuperLink key: {paths.server_key}")
    return 0


def _config_keys(args: argparse.Namespace) -> int:
    from fedmm.config_doc import configuration_markdown, plain_listing

    if args.markdown:
        if args.namespace:
            raise ValueError("--markdown writes the whole reference (docs/configuration.md); drop the namespace")
        print(configuration_markdown(), end="")
        return 0
    for line in plain_listing(args.namespace, args.name):  # raises naming the valid names for an unknown one
        print(line)
    return 0


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        # run_simulation warns that it is deprecated in favour of `flwr run`; fedmm simulate uses it
        # on purpose (in-process, explicit resources), so only Flower's errors are shown.
        flwr_log = logging.getLogger("flwr")
        flwr_log.setLevel(logging.ERROR)
        flwr_log.propagate = False


if __name__ == "__main__":
    raise SystemExit(main())
