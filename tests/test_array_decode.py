"""records.array_numpy: Flower's Array.numpy() without np.load's header parsing, the same arrays;
a run decoded either way has the same rounds, bit for bit."""

import numpy as np
import pytest
from flwr.app import Array

from fedmm.records import array_numpy


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        np.array(5, dtype=np.int64),  # a 0-d buffer (num_batches_tracked)
        np.zeros((0, 3), dtype=np.float64),
        np.array([True, False]),
        np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float16),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # Fortran order: np.load's path
    ],
)
def test_the_same_array_as_flowers_decoder(value):
    arr = Array(value)
    fast, slow = array_numpy(arr), arr.numpy()
    assert fast.dtype == slow.dtype and fast.shape == slow.shape and fast.tobytes() == slow.tobytes()
    fast[...] = 0 if fast.size else fast  # a writable copy, as np.load's
    assert arr.numpy().tobytes() == slow.tobytes()


def test_a_header_that_disagrees_with_the_array_fields_is_left_to_flowers_decoder():
    arr = Array(np.arange(6, dtype=np.float32))
    liar = Array(dtype=arr.dtype, shape=(2,), stype=arr.stype, data=arr.data)  # claims 2 values, holds 6
    assert array_numpy(liar).shape == liar.numpy().shape == (6,)  # the header's, so vetting sees the truth
    short = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=arr.data[:-4])
    with pytest.raises(ValueError):
        array_numpy(short)


def test_a_run_decoded_with_flowers_decoder_has_the_same_rounds(flower_identity, monkeypatch):
    from inprocess import run_in_process

    from fedmm.config import load_config

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=3",
            "num-server-rounds=2",
            "local-epochs=1",
            "clients-per-round=3",
        ],
    )
    fast = run_in_process(run)
    monkeypatch.setattr("fedmm.records.array_numpy", lambda a: a.numpy())
    monkeypatch.setattr("fedmm.protocol.array_numpy", lambda a: a.numpy())
    slow = run_in_process(run)
    import pandas as pd

    fast, slow = (
        pd.DataFrame(rows).drop(columns=["seconds", "selection-seconds"], errors="ignore") for rows in (fast, slow)
    )
    assert list(fast.columns) == list(slow.columns) and fast.equals(slow)  # NaN (round 0's loss) equals NaN
