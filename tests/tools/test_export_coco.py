"""The COCO exports that evaluation and conversion tools read, checked with those tools:
panopticapi's own `pq_compute` for coco-panoptic, pycocotools' `loadRes` and `COCOeval`
for coco-results, on synthetic scenes with ground truth annotated by the demo model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from panopticapi.evaluation import pq_compute
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segpipe.app.annotate import annotate
from segpipe.app.jobspec import parse_spec
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.demo.synth import write_scenes
from segpipe.formats import coco
from segpipe.io.storage import Folder, filesystem
from segpipe.tools.evaluate import evaluate
from segpipe.tools.export import run_export
from segpipe.tools.export.ids import GroundTruthMismatch

SCENES = 6
JSON, PNGS = "annotations/panoptic_val.json", "annotations/panoptic_val"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, ray_cluster) -> tuple[Path, Path]:
    """(ground truth folder, destination): synthetic scenes annotated with builtin:demo.
    The ground truth's ids (0..5) are not the destination's (hashes of the URIs)."""
    root = tmp_path_factory.mktemp("scenes")
    gt, dst = root / "gt", root / "dst"
    write_scenes(str(gt), SCENES, seed=11)
    annotate(JobConfig(src=str(gt / "images"), dst=str(dst), model="builtin:demo",
                       batch_size=3, num_workers=1, progress=False))
    return gt, dst


def pq_of_export(gt: Path, out: Path) -> dict:
    return pq_compute(str(gt / "panoptic.json"), str(out / JSON), str(gt / "panoptic"),
                      str(out / PNGS))


def test_panopticapi_scores_the_export_as_segpipe_eval_does(scenes, tmp_path):
    gt, dst = scenes
    out = tmp_path / "dataset"
    counts = run_export(str(dst), format="coco-panoptic", out=str(out), subset="val",
                        ids_from=str(gt / "panoptic.json"))
    ours = evaluate(str(dst / "panoptic.json"), str(dst / "panoptic"),
                    str(gt / "panoptic.json"), str(gt / "panoptic"))
    theirs = pq_of_export(gt, out)
    for group in ("All", "Things", "Stuff"):
        assert theirs[group]["n"] == ours[group]["n"] > 0
        for metric in ("pq", "sq", "rq"):
            assert theirs[group][metric] == pytest.approx(ours[group][metric], abs=1e-12)
    assert 0.5 < ours["All"]["pq"] < 1.0  # the demo model: good, not perfect

    truth = json.loads((gt / "panoptic.json").read_text())
    doc = json.loads((out / JSON).read_text())
    assert counts["images"] == SCENES and counts["skipped"] == 0
    assert {(i["id"], i["file_name"]) for i in doc["images"]} == {
        (i["id"], i["file_name"]) for i in truth["images"]}
    assert sorted(p.name for p in (out / PNGS).iterdir()) == sorted(
        a["file_name"] for a in doc["annotations"])
    assert not (out / "images").exists()  # images only when asked


def test_default_ids_are_ours_and_can_be_strings(scenes, tmp_path):
    _, dst = scenes
    merged = {i["file_name"].rsplit("/", 1)[-1]: i["id"]
              for i in json.loads((dst / "panoptic.json").read_text())["images"]}
    run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "ints"), subset="val")
    run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "strings"), subset="val",
               string_ids=True)
    ints = json.loads((tmp_path / "ints" / JSON).read_text())
    strings = json.loads((tmp_path / "strings" / JSON).read_text())
    assert {i["file_name"]: i["id"] for i in ints["images"]} == merged
    assert {i["file_name"]: i["id"] for i in strings["images"]} == {
        k: str(v) for k, v in merged.items()}
    assert any(v > 2**53 for v in merged.values())  # what a JavaScript number cannot hold
    assert all(isinstance(a["image_id"], str) for a in strings["annotations"])


def test_images_are_copied_or_linked_into_the_subset(scenes, tmp_path):
    gt, dst = scenes
    run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "c"), subset="val",
               image_files="copy")
    run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "l"), subset="val",
               image_files="link")
    for image in sorted((gt / "images").iterdir()):
        copied, linked = tmp_path / "c/images/val" / image.name, tmp_path / "l/images/val" / image.name
        assert copied.read_bytes() == image.read_bytes() and not copied.is_symlink()
        assert linked.is_symlink() and os.path.samefile(linked, image)


def test_segments_left_out_become_void_so_panopticapi_accepts_the_pngs(scenes, tmp_path):
    gt, dst = scenes
    out = tmp_path / "things"
    run_export(str(dst), format="coco-panoptic", out=str(out), subset="val", things_only=True,
               ids_from=str(gt / "panoptic.json"))
    doc = json.loads((out / JSON).read_text())
    things = {c["id"] for c in doc["categories"]}
    assert things and all(c["isthing"] for c in doc["categories"])
    for ann in doc["annotations"]:
        ids = coco.png_to_id_map((out / PNGS / ann["file_name"]).read_bytes())
        listed = {s["id"] for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == listed
        assert {s["category_id"] for s in ann["segments_info"]} <= things
    # panopticapi raises on a PNG id that the JSON does not list; here it scores.
    assert pq_of_export(gt, out)["Things"]["n"] > 0


def test_images_missing_from_the_ground_truth_are_refused_or_skipped(scenes, tmp_path):
    gt, dst = scenes
    truth = json.loads((gt / "panoptic.json").read_text())
    missing = truth["images"].pop()
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(truth))
    out = tmp_path / "refused"
    with pytest.raises(GroundTruthMismatch, match=missing["file_name"]):
        run_export(str(dst), format="coco-panoptic", out=str(out), ids_from=str(partial))
    assert not out.exists()  # nothing written

    counts = run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "skipped"),
                        subset="val", ids_from=str(partial), skip_unmatched=True)
    doc = json.loads((tmp_path / "skipped" / JSON).read_text())
    assert counts["skipped"] == 1 and counts["images"] == len(doc["images"]) == SCENES - 1
    assert missing["file_name"] not in {i["file_name"] for i in doc["images"]}
    assert len(list((tmp_path / "skipped" / PNGS).iterdir())) == SCENES - 1


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"].append(dict(d["images"][0], id=99)), "several images"),
    (lambda d: d["categories"].pop(), "no categories named"),
    (lambda d: d.pop("images"), "not a COCO file"),
])
def test_a_ground_truth_that_does_not_fit_is_refused(scenes, tmp_path, change, message):
    gt, dst = scenes
    truth = json.loads((gt / "panoptic.json").read_text())
    change(truth)
    bad = tmp_path / "gt.json"
    bad.write_text(json.dumps(truth))
    with pytest.raises(GroundTruthMismatch, match=message):
        run_export(str(dst), format="coco-panoptic", out=str(tmp_path / "o"), ids_from=str(bad))
    assert not (tmp_path / "o").exists()


def instances_ground_truth(gt: Path) -> dict:
    """The scenes' thing segments as a COCO instance ground truth, masks as pycocotools RLE."""
    panoptic = json.loads((gt / "panoptic.json").read_text())
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    annotations = []
    for ann in panoptic["annotations"]:
        ids = coco.png_to_id_map((gt / "panoptic" / ann["file_name"]).read_bytes())
        for seg in ann["segments_info"]:
            if seg["category_id"] in things:
                rle = mask_utils.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": ann["image_id"],
                    "category_id": seg["category_id"], "iscrowd": 0, "area": seg["area"],
                    "bbox": seg["bbox"],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return {"images": panoptic["images"], "annotations": annotations,
            "categories": [c for c in panoptic["categories"] if c["isthing"]]}


