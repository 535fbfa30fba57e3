"""segpipe.model.postprocess against the transformers processors it replaces, on the same outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segpipe.model import postprocess
from segpipe.model.loading import FAMILIES
from segpipe.model.postprocess import SegmentationResult
from segpipe.model.postprocess.tiling import make_grid
from tests.support.checkpoints import tiny_mask2former

SIZES = [(97, 130), (60, 80), (150, 110), (128, 128)]  # non-square, different in one batch
THINGS = set(range(0, 20, 2))


@pytest.fixture(autouse=True)
def _one_thread_quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "label_ids_to_fuse unset" on every panoptic call
    # Many small tensor ops: on a shared 2-core machine, thread hand-offs cost more than they give.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_outputs(batch: int, *, queries: int = 60, classes: int = 20, mask_size=(24, 32),
                 kept: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs with `kept` confident queries per image whose soft masks tile the image (a
    Voronoi partition of all queries' seeds) and overlap at the borders; the other queries
    predict "no object"."""
    gen = torch.Generator().manual_seed(seed)
    h, w = mask_size
    cls = torch.randn(batch, queries, classes + 1, generator=gen)
    cls[..., -1] += 2.0
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    masks = torch.empty(batch, queries, h, w)
    for b in range(batch):
        chosen = torch.randperm(queries, generator=gen)[:kept]
        labels = torch.randint(0, classes, (kept,), generator=gen)
        cls[b, chosen, labels] = 9.0 + 3.0 * torch.rand(kept, generator=gen)
        cy = torch.rand(queries, 1, 1, generator=gen) * h
        cx = torch.rand(queries, 1, 1, generator=gen) * w
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        masks[b] = 2.0 * (dist.sort(0).values[1] - dist) - 0.5
        masks[b] += 0.3 * torch.randn(queries, h, w, generator=gen)
    return cls, masks


def processor(family: str):
    from transformers import (
        Mask2FormerImageProcessor,
        MaskFormerImageProcessor,
        OneFormerImageProcessor,
    )

    if family == "mask2former":
        return Mask2FormerImageProcessor()
    if family == "maskformer":
        return MaskFormerImageProcessor()
    proc = OneFormerImageProcessor()
    # Its instance post-processing reads these; they normally come from a class-info file.
    proc.class_info_file = "in-memory"
    proc.metadata = {"thing_ids": sorted(THINGS)}
    return proc


def transformers_run(family: str, task: str, cls, masks, sizes, **kwargs) -> list:
    outputs = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    method = getattr(processor(family), f"post_process_{task}_segmentation")
    return method(outputs, target_sizes=sizes, **kwargs)


def instance_id_shift(family: str) -> int:
    """Transformers' Mask2Former/MaskFormer instance ids start at 0; ours (and OneFormer's) at 1."""
    return 0 if family == "oneformer" else 1


def assert_same(ours: list[SegmentationResult], theirs: list, *, shift: int = 0) -> list[int]:
    """Same segments (ids, labels, was_fused), scores within 1e-4, id maps equal on >= 99.9%
    of pixels. Transformers lists a fused segment once per query; its first entry counts."""
    counts = []
    for mine, ref in zip(ours, theirs, strict=True):
        seg_map = ref["segmentation"]
        expected_map = torch.where(seg_map < 0, 0, seg_map + shift).to(torch.int32)
        assert mine.id_map.dtype == torch.int32
        assert mine.id_map.shape == expected_map.shape
        assert (mine.id_map == expected_map).float().mean().item() >= 0.999
        first = {}
        for info in ref["segments_info"]:
            first.setdefault(info["id"] + shift, info)
        assert [(s.segment_id, s.label_id, s.was_fused) for s in mine.segments] == [
            (i, info["label_id"], info["was_fused"]) for i, info in first.items()]
        for seg in mine.segments:
            assert seg.score == pytest.approx(first[seg.segment_id]["score"], abs=1e-4)
        counts.append(len(mine.segments))
    return counts


