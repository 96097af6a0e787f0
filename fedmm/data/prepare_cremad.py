"""``fedmm prepare cremad``: build the ``Image-01-FPS`` frame folders (and optionally ``AudioWAV``)
that the ``cremad`` loader reads, from the corpus' original videos.

Frames are extracted at ``fps`` frames per second (1 in the protocol) as JPEG files
``<out>/Image-01-FPS/<clip>/00001.jpg, 00002.jpg, ...``, with ``ffmpeg`` when it is on ``PATH``
(``-vf fps=1``), else with PyAV (the first decoded frame at or after every ``k / fps`` seconds).
torchvision 0.29 has no video decoder of its own. Each clip is written to a temporary folder and
renamed when complete, so an interrupted run never leaves a half-filled clip folder behind; clips
whose folder exists are skipped unless ``overwrite``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmm.data.cremad_layout import AUDIO_DIR, FRAMES_DIR

VIDEO_SUFFIXES = (".flv", ".mp4", ".avi", ".mkv")
INSTALL_HINT = (
    "no video decoder found: install ffmpeg (e.g. `apt-get install ffmpeg`, `conda install ffmpeg`) "
    "or PyAV (`pip install av`), then rerun `fedmm prepare cremad`"
)


@dataclass
class PrepareReport:
    """What :func:`prepare_cremad` did.

    Parameters
    ----------
    decoder:
        ``"ffmpeg"`` or ``"av"``.
    extracted, skipped:
        Clips whose frames were written now / already present.
    audio_copied:
        WAV files copied into ``AudioWAV``.
    failed:
        ``(clip, reason)`` for every video that could not be decoded.
    """

    decoder: str
    extracted: int = 0
    skipped: int = 0
    audio_copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def find_decoder() -> str:
    """``"ffmpeg"`` when the ffmpeg binary is on PATH, else ``"av"`` when PyAV is installed.

    Raises ``ImportError`` saying what to install when neither is available.
    """
    if shutil.which("ffmpeg"):
        return "ffmpeg"
    if importlib.util.find_spec("av") is not None:
        return "av"
    raise ImportError(INSTALL_HINT)


def extract_ffmpeg(video: Path, folder: Path, fps: float) -> None:
    """Write the frames of ``video`` at ``fps`` per second into ``folder`` with the ffmpeg binary."""
    binary = shutil.which("ffmpeg") or "ffmpeg"
    cmd = [
        binary,
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(video),
        "-vf",
        f"fps={fps}",
        "-q:v",
        "2",
        str(folder / "%05d.jpg"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg exited with {done.returncode}: {done.stderr.strip()[-300:]}")


def extract_av(video: Path, folder: Path, fps: float) -> None:
    """Write the frames of ``video`` at ``fps`` per second into ``folder`` with PyAV: the first
    frame at or after each time ``k / fps``."""
    import av

    count = 0
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frame.time is None or frame.time + 1e-6 < count / fps:
                continue
            frame.to_image().save(folder / f"{count + 1:05d}.jpg", quality=95)
            count += 1


EXTRACTORS: dict[str, Callable[[Path, Path, float], None]] = {"ffmpeg": extract_ffmpeg, "av": extract_av}


def prepare_cremad(
    video_dir: str | Path,
    out: str | Path,
    *,
    audio_dir: str | Path | None = None,
    fps: float = 1.0,
    overwrite: bool = False,
    decoder: str | None = None,
) -> PrepareReport:
    """Extract frames for every video of ``video_dir`` into ``<out>/Image-01-FPS/<clip>/``.

    Parameters
    ----------
    video_dir:
        CREMA-D's ``VideoFlash`` folder (``<clip>.flv``; ``.mp4``/``.avi``/``.mkv`` are accepted too).
    out:
        The data directory the ``cremad`` loader will read (config key ``data-dir``).
    audio_dir:
        CREMA-D's ``AudioWAV`` folder; its ``*.wav`` files are copied to ``<out>/AudioWAV`` (existing
        files are kept). ``None`` leaves the audio to the user.
    fps:
        Frames per second to extract (> 0; the protocol's folder name ``Image-01-FPS`` means 1).
    overwrite:
        Re-extract clips whose frame folder already exists.
    decoder:
        ``"ffmpeg"`` or ``"av"``; ``None`` picks the first available (:func:`find_decoder`).

    Raises
    ------
    FileNotFoundError
        ``video_dir`` (or ``audio_dir``) is missing or holds no videos (WAV files).
    ImportError
        No video decoder is installed (the message says what to install).
    """
    video_dir, out = Path(video_dir).expanduser(), Path(out).expanduser()
    if fps <= 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    if not video_dir.is_dir():
        raise FileNotFoundError(f"--video-dir {str(video_dir)!r} does not exist; pass CREMA-D's VideoFlash folder")
    videos = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(
            f"--video-dir {str(video_dir)!r} holds no {'/'.join(VIDEO_SUFFIXES)} files; pass "
            "CREMA-D's VideoFlash folder"
        )
    wavs: list[Path] = []
    if audio_dir is not None:
        audio_dir = Path(audio_dir).expanduser()
        wavs = sorted(audio_dir.glob("*.wav")) if audio_dir.is_dir() else []
        if not wavs:
            raise FileNotFoundError(
                f"--audio-dir {str(audio_dir)!r} holds no .wav files; pass CREMA-D's AudioWAV folder"
            )
    if decoder is None:
        decoder = find_decoder()
    elif decoder not in EXTRACTORS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {sorted(EXTRACTORS)}")
    extract = EXTRACTORS[decoder]
    report = PrepareReport(decoder=decoder)

    frames_root = out / FRAMES_DIR
    frames_root.mkdir(parents=True, exist_ok=True)
    for video in videos:
        target = frames_root / video.stem
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            report.skipped += 1
            continue
        tmp = Path(tempfile.mkdtemp(dir=frames_root, prefix=f".{video.stem}-"))
        try:
            extract(video, tmp, fps)
            if not any(tmp.glob("*.jpg")):
                raise RuntimeError("the decoder wrote no frames")
        except Exception as err:  # one broken video must not stop the other 7,441
            shutil.rmtree(tmp, ignore_errors=True)
            report.failed.append((video.stem, str(err)))
            continue
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        report.extracted += 1

    if wavs:
        audio_out = out / AUDIO_DIR
        audio_out.mkdir(parents=True, exist_ok=True)
        for wav in wavs:
            dest = audio_out / wav.name
            if not dest.exists():
                shutil.copy2(wav, dest)
                report.audio_copied += 1
    return report


def prepare_command(parser: Any) -> Callable[[Any], int]:
    """``fedmm prepare cremad``: add its arguments to ``parser`` (an ``argparse`` parser) and
    return the function that runs it on the parsed arguments (exit code 1 when a clip failed)."""
    parser.add_argument("--video-dir", type=Path, required=True, help="CREMA-D's VideoFlash folder (*.flv)")
    parser.add_argument("--audio-dir", type=Path, help="CREMA-D's AudioWAV folder, copied to OUT/AudioWAV")
    parser.add_argument("--out", type=Path, required=True, help="data directory to write (config key data-dir)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second to extract (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract clips that already have frames")

    def run(args: Any) -> int:
        rep = prepare_cremad(args.video_dir, args.out, audio_dir=args.audio_dir, fps=args.fps, overwrite=args.overwrite)
        print(
            f"{args.out}: frames extracted for {rep.extracted} clips with {rep.decoder}, {rep.skipped} already "
            f"present, {rep.audio_copied} WAV files copied, {len(rep.failed)} failed"
        )
        for clip, reason in rep.failed[:20]:
            print(f"  failed {clip}: {reason}", file=sys.stderr)
        return 1 if rep.failed else 0

    return run
