"""CVAT COCO 1.0 (uncompressed RLE, checked with pycocotools) and COCO-panoptic folders,
edited as a reviewer would and imported back."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segpipe.destination import reader
from segpipe.io.storage import Folder
from segpipe.review.importing import run_import
from segpipe.review.reviewed import ReviewImportError
from tests.support.reviews import prelabels, reviewer_edits, thing_names, tree_digest, upload


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.ravel(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size]).tolist()
    counts = runs if flat[0] == 0 else [0, *runs]
    rle = {"size": list(mask.shape), "counts": counts}
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *mask.shape))
    assert np.array_equal(decoded.astype(bool), mask), "pycocotools must read it back"
    return rle


def reviewed_masks(dst):
    """Per image: (image, the masks the reviewer hands back); the first image edited."""
    images = sorted(prelabels(str(dst)), key=lambda p: -sum(s.is_thing for s in p[0].segments))
    edits = reviewer_edits(*images[0], thing_names(str(dst)))
    out = [(edits.image, edits.masks)]
    for image, ids in images[1:]:
        out.append((image, [(s.category_name, ids == s.segment_id) for s in image.segments]))
    return edits, out


def cvat_file(dst, names_of):
    edits, per_image = reviewed_masks(dst)
    categories = {c.name: c.id for c in reader.categories(Folder(str(dst)))}
    doc = {"images": [], "annotations": [],
           "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in categories.items()]}
    for number, (image, masks) in enumerate(per_image, start=1):
        doc["images"].append({"id": number, "file_name": names_of(image.image_uri),
                              "width": image.width, "height": image.height})
        for name, mask in masks:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": number,
                "category_id": categories[name], "segmentation": uncompressed_rle(mask),
                "area": int(mask.sum()), "bbox": list(mask_utils.toBbox(mask_utils.encode(
                    np.asfortranarray(mask.astype(np.uint8)))).tolist()), "iscrowd": 1})
    return doc, edits


def total(edits, dst):
    expected = dict(edits.expected)
    expected["accepted"] += sum(len(i.segments) for i, _ in prelabels(str(dst))
                                if i.image_id != edits.image.image_id)
    return expected


def test_cvat_coco_file_by_base_name(dst, tmp_path):
    doc, edits = cvat_file(dst, lambda uri: uri.rsplit("/", 1)[-1])
    (tmp_path / "cvat.json").write_text(json.dumps(doc))
    done = run_import(str(dst), "cvat", str(tmp_path / "cvat.json"))
    assert done["segments"] == total(edits, dst)
    assert done["images"] == 3 and done["reassigned_pixels"] == edits.added_pixels


def test_cvat_coco_file_by_path_below_the_image_root_on_s3(demo_scenes_and_dst, dst, tmp_path,
                                                           bucket):
    root = str(demo_scenes_and_dst[0])
    doc, edits = cvat_file(dst, lambda uri: uri[len(root) + 1:])
    assert doc["images"][0]["file_name"].startswith("images/")
    (tmp_path / "cvat.json").write_text(json.dumps(doc))
    remote = upload(dst, bucket, "prelabels")
    done = run_import(remote, "cvat", upload(tmp_path / "cvat.json", bucket, "cvat.json"),
                      image_root=root)
    assert done["segments"] == total(edits, dst)


def test_cvat_mask_of_another_size_is_refused(dst, tmp_path):
    doc, _ = cvat_file(dst, lambda uri: uri.rsplit("/", 1)[-1])
    doc["annotations"][3]["segmentation"] = uncompressed_rle(np.ones((5, 6), bool))
    (tmp_path / "cvat.json").write_text(json.dumps(doc))
    before = tree_digest(str(dst))
    with pytest.raises(ReviewImportError, match=r"annotation 4: RLE size \[5, 6\]"):
        run_import(str(dst), "cvat", str(tmp_path / "cvat.json"))
    assert tree_digest(str(dst)) == before


def write_panoptic_folder(folder, per_image, categories):
    """A COCO-panoptic folder (panoptic.json, panoptic/) of the reviewed masks, ids 1..N."""
    (folder / "panoptic").mkdir(parents=True)
    doc = {"images": [], "annotations": [],
           "categories": [c.to_coco() for c in categories]}
    by_name = {c.name: c.id for c in categories}
    for number, (image, masks) in enumerate(per_image, start=1):
        ids = np.zeros((image.height, image.width), np.uint32)
        for k, (_, mask) in enumerate(masks, start=1):
            ids[mask] = k
        name = image.image_uri.rsplit("/", 1)[-1]
        rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        (folder / "panoptic" / name).write_bytes(buf.getvalue())
        doc["images"].append({"id": number, "file_name": name, "width": image.width,
                              "height": image.height})
        doc["annotations"].append({"image_id": number, "file_name": name, "segments_info": [
            {"id": k, "category_id": by_name[n], "iscrowd": 0}
            for k, (n, _) in enumerate(masks, start=1)]})
    (folder / "panoptic.json").write_text(json.dumps(doc))


def test_coco_panoptic_folder(dst, tmp_path):
    edits, per_image = reviewed_masks(dst)
    write_panoptic_folder(tmp_path / "reviews", per_image, reader.categories(Folder(str(dst))))
    done = run_import(str(dst), "coco-panoptic", str(tmp_path / "reviews"))
    assert done["segments"] == total(edits, dst)
    assert done["reassigned_pixels"] == 0  # a panoptic PNG cannot overlap


def test_coco_panoptic_image_not_in_the_destination(dst, tmp_path):
    _, per_image = reviewed_masks(dst)
    write_panoptic_folder(tmp_path / "reviews", per_image, reader.categories(Folder(str(dst))))
    doc = json.loads((tmp_path / "reviews/panoptic.json").read_text())
    doc["images"][1]["file_name"] = "elsewhere.png"
    (tmp_path / "reviews/panoptic.json").write_text(json.dumps(doc))
    with pytest.raises(ReviewImportError, match="'elsewhere.png' is not in the destination"):
        run_import(str(dst), "coco-panoptic", str(tmp_path / "reviews"))
    assert not (dst / "reviewed").exists()
