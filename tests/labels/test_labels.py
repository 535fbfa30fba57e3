"""Bundled label sets and matching a checkpoint's id2label onto them."""

from __future__ import annotations

import json
import logging

import fsspec
import pytest

from segpipe.labels import (
    BUNDLED,
    bundled,
    hash_color,
    label_set_from_file,
    match_label_set,
)

# The id2label of HF's COCO panoptic checkpoints (facebook/mask2former-swin-*-coco-panoptic):
# the 133 panoptic categories, indices 0..132 in COCO id order.
COCO_NAMES = (
    "person|bicycle|car|motorcycle|airplane|bus|train|truck|boat|traffic light|fire hydrant|"
    "stop sign|parking meter|bench|bird|cat|dog|horse|sheep|cow|elephant|bear|zebra|giraffe|"
    "backpack|umbrella|handbag|tie|suitcase|frisbee|skis|snowboard|sports ball|kite|"
    "baseball bat|baseball glove|skateboard|surfboard|tennis racket|bottle|wine glass|cup|fork|"
    "knife|spoon|bowl|banana|apple|sandwich|orange|broccoli|carrot|hot dog|pizza|donut|cake|"
    "chair|couch|potted plant|bed|dining table|toilet|tv|laptop|mouse|remote|keyboard|"
    "cell phone|microwave|oven|toaster|sink|refrigerator|book|clock|vase|scissors|teddy bear|"
    "hair drier|toothbrush|banner|blanket|bridge|cardboard|counter|curtain|door-stuff|"
    "floor-wood|flower|fruit|gravel|house|light|mirror-stuff|net|pillow|platform|playingfield|"
    "railroad|river|road|roof|sand|sea|shelf|snow|stairs|tent|towel|wall-brick|wall-stone|"
    "wall-tile|wall-wood|water-other|window-blind|window-other|tree-merged|fence-merged|"
    "ceiling-merged|sky-other-merged|cabinet-merged|table-merged|floor-other-merged|"
    "pavement-merged|mountain-merged|grass-merged|dirt-merged|paper-merged|food-other-merged|"
    "building-other-merged|rock-merged|wall-other-merged|rug-merged"
).split("|")
COCO_ID2LABEL = dict(enumerate(COCO_NAMES))
# COCO's sparse ids: 1..90 for things (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused), then stuff.
COCO_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90, 92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128,
    130, 133, 138, 141, 144, 145, 147, 148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171,
    175, 176, 177, 178, 180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195,
    196, 197, 198, 199, 200,
]

# The id2label of HF's ADE20K checkpoints (150 SceneParsing classes, short names, one with a
# trailing space, as the hub's label file has it).
ADE_NAMES = (
    "wall|building|sky|floor|tree|ceiling|road|bed |windowpane|grass|cabinet|sidewalk|person|"
    "earth|door|table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|"
    "mirror|rug|field|armchair|seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|"
    "box|column|signboard|chest of drawers|counter|sand|sink|skyscraper|fireplace|refrigerator|"
    "grandstand|path|stairs|runway|case|pool table|pillow|screen door|stairway|river|bridge|"
    "bookcase|blind|coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|"
    "kitchen island|computer|swivel chair|boat|bar|arcade machine|hovel|bus|towel|light|truck|"
    "tower|chandelier|awning|streetlight|booth|television receiver|airplane|dirt track|apparel|"
    "pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|"
    "conveyer belt|canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|"
    "minibike|cradle|oven|ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|"
    "dishwasher|screen|blanket|sculpture|hood|sconce|vase|traffic light|tray|ashcan|fan|pier|"
    "crt screen|plate|monitor|bulletin board|shower|radiator|glass|clock|flag"
).split("|")

CITYSCAPES_NAMES = (
    "road|sidewalk|building|wall|fence|pole|traffic light|traffic sign|vegetation|terrain|sky|"
    "person|rider|car|truck|bus|train|motorcycle|bicycle"
).split("|")


