"""Issue 24, rows 4, 5, 6, 8, 9 and 12: damaged or implausible inputs (an array file whose header
lies, a cache directory that is a file, plugins that cannot be imported, garbage checkpoint values,
a damaged or deleted rounds.csv, a malformed ray-address, damaged files under ``fedmm report``) are
one error naming the file, the key or the variable; none is a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fedmm.config import load_config
from fedmm.data.arrays import load_arrays, read_npy


# -- row 4: an .npy header that claims 2^40 rows -----------------------------------------------------
def lying_npy(path: Path, rows: int = 2**40) -> Path:
    """A real .npy file of 4 rows whose header claims ``rows`` rows."""
    np.save(path, np.zeros((4, 3), np.float32))
    path.write_bytes(_patch_header(path.read_bytes(), rows))
    return path


def _patch_header(data: bytes, rows: int) -> bytes:
    """``data`` (an .npy of shape (4, 3)) with its header's shape replaced by (rows, 3), padding kept."""
    start, length = 10, int.from_bytes(data[8:10], "little")
    header = data[start : start + length].decode("latin1")
    new = header.replace("(4, 3)", f"({rows}, 3)")
    new = new.rstrip("\n").rstrip(" ")
    new = new + " " * (length - len(new) - 1) + "\n"
    assert len(new) == length
    return data[:start] + new.encode("latin1") + data[start + length :]


def test_an_npy_header_claiming_2_to_the_40_rows_is_refused_before_any_allocation(tmp_path, monkeypatch):
    path = lying_npy(tmp_path / "acc.npy")
    with open(path, "rb") as f:  # the header really says so
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[0] == (2**40, 3)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load was called on the implausible file"))
    with pytest.raises(ValueError, match=r"acc\.npy' is a damaged or implausible file.*\(1099511627776, 3\).*holds "):
        read_npy(path)


def test_a_data_dir_with_a_lying_npy_or_npz_names_the_file(tmp_path):
    for split, n in (("train", 6), ("test", 3)):
        (tmp_path / "npy" / split).mkdir(parents=True)
        np.save(tmp_path / "npy" / split / "acc.npy", np.zeros((n, 3), np.float32))
        np.save(tmp_path / "npy" / split / "labels.npy", np.arange(n) % 2)
    lying_npy(tmp_path / "npy" / "train" / "acc.npy")
    with pytest.raises(ValueError, match=r"train/acc\.npy' is a damaged or implausible file"):
        load_arrays(data_dir=str(tmp_path / "npy"))
    # the same member inside an .npz archive
    import zipfile

    (tmp_path / "npz").mkdir()
    with zipfile.ZipFile(tmp_path / "npz" / "train.npz", "w") as z:
        z.writestr("acc.npy", (tmp_path / "npy" / "train" / "acc.npy").read_bytes())
        z.writestr("labels.npy", (tmp_path / "npy" / "train" / "labels.npy").read_bytes())
    with pytest.raises(ValueError, match=r"train\.npz' key 'acc' is a damaged or implausible file"):
        from fedmm.data.arrays import read_npz

        read_npz(tmp_path / "npz" / "train.npz")


