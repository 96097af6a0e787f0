"""The objective registry: names, suggestions, parameter conversion and validation, descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from fedmm.objectives import Objective, build_objective, describe_objective, objective_names, registry
from fedmm.objectives.uniform import Uniform
from fedmm.registry import Registry


class Toy(Objective):
    """A toy objective for the registry tests."""

    param_aliases: ClassVar[dict[str, str]] = {"lambda": "lam"}
    validated: ClassVar[int] = 0

    @dataclass
    class Params:
        """Parameters of ``toy``.

        Parameters
        ----------
        rate:
            A rate, at least 0.
        lam:
            Config name ``lambda``.
        """

        rate: float = 0.5
        lam: float = 0.1
        steps: int = 3
        flag: bool = False
        weights: list[float] = field(default_factory=list)
        mode: Literal["a", "b"] = "a"
        cap: float | None = None

        def validate(self) -> None:
            Toy.validated += 1
            if self.rate < 0:
                raise ValueError(f"toy: rate must be >= 0, got {self.rate}")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[Toy]:
    """``Toy`` registered in a copy of the registry (the real one is left as it was)."""
    fresh = Registry("objective")
    for name, cls in registry.OBJECTIVES.items():
        fresh.add(name, cls)
    monkeypatch.setattr(registry, "OBJECTIVES", fresh)
    Toy.validated = 0
    return registry.register_objective("toy")(Toy)


def test_builtin_names() -> None:
    names = objective_names()
    assert {"ce", "uniform"} <= set(names)
    assert names == sorted(names)
    assert type(build_objective("ce")) is Objective
    obj = build_objective("uniform", {"head-weight": "0.5"})
    assert isinstance(obj, Uniform) and obj.params.head_weight == 0.5 and obj.needs_heads


def test_unknown_objective_suggests_the_nearest() -> None:
    with pytest.raises(ValueError, match=r"unknown objective 'unifrom'; did you mean 'uniform'\?") as err:
        build_objective("unifrom")
    assert "ce" in str(err.value) and "uniform" in str(err.value)


def test_unknown_parameter_names_objective_key_valid_keys_and_suggestion(toy: type[Toy]) -> None:
    with pytest.raises(ValueError) as err:
        build_objective("toy", {"rte": 1.0})
    message = str(err.value)
    assert "'toy'" in message and "'rte'" in message and "did you mean 'rate'" in message
    assert "Valid parameters: rate, lambda, steps, flag, weights, mode, cap" in message
    with pytest.raises(ValueError, match="takes no parameters"):
        build_objective("ce", {"lr": 0.1})


def test_values_from_the_command_line_are_converted(toy: type[Toy]) -> None:
    p = build_objective(
        "toy",
        {"rate": "0.7", "steps": "4", "flag": "true", "weights": "1, 2.5", "mode": "b", "cap": "none", "lambda": "2"},
    ).params
    assert (p.rate, p.steps, p.flag, p.weights, p.mode, p.cap, p.lam) == (0.7, 4, True, [1.0, 2.5], "b", None, 2.0)
    assert type(p.rate) is float and type(p.steps) is int
    p = build_objective("toy", {"rate": 2, "flag": "off", "weights": [1, 2], "cap": 3}).params
    assert type(p.rate) is float and p.rate == 2.0  # int accepted for a float field
    assert p.flag is False and p.weights == [1.0, 2.0] and p.cap == 3.0
    assert build_objective("toy", {}).params == Toy.Params()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"rate": "fast"}, "'rate' of objective 'toy' expects float, got 'fast'"),
        ({"steps": 1.5}, "'steps' of objective 'toy' expects int, got 1.5"),
        ({"flag": "maybe"}, "'flag' of objective 'toy' expects bool, got 'maybe'"),
        ({"flag": 1}, "'flag' of objective 'toy' expects bool"),
        ({"rate": True}, "'rate' of objective 'toy' expects float"),
        ({"mode": "c"}, "'mode' of objective 'toy' expects Literal"),
        ({"weights": ["x"]}, "'weights' of objective 'toy' expects list[float]"),
    ],
)
def test_wrong_types_name_key_type_and_value(toy: type[Toy], params: dict, expected: str) -> None:
    with pytest.raises(ValueError) as err:
        build_objective("toy", params)
    assert expected in str(err.value) and "'toy'" in str(err.value)


def test_validate_is_called(toy: type[Toy]) -> None:
    build_objective("toy", {"rate": 0.0})
    assert Toy.validated == 1
    with pytest.raises(ValueError, match="rate must be >= 0"):
        build_objective("toy", {"rate": "-1"})
    with pytest.raises(ValueError, match="head-weight"):
        build_objective("uniform", {"head-weight": -1})


def test_aliases(toy: type[Toy]) -> None:
    assert build_objective("toy", {"lambda": 0.3}).params.lam == 0.3
    with pytest.raises(ValueError, match="parameter 'lam' of objective 'toy' is now parameter 'lambda'"):
        build_objective("toy", {"lam": 0.4})  # one spelling: the field name behind an alias is refused


def test_describe(toy: type[Toy]) -> None:
    d = describe_objective("toy")
    assert d["name"] == "toy" and d["summary"] == "A toy objective for the registry tests." and not d["needs_heads"]
    assert list(d["params"]) == ["rate", "lambda", "steps", "flag", "weights", "mode", "cap"]
    assert d["params"]["rate"] == {"type": "float", "default": 0.5, "help": "A rate, at least 0."}
    assert d["params"]["lambda"]["help"] == "Config name ``lambda``."
    assert d["params"]["weights"]["type"] == "list[float]" and d["params"]["weights"]["default"] == []
    assert describe_objective("ce")["params"] == {}
    assert describe_objective("uniform")["params"]["head-weight"]["default"] == 1.0


def test_registration_errors(toy: type[Toy]) -> None:
    with pytest.raises(TypeError, match="subclass of Objective"):
        registry.register_objective("dict")(dict)  # type: ignore[arg-type]

    class Other(Objective):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register_objective("toy")(Other)
    assert "name" not in vars(Other)  # not renamed by a refused registration

    class BadAlias(Objective):
        param_aliases: ClassVar[dict[str, str]] = {"x": "missing"}

    with pytest.raises(ValueError, match="param_aliases"):
        registry.register_objective("bad-alias")(BadAlias)
    assert "bad-alias" not in objective_names()
    assert registry.register_objective("toy")(Toy) is Toy and Toy.name == "toy"  # the same class again is fine
    # the one registration style: the old bare decorator is refused, naming the new form
    with pytest.raises(TypeError, match=r'write @register_objective\("<name>"\) above Toy'):
        registry.register_objective(Toy)  # type: ignore[arg-type]
