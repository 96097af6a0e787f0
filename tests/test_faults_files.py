"""Issue 13, files: ``--overwrite`` and ``--resume``, damaged checkpoints and dataset caches, and how
result files are written (the user's file mode, fsync before the rename).

Run directories come from a real federation on an in-process grid (no Ray); damaged files are made
here on purpose. ``fedmm simulate --resume`` runs through the CLI with Ray's entry point replaced by
one that fails the test, so every refusal is shown to happen before Ray starts.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from inprocess import TWO_CLIENTS

from fedmm.checkpoint import CHECKPOINT_ARRAYS, CHECKPOINT_STATE, load_checkpoint, save_checkpoint
from fedmm.config import load_config
from fedmm.inline import InlineGrid
from fedmm.results import CONFIG_FILE, SUMMARY_FILE, ResultsWriter, prepare_out_dir

#: Every file a run writes (README's results table).
RUN_FILES = (
    "rounds.csv",
    "clients.csv",
    "config.toml",
    "summary.json",
    "model.safetensors",
    "accuracy.png",
    "checkpoint.safetensors",
    "checkpoint.json",
)
BASE = TWO_CLIENTS


def federate(out_dir: Path, overrides: list[str], *, overwrite: bool = False) -> None:
    """Run a federation of ``BASE + overrides`` into ``out_dir`` on the in-process grid."""
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    plan = prepare(load_config(None, [*BASE, *overrides]), out_dir, overwrite=overwrite)
    run_federation(InlineGrid(len(plan.scenario.partitions)), plan)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of 3 planned rounds, stopped after round 1 (checkpoint at round 1)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    before = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    out = tmp_path_factory.mktemp("stopped") / "run"

    def stop(row: dict) -> None:
        if row["round"] == 1:
            raise Interrupt("stopped on purpose")

    try:
        plan = prepare(load_config(None, [*BASE, "num-server-rounds=3"]), out)
        with pytest.raises(Interrupt):
            run_federation(InlineGrid(len(plan.scenario.partitions)), plan, stop)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
    assert json.loads((out / SUMMARY_FILE).read_text())["status"] == "interrupted"
    return out


@pytest.fixture
def run_dir(stopped_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`stopped_run` that a test may damage."""
    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the simulation engine is started."""
    import flwr.simulation

    def refuse(**_: object) -> None:
        raise AssertionError("Ray was started; the problem should have been reported before")

    monkeypatch.setattr(flwr.simulation, "run_simulation", refuse)


def resume_error(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``fedmm simulate --resume run_dir``'s one error line (it must exit with 2, no traceback)."""
    from fedmm.cli import main

    assert main(["simulate", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedmm: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- --overwrite over an earlier run; --resume of a directory whose config and checkpoint disagree -----
def test_overwrite_removes_every_file_of_the_earlier_run_and_keeps_the_users(run_dir: Path) -> None:
    (run_dir / "notes.txt").write_text("mine\n")
    for name in RUN_FILES:  # an earlier completed run wrote all of them
        if not (run_dir / name).exists():
            (run_dir / name).write_text("old\n")
    run = load_config(None, [*BASE, "seed=4"])
    ResultsWriter(prepare_out_dir(run_dir, overwrite=True), run)
    assert sorted(p.name for p in run_dir.iterdir()) == [CONFIG_FILE, "notes.txt"]
    assert load_config(run_dir / CONFIG_FILE) == run


def test_a_run_that_overwrote_and_died_before_its_first_checkpoint_is_not_resumed_from_the_old_one(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None
) -> None:
    import fedmm.server.loop
    from fedmm.server.resume import resume_config

    def broken(*_: object, **__: object) -> dict:
        raise Interrupt("died in the initial evaluation")

    monkeypatch.setattr(fedmm.server.loop, "evaluate", broken)
    with pytest.raises(Interrupt):
        federate(run_dir, ["seed=4", "num-server-rounds=3"], overwrite=True)
    assert not (run_dir / CHECKPOINT_ARRAYS).exists() and not (run_dir / CHECKPOINT_STATE).exists()
    with pytest.raises(ValueError, match="has no checkpoint"):
        resume_config(run_dir)


def test_resume_refuses_a_config_toml_that_is_not_the_checkpoints(run_dir: Path, capsys, no_ray) -> None:
    edited = load_config(run_dir / CONFIG_FILE, ["lr=0.5"])
    (run_dir / CONFIG_FILE).write_text(edited.to_toml())
    line = resume_error(run_dir, capsys)
    assert str(run_dir / CONFIG_FILE) in line and "not the config the checkpoint" in line and "--overwrite" in line


# -- damaged checkpoints: each refused by --resume, naming the file, before Ray starts ---------------------
def _empty(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_STATE).write_text("")


def _garbage(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_STATE).write_bytes(b"\x00\xff{round: not json")


def _no_round(run_dir: Path) -> None:
    saved = json.loads((run_dir / CHECKPOINT_STATE).read_text())
    del saved["round"]
    (run_dir / CHECKPOINT_STATE).write_text(json.dumps(saved))


def _truncated_arrays(run_dir: Path) -> None:
    path = run_dir / CHECKPOINT_ARRAYS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shapes(run_dir: Path) -> None:
    ckpt = load_checkpoint(run_dir)
    key = sorted(k for k, v in ckpt.model.items() if v.ndim == 2)[0]
    ckpt.model[key] = np.zeros((3, 5), dtype=ckpt.model[key].dtype)
    save_checkpoint(run_dir, ckpt)


def _other_keys(run_dir: Path) -> None:
    ckpt = load_checkpoint(run_dir)
    key = sorted(ckpt.model)[0]
    ckpt.model[f"{key}.renamed"] = ckpt.model.pop(key)
    save_checkpoint(run_dir, ckpt)


@pytest.mark.parametrize(
    ("damage", "file", "says"),
    [
        (_empty, CHECKPOINT_STATE, "not readable JSON"),
        (_garbage, CHECKPOINT_STATE, "not readable JSON"),
        (_no_round, CHECKPOINT_STATE, "'round' is 'missing'"),
        (_truncated_arrays, CHECKPOINT_ARRAYS, "not a readable safetensors file"),
        (_wrong_shapes, CHECKPOINT_ARRAYS, "does not fit the model"),
        (_other_keys, CHECKPOINT_ARRAYS, "does not fit the model"),
    ],
    ids=["empty-json", "garbage-json", "json-without-round", "truncated-safetensors", "wrong-shapes", "other-keys"],
)
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(run_dir: Path, capsys, no_ray, damage, file, says) -> None:
    damage(run_dir)
    line = resume_error(run_dir, capsys)
    assert str(run_dir / file) in line and says in line, line
    assert "restore it" in line and "--overwrite" in line, line


def test_the_undamaged_checkpoint_resumes_in_process(run_dir: Path, flower_identity: None) -> None:
    """The fixture itself is resumable: the refusals above come from the damage, not the fixture."""
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare
    from fedmm.server.resume import resume_checkpoint, resume_config

    run = resume_config(run_dir)
    plan = prepare(run, run_dir, resume=True)
    checkpoint = resume_checkpoint(run_dir, run, plan.model)
    assert checkpoint.server_round == 1
    summary = run_federation(InlineGrid(len(plan.scenario.partitions)), plan, resume=checkpoint)
    assert summary["status"] == "completed" and summary["rounds"] == 3


# -- damaged dataset caches under FEDMM_CACHE_DIR are rebuilt -----------------------------------------------
def test_a_truncated_or_garbage_hapt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmm.data import hapt

    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    arrays = (rng.normal(size=(5, 6, 128)).astype(np.float32), np.arange(5), np.array([1, 1, 2, 2, 3]))
    reads = []
    monkeypatch.setattr(hapt, "raw_path", lambda: tmp_path / "HAPT.pkl.gz")
    monkeypatch.setattr(hapt, "read_recordings", lambda path: reads.append(path) or {})
    monkeypatch.setattr(hapt, "windows", lambda recordings: arrays)
    first = hapt.cached_windows()
    path = tmp_path / "cache" / f"{hapt.CACHE_VERSION}.npz"
    good = path.read_bytes()
    assert hapt.cached_windows()[0].tobytes() == first[0].tobytes() and len(reads) == 1  # a hit
    for damaged in (good[: len(good) // 2], b"garbage", b""):
        path.write_bytes(damaged)
        again = hapt.cached_windows()
        assert all(np.array_equal(a, b) for a, b in zip(again, arrays))
        with np.load(path) as z:  # repaired on disk
            assert np.array_equal(z["x"], arrays[0])
    assert len(reads) == 4
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_a_truncated_or_garbage_cremad_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    from test_cremad import write_cremad_dir

    from fedmm.data.cremad import load_cremad

    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = write_cremad_dir(tmp_path / "CREMA-D")
    first = load_cremad(data_dir=str(data_dir), image_size=8)
    [path] = (tmp_path / "cache").iterdir()
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], good[:5], b"garbage" * 10):
        path.write_bytes(damaged)
        again = load_cremad(data_dir=str(data_dir), image_size=8)
        assert (again.train["audio"] == first.train["audio"]).all()
        assert path.read_bytes() == good and set(load_file(path)) == {"audio", "frames"}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# -- result files: the user's normal file mode, fsync before the rename -------------------------------------
def test_result_checkpoint_cache_and_bench_files_get_the_umask_mode_and_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None
) -> None:
    from fedmm import bench
    from fedmm.data import hapt

    synced: set[str] = set()
    replaced: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        replaced.append((str(dst), os.path.realpath(src) in synced))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hapt, "raw_path", lambda: tmp_path / "HAPT.pkl.gz")
    monkeypatch.setattr(hapt, "read_recordings", lambda path: {})
    arrays = (np.zeros((2, 6, 128), np.float32), np.zeros(2), np.ones(2))
    monkeypatch.setattr(hapt, "windows", lambda recordings: arrays)
    old_umask = os.umask(0o027)
    try:
        federate(tmp_path / "run", ["num-server-rounds=1"])
        hapt.cached_windows()
        bench._write_csv(pd.DataFrame({"a": [1]}), tmp_path / "bench" / "runs.csv")
    finally:
        os.umask(old_umask)
    files = [
        *(tmp_path / "run").iterdir(),
        tmp_path / "cache" / f"{hapt.CACHE_VERSION}.npz",
        tmp_path / "bench" / "runs.csv",
    ]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)  # no temp file left
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, sorted(modes.items())
    assert {Path(dst).name for dst, _ in replaced} == {p.name for p in files}
    assert all(was_synced for _, was_synced in replaced), replaced


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    from fedmm.files import atomic_write

    target = tmp_path / "rounds.csv"
    atomic_write(target, "round\n0\n")

    def crash(tmp: Path) -> None:
        tmp.write_text("round\n0\n1")
        raise Interrupt("disk full")

    with pytest.raises(Interrupt):
        atomic_write(target, crash)
    assert target.read_text() == "round\n0\n" and [p.name for p in tmp_path.iterdir()] == ["rounds.csv"]
