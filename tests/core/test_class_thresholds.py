"""The class-thresholds file: reading, its errors, and its place in the settings guard."""

from __future__ import annotations

import json

import pytest

from segpipe.core.class_thresholds import (
    ClassThresholdsError,
    parse_class_thresholds,
    read_class_thresholds,
)
from segpipe.core.config import JobConfig


def write(path, thresholds, **extra):
    path.write_text(json.dumps({"format": "segpipe-class-thresholds", "version": 1,
                                "thresholds": thresholds} | extra))
    return str(path)


def test_a_file_reads_as_thresholds_by_name(tmp_path):
    read = read_class_thresholds(write(tmp_path / "t.json", {"star": 0.9, "sky": 0}))
    assert read.as_dict() == {"sky": 0.0, "star": 0.9}
    assert read.by_label({0: "star", 1: "circle", 2: "sky"}) == {0: 0.9, 2: 0.0}


@pytest.mark.parametrize(("content", "message"), [
    ([], "expected a JSON object"),
    ({"format": "coco", "version": 1, "thresholds": {}}, "expected a JSON object"),
    ({"format": "segpipe-class-thresholds", "version": 2, "thresholds": {}}, "version 2"),
    ({"format": "segpipe-class-thresholds", "version": 1, "thresholds": [0.5]}, '"thresholds"'),
    ({"format": "segpipe-class-thresholds", "version": 1, "thresholds": {"star": 1.5}},
     "'star' must be a score between 0 and 1, not 1.5"),
    ({"format": "segpipe-class-thresholds", "version": 1, "thresholds": {"star": "high"}},
     "'star' must be a score"),
    ({"format": "segpipe-class-thresholds", "version": 1, "thresholds": {"star": True}},
     "'star' must be a score"),
])
def test_bad_content_is_an_error_naming_the_file_and_entry(content, message):
    with pytest.raises(ClassThresholdsError, match="class thresholds my.json") as err:
        parse_class_thresholds(content, "my.json")
    assert message in str(err.value)


def test_unreadable_files_are_errors_naming_them(tmp_path):
    (tmp_path / "cut.json").write_text('{"format": "segpipe-class-thresholds", "vers')
    with pytest.raises(ClassThresholdsError, match=r"cut\.json: not valid JSON"):
        read_class_thresholds(str(tmp_path / "cut.json"))
    with pytest.raises(ClassThresholdsError, match=r"missing\.json: no such file"):
        read_class_thresholds(str(tmp_path / "missing.json"))


def test_names_outside_the_label_set_are_an_error_naming_them(tmp_path):
    read = read_class_thresholds(write(tmp_path / "t.json", {"star": 0.9, "dragon": 0.5,
                                                             "unicorn": 0.1}))
    with pytest.raises(ClassThresholdsError, match="'dragon', 'unicorn' not in the model's") as err:
        read.by_label({0: "star", 1: "sky"})
    assert str(tmp_path / "t.json") in str(err.value) and "'star'" not in str(err.value)


def test_the_fingerprint_holds_the_content_not_the_path(tmp_path):
    a = write(tmp_path / "a.json", {"star": 0.9, "sky": 0.2})
    b = write(tmp_path / "b.json", {"sky": 0.2, "star": 0.9})
    c = write(tmp_path / "c.json", {"sky": 0.2, "star": 0.8})
    base = JobConfig(src="s", dst="d")
    prints = [base.replace(class_thresholds=p).fingerprint()["class_thresholds"] for p in (a, b, c)]
    assert prints[0] == prints[1] == {"sky": 0.2, "star": 0.9} != prints[2]
    assert base.fingerprint()["class_thresholds"] is None


def test_the_annotate_flag_and_its_check(tmp_path):
    from segpipe.cli import build_parser, config_from_args

    path = write(tmp_path / "t.json", {"sky": 0.4})
    args = build_parser().parse_args(["annotate", "src", "dst", "--class-thresholds", path])
    assert config_from_args(args).class_thresholds == path
    with pytest.raises(ValueError, match="--class-thresholds must be a file path"):
        JobConfig(src="s", dst="d", class_thresholds="  ")
