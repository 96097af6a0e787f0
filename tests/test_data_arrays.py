"""Dataset ``arrays``: your own numpy arrays in a directory (layout, metadata, read rules, every
validation error, a federation and a node with its own data-dir). Every fixture is written here."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmm.config import load_config
from fedmm.data.arrays import load_arrays

TRAIN_ROWS, TEST_ROWS = 6, 3


def write_split(root: Path, split: str, arrays: dict[str, np.ndarray], fmt: str = "npy") -> None:
    """``arrays`` as ``<root>/<split>/<name>.npy`` files or as ``<root>/<split>.npz``."""
    if fmt == "npz":
        root.mkdir(parents=True, exist_ok=True)
        np.savez(root / f"{split}.npz", **arrays)
        return
    (root / split).mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        np.save(root / split / f"{name}.npy", value)


def toy_arrays() -> dict[str, dict[str, np.ndarray]]:
    """Hand-made splits: ``acc`` (N, 2, 3) float64, ``gyro`` (N, 4) int32, labels 0..2, train groups."""
    out = {}
    for split, n in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        start = 0 if split == "train" else 100
        out[split] = {
            "acc": np.arange(start, start + n * 6, dtype=np.float64).reshape(n, 2, 3) / 4,
            "gyro": np.arange(n * 4, dtype=np.int32).reshape(n, 4) - 5,
            "labels": np.array([0, 1, 2, 0, 1, 2][:n], dtype=np.int32),
        }
    out["train"]["groups"] = np.array([7, 7, 3, 3, 9, 9])
    return out


def write_toy(root: Path, fmt: str = "npy") -> Path:
    for split, arrays in toy_arrays().items():
        write_split(root, split, arrays, fmt)
    return root


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_toy(tmp_path / "data")


def test_a_directory_of_npy_files_is_read_as_given(toy: Path) -> None:
    d = load_arrays(data_dir=str(toy))
    raw = toy_arrays()
    # no metadata: modalities sorted by name, kind from the axes of one example, classes 0..C-1
    assert d.name == "arrays" and d.modality_names == ["acc", "gyro"]
    assert [(m.shape, m.kind) for m in d.modalities] == [((2, 3), "series"), ((4,), "vector")]
    assert d.class_names == ["0", "1", "2"]
    for split, rows in ((d.train, TRAIN_ROWS), (d.test, TEST_ROWS)):
        assert sorted(split) == ["acc", "gyro", "y"] and {int(t.shape[0]) for t in split.values()} == {rows}
    assert torch.equal(d.train["acc"], torch.tensor(raw["train"]["acc"], dtype=torch.float32))
    assert d.train["acc"][1, 0].tolist() == [1.5, 1.75, 2.0]  # (6 + 0..2) / 4
    assert d.test["acc"][0, 1].tolist() == [25.75, 26.0, 26.25]  # (100 + 3..5) / 4
    assert d.train["gyro"].dtype == torch.float32 and d.train["gyro"][0].tolist() == [-5.0, -4.0, -3.0, -2.0]
    assert d.train["y"].dtype == torch.int64 and d.train["y"].tolist() == [0, 1, 2, 0, 1, 2]
    assert d.test["y"].tolist() == [0, 1, 2]
    assert d.train_groups.tolist() == [7, 7, 3, 3, 9, 9]


def test_one_npz_per_split_gives_the_same_dataset(tmp_path: Path) -> None:
    npy = load_arrays(data_dir=str(write_toy(tmp_path / "npy")))
    npz = load_arrays(data_dir=str(write_toy(tmp_path / "npz", fmt="npz")))
    assert npz.modalities == npy.modalities and npz.class_names == npy.class_names
    for a, b in ((npy.train, npz.train), (npy.test, npz.test)):
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert npz.train_groups.tolist() == npy.train_groups.tolist()


@pytest.mark.parametrize(
    "meta_file, text",
    [
        ("meta.toml", 'class_names = ["walk", "sit", "lie"]\n[modalities]\ngyro = "series"\nacc = "vector"\n'),
        ("meta.json", '{"class_names": ["walk", "sit", "lie"], "modalities": {"gyro": "series", "acc": "vector"}}'),
    ],
)
def test_metadata_sets_class_names_order_and_kinds(toy: Path, meta_file: str, text: str) -> None:
    (toy / meta_file).write_text(text)
    d = load_arrays(data_dir=str(toy))
    assert d.class_names == ["walk", "sit", "lie"]
    # the metadata's order is the canonical order; a declared kind decides how the array is read
    assert [(m.name, m.shape, m.kind) for m in d.modalities] == [("gyro", (1, 4), "series"), ("acc", (6,), "vector")]
    assert d.train["gyro"][0].tolist() == [[-5.0, -4.0, -3.0, -2.0]]  # (T,) read as (1, T)
    # vector flattens each example in row-major order: row 1 is (6 .. 11) / 4
    assert d.train["acc"][1].tolist() == [1.5, 1.75, 2.0, 2.25, 2.5, 2.75]
    assert d.notes["meta"] == repr(str(toy / meta_file))


def test_default_kinds_and_read_rules_follow_the_axes_of_one_example(tmp_path: Path) -> None:
    n = 4
    arrays = {
        "s0": np.arange(n, dtype=np.float32),  # one number per row: vector (1,)
        "s1": np.ones((n, 5)),
        "s2": np.ones((n, 2, 5)),
        "s3": np.ones((n, 1, 5, 6)),
        "s4": np.ones((n, 2, 3, 4, 4)),
        "labels": np.array([0, 1, 0, 1]),
    }
    for split in ("train", "test"):
        write_split(tmp_path, split, arrays)
    d = load_arrays(data_dir=str(tmp_path))
    assert [(m.shape, m.kind) for m in d.modalities] == [
        ((1,), "vector"),
        ((5,), "vector"),
        ((2, 5), "series"),
        ((1, 5, 6), "spectrogram"),
        ((2, 3, 4, 4), "frames"),
    ]
    assert d.train["s0"].tolist() == [[0.0], [1.0], [2.0], [3.0]]
    # a declared kind reads one axis fewer with a leading axis of size 1
    (tmp_path / "meta.toml").write_text(
        '[modalities]\ns0 = "vector"\ns1 = "series"\ns2 = "spectrogram"\ns3 = "frames"\ns4 = "frames"\n'
    )
    d = load_arrays(data_dir=str(tmp_path))
    assert [m.shape for m in d.modalities] == [(1,), (1, 5), (1, 2, 5), (1, 1, 5, 6), (2, 3, 4, 4)]
    assert d.train["s3"].shape == (n, 1, 1, 5, 6)


def test_without_class_names_the_classes_run_to_the_largest_label_of_either_split(toy: Path) -> None:
    np.save(toy / "test" / "labels.npy", np.array([0, 4, 1]))  # label 4 only in the test split
    d = load_arrays(data_dir=str(toy))
    assert d.class_names == ["0", "1", "2", "3", "4"] and d.num_classes == 5


def test_a_test_split_groups_file_is_ignored(toy: Path) -> None:
    np.save(toy / "test" / "groups.npy", np.array([1, 2, 3]))
    d = load_arrays(data_dir=str(toy))
    assert d.modality_names == ["acc", "gyro"] and sorted(d.test) == ["acc", "gyro", "y"]


def save(path: Path, value: np.ndarray) -> None:
    np.save(path, value, allow_pickle=value.dtype == object)


def replace(rel: str, value: np.ndarray) -> Callable[[Path], None]:
    return lambda root: save(root / rel, value)


def remove(rel: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return go


def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        (root / rel).write_bytes(text if isinstance(text, bytes) else text.encode())

    return go


def truncate(rel: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes()[:100])

    return go


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda root: [step(root) for step in steps]


def as_npz(root: Path) -> None:
    """The toy data as test.npz without labels (the train split stays a folder)."""
    shutil.rmtree(root / "test")
    arrays = toy_arrays()["test"]
    np.savez(root / "test.npz", acc=arrays["acc"], gyro=arrays["gyro"])


NAN = np.ones((TRAIN_ROWS, 2, 3))
NAN[4, 1, 2] = np.nan
HUGE = np.ones((TEST_ROWS, 4))
HUGE[2, 0] = 1e39  # finite in float64, infinite as float32

ERRORS = {
    "missing data-dir": (lambda root: shutil.rmtree(root), FileNotFoundError, r"data-dir '.*data' does not exist"),
    "missing test split": (remove("test"), FileNotFoundError, r"has no test split: expected test/ or test.npz"),
    "two forms of a split": (
        lambda root: np.savez(root / "train.npz", labels=np.zeros(2)),
        ValueError,
        r"has both train/ and train.npz; keep one",
    ),
    "missing labels": (
        remove("train/labels.npy"),
        FileNotFoundError,
        r"the train split has no labels: expected '.*train/labels.npy', integers 0..C-1 of shape \(N,\)",
    ),
    "npz without labels": (as_npz, FileNotFoundError, r"test split has no labels: expected '.*test.npz' key 'labels'"),
    "rows differ from labels": (
        replace("train/gyro.npy", np.ones((5, 4))),
        ValueError,
        r"'.*train/gyro.npy' has shape \(5, 4\), expected \(6, \.\.\.\): one row per label "
        r"of '.*train/labels.npy'",
    ),
    "scalar modality": (
        replace("test/gyro.npy", np.float64(3.0)),
        ValueError,
        r"test/gyro.npy' has shape \(\), expected \(3, \.\.\.\)",
    ),
    "float labels": (
        replace("train/labels.npy", np.zeros(TRAIN_ROWS)),
        ValueError,
        r"train/labels.npy' has dtype float64, expected integer labels",
    ),
    "2-d labels": (
        replace("test/labels.npy", np.zeros((TEST_ROWS, 1), dtype=int)),
        ValueError,
        r"test/labels.npy' has shape \(3, 1\), expected \(N,\) with N >= 1",
    ),
    "empty split": (
        both(
            replace("test/labels.npy", np.zeros(0, dtype=int)),
            replace("test/acc.npy", np.ones((0, 2, 3))),
            replace("test/gyro.npy", np.ones((0, 4))),
        ),
        ValueError,
        r"test/labels.npy' has shape \(0,\), expected \(N,\) with N >= 1",
    ),
    "negative label": (
        replace("test/labels.npy", np.array([0, -1, 2])),
        ValueError,
        r"test/labels.npy' has labels -1..2, expected 0..2 \(C = largest label \+ 1\)",
    ),
    "label beyond class_names": (
        write("meta.toml", 'class_names = ["a", "b"]'),
        ValueError,
        r"train/labels.npy' has labels 0..2, expected 0..1 \(2 class_names in '.*meta.toml'\)",
    ),
    "one class": (
        both(
            replace("train/labels.npy", np.zeros(TRAIN_ROWS, dtype=int)),
            replace("test/labels.npy", np.zeros(TEST_ROWS, dtype=int)),
        ),
        ValueError,
        r"train/labels.npy': the labels give 1 class, expected at least 2",
    ),
    "test modality the train split lacks": (
        replace("test/mag.npy", np.ones((TEST_ROWS, 2))),
        ValueError,
        r"'.*test/mag.npy' is a modality the train split lacks",
    ),
    "train modality the test split lacks": (
        remove("test/gyro.npy"),
        FileNotFoundError,
        r"the test split has no array 'gyro' \(test/gyro.npy or key 'gyro' of "
        r"test.npz\) but the train split has '.*train/gyro.npy'; expected shape "
        r"\(M, 4\)",
    ),
    "example shapes differ": (
        replace("test/acc.npy", np.ones((TEST_ROWS, 2, 4))),
        ValueError,
        r"test/acc.npy' has shape \(3, 2, 4\), expected \(M, 2, 3\) as '.*train/acc.npy'",
    ),
    "nan": (
        replace("train/acc.npy", NAN),
        ValueError,
        r"train/acc.npy' has 1 values that are NaN or infinite as float32 \(first in row 4\)",
    ),
    "float32 overflow": (
        replace("test/gyro.npy", HUGE),
        ValueError,
        r"test/gyro.npy' has 1 values that are NaN or infinite as float32 \(first in row 2\)",
    ),
    "string modality": (
        replace("train/gyro.npy", np.array(["x"] * TRAIN_ROWS)),
        ValueError,
        r"train/gyro.npy' has dtype <U1, expected a numeric dtype",
    ),
    "pickled npy": (
        replace("train/acc.npy", np.array([{}] * TRAIN_ROWS, dtype=object)),
        ValueError,
        r"cannot read '.*train/acc.npy' as a numpy array without pickle \(.*\); expected a file written "
        r"by numpy.save",
    ),
    "garbage npy": (
        write("test/acc.npy", b"not a numpy file"),
        ValueError,
        r"cannot read '.*test/acc.npy' as a numpy array without pickle",
    ),
    "truncated npz": (
        both(as_npz, truncate("test.npz")),
        ValueError,
        r"cannot read '.*test.npz' as a numpy .npz archive without pickle",
    ),
    "unusable modality name": (
        both(replace("train/y.npy", np.ones((TRAIN_ROWS, 2))), replace("test/y.npy", np.ones((TEST_ROWS, 2)))),
        ValueError,
        r"modality name 'y' of '.*train' is not usable",
    ),
    "dotted modality name": (
        replace("train/a.b.npy", np.ones((TRAIN_ROWS, 2))),
        ValueError,
        r"modality name 'a.b' of '.*train' is not usable",
    ),
    "no modality": (
        both(remove("train/acc.npy"), remove("train/gyro.npy")),
        ValueError,
        r"'.*train' holds labels but no modality array",
    ),
    "two metadata files": (
        both(write("meta.toml", ""), write("meta.json", "{}")),
        ValueError,
        r"has both meta.toml and meta.json",
    ),
    "unreadable metadata": (write("meta.toml", "class_names = ["), ValueError, r"cannot read '.*meta.toml'"),
    "metadata not a table": (write("meta.json", "[1, 2]"), ValueError, r"meta.json' must hold a table"),
    "unknown metadata key": (
        write("meta.toml", 'classes = ["a"]'),
        ValueError,
        r"meta.toml' has the unknown key 'classes'; valid keys: class_names, modalities",
    ),
    "class_names not strings": (
        write("meta.json", '{"class_names": [0, 1, 2]}'),
        ValueError,
        r"class_names must be a list of strings",
    ),
    "unknown kind": (
        write("meta.toml", '[modalities]\nacc = "image"\ngyro = "vector"'),
        ValueError,
        r"modalities must map each modality to one of the kinds vector, series, spectrogram, frames",
    ),
    "metadata lists other modalities": (
        write("meta.toml", '[modalities]\nacc = "series"'),
        ValueError,
        r"lists the modalities \['acc'\] but the train split has \['acc', 'gyro'\]",
    ),
    "kind cannot read the array": (
        write("meta.toml", '[modalities]\nacc = "frames"\ngyro = "vector"'),
        ValueError,
        r"train/acc.npy' has examples of shape \(2, 3\), which kind 'frames' cannot read",
    ),
    "too many axes for any kind": (
        both(
            replace("train/acc.npy", np.ones((TRAIN_ROWS, 1, 1, 1, 1, 2))),
            replace("test/acc.npy", np.ones((TEST_ROWS, 1, 1, 1, 1, 2))),
        ),
        ValueError,
        r"train/acc.npy' has examples of shape \(1, 1, 1, 1, 2\): more axes than any kind",
    ),
    "groups of another length": (
        replace("train/groups.npy", np.arange(5)),
        ValueError,
        r"train/groups.npy' has shape \(5,\) and dtype int64, expected shape \(6,\) of "
        r"integers or strings",
    ),
    "float groups": (
        replace("train/groups.npy", np.ones(TRAIN_ROWS)),
        ValueError,
        r"train/groups.npy' has shape \(6,\) and dtype float64, expected shape \(6,\)",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_each_bad_input_is_an_error_naming_the_file_and_what_was_expected(toy: Path, case: str) -> None:
    mutate, error, message = ERRORS[case]
    mutate(toy)
    with pytest.raises(error, match=message):
        load_arrays(data_dir=str(toy))


def test_without_a_data_dir_the_error_says_to_set_it_and_shows_the_layout() -> None:
    with pytest.raises(FileNotFoundError, match="dataset 'arrays' is user-owned: set the config key data-dir") as err:
        load_arrays(data_dir=None)
    assert "train/<modality>.npy" in str(err.value) and "train.npz / test.npz" in str(err.value)


def test_string_groups_work(toy: Path) -> None:
    np.save(toy / "train" / "groups.npy", np.array(["b", "b", "a", "a", "c", "c"]))
    assert load_arrays(data_dir=str(toy)).train_groups.tolist() == ["b", "b", "a", "a", "c", "c"]


def test_fedmm_simulate_reports_a_bad_directory_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedmm.cli import main

    args = ["simulate", "--set", "dataset=arrays", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("fedmm: error: dataset 'arrays' is user-owned: set the config key")
    root = write_toy(tmp_path / "data")
    np.save(root / "test" / "labels.npy", np.array([0, 1, 3, 2]))
    assert main([*args, "--set", f"data-dir={str(root)!r}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmm: error: ") and "test/acc.npy' has shape (3, 2, 3), expected (4, ...)" in err


# -- federations ------------------------------------------------------------------------------------
def federation_dir(root: Path, num_modalities: int, rows_per_group: int = 8, groups: int = 3) -> Path:
    """Learnable toy data: modality ``a`` vectors, ``b`` series, ``c`` one number per row; labels 0..2;
    ``groups`` natural clients of ``rows_per_group`` train rows each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", rows_per_group * groups), ("test", 12)):
        y = np.arange(n) % 3
        arrays = {
            "a": y[:, None] + rng.standard_normal((n, 5)),
            "b": y[:, None, None] + rng.standard_normal((n, 2, 8)),
            "c": y + rng.standard_normal(n).astype(np.float32),
            "labels": y,
        }
        keep = ["a", "b", "c"][:num_modalities]
        write_split(root, split, {k: v for k, v in arrays.items() if k in (*keep, "labels")})
    np.save(root / "train" / "groups.npy", np.repeat(np.arange(groups) + 10, rows_per_group))
    return root


