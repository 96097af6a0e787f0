"""Issue 24, rows 3 and 11, and the Ray half of row 2: a ``ray-address`` whose listener never
answers is one error within a bounded wait; Ctrl-C during a Ray run returns the prompt within
seconds with the results final; a Ray worker is a simulated client (it imports the run's plugins).

Processes a test starts are stopped by their process id in a ``finally``."""

from __future__ import annotations

import socket
import time

import pytest

from fedmm.simulation import RAY_ANSWER_SECONDS


def test_a_ray_address_whose_listener_never_answers_is_an_error_within_the_bound(tmp_path, capsys, monkeypatch):
    """The listener completes TCP handshakes (its backlog) but never speaks: ``ray.init`` would
    retry for minutes; fedmm names the key after its bounded wait, and Ray never starts."""
    import ray

    from fedmm.cli import main

    started = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(1))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        began = time.monotonic()
        code = main(["simulate", "--set", "dataset=synthetic", "--set", "partition=iid", "--set", "num-clients=2",
                     "--set", "num-server-rounds=1", "--set", f"ray-address=127.0.0.1:{port}", "--quiet",
                     "--out", str(tmp_path / "run")])
        waited = time.monotonic() - began
    err = capsys.readouterr().err
    assert code == 2 and not started, err
    assert f"config key 'ray-address' = '127.0.0.1:{port}': no Ray cluster answers there" in err
    assert "did not answer as a Ray cluster" in err and "Traceback" not in err
    assert waited < RAY_ANSWER_SECONDS + 60  # bounded: fedmm's wait plus loading the data, not Ray's minutes
