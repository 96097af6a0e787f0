"""Sustained Boosting with Adaptive Classifier Assignment ("AUG", Jiang et al., NeurIPS 2025).

Method: docs/methods/boost.md §2 and §5; reference code ``njustkmg/NeurIPS25-AUG``
(``train_CREMAD.py``, ``model/AudioVideo.py``).

Every modality ``m`` owns ``n-max`` pre-allocated *configurable classifiers*
``h^m_j(u) = W_out ReLU(A^m_j u + c^m_j) + b_out`` (``A^m_j``, ``c^m_j`` under ``heads.<m>``), all sharing
one output layer ``(W_out, b_out)`` stored as ``fusion.boost_out`` so that it aggregates with the
shared group. Only the first ``n_m`` slots of modality ``m`` are *active*; the cumulative logits are
``Z^m_t = sum_{j<=t} h^m_j(u^m)``. The server, not the clients, decides when a modality gets one more
active slot, so every client keeps the same model shape (docs/methods/boost.md §4).

Why one module of this size: one objective: the boosting loss, the adaptive classifier assignment
and its server half share the classifiers' state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, TensorDict
from fedmm.objectives.base import Objective, RoundContext
from fedmm.objectives.registry import register_objective
from fedmm.params import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Checked, Interval, Options, Search

#: Key of the active-slot counts in the server's extras (one int per modality, canonical order).
ACTIVE_KEY = "boost-active"


def conf_key(modality: str) -> str:
    """Fact key of a client's summed target-class confidence for ``modality``."""
    return f"boost-conf-{modality}"


def count_key(modality: str) -> str:
    """Fact key of the number of samples behind :func:`conf_key`."""
    return f"boost-count-{modality}"


class BoostClassifiers(nn.Module):
    """The ``n-max`` Layer1 slots of one modality: slot ``j`` maps ``u -> ReLU(A_j u + c_j)``.

    Parameters
    ----------
    embed_dim:
        Width of the modality's encoder features ``u``.
    hidden_dim:
        Width of the hidden layer between ``A_j`` and the shared output layer.
    n_max:
        Number of pre-allocated slots.
    """

    def __init__(self, embed_dim: int, hidden_dim: int, n_max: int) -> None:
        super().__init__()
        self.slots = nn.ModuleList(nn.Linear(embed_dim, hidden_dim) for _ in range(n_max))
        for layer in self.slots:  # the reference code's init for a new classifier
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def hidden(self, u: torch.Tensor, j: int, trainable: bool = True) -> torch.Tensor:
        """``ReLU(A_j u + c_j)``; with ``trainable=False`` the slot's own parameters get no gradient
        (gradients still flow to ``u`` and, through the caller, to the shared output layer)."""
        layer = self.slots[j]
        if trainable:
            return F.relu(layer(u))
        return F.relu(F.linear(u, layer.weight.detach(), layer.bias.detach()))


@dataclass
class BoostOutputs:
    """Logits of one modality with ``n`` active classifiers.

    ``total`` is ``Z_n``; ``previous`` is ``Z_{n-1}`` (``None`` when ``n == 1``); ``newest`` is ``h_n``.
    """

    total: torch.Tensor
    previous: torch.Tensor | None
    newest: torch.Tensor