def test_an_honest_npy_still_reads(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    assert read_npy(tmp_path / "a.npy").value.shape == (4, 3)


# -- row 5: FEDMM_CACHE_DIR is a regular file ----------------------------------------------------------
@pytest.mark.parametrize("below", [False, True], ids=["the file", "below the file"])
def test_a_cache_dir_that_is_a_file_names_the_variable(tmp_path, monkeypatch, below):
    from fedmm.data import cremad, hapt

    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FEDMM_CACHE_DIR", str(blocker / "sub" if below else blocker))
    monkeypatch.setattr(hapt, "windows", lambda *a: pytest.fail("decoded before the cache directory was checked"))
    monkeypatch.setattr(hapt, "read_recordings", lambda *a: None)
    with pytest.raises(ValueError, match=r"environment variable FEDMM_CACHE_DIR.*is a file, not a directory"):
        hapt.cached_windows()
    monkeypatch.setattr(
        cremad, "decode_clips", lambda *a: pytest.fail("decoded before the cache directory was checked")
    )
    with pytest.raises(ValueError, match=r"environment variable FEDMM_CACHE_DIR"):
        cremad.cached_clips(tmp_path, [], 1, 8)


# -- row 6: plugins that raise, relative names, missing dependencies ------------------------------------
@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A directory on sys.path with plugins that fail in each way; their modules are forgotten after."""
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('the plugin is broken')\n")
    (tmp_path / "needy_plugin.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("raising_plugin", "needy_plugin"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("plugin", "says"),
    [
        (
            "raising_plugin",
            r"config key 'plugins': importing module 'raising_plugin' failed with RuntimeError: "
            r"the plugin is broken",
        ),
        (".relative", r"config key 'plugins' names '\.relative', which is not an absolute module name"),
        (
            "needy_plugin",
            r"config key 'plugins': module 'needy_plugin' needs module 'no_such_dependency_xyz', "
            r"which is not installed",
        ),
        ("no_such_plugin_xyz", r"config key 'plugins' names module 'no_such_plugin_xyz', which cannot be imported"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_error_naming_key_plugin_and_cause(plugin_path, plugin, says):
    with pytest.raises(ValueError, match=says):
        load_config(None, [f"plugins={plugin}"])


def test_the_cli_prints_the_plugin_error_as_one_line(plugin_path, capsys):
    from fedmm.cli import main

    assert main(["simulate", "--set", "plugins=raising_plugin", "--out", str(plugin_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "'raising_plugin'" in err


# -- rows 8 and 9: resuming a run whose checkpoint values or rounds.csv are damaged ---------------------
from test_faults_files import no_ray, resume_error, run_dir, stopped_run  # noqa: E402,F401  (fixtures)

from fedmm.checkpoint import CHECKPOINT_STATE  # noqa: E402


def _garbage_values(run_dir: Path) -> None:
    import json

    saved = json.loads((run_dir / CHECKPOINT_STATE).read_text())
    assert saved["state"], "the fixture's checkpoint has state values"
    saved["state"] = {k: "garbage" for k in saved["state"]}
    (run_dir / CHECKPOINT_STATE).write_text(json.dumps(saved))


def _wrong_types(run_dir: Path) -> None:
    import json

    saved = json.loads((run_dir / CHECKPOINT_STATE).read_text())
    saved["state"] = {k: 5 for k in saved["state"]}
    (run_dir / CHECKPOINT_STATE).write_text(json.dumps(saved))


@pytest.mark.parametrize("damage", [_garbage_values, _wrong_types], ids=["garbage strings", "numbers"])
def test_resume_refuses_garbage_checkpoint_values_naming_the_file(run_dir, capsys, no_ray, damage):
    damage(run_dir)
    line = resume_error(run_dir, capsys)
    assert f"checkpoint file {str(run_dir / CHECKPOINT_STATE)!r} is damaged (its server state cannot be loaded" in line
    assert "--overwrite" in line


def _deleted(run_dir: Path) -> None:
    (run_dir / "rounds.csv").unlink()


def _empty_table(run_dir: Path) -> None:
    (run_dir / "rounds.csv").write_text("")


def _garbage_table(run_dir: Path) -> None:
    (run_dir / "rounds.csv").write_bytes(b'\x00\xff"unclosed\nround\n1,2,3,4\n')


def _cut_short(run_dir: Path) -> None:  # round 0 survives, round 1 (the checkpoint's) is gone
    lines = (run_dir / "rounds.csv").read_text().splitlines()
    (run_dir / "rounds.csv").write_text("\n".join(lines[:2]) + "\n")


def _damaged_clients(run_dir: Path) -> None:
    (run_dir / "clients.csv").write_text("")


@pytest.mark.parametrize(
    ("damage", "file", "says"),
    [
        (_deleted, "rounds.csv", "is missing"),
        (_empty_table, "rounds.csv", "is damaged"),
        (_garbage_table, "rounds.csv", "is damaged"),
        (_cut_short, "rounds.csv", "lacks round 1 of the checkpoint's 0-1"),
        (_damaged_clients, "clients.csv", "is damaged"),
    ],
    ids=["deleted", "empty", "garbage", "cut-short", "clients-damaged"],
)
def test_resume_refuses_a_damaged_or_deleted_table_instead_of_losing_its_rows(
    run_dir, capsys, no_ray, damage, file, says
):
    damage(run_dir)
    line = resume_error(run_dir, capsys)
    assert repr(str(run_dir / file)) in line and says in line, line
    assert "would be lost" in line and "--overwrite" in line, line


# -- row 12: a malformed ray-address; fedmm report on damaged files ------------------------------------
@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("localhost", "is not an address of the form '<host>:<port>'"),
        ("10.0.0.1:99999", "has port 99999, outside 1..65535"),
        ("http://10.0.0.1:6379", "is not an address of the form"),
        ("10.0.0.1:port", "is not an address of the form"),
    ],
)
def test_a_malformed_ray_address_names_the_key(address, says):
    with pytest.raises(ValueError, match=rf"config key 'ray-address' = {address!r} {says}"):
        load_config(None, [f"ray-address={address!r}"])


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379", "ray://head.lab:10001", "[::1]:6379"])
def test_well_formed_ray_addresses_are_accepted(address):
    assert load_config(None, [f"ray-address={address!r}"]).ray_address == address


def report_error(run_dir: Path, capsys) -> str:
    from fedmm.cli import main

    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("file", "content", "names", "says"),
    [
        ("summary.json", b"{not json", "summary.json", "is damaged and cannot be read as JSON"),
        ("summary.json", b"\xff\xfe", "summary.json", "is damaged and cannot be read as JSON"),
        ("rounds.csv", b"", "rounds.csv", "is empty"),
        ("rounds.csv", b"round,test/acc\n", "rounds.csv", "has no rounds yet"),
        ("rounds.csv", b'\x00"x\n1,2,3\n', "rounds.csv", "has no 'round' column"),
        ("rounds.csv", b"round,x\n0,1\n", "rounds.csv", "has no 'test/acc' column"),
        ("rounds.csv", None, "", "holds no run (no rounds.csv"),
    ],
    ids=[
        "summary-garbage",
        "summary-not-utf8",
        "rounds-empty",
        "rounds-header-only",
        "rounds-garbage",
        "rounds-other-columns",
        "rounds-deleted",
    ],
)
def test_report_on_a_damaged_file_names_it(run_dir, capsys, file, content, names, says):
    if content is None:
        (run_dir / file).unlink()
    else:
        (run_dir / file).write_bytes(content)
    err = report_error(run_dir, capsys)
    assert repr(str(run_dir / names if names else run_dir)) in err and says in err, err


def test_report_on_the_undamaged_run_prints_it(run_dir, capsys):
    from fedmm.cli import main

    assert main(["report", str(run_dir)]) == 0
    assert "status interrupted" in capsys.readouterr().out
