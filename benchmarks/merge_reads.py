"""The merged panoptic.json on an object store: fragments read one at a time against
`FRAGMENT_READS` at once, on the same destination (a moto S3 server on 127.0.0.1), in
alternating rounds.

    python -m benchmarks.merge_reads [--images 400] [--shard-size 4] [--rounds 3]

A job's merge runs after its last commit: it is part of the fixed cost a user waits for, and
on a store each fragment is a round trip. The destination is made by `segpipe annotate` with
small shards, for many fragments. Prints one JSON line per round and writes
benchmarks/results/merge_reads.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import boto3

from benchmarks.common import emit, local_s3, run_annotate, write_result
from benchmarks.peers import render_corpus
from segpipe.destination.committed import committed_shards
from segpipe.destination.merge import FRAGMENT_READS, write_merged_panoptic
from segpipe.io.storage import Folder, filesystem


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = Path(tempfile.gettempdir()) / "segpipe-peers" / f"640x480-{args.images}"
    images = render_corpus(corpus, 640, 480, args.images)
    with local_s3():
        boto3.client("s3").create_bucket(Bucket="bench")
        fs, _ = filesystem("s3://bench")
        fs.put([str(p) for p in images], "bench/raw/")
        dst = "s3://bench/prelabels"
        run_annotate("s3://bench/raw/", dst, "--model", "builtin:demo",
                     "--shard-size", str(args.shard_size))
        folder = Folder(dst)
        fragments = len(committed_shards(folder))
        rounds = []
        for index in range(args.rounds):
            seconds = {}
            order = (1, FRAGMENT_READS) if index % 2 == 0 else (FRAGMENT_READS, 1)
            for reads in order:
                started = time.perf_counter()
                write_merged_panoptic(folder, reads=reads)
                seconds[reads] = time.perf_counter() - started
            row = {"round": index + 1, "one_at_a_time_s": round(seconds[1], 3),
                   "at_once_s": round(seconds[FRAGMENT_READS], 3)}
            emit(row)
            rounds.append(row)
    one = statistics.median(r["one_at_a_time_s"] for r in rounds)
    many = statistics.median(r["at_once_s"] for r in rounds)
    result = {"images": args.images, "fragments": fragments,
              "reads_at_once": FRAGMENT_READS, "rounds": rounds,
              "median": {"one_at_a_time_s": one, "at_once_s": many},
              "one_at_a_time_over_at_once": round(one / many, 2)}
    emit(result)
    write_result("merge_reads", result)


if __name__ == "__main__":
    main()