def boosting_loss(out: BoostOutputs, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The code-faithful sustained-boosting loss of one modality (docs/methods/boost.md §2).

    ``CE(Z_1, y)`` for one classifier; otherwise
    ``CE(Z_n, y) + CE(Z_{n-1}, y) + CE(h_n, y - lam * y * sg(softmax(Z_{n-1})))``, where the last
    (residual) term equals ``-(1 - lam * p_prev_y) * log softmax(h_n)_y`` averaged over the batch.
    """
    if out.previous is None:
        return F.cross_entropy(out.total, y)
    p_prev_y = out.previous.detach().softmax(dim=1).gather(1, y[:, None]).squeeze(1)
    log_q_y = out.newest.log_softmax(dim=1).gather(1, y[:, None]).squeeze(1)
    residual = -((1.0 - lam * p_prev_y) * log_q_y).mean()
    return F.cross_entropy(out.total, y) + F.cross_entropy(out.previous, y) + residual


@register_objective("boost")
class SustainedBoosting(Objective):
    """Sustained boosting with adaptive classifier assignment, as a federated local objective.

    Local training (per batch, for every trained modality in canonical order): the modality's
    boosting loss -> backward -> optimizer step -> zero grad, so the shared output layer is updated
    once per modality and the next modality's loss sees the updated layer (MLA-style alternating
    unimodal steps). There is no fused loss: ``fusion.linear`` stays untrained under this objective.

    Clients sum the target-class probability of ``Z^m_{n_m}`` (train mode, before each step) and
    report it with the sample count; the server aggregates these and, on its decision rounds (a
    tenth of training apart by default, see ``assign-interval``), activates one more classifier for
    the least confident modality from the next round's training on (see :meth:`server_observe`).

    Inference: ``z = sum_m alpha_m Z^m_{n_m}`` over the modalities present in the batch, the weights
    renormalised over them (a one-modality batch gives that modality's own ``Z^m_{n_m}``).
    """

    needs_heads: ClassVar[bool] = False
    #: ``lambda`` is a Python keyword: the config name ``lambda`` sets the field ``lam``.
    param_aliases: ClassVar[dict[str, str]] = {"lambda": "lam"}

    @dataclass
    class Params(Checked):
        """Parameters of ``boost``.

        Parameters
        ----------
        lam:
            ``lambda`` (config name ``lambda``) of the residual target ``y - lambda * y * sg(p_prev)``, in ``[0, 1]``
            (0.5 in the released code; the paper searches {0.1, 0.2, 0.33, 0.5, 1.0}).
        n_max:
            Pre-allocated classifiers per modality (docs/methods/boost.md §3: about 11 = 1 base + 10 additions).
        hidden_dim:
            Width of the hidden layer of every classifier; 0 means ``embed-dim // 2`` (the reference
            code uses 512 -> 256).
        sigma:
            Target confidence ratio of the compared pair (1.0 in the code).
        tau:
            Half-width of the no-change band around ``sigma`` (0.01 in the code).
        assign_interval:
            Epochs between classifier-assignment decisions as a fraction of the run's training
            (``T = num-server-rounds x local-epochs`` local epochs), in ``(0, 1]``. The reference
            decides after epoch 0 and then after every ``c``-th epoch, ``c = epochs / 10``; here
            ``c = max(1, floor(assign-interval * T))``, and since the server decides once per round,
            round ``r`` decides when it is round 1 or its epochs ``(r - 1) E .. r E - 1`` end a
            ``c``-epoch interval (``floor(r E / c) > floor((r - 1) E / c)``). Default 0.1, as the
            reference (20 rounds of 2 epochs: rounds 1, 2, 4, ..., 20).
        assign_every:
            An explicit interval in rounds instead of ``assign-interval``: decisions after round 1
            and every ``assign-every``-th round. 0 (default) = not set; setting it together with a
            non-default ``assign-interval`` is an error.
        train_added_heads:
            ``False`` (released code): classifiers ``j >= 2`` keep their initial ``A_j``, ``c_j`` (the
            reference optimizer never sees them) yet still pass gradients to the encoder and the
            shared output layer. ``True`` (paper text): every active classifier trains.
        freeze_previous_heads:
            Only with ``train-added-heads=True``: stage-wise boosting, i.e. only the newest active
            classifier's ``A``, ``c`` train and the older ones are frozen.
        merge_weights:
            Inference weight of each modality in canonical order; empty means equal weights (the
            code's ``merge_alpha`` 0.4/0.6 is audio/video, i.e. ``[0.4, 0.6]`` for CREMA-D).
        decision_window:
            Which confidences a decision reads: ``since-last`` (default) the mean over every
            report since the previous decision; ``last-epoch`` (the reference, NeurIPS25-AUG
            ``train_CREMAD.py`` lines 96 and 220: the sums of the epoch just trained) only the
            decision round's reports, each client summing its last local epoch only.
        """

        lam: Annotated[float, FRACTION, Search(0.1, 1.0)] = 0.5
        n_max: Annotated[int, Interval(int, 1, None, closed="left")] = 11
        hidden_dim: Annotated[int, NON_NEGATIVE_INT] = 0
        sigma: Annotated[float, POSITIVE, Search(0.1, 10.0, log=True)] = 1.0
        tau: Annotated[float, NON_NEGATIVE, Search(1e-3, 0.1, log=True)] = 0.01
        assign_interval: Annotated[float, Interval(float, 0.0, 1.0, closed="right"), Search(0.05, 0.5)] = 0.1
        assign_every: Annotated[int, NON_NEGATIVE_INT] = 0
        train_added_heads: bool = False
        freeze_previous_heads: bool = False
        merge_weights: Annotated[list[float], POSITIVE] = field(default_factory=list)
        decision_window: Annotated[str, Options("since-last", "last-epoch")] = "since-last"

        def validate(self) -> None:
            """``tau < sigma``, one way of setting the interval, and a frozen head only when heads train."""
            if not self.tau < self.sigma:
                raise ValueError(f"boost: tau must be in [0, sigma), got tau={self.tau}, sigma={self.sigma}")
            if self.assign_every and self.assign_interval != SustainedBoosting.Params.default("assign_interval"):
                raise ValueError(
                    "boost: set the assignment interval either as a fraction (assign-interval) or in rounds "
                    "(assign-every), not both"
                )
            if self.freeze_previous_heads and not self.train_added_heads:
                raise ValueError(
                    "boost: freeze-previous-heads=True trains only the newest classifier, which "
                    "train-added-heads=False never trains; set train-added-heads=True"
                )

    params: Params

    def __init__(self, params: SustainedBoosting.Params | None = None) -> None:
        super().__init__(params)
        self.modalities: list[str] = []
        #: Active classifier count per modality, used by :meth:`outputs` and :meth:`predict`: on a
        #: client the round's counts from the server's extras, on the server those the global model
        #: was last trained with (see :meth:`server_observe`).
        self.active: dict[str, int] = {}
        self._conf: dict[str, float] = {}
        self._count: dict[str, int] = {}
        # server side
        #: ``(round, modality)`` of every assignment decision: taken after that round, it takes
        #: effect from the next round's training (:meth:`active_in_round`).
        self.decisions: list[tuple[int, str]] = []
        self._observed_round = 0
        # sums since the last assignment decision
        self._window_conf: dict[str, float] = {}
        self._window_count: dict[str, float] = {}

    # -- model ---------------------------------------------------------------------------------
    def extend_model(self, model: nn.Module) -> None:
        """Add ``n-max`` classifier slots per modality under ``heads.<m>`` and the shared output
        layer as ``fusion.boost_out``."""
        p = self.params
        modalities = list(model.modalities)
        if p.merge_weights and len(p.merge_weights) != len(modalities):
            raise ValueError(
                f"boost: merge-weights has {len(p.merge_weights)} entries but the model has "
                f"{len(modalities)} modalities {modalities}"
            )
        hidden = p.hidden_dim or max(1, model.embed_dim // 2)
        for m in modalities:
            model.heads[m] = BoostClassifiers(model.embed_dim, hidden, p.n_max)
        out = nn.Linear(hidden, model.num_classes)
        nn.init.xavier_normal_(out.weight)
        nn.init.zeros_(out.bias)
        model.fusion.add_module("boost_out", out)
        self.modalities = modalities
        self.active = {m: 1 for m in modalities}

    def _trainable(self, j: int, n: int) -> bool:
        if self.params.freeze_previous_heads:
            return j == n - 1
        return j == 0 or self.params.train_added_heads

    def outputs(self, model: nn.Module, modality: str, u: torch.Tensor, n: int | None = None) -> BoostOutputs:
        """Cumulative logits of ``modality`` from its features ``u`` with ``n`` (default: active)
        classifiers; inactive slots are never evaluated, so they get no gradient."""
        n = self.active.get(modality, 1) if n is None else n
        slots: BoostClassifiers = model.heads[modality]
        out_layer: nn.Linear = model.fusion.boost_out
        total: torch.Tensor | None = None
        previous = None
        newest = None
        for j in range(n):
            newest = out_layer(slots.hidden(u, j, self._trainable(j, n)))
            previous = total
            total = newest if total is None else total + newest
        assert total is not None and newest is not None
        return BoostOutputs(total=total, previous=previous, newest=newest)

    def predict(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        feats = model.encode(batch)
        present = [m for m in model.modalities if m in feats]
        weights = self._merge_weights(model.modalities)
        norm = sum(weights[m] for m in present)
        return sum((weights[m] / norm) * self.outputs(model, m, feats[m]).total for m in present)

    def _merge_weights(self, modalities: list[str]) -> dict[str, float]:
        if self.params.merge_weights:
            return dict(zip(modalities, self.params.merge_weights, strict=True))
        return {m: 1.0 for m in modalities}

    # -- server side ---------------------------------------------------------------------------
    def active_in_round(self, server_round: int) -> dict[str, int]:
        """The active classifier counts of round ``server_round``: those its training uses and
        every evaluation of the model it produces. One per modality plus one per decision taken
        after an earlier round, so a decision taken after round ``r`` takes effect from round
        ``r + 1``'s training and no evaluation sees a classifier before a round has trained it
        (the reference evaluates an epoch before it adds a classifier)."""
        counts = {m: 1 for m in self.modalities}
        for decided_after, m in self.decisions:
            if decided_after < server_round:
                counts[m] += 1
        return counts

    def server_extras(self, server_round: int) -> dict[str, Any]:
        """``boost-active``: :meth:`active_in_round` of ``server_round``, for the round's training
        and for evaluations of the model it produces (a probe before round ``r``'s training
        evaluates round ``r - 1``'s model and asks for round ``r - 1``)."""
        active = self.active_in_round(server_round)
        return {ACTIVE_KEY: [int(active[m]) for m in self.modalities]}

    def decides(self, server_round: int) -> bool:
        """Whether an assignment decision follows round ``server_round`` (see ``assign-interval``
        and ``assign-every``); never after round 0, the update pass of divfl/cmsfed."""
        if server_round < 1:
            return False
        if server_round == 1:
            return True
        p = self.params
        if p.assign_every:
            return server_round % p.assign_every == 0
        if self.schedule is None:
            raise RuntimeError(
                "boost: the server half needs the run's schedule to place its decisions "
                "(fedmm.workspace.objective_of sets objective.schedule), or an explicit assign_every"
            )
        epochs = self.schedule.local_epochs
        interval = max(1, math.floor(p.assign_interval * self.schedule.total_epochs + 1e-9))
        return (server_round * epochs) // interval > ((server_round - 1) * epochs) // interval

    def server_observe(self, server_round: int, facts: list[tuple[int, dict[str, Any]]]) -> None:
        """Aggregate the clients' confidence sums and, on decision rounds, decide a classifier.

        The global model is now round ``server_round``'s, so :attr:`active` (the central
        evaluation's counts) becomes :meth:`active_in_round` of that round, the counts it was
        trained with. A decision is recorded in :attr:`decisions` and takes effect from the next
        round's training. Decision rounds: :meth:`decides`. The decision uses the mean confidence
        ``c_m = sum S^m / sum n^m`` over all reports since the previous decision (with
        ``decision-window = "last-epoch"``: over the decision round's reports only). Of the
        strongest ``s`` and weakest ``w`` modality, take the one earlier in canonical order as
        ``i`` and the other as ``k`` and let ``r = c_i / c_k``: ``r > sigma + tau`` gives ``k``
        one more classifier, ``r < sigma - tau`` gives ``i`` one (for two modalities this is the
        reference rule with ``r = S^a / S^v``; with ``sigma = 1`` it always strengthens the weakest
        modality). A modality already at ``n-max`` gets nothing.
        """
        if not self.modalities:
            raise RuntimeError("boost: server_observe before extend_model (the server builds the model first)")
        self.active = self.active_in_round(server_round)
        self._observed_round = server_round
        if self.params.decision_window == "last-epoch":
            self._window_conf, self._window_count = {}, {}  # only the latest round's reports count
        for _, f in facts:
            for m in self.modalities:
                if count_key(m) in f and float(f[count_key(m)]) > 0:
                    self._window_conf[m] = self._window_conf.get(m, 0.0) + float(f[conf_key(m)])
                    self._window_count[m] = self._window_count.get(m, 0.0) + float(f[count_key(m)])
        if not self.decides(server_round):
            return  # not a decision round (round 0, the update pass, never is): its facts count towards the next
        target = self.assignment(self._window_conf, self._window_count)
        self._window_conf, self._window_count = {}, {}
        if target is not None:
            self.decisions.append((server_round, target))

    def server_state(self) -> dict[str, Any]:
        return {
            "decisions": json.dumps(self.decisions),
            "round": self._observed_round,
            "window": json.dumps([self._window_conf, self._window_count]),
        }

    def load_server_state(self, state: dict[str, Any]) -> None:
        if "decisions" not in state:
            raise ValueError(
                "boost: this checkpoint holds classifier counts without the rounds of their decisions (written "
                "by an older fedmm, which applied a decision before the round's evaluation); it cannot be resumed"
            )
        self.decisions = [(int(r), str(m)) for r, m in json.loads(str(state["decisions"]))]
        self._observed_round = int(state["round"])
        self.active = self.active_in_round(self._observed_round)
        self._window_conf, self._window_count = json.loads(str(state["window"]))

    def assignment(self, conf: dict[str, float], count: dict[str, float]) -> str | None:
        """The modality that gets the next classifier given summed confidences and counts, or
        ``None`` (ratio inside the band, fewer than two modalities reported, or cap reached)."""
        means = {m: conf[m] / count[m] for m in self.modalities if count.get(m, 0.0) > 0}
        if len(means) < 2:
            return None
        strongest = max(means, key=lambda m: (means[m], -self.modalities.index(m)))
        weakest = min(means, key=lambda m: (means[m], self.modalities.index(m)))
        if strongest == weakest:
            return None
        first, second = sorted((strongest, weakest), key=self.modalities.index)
        p = self.params
        if means[second] == 0.0:
            target = second
        else:
            ratio = means[first] / means[second]
            if ratio > p.sigma + p.tau:
                target = second
            elif ratio < p.sigma - p.tau:
                target = first
            else:
                return None
        return target if self.active[target] < p.n_max else None

    # -- client side ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """With ``decision-window = "last-epoch"`` the confidence sums restart every local epoch, so
        the round reports its last epoch's."""
        super().begin_epoch(epoch)
        if self.params.decision_window == "last-epoch":
            self._conf, self._count = {}, {}

    def begin_round(self, model: nn.Module, data: TensorDict, ctx: RoundContext) -> None:
        """Copy the server's active counts from ``ctx.extras`` and reset the confidence sums."""
        super().begin_round(model, data, ctx)
        if not self.modalities:
            self.modalities = list(model.modalities)
            self.active = {m: 1 for m in self.modalities}
        if ACTIVE_KEY in ctx.extras:
            counts = [int(c) for c in ctx.extras[ACTIVE_KEY]]
            if len(counts) != len(self.modalities) or not all(1 <= c <= self.params.n_max for c in counts):
                raise ValueError(
                    f"boost: server sent {ACTIVE_KEY}={counts}; expected {len(self.modalities)} counts in "
                    f"[1, {self.params.n_max}] for {self.modalities}"
                )
            self.active = dict(zip(self.modalities, counts, strict=True))
        self._conf = {}
        self._count = {}

    def loss(self, model: nn.Module, batch: TensorDict) -> torch.Tensor:
        """Sum of the boosting losses of the batch's modalities (no steps in between; for
        evaluation — training uses :meth:`train_step`)."""
        y = batch[LABEL_KEY]
        feats = model.encode({m: batch[m] for m in self.trained_modalities(model, batch)})
        return sum(boosting_loss(self.outputs(model, m, u), y, self.params.lam) for m, u in feats.items())

    def train_step(self, model: nn.Module, batch: TensorDict, optimizer: torch.optim.Optimizer) -> float:
        """One alternating step per trained modality at the round's precision (forward, loss and
        confidence under its autocast).

        Returns the mean over the trained modalities of ``CE(Z^m_{n_m}, y)``, the cross-entropy of
        the cumulative logits that inference uses (before the step), not of the optimised boosting
        loss: that loss sums three terms once ``n_m >= 2`` against one for ``n_m = 1``, so a
        round's ``train/loss`` would roughly triple when a modality gets its second classifier and
        could not be compared with round 1's (``loss-growth`` in ``summary.json``)."""
        y = batch[LABEL_KEY]
        precision = self.precision
        losses = []
        for m in self.trained_modalities(model, batch):
            # set_to_none matters: a zero (not None) gradient would still move the other modality's
            # parameters through momentum and weight decay.
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                out = self.outputs(model, m, model.encoders[m](batch[m]))
                loss = boosting_loss(out, y, self.params.lam)
                with torch.no_grad():
                    total = out.total.float()
                    p_y = total.softmax(dim=1).gather(1, y[:, None]).sum()
                    reported = F.cross_entropy(total, y)
            self._conf[m] = self._conf.get(m, 0.0) + float(p_y)
            self._count[m] = self._count.get(m, 0) + int(y.shape[0])
            precision.backward(loss, optimizer)
            self.adjust_gradients(model, batch)
            precision.step(optimizer)
            losses.append(float(reported))
        optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses) if losses else 0.0

    def end_round(self, model: nn.Module, data: TensorDict) -> dict[str, float | list[float]]:
        """``boost-conf-<m>`` (summed target-class probability) and ``boost-count-<m>`` per trained
        modality."""
        facts: dict[str, float | list[float]] = {}
        for m, c in self._conf.items():
            facts[conf_key(m)] = c
            facts[count_key(m)] = float(self._count[m])
        return facts
