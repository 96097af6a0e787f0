"""fedmm tune: the search space, one trial (pruned on divergence, failure, the pruner; valued on
validation, never test), the study's files, resume after SIGINT, two workers on one study."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from fedmm.config import load_config  # noqa: E402
from fedmm.tune import (  # noqa: E402
    BEST_FILE,
    TRIALS_FILE,
    TuneSettings,
    run_trial,
    search_space,
    storage,
    study_name,
    tune,
)

ROOT = Path(__file__).resolve().parents[1]
#: A federation of a few seconds on the inline engine.
TINY = [
    "dataset=synthetic",
    "partition=iid",
    "num-clients=4",
    "clients-per-round=4",
    "num-server-rounds=4",
    "local-epochs=1",
]


def fake_simulate(curves):
    """A ``simulate`` that reports the rows of ``curves(run)``: ``[(val/acc, test/acc, train/loss), ...]``
    for rounds 1..R, and returns a summary (status from the last tuple's 4th item, default completed)."""

    def simulate(run, out_dir, on_round=None, **_):
        rows = [{"round": 0, "val/acc": 0.1, "test/acc": 0.1, "train/loss": math.nan}]
        on_round(rows[0])
        status = "completed"
        for r, (val, test, loss, *rest) in enumerate(curves(run), start=1):
            status = rest[0] if rest else status
            rows.append({"round": r, "val/acc": val, "test/acc": test, "train/loss": loss})
            on_round(rows[-1])
        return {"status": status, "reason": "3 rounds without a usable reply", "diverged": False, "total-seconds": 1.0}

    return simulate


def one_trial(simulate, params=("lr",)):
    base = load_config(None, TINY)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: run_trial(t, base, search_space(base, params), simulate), n_trials=1)
    return study.trials[0]


def test_the_search_space_is_the_runs_keys_and_its_components_parameters():
    run = load_config(None, [*TINY, "objective=pmr"])
    assert list(search_space(run)) == [
        "local-epochs",
        "lr",
        "momentum",
        "weight-decay",
        "objective.alpha",
        "objective.momentum",
    ]
    fedprox = load_config(None, [*TINY, "strategy=fedprox", "selection=powd"])
    assert {"strategy.mu", "selection.d"} <= set(search_space(fedprox))
    with pytest.raises(
        ValueError, match="'objective.lambda' is not a tunable parameter of this run; tunable: local-epochs, lr"
    ):
        search_space(run, ["lr", "objective.lambda"])


def test_the_value_is_the_mean_validation_accuracy_of_the_last_rounds_never_test():
    # val rises to 0.6 while test is constant 0.9: the value follows val only (rounds 2..6 of 6)
    trial = one_trial(fake_simulate(lambda run: [(0.1 * k, 0.9, 1.0) for k in range(1, 7)]))
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5)
    assert trial.intermediate_values == {k: pytest.approx(0.1 * k) for k in range(1, 7)}
    assert trial.user_attrs["best-val-round"] == 6 and trial.user_attrs["rounds"] == 6


@pytest.mark.parametrize(
    "curve, reason",
    [
        ([(0.5, 0.5, 1.0), (0.3, 0.3, math.nan)], "round 2: non-finite train/loss"),
        ([(0.5, 0.5, 1.0), (0.5, 0.5, 1.0, "failed")], "run failed: 3 rounds without a usable reply"),
    ],
)
def test_a_trial_that_diverges_or_fails_is_pruned_with_its_reason(curve, reason):
    trial = one_trial(fake_simulate(lambda run: curve))
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned-reason"] == reason


def test_a_trial_whose_run_raises_is_pruned_not_an_error():
    def boom(run, out_dir, on_round=None, **_):
        on_round({"round": 0, "val/acc": 0.1, "train/loss": math.nan})
        raise RuntimeError("CUDA out of memory")

    trial = one_trial(boom)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned-reason"] == "run raised RuntimeError: CUDA out of memory"


@pytest.mark.parametrize("error", [NameError("name 'logits' is not defined"), AttributeError("no attribute 'x'")])
def test_a_trial_whose_run_has_a_programming_error_stops_the_study(error):
    def buggy(run, out_dir, on_round=None, **_):
        on_round({"round": 0, "val/acc": 0.1})
        raise error

    with pytest.raises(type(error), match=str(error)):
        one_trial(buggy)


def test_a_run_without_validation_accuracy_is_an_error_not_a_pruned_trial():
    def no_val(run, out_dir, on_round=None, **_):
        on_round({"round": 0, "test/acc": 0.1})
        on_round({"round": 1, "test/acc": 0.5, "train/loss": 1.0})

    with pytest.raises(ValueError, match="no 'val/acc'"):
        one_trial(no_val)


