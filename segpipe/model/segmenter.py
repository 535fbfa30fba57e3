"""The model stage: a batch of decoded images in, compact predictions out.

Resize, normalize, forward and post-processing all run batched on the model's
device; only id maps and small segment lists come back to the CPU. `forward` and
`postprocess` are separate steps so that a pipeline can post-process one batch while the
next one is in the forward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segpipe.core.class_thresholds import ClassThresholds
from segpipe.core.config import TASK_THRESHOLDS, JobConfig, default_of
from segpipe.core.items import DecodedImage, ImageFailure, Prediction
from segpipe.io.storage import redact

# torch (and the model code that needs it) is imported where the model runs, on the worker:
# the driver only builds and pickles a Segmenter, and torch's import costs it seconds.
if TYPE_CHECKING:
    import torch

    from segpipe.model.loading import LoadedModel
    from segpipe.model.postprocess import SegmentationResult



@dataclass
class ForwardedBatch:
    """A batch after the model's forward, before post-processing: its images and raw logits."""

    images: list[DecodedImage]
    class_logits: torch.Tensor  # (B, queries, classes + 1)
    mask_logits: torch.Tensor  # (B, queries, h, w)
    forward_s: float = 0.0  # time in the model's forward

    def single(self, index: int) -> ForwardedBatch:
        """The batch of image `index` alone."""
        return ForwardedBatch([self.images[index]], self.class_logits[index:index + 1],
                              self.mask_logits[index:index + 1])


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Segmenter:
    """Loads its model in `setup()` on the worker, never at construction, so it pickles cheaply."""

    model: str
    task: str = default_of("task")
    revision: str | None = None
    dtype: str = default_of("dtype")
    device: str | None = None
    label_map: str | None = None
    threshold: float | None = None  # None: the task's default (config.TASK_THRESHOLDS)
    mask_threshold: float = default_of("mask_threshold")
    overlap_mask_area_threshold: float = default_of("overlap_mask_area_threshold")
    allow_pickle_weights: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    class_thresholds: ClassThresholds | None = None  # per category name, over `threshold`
    # Panoptic's dense/tiled merge choice (postprocess.fits_dense); None: the device's own.
    # The output is the same either way; benchmarks set it to compare the two.
    dense_max_pairs: int | None = None
    loaded: LoadedModel | None = field(default=None, repr=False)
    label_thresholds: dict[int, float] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: JobConfig) -> Segmenter:
        return cls(config.model, task=config.task, revision=config.revision, dtype=config.dtype,
                   device=config.device, label_map=config.label_map, threshold=config.threshold,
                   mask_threshold=config.mask_threshold,
                   overlap_mask_area_threshold=config.overlap_mask_area_threshold,
                   allow_pickle_weights=config.allow_pickle_weights,
                   storage_options=config.storage_options,
                   class_thresholds=None if config.class_thresholds is None
                   else config.class_threshold_values)

    def setup(self) -> LoadedModel:
        if self.loaded is None:
            from segpipe.model.loading import load_model

            loaded = load_model(
                self.model, revision=self.revision, dtype=self.dtype, device=self.device,
                label_map=self.label_map, allow_pickle_weights=self.allow_pickle_weights,
                storage_options=self.storage_options,
            )
            if self.class_thresholds is not None:  # names the model lacks fail the setup
                labels = loaded.label_set
                self.label_thresholds = self.class_thresholds.by_label(
                    {m: labels.category(m).name for m in labels.model_to_category})
            self.loaded = loaded
        return self.loaded

    def input_edge(self) -> int | None:
        """The fewest pixels a side of an image may have for the model's input to be resized
        from it, never up: the processor's largest target side (a fixed height and width, or
        the shortest edge); None when its config names none."""
        processor = self.setup().processor
        size = getattr(getattr(processor, "image_processor", processor), "size", None) or {}
        values = dict(size)  # a dict, or transformers' SizeDict
        sides = [int(values[k]) for k in ("height", "width", "shortest_edge") if values.get(k)]
        return max(sides) if sides else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["loaded"] = None  # the model never travels; each worker loads its own
        return state

    def __call__(self, images: Sequence[DecodedImage]) -> list[Prediction | ImageFailure]:
        """Segment a batch: `postprocess(forward(images))`."""
        return self.postprocess(self.forward(images))

    def forward(self, images: Sequence[DecodedImage]) -> list[ForwardedBatch | ImageFailure]:
        """Preprocess and forward a batch, in order; on device out-of-memory, split it and
        retry the halves. The post-processing is left to `postprocess`, so that a pipeline can
        run it beside the next batch's forward."""
        import torch

        if not images:
            return []
        try:
            return [self._forward(images)]
        except Exception as exc:
            if not is_out_of_memory(exc):
                if len(images) == 1:
                    return [_failure(images[0], exc)]
                # One bad image must not fail its batch-mates: retry them one by one.
                return [out for image in images for out in self.forward([image])]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(images) == 1:
                return [_failure(images[0], exc)]
            half = len(images) // 2
            return self.forward(images[:half]) + self.forward(images[half:])

    def postprocess(self, forwarded: Sequence[ForwardedBatch | ImageFailure],
                    ) -> list[Prediction | ImageFailure]:
        """Post-process what `forward` returned: one result per image, in order."""
        import torch

        results: list[Prediction | ImageFailure] = []
        for item in forwarded:
            if isinstance(item, ImageFailure):
                results.append(item)
                continue
            try:
                results.extend(self._postprocess_batch(item))
            except Exception as exc:  # noqa: BLE001 - becomes the image's error row
                if is_out_of_memory(exc) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if len(item.images) == 1:
                    results.append(_failure(item.images[0], exc))
                else:  # one image's failure must not fail its batch-mates
                    results.extend(self.postprocess([item.single(i)
                                                     for i in range(len(item.images))]))
        return results

    def _forward(self, images: Sequence[DecodedImage]) -> ForwardedBatch:
        import torch

        loaded = self.setup()
        with torch.inference_mode():
            inputs = self._preprocess(loaded, images)
            started = time.perf_counter()
            outputs = loaded.model(**inputs)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize(loaded.device)
        return ForwardedBatch(list(images), outputs.class_queries_logits,
                              outputs.masks_queries_logits, forward_s=time.perf_counter() - started)

    def _postprocess_batch(self, item: ForwardedBatch) -> list[Prediction]:
        import torch

        loaded = self.setup()
        sizes = [img.size for img in item.images]
        with torch.inference_mode():
            results = self._segment_logits(loaded, item.class_logits.float(),
                                           item.mask_logits.float(), sizes)
            priorities = self._review_priorities(item).tolist()
            return [
                Prediction(image, result.id_map.to("cpu", torch.int32).numpy(), result.segments,
                           review_priority=priority)
                for image, result, priority in zip(item.images, results, priorities, strict=True)
            ]

    def _review_priorities(self, item: ForwardedBatch) -> torch.Tensor:
        """Each image's review priority, from the logits on the device (semantic runs, which
        keep no queries by score, count queries as panoptic would)."""
        threshold = self.threshold if self.threshold is not None else TASK_THRESHOLDS[self.task]
        if self.task == "semantic":
            threshold = TASK_THRESHOLDS["panoptic"]
        from segpipe.model.postprocess.priority import review_priority

        return review_priority(item.class_logits, item.mask_logits, threshold=threshold)

    def _preprocess(self, loaded: LoadedModel, images: Sequence[DecodedImage]) -> dict[str, Any]:
        import torch

        # HWC uint8 -> CHW on the device; the processor's torchvision backend does the rest there.
        tensors = [
            torch.from_numpy(img.pixels).to(loaded.device, non_blocking=True).permute(2, 0, 1)
            for img in images
        ]
        if loaded.family == "oneformer":
            batch = loaded.processor(
                images=tensors, task_inputs=[self.task] * len(tensors), return_tensors="pt",
                device=loaded.device,
            )
        else:
            batch = loaded.processor(images=tensors, return_tensors="pt", device=loaded.device)
        inputs = {k: v.to(loaded.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        return inputs

    def _segment_logits(self, loaded: LoadedModel, class_logits: torch.Tensor,
                        mask_logits: torch.Tensor, sizes: list[tuple[int, int]],
                        ) -> list[SegmentationResult]:
        """The task's post-processing of a batch's logits, on the model's device."""
        from segpipe.model import postprocess

        threshold = self.threshold if self.threshold is not None else TASK_THRESHOLDS[self.task]
        if self.task == "semantic":
            return postprocess.post_process_semantic(
                class_logits, mask_logits, sizes, family=loaded.family,
                class_thresholds=self.label_thresholds)
        if self.task == "instance":
            return postprocess.post_process_instance(
                class_logits, mask_logits, sizes, threshold=threshold,
                mask_threshold=self.mask_threshold,
                overlap_mask_area_threshold=self.overlap_mask_area_threshold, family=loaded.family,
                thing_ids=loaded.label_set.thing_model_labels(),
                class_thresholds=self.label_thresholds)
        return postprocess.post_process_panoptic(
            class_logits, mask_logits, sizes, threshold=threshold,
            mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            label_ids_to_fuse=loaded.label_set.stuff_model_labels(), family=loaded.family,
            class_thresholds=self.label_thresholds, dense_max_pairs=self.dense_max_pairs)


def _failure(image: DecodedImage, exc: BaseException) -> ImageFailure:
    return ImageFailure(image.ref, "inference", type(exc).__name__, redact(f"{image.ref.display}: {exc}"))
