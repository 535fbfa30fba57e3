"""Job specs: the shipped jobs/*.yaml load, fields are checked against JobConfig, ${VAR}s
expand, command-line overrides win, and a spec runs end to end on a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segpipe.app.jobspec import (
    AnnotateStep,
    ExportStep,
    SpecError,
    load_spec,
    run_spec,
    with_overrides,
)
from segpipe.cli import main
from tests.support.images import write_images

JOBS = Path(__file__).resolve().parents[2] / "jobs"
LAKE = {"SEGPIPE_SRC": "s3://lake/raw/", "SEGPIPE_DST": "s3://lake/prelabels/daily"}


def write_spec(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_shipped_spec_loads(monkeypatch):
    for name, value in LAKE.items():
        monkeypatch.setenv(name, value)
    specs = {p.stem: load_spec(str(p)) for p in sorted(JOBS.glob("*.yaml"))}
    assert set(specs) >= {"annotate", "enrich", "bootstrap", "demo"}

    (big,) = specs["annotate"].steps
    assert big.config.src == "s3://lake/raw/" and big.config.dst == "s3://lake/prelabels/daily"
    assert big.config.model == "facebook/mask2former-swin-large-coco-panoptic"
    assert (big.config.dtype, big.config.batch_size) == ("bf16", 16)

    (daily,) = specs["enrich"].steps
    assert daily.config.incremental is True

    annotate, export = specs["bootstrap"].steps
    assert isinstance(annotate, AnnotateStep) and isinstance(export, ExportStep)
    assert export.format == "labelstudio" and export.dst is None
    assert export.out.startswith("s3://lake/prelabels/daily/")

    (demo,) = specs["demo"].steps
    assert demo.config.model == "builtin:demo"


def test_demo_spec_runs_without_any_variable(monkeypatch):
    for name in LAKE:
        monkeypatch.delenv(name, raising=False)
    (step,) = load_spec(str(JOBS / "demo.yaml")).steps
    assert (step.config.src, step.config.dst) == ("demo-data/images", "demo-out")


def test_unknown_field_is_refused_naming_field_and_file(tmp_path):
    path = write_spec(tmp_path, "annotate: {src: a, dst: b, batchsize: 4}\n")
    with pytest.raises(SpecError, match=r"job\.yaml.*'batchsize' \(did you mean 'batch_size'\?\)"):
        load_spec(path)


@pytest.mark.parametrize("text, message", [
    ("anotate: {src: a, dst: b}\n", r"unknown top-level key 'anotate'"),
    ("steps: [{exprot: {format: cvat, out: o, dst: d}}]\n", r"unknown step kind 'exprot'"),
    ("annotate: {src: a, dst: b}\nsteps: []\n", r"exactly one of"),
    ("annotate: {src: a}\n", r"missing field 'dst'"),
    ("annotate: {src: a, dst: b, batch_size: many}\n", r"batch_size: must be an integer"),
    ("annotate: {src: a, dst: b, task: panoptik}\n", r"step 1 \(annotate\): --task must be one of"),
    ("annotate: {src: a, dst: b}\nname: x\nname: y\n", r"'name' given twice"),
    ("steps: [{export: {format: cvat, out: o}}]\n", r"`dst:` is required"),
    ("steps: [{annotate: {src: a, dst: b}}, {export: {format: coco, out: o}}]\n",
     r"format must be one of coco-instance, cvat, labelstudio, coco-panoptic, coco-results"),
    ("annotate: {src: a, dst: b, storage_options: {secret: hunter2}}\n",
     r"storage_options\.secret: secrets don't belong in a job spec"),
])
def test_invalid_specs_are_refused(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, text))


def test_variables_expand_everywhere_and_convert_to_field_types(tmp_path):
    path = write_spec(tmp_path, """
