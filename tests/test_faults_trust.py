"""Issue 24, row 2: the run config's ``plugins`` travel over the network; a SuperNode imports only
the modules its operator allowed (node config ``allowed-plugins``), the simulation's own clients
(inline engine, Ray workers) keep importing what the run names (``fedmm.clients.trust``).

The ClientApp's handlers run in-process on messages built as the server builds them; a node is a
deployment node unless the inline grid or a Ray worker runs it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from flwr.app import Context, MessageType, RecordDict
from inprocess import TWO_CLIENTS

from fedmm.clients.app import app
from fedmm.clients.trust import PluginRefused, allowed_plugins, requested_plugins, simulated_client
from fedmm.config import load_config
from fedmm.protocol import INFO, query_message

pytestmark = pytest.mark.usefixtures("flower_identity")

BASE = [*TWO_CLIENTS, "num-server-rounds=1"]


@pytest.fixture
def marker_plugin(tmp_path, monkeypatch):
    """A plugin module that leaves a file behind when it is imported (its import is visible)."""
    marker = tmp_path / "imported"
    (tmp_path / "marker_plugin.py").write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("marker_plugin", None)


def run_text(marker: Path) -> str:
    """The run config text a server sends, naming the plugin (imported here once, as the server does)."""
    text = load_config(None, [*BASE, "plugins=marker_plugin"]).to_toml()
    sys.modules.pop("marker_plugin", None)
    marker.unlink()
    return text


def ask(text: str, **node_config):
    context = Context(
        run_id=1,
        node_id=7,
        state=RecordDict(),
        run_config={},
        node_config={"partition-id": 0, "num-partitions": 2, **node_config},
    )
    return app(query_message(7, text, MessageType.QUERY), context)


def test_a_deployment_node_refuses_plugins_it_was_not_allowed_and_imports_nothing(marker_plugin):
    text = run_text(marker_plugin)
    assert not simulated_client()
    with pytest.raises(
        PluginRefused,
        match=r"config key 'plugins' asks this node to import 'marker_plugin', which "
        r"its operator has not allowed \(node config allowed-plugins='none'\)"
        r".*allowed-plugins='marker_plugin'",
    ):
        ask(text)
    with pytest.raises(PluginRefused, match="allowed-plugins='other.mod'"):
        ask(text, **{"allowed-plugins": "other.mod"})
    assert not marker_plugin.exists() and "marker_plugin" not in sys.modules


def test_a_deployment_node_imports_the_plugins_its_operator_allowed(marker_plugin):
    text = run_text(marker_plugin)
    reply = ask(text, **{"allowed-plugins": "other.mod, marker_plugin"})
    assert int(reply.content[INFO]["partition-id"]) == 0 and marker_plugin.exists()


def test_a_run_without_plugins_needs_no_allowance():
    reply = ask(load_config(None, BASE).to_toml())
    assert int(reply.content[INFO]["partition-id"]) == 0


def test_the_key_lists_and_the_config_text_are_read_without_importing():
    assert allowed_plugins({"allowed-plugins": " a.b ,c,, "}) == ("a.b", "c") and allowed_plugins({}) == ()
    assert requested_plugins('plugins = ["x.y", "z"]\nlr = 0.1\n') == ("x.y", "z")
    assert requested_plugins("plugins = 'x,z'\n") == ("x", "z") and requested_plugins("not toml [") == ()


def test_each_deployment_node_answers_one_clear_error_and_imports_nothing(marker_plugin, monkeypatch, caplog):
    """A deployment-like federation (discovery by query messages, nodes not trusted): each node's
    discovery reply is the refusal, which the server logs naming the node; nothing is imported and
    no node is registered."""
    import contextlib

    from fedmm.clients import trust
    from fedmm.inline import InlineGrid
    from fedmm.server.loop import run_federation
    from fedmm.server.plan import prepare

    run = load_config(None, [*BASE, "plugins=marker_plugin", "round-timeout=1"])
    sys.modules.pop("marker_plugin", None)
    marker_plugin.unlink()
    plan = prepare(run)
    monkeypatch.setattr(trust, "in_process_clients", contextlib.nullcontext)  # nodes as in a deployment
    with caplog.at_level(logging.WARNING, logger="fedmm"):
        run_federation(InlineGrid(2), plan)
    refusals = [r.getMessage() for r in caplog.records if "did not answer discovery" in r.getMessage()]
    assert [m.split()[1] for m in refusals] == ["1", "2"]
    assert all("asks this node to import 'marker_plugin', which its operator has not allowed" in m for m in refusals)
    assert not marker_plugin.exists() and "marker_plugin" not in sys.modules


def test_the_inline_engine_imports_the_runs_plugins_as_before(marker_plugin):
    from inprocess import run_in_process

    # a config text no earlier test sent (the clients cache the configs they parsed, by text)
    run = load_config(None, [*BASE, "plugins=marker_plugin", "seed=11"])
    sys.modules.pop("marker_plugin", None)
    marker_plugin.unlink()
    rows = run_in_process(run)
    assert rows[-1]["round"] == 1 and marker_plugin.exists()  # the in-process clients imported it again