FEDERATION = [
    "dataset=arrays",
    "partition=natural",
    "num-clients=0",
    "allocation=all",
    "num-server-rounds=1",
    "local-epochs=1",
    "batch-size=4",
    "embed-dim=8",
    "device=cpu",
    "client-num-cpus=1",
    "validation=off",
]  # every group of groups.npy a client (auto would hold one out for validation)


@pytest.mark.parametrize("num_modalities", [2, 3])
def test_a_one_round_federation_takes_its_clients_and_modalities_from_the_files(
    tmp_path: Path, flower_identity: None, num_modalities: int
) -> None:
    from inprocess import run_in_process

    root = federation_dir(tmp_path / "data", num_modalities)
    run = load_config(None, [*FEDERATION, f"data-dir={str(root)!r}"])
    plans = []
    rows = run_in_process(run, on_round=lambda plan, row: plans.append(plan))
    modalities = ["a", "b", "c"][:num_modalities]
    plan = plans[0]
    assert plan.dataset.modality_names == modalities
    assert [m.kind for m in plan.dataset.modalities] == ["vector", "series", "vector"][:num_modalities]
    assert [len(p) for p in plan.scenario.partitions] == [8, 8, 8]  # one client per group of groups.npy
    assert sorted(plan.model.encoders) == modalities
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[-1]["clients-ok"] == 3
    assert sorted(k for k in rows[-1] if k.startswith("test/acc/")) == [f"test/acc/{m}" for m in modalities]


def test_a_node_with_its_own_data_dir_trains_on_its_arrays(tmp_path: Path, flower_identity: None) -> None:
    from flwr.app import MessageType
    from test_node_config import app, context, query, server_message, train

    from fedmm.groups import key_modality

    server_dir = federation_dir(tmp_path / "server", 2)
    node_dir = federation_dir(tmp_path / "node", 2, rows_per_group=5, groups=2)
    run = load_config(None, [*FEDERATION, f"data-dir={str(server_dir)!r}", "partition=iid", "num-clients=2"])
    keys = {"partition-id": 1, "num-partitions": 2, "data-dir": str(node_dir)}
    assert query(run, **keys) == {"partition-id": 1, "modalities": "a,b", "num-examples": 10}
    reply = train(run, "a,b", **keys)
    assert reply.content["metrics"]["num-examples"] == 10
    assert {key_modality(k) for k in reply.content["arrays"].keys()} == {None, "a", "b"}
    evaluation = app(
        server_message(run, MessageType.EVALUATE, str(node_dir), modalities="a,b", server_round=1), context(**keys)
    )
    assert evaluation.content["metrics"]["num-examples"] == 10