def test_bundled_counts_and_ids():
    coco = bundled("coco_panoptic")
    assert len(coco) == 133
    assert sum(c.isthing for c in coco) == 80
    assert sum(not c.isthing for c in coco) == 53
    assert [c.id for c in coco] == COCO_IDS
    assert all(1 <= c.id <= 200 for c in coco)

    ade = bundled("ade20k")
    assert [c.id for c in ade] == list(range(150))
    assert sum(c.isthing for c in ade) == 100  # ADE20K panoptic: 100 things, 50 stuff

    city = bundled("cityscapes")
    assert [c.id for c in city] == list(range(19))
    assert [c.name for c in city] == CITYSCAPES_NAMES
    assert {c.name for c in city if c.isthing} == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}

    for name in BUNDLED:
        for c in bundled(name):
            assert len(c.color) == 3 and all(0 <= v <= 255 for v in c.color)
            assert c.name == c.name.strip()


def test_bundled_spot_values():
    coco = {c.id: c for c in bundled("coco_panoptic")}
    assert (coco[1].name, coco[1].isthing, coco[1].color) == ("person", True, (220, 20, 60))
    assert (coco[199].name, coco[199].isthing) == ("wall-other-merged", False)
    assert coco[187].color == (70, 130, 180)
    city = bundled("cityscapes")
    assert city[0].color == (128, 64, 128) and city[18].color == (119, 11, 32)


def test_coco_checkpoint_maps_to_coco_ids():
    ls = match_label_set(COCO_ID2LABEL)
    assert ls.name == "coco_panoptic"
    assert ls.model_to_category == dict(enumerate(COCO_IDS))
    assert ls.category(0).name == "person"
    assert ls.category(80).id == 92 and ls.category(80).name == "banner"
    assert ls.category(132).id == 200
    assert ls.stuff_model_labels() == set(range(80, 133))


def test_coco_instance_checkpoint_maps_to_thing_ids():
    # Instance checkpoints carry the 80 thing names only.
    ls = match_label_set(dict(enumerate(COCO_NAMES[:80])))
    assert ls.name == "coco_panoptic"
    assert ls.model_to_category == dict(enumerate(COCO_IDS[:80]))
    assert ls.stuff_model_labels() == set()


def test_coco_names_without_merged_suffix_still_match():
    names = [n.replace("-other-merged", "").replace("-merged", "") for n in COCO_NAMES]
    ls = match_label_set(dict(enumerate(names)))
    assert ls.model_to_category == dict(enumerate(COCO_IDS))


def test_ade_checkpoint_maps_index_to_same_id():
    ls = match_label_set(dict(enumerate(ADE_NAMES)))
    assert ls.name == "ade20k"
    assert ls.model_to_category == {i: i for i in range(150)}
    assert len(ls.categories) == 150
    ade = bundled("ade20k")
    assert ls.stuff_model_labels() == {c.id for c in ade if not c.isthing}
    assert len(ls.stuff_model_labels()) == 50
    assert ls.category(12).name == "person" and ls.category(12).isthing
    assert ls.category(0).name == "wall" and not ls.category(0).isthing


def test_ade_detectron2_names_match_too():
    ls = match_label_set({c.id: c.name for c in bundled("ade20k")})
    assert ls.model_to_category == {i: i for i in range(150)}


def test_cityscapes_checkpoint_uses_train_ids():
    ls = match_label_set(dict(enumerate(CITYSCAPES_NAMES)))
    assert ls.name == "cityscapes"
    assert ls.model_to_category == {i: i for i in range(19)}
    assert ls.stuff_model_labels() == set(range(11))


def test_string_keys_as_in_a_config_json():
    ls = match_label_set({str(i): n for i, n in enumerate(CITYSCAPES_NAMES)})
    assert ls.model_to_category == {i: i for i in range(19)}


def test_nearly_matching_model_keeps_the_set_and_reports_the_rest(caplog):
    names = list(COCO_NAMES)
    names[5] = "hovercraft"  # 132 of 133 match
    with caplog.at_level(logging.WARNING, logger="segpipe.labels"):
        ls = match_label_set(dict(enumerate(names)), model="acme/seg")
    assert ls.name == "coco_panoptic"
    assert ls.model_to_category[0] == 1 and ls.model_to_category[6] == 7
    extra = ls.category(5)
    assert extra.name == "hovercraft" and extra.id > 200 and extra.isthing
    assert "hovercraft" in caplog.text and "acme/seg" in caplog.text


