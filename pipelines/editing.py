"""Edits and variations on a loaded text-to-image pipeline: image-to-image and inpainting.

The pipelines come from diffusers' own families (`FluxImg2ImgPipeline`, `FluxInpaintPipeline`,
`StableDiffusion3Img2ImgPipeline`, `StableDiffusion3InpaintPipeline`), created once per mode with
`from_pipe`, so they share the loaded (and compiled, quantized) components: no weights are loaded twice.
The input image and mask of each job become the call's `image` / `mask_image` lists; a batch holds jobs of
one mode, size, strength, steps and guidance (`BatchKey`), each with its own input, prompt and seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MODES = ("img2img", "inpaint")


def edit_pipeline(pipe: Any, mode: str) -> Any:
    """The `mode` twin of `pipe`, sharing its components."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    if mode == "img2img":
        return AutoPipelineForImage2Image.from_pipe(pipe)
    if mode == "inpaint":
        return AutoPipelineForInpainting.from_pipe(pipe)
    raise ValueError(f"unknown edit mode {mode!r}")


def edit_arguments(mode: str, strength: float, images: Sequence[Any], masks: Sequence[Any]) -> dict[str, Any]:
    """The call's extra arguments: the inputs as PIL images (masks white where the model repaints)."""
    from PIL import Image

    arguments: dict[str, Any] = {"image": [Image.fromarray(pixels) for pixels in images], "strength": strength}
    if mode == "inpaint":
        arguments["mask_image"] = [Image.fromarray(mask.astype("uint8") * 255) for mask in masks]
    return arguments
