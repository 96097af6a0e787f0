"""CREMA-D (user-owned): audio log-spectrogram vs face frames, 91 actors, 6 emotions.

The data is not shipped; point the config key ``data-dir`` at a directory laid out as::

    <data-dir>/
      AudioWAV/1001_DFA_ANG_XX.wav ...        the corpus' WAV files (16 kHz mono)
      Image-01-FPS/1001_DFA_ANG_XX/*.jpg ...  frames at 1 fps, one folder per clip
      train.csv, test.csv                     optional: OGM-GE split files, lines "clip,LABEL"

``fedmm prepare cremad --video-dir <CREMA-D>/VideoFlash --audio-dir <CREMA-D>/AudioWAV --out <data-dir>``
builds the frame folders from the corpus' videos (it needs ffmpeg or PyAV).

Preprocessing follows the OGM-GE code (``dataset/CramedDataset.py`` of
https://github.com/GeWu-Lab/OGM-GE_CVPR2022; docs/methods/ogm-ge.md §1):

* **audio** (modality ``audio``, kind ``spectrogram``, shape ``(1, 257, 188)``): the WAV is read with
  ``scipy.io.wavfile`` (integer PCM scaled to [-1, 1], channels averaged), resampled to 22,050 Hz with
  ``scipy.signal.resample_poly``, tiled and cut to exactly 3 s (66,150 samples), clipped to [-1, 1],
  STFT with ``n_fft=512``, ``hop_length=353``, a periodic Hann window (librosa's default
  ``"hann"``), ``center=True`` with reflect padding (librosa < 0.10's default; librosa >= 0.10 pads
  with zeros, which only changes the two edge frames), then ``log(|S| + 1e-7)``; no normalisation.
  librosa resamples with soxr instead of a polyphase filter, so values differ slightly from OGM-GE's.
* **visual** (modality ``visual``, kind ``frames``, shape ``(num_frames, 3, S, S)``): from the
  sorted frame files of a clip, frame ``floor((i + 0.5) * n / num_frames)`` for ``i < num_frames``
  (the middle frame of each of ``num_frames`` equal parts, the test-time choice of MMPareto/Remix;
  frames repeat when a clip has fewer), resized to ``S x S`` with PIL bilinear (antialiased, as
  torchvision's ``Resize`` on PIL images) and normalised with the ImageNet mean and std.
  This is the test transform. The train transform of the reference code, RandomResizedCrop(224) +
  horizontal flip, runs on every training batch on its device (``dataset.augment``, on by default;
  :class:`fedmm.data.augment.FrameAugment`), because the data lives in memory as fixed tensors; it
  crops the resized frame rather than the original one.

Defaults: ``num_frames=1`` as OGM-GE/AUG (the lineage of the FedCMI/CMSFed code; MMPareto/Remix use
2, PMR 3), ``image_size=224``. Memory: every process that loads the full dataset holds
``7442 x (257 x 188 + num_frames x 3 x S^2) x 4`` bytes, about 5.9 GB with one 224 x 224 frame.

Decoded clips are cached as one file ``$FEDMM_CACHE_DIR/cremad-<hash>.safetensors`` (default
``~/.cache/fedmm``), keyed by the data directory, its file listing (names, sizes, mtimes) and the
preprocessing options; frames are stored as uint8, so later runs only normalise.

Why one module of this size: one dataset: layout checks, audio and frame decoding, the cache.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from fedmm.data.augment import FrameAugment
from fedmm.data.base import Dataset, ModalitySpec
from fedmm.data.cache import cache_dir, make_cache_dir
from fedmm.data.cremad_layout import AUDIO_DIR, FRAMES_DIR
from fedmm.data.registry import register_dataset
from fedmm.files import atomic_write
from fedmm.params import Interval

log = logging.getLogger(__name__)

CLASS_CODES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
CLASS_NAMES = ["neutral", "happy", "sad", "fear", "disgust", "anger"]
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
SAMPLE_RATE = 22_050
CLIP_SECONDS = 3
N_FFT, HOP = 512, 353
LOG_EPS = 1e-7
SPEC_SHAPE = (1, N_FFT // 2 + 1, 1 + CLIP_SECONDS * SAMPLE_RATE // HOP)  # (1, 257, 188)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = "cremad-v1"

LAYOUT = f"""expected layout of data-dir:
  <data-dir>/
    {AUDIO_DIR}/<clip>.wav         CREMA-D's WAV files, e.g. {AUDIO_DIR}/1001_DFA_ANG_XX.wav
    {FRAMES_DIR}/<clip>/*.jpg   frames at 1 fps, one folder per clip
    train.csv, test.csv         optional split files (OGM-GE format: lines 'clip,LABEL')
Get CREMA-D from https://github.com/CheyneyComputerScience/CREMA-D (git lfs), then build the frame
folders with: fedmm prepare cremad --video-dir <CREMA-D>/VideoFlash --audio-dir <CREMA-D>/AudioWAV --out <data-dir>
and run with --set data-dir=<data-dir>"""


# -- clip names ------------------------------------------------------------------------------------
def clip_label(clip: str) -> int:
    """Class index of a clip from its name ``<actor>_<sentence>_<emotion>_<level>`` (3rd field).

    Raises ``ValueError`` for a name without a known emotion code.
    """
    parts = clip.split("_")
    if len(parts) < 3 or parts[2] not in CLASS_CODES:
        raise ValueError(
            f"CREMA-D clip name {clip!r} has no emotion code in its 3rd field; expected names like "
            f"'1001_DFA_ANG_XX' with one of {CLASS_CODES}"
        )
    return CLASS_CODES.index(parts[2])


def clip_actor(clip: str) -> int:
    """Actor id of a clip (its first field, e.g. 1001)."""
    head = clip.split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"CREMA-D clip name {clip!r} does not start with a numeric actor id (e.g. '1001_...')")
    return int(head)


# -- audio -----------------------------------------------------------------------------------------
def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """``(samples float32 in [-1, 1], mono; sample rate)`` of a PCM or float WAV file.

    Integer PCM is scaled by its full range (as librosa does); several channels are averaged.
    """
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except ValueError as err:
        raise ValueError(f"cannot read WAV file {str(path)!r}: {err}") from None
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        if info.min == 0:  # unsigned 8-bit PCM is centred on 128
            data = (data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
        else:
            data = data.astype(np.float32) / float(-info.min)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise ValueError(f"WAV file {str(path)!r} has no samples")
    return data, int(rate)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` at ``rate`` Hz resampled to ``target`` Hz with a polyphase filter."""
    if rate == target:
        return samples
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def fixed_length(samples: np.ndarray, length: int = CLIP_SECONDS * SAMPLE_RATE) -> np.ndarray:
    """``samples`` repeated end to end and cut to exactly ``length`` (OGM-GE tiles 3 times; the
    same for clips of at least ``length / 3`` samples, and still ``length`` for shorter ones)."""
    reps = -(-length // samples.shape[0])
    return np.tile(samples, reps)[:length]


def log_spectrogram(samples: np.ndarray) -> torch.Tensor:
    """``(1, 257, 188)`` float32 ``log(|STFT| + 1e-7)`` of a 66,150-sample 22,050 Hz waveform
    (clipped to [-1, 1]; ``n_fft=512``, ``hop=353``, periodic Hann, centred, reflect padding)."""
    x = torch.from_numpy(np.clip(samples, -1.0, 1.0).astype(np.float32))
    spec = torch.stft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return torch.log(spec.abs() + LOG_EPS).unsqueeze(0)


def audio_features(path: Path) -> torch.Tensor:
    """The protocol's spectrogram of one WAV file (read, resample, tile/cut, clip, STFT, log)."""
    samples, rate = read_wav(path)
    return log_spectrogram(fixed_length(resample(samples, rate)))


# -- frames ----------------------------------------------------------------------------------------
def frame_files(folder: Path) -> list[Path]:
    """The image files of one clip's frame folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def pick_frames(count: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames out of ``count``: the middle of each of ``num_frames``
    equal parts (repeating frames when ``count < num_frames``)."""
    return [min(count - 1, int((i + 0.5) * count / num_frames)) for i in range(num_frames)]


def frames_uint8(folder: Path, num_frames: int, image_size: int) -> torch.Tensor:
    """``(num_frames, 3, image_size, image_size)`` uint8 RGB frames of one clip (bilinear resize)."""
    from PIL import Image

    files = frame_files(folder)
    if not files:
        raise ValueError(f"frame folder {str(folder)!r} has no .jpg/.png files\n{LAYOUT}")
    out = torch.empty((num_frames, 3, image_size, image_size), dtype=torch.uint8)
    for i, idx in enumerate(pick_frames(len(files), num_frames)):
        with Image.open(files[idx]) as img:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def normalise_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` frames -> float32 with the ImageNet mean/std (as ``ToTensor`` +
    ``Normalize``)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (frames.float() / 255.0 - mean) / std


# -- directory and split ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """One clip on disk: its name, WAV file and frame folder."""

    name: str
    wav: Path
    frames: Path


def scan(root: Path, *, skip_incomplete: bool) -> list[Clip]:
    """Every clip of ``root`` with a WAV file and a non-empty frame folder, sorted by name.

    Raises ``FileNotFoundError`` (with the expected layout) when ``root`` or a sub-folder is
    missing, and ``ValueError`` when clips lack frames (unless ``skip_incomplete``).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"CREMA-D data-dir {str(root)!r} does not exist\n{LAYOUT}")
    missing_dirs = [d for d in (AUDIO_DIR, FRAMES_DIR) if not (root / d).is_dir()]
    if missing_dirs:
        raise FileNotFoundError(f"CREMA-D data-dir {str(root)!r} has no {' or '.join(missing_dirs)} folder\n{LAYOUT}")
    wavs = sorted((root / AUDIO_DIR).glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"CREMA-D data-dir {str(root)!r}: {AUDIO_DIR}/ holds no .wav files\n{LAYOUT}")
    clips, incomplete = [], []
    for wav in wavs:
        folder = root / FRAMES_DIR / wav.stem
        if folder.is_dir() and frame_files(folder):
            clips.append(Clip(wav.stem, wav, folder))
        else:
            incomplete.append(wav.stem)
    if incomplete and not skip_incomplete:
        raise ValueError(
            f"CREMA-D data-dir {str(root)!r}: {len(incomplete)} of {len(wavs)} clips have a WAV file but no frames in "
            f"{FRAMES_DIR}/<clip>/ (e.g. {', '.join(incomplete[:3])}); rerun `fedmm prepare cremad` or set "
            f"dataset.skip-incomplete=true to drop them\n{LAYOUT}"
        )
    if incomplete:
        log.warning("cremad: dropped %d clips without frames (dataset.skip-incomplete)", len(incomplete))
    if not clips:
        raise ValueError(f"CREMA-D data-dir {str(root)!r} has no clip with both a WAV file and frames\n{LAYOUT}")
    for clip in clips:
        clip_label(clip.name), clip_actor(clip.name)  # noqa: B018  (validates every name up front)
    return clips


def read_split_file(path: Path) -> list[str]:
    """Clip names of an OGM-GE split file (lines ``clip,LABEL``; LABEL a code such as ``ANG`` or a
    class index), checking that LABEL agrees with the emotion in the clip name."""
    names = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            name = row[0].strip()
            if name.endswith(".wav"):
                name = name[:-4]
            expected = clip_label(name)
            if len(row) > 1 and row[1].strip():
                given = row[1].strip()
                label = int(given) if given.isdigit() else CLASS_CODES.index(given) if given in CLASS_CODES else -1
                if label != expected:
                    raise ValueError(
                        f"{str(path)!r} line {lineno}: label {given!r} does not match clip {name!r} "
                        f"(its emotion code is {CLASS_CODES[expected]}); expected lines 'clip,LABEL' "
                        f"with LABEL in {CLASS_CODES}"
                    )
            names.append(name)
    return names


def split_from_files(root: Path, clips: list[str], *, skip_incomplete: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of ``clips`` listed in ``root/train.csv`` and ``root/test.csv``."""
    where = {c: i for i, c in enumerate(clips)}
    out = []
    for name in ("train.csv", "test.csv"):
        listed = read_split_file(root / name)
        absent = [c for c in listed if c not in where]
        if absent and not skip_incomplete:
            raise ValueError(
                f"{str(root / name)!r} lists {len(absent)} clips that data-dir lacks (with WAV and "
                f"frames), e.g. {', '.join(absent[:3])}; complete the data or set "
                f"dataset.skip-incomplete=true\n{LAYOUT}"
            )
        out.append(np.array([where[c] for c in listed if c in where], dtype=np.int64))
    train, test = out
    overlap = np.intersect1d(train, test)
    if overlap.size:
        raise ValueError(
            f"train.csv and test.csv share {overlap.size} clips (e.g. {clips[overlap[0]]}); "
            "a clip must be in one split only"
        )
    if train.size == 0 or test.size == 0:
        raise ValueError(f"the split files in {str(root)!r} leave {'train' if train.size == 0 else 'test'} empty")
    return train, test


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: ``round(n_c * test_fraction)`` clips of each class (at least one
    when the class has two or more) go to test. Returns sorted row indices ``(train, test)``."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(rows.size * test_fraction))
        if rows.size >= 2:
            k = min(max(k, 1), rows.size - 1)
        test.append(rows[:k])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx).astype(np.int64)
    return train_idx, test_idx


# -- cache -----------------------------------------------------------------------------------------
def fingerprint(clips: list[Clip], num_frames: int, image_size: int) -> str:
    """Hash of the clip files (names, sizes, mtimes) and the preprocessing options."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, num_frames, image_size]).encode())
    for clip in clips:
        st = clip.wav.stat()
        frames = [(p.name, p.stat().st_size) for p in frame_files(clip.frames)]
        h.update(json.dumps([clip.name, st.st_size, st.st_mtime_ns, frames]).encode())
    return h.hexdigest()[:20]


def decode_clips(clips: list[Clip], num_frames: int, image_size: int) -> dict[str, torch.Tensor]:
    """``{"audio": (N, 1, 257, 188) float32, "frames": (N, T, 3, S, S) uint8}`` for ``clips``."""
    audio = torch.empty((len(clips), *SPEC_SHAPE), dtype=torch.float32)
    frames = torch.empty((len(clips), num_frames, 3, image_size, image_size), dtype=torch.uint8)
    for i, clip in enumerate(clips):
        audio[i] = audio_features(clip.wav)
        frames[i] = frames_uint8(clip.frames, num_frames, image_size)
    return {"audio": audio, "frames": frames}


def cached_clips(root: Path, clips: list[Clip], num_frames: int, image_size: int) -> dict[str, torch.Tensor]:
    """Decoded clips from ``$FEDMM_CACHE_DIR/cremad-<hash>.safetensors`` (clip names in its
    metadata; no pickle); decoded and written atomically on a miss."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    path = cache_dir() / f"cremad-{key}-{fingerprint(clips, num_frames, image_size)}.safetensors"
    names = [c.name for c in clips]
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored_names = json.loads((f.metadata() or {}).get("clips", "[]"))
            if stored_names == names:
                stored = load_file(path)
                return {"audio": stored["audio"], "frames": stored["frames"]}
        except (SafetensorError, OSError, ValueError, KeyError) as err:  # a damaged cache is rebuilt
            log.warning("cremad: ignoring unreadable cache %s (%s)", path, err)
    make_cache_dir()  # a FEDMM_CACHE_DIR that is a file is (before the decoding) one error naming the variable
    decoded = decode_clips(clips, num_frames, image_size)
    tensors = {k: v.contiguous() for k, v in decoded.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"clips": json.dumps(names)}))
    return decoded


def prepare_command(parser: Any) -> Callable[[Any], int]:
    """``fedmm prepare cremad`` (:func:`fedmm.data.prepare_cremad.prepare_command`, imported when used)."""
    from fedmm.data.prepare_cremad import prepare_command as command

    return command(parser)


# -- loader ----------------------------------------------------------------------------------------
@register_dataset(
    "cremad",
    description="CREMA-D audio spectrogram vs face frames, 91 actors, 6 emotions "
    "(user-owned: set data-dir; see `fedmm prepare cremad`)",
    encoders={"spectrogram": "resnet18-audio", "frames": "resnet18-video"},
    user_owned=True,
    prepare=prepare_command,
)
def load_cremad(
    *,
    data_dir: str | None = None,
    seed: int = 0,
    num_frames: Annotated[int, Interval(int, 1, None, closed="left")] = 1,
    image_size: Annotated[int, Interval(int, 8, None, closed="left")] = 224,
    split_seed: int = 0,
    test_fraction: Annotated[float, Interval(float, 0.0, 1.0, closed="neither")] = 0.1,
    skip_incomplete: bool = False,
    augment: bool = True,
) -> Dataset:
    """CREMA-D from ``data_dir`` (config key ``data-dir``), preprocessed as in the module docstring.

    Parameters
    ----------
    data_dir:
        The directory in the layout shown in :data:`LAYOUT`.
    seed:
        Unused (the split has its own ``split_seed``); accepted as every loader takes it.
    num_frames:
        Frames per clip (``dataset.num-frames``; 1 as OGM-GE, 2 as MMPareto/Remix, 3 as PMR).
    image_size:
        Side of the square frames (``dataset.image-size``; 224 in the protocol, smaller for quick runs).
    split_seed:
        Seed of the stratified split used when ``data_dir`` has no ``train.csv``/``test.csv``.
    test_fraction:
        Fraction of each class held out as the central test set by that split (744/7442 ~ 0.1 in OGM-GE).
    skip_incomplete:
        Drop clips without frames (and split-file entries without data) instead of failing.
    augment:
        Apply the protocol's train transform, RandomResizedCrop + horizontal flip, to the frames of
        every training batch (``dataset.augment``; :class:`fedmm.data.augment.FrameAugment`).

    ``train_groups`` holds the actor id of every train clip (the natural partition).
    """
    if not data_dir:
        raise FileNotFoundError(f"dataset 'cremad' is user-owned: set the config key data-dir\n{LAYOUT}")
    root = Path(data_dir).expanduser()
    clips = scan(root, skip_incomplete=bool(skip_incomplete))
    names = [c.name for c in clips]
    labels = np.array([clip_label(n) for n in names], dtype=np.int64)
    actors = np.array([clip_actor(n) for n in names], dtype=np.int64)
    has_files = [(root / f).is_file() for f in ("train.csv", "test.csv")]
    if any(has_files) and not all(has_files):
        raise FileNotFoundError(
            f"{str(root)!r} has only one of train.csv and test.csv; add the other or remove it "
            "to use the seeded stratified split"
        )
    if all(has_files):
        train_idx, test_idx = split_from_files(root, names, skip_incomplete=bool(skip_incomplete))
        split = "train.csv/test.csv"
    else:
        train_idx, test_idx = stratified_split(labels, float(test_fraction), int(split_seed))
        split = f"stratified test_fraction={test_fraction} split_seed={split_seed}"
    decoded = cached_clips(root, clips, num_frames, image_size)

    def part(idx: np.ndarray) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(idx)
        return {
            "audio": decoded["audio"].index_select(0, rows),
            "visual": normalise_frames(decoded["frames"].index_select(0, rows)),
            "y": torch.from_numpy(labels[idx]),
        }

    return Dataset(
        name="cremad",
        modalities=[
            ModalitySpec("audio", SPEC_SHAPE, "spectrogram"),
            ModalitySpec("visual", (num_frames, 3, image_size, image_size), "frames"),
        ],
        class_names=list(CLASS_NAMES),
        train=part(train_idx),
        test=part(test_idx),
        train_groups=actors[train_idx].copy(),
        notes={"data-dir": str(root), "split": split, "clips": str(len(clips))},
        train_augment=FrameAugment("visual") if augment else None,
    )
