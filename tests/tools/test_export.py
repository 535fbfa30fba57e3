"""Exports of real annotated destinations, checked with the tools that read them:
pycocotools for the COCO files, the Label Studio SDK for brush predictions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO

from segpipe.app.jobspec import SpecError, parse_spec
from segpipe.cli import build_parser
from segpipe.destination import layout
from segpipe.destination.reader import AnnotatedImage, NothingCommitted, committed_shards
from segpipe.formats.brush import encode_mask
from segpipe.io.storage import Folder, filesystem
from segpipe.tools.export import run_export
from segpipe.tools.export.images import ImageNaming, refuse_duplicate_cvat_names
from tests.support.destinations import annotated, copy_of
from tests.support.outputs import read_id_map, read_panoptic, read_table


@pytest.fixture(scope="module")
def panoptic_dst(tmp_path_factory, tiny_model, ray_cluster) -> Path:
    return annotated(tmp_path_factory, tiny_model, "panoptic")


@pytest.fixture(scope="module")
def instance_dst(tmp_path_factory, tiny_model, ray_cluster) -> Path:
    return annotated(tmp_path_factory, tiny_model, "instance")


def panoptic_segments(dst: Path) -> dict[int, tuple[np.ndarray, dict[int, dict]]]:
    """image id -> (id map, segment id -> segments_info entry), from the COCO-panoptic output."""
    folder = Folder(str(dst))
    coco = read_panoptic(folder)
    return {ann["image_id"]: (read_id_map(folder, ann["file_name"]),
                              {s["id"]: s for s in ann["segments_info"]})
            for ann in coco["annotations"]}


def check_masks(coco: COCO, truth: dict[int, tuple[np.ndarray, dict[int, dict]]]) -> list[dict]:
    """Every annotation's mask is exactly one segment of its panoptic PNG, with the same
    category, area and bbox; returns the matched segments_info entries."""
    matched = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        id_map, infos = truth[ann["image_id"]]
        mask = coco.annToMask(ann).astype(bool)
        ids = np.unique(id_map[mask])
        assert ids.size == 1 and ids[0] != 0, "a mask must cover exactly one segment"
        info = infos[int(ids[0])]
        assert np.array_equal(mask, id_map == info["id"])
        assert (ann["category_id"], ann["area"], ann["bbox"]) == (
            info["category_id"], info["area"], info["bbox"])
        assert ann["score"] == pytest.approx(info["score"], abs=1e-6)
        matched.append(info)
    return matched


def test_coco_instance_has_the_thing_masks_of_a_panoptic_run(panoptic_dst, tmp_path):
    out = tmp_path / "instances.json"
    counts = run_export(str(panoptic_dst), format="coco-instance", out=str(out))
    coco = COCO(str(out))
    truth = panoptic_segments(panoptic_dst)
    things = {c["id"] for c in read_panoptic(Folder(str(panoptic_dst)))["categories"] if c["isthing"]}
    matched = check_masks(coco, truth)
    expected = sum(1 for _, infos in truth.values() for s in infos.values()
                   if s["category_id"] in things)
    assert len(matched) == expected == counts["annotations"] > 0
    assert {c["id"] for c in coco.dataset["categories"]} == things
    assert set(coco.getImgIds()) == set(truth)
    assert len(set(coco.getAnnIds())) == counts["annotations"]
    assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
               for a in coco.dataset["annotations"])


def test_coco_instance_of_an_instance_run_has_every_segment(instance_dst, tmp_path):
    out = tmp_path / "instances.json"
    counts = run_export(str(instance_dst), format="coco-instance", out=str(out))
    truth = panoptic_segments(instance_dst)
    matched = check_masks(COCO(str(out)), truth)
    assert len(matched) == counts["annotations"] == sum(len(i) for _, i in truth.values()) > 0


def test_cvat_file_is_what_cvats_coco_importer_reads(panoptic_dst, tmp_path):
    out = tmp_path / "cvat" / "annotations.json"
    counts = run_export(str(panoptic_dst), format="cvat", out=str(out))
    coco = COCO(str(out))
    truth = panoptic_segments(panoptic_dst)
    assert len(check_masks(coco, truth)) == sum(len(i) for _, i in truth.values())
    assert counts["annotations"] > 0
    # CVAT turns compressed-RLE segmentations into mask shapes; masks are iscrowd 1 there.
    assert all(a["iscrowd"] == 1 and set(a["segmentation"]) == {"size", "counts"}
               for a in coco.dataset["annotations"])
    uris = {i["id"]: i["file_name"] for i in read_panoptic(Folder(str(panoptic_dst)))["images"]}
    assert {i["id"]: i["file_name"] for i in coco.dataset["images"]} == {
        k: Path(v).name for k, v in uris.items()}


def test_cvat_names_keep_folders_below_the_image_root(panoptic_dst, tmp_path):
    out = tmp_path / "cvat.json"
    src = panoptic_dst.parent / "src"
    run_export(str(panoptic_dst), format="cvat", out=str(out), image_root=str(src.parent))
    names = {i["file_name"] for i in json.loads(out.read_text())["images"]}
    assert names and all(n.startswith("src/img-") for n in names)


def test_labelstudio_predictions_decode_to_the_panoptic_masks(panoptic_dst, tmp_path):
    out = tmp_path / "ls" / "tasks.json"
    counts = run_export(str(panoptic_dst), format="labelstudio", out=str(out),
                        from_name="mask", to_name="photo")
    tasks = json.loads(out.read_text())
    config = (tmp_path / "ls" / "label_config.xml").read_text()
    assert counts["label_config"] == str(tmp_path / "ls" / "label_config.xml")
    truth = panoptic_segments(panoptic_dst)
    categories = {c["id"]: c["name"] for c in read_panoptic(Folder(str(panoptic_dst)))["categories"]}
    interface = LabelInterface(config)
    priority = {str(r["image_id"]): r["review_priority"]
                for r in read_table(Folder(str(panoptic_dst)), "images")}
    results = 0
    assert len(tasks) == len(truth) == counts["images"]
    for task in tasks:
        id_map, infos = truth[int(task["data"]["segpipe_image_id"])]
        (prediction,) = task["predictions"]
        assert interface.validate_prediction(prediction)
        for result in prediction["result"]:
            assert (result["from_name"], result["to_name"], result["type"]) == (
                "mask", "photo", "brushlabels")
            height, width = result["original_height"], result["original_width"]
            assert (height, width) == id_map.shape
            info = infos[int(result["id"].removeprefix("seg"))]
            rgba = decode_rle(result["value"]["rle"]).reshape(height, width, 4)
            assert np.array_equal(rgba[..., 3] == 255, id_map == info["id"])
            assert result["value"]["brushlabels"] == [categories[info["category_id"]]]
            assert result["score"] == pytest.approx(info["score"], abs=1e-6)
            results += 1
        # The prediction's score is the image's review priority, which Label Studio sorts by.
        assert prediction["score"] == pytest.approx(priority[task["data"]["segpipe_image_id"]],
                                                    abs=1e-6)
    assert results == counts["annotations"] == sum(len(i) for _, i in truth.values())

    root = ET.fromstring(config)
    assert root.find("Image").attrib == {"name": "photo", "value": "$image", "zoom": "true"}
    brush = root.find("BrushLabels")
    assert (brush.get("name"), brush.get("toName")) == ("mask", "photo")
    assert [lab.get("value") for lab in brush] == list(categories.values())
    wrong = json.loads(json.dumps(tasks[0]["predictions"][0]))
    wrong["result"] = [{**r, "from_name": "other"} for r in wrong["result"]]
    assert not wrong["result"] or not interface.validate_prediction(wrong)


@pytest.mark.parametrize("shape, density", [((1, 1), 1.0), ((5, 3), 0.5), ((64, 48), 0.02),
                                            ((300, 300), 1.0), ((400, 333), 0.9)])
def test_brush_rle_decodes_with_the_label_studio_sdk(shape, density):
    """Includes runs longer than the widest length field (2^16 values), which a whole
    300 x 300 mask has (360,000 RGBA values)."""
    mask = np.random.default_rng(0).random(shape) < density
    rle = encode_mask(mask)
    rgba = decode_rle(rle).reshape(*shape, 4)
    assert np.array_equal(rgba, np.repeat((mask * 255).astype(np.uint8)[..., None], 4, axis=2))
    # The SDK's own encoder writes the same bits (it pads one byte more when already aligned).
    theirs = mask2rle(mask.astype(np.uint8) * 255)
    assert theirs[:len(rle)] == rle and len(theirs) - len(rle) in (0, 1)


def test_image_prefix_rewrites_uris(panoptic_dst, tmp_path):
    src = (panoptic_dst.parent / "src").as_posix()
    prefix = "https://images.example.com/data/"
    out = tmp_path / "tasks.json"
    run_export(str(panoptic_dst), format="labelstudio", out=str(out), image_prefix=prefix,
               image_root=src)
    uris = sorted(t["data"]["image"] for t in json.loads(out.read_text()))
    assert uris == sorted(f"{prefix}img-{i:03d}.png" for i in range(len(uris)))

    coco_out = tmp_path / "coco.json"
    run_export(str(panoptic_dst), format="coco-instance", out=str(coco_out),
               image_prefix="https://images.example.com")
    names = [i["file_name"] for i in json.loads(coco_out.read_text())["images"]]
    # Without an image root, a local path keeps its whole path below "/".
    assert all(n == "https://images.example.com" + src + "/" + Path(n).name for n in names)

    with pytest.raises(ValueError, match="not under the image root"):
        run_export(str(panoptic_dst), format="coco-instance", out=str(coco_out),
                   image_prefix=prefix, image_root="/somewhere/else")


def test_image_naming_rules():
    def image(uri: str, member: str | None = None) -> AnnotatedImage:
        return AnnotatedImage(1, uri, member, 4, 3, "00001", "00001-000000", "p.png", None,
                              None, None, ())

    naming = ImageNaming("https://cdn.example.com/lake")
    assert naming.uri(image("s3://lake/raw/2026/a b#1.jpg")) == \
        "https://cdn.example.com/lake/raw/2026/a%20b%231.jpg"
    assert naming.uri(image("s3://lake/shards/0001.tar", "x/0001.jpg")) == \
        "https://cdn.example.com/lake/shards/0001.tar#x/0001.jpg"
    assert ImageNaming().uri(image("gs://b/k.png")) == "gs://b/k.png"
    rooted = ImageNaming("https://h/", image_root="s3://lake/raw")
    assert rooted.uri(image("s3://lake/raw/2026/a.jpg")) == "https://h/2026/a.jpg"
    assert rooted.cvat_name(image("s3://lake/raw/2026/a.jpg")) == "2026/a.jpg"
    assert ImageNaming().cvat_name(image("s3://lake/raw/2026/a.jpg")) == "a.jpg"
    assert ImageNaming().cvat_name(image("s3://lake/s.tar", "dir/k.png")) == "k.png"


def test_cvat_names_that_collide_are_refused():
    def image(uri: str) -> AnnotatedImage:
        return AnnotatedImage(1, uri, None, 4, 3, "00001", "00001-000000", "p.png", None,
                              None, None, ())

    # CVAT drops the extension when matching, so these two are one frame name to it.
    same = [image("s3://lake/cam1/0001.jpg"), image("s3://lake/cam2/0001.png")]
    with pytest.raises(ValueError, match="shared by several images"):
        refuse_duplicate_cvat_names(same, ImageNaming())
    refuse_duplicate_cvat_names(same, ImageNaming(image_root="s3://lake/"))


def test_only_committed_shards_are_exported(panoptic_dst, tmp_path):
    dst = copy_of(panoptic_dst, tmp_path / "dst")
    folder = Folder(str(dst))
    shards = committed_shards(folder)
    dropped = shards[1]
    dropped_ids = {i["id"] for i in folder.read_json(layout.fragment(*dropped))["images"]}
    all_ids = {i["id"] for i in read_panoptic(folder)["images"]}
    folder.delete(layout.commit(*dropped))

    for fmt in ("coco-instance", "cvat"):
        out = tmp_path / f"{fmt}.json"
        counts = run_export(str(dst), format=fmt, out=str(out))
        assert counts["shards"] == len(shards) - 1
        assert {i["id"] for i in COCO(str(out)).dataset["images"]} == all_ids - dropped_ids
    out = tmp_path / "tasks.json"
    run_export(str(dst), format="labelstudio", out=str(out))
    exported = {int(t["data"]["segpipe_image_id"]) for t in json.loads(out.read_text())}
    assert exported == all_ids - dropped_ids and dropped_ids


def test_min_score_drops_low_scored_segments(instance_dst, tmp_path):
    truth = panoptic_segments(instance_dst)
    scores = sorted(s["score"] for _, infos in truth.values() for s in infos.values())
    cut = scores[len(scores) // 2]
    out = tmp_path / "coco.json"
    counts = run_export(str(instance_dst), format="coco-instance", out=str(out), min_score=cut)
    kept = COCO(str(out)).dataset["annotations"]
    assert counts["annotations"] == len(kept) == sum(s >= cut for s in scores) < len(scores)
    assert all(a["score"] >= cut for a in kept)


def test_export_from_and_to_s3(panoptic_dst, bucket, tmp_path):
    fs, _ = filesystem(f"s3://{bucket}")
    fs.put(str(panoptic_dst), f"{bucket}/prelabels", recursive=True)
    local = tmp_path / "local.json"
    run_export(str(panoptic_dst), format="cvat", out=str(local))
    remote = f"s3://{bucket}/exports/cvat.json"
    counts = run_export(f"s3://{bucket}/prelabels", format="cvat", out=remote)
    assert counts["images"] > 0
    assert json.loads(fs.cat_file(remote)) == json.loads(local.read_text()) | {
        "info": json.loads(fs.cat_file(remote))["info"]}
    run_export(f"s3://{bucket}/prelabels", format="labelstudio", out=f"s3://{bucket}/ls/tasks.json")
    assert fs.exists(f"{bucket}/ls/label_config.xml")


def test_a_destination_without_committed_shards_is_an_error(tmp_path):
    with pytest.raises(NothingCommitted, match="no committed shards"):
        run_export(str(tmp_path / "not-a-destination"), format="cvat", out=str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def test_export_and_preview_commands(panoptic_dst, tmp_path, capsys):
    from segpipe.cli import main

    assert main(["export", str(panoptic_dst), "--format", "cvat", "--out",
                 str(tmp_path / "c.json")]) == 0
    assert main(["preview", str(panoptic_dst), "--out", str(tmp_path / "p"), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "gallery:" in out and "committed shards" in out
    assert (tmp_path / "c.json").exists() and (tmp_path / "p" / "index.html").exists()


def listed_formats(message: str) -> list[str]:
    """The format names an error message offers, in its order."""
    return re.findall(r"[a-z]+(?:-[a-z]+)?", message.split("one of", 1)[1].split(", not")[0])


def test_cli_job_specs_and_run_export_offer_one_list_of_formats(capsys):
    """The CLI, job specs and run_export accept the same formats and name them alike."""
    with pytest.raises(ValueError, match="format must be one of") as refused:
        run_export("unused", format="coco", out="unused.json")
    offered = listed_formats(str(refused.value))
    spec = {"steps": [{"export": {"format": "coco", "out": "o", "dst": "d"}}]}
    with pytest.raises(SpecError, match="format must be one of") as refused_in_spec:
        parse_spec(spec, source="job.yaml", env={})
    assert listed_formats(str(refused_in_spec.value)) == offered

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "d", "--format", "coco", "--out", "o"])
    choices = capsys.readouterr().err.split("choose from", 1)[1]
    assert re.findall(r"[a-z]+(?:-[a-z]+)?", choices) == offered
    for name in offered:
        assert parser.parse_args(["export", "d", "--format", name, "--out", "o"]).format == name
    assert sorted(offered) == ["coco-instance", "coco-panoptic", "coco-results", "cvat",
                               "labelstudio"]


def test_the_cli_checks_formats_without_importing_the_export_stack():
    script = ("import sys, segpipe.cli; "
              "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
              "('torch', 'transformers', 'ray', 'pyarrow') or m.startswith('segpipe.tools')))")
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == []
