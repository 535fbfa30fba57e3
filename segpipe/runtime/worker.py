"""A shard worker: a Ray actor that loads the model once and processes shards, with the
Ray metrics it exports. Knows nothing of models; it runs `pipeline.process_shard`."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from segpipe.core.config import JobConfig
from segpipe.core.items import RunContext, ShardResult
from segpipe.destination.plan import load_shard
from segpipe.io.storage import Folder
from segpipe.model.segmenter import Segmenter
from segpipe.runtime.allocator import keep_freed_memory
from segpipe.sources import Source


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads, before it knows which run it serves: the pool starts workers
    while the driver still plans, so that their model loads beside the planning."""

    segmenter: Segmenter
    torch_threads: int | None = None

    @classmethod
    def from_config(cls, config: JobConfig, *, torch_threads: int | None) -> WorkerSpec:
        return cls(Segmenter.from_config(config), torch_threads=torch_threads)


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to process a run's shards, known once the run is planned; plain
    data so it pickles cheaply (the pool puts it in the object store once per run)."""

    source: Source
    dst: Folder
    run: RunContext
    batch_size: int
    read_threads: int
    max_pixels: int
    read_timeout: float | None = None  # seconds per image read; None: no limit
    # Threads for the worker's per-image CPU work (decode, post-process, encode): its CPUs.
    cpu_threads: int = 1
    jpeg_draft: bool = False  # JPEGs decode as drafts just large enough for the model
    fault: str | None = None  # test hook: a shard id that always fails, named in SEGPIPE_FAULT_SHARD

    @classmethod
    def from_config(cls, config: JobConfig, *, source: Source, dst: Folder, run: RunContext,
                    fault: str | None = None) -> ShardJob:
        return cls(source, dst, run, config.batch_size, config.read_threads,
                   config.max_image_pixels, read_timeout=config.read_timeout,
                   # Per-image CPU work spreads over the CPUs the worker declares.
                   cpu_threads=max(1, int(config.cpus_per_worker)),
                   jpeg_draft=config.jpeg_draft, fault=fault)


@ray.remote(max_restarts=0)
class ShardWorker:
    """Loads the model once; processes shards. Two calls may run at once so that the
    next shard reads while this one computes; the model lock keeps forwards serial."""

    def __init__(self, spec: WorkerSpec) -> None:
        # Before the model loads, so that its weights and every batch use the tuned heaps.
        self.allocator_tuned = keep_freed_memory()
        self.spec = spec
        self.model_lock = threading.Lock()
        self.metrics = WorkerMetrics()

    def node(self) -> str:
        """Answers as soon as the actor runs: the pool's sign that a node could host it."""
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> dict[str, Any]:
        import torch

        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        loaded = self.spec.segmenter.setup()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(loaded.device), "gpu_ids": ray.get_gpu_ids(),
                "weights_sha256": loaded.weights_sha256, "allocator_tuned": self.allocator_tuned,
                "ready_at": time.time()}

    def process(self, job: ShardJob, shard_id: str, attempt: int) -> ShardResult:
        from segpipe.pipeline.shard import process_shard

        if job.fault and job.fault == shard_id:
            raise RuntimeError(f"injected fault in shard {shard_id}")
        shard = load_shard(job.dst, job.run.run_id, shard_id)
        result = process_shard(
            shard, source=job.source, segmenter=self.spec.segmenter, dst=job.dst, run=job.run,
            batch_size=job.batch_size, attempt=attempt, read_threads=job.read_threads,
            max_pixels=job.max_pixels, read_timeout=job.read_timeout,
            model_lock=self.model_lock, cpu_threads=job.cpu_threads, jpeg_draft=job.jpeg_draft,
        )
        self.metrics.observe(result)
        return dataclasses.replace(result, pid=os.getpid(), peak_rss_mb=peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak resident memory."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class WorkerMetrics:
    """Ray metrics, exported to the dashboard and Prometheus by every node."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.images = metrics.Counter("segpipe_images", "Images processed.")
        self.segments = metrics.Counter("segpipe_segments", "Segments written.")
        self.errors = metrics.Counter("segpipe_errors", "Images that ended in the errors table.")
        self.shards = metrics.Counter("segpipe_shards", "Shards committed.")
        self.batch_latency = metrics.Histogram(
            "segpipe_batch_seconds", "Model batch latency (preprocess and forward; post-processing overlaps the next batch).",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60])

    def observe(self, result: ShardResult) -> None:
        marker = result.marker
        for counter, value in ((self.images, marker.images), (self.segments, marker.segments),
                               (self.errors, marker.errors), (self.shards, 1)):
            if value > 0:  # Ray counters refuse an increment of zero
                counter.inc(value)
        for seconds in result.batch_seconds:
            self.batch_latency.observe(seconds)