def assert_same_semantic(ours: list[SegmentationResult], theirs: list) -> list[int]:
    """One segment per present class, ids ascending by class; class maps equal on >= 99.9%."""
    counts = []
    for mine, ref in zip(ours, theirs, strict=True):
        present = ref.unique().tolist()
        assert [(s.segment_id, s.label_id, s.score) for s in mine.segments] == [
            (i + 1, c, None) for i, c in enumerate(present)]
        label_of = torch.tensor([-1] + present)
        assert mine.id_map.dtype == torch.int32 and mine.id_map.shape == ref.shape
        assert (label_of[mine.id_map.long()] == ref).float().mean().item() >= 0.999
        counts.append(len(present))
    return counts


def once_per_label(cls: torch.Tensor, threshold: float) -> set[int]:
    """Labels kept by exactly one query in every image: fused without a repeat, so ids match
    transformers exactly (a repeat is where it reuses ids; see test_fusion_keeps_ids_unique)."""
    scores, labels = cls.softmax(-1).max(-1)
    kept = (labels != cls.shape[-1] - 1) & (scores > threshold)
    per_image = [torch.bincount(labels[i][kept[i]], minlength=cls.shape[-1])
                 for i in range(len(cls))]
    return {c for c in range(cls.shape[-1] - 1) if all(int(n[c]) <= 1 for n in per_image)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 4])
def test_same_as_transformers_with_many_overlapping_segments(family: str, batch: int) -> None:
    cls, masks = make_outputs(batch, seed=batch)
    sizes = SIZES[:batch] if batch > 1 else [(97, 130)]
    fuse = once_per_label(cls, 0.8)
    assert fuse, "the fusion path must be exercised"

    ours = postprocess.post_process_panoptic(cls, masks, sizes, threshold=0.8,
                                             label_ids_to_fuse=fuse, family=family)
    theirs = transformers_run(family, "panoptic", cls, masks, sizes, threshold=0.8,
                              label_ids_to_fuse=fuse)
    assert min(assert_same(ours, theirs)) >= 30
    assert any(s.was_fused for r in ours for s in r.segments)

    ours = postprocess.post_process_instance(cls, masks, sizes, threshold=0.5, family=family)
    theirs = transformers_run(family, "instance", cls, masks, sizes, threshold=0.5)
    assert min(assert_same(ours, theirs, shift=instance_id_shift(family))) >= 30

    ours = postprocess.post_process_semantic(cls, masks, sizes, family=family)
    theirs = transformers_run(family, "semantic", cls, masks, sizes)
    assert min(assert_same_semantic(ours, theirs)) >= 10


@pytest.mark.parametrize("family", FAMILIES)
def test_same_as_transformers_without_target_sizes(family: str) -> None:
    cls, masks = make_outputs(2, seed=7)
    ours = postprocess.post_process_panoptic(cls, masks, None, threshold=0.8, family=family)
    theirs = transformers_run(family, "panoptic", cls, masks, None, threshold=0.8)
    assert min(assert_same(ours, theirs)) >= 30
    ours = postprocess.post_process_instance(cls, masks, None, threshold=0.5, family=family)
    theirs = transformers_run(family, "instance", cls, masks, None, threshold=0.5)
    assert min(assert_same(ours, theirs, shift=instance_id_shift(family))) >= 30
    assert_same_semantic(postprocess.post_process_semantic(cls, masks, None, family=family),
                         transformers_run(family, "semantic", cls, masks, None))


def test_oneformer_panoptic_task_keeps_thing_instances_only() -> None:
    cls, masks = make_outputs(2, seed=3)
    ours = postprocess.post_process_instance(cls, masks, SIZES[:2], threshold=0.5,
                                             family="oneformer", thing_ids=THINGS)
    theirs = transformers_run("oneformer", "instance", cls, masks, SIZES[:2], threshold=0.5,
                              task_type="panoptic")
    assert min(assert_same(ours, theirs)) >= 10
    assert {s.label_id for r in ours for s in r.segments} <= THINGS


