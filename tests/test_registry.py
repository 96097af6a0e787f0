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
