"""Device profiles: the parametric model, trace files (bad rows named), availability over time."""

import math

import numpy as np
import pytest

from fedmm.config import RunConfig
from fedmm.devices import DeviceParams, Profiles, TraceError, draw_profiles, load_trace

HEADER = "client,compute_ms_per_sample,down_kbps,up_kbps,online_start_s,online_end_s\n"


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_trace_with_intervals_is_read_per_client(tmp_path):
    path = write(tmp_path, HEADER + "7,10,800,400,0,100\n7,10,800,400,500,1000\n3,20,1600,800,200,300\n")
    p = load_trace(path, 3, period_s=1000)
    # sorted keys 3, 7: client 0 -> key 3, client 1 -> key 7, client 2 -> key 3 again (cyclic)
    assert p.compute_ms_per_sample.tolist() == [20, 10, 20] and p.up_kbps.tolist() == [800, 400, 800]
    assert p.online(np.array([0, 1, 2]), 250).tolist() == [True, False, True]
    assert p.online(np.array([0, 1, 2]), 50).tolist() == [False, True, False]
    assert p.online_for(np.array([0]), 250).tolist() == [50]
    # client 1 (key 7) is online at the period's end and at its start: across the wrap, 50 + 100 s
    assert p.online_for(np.array([1]), 950).tolist() == [150]
    assert p.online(np.array([0]), 1250).tolist() == [True]  # availability repeats every period
    assert p.next_online(320) == 500 and p.next_online(100) == 200 and p.next_online(50) == 50


def test_a_trace_without_intervals_is_always_online(tmp_path):
    p = load_trace(write(tmp_path, "client,compute_ms_per_sample,down_kbps,up_kbps\n0,5,100,50\n1,6,200,70\n"), 2)
    assert p.always_online and p.online_for(np.array([0, 1]), 1e9).tolist() == [math.inf, math.inf]


@pytest.mark.parametrize(
    "rows, where, why",
    [
        (
            "0,10,800,400,0,100\n1,abc,800,400,0,100\n",
            "row 2 (line 3)",
            "compute_ms_per_sample = 'abc' is not a finite",
        ),
        ("0,10,800,400,0,100\n1,10,-5,400,0,100\n", "row 2 (line 3)", "down_kbps must be > 0"),
        ("0,10,800,400,0,100\n0,10,800,400,50,40\n", "row 2 (line 3)", "online_end_s must be > online_start_s"),
        ("0,10,800,400,0,100\n0,10,900,400,200,300\n", "row 2 (line 3)", "down_kbps differs"),
        ("0,10,800,400,0,100\n1,10,800,400,0,10\n0,10,800,400,50,150\n", "row 3 (line 4)", "overlaps"),
        ("0,10,800,400,0,100\n1,10,800,400,0,2000\n", "row 2 (line 3)", "period"),
        ("0.5,10,800,400,0,100\n", "row 1 (line 2)", "integer"),
        ("0,10,800,,0,100\n", "row 1 (line 2)", "up_kbps is empty"),
    ],
)
def test_a_trace_file_with_a_bad_row_names_the_file_and_the_row(tmp_path, rows, where, why):
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(TraceError) as err:
        load_trace(path, 2, period_s=1000)
    assert str(path) in str(err.value) and where in str(err.value) and why in str(err.value)


def test_a_trace_file_without_a_column_or_missing_is_named(tmp_path):
    path = write(tmp_path, "client,compute_ms_per_sample,down_kbps\n0,1,2\n")
    with pytest.raises(TraceError, match=r"trace.csv' lacks column\(s\) \['up_kbps'\]"):
        load_trace(path, 1)
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv", 1)


def test_the_model_is_seeded_clipped_and_has_the_documented_medians():
    a, b = draw_profiles(20000, seed=1), draw_profiles(20000, seed=1)
    assert a.digest() == b.digest() and a.digest() != draw_profiles(20000, seed=2).digest()
    assert np.median(a.compute_ms_per_sample) == pytest.approx(13.6, rel=0.03)
    assert np.median(a.down_kbps) == pytest.approx(6000, rel=0.05)
    assert np.median(a.up_kbps / a.down_kbps) == pytest.approx(0.71, rel=0.03)
    assert a.compute_ms_per_sample.max() <= 13.6 * math.exp(2.3264 * 0.6) + 1e-9
    assert a.always_online


def test_the_availability_model_has_the_asked_share_online():
    p = draw_profiles(4000, seed=0, params=DeviceParams(online_share=0.3, mean_online_s=3600.0))
    ids = np.arange(4000)
    shares = [p.online(ids, t).mean() for t in np.linspace(0, 6e5, 13)]
    assert np.mean(shares) == pytest.approx(0.3, abs=0.02)
    lengths = p.ends - p.starts
    inner = (p.starts > 0) & (p.ends < p.period_s)  # intervals not cut by the period's edges
    assert lengths[inner].mean() == pytest.approx(3600, rel=0.05)
    left = p.online_for(ids, 1000.0)
    on = left > 0
    assert (p.online(ids[on], 1000.0 + left[on] - 1e-6)).all()
    assert not p.online(ids[on], 1000.0 + left[on] + 1e-6)[np.isfinite(left[on])].any()


def test_devices_are_off_by_default_and_leave_the_config_text_as_it_was():
    run = RunConfig.from_mapping({})
    text = run.to_toml()
    assert run.devices == "off" and not any(
        k in text for k in ("devices", "round-close", "round-deadline", "overcommit")
    )
    with pytest.raises(ValueError, match="'round-close' = 'deadline' needs the simulated clock"):
        RunConfig.from_mapping({"round-close": "deadline"})
    with pytest.raises(ValueError, match="config key 'devices.online-share' must be > 0"):
        RunConfig.from_mapping({"devices": "model", "devices.online-share": 0})


def test_profiles_of_a_single_whole_period_interval_are_online_for_good():
    p = Profiles(np.ones(1), np.ones(1), np.ones(1), 10.0, np.array([0.0]), np.array([10.0]), np.array([0, 1]))
    assert p.online_for(np.array([0]), 5.0).tolist() == [math.inf]


def test_drawn_profiles_written_as_a_trace_read_back_the_same(tmp_path):
    from fedmm.devices import write_trace

    p = draw_profiles(50, seed=4, params=DeviceParams(online_share=0.4, mean_online_s=600.0, period_s=86400.0))
    write_trace(p, tmp_path / "t.csv")
    back = load_trace(tmp_path / "t.csv", 50, period_s=86400.0)
    assert back.digest() == p.digest()
