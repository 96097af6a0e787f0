import numpy as np
import pytest

from fedmm.groups import keys_for_modalities
from fedmm.groups import parameter_group as key_group
from fedmm.protocol import decode_extras, encode_extras
from fedmm.records import aggregate, from_record, non_finite_keys, to_record

GLOBAL = {
    "encoders.a.w": np.zeros(2, dtype=np.float32),
    "encoders.b.w": np.full(2, 7.0, dtype=np.float32),
    "encoders.a.bn.num_batches_tracked": np.array(0, dtype=np.int64),
    "fusion.linear.weight": np.zeros(2, dtype=np.float32),
}


def test_each_key_averaged_over_the_clients_that_sent_it():
    c1 = {
        "encoders.a.w": np.array([1.0, 1.0], np.float32),
        "fusion.linear.weight": np.array([1.0, 0.0], np.float32),
        "encoders.a.bn.num_batches_tracked": np.array(10),
    }
    c2 = {
        "encoders.a.w": np.array([4.0, 4.0], np.float32),
        "fusion.linear.weight": np.array([4.0, 3.0], np.float32),
        "encoders.a.bn.num_batches_tracked": np.array(20),
    }
    c3 = {
        "fusion.linear.weight": np.array([0.0, 3.0], np.float32)
    }  # a client holding only modality b... trained only fusion
    out = aggregate(GLOBAL, [(1, c1), (2, c2), (3, c3)])
    # encoders.a: (1*1 + 2*4) / 3 = 3
    np.testing.assert_allclose(out["encoders.a.w"], [3.0, 3.0])
    # fusion over all three: (1*1 + 2*4 + 3*0)/6 = 1.5 ; (0 + 6 + 9)/6 = 2.5
    np.testing.assert_allclose(out["fusion.linear.weight"], [1.5, 2.5])
    # nobody trained encoders.b: it keeps the global value
    np.testing.assert_array_equal(out["encoders.b.w"], GLOBAL["encoders.b.w"])
    # integer buffers stay integers: (10 + 40) / 3 = 16.67 -> 17
    assert out["encoders.a.bn.num_batches_tracked"].dtype == np.int64
    assert int(out["encoders.a.bn.num_batches_tracked"]) == 17
    assert out["encoders.a.w"].dtype == np.float32


def test_unknown_key_is_refused():
    with pytest.raises(KeyError, match="unknown parameter"):
        aggregate(GLOBAL, [(1, {"encoders.c.w": np.zeros(2)})])


def test_groups_and_keys_for_modalities():
    assert key_group("encoders.acc.0.weight") == "encoders.acc"
    assert key_group("heads.gyro.weight") == "heads.gyro"
    assert key_group("fusion.linear.bias") == "fusion"
    with pytest.raises(ValueError):
        key_group("classifier.weight")
    keys = ["encoders.a.w", "heads.a.w", "encoders.b.w", "projectors.b.x.w", "fusion.linear.weight"]
    assert keys_for_modalities(keys, ["a"]) == ["encoders.a.w", "heads.a.w", "fusion.linear.weight"]


def test_non_finite_keys_and_round_trip():
    record = to_record({"fusion.x": np.array([1.0, np.nan]), "fusion.y": np.array([1.0]), "fusion.n": np.array(3)})
    assert non_finite_keys(record) == ["fusion.x"]
    assert from_record(record)["fusion.y"].tolist() == [1.0]


def test_extras_codec():
    config, arrays = encode_extras({"active": [1, 2], "dominant": "acc", "protos": np.eye(2, dtype=np.float32)})
    out = decode_extras(config, arrays)
    assert out["active"] == [1, 2] and out["dominant"] == "acc"
    np.testing.assert_array_equal(out["protos"], np.eye(2))