def test_tuning_without_a_validation_split_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="chooses on the validation split.*validation = 'off'"):
        tune(load_config(None, [*TINY, "validation=off"]), tmp_path / "study", TuneSettings(trials=1))
    assert not (tmp_path / "study").exists()


def test_the_pruner_stops_a_trial_behind_the_others_at_the_same_round(tmp_path):
    # lr decides the curve: the higher the lr, the better at every round
    def simulate(run, out_dir, on_round=None, **_):
        return fake_simulate(lambda r: [(r.lr * k, r.lr * k, 1.0) for k in range(1, 9)])(run, out_dir, on_round)

    base = load_config(None, [*TINY, "num-server-rounds=8"])
    result = tune(base, tmp_path, TuneSettings(trials=12, pruner="median", params=("lr",)), simulate=simulate)
    trials = optuna.load_study(study_name=result.study, storage=storage(tmp_path)).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert result.pruned == len(pruned) > 0 and result.complete + result.pruned == 12
    assert all(t.user_attrs["rounds"] < 8 for t in pruned)
    assert result.rounds == sum(t.user_attrs["rounds"] for t in trials)
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert all(t.params["lr"] < best.params["lr"] for t in pruned)  # never the best one


def test_the_best_trial_is_a_config_that_fedmm_simulate_reruns(tmp_path):
    def simulate(run, out_dir, on_round=None, **_):
        return fake_simulate(lambda r: [(1 - abs(math.log10(r.lr) + 1.5), 0.0, 1.0)] * 3)(run, out_dir, on_round)

    base = load_config(None, [*TINY, "objective=mnl", "engine=ray"])
    result = tune(
        base, tmp_path, TuneSettings(trials=4, pruner="none", params=("lr", "objective.lambda")), simulate=simulate
    )
    assert result.status == "completed" and result.best_config == tmp_path / BEST_FILE
    rerun = load_config(result.best_config)
    assert rerun == base.replace(
        **{"lr": result.best_params["lr"], "objective.lambda": result.best_params["objective.lambda"]}
    )
    assert rerun.engine == "ray"  # the base config's, not the trials' inline engine
    for name in ("history.png", "importance.png", TRIALS_FILE, "study.journal"):
        assert (tmp_path / name).is_file(), name
    # another config is another study: refused in this directory
    with pytest.raises(ValueError, match="holds the study .* of another config"):
        tune(base.replace(lr=0.01), tmp_path, TuneSettings(trials=1), simulate=simulate)
    assert study_name(base) != study_name(base.replace(**{"num-clients": 5}))


# -- real federations (inline engine) in other processes ---------------------------------------------
def _tune_process(out: Path, trials: int, jobs: int = 1) -> subprocess.Popen:
    args = [
        "tune",
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--jobs",
        str(jobs),
        "--params",
        "lr,momentum",
        "--pruner",
        "none",
        *(a for kv in TINY for a in ("--set", kv)),
    ]
    code = f"import sys; from fedmm.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finished(out: Path) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    store = storage(out)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if not names:
        return []
    return optuna.load_study(study_name=names[0], storage=store).get_trials(deepcopy=False, states=states)


@pytest.mark.integration
def test_a_study_stopped_by_sigint_resumes_with_its_finished_trials(tmp_path):
    # far more trials than run before the signal lands: on an idle machine a tiny trial takes under
    # a second, and a study of 5 could finish between seeing 2 trials done and the SIGINT
    proc = _tune_process(tmp_path, trials=40)
    deadline = time.monotonic() + 300
    while len(_finished(tmp_path)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "fedmm: error: interrupted; the study keeps its" in err
    before = {t.number: (t.params, t.value) for t in _finished(tmp_path)}
    assert 2 <= len(before) < 40

    wanted = len(before) + 2  # the resumed study runs two more trials
    proc = _tune_process(tmp_path, trials=wanted)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    after = _finished(tmp_path)
    assert len(after) == wanted
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before  # kept, not rerun
    assert "best config:" in out and (tmp_path / BEST_FILE).is_file()


@pytest.mark.integration
def test_two_workers_share_one_study_without_losing_a_trial(tmp_path):
    proc = _tune_process(tmp_path, trials=6, jobs=2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    name = optuna.get_all_study_summaries(storage(tmp_path))[0].study_name
    study = optuna.load_study(study_name=name, storage=storage(tmp_path))
    trials = study.get_trials(deepcopy=False)
    assert len(_finished(tmp_path)) >= 6
    assert [t.number for t in trials] == list(range(len(trials)))  # every trial that started is there ...
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # ... and finished
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)  # workers drew differently
