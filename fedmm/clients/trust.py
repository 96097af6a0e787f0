"""Which plugin modules a node imports for a run (config key ``plugins``).

A run's config travels with every message (:data:`fedmm.protocol.RUN_CONFIG`), and reading it
imports the modules its ``plugins`` key names. In a deployment that text comes over the network
from whoever submitted the run (``flwr run``), outside the signed app bundle, so a SuperNode imports
only the modules its operator listed in its node config:

    flower-supernode ... --node-config "partition-id=0 num-partitions=3 allowed-plugins='mypkg.fedext'"

(comma-separated module names; none by default). A run naming any other module gets an error reply
from the node, before anything is imported.

In ``fedmm simulate`` the clients belong to the process owner who wrote the config, so they import
whatever it names, as before. The two are told apart by where the ClientApp runs, which a message
cannot change: inside a Ray worker process (Flower's simulation engine runs every ClientApp in Ray
actors; a SuperNode runs it in a ``flwr-clientapp`` process without Ray), or in the inline engine's
grid in fedmm's own process (:func:`in_process_clients`, set by :class:`fedmm.inline.InlineGrid`).
"""

from __future__ import annotations

import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The node-config key that lists the plugin modules a SuperNode may import.
ALLOWED_PLUGINS = "allowed-plugins"

_local = threading.local()


class PluginRefused(ValueError):
    """A run names plugin modules this node's operator has not allowed."""


@contextmanager
def in_process_clients() -> Iterator[None]:
    """While the body runs, ClientApp calls in this thread are fedmm's own in-process clients (the
    inline engine): they import the run's plugins as the server did."""
    before = getattr(_local, "trusted", False)
    _local.trusted = True
    try:
        yield
    finally:
        _local.trusted = before


def simulated_client() -> bool:
    """Whether this ClientApp call belongs to ``fedmm simulate``: the inline engine's grid in this
    thread, or a Ray worker process (Flower's simulation engine)."""
    if getattr(_local, "trusted", False):
        return True
    ray = sys.modules.get("ray")  # a SuperNode's ClientApp process never imports Ray
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def allowed_plugins(node_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The node config's ``allowed-plugins`` (comma-separated module names; none when absent)."""
    text = str(node_config.get(ALLOWED_PLUGINS, ""))
    return tuple(name.strip() for name in text.split(",") if name.strip())


def requested_plugins(run_config_text: str) -> tuple[str, ...]:
    """The module names of the ``plugins`` key of a run config sent as TOML text (without importing
    anything; a text that is not TOML names none here and fails where the config is read)."""
    try:
        value = tomllib.loads(run_config_text).get("plugins", ())
    except tomllib.TOMLDecodeError:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return (str(value),)
    return tuple(str(v).strip() for v in value if str(v).strip())


def check_plugins(run_config_text: str, node_config: Mapping[str, Any]) -> None:
    """Refuse a run whose ``plugins`` this node may not import (see the module docstring).

    Parameters
    ----------
    run_config_text:
        The run config the message carries (TOML text).
    node_config:
        The node's config (``--node-config``), with ``allowed-plugins``.

    Raises
    ------
    PluginRefused
        A named module is not in ``allowed-plugins`` (a deployment node), naming them and the key.
    """
    asked = requested_plugins(run_config_text)
    if not asked or simulated_client():
        return
    allowed = allowed_plugins(node_config)
    refused = [name for name in asked if name not in allowed]
    if refused:
        listed = ", ".join(repr(n) for n in refused)
        raise PluginRefused(
            f"the run's config key 'plugins' asks this node to import {listed}, which its operator has not "
            f"allowed (node config {ALLOWED_PLUGINS}={','.join(allowed) or 'none'!r}); nothing was imported. "
            f"To allow modules you trust (they run with the node's rights), restart the SuperNode with "
            f"--node-config \"... {ALLOWED_PLUGINS}='{','.join([*allowed, *refused])}'\""
        )
