"""An image classifier whose processor keeps the aspect ratio (a shortest edge, no crop): each
image costs the batcher its pixels after the resize, images of different sizes in one batch run
as one forward per size, and every answer equals transformers' processor and model in-process on
that image alone. A processor of one fixed size (the bundled ViT's) costs 1 per image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.repository import CostedModel, ModelRepository
from service.worker.huggingface import resized_area
from service.worker.session import InferenceSession

pytestmark = pytest.mark.integration


def resnet_folder(folder: Path) -> Path:
    """A tiny ResNet classifier (seeded) with a shortest-edge, no-crop processor, as saved by transformers."""
    from transformers import BitImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=3,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    ResNetForImageClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    BitImageProcessor(do_center_crop=False, size={"shortest_edge": 32}).save_pretrained(folder)
    return folder


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_images_of_other_sizes_cost_their_pixels_and_run_apart(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = resnet_folder(tmp_path / "resnet")
    entry = ModelRepository().add_folder("resnet", folder)
    assert entry.spec.task == "image-classification"
    model = entry.load("cpu")
    assert isinstance(model, CostedModel)
    images = [png(64, 32, 0), png(32, 64, 1), png(80, 40, 2), png(40, 40, 3), png(64, 32, 4)]
    # 64 x 32 -> 64 x 32 (its short edge is 32 already); 80 x 40 -> 64 x 32; 40 x 40 -> 32 x 32
    assert model.costs(images) == [2048, 2048, 2048, 1024, 2048]
    outputs = InferenceSession(model).run(images)
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    reference = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    for data, got in zip(images, outputs, strict=True):
        with torch.no_grad():
            want = reference(
                **processor(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")
            )
        np.testing.assert_allclose(got, want.logits[0].numpy(), rtol=0, atol=1e-4)


def test_a_fixed_size_processor_costs_one_per_image_and_the_resize_rule() -> None:
    model = ModelRepository().get("image_classifier").load("cpu")
    assert not isinstance(model, CostedModel)  # every image costs the batcher 1
    assert resized_area(1920, 1080, {"shortest_edge": 224}) == 224 * 398
    assert resized_area(1080, 1920, {"shortest_edge": 224, "longest_edge": 300}) == 169 * 300
    assert resized_area(400, 100, {"longest_edge": 200}) == 200 * 50
