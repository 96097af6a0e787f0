"""Issue 13, faults a user causes or meets: non-finite config values, a run whose rounds all fail,
and the small ones (seed, --out below a file, --config that is a directory, not UTF-8, not TOML).
Each fault gives one message naming the key or file, before Ray starts; no test here starts Ray."""

import json
import os

import pandas as pd
import pytest

import fedmm.clients.app as client_module
import fedmm.simulation as simulate_module
from fedmm.cli import main
from fedmm.config import load_config
from fedmm.server.loop import MAX_FAILED_ROUNDS, client_error_text, run_federation
from fedmm.server.plan import prepare

SMALL = [
    "dataset=synthetic",
    "dataset.num-train=40",
    "dataset.num-test=8",
    "partition=iid",
    "num-clients=2",
    "allocation=all",
    "local-epochs=1",
    "batch-size=8",
    "device=cpu",
    "num-server-rounds=6",
]


@pytest.fixture
def no_ray(monkeypatch):
    """``fedmm simulate`` must stop before the simulation (and Ray) starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("the simulation started: the error was not caught before Ray")

    monkeypatch.setattr(simulate_module, "simulate", refuse)


def cli_error(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``fedmm ARGV`` (stdout must stay empty: nothing ran)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


# -- non-finite numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_set_override_refuses_non_finite_float(value):
    with pytest.raises(ValueError, match=r"config key 'lr' must be a finite number, got"):
        load_config(None, [f"lr={value}"])


@pytest.mark.parametrize("key", ["round-timeout", "dirichlet-alpha", "weight-decay", "client-num-cpus"])
def test_toml_file_refuses_non_finite_float(tmp_path, key):
    path = tmp_path / "run.toml"
    path.write_text(f"{key} = inf\n")
    with pytest.raises(ValueError, match=rf"config key '{key}' must be a finite number, got inf"):
        load_config(path)


def test_objective_param_refuses_non_finite(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[objective]\nname = "mnl"\nlambda = nan\n')
    with pytest.raises(ValueError, match=r"config key 'objective.lambda' must be a finite number"):
        load_config(path)
    with pytest.raises(ValueError, match=r"config key 'objective.merge-weights' must be a finite number"):
        load_config(None, ["objective=boost", "objective.merge-weights=[1.0, inf]"])


def test_selection_param_refuses_non_finite():
    with pytest.raises(ValueError, match=r"config key 'selection.delta' must be a finite number"):
        load_config(None, ["strategy=cmsfed", "selection.delta=nan"])


def test_cli_names_the_non_finite_key(tmp_path, capsys, no_ray):
    code, err = cli_error(capsys, "simulate", "--set", "lr=nan", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2
    assert err.strip() == "fedmm: error: config key 'lr' must be a finite number, got nan"


# -- a run whose rounds all fail --------------------------------------------------------------------
@pytest.fixture
def clients_fail(monkeypatch):
    """Every client's training raises, as when the config makes local training impossible."""

    def fail(*args, **kwargs):
        raise RuntimeError("local training diverged: loss is nan")

    monkeypatch.setattr(client_module, "train_local", fail)


def in_process_simulate(run, out_dir, *, plan=None, on_round=None, resume=False, overwrite=False):
    """``fedmm.simulation.simulate`` on the in-process grid (no Ray)."""
    from fedmm.inline import InlineGrid

    plan = plan or prepare(run, out_dir, overwrite=overwrite)
    return run_federation(InlineGrid(len(plan.scenario.partitions)), plan, on_round)


def test_run_whose_rounds_all_fail_stops_with_status_failed(tmp_path, flower_identity, clients_fail):
    run = load_config(None, SMALL)
    summary = in_process_simulate(run, tmp_path / "run")
    assert summary["status"] == "failed"
    assert summary["rounds"] == MAX_FAILED_ROUNDS < run.num_server_rounds
    assert summary["reason"] == f"no usable client reply in {MAX_FAILED_ROUNDS} consecutive rounds (1-3)"
    assert summary["first-client-error"] == "node 1 (partition 0): error: local training diverged: loss is nan"
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["first-client-error"] == summary["first-client-error"]
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2, 3]
    assert (rounds["clients-ok"][1:] == 0).all()
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    assert len(clients) == 2 * MAX_FAILED_ROUNDS and clients["status"].str.startswith("error:").all()


