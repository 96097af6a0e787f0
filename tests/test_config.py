import pytest

from fedmm.config import RunConfig, load_config
from fedmm.config_text import flatten, parse_overrides


def test_defaults_validate_and_round_trip_through_toml():
    import tomllib

    run = load_config(None, ["objective=mnl", "objective.lambda=0.7", "encoder.acc=mlp"])
    again = RunConfig.from_mapping(flatten(tomllib.loads(run.to_toml())))
    assert again == run
    assert run.objective_params == {"lambda": 0.7}
    assert run.encoders == {"acc": "mlp"}


def test_toml_file_with_nested_tables(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('num-server-rounds = 3\n[objective]\nname = "mnl"\nlambda = 0.5\n')
    run = load_config(path, ["num-server-rounds=4"])
    assert run.num_server_rounds == 4  # overrides win over the file
    assert run.objective == "mnl" and run.objective_params == {"lambda": 0.5}


def test_a_dataset_table_names_its_dataset_and_options(tmp_path):
    # TOML cannot hold both `dataset = "synthetic"` and a [dataset] table of its options
    path = tmp_path / "run.toml"
    path.write_text('partition = "iid"\nnum-clients = 4\n[dataset]\nname = "synthetic"\nnum-classes = 5\n')
    run = load_config(path)
    assert (
        run.dataset == "synthetic"
        and run.dataset_options == {"num-classes": 5}
        and run.parsed["dataset"] == {"num_classes": 5}
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num-round=3", "did you mean 'num-server-rounds'"),
        ("partition=dirichle", "did you mean 'dirichlet'"),
        ("lr=abc", "'lr' expects float"),
        ("multi-ratio=1.5", "'multi-ratio' must be <= 1.0"),
        ("local-epochs=0", "'local-epochs' must be >= 1"),
        ("dirichlet-alpha=0", "'dirichlet-alpha' must be > 0"),
        ("local-epochs=1.5", "'local-epochs' expects int"),
        ("device=tpu", "'device' must be one of"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_combinations_are_checked():
    with pytest.raises(ValueError, match="num-clients"):
        load_config(None, ["partition=iid"])
    with pytest.raises(ValueError, match="modality-fractions"):
        load_config(None, ["allocation=fractions"])


def test_override_parsing():
    assert parse_overrides(["a=1", "b=0.5", "c=mnl", "d='x y'", "e=true"]) == {
        "a": 1,
        "b": 0.5,
        "c": "mnl",
        "d": "x y",
        "e": True,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_every_plain_key_is_declared_for_flwr_run_and_the_declared_defaults_resolve():
    import tomllib
    from pathlib import Path

    from fedmm.config_doc import config_keys
    from fedmm.server.app import OVERRIDES_KEY, RESUME_KEY, run_config_from_flower

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert {k for k, _, _ in config_keys()} | {OVERRIDES_KEY, RESUME_KEY} == set(declared)
    run = run_config_from_flower(dict(declared))
    assert (run.objective, run.selection) == ("ce", "all")
    run = run_config_from_flower(
        {**declared, "strategy": "fedcmi", OVERRIDES_KEY: "objective.lambda2=0.5 'encoder.acc=mlp'"}
    )
    assert run.objective == "fedcmi" and run.objective_params == {"lambda2": 0.5} and run.encoders == {"acc": "mlp"}


def test_momentum_one_is_refused_when_the_config_loads_by_the_rule_train_config_uses():
    from fedmm.config import MOMENTUM
    from fedmm.params import specs
    from fedmm.training import TrainConfig

    with pytest.raises(ValueError, match=r"config key 'momentum' must be < 1\.0, got 1\.0"):
        load_config(None, ["momentum=1.0"])
    assert load_config(None, ["momentum=0"]).momentum == 0.0  # the closed left end
    bound = {s.name: s.constraints for s in specs(TrainConfig)}["momentum"]
    # equal, not identical: typing caches Annotated[...] by equal arguments, so which instance a class
    # sees depends on what was annotated first (and RunConfig's also carries a Search range)
    assert bound == (MOMENTUM,) == {s.name: s.constraints for s in specs(RunConfig)}["momentum"]


def test_namespaced_values_are_parsed_once_when_the_config_loads(monkeypatch):
    """The objective, policy and strategy are built from the Params the config parsed at load:
    building them never converts or checks a value again."""
    from fedmm.server.plan import prepare
    from fedmm.workspace import objective_of

    run = load_config(
        None,
        [
            "dataset=synthetic",
            "partition=iid",
            "num-clients=2",
            "strategy=fedprox",
            "strategy.mu=0.3",
            "objective=mnl",
            "objective.lambda=0.25",
            "selection=random",
        ],
    )
    assert run.parsed["objective"].lam == 0.25 and run.parsed["strategy"].mu == 0.3

    def no_second_parse(*args, **kwargs):
        raise AssertionError("a value was parsed again")

    monkeypatch.setattr("fedmm.params.parse", no_second_parse)
    monkeypatch.setattr("fedmm.objectives.registry.parse", no_second_parse)
    monkeypatch.setattr("fedmm.strategies.selection.parse", no_second_parse, raising=False)
    monkeypatch.setattr("fedmm.strategies.recipes.parse", no_second_parse)
    objective = objective_of(run)
    assert objective.params.lam == 0.25 and objective.params is not run.parsed["objective"]
    plan = prepare(run)
    assert plan.strategy_params.mu == 0.3 and plan.policy.name == "random"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("num_server_rounds=3", "num-server-rounds"),
        ("objective.n_max=3", "objective.n-max"),
        ("objective.lam=0.3", "objective.lambda"),
        ("selection.sketch_dim=8", "selection.sketch-dim"),
        ("dataset.num_modalities=3", "dataset.num-modalities"),
        ("devices.online_share=0.3", "devices.online-share"),
    ],
)
def test_one_key_spelling_the_old_one_is_refused_naming_the_new(old: str, new: str) -> None:
    base = {
        "objective": ["objective=boost"],
        "selection": ["selection=divfl"],
        "dataset": ["dataset=synthetic"],
        "devices": ["devices=model"],
    }.get(old.partition(".")[0] if "." in old else "", [])
    with pytest.raises(ValueError, match=rf"config key '{old.partition('=')[0]}' is now (config key )?'{new}'"):
        load_config(None, [*base, old])
    assert load_config(None, [*base, f"{new}={old.partition('=')[2]}"])  # the new spelling is taken
