"""CREMA-D: loader (labels, split, groups), preprocessing, cache, errors, prepare, encoders, one round.

Everything runs on a generated fixture in the CREMA-D layout: 3 actors x 6 emotions, each clip a
0.5-s 16-kHz sine tone whose frequency encodes the class, and two solid-colour JPEG frames.
"""

from __future__ import annotations

import math
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmm.data import cremad
from fedmm.data.cremad import CLASS_CODES, IMAGENET_MEAN, IMAGENET_STD, load_cremad
from fedmm.data.registry import dataset_entry
from fedmm.models.encoders import build_encoder

ACTORS = (1001, 1002, 1003)
SENTENCES = ("DFA", "IEO", "TIE")
RATE = 16_000


def frame_colours(label: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The two solid frames of a clip of class ``label``: reddish then bluish, green encodes the
    class (identical frames in every clip would make batch-norm statistics degenerate)."""
    return (255, 40 * label, 0), (0, 40 * label, 255)


#: The protocol's label map, written out here so that a change in the loader's map fails the tests.
PROTOCOL_LABELS = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}


def tone_hz(label: int) -> float:
    """Frequency of class ``label``'s tone: a whole number of periods in 0.5 s, so tiling is seamless."""
    return 400.0 * (label + 1)


def clip_names() -> list[str]:
    return [f"{a}_{SENTENCES[i]}_{code}_XX" for i, a in enumerate(ACTORS) for code in CLASS_CODES]


def write_wav(path: Path, freq: float, seconds: float = 0.5) -> None:
    t = np.arange(int(RATE * seconds)) / RATE
    pcm = (0.5 * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def write_frames(folder: Path, label: int = 0) -> None:
    folder.mkdir(parents=True)
    for i, colour in enumerate(frame_colours(label), 1):
        Image.new("RGB", (24, 20), colour).save(folder / f"{i:05d}.jpg", quality=95)


def write_cremad_dir(root: Path) -> Path:
    """The fixture in the CREMA-D layout under ``root``: ``AudioWAV/*.wav`` and ``Image-01-FPS/<clip>/``."""
    (root / "AudioWAV").mkdir(parents=True)
    for name in clip_names():
        label = PROTOCOL_LABELS[name.split("_")[2]]
        write_wav(root / "AudioWAV" / f"{name}.wav", tone_hz(label))
        write_frames(root / "Image-01-FPS" / name, label)
    return root


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    return write_cremad_dir(tmp_path / "CREMA-D")


def test_loader_labels_split_and_actor_groups(data_dir: Path) -> None:
    d = load_cremad(data_dir=str(data_dir), image_size=16)
    assert d.modality_names == ["audio", "visual"]
    assert [m.kind for m in d.modalities] == ["spectrogram", "frames"]
    assert d.spec("audio").shape == (1, 257, 188) and d.spec("visual").shape == (1, 3, 16, 16)
    assert d.class_names == ["neutral", "happy", "sad", "fear", "disgust", "anger"]
    assert all(cremad.clip_label(f"1001_DFA_{code}_XX") == y for code, y in PROTOCOL_LABELS.items())
    n_train, n_test = len(d.train["y"]), len(d.test["y"])
    # 3 clips per class, test_fraction 0.1: one clip of each class is held out
    assert (n_train, n_test) == (12, 6)
    assert sorted(d.test["y"].tolist()) == list(range(6))
    assert np.bincount(d.train["y"].numpy(), minlength=6).tolist() == [2] * 6
    assert d.train["audio"].shape == (12, 1, 257, 188) and d.train["visual"].shape == (12, 1, 3, 16, 16)
    assert d.train["audio"].dtype == torch.float32 and d.train["visual"].dtype == torch.float32
    assert d.train_groups is not None and set(d.train_groups.tolist()) <= set(ACTORS)
    assert len(d.train_groups) == n_train
    # the label of a row is the emotion code of its clip: the tone's peak bin says which class it is
    peak = d.train["audio"][:, 0].mean(dim=2).argmax(dim=1)
    expected = torch.tensor([round(tone_hz(int(y)) * 512 / 22_050) for y in d.train["y"]])
    assert torch.equal(peak, expected)
    # the split is a function of split_seed
    again = load_cremad(data_dir=str(data_dir), image_size=16)
    other = load_cremad(data_dir=str(data_dir), image_size=16, split_seed=1)
    assert torch.equal(again.test["audio"], d.test["audio"])
    assert not torch.equal(other.test["audio"], d.test["audio"])


def test_split_files_in_ogm_ge_format_decide_the_split(data_dir: Path) -> None:
    names = clip_names()
    test_names = [n for n in names if n.startswith("1003_")]
    train_names = [n for n in names if n not in test_names]
    # OGM-GE's files: no header, "clip,LABEL" with LABEL the emotion code; a BOM is tolerated
    (data_dir / "train.csv").write_text(
        "\n".join(f"{n},{n.split('_')[2]}" for n in train_names) + "\n", encoding="utf-8-sig"
    )
    (data_dir / "test.csv").write_text("\n".join(f"{n},{n.split('_')[2]}" for n in test_names) + "\n")
    d = load_cremad(data_dir=str(data_dir), image_size=16)
    assert len(d.train["y"]) == 12 and len(d.test["y"]) == 6
    assert set(d.train_groups.tolist()) == {1001, 1002}
    assert d.notes["split"] == "train.csv/test.csv"

    (data_dir / "test.csv").write_text(
        f"{test_names[0]},HAP\n" if "_HAP_" not in test_names[0] else f"{test_names[0]},SAD\n"
    )
    with pytest.raises(ValueError, match="does not match clip"):
        load_cremad(data_dir=str(data_dir), image_size=16)


def test_spectrogram_of_a_known_sine_peaks_at_its_bin() -> None:
    for freq in (1000.0, 2500.0):
        x = np.sin(2 * math.pi * freq * np.arange(RATE // 2) / RATE).astype(np.float32)
        samples = cremad.fixed_length(cremad.resample(x, RATE))
        assert samples.shape == (66_150,)
        spec = cremad.log_spectrogram(samples)
        assert spec.shape == (1, 257, 188)
        assert int(spec[0].mean(dim=1).argmax()) == round(freq * 512 / 22_050)
    # frames against a direct numpy STFT: reflect-padded by 256, hop 353, periodic Hann, n_fft 512
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1.5, 1.5, 66_150).astype(np.float32)  # values beyond [-1, 1] are clipped
    spec = cremad.log_spectrogram(noise)[0]
    padded = np.pad(np.clip(noise, -1, 1).astype(np.float64), 256, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    for k in (0, 1, 100, 187):
        ref = np.log(np.abs(np.fft.rfft(padded[k * 353 : k * 353 + 512] * window)) + 1e-7)
        assert np.allclose(spec[:, k].numpy(), ref, atol=1e-3), k
    # log(|S| + 1e-7) of silence is log(1e-7) everywhere
    silent = cremad.log_spectrogram(np.zeros(66_150, dtype=np.float32))
    assert torch.allclose(silent, torch.full_like(silent, math.log(1e-7)))


def test_frames_are_picked_resized_and_imagenet_normalised(data_dir: Path) -> None:
    d = load_cremad(data_dir=str(data_dir), image_size=16, num_frames=2)
    v = d.train["visual"]
    assert v.shape == (12, 2, 3, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    for row, y in enumerate(d.train["y"].tolist()):
        for t, colour in enumerate(frame_colours(y)):
            expected = (torch.tensor(colour) / 255 - mean) / std
            assert torch.allclose(v[row, t].mean(dim=(1, 2)), expected, atol=0.1), (row, t)
    assert (
        cremad.pick_frames(5, 1) == [2] and cremad.pick_frames(4, 2) == [1, 3] and cremad.pick_frames(1, 3) == [0, 0, 0]
    )


def test_second_load_reads_the_cache_and_options_change_the_key(data_dir: Path, monkeypatch, tmp_path: Path) -> None:
    first = load_cremad(data_dir=str(data_dir), image_size=16)
    files = list((tmp_path / "cache").glob("cremad-*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the clips")

    monkeypatch.setattr(cremad, "audio_features", no_decoding)
    monkeypatch.setattr(cremad, "frames_uint8", no_decoding)
    second = load_cremad(data_dir=str(data_dir), image_size=16)
    for split in ("train", "test"):
        for key in ("audio", "visual", "y"):
            assert torch.equal(first.__dict__[split][key], second.__dict__[split][key])
    with pytest.raises(AssertionError, match="decoded although"):
        load_cremad(data_dir=str(data_dir), image_size=8)  # another option: another cache file
    write_wav(data_dir / "AudioWAV" / "1001_ITH_SAD_XX.wav", 300.0)
    write_frames(data_dir / "Image-01-FPS" / "1001_ITH_SAD_XX")
    with pytest.raises(AssertionError, match="decoded although"):
        load_cremad(data_dir=str(data_dir), image_size=16)  # new clip: the cache is stale


def test_missing_or_incomplete_directory_errors_show_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="set the config key data-dir") as err:
        load_cremad(data_dir=None)
    assert "AudioWAV/<clip>.wav" in str(err.value) and "fedmm prepare cremad" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_cremad(data_dir=str(tmp_path / "nowhere"))
    assert "Image-01-FPS/<clip>/*.jpg" in str(err.value)
    root = tmp_path / "partial"
    (root / "AudioWAV").mkdir(parents=True)
    write_wav(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", 400.0)
    with pytest.raises(FileNotFoundError, match="no Image-01-FPS folder"):
        load_cremad(data_dir=str(root))
    (root / "Image-01-FPS").mkdir()
    with pytest.raises(ValueError, match="1 of 1 clips have a WAV file but no frames") as err:
        load_cremad(data_dir=str(root))
    assert "dataset.skip-incomplete" in str(err.value)
    write_wav(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav", 400.0)
    write_frames(root / "Image-01-FPS" / "1001_DFA_XYZ_XX")
    with pytest.raises(ValueError, match="no emotion code"):
        load_cremad(data_dir=str(root), skip_incomplete=True)


def test_registry_passes_dataset_options(data_dir: Path) -> None:
    from fedmm.data import load_dataset

    with pytest.raises(ValueError, match="dataset.num-frames"):
        load_dataset("cremad", data_dir=str(data_dir), num_frame=2)
    d = load_dataset("cremad", data_dir=str(data_dir), image_size=12, num_frames=3)
    assert d.spec("visual").shape == (3, 3, 12, 12)


def test_encoders_output_shapes_and_defaults() -> None:
    audio = build_encoder("resnet18-audio", (1, 257, 188), 512).eval()
    assert audio.net.conv1.in_channels == 1 and isinstance(audio.proj, torch.nn.Identity)
    assert audio(torch.randn(1, 1, 257, 188)).shape == (1, 512)
    small = build_encoder("resnet18-audio", (1, 64, 48), 64)
    assert isinstance(small.proj, torch.nn.Linear) and small(torch.randn(3, 1, 64, 48)).shape == (3, 64)
    video = build_encoder("resnet18-video", (2, 3, 32, 32), 512)
    assert video.net.conv1.in_channels == 3
    x = torch.randn(3, 2, 3, 32, 32)
    video.eval()
    out = video(x)
    assert out.shape == (3, 512)
    # frames are folded into the batch and averaged: the clip feature is the mean of its frames'
    per_frame = torch.stack([video.net(x[:, t]) for t in range(2)], dim=1).mean(dim=1)
    assert torch.allclose(out, per_frame, atol=1e-5)
    with pytest.raises(ValueError, match="frames, channels, height, width"):
        build_encoder("resnet18-video", (3, 32, 32), 64)
    with pytest.raises(ValueError, match="channels, freq, time"):
        build_encoder("resnet18-audio", (257, 188), 64)

    from fedmm.data.base import ModalitySpec
    from fedmm.models.net import ModelConfig, MultimodalNet

    specs = [ModalitySpec("audio", (1, 64, 48), "spectrogram"), ModalitySpec("visual", (1, 3, 32, 32), "frames")]
    encoders = dataset_entry("cremad").default_encoders(specs)
    net = MultimodalNet(specs, 6, ModelConfig(embed_dim=512, encoders=encoders))
    assert type(net.encoders["audio"]).__name__ == "ResNet18Audio"
    assert type(net.encoders["visual"]).__name__ == "ResNet18Video"
    logits = net({"audio": torch.randn(2, 1, 64, 48), "visual": torch.randn(2, 1, 3, 32, 32)})
    assert logits.shape == (2, 6)


def test_local_round_with_the_resnet18_encoders_on_the_fixture(data_dir: Path) -> None:
    from fedmm.models.net import ModelConfig
    from fedmm.objectives import build_objective
    from fedmm.objectives.base import RoundContext
    from fedmm.training import TrainConfig, build_model, evaluate, train_local

    d = load_cremad(data_dir=str(data_dir), image_size=16)
    # the encoders are shape-agnostic: a 64 x 48 corner of each spectrogram keeps the test fast on CPU
    train = {**d.train, "audio": d.train["audio"][..., :64, :48].contiguous()}
    test = {**d.test, "audio": d.test["audio"][..., :64, :48].contiguous()}
    objective = build_objective("ce", {})
    torch.manual_seed(0)
    encoders = dataset_entry("cremad").default_encoders(d.modalities)
    model = build_model(d.modalities, d.num_classes, ModelConfig(embed_dim=512, encoders=encoders), objective)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RoundContext(server_round=1, num_rounds=1, modalities=["audio", "visual"])
    result = train_local(model, train, objective, ctx, TrainConfig(epochs=1, batch_size=12, lr=1e-3))
    assert math.isfinite(result.loss) and result.num_steps == 1 and result.num_examples == 12
    after = model.state_dict()
    assert not torch.equal(before["encoders.audio.net.conv1.weight"], after["encoders.audio.net.conv1.weight"])
    assert not torch.equal(
        before["encoders.visual.net.layer4.1.conv2.weight"], after["encoders.visual.net.layer4.1.conv2.weight"]
    )
    metrics = evaluate(model, test, objective)
    assert {"acc", "acc/audio", "acc/visual"} <= set(metrics) and math.isfinite(metrics["loss"])


def test_prepare_without_a_decoder_says_what_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    from fedmm.cli import main
    from fedmm.data import prepare_cremad as prep

    videos = tmp_path / "VideoFlash"
    videos.mkdir()
    (videos / "1001_DFA_ANG_XX.flv").write_bytes(b"not a video")
    monkeypatch.setattr(prep.shutil, "which", lambda name: None)
    monkeypatch.setattr(prep.importlib.util, "find_spec", lambda name: None)
    code = main(["prepare", "cremad", "--video-dir", str(videos), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install ffmpeg" in err and "pip install av" in err
    assert not (tmp_path / "out").exists()


FAKE_FFMPEG = """#!{python}
# Stands in for ffmpeg: writes two solid frames to the output pattern, fails on a video named *BAD*.
import sys
from PIL import Image
args = sys.argv[1:]
src, pattern = args[args.index("-i") + 1], args[-1]
assert args[args.index("-vf") + 1] == "fps=1.0", args
if "BAD" in src:
    sys.stderr.write("invalid data found when processing input")
    sys.exit(1)
for i in (1, 2):
    Image.new("RGB", (24, 20), (0, 255, 0)).save(pattern % i)
"""


def test_prepare_extracts_frames_and_copies_audio_into_a_loadable_directory(tmp_path: Path, monkeypatch) -> None:
    from fedmm.data.prepare_cremad import prepare_cremad

    monkeypatch.setenv("FEDMM_CACHE_DIR", str(tmp_path / "cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    videos, audio = tmp_path / "VideoFlash", tmp_path / "AudioWAV"
    videos.mkdir()
    audio.mkdir()
    names = [f"1001_DFA_{code}_XX" for code in CLASS_CODES] + [f"1002_IEO_{code}_XX" for code in CLASS_CODES]
    for name in names:
        (videos / f"{name}.flv").write_bytes(b"fake")
        write_wav(audio / f"{name}.wav", 400.0)
    (videos / "1003_BAD_ANG_XX.flv").write_bytes(b"broken")

    out = tmp_path / "data"
    rep = prepare_cremad(videos, out, audio_dir=audio)
    assert rep.decoder == "ffmpeg" and rep.extracted == 12 and rep.audio_copied == 12
    assert [c for c, _ in rep.failed] == ["1003_BAD_ANG_XX"] and "invalid data" in rep.failed[0][1]
    assert sorted(p.name for p in (out / "Image-01-FPS").iterdir()) == sorted(names)  # no temp folder left
    assert sorted(p.name for p in (out / "Image-01-FPS" / names[0]).iterdir()) == ["00001.jpg", "00002.jpg"]
    again = prepare_cremad(videos, out, audio_dir=audio)
    assert again.skipped == 12 and again.extracted == 0 and again.audio_copied == 0

    d = load_cremad(data_dir=str(out), image_size=8)
    assert len(d.train["y"]) + len(d.test["y"]) == 12


@pytest.mark.integration
def test_one_round_simulation_on_the_fixture(data_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    from fedmm.config import load_config
    from fedmm.simulation import simulate

    run = load_config(
        None,
        [
            "dataset=cremad",
            f"data-dir={str(data_dir)!r}",
            "dataset.image-size=16",
            "encoder.audio=mlp",
            "encoder.visual=mlp",
            "embed-dim=16",
            "partition=natural",
            "allocation=multi-ratio",
            "multi-ratio=1.0",
            "num-server-rounds=1",
            "selection=all",
            "local-epochs=1",
            "batch-size=4",
            "lr=0.001",
            "client-num-cpus=1",
            "device=cpu",
        ],
    )
    summary = simulate(run, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1]
    assert {"test/acc/audio", "test/acc/visual"} <= set(rounds.columns)
    clients = pd.read_csv(tmp_path / "run" / "clients.csv")
    # one client per training actor; the validation split holds one of the 3 out
    assert len(clients) == 2 and (clients["status"] == "ok").all()
    assert "val/acc" in rounds.columns
    assert 0.0 <= summary["final"]["test/acc"] <= 1.0


def test_a_damaged_cache_file_is_rebuilt(data_dir: Path, tmp_path: Path) -> None:
    first = load_cremad(data_dir=str(data_dir), image_size=16)
    (cache,) = (tmp_path / "cache").glob("cremad-*.safetensors")
    cache.write_bytes(b"not a safetensors file")
    again = load_cremad(data_dir=str(data_dir), image_size=16)
    assert torch.equal(first.train["audio"], again.train["audio"])
    assert cache.stat().st_size > 100  # rewritten
