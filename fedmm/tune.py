"""``fedmm tune``: a hyperparameter search of one method on one federation, on Optuna
(Akiba et al., KDD 2019, https://github.com/optuna/optuna).

The search space is what the parameters declare (:class:`fedmm.params.Search` next to their
constraints): the run's ``lr``, ``momentum``, ``local-epochs``, ``weight-decay`` and the numeric
parameters of the run's strategy, objective and selection policy. Every trial is a federation on the
``inline`` engine (the same numbers as Ray, nothing started) that writes no files; after each round
it reports the validation accuracy (``val/acc``) to the trial, so the pruner can stop a trial that
falls behind the others at the same round. The trial's value is the mean validation accuracy of its
last :data:`~fedmm.results.LAST_ROUNDS` rounds; the test split is never read by a trial. A trial
whose run diverges, fails or raises is pruned with the reason (``pruned-reason``), not an error;
an error that says the code is wrong (:data:`CODE_ERRORS`: a ``NameError``, ...) stops the study.

The study lives in ``<out>/study.journal`` (Optuna's ``JournalStorage`` on a file: an append-only log
with a file lock, safe for several processes, no database server), so ``--jobs N`` worker processes
share it and a stopped study resumes where it stopped: running the same command again runs only the
trials that are missing. Ctrl-C (or SIGTERM) drops the trials under way (they are recorded as
failed and do not count), keeps the finished ones, and exits without a traceback.

Outputs in ``<out>``: ``best.toml`` (the best trial's full config, for ``fedmm simulate --config``),
``trials.csv``, ``history.png`` (optimisation history) and ``importance.png`` (parameter importances
by PED-ANOVA, Watanabe et al., IJCAI 2023: it needs no scikit-learn, unlike fANOVA).

Why one module of this size: one Optuna study: the trial objective, pruning, worker processes and
the outputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import multiprocessing
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmm.config import RunConfig, param_classes
from fedmm.files import atomic_write
from fedmm.params import Spec, config_name, config_specs, specs
from fedmm.results import LAST_ROUNDS

log = logging.getLogger("fedmm")

STUDY_FILE = "study.journal"
LOCK_FILE = ".tune.lock"
BEST_FILE = "best.toml"
TRIALS_FILE = "trials.csv"
HISTORY_PLOT = "history.png"
IMPORTANCE_PLOT = "importance.png"
#: The per-round validation accuracy a trial reports (rounds.csv's column).
VAL_METRIC = "val/acc"
#: The pruners ``fedmm tune --pruner`` offers.
PRUNERS = ("median", "asha", "none")


# -- the search space ---------------------------------------------------------------------------
def search_space(run: RunConfig, only: Sequence[str] | None = None) -> dict[str, Spec]:
    """Config key -> its declaration (with a :class:`~fedmm.params.Search` range), of every tunable
    parameter of ``run``: the plain keys, then ``strategy.*``, ``objective.*`` and ``selection.*``
    of the run's own strategy, objective and selection policy.

    Parameters
    ----------
    run:
        The base config of the study.
    only:
        Tune just these keys (``["lr", "objective.alpha"]``); ``None``: all of them. A key that is
        not tunable for this run is a ``ValueError`` naming the tunable ones.
    """
    space = {config_name(s.name): s for s in specs(RunConfig) if s.search is not None}
    classes = param_classes()
    for namespace, name in (("strategy", run.strategy), ("objective", run.objective), ("selection", run.selection)):
        space.update(
            {f"{namespace}.{s.name}": s for s in config_specs(classes[namespace][name]) if s.search is not None}
        )
    if only is None:
        return space
    unknown = [k for k in only if k not in space]
    if unknown:
        raise ValueError(
            f"--params: {unknown[0]!r} is not a tunable parameter of this run; tunable: "
            f"{', '.join(space)} (see `fedmm config`)"
        )
    return {k: space[k] for k in only}


def suggest(trial: Any, space: Mapping[str, Spec]) -> dict[str, Any]:
    """Config key -> the value ``trial`` draws from each parameter's range."""
    return {key: spec.search.suggest(trial, key, spec.annotation) for key, spec in space.items()}


def trial_config(base: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``base`` with a trial's ``values``, validated (a combination the config refuses is a
    ``ValueError``), on the inline engine and writing nothing."""
    return base.replace(**values, engine="inline", **{"out-dir": ""})


def study_name(base: RunConfig) -> str:
    """The study of one method on one federation: dataset, strategy, objective, selection and a
    digest of the whole base config (another federation or budget is another study)."""
    digest = hashlib.sha256(base.replace(engine="inline", **{"out-dir": ""}).to_toml().encode()).hexdigest()[:10]
    return f"{base.dataset}-{base.strategy}-{base.objective}-{base.selection}-{digest}"


# -- one trial ------------------------------------------------------------------------------------
class _Pruned(Exception):
    """Raised from the round callback to stop a trial's federation (the pruner asked)."""


