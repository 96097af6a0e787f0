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
    header = data[start:start + length].decode("latin1")
    new = header.replace("(4, 3)", f"({rows}, 3)")
    new = new.rstrip("\n").rstrip(" ")
    new = new + " " * (length - len(new) - 1) + "\n"
    assert len(new) == length
    return data[:start] + new.encode("latin1") + data[start + length:]


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
    monkeypatch.setattr(cremad, "decode_clips", lambda *a: pytest.fail("decoded before the cache directory was checked"))
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


@pytest.mark.parametrize(("plugin", "says"), [
    ("raising_plugin", r"config key 'plugins': importing module 'raising_plugin' failed with RuntimeError: "
                       r"the plugin is broken"),
    (".relative", r"config key 'plugins' names '\.relative', which is not an absolute module name"),
    ("needy_plugin", r"config key 'plugins': module 'needy_plugin' needs module 'no_such_dependency_xyz', "
                     r"which is not installed"),
    ("no_such_plugin_xyz", r"config key 'plugins' names module 'no_such_plugin_xyz', which cannot be imported"),
])
def test_a_plugin_that_cannot_be_imported_is_one_error_naming_key_plugin_and_cause(plugin_path, plugin, says):
    with pytest.raises(ValueError, match=says):
        load_config(None, [f"plugins={plugin}"])


def test_the_cli_prints_the_plugin_error_as_one_line(plugin_path, capsys):
    from fedmm.cli import main

    assert main(["simulate", "--set", "plugins=raising_plugin", "--out", str(plugin_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "'raising_plugin'" in err