def test_unknown_labels_fall_back_deterministically(caplog):
    id2label = {0: "widget", 1: "gizmo", 2: "sprocket"}
    with caplog.at_level(logging.WARNING, logger="segpipe.labels"):
        a = match_label_set(id2label, model="acme/parts")
    b = match_label_set(id2label)
    assert a == b
    assert a.name == "model"
    assert [(c.id, c.name, c.isthing) for c in a.categories] == [
        (1, "widget", True), (2, "gizmo", True), (3, "sprocket", True)]
    assert a.model_to_category == {0: 1, 1: 2, 2: 3}
    assert a.categories[0].color == hash_color("widget")
    assert hash_color("widget") != hash_color("gizmo")
    assert a.stuff_model_labels() == set()
    assert "acme/parts" in caplog.text


def test_preferred_set_must_fit():
    ls = match_label_set(dict(enumerate(CITYSCAPES_NAMES)), preferred="cityscapes")
    assert ls.name == "cityscapes"
    with pytest.raises(ValueError, match="ade20k"):
        match_label_set(dict(enumerate(CITYSCAPES_NAMES)), preferred="ade20k")
    with pytest.raises(ValueError, match="unknown label set"):
        match_label_set(dict(enumerate(CITYSCAPES_NAMES)), preferred="voc")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_label_map_overrides_bundled(tmp_path):
    # A COCO model whose output is collapsed to two categories by an explicit map.
    cats = [
        {"id": 1, "name": "person", "isthing": 1, "color": [1, 2, 3], "model_label": 0},
        {"id": 2, "name": "background", "isthing": 0,
         "model_label": list(range(1, 133))},
    ]
    ls = match_label_set(COCO_ID2LABEL, label_map=_write(tmp_path / "map.json", cats))
    assert ls.name == "custom"
    assert [c.name for c in ls.categories] == ["person", "background"]
    assert ls.model_to_category[0] == 1 and ls.model_to_category[132] == 2
    assert ls.stuff_model_labels() == set(range(1, 133))
    assert ls.categories[1].color == hash_color("background")


def test_label_map_matches_by_name_and_reads_fsspec_urls():
    cats = {"categories": [  # a COCO annotation file's categories work as is
        {"id": 10, "name": "Widget", "isthing": 1},
        {"id": 20, "name": "gizmo_part", "isthing": 0, "color": [9, 9, 9]},
    ]}
    url = "memory://labels/map.json"
    with fsspec.open(url, "w") as f:
        json.dump(cats, f)
    ls = label_set_from_file(url, {0: "gizmo-part", 1: "widget"})
    assert ls.model_to_category == {0: 20, 1: 10}
    assert ls.stuff_model_labels() == {0}


def test_label_map_missing_a_model_label_raises(tmp_path):
    cats = [{"id": 1, "name": "widget", "isthing": 1}]
    path = _write(tmp_path / "map.json", cats)
    with pytest.raises(ValueError, match="gizmo") as err:
        match_label_set({0: "widget", 1: "gizmo"}, label_map=path, model="acme/parts")
    assert "acme/parts" in str(err.value) and "1" in str(err.value)


def test_label_map_rejects_bad_model_label_and_duplicate_ids(tmp_path):
    bad = [{"id": 1, "name": "widget", "model_label": 7}]
    with pytest.raises(ValueError, match="model label 7"):
        label_set_from_file(_write(tmp_path / "a.json", bad), {0: "widget"})
    dup = [{"id": 1, "name": "widget"}, {"id": 1, "name": "gizmo"}]
    with pytest.raises(ValueError, match="not unique"):
        label_set_from_file(_write(tmp_path / "b.json", dup), {0: "widget", 1: "gizmo"})


def test_empty_id2label_raises():
    with pytest.raises(ValueError):
        match_label_set({})