#: Exceptions that say the code is wrong, whatever the configuration: a trial that raises one stops
#: the study with its traceback instead of being pruned (every trial of a method would be pruned, and
#: the method read as one that collapses).
CODE_ERRORS = (NameError, AttributeError, TypeError, ImportError, LookupError, AssertionError, NotImplementedError)


def run_trial(
    trial: Any,
    base: RunConfig,
    space: Mapping[str, Spec],
    simulate: Callable[..., dict] | None = None,
    stopped: Sequence[int] = (),
) -> float:
    """Run one trial: draw its values, simulate the federation, report ``val/acc`` every round.

    Returns the mean ``val/acc`` of the last :data:`LAST_ROUNDS` rounds. Raises
    ``optuna.TrialPruned`` when the pruner stops it, or when the run diverges (non-finite loss),
    fails, or raises (the reason is the trial's ``pruned-reason`` attribute), except for an error of
    :data:`CODE_ERRORS`, which propagates. ``stopped``: signals
    received before the run installed its own handlers; the run stops after its next round.
    """
    from fedmm.server.loop import Interrupted

    if simulate is None:
        from fedmm.simulation import simulate
    values = suggest(trial, space)
    try:
        run = trial_config(base, values)
    except ValueError as err:  # a combination the config refuses (lr-min above the drawn lr, ...)
        return _prune(trial, 0, f"config refused: {err}")
    rows: list[dict[str, Any]] = []

    def on_round(row: dict[str, Any]) -> None:
        rows.append(row)
        if stopped:
            raise Interrupted(stopped[0])
        if row["round"] == 0:
            return
        if VAL_METRIC not in row:
            raise ValueError(f"the run reports no {VAL_METRIC!r} (no validation split); fedmm tune needs one")
        value = float(row[VAL_METRIC])
        loss = float(row.get("train/loss", 0.0))
        if not (math.isfinite(value) and math.isfinite(loss)):
            raise _Pruned(f"round {row['round']}: non-finite {'train/loss' if math.isfinite(value) else VAL_METRIC}")
        trial.report(value, step=int(row["round"]))
        if trial.should_prune():
            raise _Pruned(f"pruned at round {row['round']} ({VAL_METRIC} {value:.4f})")

    trained = lambda: max((int(r["round"]) for r in rows), default=0)  # noqa: E731
    try:
        summary = simulate(run, None, on_round=on_round)
    except _Pruned as err:
        return _prune(trial, trained(), str(err))
    except Interrupted:
        raise
    except ValueError as err:
        if f"no {VAL_METRIC!r}" in str(err):
            raise
        return _prune(trial, trained(), f"run raised {type(err).__name__}: {err}")
    except CODE_ERRORS:  # a bug in fedmm or a plugin: pruning it would report the method as unstable
        raise
    except Exception as err:  # a run that breaks numerically is a bad configuration, not a broken study
        return _prune(trial, trained(), f"run raised {type(err).__name__}: {err}")
    trial.set_user_attr("rounds", trained())
    trial.set_user_attr("seconds", float(summary.get("total-seconds", 0.0)))
    if summary.get("status") == "failed":
        return _prune(trial, trained(), f"run failed: {summary.get('reason')}")
    for flag in ("diverged", "collapsed"):  # the loss-growth rule; the collapse rule (val far below its best)
        if summary.get(flag):
            why = summary[flag].get("reason", summary[flag]) if isinstance(summary[flag], dict) else summary[flag]
            return _prune(trial, trained(), f"{flag}: {why}")
    trained_rows = [r for r in rows if r["round"] > 0]
    last = [float(r[VAL_METRIC]) for r in trained_rows[-LAST_ROUNDS:]]
    best = max(trained_rows, key=lambda r: r[VAL_METRIC])
    trial.set_user_attr("best-val/acc", float(best[VAL_METRIC]))
    trial.set_user_attr("best-val-round", int(best["round"]))
    return sum(last) / len(last)


def _prune(trial: Any, rounds: int, reason: str) -> float:
    import optuna

    trial.set_user_attr("rounds", rounds)
    trial.set_user_attr("pruned-reason", reason)
    raise optuna.TrialPruned(reason)


