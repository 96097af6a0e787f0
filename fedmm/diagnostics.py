"""Per-round diagnostics of the global model that a dataset asks for: accuracy on named subsets of
the test rows and linear probes of encoders (``competition``: the ``hard`` rows and ``m1``).

The linear probe follows the linear evaluation of Du et al. ("On uni-modal feature learning in
supervised multi-modal learning", ICML 2023, arXiv:2305.01233): freeze the encoder, standardise its
features, fit a multinomial logistic regression (scikit-learn, lbfgs, ``C = 1``) on the **train
split** (all clients' rows, the validation rows excluded) and score it on the **test split**. It
measures what the encoder learned, whatever the fusion head reads from it; compared with the same
encoder trained alone it shows modality under-use. It chooses nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fedmm.data.base import LABEL_KEY, Dataset, TensorDict, subset
from fedmm.models import MultimodalNet
from fedmm.objectives import Objective
from fedmm.training import evaluate


@torch.no_grad()
def encoder_features(
    model: MultimodalNet,
    modality: str,
    data: TensorDict,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``modality``'s encoder output for every row of ``data`` (eval mode), as float64 ``(n, embed)``.

    Parameters
    ----------
    model:
        The model (its train/eval mode is restored afterwards).
    modality:
        The encoder to read.
    data:
        Rows holding ``modality``.
    batch_size:
        Rows per forward pass.
    device:
        Where to run; ``None``: the model's device.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = data[modality]
        parts = [
            model.encoders[modality](x[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy().astype(np.float64)


def linear_probe(
    model: MultimodalNet,
    modality: str,
    train: TensorDict,
    test: TensorDict,
    *,
    device: torch.device | str | None = None,
) -> float:
    """Test accuracy of a linear classifier on ``modality``'s frozen, standardised features, fitted
    on ``train`` (module docstring).

    Parameters
    ----------
    model:
        The model whose encoder is probed.
    modality:
        The modality whose encoder is probed.
    train, test:
        Rows with ``modality`` and ``"y"``: the probe is fitted on ``train``, scored on ``test``.
    device:
        Where the encoder runs.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_x = encoder_features(model, modality, train, device=device)
    score_x = encoder_features(model, modality, test, device=device)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(fit_x, train[LABEL_KEY].numpy())
    return float(probe.score(score_x, test[LABEL_KEY].numpy()))


def round_diagnostics(
    model: MultimodalNet, dataset: Dataset, objective: Objective, *, device: torch.device | str | None = None
) -> dict[str, float]:
    """``test/acc-<name>`` for every subset of ``dataset.test_subsets`` and ``test/probe/<m>`` for
    every modality of ``dataset.probe_modalities``; empty for a dataset that asks for none.

    Parameters
    ----------
    model:
        The global model of the round.
    dataset:
        The run's dataset (its validation rows already out of ``train``).
    objective:
        Supplies ``predict`` for the subset accuracies.
    device:
        Where to run.
    """
    out: dict[str, float] = {}
    for name, mask in dataset.test_subsets.items():
        rows = np.flatnonzero(mask)
        out[f"test/acc-{name}"] = (
            evaluate(model, subset(dataset.test, rows), objective, device=device)["acc"] if rows.size else float("nan")
        )
    for m in dataset.probe_modalities:
        out[f"test/probe/{m}"] = linear_probe(model, m, dataset.train, dataset.test, device=device)
    return out
