"""Pixels leave the device once, as uint8: what a runner hands back for each image.

A runner's output per image is an `(height, width, 3)` uint8 numpy array. The conversion from the
pipeline's float output happens on the device (a quarter of the bytes to copy, and no float work on the
worker thread), the copy to the CPU happens once for the whole batch, and PIL images are made later, on the
encoder threads (`server.media.encoding.encode_pixels`), after the device has been let go.
"""

from __future__ import annotations

from typing import Any


def to_pixels(images: Any) -> Any:
    """A `(batch, 3, height, width)` float tensor in [0, 1] (diffusers' `output_type="pt"`) -> a
    `(batch, height, width, 3)` uint8 numpy array on the CPU.

    Rounded exactly as diffusers' own `numpy_to_pil` rounds (float32, `round(x * 255)`), so the pixels are the
    same as with `output_type="pil"`.
    """
    import torch

    scaled = (images.to(torch.float32) * 255).round().clamp_(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