name: dated
annotate:
  src: s3://${BUCKET}/raw/${DAY}/
  dst: ${OUT:-s3://fallback/out}
  batch_size: ${BATCH}
  incremental: ${INCREMENTAL}
  storage_options: {endpoint_url: "${ENDPOINT}", secret: "${S3_SECRET}"}
""")
    env = {"BUCKET": "lake", "DAY": "2026-11-27", "BATCH": "12", "INCREMENTAL": "true",
           "ENDPOINT": "http://127.0.0.1:9000", "S3_SECRET": "from-the-environment"}
    (step,) = load_spec(path, env=env).steps
    assert step.config.src == "s3://lake/raw/2026-11-27/"
    assert step.config.dst == "s3://fallback/out"
    assert step.config.batch_size == 12 and step.config.incremental is True
    assert step.config.storage_options == {"endpoint_url": "http://127.0.0.1:9000",
                                           "secret": "from-the-environment"}


@pytest.mark.parametrize("env", [{}, {"SEGPIPE_DST": ""}])
def test_missing_variable_is_a_clear_error(env):
    with pytest.raises(SpecError, match=r"enrich\.yaml: step 1 \(annotate\): src: "
                                        r"environment variable SEGPIPE_SRC is not set"):
        load_spec(str(JOBS / "enrich.yaml"), env=env)
    with pytest.raises(SpecError, match=r"dst: environment variable SEGPIPE_DST is not set"):
        load_spec(str(JOBS / "enrich.yaml"), env={"SEGPIPE_SRC": "s3://a/", **env})


def test_malformed_reference_is_refused(tmp_path):
    path = write_spec(tmp_path, "annotate: {src: '${SRC', dst: b}\n")
    with pytest.raises(SpecError, match=r"src: malformed variable reference"):
        load_spec(path, env={"SRC": "x"})


def test_overrides_win_over_the_spec():
    spec = load_spec(str(JOBS / "annotate.yaml"), env=LAKE)
    (step,) = with_overrides(spec, {"batch_size": 4, "dst": "s3://elsewhere/out",
                                    "dtype": "fp16", "progress": True}).steps
    assert (step.config.batch_size, step.config.dst, step.config.dtype) == (4, "s3://elsewhere/out",
                                                                            "fp16")
    assert step.config.model == "facebook/mask2former-swin-large-coco-panoptic"  # kept
    with pytest.raises(SpecError, match=r"unknown override 'batchsize'"):
        with_overrides(spec, {"batchsize": 4})
    with pytest.raises(SpecError, match=r"--batch-size must be at least 1"):
        with_overrides(spec, {"batch_size": 0})


def test_src_and_dst_overrides_need_a_single_annotate_step(tmp_path):
    path = write_spec(tmp_path, """
steps:
  - annotate: {src: a, dst: b}
  - annotate: {src: c, dst: d}
""")
    spec = load_spec(path)
    assert all(s.config.batch_size == 2 for s in with_overrides(spec, {"batch_size": 2}).steps)
    with pytest.raises(SpecError, match=r"--dst can't override a spec with 2 annotate steps"):
        with_overrides(spec, {"dst": "x"})


@pytest.mark.usefixtures("ray_cluster")
def test_run_spec_runs_the_demo_spec_with_overrides(tmp_path, tiny_model, capsys):
    write_images(tmp_path / "images", 5)
    dst = tmp_path / "out"
    spec = load_spec(str(JOBS / "demo.yaml"), env={})
    rc = run_spec(spec, {"src": str(tmp_path / "images"), "dst": str(dst), "model": tiny_model,
                         "shard_size": 2, "num_workers": 1, "progress": False})
    assert rc == 0
    printed = capsys.readouterr().out
    assert "demo step 1/1 annotate: run 00001: 5 images" in printed
    panoptic = json.loads((dst / "panoptic.json").read_text())
    assert len(panoptic["images"]) == 5


@pytest.mark.usefixtures("ray_cluster")
def test_cli_run_subcommand(tmp_path, tiny_model, capsys):
    write_images(tmp_path / "images", 3, seed=4)
    spec = write_spec(tmp_path, "name: cli\nannotate: {src: '${IMAGES}', dst: unused}\n")
    args = ["run", spec, "--dst", str(tmp_path / "out"), "--model", tiny_model,
            "--shard-size", "2", "--num-workers", "1", "--no-progress"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMAGES", str(tmp_path / "images"))
        assert main(args) == 0
        assert main(args) == 0  # a rerun resumes: nothing left to do
        printed = capsys.readouterr().out
        assert printed.count("cli step 1/1 annotate: run 00001: 3 images") == 2
        assert main(["run", spec, "--batch-size", "0"]) == 1
        assert "--batch-size must be at least 1" in capsys.readouterr().err
