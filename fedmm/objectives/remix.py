"""Data Remixing (Ma, Chen, Deng, ICML 2025) as a federated local objective.

Method: docs/methods/remix.md §2 and §5; reference code ``MatthewMaxy/Remix_ICML2025``
(``train.py``, ``models/models.py``).

After the warm-up (the first sixth of the run's local epochs by default), every local epoch
starts with an eval-mode pass over the client's training set. Each sample goes to the modality
whose own head separates it worst (smallest ``KL(p^m || uniform)``), and the epoch then runs on
unimodal batches: a batch holds one modality only, so the shared fusion layer never sees
mixed-modality gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict, num_examples
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import FRACTION, NON_NEGATIVE, Checked, Interval, Search

#: Probabilities are clipped here before the log, as in the reference code.
PROB_FLOOR = 1e-9


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """``KL(p || U_K)`` in bits per row: ``sum_c p_c log2(K p_c)`` with ``p`` clipped at 1e-9."""
    p = probs.clamp(min=PROB_FLOOR, max=1.0)
    k = probs.shape[1]
    return (p * torch.log2(p * k)).sum(dim=1)


def split_batches(index: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive chunks of ``index``; a trailing 1-row chunk joins the previous one (a batch of
    one breaks batch-norm) and a subset of one row gives no batch at all."""
    chunks = [c for c in torch.split(index, batch_size) if c.numel() > 0]
    if chunks and chunks[-1].numel() == 1:
        last = chunks.pop()
        if chunks:
            chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def interleaved_order(counts: list[int]) -> list[int]:
    """An even interleaving of ``counts[i]`` batches of group ``i``: batch ``b`` of group ``i`` sits
    at position ``(b + 0.5) / counts[i]``; ties go to the earlier group.

    >>> interleaved_order([2, 2])
    [0, 1, 0, 1]
    >>> interleaved_order([3, 1])
    [0, 0, 1, 0]
    """
    keys = [((b + 0.5) / n, i) for i, n in enumerate(counts) for b in range(n)]
    return [i for _, i in sorted(keys)]


