"""Fixtures shared by several test modules."""

import pytest

from fedmm.inline import server_identity


@pytest.fixture
def flower_identity():
    """Messages built outside a ServerApp need a run id, which the real Grid sets; restore after."""
    with server_identity():
        yield
