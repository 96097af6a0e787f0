"""The update pass in batches (``UPDATE_PASS_BATCH``): the server holds one batch of messages and
replies at a time, and the run is the one the pass in a single batch gives."""

import pandas as pd
import pytest
from inprocess import simulate_in_process

from fedmm.config import load_config
from fedmm.results import CLIENTS_FILE, ROUNDS_FILE

FEDERATION = [
    "dataset=synthetic",
    "partition=dirichlet",
    "dirichlet-alpha=0.5",
    "num-clients=8",
    "multi-ratio=0.5",
    "clients-per-round=3",
    "num-server-rounds=3",
    "local-epochs=1",
    "batch-size=16",
    "device=cpu",
    "seed=3",
]


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize("method", [["strategy=cmsfed"], ["selection=divfl"]], ids=["cmsfed", "divfl"])
def test_an_update_pass_in_batches_gives_the_run_of_one_batch(tmp_path, monkeypatch, method):
    import fedmm.strategies.fedavg as fedavg

    run = load_config(None, [*FEDERATION, *method])
    simulate_in_process(run, tmp_path / "whole", overwrite=True)
    sent = []
    original = fedavg.ModalityAwareFedAvg.configure_update_pass

    def recorded(self, arrays):
        batch = original(self, arrays)
        sent.append(len(batch))
        return batch

    monkeypatch.setattr(fedavg, "UPDATE_PASS_BATCH", 3)
    monkeypatch.setattr(fedavg.ModalityAwareFedAvg, "configure_update_pass", recorded)
    simulate_in_process(run, tmp_path / "batched", overwrite=True)
    assert sent[:4] == [3, 3, 2, 0]  # 8 clients in batches of 3, then the loop's last call gets none
    for name in (ROUNDS_FILE, CLIENTS_FILE):
        whole, batched = (
            pd.read_csv(tmp_path / d / name).drop(columns=["seconds", "selection-seconds"], errors="ignore")
            for d in ("whole", "batched")
        )
        pd.testing.assert_frame_equal(whole, batched)
