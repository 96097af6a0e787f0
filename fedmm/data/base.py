"""What every dataset returns: per-modality tensors, labels and the facts the scenario needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

#: A batch or a split: one float tensor per modality the holder has, plus ``"y"`` (int64 labels).
#: A modality a client does not hold is absent from the dict, never a zero tensor.
TensorDict = dict[str, torch.Tensor]

LABEL_KEY = "y"


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of a dataset.

    Parameters
    ----------
    name:
        Short identifier used in config keys, parameter names and metrics (``acc``, ``gyro``).
    shape:
        Shape of one example without the batch dimension, e.g. ``(3, 128)`` for a 3-channel series.
    kind:
        What the data is, as the dataset's entry names it: ``"series"`` (channels x time),
        ``"vector"`` (flat features), ``"spectrogram"`` (1 x F x T image), ``"frames"``
        (T x 3 x H x W clip) or a kind of its own; the entry's ``encoders`` map each kind to the
        modality's default encoder (:class:`fedmm.data.registry.DatasetEntry`).
    """

    name: str
    shape: tuple[int, ...]
    kind: str


@dataclass
class Dataset:
    """A loaded dataset: a train split to partition among clients and a central test split.

    Parameters
    ----------
    name:
        Registry name.
    modalities:
        The modalities in canonical order (this order fixes the fusion slots).
    class_names:
        One name per class; labels are ``0 .. len(class_names) - 1``.
    train, test:
        ``TensorDict`` with every modality and ``"y"``.
    train_groups:
        Natural client id of each train example (HAPT user), or ``None`` when the data has none.
    notes:
        Free-text facts about how it was loaded (directory, split).
    train_augment:
        Random transform of every training batch (``(batch, generator) -> batch``, see
        :mod:`fedmm.data.augment`), or ``None``.
    val:
        The validation split (``TensorDict`` like ``train``), disjoint from ``train`` and ``test``, or
        ``None``: a loader sets it only when the data ships one (``arrays``' ``val/``); otherwise
        :func:`fedmm.data.validation.with_validation` carves it out of ``train``.
    val_groups:
        Natural client id of each validation example (the held-out users), or ``None``.
    test_subsets:
        Named boolean masks of ``test`` rows whose accuracy the server records every round
        (``test/acc-<name>``), e.g. ``competition``'s ``hard`` rows (the strong modality carries no
        signal); empty for most datasets.
    probe_modalities:
        Modalities whose encoder gets a linear probe every round (``test/probe/<m>``,
        :mod:`fedmm.diagnostics`); empty for most datasets.
    """

    name: str
    modalities: list[ModalitySpec]
    class_names: list[str]
    train: TensorDict
    test: TensorDict
    train_groups: np.ndarray | None = None
    notes: dict[str, str] = field(default_factory=dict)
    train_augment: Callable[[TensorDict, torch.Generator], TensorDict] | None = None
    val: TensorDict | None = None
    val_groups: np.ndarray | None = None
    test_subsets: dict[str, np.ndarray] = field(default_factory=dict)
    probe_modalities: tuple[str, ...] = ()

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self, modality: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == modality:
                return m
        raise KeyError(f"dataset {self.name!r} has no modality {modality!r}; it has {self.modality_names}")


def num_examples(data: TensorDict) -> int:
    return int(data[LABEL_KEY].shape[0])


def subset(data: TensorDict, index: np.ndarray | torch.Tensor, modalities: list[str] | None = None) -> TensorDict:
    """Rows ``index`` of ``data``, keeping only ``modalities`` (all when ``None``) and the labels."""
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    keep = list(data) if modalities is None else [*modalities, LABEL_KEY]
    return {k: data[k].index_select(0, idx) for k in keep}
