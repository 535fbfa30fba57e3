"""Resampling taps: which source positions each output position of PyTorch's bilinear
(plain or antialiased) and nearest resizes reads, with the weights and rounding order of its
CPU kernels, so that values computed from them equal ``interpolate``'s bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class _Taps:
    """Which source positions each output position reads, with which weights, in the order
    PyTorch's CPU kernels accumulate them: the first product, then fused multiply-adds."""

    index: torch.Tensor  # (out, T) int64
    weight: torch.Tensor  # (out, T) float32


def bilinear_taps(src: int, out: int, device: torch.device) -> _Taps:
    """The taps of ``interpolate(mode="bilinear", align_corners=False)`` along one axis,
    rounded as PyTorch rounds them (the source position is one fused multiply-add)."""
    pos = torch.arange(out, dtype=torch.float64)
    if src == out:
        same = pos.long()
        weight = torch.tensor([0.0, 1.0]).expand(out, 2)
        return _Taps(torch.stack([same, same], 1).to(device), weight.to(device, torch.float32))
    scale = float(torch.tensor(src, dtype=torch.float32) / out)
    real = (scale * (pos + 0.5) - 0.5).float().clamp_min(0.0)
    first = real.floor().long().clamp_max(src - 1)
    frac = (real - first.float()).clamp(0.0, 1.0)
    second = first + (first < src - 1).long()
    # The kernel computes fma(x0, w0, x1 * w1): the second product comes first.
    index, weight = torch.stack([second, first], 1), torch.stack([frac, 1.0 - frac], 1)
    return _Taps(index.to(device), weight.to(device))


def antialiased_taps(src: int, out: int, device: torch.device) -> _Taps:
    """The taps of ``interpolate(mode="bilinear", antialias=True)``: a triangle filter,
    stretched when downsampling, weights normalized; rounded as PyTorch rounds them and
    padded with zero weights."""
    if src == out:
        return bilinear_taps(src, out, device)
    f32 = torch.float32
    scale = torch.tensor(src, dtype=f32) / out
    support = scale if scale >= 1.0 else torch.tensor(1.0, dtype=f32)
    inv_scale = (1.0 / scale.double()).float() if scale >= 1.0 else torch.tensor(1.0, dtype=f32)
    center = (scale.double() * (torch.arange(out, dtype=torch.float64) + 0.5)).float()
    start = ((center - support).double() + 0.5).trunc().long().clamp_min(0)
    stop = ((center + support).double() + 0.5).trunc().long().clamp_max(src)
    span = int((stop - start).max())
    index = start[:, None] + torch.arange(span)
    offset = ((index.float() - center[:, None]).double() + 0.5) * inv_scale.double()
    weight = (1.0 - offset.float().abs().double()).float().clamp_min(0.0)
    weight = torch.where(index < stop[:, None], weight, 0.0)
    total = weight[:, 0].clone()
    for tap in range(1, span):  # summed in order, in float32, as the kernel does
        total += weight[:, tap]
    weight = weight / total[:, None]
    index = torch.minimum(index, stop[:, None] - 1)
    return _Taps(index.to(device), weight.to(device))


def nearest_index(src: int, out: int, device: torch.device) -> torch.Tensor:
    """The source index of ``interpolate(mode="nearest")`` along one axis."""
    pos = torch.arange(out, device=device)
    if src == out:
        return pos
    if out == 2 * src:
        return pos // 2
    scale = torch.tensor(src, dtype=torch.float32, device=device) / out
    return (pos.float() * scale).floor().long().clamp_max(src - 1)
