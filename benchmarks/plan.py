"""Planning memory at data-lake scale: does the plan stay bounded as the listing grows?

Plans a synthetic listing (a generator of N keys; no files behind them) into a local
temporary folder, for 1,000,000 and 100,000 keys, each in a fresh subprocess so that
peak RSS belongs to one case. Prints one JSON object per case and writes
results/plan.json with the ratio of peak RSS, 1M over 100k (target: at most 1.5).

    python -m benchmarks.plan
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from segpipe.core.identity import image_id
from segpipe.core.items import ImageRef
from segpipe.destination.plan import write_plan
from segpipe.io.storage import Folder
from segpipe.sources.base import Fetched, Skipped

CASES = (1_000_000, 100_000)
SHARD_SIZE = 256  # the job's default
MAX_RATIO = 1.5
RESULTS = Path(__file__).parent / "results" / "plan.json"


@dataclass
class SyntheticListing:
    """A source whose listing is generated: keys laid out as a dated image prefix would be."""

    url: str
    count: int

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        for i in range(self.count):
            uri = f"{self.url}/{i // 10_000:04d}/{i:08d}.jpg"
            yield ImageRef(image_id(uri), uri, version=f"etag:{i:032x}")

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        raise NotImplementedError("a synthetic listing has no bytes")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(keys: int) -> dict[str, float | int]:
    rss_before = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        plan = write_plan(SyntheticListing("s3://lake/raw", keys), Folder(tmp), "00001", SHARD_SIZE)
        seconds = time.perf_counter() - started
    assert plan.num_images == keys
    return {"keys": keys, "shards": plan.num_shards, "seconds": round(seconds, 2),
            "keys_per_second": round(keys / seconds), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_plan_mb": round(rss_before, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=int, help="run one case in this process (used internally)")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case)), flush=True)
        return
    results = []
    for keys in CASES:
        done = subprocess.run([sys.executable, "-m", "benchmarks.plan", "--case", str(keys)],
                              check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    peak = {r["keys"]: r["peak_rss_mb"] for r in results}
    summary = {"name": "plan", "results": results,
               "ratio_peak_rss_1m_over_100k": round(peak[1_000_000] / peak[100_000], 3),
               "target": {"max_ratio": MAX_RATIO}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"ratio_peak_rss_1m_over_100k": summary["ratio_peak_rss_1m_over_100k"],
                      "target_max_ratio": MAX_RATIO}), flush=True)


if __name__ == "__main__":
    main()
