"""A generated dataset on which modality competition is known to hurt joint training.

After Huang et al., ICML 2022 ("Modality competition: what makes joint training of multi-modal
network fail in deep learning? (provably)", arXiv:2203.12221) and Wu et al., ICML 2022
("Characterizing and overcoming the greedy nature of learning in multi-modal deep neural
networks", arXiv:2202.05306): a **strong** modality ``m0`` whose class signal is a mean shift (read
out by a linear layer, learned fast) and a **weak** modality ``m1`` whose class signal has a random
sign per row, so that ``E[x_m1 | y] = 0`` and no linear read-out exists (the encoder needs
``|<w, x>|``-type features from pairs of ReLUs: learnable alone, but starved once ``m0`` fits the
rows), in the manner of the XOR modality of Zhang, Latham & Saxe (ICML 2024, arXiv:2312.00935) and
the slabs of Shah et al. (NeurIPS 2020, arXiv:2006.07710).

Each modality is ``num-patches`` patches of ``patch-dim`` values, all ``N(0, noise^2)``; one
patch of a row carries the signal: ``strong-amp * v0[y]`` in ``m0`` with probability
``strong-present`` and ``eps * weak-amp * v1[y]`` in ``m1`` with probability ``weak-present``
(``eps`` = +-1 per row with ``weak-sign-flip``, else +1), where ``v_r[c]`` are orthonormal class
vectors of each modality. ``weak-amp`` is the gap knob (4 = as strong as ``m0``; 2 = a large gap).

Variants: ``test-strong-present`` < ``strong-present`` is the shift variant (the strong modality
is less reliable at test time, as the colour bias of Colored MNIST in Wu et al.);
``weak-sign-flip = false`` is the negative control (``m1`` a plain mean shift, no competition
expected, the regime of ``synthetic``).

The test rows where ``m0`` carries no signal are the ``hard`` subset (``Dataset.test_subsets``):
only ``m1`` can classify them, so the server records their accuracy (``test/acc-hard``), and the
weak encoder gets a linear probe every round (``test/probe/m1``; :mod:`fedmm.diagnostics`).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from fedmm.data.base import Dataset, ModalitySpec
from fedmm.data.registry import register_dataset
from fedmm.params import FRACTION, Interval, Options

POSITIVE_INT = Interval(int, 1, None, closed="left")
NON_NEGATIVE_FLOAT = Interval(float, 0.0, None, closed="left")
#: The subset of test rows whose label only the weak modality carries.
HARD = "hard"


def class_vectors(rng: np.random.Generator, num_classes: int, dim: int) -> np.ndarray:
    """``(num-classes, dim)`` orthonormal rows: the first columns of the Q of a Gaussian matrix's QR."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q[:, :num_classes].T.copy()