# -- the study -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneSettings:
    """How a study runs (everything but the base config).

    Parameters
    ----------
    trials:
        Trials the study should hold, finished (complete or pruned) ones from earlier runs included.
    jobs:
        Worker processes (each runs trials on the inline engine, with ``cpus / jobs`` torch threads).
    pruner:
        ``median`` (default: stop a trial below the median of earlier trials at the same round,
        from the fourth trial and after a quarter of the rounds), ``asha`` (asynchronous successive
        halving: rungs at 1/8, 3/8 of the rounds, ...; keeps the best third; saves more rounds but
        chose a worse configuration in ``experiments/bench/tune_speed.py``) or ``none``.
    seed:
        Seed of the sampler (TPE); worker ``i`` uses ``seed + i``.
    params:
        Tune only these keys; ``None``: the whole :func:`search_space`.
    """

    trials: int = 20
    jobs: int = 1
    pruner: str = "median"
    seed: int = 0
    params: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {self.trials}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")


@dataclass
class TuneResult:
    """What a study holds after :func:`tune`.

    Parameters
    ----------
    study:
        The study's name.
    status:
        ``completed`` (the study holds ``trials`` finished trials) or ``interrupted``.
    complete, pruned:
        Its finished trials by state.
    rounds:
        Rounds trained by its finished trials, together (pruned ones stop early).
    best_value:
        The best trial's mean validation accuracy of the last rounds (``None``: no complete trial).
    best_params:
        The best trial's values.
    best_config:
        ``best.toml`` (``None``: no complete trial yet).
    seconds:
        Wall time of this call.
    """

    study: str
    status: str
    complete: int = 0
    pruned: int = 0
    rounds: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: Path | None = None
    seconds: float = 0.0


def storage(out_dir: Path) -> Any:
    """The study storage in ``out_dir`` (a journal file several processes append to under a lock)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(out_dir / STUDY_FILE)))


def _pruner(settings: TuneSettings, rounds: int) -> Any:
    import optuna

    if settings.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, rounds // 8), reduction_factor=3)
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, rounds // 4))
    return optuna.pruners.NopPruner()


def _load_study(out_dir: Path, name: str, settings: TuneSettings, rounds: int, worker: int) -> Any:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=settings.seed + worker)
    return optuna.load_study(
        study_name=name, storage=storage(out_dir), sampler=sampler, pruner=_pruner(settings, rounds)
    )


def _counted(study: Any) -> int:
    """Trials that count towards the budget: finished (complete, pruned) and under way."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def work(
    out_dir: Path,
    name: str,
    base_toml: str,
    settings: TuneSettings,
    worker: int = 0,
    simulate: Callable[..., dict] | None = None,
) -> str:
    """One worker: run trials of study ``name`` until it holds ``settings.trials`` of them.

    Returns ``completed``, or ``interrupted`` after a stop (SIGINT/SIGTERM: the trial under way is
    recorded as failed, finished ones stay).
    """
    import tomllib

    import optuna

    from fedmm.config_text import flatten
    from fedmm.server.loop import Interrupted

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a stopped trial is logged as failed, with a traceback
    base = RunConfig.from_mapping(flatten(tomllib.loads(base_toml)))
    space = search_space(base, settings.params)
    study = _load_study(out_dir, name, settings, base.num_server_rounds, worker)
    stopped: list[int] = []
    with _stop_between_trials(stopped):
        while not stopped and _counted(study) < settings.trials:
            try:
                study.optimize(lambda t: run_trial(t, base, space, simulate, stopped), n_trials=1)
            except Interrupted:
                return "interrupted"
    return "interrupted" if stopped else "completed"


@contextlib.contextmanager
def _stop_between_trials(stopped: list[int]) -> Iterator[None]:
    """SIGINT/SIGTERM between trials only mark the stop (no ``KeyboardInterrupt`` in the middle of a
    write to the study); during a trial the simulation's own handlers stop the run."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: stopped.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _worker_main(out_dir: str, name: str, base_toml: str, settings: TuneSettings, worker: int, threads: int) -> None:
    # started with SIGINT ignored (no KeyboardInterrupt traceback while it imports); work() installs
    # the handler that stops it, and the parent repeats its signal until every worker has ended
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR)
    status = work(Path(out_dir), name, base_toml, settings, worker)
    raise SystemExit(0 if status == "completed" else 130)


def tune(
    base: RunConfig, out_dir: str | Path, settings: TuneSettings, simulate: Callable[..., dict] | None = None
) -> TuneResult:
    """Create or resume the study of ``base`` in ``out_dir`` and run it until it holds
    ``settings.trials`` finished trials (or a stop); then write ``best.toml``, ``trials.csv`` and
    the plots.

    Parameters
    ----------
    base:
        The method and federation (its ``engine`` and ``out-dir`` are ignored by the trials).
    out_dir:
        The study's directory (created); one study per directory.
    settings:
        Trials, workers, pruner, seed, parameters.
    simulate:
        Runs one federation (tests); default :func:`fedmm.simulation.simulate`. Only with
        ``jobs = 1``.
    """
    import time

    import optuna

    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {str(out_dir)!r} is a file; pass a directory with --out")
    if getattr(base, "validation", "auto") == "off":
        raise ValueError(
            "fedmm tune chooses on the validation split, and this config has validation = 'off'; "
            "drop it (or set validation = 'auto')"
        )
    space = search_space(base, settings.params)  # an unknown --params key fails before anything is written
    if not space:
        raise ValueError("this run has no tunable parameter (see `fedmm config`)")
    name = study_name(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        store = storage(out_dir)
        others = [s.study_name for s in optuna.get_all_study_summaries(store) if s.study_name != name]
        if others:
            raise ValueError(
                f"{str(out_dir)!r} holds the study {others[0]!r} of another config (method, federation "
                "or budget); pass another --out for this one"
            )
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True)
        _fail_stale(study)
        base_toml = base.to_toml()
        if settings.jobs == 1:
            status = work(out_dir, name, base_toml, settings, 0, simulate)
        else:
            status = _run_workers(out_dir, name, base_toml, settings)
        result = write_outputs(study, base, out_dir, status)
    result.seconds = time.perf_counter() - started
    return result


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock file: one ``fedmm tune`` per study directory at a time (its workers
    share the study; a second command would mistake their running trials for stale ones)."""
    with open(out_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another `fedmm tune` is running on {str(out_dir)!r}; wait for it or stop it "
                "(its finished trials stay), or pass another --out"
            ) from None
        yield