def test_coco_results_load_and_score_in_cocoeval(scenes, tmp_path):
    gt, dst = scenes
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(instances_ground_truth(gt)))
    out = tmp_path / "results.json"
    counts = run_export(str(dst), format="coco-results", out=str(out), ids_from=str(gt_file))
    results = json.loads(out.read_text())
    assert isinstance(results, list) and len(results) == counts["annotations"] > 0

    truth = COCO(str(gt_file))
    detections = truth.loadRes(str(out))  # refuses image ids the ground truth lacks
    assert set(detections.getImgIds()) <= set(truth.getImgIds())
    assert len(detections.getAnnIds()) == len(results)
    evaluation = COCOeval(truth, detections, iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] > 0.5  # mask AP of the demo model on its own scenes


def test_coco_instance_takes_base_names_and_ground_truth_ids(scenes, tmp_path):
    gt, dst = scenes
    out = tmp_path / "instances.json"
    run_export(str(dst), format="coco-instance", out=str(out), base_names=True,
               ids_from=str(gt / "panoptic.json"))
    exported = COCO(str(out))
    truth = json.loads((gt / "panoptic.json").read_text())
    assert {(i["id"], i["file_name"]) for i in exported.dataset["images"]} == {
        (i["id"], i["file_name"]) for i in truth["images"]}
    assert exported.getAnnIds() and set(exported.getImgIds()) == {i["id"] for i in truth["images"]}


