"""Fixtures shared by several test modules."""

import pytest

from fedmm.inline import server_identity


@pytest.fixture
def flower_identity():
    """Messages built outside a ServerApp need a run id, which the real Grid sets; restore after."""
    with server_identity():
        yield


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist with ``--dist loadgroup`` (``make test``: ``-n 2``) every integration test
    goes to one worker, where they run one after the other as without xdist (each starts Ray, a
    SuperLink and SuperNodes, or ``fedmm`` processes, sized for the machine), while the other
    worker takes the unit tests."""
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(pytest.mark.xdist_group("integration"))
