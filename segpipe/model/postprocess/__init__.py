"""Batched post-processing of universal segmentation outputs, on the model's device.

The results equal those of the transformers image processors' ``post_process_*_segmentation``
(same segments, ids and labels; scores and id maps up to float rounding), without their
per-query Python loops and without ever holding a (queries, height, width) tensor at the
target resolution.

How: a target pixel's value is a short chain of separable linear resamplings (bilinear,
maybe antialiased) of a few mask logits, with a monotone sigmoid in between and a positive
score as a factor. So the minimum and maximum logit under a tile of the target bound every
pixel value in that tile. Per tile, queries that cannot win the argmax (nor straddle the mask
threshold) are settled from those bounds; the rest get their values on the tile's mid window
(tighter bounds, settling more), and only what is still open is resampled to the target, in
chunks of bounded size (`max_chunk_pixels`, tiles of `tile` x `tile` target pixels). Exact
values follow ``torch.nn.functional.interpolate``'s order of operations and fused
multiply-adds, so on the CPU they are its values bit for bit (antialiased downsampling aside).

Which model family uses which variant (``family=``, a key of
``segpipe.model.loading.FAMILIES``):

============  ======================  ==============================  ========================
family        before the target size  resize to the target size       instance task
============  ======================  ==============================  ========================
mask2former   bilinear to 384x384     bilinear                        top-k (query, class) by
                                                                      class x mean mask prob,
                                                                      nearest resize, later
                                                                      instances overwrite
maskformer    none                    bilinear                        as mask2former
oneformer     none                    bilinear, antialiased           top-k class scores, then
                                      (torchvision ``resize``)        the panoptic merge on
                                                                      mask logits
============  ======================  ==============================  ========================

Deliberate differences from transformers:

- Ids: 0 is void and segment ids are 1..N everywhere. Transformers' Mask2Former/MaskFormer
  instance ids start at 0 with -1 as background; where it returns -1 everywhere ("no
  segment") this returns all 0.
- Fusion (``label_ids_to_fuse``): transformers resets its id counter to a fused segment's
  id when a later query joins it, so the next new segment reuses an existing id; and it lists
  the fused segment once per joining query. Here ids stay unique (as in the original
  Mask2Former) and each fused segment is listed once, with its first query's score. Without a
  fused repeat followed by a new segment the ids are identical.
- Semantic results are one segment per present class (ids ascending by class, score None).
- Logits are post-processed in float32 whatever the model's dtype.
"""

from segpipe.model.postprocess.merging import SegmentationResult
from segpipe.model.postprocess.tasks import (
    post_process_instance,
    post_process_panoptic,
    post_process_semantic,
)

__all__ = [
    "SegmentationResult",
    "post_process_instance",
    "post_process_panoptic",
    "post_process_semantic",
]
