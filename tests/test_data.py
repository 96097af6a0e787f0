import gzip
import io
import os
import pickle

import numpy as np
import pytest

from fedmm.data import dataset_table, load_dataset, num_examples
from fedmm.data.hapt import read_recordings, windows
from fedmm.data.unpickle import restricted_load


def test_hapt_windows_users_and_standardisation():
    d = load_dataset("hapt")
    assert num_examples(d.train) + num_examples(d.test) == 10_017  # every window of the 30 users (fedmm/data/hapt.py)
    assert d.modality_names == ["acc", "gyro"] and d.num_classes == 6
    assert d.train["acc"].shape[1:] == (3, 128) and d.test["gyro"].shape[1:] == (3, 128)
    assert len(np.unique(d.train_groups)) == 24  # users 25..30 are the central test set
    assert len(d.train_groups) == num_examples(d.train)
    mean = d.train["acc"].mean(dim=(0, 2))
    assert mean.abs().max() < 1e-3
    assert set(d.train["y"].unique().tolist()) == set(range(6))


def test_hapt_window_rule_on_a_hand_made_recording():
    labels = np.r_[np.full(200, 1), np.full(100, 7), np.full(200, 4)]
    rec = {"acc": np.random.default_rng(0).standard_normal((500, 3)), "gyro": np.zeros((500, 3)), "label": labels}
    x, y, user = windows({3: [rec]})
    # windows start at 0, 64, ..., 320; only starts 0 and 64 (labels 1) and 320 (label 4) are pure
    assert y.tolist() == [0, 0, 3] and user.tolist() == [3, 3, 3] and x.shape == (3, 6, 128)


def test_segment_and_mfeat_shapes():
    seg = load_dataset("segment")
    assert {m.name: m.shape for m in seg.modalities} == {"shape": (8,), "colour": (10,)}
    assert num_examples(seg.train) + num_examples(seg.test) == 2310 and seg.num_classes == 7
    mf = load_dataset("mfeat")
    assert len(mf.modalities) == 6 and mf.num_classes == 10
    assert num_examples(mf.train) == 1400 and mf.spec("mor").shape == (6,)
    assert np.bincount(mf.test["y"].numpy()).tolist() == [60] * 10  # stratified


def _ncm_accuracy(d, m):
    train, test = d.train[m].numpy(), d.test[m].numpy()
    means = np.stack([train[d.train["y"].numpy() == c].mean(0) for c in range(d.num_classes)])
    pred = ((test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return (pred == d.test["y"].numpy()).mean()


def test_synthetic_has_a_strong_and_a_weak_modality():
    d = load_dataset("synthetic", num_modalities=3)
    assert d.modality_names == ["m0", "m1", "m2"]
    assert _ncm_accuracy(d, "m0") > _ncm_accuracy(d, "m2") + 0.2


def test_registry_errors():
    with pytest.raises(ValueError, match="did you mean 'hapt'"):
        load_dataset("hapd")
    with pytest.raises(
        ValueError,
        match="unknown option 'dataset.num-modality' of dataset 'synthetic'; did you mean 'dataset.num-modalities'",
    ):
        load_dataset("synthetic", num_modality=3)
    names = [row["name"] for row in dataset_table()]
    assert {"hapt", "segment", "mfeat", "synthetic"} <= set(names)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"

    class _Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (pickle.dumps(_Evil()), pickle.dumps(_Touch()), pickle.dumps(eval)):
        with pytest.raises(pickle.UnpicklingError, match="blocked global"):
            restricted_load(io.BytesIO(payload))
    assert not marker.exists()
    # a gzip file through the HAPT reader is refused the same way
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps(_Touch()))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        read_recordings(path)
    assert not marker.exists()


def test_restricted_unpickler_keeps_numpy_arrays():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = restricted_load(io.BytesIO(pickle.dumps({"a": arr}, protocol=2)))
    np.testing.assert_array_equal(out["a"], arr)
