"""Streamed previews: an image's intermediate latents decoded at evenly spaced steps, for the jobs that ask.

`PreviewTap` is a `callback_on_step_end`: after each chosen step it decodes, with the model's own VAE, only
the latents of the jobs of the batch that asked for previews (so a batch's other jobs pay nothing), and hands
the uint8 pixels to each job's callback. It never changes the latents: the final image is the one the same
seed gives without streaming. Decoding follows each family's own final step (FLUX unpacks its 2x2 patches;
both undo the VAE's scaling and shift). When a tiny autoencoder (`AutoencoderTiny`: TAEF1 for FLUX, TAESD3
for SD3) is in the model cache, it decodes the previews instead of the full VAE, for a fraction of the cost
(`load_preview_vae`); a request never downloads it (`huggingface-cli download madebyollin/taef1 --cache-dir
<model cache>` puts it there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.pixels import to_pixels

logger = logging.getLogger(__name__)

FLUX_KINDS = ("flux", "tiny-flux")
DEFAULT_PREVIEW_VAES = {"flux": "madebyollin/taef1", "sd3": "madebyollin/taesd3"}


def load_preview_vae(kind: str, configured: str | None, model_cache: Path, device: str,
                     torch_dtype: Any) -> tuple[Any | None, str]:
    """The tiny autoencoder for previews if it is here (never downloaded), and what decodes them, in words."""
    source = DEFAULT_PREVIEW_VAES.get(kind) if configured is None else configured
    if not source:
        return None, "the model's own VAE"
    folder = Path(source).expanduser()
    pretrained, cache_dir = (str(folder), None) if folder.is_dir() else (source, str(model_cache))
    if cache_dir is not None:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json", cache_dir=cache_dir), str):
            return None, f"the model's own VAE ({source} is not in {model_cache})"
    try:
        from diffusers import AutoencoderTiny

        vae = AutoencoderTiny.from_pretrained(pretrained, cache_dir=cache_dir, local_files_only=True,
                                              torch_dtype=torch_dtype).to(device)
    except Exception as exc:  # noqa: BLE001 - previews fall back to the full VAE, the model still serves
        logger.warning("could not load the preview autoencoder %s (%s); previews use the model's own VAE", source,
                       type(exc).__name__)
        return None, "the model's own VAE"
    return vae, f"tiny autoencoder {source}"


def preview_steps(previews: int, steps: int) -> list[int]:
    """After which steps (1-based) to decode `previews` previews, evenly spaced, never the last (that is the
    final image) and never twice."""
    chosen = sorted({steps * (index + 1) // (previews + 1) for index in range(previews)})
    return [step for step in chosen if 1 <= step < steps]


class PreviewTap:
    def __init__(self, kind: str, width: int, height: int, steps: int, jobs: Sequence[Any],
                 decoder: Any | None = None) -> None:
        self.kind, self.width, self.height, self.decoder = kind, width, height, decoder
        self.wanted = {row: preview_steps(job.previews, steps) for row, job in enumerate(jobs) if job.previews}
        self.jobs = jobs

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        rows = [row for row, steps in self.wanted.items() if done in steps]
        if rows:
            try:
                pixels = self._decode(pipe, callback_kwargs["latents"][rows])
                for row, image in zip(rows, pixels, strict=True):
                    self.jobs[row].on_preview(self.wanted[row].index(done), image)
            except Exception:  # a preview must never fail the image itself
                logger.warning("could not decode a preview at step %d", done, exc_info=True)
        return callback_kwargs

    def _decode(self, pipe: Any, latents: Any) -> list[Any]:
        vae = self.decoder if self.decoder is not None else pipe.vae
        if self.kind in FLUX_KINDS:
            latents = pipe._unpack_latents(latents, self.height, self.width, pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return list(to_pixels(pipe.image_processor.postprocess(decoded, output_type="pt")))
