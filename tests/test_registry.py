"""The one registry helper every extension point uses."""

import pytest

from fedmm.registry import Registry


def _entry():
    return 1


def test_registry_gets_by_name_and_refuses_a_second_entry_under_a_taken_name():
    reg = Registry("widget")
    assert reg.add("a", _entry) is _entry
    reg.add("a", _entry)  # the same entry again (a module imported twice) is fine
    assert reg.get("a") is _entry and reg.names() == ["a"] and "a" in reg and len(reg) == 1
    with pytest.raises(ValueError, match="widget name 'a' is already registered"):
        reg.add("a", lambda: 2)
    with pytest.raises(ValueError, match="non-empty"):
        reg.add("", _entry)


def test_registry_names_the_nearest_entry_for_an_unknown_name():
    reg = Registry("dataset")
    reg.decorator("hapt")(_entry)
    with pytest.raises(ValueError, match=r"unknown dataset 'hpat'; did you mean 'hapt'\? Valid: hapt"):
        reg.get("hpat")


def test_every_extension_point_registers_as_register_kind_name_facts_and_refuses_the_old_bare_form():
    from fedmm.facts import register_client_fact
    from fedmm.objectives.registry import register_objective
    from fedmm.strategies.selection import register_policy

    def anything():
        return 0.0

    for register in (register_objective, register_policy, register_client_fact):
        new_form = rf'write @{register.__name__}\("<name>"\) above .*anything'
        with pytest.raises(TypeError, match=rf"{register.__name__} takes the registered name first: {new_form}"):
            register(anything)
        with pytest.raises(ValueError, match="non-empty string name"):
            register("")


def test_a_strategy_registers_by_decorator_with_its_path_and_docstring_summary():
    from fedmm.strategies.recipes import STRATEGIES, register_strategy

    class Median:
        """Coordinate-wise median.

        More text.
        """

    try:
        assert register_strategy("test-median")(Median) is Median
        recipe = STRATEGIES.get("test-median")
        assert (
            recipe.target
            == f"{__name__}:test_a_strategy_registers_by_decorator_with_its_path_and_docstring_summary.<locals>.Median"
        )
        assert recipe.summary == "Coordinate-wise median." and recipe.selection == "all"
        with pytest.raises(TypeError, match=r'write @register_strategy\("<name>"\) above'):
            register_strategy(Median)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs a summary"):
            register_strategy("test-nosummary")("some.module:Class")
    finally:
        STRATEGIES.remove("test-median")


def test_a_client_fact_registers_by_decorator():
    from fedmm.facts import CLIENT_FACTS, register_client_fact

    def share(model, data, order):
        return 0.5

    try:
        assert register_client_fact("test-share", before_training_in_update_pass=False)(share) is share
        fact = CLIENT_FACTS.get("test-share")
        assert fact.compute is share and not fact.before_training_in_update_pass
    finally:
        CLIENT_FACTS.remove("test-share")
