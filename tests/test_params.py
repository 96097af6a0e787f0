"""The one parameter validator (fedmm.params), dataset entry facts and the `fedmm config` listing."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest

from fedmm.config import RunConfig
from fedmm.config_doc import parameter_rows
from fedmm.data.base import ModalitySpec
from fedmm.data.registry import DATASETS, check_options, dataset_entry, is_user_owned, register_dataset
from fedmm.params import Checked, Interval, Options, Spec, check_value, config_name, specs


def spec(annotation, *constraints) -> Spec:
    return Spec("x", annotation, dataclasses.MISSING, tuple(constraints), "")


def accepted(interval: Interval, value: float) -> bool:
    return interval.violation(value) is None


# -- Interval ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("closed", "at_left", "at_right"),
    [("both", True, True), ("left", True, False), ("right", False, True), ("neither", False, False)],
)
def test_interval_ends_belong_to_it_as_closed_says(closed: str, at_left: bool, at_right: bool) -> None:
    interval = Interval(float, 0.0, 1.0, closed=closed)
    assert accepted(interval, 0.0) is at_left
    assert accepted(interval, 1.0) is at_right
    assert accepted(interval, 0.5) and not accepted(interval, -1e-9) and not accepted(interval, 1.0 + 1e-9)
    assert (
        interval.describe()
        == {"both": "[0.0, 1.0]", "left": "[0.0, 1.0)", "right": "(0.0, 1.0]", "neither": "(0.0, 1.0)"}[closed]
    )


def test_interval_messages_name_the_bound_and_its_side() -> None:
    assert Interval(float, 0.0, None, closed="neither").violation(0.0) == "must be > 0.0, got 0.0"
    assert Interval(float, 0.0, None, closed="left").violation(-2.0) == "must be >= 0.0, got -2.0"
    assert Interval(int, 1, 29, closed="both").violation(30) == "must be <= 29, got 30"
    assert Interval(float, None, 1.0, closed="neither").violation(1.0) == "must be < 1.0, got 1.0"
    assert Interval(float, None, None).violation(-1e300) is None  # unbounded on both sides


def test_an_integer_interval_refuses_a_fraction_and_a_boolean() -> None:
    interval = Interval(int, 0, 10)
    assert interval.violation(0.5) == "must be an integer in [0, 10], got 0.5"
    assert interval.violation(True) == "must be an integer in [0, 10], got True"
    assert interval.violation(3) is None
    assert Interval(float, 0, 10).violation(3) is None  # an int is a number


# -- check_value: conversion, wrong types, NaN ------------------------------------------------
def test_strings_from_the_command_line_are_converted_to_the_declared_type() -> None:
    assert check_value("lr", "0.25", spec(float, Interval(float, 0.0, None, closed="neither"))) == 0.25
    assert type(check_value("lr", "2", spec(float))) is float
    assert check_value("n", " 7 ", spec(int)) == 7
    assert check_value("flag", "off", spec(bool)) is False
    assert check_value("flag", "yes", spec(bool)) is True
    assert check_value("w", "[0.4, 0.6]", spec(list[float])) == [0.4, 0.6]
    assert check_value("w", "0.4,0.6", spec(list[float])) == [0.4, 0.6]
    assert check_value("o", "none", spec(int | None)) is None
    # the constraint is tested on the converted value: "30" is 30, above 29
    with pytest.raises(ValueError, match=r"^config key 'x' must be <= 29, got 30$"):
        check_value("config key 'x'", "30", spec(int, Interval(int, 1, 29)))


@pytest.mark.parametrize(
    ("value", "annotation"),
    [("abc", float), ("1.5", int), (True, int), (True, float), (3, str), ("maybe", bool), ({"a": 1}, list[float])],
)
def test_a_value_of_the_wrong_type_names_the_label_and_the_type(value, annotation) -> None:
    with pytest.raises(ValueError, match=r"^config key 'x' expects "):
        check_value("config key 'x'", value, spec(annotation))


def test_an_integral_float_is_an_int_but_not_a_fractional_one() -> None:
    assert check_value("n", 4.0, spec(int)) == 4 and type(check_value("n", 4.0, spec(int))) is int
    with pytest.raises(ValueError, match="expects int"):
        check_value("n", 4.5, spec(int))


@pytest.mark.parametrize("value", [float("nan"), "nan", float("inf"), "-inf", [0.5, float("nan")]])
def test_nan_and_infinity_are_refused_even_without_a_constraint(value) -> None:
    annotation = list[float] if isinstance(value, list) else float
    with pytest.raises(ValueError, match=r"^p must be a finite number, got "):
        check_value("p", value, spec(annotation))


# -- Options -------------------------------------------------------------------------------------
def test_options_name_the_nearest_choice() -> None:
    options = Options("natural", "iid", "dirichlet")
    assert options.violation("iid") is None
    assert options.violation("dirichlt") == (
        "must be one of ['natural', 'iid', 'dirichlet'], got 'dirichlt' (did you mean 'dirichlet'?)"
    )
    assert options.violation("zzz") == "must be one of ['natural', 'iid', 'dirichlet'], got 'zzz'"
    with pytest.raises(ValueError, match=r"config key 'partition' must be one of .*did you mean 'dirichlet'"):
        RunConfig.from_mapping({"partition": "dirichlt", "num-clients": 4})


# -- declarations: Annotated constraints and docstring help ------------------------------------
def test_specs_read_constraints_defaults_and_help_also_from_a_base_class_docstring() -> None:
    @dataclasses.dataclass(frozen=True)
    class Base(Checked):
        """Base.

        Parameters
        ----------
        rate:
            How fast,
            in steps.
        """

        rate: Annotated[float, Interval(float, 0.0, 1.0, closed="left")] = 0.5

    @dataclasses.dataclass(frozen=True)
    class Child(Base):
        """Child.

        Parameters
        ----------
        mode:
            Which mode.
        """

        mode: Annotated[str, Options("a", "b")] = "a"

    rate, mode = specs(Child)
    assert (rate.name, rate.default, rate.help, rate.allowed()) == (
        "rate",
        0.5,
        "How fast, in steps.",
        "float in [0.0, 1.0)",
    )
    assert (mode.name, mode.default, mode.help, mode.allowed()) == ("mode", "a", "Which mode.", "str in a, b")
    assert Child(rate="0.25").rate == 0.25  # Checked converts a direct build too
    with pytest.raises(ValueError, match=r"\.Child\.rate must be < 1\.0, got 1\.0$"):
        Child(rate=1.0)


# -- dataset entries: facts and option ranges ---------------------------------------------------
def test_dataset_entries_carry_user_owned_and_default_encoders() -> None:
    assert is_user_owned("cremad")
    assert not any(is_user_owned(n) for n in ("hapt", "synthetic", "segment", "mfeat"))
    hapt = [ModalitySpec("acc", (3, 128), "series"), ModalitySpec("gyro", (3, 128), "series")]
    assert dataset_entry("hapt").default_encoders(hapt) == {"acc": "cnn1d", "gyro": "cnn1d"}
    cremad = [ModalitySpec("audio", (1, 257, 188), "spectrogram"), ModalitySpec("visual", (1, 3, 224, 224), "frames")]
    assert dataset_entry("cremad").default_encoders(cremad) == {"audio": "resnet18-audio", "visual": "resnet18-video"}
    synthetic = dataset_entry("synthetic")
    assert synthetic.default_encoders([ModalitySpec("m0", (2, 16), "series")]) == {"m0": "cnn1d"}
    assert synthetic.default_encoders([ModalitySpec("m0", (16,), "vector")]) == {"m0": "mlp"}
    with pytest.raises(ValueError, match=r"no default encoder for kind 'frames' of modality 'v'.*set encoder\.v"):
        dataset_entry("segment").default_encoders([ModalitySpec("v", (1, 3, 8, 8), "frames")])


def test_the_model_takes_encoder_keys_over_the_dataset_defaults() -> None:
    from torch import nn

    from fedmm.workspace import model_of, objective_of

    run = RunConfig.from_mapping(
        {
            "dataset": "synthetic",
            "dataset.kind": "series",
            "dataset.num-train": 40,
            "dataset.num-test": 8,
            "dataset.dim": 8,
            "partition": "iid",
            "num-clients": 2,
            "encoder.m1": "mlp",
            "embed-dim": 4,
        }
    )
    model = model_of(run, objective_of(run))
    assert isinstance(model.encoders["m0"][0], nn.Conv1d)  # the entry's default for kind "series"
    assert isinstance(model.encoders["m1"][0], nn.Flatten)  # encoder.m1 = "mlp"


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("hapt", {"test-users": 30}, "option 'dataset.test-users' of dataset 'hapt' must be <= 29, got 30"),
        ("hapt", {"test-users": 0}, "must be >= 1, got 0"),
        ("cremad", {"test-fraction": 1.0}, "option 'dataset.test-fraction' of dataset 'cremad' must be < 1.0, got 1.0"),
        ("cremad", {"test-fraction": 0}, "must be > 0.0, got 0.0"),
        ("cremad", {"image-size": 7}, "must be >= 8, got 7"),
        ("cremad", {"num-frames": 0}, "must be >= 1, got 0"),
        ("synthetic", {"kind": "vectr"}, "must be one of ['vector', 'series'], got 'vectr' (did you mean 'vector'?)"),
        ("synthetic", {"num-classes": 1}, "must be >= 2, got 1"),
    ],
)
def test_dataset_option_ranges_are_declared_constraints(dataset: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_options(dataset, options)
    assert message in str(err.value)


def test_dataset_options_at_their_bounds_pass_converted() -> None:
    assert check_options("hapt", {"test-users": "29"}) == {"test_users": 29}
    assert check_options("hapt", {"test-users": 1}) == {"test_users": 1}
    assert check_options("cremad", {"test-fraction": "0.5", "image-size": 8}) == {"test_fraction": 0.5, "image_size": 8}
    with pytest.raises(ValueError, match=r"^config key 'dataset.test-users' must be <= 29, got 30$"):
        RunConfig.from_mapping({"dataset.test-users": 30})


def test_the_prepare_subcommands_come_from_the_entries() -> None:
    from fedmm.cli import _parser

    def prepare(parser):
        parser.add_argument("--size", type=int, required=True)
        return lambda args: 40 + args.size

    register_dataset("toy-owned", description="a toy", encoders={"vector": "mlp"}, user_owned=True, prepare=prepare)(
        lambda *, data_dir, seed: None
    )
    try:
        assert is_user_owned("toy-owned")
        args = _parser().parse_args(["prepare", "toy-owned", "--size", "2"])
        assert args.func(args) == 42
        with pytest.raises(SystemExit):  # hapt needs no preparation: no subcommand
            _parser().parse_args(["prepare", "hapt"])
    finally:
        DATASETS._entries.pop("toy-owned")


# -- fedmm config ------------------------------------------------------------------------------
def test_config_rows_list_every_component_parameter_with_default_and_help() -> None:
    from fedmm.objectives.registry import OBJECTIVES
    from fedmm.strategies.selection import POLICIES

    rows = parameter_rows()
    by_component: dict[str, dict[str, object]] = {}
    for row in rows:
        by_component.setdefault(row.component, {})[row.key] = row
    # plain keys first, unchanged in name and default
    assert rows[0].key == "dataset" and rows[0].component == "" and rows[0].default == "hapt"
    assert by_component[""]["momentum"].allowed == "float in [0.0, 1.0)"
    for name, cls in OBJECTIVES.items():  # one row per Params field, under its config name
        fields = [f.name for f in dataclasses.fields(cls.Params)]
        assert len(by_component.get(f"objective {name}", {})) == len(fields), name
    for name, cls in POLICIES.items():
        assert len(by_component.get(f"selection {name}", {})) == len(dataclasses.fields(cls.Params)), name
    mnl_lambda = by_component["objective mnl"]["objective.lambda"]  # config name, not the field "lam"
    assert (mnl_lambda.default, mnl_lambda.allowed) == (0.7, "float in [0.0, inf)")
    assert mnl_lambda.help.startswith("``lambda`` (config name ``lambda``), the weight of the non-target guidance")
    delta = by_component["selection cmsfed"]["selection.delta"]
    assert (delta.default, delta.allowed) == (1.5, "float in [1.0, inf)")
    assert by_component["selection cmsfed"]["selection.sketch-dim"].help  # inherited from DivFL's docstring
    test_users = by_component["dataset hapt"]["dataset.test-users"]
    assert (test_users.default, test_users.allowed) == (6, "int in [1, 29]") and test_users.help
    for name, entry in DATASETS.items():
        keys = set(by_component[f"dataset {name}"])
        assert keys == {f"dataset.{config_name(s.name)}" for s in entry.options()} | {"encoder.<modality>"}, name
        assert by_component[f"dataset {name}"]["encoder.<modality>"].default == dict(entry.encoders)
    assert by_component["dataset cremad"]["dataset.test-fraction"].allowed == "float in (0.0, 1.0)"
    assert by_component["encoder"]["encoder.<modality>"].allowed == "one of cnn1d, mlp, resnet18-audio, resnet18-video"


def test_config_rows_of_one_component_and_unknown_names(capsys) -> None:
    from fedmm.cli import main

    keys = [r.key for r in parameter_rows("objective", "fedcmi")]
    assert keys[:3] == ["objective.lambda1", "objective.lambda2", "objective.kappa"] and len(keys) == 9
    assert {r.component for r in parameter_rows("dataset")} == {f"dataset {n}" for n in DATASETS.names()}
    assert [r.key for r in parameter_rows("run")][:2] == ["dataset", "data-dir"]
    with pytest.raises(ValueError, match=r"unknown objective 'mnll'; did you mean 'mnl'\?"):
        parameter_rows("objective", "mnll")
    with pytest.raises(ValueError, match=r"unknown namespace 'objectiv'; did you mean 'objective'\?"):
        parameter_rows("objectiv")
    assert main(["config", "objective", "fedcmi"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "[objective fedcmi]"
    assert lines[2].split()[:5] == ["objective.lambda1", "2.0", "float", "in", "[0.0,"]


def test_parameters_are_validated_once_per_process_not_per_message(monkeypatch, flower_identity):
    """A 2-round federation of 3 clients sends 6 training messages; the objective's and the policy's
    parameters are checked when the config is parsed (the server's load, the clients' parse of the
    config text, cached per process), never again per message."""
    import collections

    from inprocess import run_in_process

    import fedmm.params as params
    from fedmm.config import load_config
    from fedmm.workspace import parse_run_config

    counts: collections.Counter[str] = collections.Counter()
    check = params.check_value

    def counting(label, value, spec):
        counts[label] += 1
        return check(label, value, spec)

    monkeypatch.setattr(params, "check_value", counting)
    parse_run_config.cache_clear()
    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=3",
            "num-server-rounds=2",
            "local-epochs=1",
            "objective=ogm-ge",
            "objective.alpha=0.5",
            "selection=random",
            "clients-per-round=3",
        ],
    )
    loaded = counts["parameter 'alpha' of objective 'ogm-ge'"]
    assert loaded == 1
    run_in_process(run)
    # one more: the clients' parse of the config text they receive (cached for the process)
    assert counts["parameter 'alpha' of objective 'ogm-ge'"] == loaded + 1
