"""Training throughput of fedmm's local loop against a plain PyTorch loop, per precision, on one device.

Both train the CREMA-D model of the experiment configs: fedmm's MultimodalNet with the
``resnet18-audio`` encoder on (1, 257, 188) spectrograms and the ``resnet18-video`` encoder on
(1, 3, 224, 224) frame clips, embed-dim 512, concat fusion, 6 classes. They start from copies of the
same initial model and train on the same random data, held in memory on the device, with the same
batch size, number of steps and SGD settings (lr 1e-3, momentum 0.9, weight decay 1e-4), fused
cross-entropy loss. fedmm is ``fedmm.training.train_local`` with the ``ce`` objective (one local
epoch over the data); the plain loop is hand-written: model.train(), a randperm per epoch,
index_select batches, zero_grad, forward and loss under autocast (fp16 with a GradScaler), backward,
step, and it reads the loss back only once at the end (fedmm reads it after every step).

Each measurement is timed after a warm-up call (cuDNN autotuning and the caching allocator), with
the device synchronised around it; plain and fedmm alternate and the median of ``--repeats`` is
reported. cuDNN benchmark mode is on for both. Prints samples/second of both, the ratio fedmm/plain,
and each precision's speedup over fp32.

Imports only torch (+ torchvision for the encoders) and fedmm's torch-only modules, so it runs on a
machine without Flower or Ray. Usage:

    python experiments/bench/gpu_throughput.py                   # CUDA when present: fp32, bf16, fp16
    python experiments/bench/gpu_throughput.py --small           # smoke run on a CPU in under a minute
    python experiments/bench/gpu_throughput.py --precisions fp32,bf16 --batch-size 64 --steps 30
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from fedmm.data.base import LABEL_KEY, ModalitySpec, TensorDict
from fedmm.models.net import ModelConfig, MultimodalNet
from fedmm.objectives.base import PRECISIONS, Objective, RoundContext
from fedmm.training import TrainConfig, build_model, resolve_device, train_local

NUM_CLASSES = 6
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 1e-4
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cremad_specs(audio_shape: tuple[int, ...], visual_shape: tuple[int, ...]) -> list[ModalitySpec]:
    """The two CREMA-D modalities as fedmm.data.cremad declares them, with the given shapes.

    Parameters
    ----------
    audio_shape:
        One spectrogram, ``(1, freq, time)``.
    visual_shape:
        One clip, ``(frames, 3, height, width)``.
    """
    return [ModalitySpec("audio", audio_shape, "spectrogram"), ModalitySpec("visual", visual_shape, "frames")]


def cremad_model(specs: list[ModalitySpec]) -> tuple[MultimodalNet, Objective]:
    """The CREMA-D model of the experiment configs (seeded) and its ``ce`` objective.

    Parameters
    ----------
    specs:
        The modalities (:func:`cremad_specs`).
    """
    objective = Objective()
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=512, encoders={"audio": "resnet18-audio", "visual": "resnet18-video"})
    return build_model(specs, NUM_CLASSES, config, objective), objective


def random_data(specs: list[ModalitySpec], rows: int, device: torch.device, seed: int) -> TensorDict:
    """``rows`` random examples of every modality in ``specs`` and random labels, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    data = {s.name: torch.randn(rows, *s.shape, generator=g) for s in specs}
    data[LABEL_KEY] = torch.randint(0, NUM_CLASSES, (rows,), generator=g)
    return {k: v.to(device) for k, v in data.items()}


def plain_epoch(model: MultimodalNet, data: TensorDict, batch_size: int, precision: str, seed: int) -> float:
    """One epoch of a hand-written training loop over ``data``; returns the mean batch loss."""
    device = data[LABEL_KEY].device
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    n = int(data[LABEL_KEY].shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    total = torch.zeros((), device=device)
    batches = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.index_select(0, idx) for k, v in data.items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=HALF.get(precision, torch.bfloat16), enabled=precision in HALF):
            loss = F.cross_entropy(model(batch), batch[LABEL_KEY])
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        total += loss.detach().float()
        batches += 1
    return float(total) / batches


def fedmm_epoch(
    model: MultimodalNet, objective: Objective, data: TensorDict, batch_size: int, precision: str, seed: int
) -> float:
    """One local epoch of :func:`fedmm.training.train_local` over ``data``; returns its mean loss."""
    device = data[LABEL_KEY].device
    ctx = RoundContext(server_round=1, num_rounds=1, modalities=list(model.modalities), device=device)
    config = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        seed=seed,
        precision=precision,
    )
    return train_local(model, data, objective, ctx, config).loss


