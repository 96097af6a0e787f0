"""Fixtures shared by several test modules."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def flower_identity():
    """Messages built outside a ServerApp need a run id, which the real Grid sets; restore after."""
    before = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
