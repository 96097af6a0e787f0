"""The batch-level RandomResizedCrop + flip and its use in local training."""

import torch

from fedmm.data.augment import FrameAugment, random_resized_crop_flip
from fedmm.data.base import ModalitySpec
from fedmm.models.net import ModelConfig
from fedmm.objectives import RoundContext, build_objective
from fedmm.training import TrainConfig, build_model, train_local


def test_full_crops_are_the_image_or_its_mirror():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop_flip(torch.cat([images] * 8), g, scale=(1.0, 1.0), ratio=(1.5, 1.5))
    for i, img in enumerate(out):  # area 1 at the image's own aspect ratio: nothing is cut
        src = images[i % 2]
        assert torch.allclose(img, src, atol=1e-4) or torch.allclose(img, src.flip(-1), atol=1e-4)
    mirrored = sum(not torch.allclose(img, images[i % 2], atol=1e-4) for i, img in enumerate(out))
    assert 0 < mirrored < 16  # some are mirrored, some are not


def test_crops_differ_per_image_keep_the_shape_and_repeat_with_the_seed():
    images = torch.rand(5, 3, 16, 16).repeat(2, 1, 1, 1)
    a = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.allclose(a[:5], a[5:])  # the same images get different crops
    # a small crop magnifies: the values of an output come from a part of its input
    assert (a.amin(dim=(1, 2, 3)) >= images.amin(dim=(1, 2, 3)) - 1e-5).all()


def test_frame_augment_transforms_only_its_modality_of_every_training_batch():
    seen = []

    class Recording(FrameAugment):
        def __call__(self, batch, generator):
            seen.append(sorted(batch))
            return super().__call__(batch, generator)

    specs = [ModalitySpec("audio", (4,), "vector"), ModalitySpec("visual", (1, 3, 8, 8), "vector")]
    objective = build_objective("ce")
    model = build_model(specs, 2, ModelConfig(embed_dim=4, encoders={"audio": "mlp", "visual": "mlp"}), objective)
    data = {"audio": torch.randn(12, 4), "visual": torch.randn(12, 1, 3, 8, 8), "y": torch.arange(12) % 2}
    batch = {k: v[:4] for k, v in data.items()}
    out = Recording("visual")(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["audio"], batch["audio"]) and not torch.equal(out["visual"], batch["visual"])
    seen.clear()
    train_local(
        model,
        data,
        objective,
        RoundContext(server_round=1, num_rounds=1, modalities=["audio", "visual"]),
        TrainConfig(epochs=2, batch_size=4, lr=0.01),
        augment=Recording("visual"),
    )
    assert len(seen) == 6 and all(keys == ["audio", "visual", "y"] for keys in seen)  # 3 batches x 2 epochs