def timed(run: Callable[[], float], device: torch.device) -> tuple[float, float]:
    """Seconds and result of ``run()``, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    loss = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, loss


def measure(
    base: MultimodalNet,
    objective: Objective,
    data: TensorDict,
    warmup: TensorDict,
    batch_size: int,
    precision: str,
    repeats: int,
) -> dict[str, float]:
    """Samples/second of the plain loop and of fedmm at ``precision`` (median of ``repeats``)."""
    device = data[LABEL_KEY].device
    rows = int(data[LABEL_KEY].shape[0])
    plain_model = copy.deepcopy(base).to(device)
    fedmm_model = copy.deepcopy(base).to(device)
    plain_epoch(plain_model, warmup, batch_size, precision, seed=0)
    fedmm_epoch(fedmm_model, objective, warmup, batch_size, precision, seed=0)
    seconds: dict[str, list[float]] = {"plain": [], "fedmm": []}
    losses: dict[str, float] = {}
    for r in range(repeats):
        s, losses["plain"] = timed(lambda: plain_epoch(plain_model, data, batch_size, precision, seed=r + 1), device)
        seconds["plain"].append(s)
        s, losses["fedmm"] = timed(
            lambda: fedmm_epoch(fedmm_model, objective, data, batch_size, precision, seed=r + 1), device
        )
        seconds["fedmm"].append(s)
    return {
        "plain": rows / statistics.median(seconds["plain"]),
        "fedmm": rows / statistics.median(seconds["fedmm"]),
        "plain-loss": losses["plain"],
        "fedmm-loss": losses["fedmm"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=1, help="frames per clip (the configs use 1)")
    parser.add_argument(
        "--precisions", default="", help="comma-separated subset of fp32,bf16,fp16; default fp32,bf16 plus fp16 on CUDA"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0 = torch's default (1 with "
        "--small: a busy small machine loses most of its time to oversubscribed threads)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="32x24 spectrograms, 32x32 frames, batch 4, 2 steps, 1 repeat: a CPU smoke run",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    audio_shape: tuple[int, ...] = (1, 257, 188)
    visual_shape: tuple[int, ...] = (args.num_frames, 3, 224, 224)
    if args.small:
        audio_shape, visual_shape = (1, 32, 24), (args.num_frames, 3, 32, 32)
        args.batch_size, args.steps, args.warmup_steps, args.repeats = 4, 2, 1, 1
        args.threads = args.threads or 1
    if args.precisions:
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    else:
        precisions = ["fp32", "bf16", *(["fp16"] if device.type == "cuda" else [])]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or "fp32" not in precisions:
        parser.error(
            f"--precisions must be a comma-separated subset of {','.join(PRECISIONS)} including fp32, "
            f"got {args.precisions!r}"
        )
    if args.batch_size < 2 or args.steps < 1 or args.warmup_steps < 1 or args.repeats < 1:
        parser.error("--batch-size must be >= 2 and --steps, --warmup-steps, --repeats >= 1")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    specs = cremad_specs(audio_shape, visual_shape)
    base, objective = cremad_model(specs)
    data = random_data(specs, args.batch_size * args.steps, device, seed=1)
    warmup = random_data(specs, args.batch_size * args.warmup_steps, device, seed=2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    params = sum(p.numel() for p in base.parameters())
    print(
        f"# Training throughput: fedmm train_local vs a plain PyTorch loop ({device}: {name}, torch "
        f"{torch.__version__})"
    )
    print(
        f"# model: resnet18-audio {audio_shape} + resnet18-video {visual_shape}, embed-dim 512, "
        f"{NUM_CLASSES} classes, {params / 1e6:.1f} M parameters; batch {args.batch_size}, {args.steps} steps "
        f"per measurement, median of {args.repeats}\n"
    )
    print(
        "| precision | plain (samples/s) | fedmm (samples/s) | ratio fedmm/plain | plain speedup vs fp32 "
        "| fedmm speedup vs fp32 | last loss plain / fedmm |"
    )
    print("|---|---|---|---|---|---|---|")
    results: dict[str, dict[str, float]] = {}
    for precision in sorted(precisions, key=PRECISIONS.index):
        results[precision] = r = measure(base, objective, data, warmup, args.batch_size, precision, args.repeats)
        ref = results["fp32"]
        print(
            f"| {precision} | {r['plain']:.1f} | {r['fedmm']:.1f} | **{r['fedmm'] / r['plain']:.3f}** "
            f"| {r['plain'] / ref['plain']:.2f}x | {r['fedmm'] / ref['fedmm']:.2f}x "
            f"| {r['plain-loss']:.4f} / {r['fedmm-loss']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
