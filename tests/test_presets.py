"""preset = "paper": the values equal docs/presets.md's table, user keys win, "none" changes nothing;
and what the presets need: Adam as the local optimizer, PMR's modulation window, boost's
last-epoch decision."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from fedmm.config import RunConfig
from fedmm.objectives.base import RoundContext
from fedmm.objectives.boost import SustainedBoosting
from fedmm.objectives.pmr import PMR
from fedmm.presets import PAPER, RoundsFraction, preset_values
from fedmm.training import TrainConfig, make_optimizer

DOC = Path(__file__).resolve().parents[1] / "docs" / "presets.md"
ROW = re.compile(r"^\| (?P<method>[a-z-]+) \| `(?P<key>[^`]+)` \| `(?P<value>[^`]+)` \| (?P<source>.+) \|$")


def documented() -> dict[str, dict[str, tuple[object, str]]]:
    """The table of docs/presets.md: method -> key -> (value, source)."""
    out: dict[str, dict[str, tuple[object, str]]] = {}
    for line in DOC.read_text().splitlines():
        if (m := ROW.match(line)) is None:
            continue
        text = m["value"]
        if (frac := re.fullmatch(r"(\d+)/(\d+) x num-server-rounds", text)) is not None:
            value: object = RoundsFraction(int(frac[1]), int(frac[2]))
        else:
            value = tomllib.loads(f"v = {text}")["v"]
        out.setdefault(m["method"], {})[m["key"]] = (value, m["source"])
    return out


def test_the_presets_equal_the_documented_table():
    table = documented()
    code = {
        method: {k: (v.value, v.source) for k, v in entries.items()} for method, entries in PAPER.items() if entries
    }
    assert table == code
    assert "| arm | (none) |" in DOC.read_text()  # no public code: documented as such, nothing set
    for entries in table.values():
        for _, source in entries.values():
            assert re.match(r"[\w.-]+/[\w.-]+@[0-9a-f]{7} \S+:\d", source)  # repository@commit file:line


@pytest.mark.parametrize("method", [m for m in PAPER if m not in ("fedcmi", "cmsfed")])
def test_every_objective_preset_builds_a_valid_config(method):
    run = RunConfig.from_mapping({"objective": method, "preset": "paper"})
    for key, entry in PAPER[method].items():
        head, dot, rest = key.partition(".")
        got = run.objective_params[rest] if dot else getattr(run, key.replace("-", "_"))
        assert got == entry.value


def test_pmr_paper_preset_is_adam_with_the_reference_window():
    run = RunConfig.from_mapping({"objective": "pmr", "preset": "paper"})
    assert (run.optimizer, run.lr, run.adam_beta2, run.weight_decay, run.batch_size) == ("adam", 1e-3, 0.99, 0.0, 64)
    assert run.parsed["objective"].modulation_end == 70 / 130 and run.parsed["objective"].momentum == 0.0


def test_user_keys_win_over_the_preset():
    run = RunConfig.from_mapping(
        {"objective": "pmr", "preset": "paper", "lr": 0.01, "objective.alpha": 3.0, "batch-size": 8}
    )
    assert (run.lr, run.batch_size, run.parsed["objective"].alpha) == (0.01, 8, 3.0)
    assert run.optimizer == "adam"  # the rest of the preset stays


def test_preset_none_keeps_todays_defaults_and_the_resolved_config_reads_back():
    assert RunConfig.from_mapping({"objective": "pmr"}).to_flat() == {
        **RunConfig.from_mapping({"objective": "pmr", "preset": "none"}).to_flat()
    }
    default = RunConfig.from_mapping({"objective": "pmr"})
    assert (default.lr, default.optimizer, default.batch_size, default.objective_params) == (0.05, "sgd", 32, {})
    run = RunConfig.from_mapping({"strategy": "cmsfed", "preset": "paper", "num-server-rounds": 20})
    assert RunConfig.from_mapping(run.to_flat()).to_toml() == run.to_toml()  # what clients parse again


def test_strategy_presets_scale_the_decay_round_and_respect_the_components():
    run = RunConfig.from_mapping({"strategy": "cmsfed", "preset": "paper", "num-server-rounds": 180})
    assert (run.lr, run.lr_min, run.lr_decay_start, run.batch_size) == (1e-3, 1e-4, 80, 64)
    assert run.selection_params == {"delta": 1.5, "sketch-dim": 0}
    assert (
        RunConfig.from_mapping({"strategy": "cmsfed", "preset": "paper", "num-server-rounds": 20}).lr_decay_start == 9
    )
    assert RunConfig.from_mapping({"strategy": "cmsfed", "preset": "paper", "num-server-rounds": 1}).lr_decay_start == 0
    other = RunConfig.from_mapping({"strategy": "cmsfed", "preset": "paper", "selection": "random"})
    assert other.selection_params == {} and other.objective_params == {"alpha": 2.0} and other.lr == 1e-3
    fedcmi = RunConfig.from_mapping({"strategy": "fedcmi", "preset": "paper"})
    assert fedcmi.parsed["objective"].proximal and fedcmi.batch_size == 16
    assert preset_values("paper", strategy="fedavg", objective="ce", selection="all", num_server_rounds=5) == {}


# -- Adam -----------------------------------------------------------------------------------------
def test_adam_takes_the_hand_computed_first_step():
    """Adam's first step moves each weight by lr * g / (|g| + eps') with bias correction: lr * sign(g)
    (here with L2 weight decay in the gradient, as torch.optim.Adam adds it)."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    config = TrainConfig(epochs=1, batch_size=2, lr=0.1, optimizer="adam", adam_beta2=0.99, weight_decay=0.5)
    opt = make_optimizer([w], config)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.99)
    w.grad = torch.tensor([0.3, 0.0])  # + 0.5 * w -> [0.8, -1.0]
    opt.step()
    g = torch.tensor([0.8, -1.0])
    expected = torch.tensor([1.0, -2.0]) - 0.1 * g / (g.abs() + 1e-8)
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    sgd = make_optimizer([w], TrainConfig(epochs=1, batch_size=2, lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


def test_the_run_config_reaches_the_train_settings():
    from fedmm.workspace import train_config_of

    run = RunConfig.from_mapping({"optimizer": "adam", "adam-beta2": 0.95})
    tc = train_config_of(run, server_round=1, proximal_mu=0.0, seed=0)
    assert (tc.optimizer, tc.adam_beta2) == ("adam", 0.95)


# -- PMR's modulation window ---------------------------------------------------------------------
def _pmr_loss(window_end: float, server_round: int, num_rounds: int = 10):
    from test_objective_pmr import DATA, hand_model

    obj = PMR(PMR.Params(alpha=1.5, modulation_end=window_end))
    model = hand_model()
    obj.begin_round(model, DATA, RoundContext(server_round=server_round, num_rounds=num_rounds, modalities=["a", "v"]))
    return obj.loss(model, DATA).item(), torch.nn.functional.cross_entropy(model(DATA), DATA["y"]).item()


def test_pmr_acts_inside_its_window_and_is_plain_ce_after_it():
    # 10 rounds x 1 epoch: round 6 starts at progress 0.5; round 7 at 0.6
    inside, ce = _pmr_loss(0.5, 6)
    after, ce_after = _pmr_loss(0.5, 7)
    assert inside > ce + 0.1  # the prototype CE is added (window inclusive at its end)
    assert after == pytest.approx(ce_after)  # plain fused CE outside the window
    assert _pmr_loss(1.0, 10)[0] > ce + 0.1  # the default window covers the whole run
    with pytest.raises(ValueError, match="modulation-start <= modulation-end"):
        PMR(PMR.Params(modulation_start=0.6, modulation_end=0.5))


# -- boost's last-epoch decision ----------------------------------------------------------------
def _facts(**pairs):
    out = {}
    for m, (conf, count) in pairs.items():
        out[f"boost-conf-{m}"], out[f"boost-count-{m}"] = conf, float(count)
    return out


@pytest.mark.parametrize("window, expected", [("since-last", {"a": 1, "v": 2}), ("last-epoch", {"a": 2, "v": 1})])
def test_boost_decides_on_the_decision_rounds_reports_with_last_epoch(window, expected):
    from test_objective_boost import make_model

    obj = SustainedBoosting(SustainedBoosting.Params(assign_every=3, decision_window=window))
    make_model(obj)
    obj.server_observe(1, [(10, _facts(a=(5.0, 10), v=(5.0, 10)))])  # decision round: tie
    obj.server_observe(2, [(10, _facts(a=(9.0, 10), v=(1.0, 10)))])  # not a decision round
    # round 3 alone: a 1/10 < v 8/10 -> a gets one; rounds 2-3 together: a 10/20 > v 9/20 -> v gets one
    obj.server_observe(3, [(10, _facts(a=(1.0, 10), v=(8.0, 10)))])
    assert obj.active_in_round(4) == expected


def test_boost_last_epoch_clients_report_only_their_last_epoch():
    from test_objective_boost import ctx, make_model, synthetic

    sums = {}
    for window in ("since-last", "last-epoch"):
        obj = SustainedBoosting(SustainedBoosting.Params(decision_window=window))
        model = make_model(obj)
        data = synthetic(["a", "v"], n=8)
        obj.begin_round(model, data, ctx(["a", "v"]))
        for epoch in range(2):
            obj.begin_epoch(epoch)
            obj.train_step(model, data, torch.optim.SGD(model.parameters(), lr=0.0))  # lr 0: same sums each epoch
        sums[window] = obj.end_round(model, data)
    assert sums["last-epoch"]["boost-count-a"] == 8.0 and sums["since-last"]["boost-count-a"] == 16.0
    assert sums["since-last"]["boost-conf-a"] == pytest.approx(2 * sums["last-epoch"]["boost-conf-a"])
    assert math.isfinite(sums["last-epoch"]["boost-conf-v"])