def draw_split(
    rng: np.random.Generator,
    n: int,
    num_classes: int,
    vectors: tuple[np.ndarray, np.ndarray],
    *,
    num_patches: int,
    noise: float,
    strong_amp: float,
    strong_present: float,
    weak_amp: float,
    weak_present: float,
    weak_sign_flip: bool,
    random_position: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One split: ``(m0, m1, y, m0_has_signal)`` with ``m0``, ``m1`` of shape ``(n, P, d)``."""
    y = rng.permutation(np.arange(n) % num_classes)
    dim = vectors[0].shape[1]
    out = []
    masks = []
    for r, (amp, present) in enumerate(((strong_amp, strong_present), (weak_amp, weak_present))):
        x = noise * rng.standard_normal((n, num_patches, dim))
        has = rng.random(n) < present
        sign = rng.choice([-1.0, 1.0], size=n) if (r == 1 and weak_sign_flip) else np.ones(n)
        where = rng.integers(0, num_patches, size=n) if random_position else np.zeros(n, dtype=np.int64)
        x[np.arange(n), where] += (has * sign * amp)[:, None] * vectors[r][y]
        out.append(x.astype(np.float32))
        masks.append(has)
    return out[0], out[1], y.astype(np.int64), masks[0]


@register_dataset(
    "competition",
    description="generated: strong linear m0 vs weak sign-ambiguous m1 (modality competition, Huang et al. 2022)",
    encoders={"vector": "mlp", "series": "cnn1d"},
)
def load_competition(
    *,
    data_dir: str | None = None,
    seed: int = 0,
    num_classes: Annotated[int, Interval(int, 2, None, closed="left")] = 4,
    num_patches: Annotated[int, POSITIVE_INT] = 4,
    patch_dim: Annotated[int, Interval(int, 2, None, closed="left")] = 16,
    num_train: Annotated[int, POSITIVE_INT] = 2000,
    num_test: Annotated[int, POSITIVE_INT] = 2000,
    noise: Annotated[float, Interval(float, 0.0, None, closed="neither")] = 1.0,
    strong_amp: Annotated[float, NON_NEGATIVE_FLOAT] = 4.0,
    strong_present: Annotated[float, FRACTION] = 0.95,
    weak_amp: Annotated[float, NON_NEGATIVE_FLOAT] = 2.5,
    weak_present: Annotated[float, FRACTION] = 1.0,
    weak_sign_flip: bool = True,
    test_strong_present: Annotated[float, Interval(float, -1.0, 1.0, closed="both")] = -1.0,
    signal_position: Annotated[str, Options("fixed", "random")] = "fixed",
    kind: Annotated[str, Options("vector", "series")] = "vector",
) -> Dataset:
    """The competition generator (module docstring); the same data for every run (``seed`` fixed at 0).

    Parameters
    ----------
    num_classes:
        Number of classes (at most ``patch-dim``).
    num_patches:
        Patches per modality.
    patch_dim:
        Values per patch.
    num_train, num_test:
        Rows of the train and the test split.
    noise:
        Standard deviation of the Gaussian noise on every value.
    strong_amp:
        Signal amplitude of the strong modality m0.
    strong_present:
        Share of train rows (and of test rows, unless test-strong-present) whose m0 carries the signal.
    weak_amp:
        Signal amplitude of the weak modality m1: the gap knob (4 = as strong as m0, 2 = a large gap).
    weak_present:
        Share of rows whose m1 carries the signal.
    weak_sign_flip:
        m1's signal has a random sign per row (no linear read-out); false = the negative control (a
        plain mean shift).
    test_strong_present:
        Share of test rows whose m0 carries the signal; negative = strong-present. Below
        strong_present: the shift variant.
    signal_position:
        fixed (patch 0) or random (a random patch per row and modality; use kind=series).
    kind:
        vector ((P*d,) inputs, MLP) or series ((d, P): d channels x P positions, 1-D CNN).
    """
    if num_classes > patch_dim:
        raise ValueError(
            f"dataset.num-classes ({num_classes}) must be at most dataset.patch-dim ({patch_dim}): "
            "each class needs its own orthonormal signal vector"
        )
    rng = np.random.default_rng(seed)
    vectors = (class_vectors(rng, num_classes, patch_dim), class_vectors(rng, num_classes, patch_dim))
    common = dict(
        num_patches=num_patches,
        noise=noise,
        strong_amp=strong_amp,
        weak_amp=weak_amp,
        weak_present=weak_present,
        weak_sign_flip=bool(weak_sign_flip),
        random_position=signal_position == "random",
    )
    test_present = strong_present if test_strong_present < 0 else test_strong_present
    train = draw_split(rng, num_train, num_classes, vectors, strong_present=strong_present, **common)
    test = draw_split(rng, num_test, num_classes, vectors, strong_present=test_present, **common)
    shape = (num_patches * patch_dim,) if kind == "vector" else (patch_dim, num_patches)

    def tensors(split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
        m0, m1, y, _ = split
        view = (lambda x: x.reshape(len(x), -1)) if kind == "vector" else (lambda x: x.transpose(0, 2, 1))
        return {
            "m0": torch.from_numpy(np.ascontiguousarray(view(m0))),
            "m1": torch.from_numpy(np.ascontiguousarray(view(m1))),
            "y": torch.from_numpy(y),
        }

    return Dataset(
        name="competition",
        modalities=[ModalitySpec("m0", shape, kind), ModalitySpec("m1", shape, kind)],
        class_names=[f"class{c}" for c in range(num_classes)],
        train=tensors(train),
        test=tensors(test),
        notes={"hard-test-rows": str(int((~test[3]).sum())), "test-strong-present": f"{test_present:g}"},
        test_subsets={HARD: ~test[3]},
        probe_modalities=("m1",),
    )
