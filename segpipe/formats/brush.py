"""Label Studio's brush RLE: the encoding its brush tool stores in `value.rle`.

It is not COCO RLE. Label Studio keeps a brush mask as an RGBA image (H x W x 4 bytes,
row-major) packed with the rle-pack bit format: a 32-bit value count, a 5-bit word size
(minus 1), four 4-bit run-length field sizes (minus 1), then one token per run or
literal block:

    1 bit   1 = repeat one value, 0 = literal values follow
    2 bits  which run-length field size (here 3, 4, 8 or 16 bits) the length uses
    n bits  length - 1
    8 bits  the value (once for a repeat, `length` times for literals)

padded with zero bits to a whole byte. A mask pixel is 255 in all four channels and a
background pixel 0, so runs always come in multiples of four and only repeats occur.
Encoding is vectorized: the cost follows the number of runs, not Python per-pixel work.
"""

from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # Label Studio's own choice; the decoder reads them from the header
MAX_RUN = 1 << RLE_SIZES[-1]


def encode_mask(mask: np.ndarray) -> list[int]:
    """Brush RLE (a list of byte values) of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, not {mask.shape}")
    flat = mask.astype(bool).ravel()
    num_values = flat.size * 4  # RGBA
    lengths, values = _runs(flat)
    lengths, values = lengths * 4, values.astype(np.int64) * 255
    lengths, values = _split_long_runs(lengths, values)

    size_index = np.searchsorted(np.array([1 << s for s in RLE_SIZES]), lengths)
    size_bits = np.array(RLE_SIZES)[size_index]
    fields = np.stack([np.ones_like(lengths), size_index, lengths - 1, values], axis=1)
    widths = np.stack([np.full_like(lengths, 1), np.full_like(lengths, 2), size_bits,
                       np.full_like(lengths, WORD_SIZE)], axis=1)

    header_values = [num_values, WORD_SIZE - 1, *(s - 1 for s in RLE_SIZES)]
    header_widths = [32, 5, 4, 4, 4, 4]
    all_values = np.concatenate([np.array(header_values, dtype=np.int64), fields.ravel()])
    all_widths = np.concatenate([np.array(header_widths, dtype=np.int64), widths.ravel()])
    return np.packbits(_bits(all_values, all_widths)).tolist()


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if flat.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.r_[0, change]
    lengths = np.diff(np.r_[starts, flat.size])
    return lengths.astype(np.int64), flat[starts].astype(np.int64)


def _split_long_runs(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs longer than the widest length field become several full runs and a rest."""
    pieces = -(-lengths // MAX_RUN)  # ceil
    if not np.any(pieces > 1):
        return lengths, values
    out_values = np.repeat(values, pieces)
    out_lengths = np.full(out_values.size, MAX_RUN, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    out_lengths[last] = lengths - (pieces - 1) * MAX_RUN
    return out_lengths, out_values


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Each value written most significant bit first in its own width, concatenated."""
    total = int(widths.sum())
    starts = np.cumsum(widths) - widths
    offset = np.arange(total) - np.repeat(starts, widths)
    shift = np.repeat(widths, widths) - 1 - offset
    return ((np.repeat(values, widths) >> shift) & 1).astype(np.uint8)
