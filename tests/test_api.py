"""The Python entry point: fedmm.simulate / fedmm.load_run / fedmm.compare_runs, and a light
``import fedmm``."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch

import fedmm
from fedmm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "dataset": "synthetic",
    "partition": "iid",
    "num-clients": 4,
    "num-server-rounds": 2,
    "local-epochs": 1,
    "engine": "inline",
}


def test_import_fedmm_is_light_and_the_core_stays_free_of_flwr_and_ray():
    code = (
        "import sys, fedmm\n"
        "heavy = [m for m in ('torch', 'flwr', 'ray', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(fedmm.load_run) and 'pandas' in sys.modules\n"
        "import fedmm.models, fedmm.objectives, fedmm.training\n"
        "fedmm.load_run\n"
        "assert 'flwr' not in sys.modules and 'ray' not in sys.modules\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fedmm.nothing  # noqa: B018


def test_simulate_from_a_dict_returns_the_runs_frames(tmp_path):
    rows = []
    run = fedmm.simulate({**SMALL, "objective": {"name": "ogm-ge"}}, tmp_path / "a", on_round=rows.append)
    assert run.out_dir == tmp_path / "a" and run.summary["status"] == "completed"
    assert run.summary["software"]["torch"] == torch.__version__
    assert run.summary["software"]["fedmm"] == fedmm.__version__ and run.summary["software"]["flwr"] != "not installed"
    assert isinstance(run.rounds, pd.DataFrame) and run.rounds["round"].tolist() == [0, 1, 2]
    assert isinstance(run.clients, pd.DataFrame) and set(run.clients["round"]) == {1, 2}
    assert run.config["objective"] == "ogm-ge" and run.config["num-clients"] == 4
    assert run.modalities == ["m0", "m1"]
    assert [r["test/acc"] for r in rows] == pytest.approx(run.rounds["test/acc"].tolist())
    # the same run from a TOML file with overrides, and from a RunConfig: the same numbers
    toml = tmp_path / "run.toml"
    toml.write_text(
        load_config(None, [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in SMALL.items()]).to_toml()
    )
    again = fedmm.simulate(toml, tmp_path / "b", overrides={"objective": "ogm-ge"})
    pd.testing.assert_series_equal(again.rounds["test/acc"], run.rounds["test/acc"])
    loaded = fedmm.load_run(tmp_path / "a")
    pd.testing.assert_frame_equal(loaded.rounds, run.rounds)
    table = fedmm.compare_runs([run, tmp_path / "b"])
    assert table["test/acc"].tolist() == [run.summary["final"]["test/acc"]] * 2


def test_simulate_without_out_writes_to_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    run = fedmm.simulate(
        load_config(
            None,
            [f"{k}={v}" for k, v in SMALL.items() if k != "dataset"] + ["dataset=synthetic", "num-server-rounds=1"],
        )
    )
    assert run.out_dir.parent == tmp_path and run.out_dir.name.startswith("fedmm-run-")
    assert (run.out_dir / "summary.json").is_file()


def test_to_config_refuses_what_it_cannot_read():
    from fedmm.api import to_config

    with pytest.raises(TypeError, match="dict, a RunConfig or the path"):
        to_config(42)
    with pytest.raises(ValueError, match="unknown config key 'rounds'"):
        to_config({"rounds": 3})
    assert to_config(None) == load_config()
    assert to_config({"objective": {"name": "mnl"}}).objective == "mnl"


def test_software_names_a_missing_package(monkeypatch):
    from fedmm import provenance

    monkeypatch.setattr(provenance, "PACKAGES", ("numpy", "no-such-package-fedmm"))
    versions = provenance.software()
    assert versions["numpy"] == metadata.version("numpy") and versions["no-such-package-fedmm"] == "not installed"
    assert set(versions) == {"python", "machine", "cpu", "numpy", "no-such-package-fedmm"}


def test_software_names_the_processor_and_torchs_cpu_kernels(monkeypatch):
    import torch

    from fedmm import provenance

    monkeypatch.setattr(provenance, "PACKAGES", ("torch",))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    versions = provenance.software()
    assert versions["torch-cpu-capability"] == "AVX512" and versions["torch"] == torch.__version__
    assert versions["cpu"] == provenance.cpu_model() and versions["cpu"]
