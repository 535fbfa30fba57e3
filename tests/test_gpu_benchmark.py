"""benchmarks/gpu.py end to end on the CPU (`--tiny`), as it runs on a bare GPU box:
with ray, pycocotools, s3fs and pyarrow made unimportable, and none of them even tried."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("ray", "pycocotools", "s3fs", "pyarrow")  # not installed on the GPU box
# Import them as if they were not installed (sys.modules[name] = None makes `import name`
# raise ImportError), then run the benchmark as `python -m benchmarks.gpu ...` would.
RUNNER = ("import runpy, sys\n"
          f"for name in {ABSENT!r}:\n"
          "    sys.modules[name] = None\n"
          "runpy.run_module('benchmarks.gpu', run_name='__main__', alter_sys=True)\n")


def test_tiny_cpu_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    # -X importtime logs every import attempt, the failed ones included, on stderr.
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", RUNNER, "--tiny", "--device", "cpu",
         "--dtype", "fp32", "--images", "8", "--batches", "1,4", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    assert run.returncode == 0, "\n".join(log[-40:])

    tried = {m.group(1).split(".")[0] for m in
             re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", run.stderr, re.M)}
    assert "torch" in tried and "transformers" in tried  # the log is what we think it is
    assert not tried & set(ABSENT), f"tried to import {sorted(tried & set(ABSENT))}"

    report = json.loads(out.read_text())
    assert report["name"] == "gpu" and report["device"] == "cpu"
    assert report["model"] == "tiny-mask2former-random" and report["dtype"] == "fp32"
    assert report["params"] > 0 and report["torch"] and report["transformers"]
    rows = report["results"]
    assert [r["batch_size"] for r in rows] == [1, 4]
    for row in rows:
        assert row["images"] == 8 and row["batches"] == 8 // row["batch_size"]
        for key in ("forward_images_per_s", "stage_serial_images_per_s",
                    "stage_pipelined_images_per_s"):
            assert row[key] > 0, (key, row)
        for key in ("outside_forward_fraction", "outside_forward_fraction_serial"):
            assert 0 <= row[key] < 1, (key, row)
        assert row["outside_forward_fraction_vs_forward_only"] < 1
        assert row["pipelined_speedup_over_serial"] > 0
    pp = report["postprocess"]
    assert pp["batch"] == 8 and pp["ours_s"] > 0 and pp["transformers_s"] > 0
    assert pp["speedup"] > 0
    # Each JSON line printed is one of the report's rows.
    printed = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert printed == [*rows, pp]


def test_results_file_takes_only_the_documented_run(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.gpu import RESULTS, parse_args

    assert parse_args([]).out == RESULTS
    assert parse_args(["--tiny"]).out is None  # a smoke run writes only where told
    for argv in (["--tiny"], ["--device", "cpu"], ["--dtype", "fp32"], ["--height", "64"]):
        with pytest.raises(SystemExit):
            parse_args([*argv, "--out", str(ROOT / "benchmarks/results/../results/gpu.json")])
        assert "pass --out elsewhere" in capsys.readouterr().err
