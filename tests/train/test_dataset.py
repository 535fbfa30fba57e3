"""Reading COCO-panoptic folders for training, and the batches made from them (no Ray)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from segpipe.demo.synth import write_scenes
from segpipe.formats import coco
from segpipe.io.storage import Folder
from segpipe.model.loading import load_model
from segpipe.train.batches import IGNORE, augment, instance_map, make_batch
from segpipe.train.config import FinetuneError
from segpipe.train.dataset import read_dataset, split
from segpipe.train.labels import plan_labels


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("scenes"))
    write_scenes(out, 6, seed=3)
    return out


def test_a_synth_folder_reads_as_examples_with_images_under_images(scenes):
    dataset = read_dataset(scenes)
    assert len(dataset.examples) == 6
    first = dataset.examples[0]
    assert first.image_uri.endswith("/images/scene-3-000000.png")
    assert first.png_url.endswith("/panoptic/scene-3-000000.png")
    assert {s.category_id for e in dataset.examples for s in e.segments} <= {
        c["id"] for c in dataset.categories}


def test_a_destination_reads_its_reviewed_labels_with_uris_as_file_names(scenes, tmp_path):
    source = Folder(scenes)
    document = source.read_json("panoptic.json")
    dst = Folder(str(tmp_path / "dst"))
    for image in document["images"]:
        image["file_name"] = f"{scenes}/images/{image['file_name']}"  # a source URI
    for annotation in document["annotations"]:
        dst.write_bytes(f"reviewed/panoptic/{annotation['file_name']}",
                        source.read_bytes(f"panoptic/{annotation['file_name']}"))
    dst.write_json("reviewed/panoptic.json", document)
    dataset = read_dataset(str(tmp_path / "dst"))
    assert [e.image_uri for e in dataset.examples] == [i["file_name"] for i in document["images"]]
    assert dataset.examples[0].png_url.endswith("/reviewed/panoptic/scene-3-000000.png")


def test_a_folder_without_annotations_is_refused_by_name(tmp_path):
    with pytest.raises(FinetuneError, match=str(tmp_path / "nothing")):
        read_dataset(str(tmp_path / "nothing"))
    folder = Folder(str(tmp_path / "bad"))
    folder.write_json("panoptic.json", {"images": [], "categories": [{"id": 1}],
                                        "annotations": [{"image_id": 7, "file_name": "x.png"}]})
    with pytest.raises(FinetuneError, match="image id 7"):
        read_dataset(str(tmp_path / "bad"))


def test_the_held_out_split_is_deterministic_and_disjoint(scenes):
    examples = read_dataset(scenes).examples
    train, held = split(examples, 0.3)
    assert held and train
    assert {e.name for e in train}.isdisjoint({e.name for e in held})
    assert split(list(reversed(examples)), 0.3)[1] == sorted(held, key=lambda e: -e.image_id)


def test_augment_keeps_the_size_and_pads_with_void():
    image = np.full((40, 60, 3), 200, np.uint8)
    ids = np.ones((40, 60), np.int32)
    out, labels = augment(image, ids, random.Random(1), flip=True, scale_jitter=(0.5, 0.5))
    assert out.shape == image.shape and labels.shape == ids.shape
    assert (labels == 0).sum() == 40 * 60 - 20 * 30  # the half-size copy, padded with void
    assert set(np.unique(labels)) == {0, 1}


def test_instance_map_voids_crowd_and_unknown_segments(scenes):
    example = read_dataset(scenes).examples[0]
    ids = coco.png_to_id_map(Folder(scenes).read_bytes(f"panoptic/{example.name}"))
    label_of = {s.category_id: 0 for s in example.segments[1:]}  # the first one's class dropped
    instances, classes = instance_map(example, ids, label_of)
    assert (instances[ids == example.segments[0].id] == IGNORE).all()
    assert sorted(classes) == list(range(len(example.segments) - 1))


def test_a_batch_has_masks_at_the_model_input_size_even_for_empty_and_large_images(tmp_path):
    write_scenes(str(tmp_path), 2, seed=5)
    folder = Folder(str(tmp_path))
    document = folder.read_json("panoptic.json")
    # image 0 has no segments at all; image 1 is large (its masks must not exist at full size)
    document["annotations"][0]["segments_info"] = []
    height, width = 1500, 2000
    big = np.zeros((height, width), np.int32)
    big[:, : width // 2] = 1
    big[:, width // 2:] = 2
    from segpipe.demo.synth import png_bytes
    folder.write_bytes(f"images/{document['images'][1]['file_name']}",
                       png_bytes(np.zeros((height, width, 3), np.uint8)))
    folder.write_bytes(f"panoptic/{document['annotations'][1]['file_name']}",
                       coco.id_map_to_png(big))
    document["images"][1].update(height=height, width=width)
    document["annotations"][1]["segments_info"] = [
        {"id": 1, "category_id": 6, "iscrowd": 0}, {"id": 2, "category_id": 7, "iscrowd": 0}]
    folder.write_bytes("panoptic.json", json.dumps(document).encode())
    loaded = load_model("builtin:demo", device="cpu")
    dataset = read_dataset(str(tmp_path))
    plan = plan_labels(dataset.categories, loaded.label_set, loaded.model.config.num_labels)
    batch = make_batch(dataset.examples, loaded.processor, plan.label_of, family="mask2former",
                       rng=random.Random(0), scale_jitter=(0.8, 1.2))
    assert batch["mask_labels"][0].shape[0] == 0
    assert tuple(batch["mask_labels"][1].shape) == (2, 128, 128)
    assert batch["class_labels"][1].tolist() == [5, 6]
    loss = loaded.model.train()(**batch).loss
    assert np.isfinite(float(loss))
