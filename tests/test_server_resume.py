"""`flwr run` with ``resume=true``: the ServerApp continues the run whose checkpoint is in
``out-dir`` (a ServerApp killed mid-run), on the inline grid with discovery as in a deployment."""

import logging
import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, MessageType, RecordDict

from fedmm.checkpoint import load_checkpoint
from fedmm.inline import InlineGrid
from fedmm.results import CLIENTS_FILE, ROUNDS_FILE, SUMMARY_FILE
from fedmm.server.app import main

pytestmark = pytest.mark.usefixtures("flower_identity")
DECLARED = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


class Killed(BaseException):
    """The ServerApp process dies (SIGKILL): nothing after this point runs."""


class DyingGrid(InlineGrid):
    """An inline grid whose server dies when it sends the training messages of ``round``."""

    def __init__(self, num_nodes: int, round_: int) -> None:
        super().__init__(num_nodes)
        self.round_, self.trains = round_, 0

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.trains += 1
            if self.trains == self.round_:
                raise Killed
        return super().send_and_receive(messages, timeout)


def context(out: Path, **extra) -> Context:
    run_config = {
        **DECLARED,
        "dataset": "synthetic",
        "partition": "iid",
        "num-clients": 4,
        "allocation": "multi-ratio",
        "clients-per-round": 2,
        "selection": "random",
        "num-server-rounds": 4,
        "local-epochs": 1,
        "batch-size": 16,
        "device": "cpu",
        "seed": 5,
        "out-dir": str(out),
        **extra,
    }
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def killed_in_round_3(out: Path) -> None:
    with pytest.raises(Killed):
        main(DyingGrid(4, 3), context(out))
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # SIGKILL writes nothing
    assert load_checkpoint(out).server_round == 2


def test_a_killed_server_resumed_with_resume_true_ends_like_an_uninterrupted_run(tmp_path):
    main(InlineGrid(4), context(tmp_path / "whole"))
    killed_in_round_3(tmp_path / "split")
    grid = DyingGrid(4, round_=0)  # counts the training exchanges, never dies
    main(grid, context(tmp_path / "split", resume=True))
    assert grid.trains == 2  # rounds 3 and 4: the finished rounds are not trained again
    whole, split = (pd.read_csv(tmp_path / d / ROUNDS_FILE) for d in ("whole", "split"))
    assert split["round"].tolist() == [0, 1, 2, 3, 4]
    metrics = [c for c in whole.columns if c.startswith(("test/", "train/", "clients-"))]
    pd.testing.assert_frame_equal(whole[metrics], split[metrics])
    cols = ["round", "partition-id", "modalities-trained", "status", "num-examples"]
    a, b = (pd.read_csv(tmp_path / d / CLIENTS_FILE)[cols] for d in ("whole", "split"))
    pd.testing.assert_frame_equal(a, b)  # the same selections, each round once
    summary = (tmp_path / "split" / SUMMARY_FILE).read_text()
    assert '"status": "completed"' in summary


def test_without_resume_the_same_run_config_starts_the_run_over(tmp_path):
    killed_in_round_3(tmp_path / "out")
    main(InlineGrid(4), context(tmp_path / "out", **{"num-server-rounds": 1}))
    assert pd.read_csv(tmp_path / "out" / ROUNDS_FILE)["round"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"lr": 0.01},
            r"differs from its .*config\.toml: lr = 0\.01 \(the run has 0\.05\); submit the run's "
            r"--run-config again with resume=true",
        ),
        ({"resume": "yes"}, r"run-config key 'resume' must be true or false, got 'yes'"),
    ],
)
def test_a_resume_that_does_not_match_the_run_is_one_error_and_changes_nothing(tmp_path, caplog, change, message):
    out = tmp_path / "out"
    killed_in_round_3(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with caplog.at_level(logging.ERROR, logger="fedmm"):
        main(InlineGrid(4), context(out, **{"resume": True, **change}))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("fedmm: error: "), errors
    assert re.search(message, errors[0]), errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_of_a_completed_run_or_of_a_directory_without_a_run_is_refused(tmp_path, caplog):
    main(InlineGrid(4), context(tmp_path / "done", **{"num-server-rounds": 1}))
    with caplog.at_level(logging.ERROR, logger="fedmm"):
        main(InlineGrid(4), context(tmp_path / "done", **{"num-server-rounds": 1, "resume": True}))
        main(InlineGrid(4), context(tmp_path / "empty", resume=True))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "has completed (all its rounds); there is nothing to resume" in errors[0]
    assert "empty" in errors[1] and "config.toml" in errors[1]
    assert not (tmp_path / "empty").exists()
