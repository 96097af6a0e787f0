"""Search ranges declared with the parameters (fedmm.params.Search): refused at import when they
leave the parameter's valid range, listed by `fedmm config`, drawn by an Optuna trial."""

import sys
import textwrap
from dataclasses import dataclass
from typing import Annotated

import pytest

from fedmm.params import FRACTION, NON_NEGATIVE, Checked, Interval, Search, check_search, specs


def _module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_an_objective_whose_search_range_leaves_the_valid_range_is_refused_at_import(tmp_path, monkeypatch):
    from fedmm.objectives.registry import OBJECTIVES

    _module(
        tmp_path,
        monkeypatch,
        "bad_search_objective",
        """
        from dataclasses import dataclass
        from typing import Annotated
        from fedmm.objectives.base import Objective
        from fedmm.objectives.registry import register_objective
        from fedmm.params import FRACTION, Checked, Search

        @register_objective("bad-search")
        class Bad(Objective):

            @dataclass
            class Params(Checked):
                weight: Annotated[float, FRACTION, Search(0.5, 1.5)] = 0.7
    """,
    )
    with pytest.raises(
        ValueError,
        match=r"search range \[0.5, 1.5\] of parameter 'weight' of objective 'bad-search': "
        r"high 1.5 is outside the valid range: must be <= 1.0",
    ):
        import bad_search_objective  # noqa: F401
    assert "bad-search" not in OBJECTIVES


def test_a_policy_whose_search_range_leaves_the_valid_range_is_refused_at_import(tmp_path, monkeypatch):
    _module(
        tmp_path,
        monkeypatch,
        "bad_search_policy",
        """
        from dataclasses import dataclass
        from typing import Annotated
        from fedmm.params import Checked, Interval, Search
        from fedmm.strategies.selection import register_policy
        from fedmm.strategies.selection.basic import RandomClients

        @register_policy("bad-search")
        class Bad(RandomClients):

            @dataclass
            class Params(Checked):
                d: Annotated[int, Interval(int, 1, None, closed="left"), Search(0, 5)] = 2
    """,
    )
    with pytest.raises(
        ValueError,
        match=r"parameter 'd' of selection 'bad-search': low 0 is outside the valid range: "
        r"must be >= 1",
    ):
        import bad_search_policy  # noqa: F401


@pytest.mark.parametrize(
    "search, problem",
    [
        (Search(-0.1, 0.5), "low -0.1 is outside the valid range: must be >= 0.0"),  # NON_NEGATIVE
        (Search(0.0, 0.5, log=True), "a log range needs low > 0"),
        (Search(0.5, 0.1), "low 0.5 must be below high 0.1"),
        (Search(choices=(0.1, -2.0)), "choice -2.0 is outside the valid range"),
        (Search(0.1), "needs low and high"),
    ],
)
def test_check_search_names_the_problem(search, problem):
    @dataclass
    class Params(Checked):
        x: Annotated[float, NON_NEGATIVE, search] = 0.1

    with pytest.raises(ValueError, match=f"parameter 'x' of test: {problem}".replace("(", r"\(").replace(")", r"\)")):
        check_search(Params, "test")


def test_a_range_inside_the_valid_range_passes_and_open_ends_are_respected():
    @dataclass
    class Params(Checked):
        a: Annotated[float, FRACTION, Search(0.0, 1.0)] = 0.5  # both ends of a closed interval
        b: Annotated[float, Interval(float, 0.0, 1.0, closed="left"), Search(0.0, 0.99)] = 0.5
        c: Annotated[int, Interval(int, 1, None, closed="left"), Search(1, 5)] = 2
        d: float = 1.0  # not tuned

    check_search(Params, "test")
    assert [s.search for s in specs(Params)] == [Search(0.0, 1.0), Search(0.0, 0.99), Search(1, 5), None]

    @dataclass
    class Open(Checked):
        b: Annotated[float, Interval(float, 0.0, 1.0, closed="left"), Search(0.0, 1.0)] = 0.5

    with pytest.raises(ValueError, match="high 1.0 is outside the valid range: must be < 1.0"):
        check_search(Open, "test")


def test_the_run_keys_and_every_registered_component_declare_ranges_that_fit():
    from fedmm.config import RunConfig, param_classes

    check_search(RunConfig, "run")
    tuned = {s.name: s.search for s in specs(RunConfig) if s.search is not None}
    assert set(tuned) == {"lr", "momentum", "local_epochs", "weight_decay"}
    assert tuned["lr"].log
    for namespace, classes in param_classes().items():
        for name, cls in classes.items():
            check_search(cls, f"{namespace} {name}")
    objective = param_classes()["objective"]
    assert specs(objective["pmr"])[0].search is not None  # alpha


def test_fedmm_config_shows_the_ranges(capsys):
    from fedmm.cli import main

    assert main(["config", "objective", "ogm-ge"]) == 0
    out = capsys.readouterr().out
    alpha = next(line for line in out.splitlines() if line.startswith("objective.alpha"))
    assert alpha.endswith("(search log[0.05, 1])")
    assert "objective.ge" in out and "(search" not in next(
        line for line in out.splitlines() if line.startswith("objective.ge ")
    )


def test_a_trial_draws_inside_the_range_with_the_parameters_type():
    optuna = pytest.importorskip("optuna")
    trial = optuna.trial.FixedTrial({"lr": 0.01, "local-epochs": 3, "mode": "b"})
    assert Search(1e-3, 0.3, log=True).suggest(trial, "lr", float) == 0.01
    assert Search(1, 5).suggest(trial, "local-epochs", int) == 3
    assert Search(choices=("a", "b")).suggest(trial, "mode", str) == "b"