@register_objective("remix")
class DataRemixing(Objective):
    """Data Remixing: per-epoch sample -> modality assignment and unimodal batches.

    Model: the fusion head plus a linear head ``h_m`` per modality (``heads.<m>``).
    Loss of a batch over its modalities ``S``: ``CE(g(slots of S, others zero), y) + w sum_{m in S}
    CE(h_m(u_m), y)`` with ``w = warmup-head-weight`` during warm-up (joint batches, ``S`` = all
    trained modalities) and ``w = head-weight`` afterwards (unimodal batches, ``|S| = 1``).
    Inference: the fusion head with absent slots zero-filled (the default ``predict``).

    A client training one modality runs exactly the remix loss on that modality every epoch
    (there is nothing to reassign). A trained modality absent from a unimodal batch is not run
    through its encoder at all (the reference code runs it and zeroes its features, which also
    updates its batch-norm statistics).
    """

    needs_heads: ClassVar[bool] = True

    @dataclass
    class Params(Checked):
        """Parameters of ``remix``.

        Parameters
        ----------
        warmup:
            The fraction of the run's training that trains jointly on all modalities (warm-up):
            training is ``T = num-server-rounds x local-epochs`` local epochs (see
            :class:`~fedmm.objectives.base.Schedule`), and local epoch ``g`` (0-based, counted over
            the run) is a warm-up epoch when ``g / T < warmup``. It acts per local epoch, so one
            round can warm up and then remix. Default 1/6: the reference warms up for 10 of 60
            epochs. 0 remixes from the first epoch.
        warmup_rounds:
            An explicit warm-up in server rounds instead of the fraction: rounds
            ``1 .. warmup-rounds`` warm up (0: no warm-up). -1 (default) = not set, use
            ``warmup``; setting it together with a non-default ``warmup`` is an error.
        warmup_head_weight:
            Weight of each per-modality head CE during warm-up (reference ``alpha = beta = 0.5``);
            0 gives plain joint CE on the fusion head.
        head_weight:
            Weight of the head CE of a unimodal batch after warm-up (reference
            ``gamma1 = gamma2 = 1``).
        interleave:
            ``True``: spread the unimodal batches of the epoch evenly over it. ``False``: all batches
            of one modality, then the next, in canonical order (the reference runs all visual
            batches then all audio ones, so the epoch's last updates always favour audio).
        """

        warmup: Annotated[float, FRACTION, Search(0.0, 0.5)] = 1 / 6
        warmup_rounds: Annotated[int, Interval(int, -1, None, closed="left")] = -1
        warmup_head_weight: Annotated[float, NON_NEGATIVE, Search(0.1, 1.0)] = 0.5
        head_weight: Annotated[float, NON_NEGATIVE, Search(0.1, 2.0)] = 1.0
        interleave: bool = True

        def validate(self) -> None:
            """Refuse both ways of setting the warm-up."""
            if self.warmup_rounds >= 0 and self.warmup != DataRemixing.Params.default("warmup"):
                raise ValueError(
                    "remix: set the warm-up either as a fraction (warmup) or in rounds (warmup-rounds), not both"
                )

    params: Params

    def __init__(self, params: DataRemixing.Params | None = None) -> None:
        super().__init__(params)
        #: Index (into the trained modalities) each local sample was assigned to in the last epoch.
        self.last_assignment: torch.Tensor | None = None
        self._assigned: dict[str, int] = {}

    def in_warmup(self) -> bool:
        """Whether the current local epoch trains jointly: it starts before the ``warmup`` fraction
        of training, or with ``warmup-rounds`` set, its round is ``<= warmup-rounds`` (the update
        pass counts as round 1). ``False`` before :meth:`begin_round`."""
        if self.ctx is None:
            return False
        if self.params.warmup_rounds >= 0:
            return self.training_round() <= self.params.warmup_rounds
        return self.progress() < self.params.warmup

    @torch.no_grad()
    def assign(self, model: nn.Module, data: TensorDict, modalities: list[str], chunk: int = 256) -> torch.Tensor:
        """Per sample, the index in ``modalities`` of the modality with the smallest
        ``KL(softmax(h_m(u_m)) || uniform)`` (eval mode; ties go to the earlier modality)."""
        was_training = model.training
        model.eval()
        try:
            kls = []
            n = num_examples(data)
            for start in range(0, n, chunk):
                part = {m: data[m][start : start + chunk] for m in modalities}
                feats = model.encode(part)
                kls.append(torch.stack([kl_to_uniform(model.heads[m](feats[m]).softmax(dim=1)) for m in modalities], 1))
            return torch.cat(kls).argmin(dim=1)
        finally:
            model.train(was_training)

    # -- hooks ---------------------------------------------------------------------------------
    def batches(
        self, model: nn.Module, data: TensorDict, epoch: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[TensorDict]:
        mods = self.trained_modalities(model, data)
        keep = {k: v for k, v in data.items() if k in mods or k == LABEL_KEY}
        if self.in_warmup() or len(mods) < 2:
            # one modality: every sample belongs to it, so a remix epoch is a plain epoch
            yield from super().batches(model, keep, epoch, batch_size, generator)
            return
        assignment = self.assign(model, keep, mods, chunk=max(batch_size, 256))
        self.last_assignment = assignment
        self._assigned = {m: int((assignment == i).sum()) for i, m in enumerate(mods)}
        groups: list[list[torch.Tensor]] = []
        for i in range(len(mods)):
            members = torch.nonzero(assignment == i).squeeze(1)
            perm = torch.randperm(members.numel(), generator=generator).to(members.device)
            groups.append(split_batches(members[perm], batch_size))
        if self.params.interleave:
            order = interleaved_order([len(g) for g in groups])
        else:
            order = [i for i, g in enumerate(groups) for _ in g]
        taken = [0] * len(groups)
        for i in order:
            idx = groups[i][taken[i]]
            taken[i] += 1
            m = mods[i]
            yield {m: keep[m].index_select(0, idx), LABEL_KEY: keep[LABEL_KEY].index_select(0, idx)}

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        weight = self.params.warmup_head_weight if self.in_warmup() else self.params.head_weight
        loss = F.cross_entropy(model.fuse(feats), y)
        if weight > 0.0:
            loss = loss + weight * sum(F.cross_entropy(model.heads[m](u), y) for m, u in feats.items())
        return loss

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """``remix-assigned-<m>``: samples assigned to each modality in the last local epoch
        (absent during warm-up and on one-modality clients)."""
        return {f"remix-assigned-{m}": float(c) for m, c in self._assigned.items()}

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        super().begin_round(model, data, ctx)
        self.last_assignment = None
        self._assigned = {}
