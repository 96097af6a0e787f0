"""``preset = "paper"``: each method's hyperparameters as its paper's reference code runs them.

:data:`PAPER` lists, per method (an objective, or the strategies ``fedcmi`` and ``cmsfed``), the
config keys the preset sets, each with its source (repository, commit, file and line); the table
in ``docs/presets.md`` is the same list (a test reads it and compares). The preset sets a method's
training hyperparameters (optimizer, learning rate and its schedule, batch size, the method's own
parameters) and leaves the federation (dataset, rounds, clients, modalities, model width) to the
run. A key the user sets (file or ``--set``) wins over the preset; ``preset = "none"`` (the
default) changes nothing.

No torch, no flwr: :mod:`fedmm.config` applies it while it reads a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The repositories the sources name (commit shortened to 7 characters; full hashes in docs/presets.md).
OGM = "GeWu-Lab/OGM-GE_CVPR2022@343dc1d"
PMR = "fanyunfeng-bit/Modal-Imbalance-PMR@3615e48"
AUG = "njustkmg/NeurIPS25-AUG@841d079"
MNL = "BaoquanGong/Multimodal-Negative-Learning@64cea56"
RMX = "MatthewMaxy/Remix_ICML2025@80898aa"
BMS = "fanyunfeng-bit/Balanced-Modality-Selection-in-MFL@14c762c"


@dataclass(frozen=True)
class RoundsFraction:
    """A round number given as a fraction of ``num-server-rounds`` (``round(fraction * T)``): the
    references' round 80 of 180 for a run of any length."""

    numerator: int
    denominator: int

    def resolve(self, num_server_rounds: int) -> int:
        return round(self.numerator * num_server_rounds / self.denominator)

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator} x num-server-rounds"


@dataclass(frozen=True)
class Value:
    """One preset value and where it comes from."""

    value: Any
    source: str