def test_coco_panoptic_export_on_s3_equals_the_local_one(scenes, tmp_path, bucket, s3_endpoint):
    gt, dst = scenes
    fs, _ = filesystem(f"s3://{bucket}/")
    fs.put_file(str(gt / "panoptic.json"), f"{bucket}/gt/panoptic.json")
    local = tmp_path / "local"
    run_export(str(dst), format="coco-panoptic", out=str(local), subset="val",
               ids_from=str(gt / "panoptic.json"), image_files="copy")
    remote = Folder(f"s3://{bucket}/dataset")
    counts = run_export(str(dst), format="coco-panoptic", out=remote.url, subset="val",
                        ids_from=f"s3://{bucket}/gt/panoptic.json", image_files="copy")
    assert counts["panoptic_json"] == f"s3://{bucket}/dataset/{JSON}"
    local_keys = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert remote.list("annotations") + remote.list("images") == local_keys
    assert len(local_keys) == 1 + 2 * SCENES
    for key in local_keys:
        assert remote.read_bytes(key) == (local / key).read_bytes()
    with pytest.raises(ValueError, match="linked only into a local folder"):
        run_export(str(dst), format="coco-panoptic", out=f"s3://{bucket}/l", image_files="link")
    assert remote.list("l") == []

    run_export(str(dst), format="coco-results", out=str(tmp_path / "results.json"),
               ids_from=str(gt / "panoptic.json"))
    run_export(str(dst), format="coco-results", out=f"s3://{bucket}/results.json",
               ids_from=f"s3://{bucket}/gt/panoptic.json")
    assert Folder(f"s3://{bucket}").read_bytes("results.json") == (
        tmp_path / "results.json").read_bytes()


def test_cli_and_job_spec_take_the_new_formats(scenes, tmp_path, capsys):
    gt, dst = scenes
    out = tmp_path / "cli"
    assert main(["export", str(dst), "--format", "coco-panoptic", "--out", str(out), "--subset",
                 "val", "--ids-from", str(gt / "panoptic.json"), "--images", "copy"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert (out / JSON).exists() and len(list((out / "images/val").iterdir())) == SCENES
    assert main(["export", str(dst), "--format", "coco-results", "--out",
                 str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())

    spec = {"steps": [{"export": {"dst": str(dst), "format": "coco-panoptic", "out": str(out),
                                  "subset": "val", "ids_from": str(gt / "panoptic.json"),
                                  "image_files": "link"}}]}
    (step,) = parse_spec(spec, source="job.yaml", env={}).steps
    assert step.format == "coco-panoptic" and step.options["image_files"] == "link"


def test_labelstudio_local_files_prefix_names_paths_below_the_document_root(scenes, tmp_path):
    # Label Studio serves /data/local-files/?d=<path below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>.
    gt, dst = scenes
    out = tmp_path / "tasks.json"
    run_export(str(dst), format="labelstudio", out=str(out),
               image_prefix="/data/local-files/?d=", image_root=str(gt.parent))
    run_export(str(dst), format="labelstudio", out=str(tmp_path / "sub.json"),
               image_prefix="/data/local-files/?d=scenes", image_root=str(gt.parent))
    urls = sorted(t["data"]["image"] for t in json.loads(out.read_text()))
    names = sorted(p.name for p in (gt / "images").iterdir())
    assert urls == [f"/data/local-files/?d=gt/images/{n}" for n in names]
    assert sorted(t["data"]["image"] for t in json.loads((tmp_path / "sub.json").read_text())) == [
        f"/data/local-files/?d=scenes/gt/images/{n}" for n in names]


@pytest.mark.parametrize("format, option, flag", [
    ("labelstudio", {"ids_from": "gt.json"}, "--ids-from"),
    ("coco-instance", {"image_files": "copy"}, "--images"),
    ("coco-results", {"string_ids": True}, "--string-ids"),
])
def test_options_of_other_formats_are_refused(tmp_path, format, option, flag):
    with pytest.raises(ValueError, match=f"{flag} does not apply to {format}"):
        run_export(str(tmp_path / "no-dst"), format=format, out=str(tmp_path / "o"), **option)
    assert not (tmp_path / "o").exists()