def test_cli_exits_non_zero_naming_the_client_error(tmp_path, capsys, monkeypatch, flower_identity, clients_fail):
    monkeypatch.setattr(simulate_module, "simulate", in_process_simulate)
    code = main(["simulate", *[a for s in SMALL for a in ("--set", s)], "--out", str(tmp_path / "run"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmm: error: run stopped, no usable client reply in 3 ")
    assert "node 1 (partition 0): error: local training diverged: loss is nan" in lines[0]
    assert str(tmp_path / "run") in lines[0]


def test_client_error_text_keeps_the_raised_message():
    ray = (
        "error: <class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() (pid=1)\n"
        '  File "x.py", line 3, in run\n    raise ValueError("bad")\nflwr.clientapp.client_app.'
        "ClientAppException: \nException ClientAppException occurred. Message: bad modality\n'>"
    )
    assert client_error_text(ray) == "error: bad modality"
    assert (
        client_error_text("rejected: non-finite values in ['fusion.w']")
        == "rejected: non-finite values in ['fusion.w']"
    )
    assert client_error_text("no-reply") == "no-reply"


# -- the small ones ---------------------------------------------------------------------------------
def test_negative_seed_names_the_key():
    with pytest.raises(ValueError, match=r"config key 'seed' must be >= 0, got -1"):
        load_config(None, ["seed=-1"])


def test_out_below_a_regular_file(tmp_path, capsys, no_ray):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory\n")
    small = [a for s in SMALL for a in ("--set", s)]
    code, err = cli_error(capsys, "simulate", *small, "--out", str(blocker / "run"), "--quiet")
    assert code == 2
    assert err.strip() == (
        f"fedmm: error: output path {str(blocker / 'run')!r} lies below {str(blocker)!r}, "
        "which is a file; pass a directory with --out"
    )
    code, err = cli_error(capsys, "simulate", *small, "--out", str(blocker), "--quiet")
    assert code == 2 and err.startswith(f"fedmm: error: output path {str(blocker)!r} is a file")


def test_config_that_is_a_directory(tmp_path, capsys, no_ray):
    code, err = cli_error(capsys, "simulate", "--config", str(tmp_path), "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.strip() == f"fedmm: error: config file {str(tmp_path)!r} is a directory; pass the path of a TOML file"


def test_config_that_is_not_utf8(tmp_path, capsys, no_ray):
    path = tmp_path / "latin1.toml"
    path.write_bytes('dataset = "synthétique"\n'.encode("latin-1"))
    code, err = cli_error(capsys, "simulate", "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.strip() == f"fedmm: error: config file {str(path)!r} is not UTF-8 text (byte 16); save it as UTF-8"


def test_config_that_is_not_toml(tmp_path, capsys, no_ray):
    path = tmp_path / "broken.toml"
    path.write_text("lr = = 0.1\n")
    code, err = cli_error(capsys, "simulate", "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 2
    assert err.startswith(f"fedmm: error: config file {str(path)!r} is not valid TOML: ") and err.count("\n") == 1


def test_bench_grid_stops_at_a_failed_run(tmp_path, monkeypatch):
    """A failed run is no benchmark row: the grid stops naming it; rows of finished runs stay."""
    from fedmm.bench import Case, run_grid

    def fake_simulate(run, out, overwrite=False):
        if run.seed == 1:
            return {
                "status": "failed",
                "reason": "no usable client reply in 3 consecutive rounds (1-3)",
                "first-client-error": "node 1 (partition 0): error: boom",
            }
        return {
            "status": "completed",
            "final": {"test/acc": 0.5},
            "best-test/acc": 0.5,
            "best-round": 1,
            "total-bytes-up": 1.0,
            "total-seconds": 2.0,
            "loss-growth": 1.0,
            "diverged": False,
        }

    monkeypatch.setattr(simulate_module, "simulate", fake_simulate)
    csv = tmp_path / "grid.csv"
    with pytest.raises(ValueError, match=r"run random-seed1 stopped, no usable .* error: boom"):
        run_grid(None, ["dataset=synthetic"], [Case({"policy": "random"}, ("selection=random",))], [0, 1], csv)
    assert pd.read_csv(csv)["seed"].tolist() == [0]


def test_a_reader_that_leaves_early_ends_fedmm_without_a_traceback():
    # `fedmm config | head -0`: the pipe is closed before fedmm writes to it
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run(
        [sys.executable, "-m", "fedmm.cli", "config"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120
    )
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