#: method -> config key -> value and source. Objective presets apply when the run's objective is
#: the method; ``fedcmi`` and ``cmsfed`` when the run's strategy is (their ``objective.*`` keys only
#: with the strategy's own objective, ``selection.*`` only with the ``cmsfed`` policy).
PAPER: dict[str, dict[str, Value]] = {
    "ogm-ge": {
        "optimizer": Value("sgd", f"{OGM} main.py:246"),
        "lr": Value(1e-3, f"{OGM} main.py:37"),
        "momentum": Value(0.9, f"{OGM} main.py:246"),
        "weight-decay": Value(1e-4, f"{OGM} main.py:246"),
        "batch-size": Value(64, f"{OGM} main.py:33"),
        "objective.alpha": Value(0.8, f"{OGM} README.md:150-151 (CREMA-D)"),
        "objective.modulation-end": Value(0.5, f"{OGM} main.py:41-42, 132 (epochs 0..50 of 100)"),
    },
    "pmr": {
        "optimizer": Value("adam", f"{PMR} bash.sh:222 (CREMA-D concat); main_Prototype_grad.py:463-470"),
        "lr": Value(1e-3, f"{PMR} bash.sh:222"),
        "adam-beta2": Value(0.99, f"{PMR} main_Prototype_grad.py:463-470 (Adam betas 0.9, 0.99)"),
        "weight-decay": Value(0.0, f"{PMR} main_Prototype_grad.py:463-470 (Adam without weight decay)"),
        "batch-size": Value(64, f"{PMR} main_Prototype_grad.py:36"),
        "objective.alpha": Value(2.0, f"{PMR} bash.sh:222"),
        "objective.momentum": Value(0.0, f"{PMR} bash.sh:222"),
        "objective.modulation-end": Value(
            70 / 130, f"{PMR} bash.sh:222; main_Prototype_grad.py:47-48, 156 (epochs 0..70 of 130)"
        ),
    },
    "boost": {
        "optimizer": Value("sgd", f"{AUG} data/crema.json:25-26; train_CREMAD.py:201"),
        "lr": Value(1e-2, f"{AUG} data/crema.json:27"),
        "momentum": Value(0.9, f"{AUG} data/crema.json:25-26"),
        "weight-decay": Value(1e-4, f"{AUG} data/crema.json:28"),
        "batch-size": Value(64, f"{AUG} data/crema.json:17"),
        "objective.lambda": Value(0.5, f"{AUG} train_CREMAD.py:57, 70"),
        "objective.merge-weights": Value([0.4, 0.6], f"{AUG} train_CREMAD.py:128, 166 (audio 0.4, video 0.6)"),
        "objective.decision-window": Value("last-epoch", f"{AUG} train_CREMAD.py:96, 220"),
    },
    "mnl": {
        "optimizer": Value("adam", f"{MNL} train_latefusion.py:79"),
        "lr": Value(2e-5, f"{MNL} shell/train_MVSA_latefusion.sh:12"),
        "weight-decay": Value(0.0, f"{MNL} train_latefusion.py:62, 72-77"),
        "batch-size": Value(16, f"{MNL} shell/train_MVSA_latefusion.sh:9"),
        "objective.lambda": Value(0.7, f"{MNL} train_latefusion.py:63, 159-168"),
    },
    "remix": {
        "optimizer": Value("adam", f"{RMX} train.py:37, 231-233"),
        "lr": Value(5e-5, f"{RMX} train.py:38"),
        "weight-decay": Value(1e-4, f"{RMX} train.py:231-233"),
        "batch-size": Value(64, f"{RMX} scripts/run_train.sh:1"),
        "objective.interleave": Value(False, f"{RMX} train.py:134-170 (all visual batches, then all audio)"),
    },
    "uniform": {
        "optimizer": Value("adam", f"{RMX} baseline.py:33-42 (the Remix paper's multitask baseline)"),
        "lr": Value(1e-3, f"{RMX} baseline.py:33-42"),
        "weight-decay": Value(1e-4, f"{RMX} baseline.py:33-42"),
        "batch-size": Value(64, f"{RMX} scripts/run_baseline.sh:1"),
        "objective.head-weight": Value(0.5, f"{RMX} baseline.py:137-141"),
    },
    "arm": {},  # no public code and no paper text: fedmm's arm is a reconstruction (docs/presets.md)
    "fedcmi": {
        "optimizer": Value("sgd", f"{BMS} client/FedCMI.py:111-112"),
        "lr": Value(1e-3, f"{BMS} config/utils.py:34"),
        "momentum": Value(0.9, f"{BMS} client/FedCMI.py:111-112"),
        "weight-decay": Value(1e-4, f"{BMS} client/FedCMI.py:111-112"),
        "lr-min": Value(1e-4, f"{BMS} run.sh:2-5 (the sibling CMSFed script; FedCMI has none)"),
        "lr-decay-start": Value(RoundsFraction(80, 180), f"{BMS} client/FedCMI.py:81-84 (round 80 of 180)"),
        "batch-size": Value(16, f"{BMS} config/utils.py:44"),
        "objective.class-wise": Value(True, f"{BMS} config/utils.py:90 (--class_wise_t, the method)"),
        "objective.proximal": Value(True, f"{BMS} config/utils.py:78-79; client/FedCMI.py:253-256 (--prox)"),
        "objective.mu": Value(1.0, f"{BMS} config/utils.py:78-79"),
    },
    "cmsfed": {
        "optimizer": Value("sgd", f"{BMS} client/mmdrop.py:140-141"),
        "lr": Value(1e-3, f"{BMS} run.sh:2-5"),
        "momentum": Value(0.9, f"{BMS} client/mmdrop.py:140-141"),
        "weight-decay": Value(1e-4, f"{BMS} client/mmdrop.py:140-141"),
        "lr-min": Value(1e-4, f"{BMS} run.sh:2-5"),
        "lr-decay-start": Value(RoundsFraction(80, 180), f"{BMS} client/mmdrop.py:44-51; run.sh:2-5 (round 80 of 180)"),
        "batch-size": Value(64, f"{BMS} run.sh:2-5"),
        "objective.alpha": Value(2.0, f"{BMS} run.sh:2-5 (--MI_alpha)"),
        "selection.delta": Value(1.5, f"{BMS} run.sh:3-4"),
        "selection.sketch-dim": Value(0, f"{BMS} server/mmdrop.py:94-106 (exact update vectors)"),
    },
}
#: Strategies whose preset replaces their objective's (their objective has the strategy's name).
STRATEGY_PRESETS = ("fedcmi", "cmsfed")


def preset_method(strategy: str, objective: str) -> str | None:
    """The method whose preset a run gets: its strategy when that has one, else its objective
    (``None`` when neither has: ``ce``, a plugin's objective)."""
    if strategy in STRATEGY_PRESETS:
        return strategy
    return objective if objective in PAPER else None


def preset_values(
    preset: str, *, strategy: str, objective: str, selection: str, num_server_rounds: int
) -> dict[str, Any]:
    """The flat config values ``preset`` gives a run (empty for ``"none"``).

    Parameters
    ----------
    preset:
        ``"none"`` or ``"paper"``.
    strategy, objective, selection:
        The run's resolved strategy, objective and selection policy.
    num_server_rounds:
        The run's rounds (a :class:`RoundsFraction` resolves against it; a decay start that would
        not fall before the last round is left out: the lr stays constant).
    """
    if preset == "none":
        return {}
    if preset != "paper":
        raise ValueError(f"preset must be 'none' or 'paper', got {preset!r}")
    method = preset_method(strategy, objective)
    if method is None:
        return {}
    out: dict[str, Any] = {}
    for key, entry in PAPER[method].items():
        namespace = key.partition(".")[0] if "." in key else ""
        if namespace == "objective" and objective != method:
            continue
        if namespace == "selection" and selection != "cmsfed":
            continue
        value = entry.value
        if isinstance(value, RoundsFraction):
            value = value.resolve(num_server_rounds)
            if not 0 < value < num_server_rounds:
                continue
        out[key] = list(value) if isinstance(value, list) else value
    return out


def apply_preset(values: Mapping[str, Any], preset_given: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (the keys the user set) completed with ``preset_given``'s keys they did not set."""
    return {**preset_given, **values}