def test_small_chunks_give_the_same_result() -> None:
    cls, masks = make_outputs(2, seed=5)
    sizes = [(150, 120), (64, 200)]
    for task, kwargs in [("panoptic", {"threshold": 0.8}), ("instance", {"threshold": 0.5}),
                         ("semantic", {})]:
        run = getattr(postprocess, f"post_process_{task}")
        whole = run(cls, masks, sizes, **kwargs)
        chunked = run(cls, masks, sizes, max_chunk_pixels=16384, tile=8, **kwargs)
        for a, b in zip(whole, chunked, strict=True):
            assert torch.equal(a.id_map, b.id_map)
            # Instance mask scores are sums over chunks: equal up to float rounding.
            assert [(s.segment_id, s.label_id, s.was_fused) for s in a.segments] == [
                (s.segment_id, s.label_id, s.was_fused) for s in b.segments]
            for x, y in zip(a.segments, b.segments, strict=True):
                assert x.score == y.score or abs(x.score - y.score) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_and_tiled_merges_agree(family: str) -> None:
    """Which merge a target gets is a cost choice (`fits_dense`), never a change in the
    result: called directly, both give the same segments and the same id map."""
    from segpipe.model.postprocess.merging import merge, merge_dense

    fam = FAMILIES[family]
    cls, masks = make_outputs(1, seed=11)
    scores, labels = cls[0].softmax(-1).max(-1)
    kept = ((labels != cls.shape[-1] - 1) & (scores > 0.8)).nonzero().flatten()
    source = masks[0, kept] if fam.mid_size is not None else masks[0, kept].sigmoid()
    fuse = once_per_label(cls, 0.8)
    options = {"mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8, "fuse_labels": fuse}
    for size in [(60, 80), (97, 130), (240, 320)]:
        dense = merge_dense(source, scores[kept], labels[kept], size, fam, **options)
        grid = make_grid(tuple(source.shape[-2:]), fam.mid_size, size, antialias=fam.antialias,
                         tile=16, between=torch.sigmoid if fam.mid_size else None,
                         device=source.device)
        tiled = merge(grid, source, scores[kept], labels[kept], max_chunk_pixels=1 << 22,
                      **options)
        assert torch.equal(dense.id_map, tiled.id_map), size
        assert dense.segments == tiled.segments
        assert len(dense.segments) >= 30


def test_the_cpu_threshold_count_compares_in_float32_as_torch_does() -> None:
    """The dense merge counts pixels >= mask_threshold with numpy on the CPU. 0.7 rounds down
    to float32, so a value of float32(0.7) passes in float32 and fails in float64: the
    count must be torch's, value for value."""
    from segpipe.model.postprocess.merging import _count_at_least

    edge = np.float32(0.7)
    around = [np.nextafter(edge, np.float32(0)), edge, np.nextafter(edge, np.float32(1))]
    values = torch.tensor([[around, around[::-1]], [[edge] * 3, [0.0, 1.0, edge]]])
    got = _count_at_least(values, 0.7)
    assert got.tolist() == (values >= 0.7).flatten(1).sum(1).tolist() == [4, 5]
    assert got.dtype == torch.int64


def test_the_merge_choice_is_per_device_and_never_changes_the_result() -> None:
    """On a CPU a 640x480 target with five kept queries is tiled (cheaper there); on a GPU the
    same target stays dense up to the memory cap. Forcing either through the public function
    gives the same id maps and segments."""
    from segpipe.model.postprocess.merging import fits_dense
    from segpipe.model.postprocess.tiling import DEFAULT_MAX_CHUNK_PIXELS

    fam = FAMILIES["mask2former"]
    cap = DEFAULT_MAX_CHUNK_PIXELS
    assert not fits_dense(5, (480, 640), fam, cap, device=torch.device("cpu"))
    assert fits_dense(5, (240, 320), fam, cap, device=torch.device("cpu"))
    assert fits_dense(5, (480, 640), fam, cap, device=torch.device("cuda"))
    assert not fits_dense(5, (480, 640), fam, cap, device=torch.device("cuda"), max_pairs=0)
    cls, masks = make_outputs(2, seed=5)
    dense = postprocess.post_process_panoptic(cls, masks, [(120, 160), (97, 130)],
                                              dense_max_pairs=1 << 62)
    tiled = postprocess.post_process_panoptic(cls, masks, [(120, 160), (97, 130)],
                                              dense_max_pairs=0)
    for a, b in zip(dense, tiled, strict=True):
        assert torch.equal(a.id_map, b.id_map) and a.segments == b.segments and a.segments


def test_no_confident_query_gives_void_and_no_segments() -> None:
    cls, masks = make_outputs(2, kept=0, seed=1)
    for family in FAMILIES:
        ours = postprocess.post_process_panoptic(cls, masks, SIZES[:2], family=family)
        theirs = transformers_run(family, "panoptic", cls, masks, SIZES[:2], threshold=0.8)
        assert all(bool((r["segmentation"] == -1).all()) for r in theirs)
        assert_same(ours, theirs)
        assert all(not r.segments and not r.id_map.any() for r in ours)


def _regions(size: tuple[int, int], labels: list[int], score: float = 9.0):
    """One query per vertical band of a (h, w) mask grid, with the given labels."""
    h, w = size
    n = len(labels)
    cls = torch.full((1, n, 8), -5.0)
    masks = torch.full((1, n, h, w), -8.0)
    for q, label in enumerate(labels):
        cls[0, q, label] = score
        masks[0, q, :, q * w // n:(q + 1) * w // n] = 8.0
    return cls, masks


def test_fusion_keeps_ids_unique() -> None:
    # Queries: stuff 5, thing 1, stuff 5 again, thing 2. Transformers gives the second thing
    # the id of the first (its counter goes back to the fused id); here ids stay unique.
    cls, masks = _regions((16, 64), [5, 1, 5, 2])
    [result] = postprocess.post_process_panoptic(cls, masks, [(16, 64)], label_ids_to_fuse={5},
                                                 family="maskformer")
    assert [(s.segment_id, s.label_id, s.was_fused) for s in result.segments] == [
        (1, 5, True), (2, 1, False), (3, 2, False)]
    assert [int(result.id_map[8, x]) for x in (8, 24, 40, 56)] == [1, 2, 1, 3]
    [ref] = transformers_run("maskformer", "panoptic", cls, masks, [(16, 64)],
                             label_ids_to_fuse={5})
    # Where transformers is not ambiguous (the fused stuff), the maps agree.
    assert torch.equal(result.id_map == 1, ref["segmentation"] == 1)


def test_fused_repeat_at_the_end_matches_transformers() -> None:
    cls, masks = _regions((16, 64), [5, 1, 2, 5])
    ours = postprocess.post_process_panoptic(cls, masks, [(40, 90)], label_ids_to_fuse={5})
    theirs = transformers_run("mask2former", "panoptic", cls, masks, [(40, 90)], threshold=0.8,
                              label_ids_to_fuse={5})
    assert assert_same(ours, theirs) == [3]
    assert int(ours[0].id_map[20, 5]) == int(ours[0].id_map[20, 85]) == 1


def test_resampling_equals_interpolate_bit_for_bit() -> None:
    """Exact values follow F.interpolate's arithmetic, so agreement is not luck. (With
    exactly 3 channels F.interpolate takes another path that rounds differently: use 5.)"""
    logits = torch.randn(5, 24, 32, generator=torch.Generator().manual_seed(0)) * 4
    for target, antialias in [((97, 130), False), ((500, 300), False), ((97, 130), True)]:
        for mid in [(384, 384), None]:
            if mid is None:
                expected = F.interpolate(logits[None].sigmoid(), size=target, mode="bilinear",
                                         align_corners=False, antialias=antialias)[0]
                source = logits.sigmoid()
            elif antialias:
                continue
            else:
                probs = F.interpolate(logits[None], size=mid, mode="bilinear",
                                      align_corners=False).sigmoid()
                expected = F.interpolate(probs, size=target, mode="bilinear",
                                         align_corners=False)[0]
                source = logits
            grid = make_grid((24, 32), mid, target, antialias=antialias, tile=16,
                             between=torch.sigmoid, device=torch.device("cpu"))
            tiles = torch.arange(grid.count).repeat(5)
            queries = torch.arange(5).repeat_interleave(grid.count)
            values = grid.target_values(grid.mid_values(source, queries, tiles), None, queries,
                                        tiles)
            image = torch.stack([grid.untile(v) for v in values.view(5, grid.count, 16, 16)])
            assert torch.equal(image, expected)


def test_real_tiny_mask2former_outputs() -> None:
    model = tiny_mask2former([f"LABEL_{i}" for i in range(6)], num_queries=20)
    with torch.no_grad():
        out = model(pixel_values=torch.rand(2, 3, 64, 64))
    cls, masks = out.class_queries_logits, out.masks_queries_logits
    sizes = [(50, 70), (64, 48)]
    ours = postprocess.post_process_panoptic(cls, masks, sizes, threshold=0.5,
                                             overlap_mask_area_threshold=0.5)
    theirs = transformers_run("mask2former", "panoptic", cls, masks, sizes, threshold=0.5,
                              overlap_mask_area_threshold=0.5)
    assert min(assert_same(ours, theirs)) >= 1
    ours = postprocess.post_process_instance(cls, masks, sizes, threshold=0.3)
    theirs = transformers_run("mask2former", "instance", cls, masks, sizes, threshold=0.3)
    assert min(assert_same(ours, theirs, shift=1)) >= 1
    assert_same_semantic(postprocess.post_process_semantic(cls, masks, sizes),
                         transformers_run("mask2former", "semantic", cls, masks, sizes))


def test_trained_demo_model_outputs() -> None:
    """The bundled demo model, trained on synthetic scenes: real, confident, overlapping
    predictions on held-out scenes of several sizes, in one batch, with stuff fusion."""
    from segpipe.demo.synth import make_scene
    from segpipe.model.loading import load_model

    loaded = load_model("builtin:demo")
    scenes = [make_scene(999, i) for i in range(4)]
    pixels = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)
              for s in scenes]
    sizes = [tuple(p.shape[-2:]) for p in pixels]
    assert len(set(sizes)) > 1
    inputs = loaded.processor(images=pixels, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(pixel_values=inputs["pixel_values"])
    cls, masks = out.class_queries_logits, out.masks_queries_logits
    stuff = loaded.label_set.stuff_model_labels()
    ours = postprocess.post_process_panoptic(cls, masks, sizes, label_ids_to_fuse=stuff)
    theirs = transformers_run("mask2former", "panoptic", cls, masks, sizes,
                              label_ids_to_fuse=stuff)
    assert min(assert_same(ours, theirs)) >= 3
    ours = postprocess.post_process_instance(cls, masks, sizes)
    theirs = transformers_run("mask2former", "instance", cls, masks, sizes)
    assert min(assert_same(ours, theirs, shift=1)) >= 2
    assert_same_semantic(postprocess.post_process_semantic(cls, masks, sizes),
                         transformers_run("mask2former", "semantic", cls, masks, sizes))


_LARGE_TARGET = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from tests.model.test_postprocess import make_outputs
from segpipe.model import postprocess
torch.set_num_threads(1)
cls, masks = make_outputs(1, queries=100, classes=20, mask_size=(96, 96), kept=40)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
[pan] = postprocess.post_process_panoptic(cls, masks, [(3000, 4000)], threshold=0.8)
[ins] = postprocess.post_process_instance(cls, masks, [(3000, 4000)], threshold=0.5)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_mib": (after - before) / 1024, "shape": list(pan.id_map.shape),
    "segments": len(pan.segments), "ids": sorted(pan.id_map.unique().tolist()),
    "instance_shape": list(ins.id_map.shape), "instances": len(ins.segments)}}))
"""


def test_4000x3000_target_stays_within_bounded_memory() -> None:
    """40 kept queries at 3000x4000 would need 1.9 GB as one float tensor; the tiled path
    holds an id map and bounded chunks."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    run = subprocess.run([sys.executable, "-c", _LARGE_TARGET.format(root=root)],
                         capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["shape"] == [3000, 4000] and report["instance_shape"] == [3000, 4000]
    assert report["segments"] >= 30 and report["instances"] >= 30
    assert set(report["ids"]) - {0} == set(range(1, report["segments"] + 1))
    assert report["grew_mib"] < 700, report
