"""Model loading and the model stage, on tiny real checkpoints of all three families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segpipe.core.identity import image_id
from segpipe.core.items import DecodedImage, ImageFailure, ImageRef, Prediction
from segpipe.io.storage import filesystem
from segpipe.model.loading import ModelLoadError, load_model
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.decode import decode_image
from tests.support.checkpoints import (
    save_tiny_mask2former,
    save_tiny_maskformer,
    save_tiny_oneformer,
)

SAVERS = {"mask2former": save_tiny_mask2former, "oneformer": save_tiny_oneformer,
          "maskformer": save_tiny_maskformer}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {family: str(save(root / family)) for family, save in SAVERS.items()}


def images(count: int = 3, seed: int = 0) -> list[DecodedImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        out.append(DecodedImage(ImageRef(image_id(f"mem://{i}"), f"mem://{i}"), pixels, "x"))
    return out


def check_prediction(pred: Prediction | ImageFailure, image: DecodedImage) -> None:
    assert isinstance(pred, Prediction), pred
    assert pred.id_map.shape == image.pixels.shape[:2]
    assert pred.id_map.dtype == np.int32
    present = set(np.unique(pred.id_map).tolist()) - {0}
    assert present <= {s.segment_id for s in pred.segments}


@pytest.mark.parametrize("family", sorted(SAVERS))
@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_every_family_runs_every_task(checkpoints, family, task):
    segmenter = Segmenter(checkpoints[family], task=task)
    batch = images()
    preds = segmenter(batch)
    assert segmenter.loaded is not None and segmenter.loaded.family == family
    for pred, image in zip(preds, batch, strict=True):
        check_prediction(pred, image)
    if task == "semantic":
        assert all(s.score is None for p in preds for s in p.segments)
    assert sum(len(p.segments) for p in preds) > 0


def test_oneformer_receives_its_task_token(checkpoints):
    batch = images(1)
    tokens = {}
    for task in ("panoptic", "semantic"):
        segmenter = Segmenter(checkpoints["oneformer"], task=task)
        inputs = segmenter._preprocess(segmenter.setup(), batch)  # noqa: SLF001
        tokens[task] = inputs["task_inputs"]
    assert not torch.equal(tokens["panoptic"], tokens["semantic"])


def test_bf16_runs_on_the_same_code(checkpoints):
    segmenter = Segmenter(checkpoints["mask2former"], dtype="bf16")
    batch = images(2)
    assert segmenter.setup().model.dtype == torch.bfloat16
    for pred, image in zip(segmenter(batch), batch, strict=True):
        check_prediction(pred, image)


def test_out_of_memory_splits_the_batch(checkpoints):
    class SmallDevice(Segmenter):
        """Stands in for a GPU that only fits one image at a time."""

        def _run(self, batch):
            if len(batch) > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super()._run(batch)

    batch = images(4)
    split = SmallDevice(checkpoints["mask2former"])(batch)
    whole = Segmenter(checkpoints["mask2former"])(batch)
    assert len(split) == 4
    for a, b in zip(split, whole, strict=True):
        assert np.array_equal(a.id_map, b.id_map)


def test_a_missing_model_names_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no builtin model 'nope'"):
        load_model("builtin:nope")


def test_a_model_that_is_not_for_segmentation_is_refused(tmp_path):
    from transformers import SwinConfig, SwinModel

    SwinModel(SwinConfig(embed_dim=8, depths=[1], num_heads=[1])).save_pretrained(tmp_path / "swin")
    with pytest.raises(ModelLoadError, match="not a universal segmentation model"):
        load_model(str(tmp_path / "swin"))


def test_pickled_weights_load_only_when_allowed(tmp_path):
    from transformers import Mask2FormerForUniversalSegmentation

    folder = save_tiny_mask2former(tmp_path / "m")
    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickled checkpoint
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(folder))
    assert load_model(str(folder), allow_pickle_weights=True).family == "mask2former"


def test_object_store_model_is_cached_once(checkpoints, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "cache"))
    fs, _ = filesystem(f"s3://{bucket}")
    fs.put(checkpoints["mask2former"] + "/", f"{bucket}/models/tiny/", recursive=True)
    url = f"s3://{bucket}/models/tiny"
    first = load_model(url)
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").exists()
    fs.rm(f"{bucket}/models/tiny", recursive=True)  # a second load must not need the store
    assert load_model(url).family == first.family == "mask2former"
    batch = images(1)
    check_prediction(Segmenter(url)(batch)[0], batch[0])


def test_decode_feeds_the_model(checkpoints):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, format="PNG")
    decoded = decode_image(ImageRef(1, "mem://a.png"), buf.getvalue(), max_pixels=10**6)
    assert isinstance(decoded, DecodedImage)
    check_prediction(Segmenter(checkpoints["mask2former"])([decoded])[0], decoded)