def _fail_stale(study: Any) -> None:
    """Trials left ``RUNNING`` by a process that was killed (no other tune holds the lock) count as
    failed, so that they neither block the budget nor the pruner."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _run_workers(out_dir: Path, name: str, base_toml: str, settings: TuneSettings) -> str:
    """``settings.jobs`` worker processes (spawned: no forked torch or data state) on one study;
    a stop (Ctrl-C reaches every process of the group) waits for all of them to finish their stop."""
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // settings.jobs)
    procs = [
        ctx.Process(target=_worker_main, args=(str(out_dir), name, base_toml, settings, i, threads), daemon=False)
        for i in range(settings.jobs)
    ]
    stopped: list[int] = []
    with _stop_between_trials(stopped):
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the spawned workers' start-up
        try:
            for p in procs:
                p.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        while any(p.is_alive() for p in procs):
            if stopped:  # a `kill -INT` of this process alone reaches the workers too; repeated, harmless
                for p in procs:
                    if p.pid is not None and p.is_alive():
                        os.kill(p.pid, signal.SIGINT)
            for p in procs:
                p.join(timeout=0.5)
    codes = [p.exitcode for p in procs]
    if stopped or any(c != 0 for c in codes):
        bad = [c for c in codes if c not in (0, 130)]
        if bad and not stopped:
            raise RuntimeError(f"a tune worker exited with code {bad[0]}; see the messages above")
        return "interrupted"
    return "completed"


def write_outputs(study: Any, base: RunConfig, out_dir: Path, status: str) -> TuneResult:
    """``best.toml``, ``trials.csv`` and the two plots of ``study``; the :class:`TuneResult`."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    result = TuneResult(
        study.study_name,
        status,
        len(complete),
        len(pruned),
        sum(int(t.user_attrs.get("rounds", 0)) for t in (*complete, *pruned)),
    )
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    atomic_write(out_dir / TRIALS_FILE, frame.to_csv(index=False))
    if not complete:
        return result
    best = study.best_trial
    result.best_value, result.best_params = float(best.value), dict(best.params)
    result.best_config = out_dir / BEST_FILE
    chosen = base.replace(**best.params)
    header = (
        f"# fedmm tune: best of {len(complete)} complete and {len(pruned)} pruned trials of study "
        f"{study.study_name}\n# trial {best.number}: mean {VAL_METRIC} of the last {LAST_ROUNDS} rounds "
        f"{best.value:.4f}\n# rerun: fedmm simulate --config {BEST_FILE} --out DIR\n"
    )
    atomic_write(result.best_config, header + chosen.to_toml())
    _plots(study, out_dir)
    return result


def _plots(study: Any, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study)
        ax.set_ylabel(f"mean {VAL_METRIC}, last {LAST_ROUNDS} rounds")
        atomic_write(out_dir / HISTORY_PLOT, lambda p: ax.figure.savefig(p, format="png", bbox_inches="tight"))
        plt.close(ax.figure)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 2 or len(study.best_trial.params) < 1:
            return
        try:
            ax = ovm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        except (ValueError, RuntimeError) as err:  # too few distinct trials to rank the parameters
            log.warning("no parameter importance plot: %s", err)
            return
        atomic_write(out_dir / IMPORTANCE_PLOT, lambda p: ax.figure.savefig(p, format="png", bbox_inches="tight"))
        plt.close(ax.figure)
