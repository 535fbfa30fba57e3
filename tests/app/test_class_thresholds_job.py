"""`annotate --class-thresholds`, end to end on a real local Ray, local files and S3."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from segpipe.app.annotate import annotate
from segpipe.app.jobspec import parse_spec
from segpipe.core.config import JobConfig
from segpipe.demo.synth import write_scenes
from segpipe.destination.runs import DestinationMismatch
from segpipe.io.storage import Folder, filesystem
from tests.support.images import write_images
from tests.support.outputs import read_table

pytestmark = pytest.mark.usefixtures("ray_cluster")


def thresholds_file(path, thresholds) -> str:
    path.write_text(json.dumps({"format": "segpipe-class-thresholds", "version": 1,
                                "thresholds": thresholds}))
    return str(path)


@pytest.fixture
def source(tmp_path, where):
    """Four images and one corrupt file, at the same kind of place as the destination."""
    local = tmp_path / "gen"
    write_images(local, 4, seed=11)
    (local / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    url = where("src")
    if url.startswith("s3://"):
        fs, path = filesystem(url)
        for p in sorted(local.iterdir()):
            fs.put_file(str(p), f"{path}/{p.name}")
        return url
    return str(local)


def segments_by_category(dst: str) -> Counter:
    return Counter(r["category_name"] for r in read_table(Folder(dst), "segments"))


def test_a_high_class_threshold_removes_that_class_only(tmp_path):
    write_scenes(str(tmp_path / "scenes"), 3, seed=21)
    base = JobConfig(src=str(tmp_path / "scenes" / "images"), dst=str(tmp_path / "plain"),
                     model="builtin:demo", num_workers=1, progress=False)
    annotate(base)
    before = read_table(Folder(base.dst), "segments")
    things = Counter(r["category_name"] for r in before if r["is_thing"])
    gone = things.most_common(1)[0][0]
    strict = base.replace(dst=str(tmp_path / "strict"),
                          class_thresholds=thresholds_file(tmp_path / "t.json", {gone: 1.0}))
    annotate(strict)
    after = read_table(Folder(strict.dst), "segments")
    assert gone not in {r["category_name"] for r in after}
    kept = lambda rows: Counter((r["image_uri"], r["category_name"], r["score"])  # noqa: E731
                                for r in rows if r["category_name"] != gone)
    assert kept(before) and not kept(before) - kept(after)  # every other segment is still there


def test_the_guard_compares_the_thresholds_content_not_the_file(tmp_path, tiny_model, source,
                                                                where):
    first = thresholds_file(tmp_path / "a.json", {"square": 0.7, "sky": 0.3})
    config = JobConfig(src=source, dst=where("dst"), model=tiny_model, shard_size=3,
                       num_workers=1, progress=False, class_thresholds=first)
    assert annotate(config)["status"] == "complete"
    images = read_table(Folder(config.dst), "images")
    assert {r["status"] for r in images} == {"ok", "error"}
    for row in images:  # the priority is there for every annotated image, null for errors
        ok = row["status"] == "ok"
        assert (row["review_priority"] is not None) == ok
        assert not ok or 0 <= row["review_priority"] <= 1
    moved = thresholds_file(tmp_path / "b.json", {"sky": 0.3, "square": 0.7})
    assert annotate(config.replace(class_thresholds=moved))["images_this_session"] == 0
    changed = thresholds_file(tmp_path / "c.json", {"sky": 0.3, "square": 0.9})
    with pytest.raises(DestinationMismatch, match="class_thresholds"):
        annotate(config.replace(class_thresholds=changed))
    with pytest.raises(DestinationMismatch, match="class_thresholds"):
        annotate(config.replace(class_thresholds=None))


def test_names_the_model_does_not_know_fail_the_job_naming_them(tmp_path, tiny_model):
    write_images(tmp_path / "src", 1, seed=2)
    wrong = thresholds_file(tmp_path / "wrong.json", {"dragon": 0.5, "sky": 0.2})
    config = JobConfig(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model=tiny_model,
                       num_workers=1, progress=False, class_thresholds=wrong)
    with pytest.raises(Exception, match="'dragon' not in the model's label set") as err:
        annotate(config)
    assert "wrong.json" in str(err.value)
    assert not (tmp_path / "dst" / "tables").exists()


def test_job_specs_take_class_thresholds(tmp_path):
    path = thresholds_file(tmp_path / "t.json", {"sky": 0.3})
    spec = parse_spec({"name": "t", "annotate": {"src": "s", "dst": "d", "class_thresholds": path}},
                      source="spec.yaml", env={})
    (step,) = spec.steps
    assert step.config.class_thresholds == path
    assert step.config.fingerprint()["class_thresholds"] == {"sky": 0.3}
