"""The full-size FLUX.1-dev and SD3-medium architectures (and tiny versions of them), built with random weights.

Shared by the GPU benchmark (which times them) and the compute-floor count (which counts their FLOPs on
PyTorch's meta device). Full size follows the published checkpoints' configs: the FLUX.1-dev transformer
has 11,901,408,320 parameters, SD3-medium's 2,028,328,000; both use the 16-channel, 8x VAE. The text
encoders are not built: callers pass prompt embeddings of the real shapes (`text_tokens`, `text_width`,
`pooled_width`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.device import Placement


@dataclass(frozen=True)
class Architecture:
    """One model: how to build it (full size or tiny) and the shapes of its prompt embeddings."""

    name: str
    build: Callable[[bool], Any]  # tiny -> pipeline without text encoders
    text_tokens: Callable[[bool], int]
    text_width: Callable[[bool], int]
    pooled_width: Callable[[bool], int]
    guidance: float
    classifier_free: bool  # SD3 runs the negative prompt too (batch doubles inside the transformer)
    packed_latents: bool  # FLUX packs 2x2 latent patches into a token sequence, with positions as ids


def _vae(tiny: bool, *, scaling_factor: float, shift_factor: float) -> Any:
    from diffusers import AutoencoderKL

    blocks = 4  # 8x down-sampling, 16 latent channels, as in the SD3 and FLUX VAEs
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16 if not tiny else 4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(128, 256, 512, 512) if not tiny else (8,) * blocks,
        layers_per_block=2 if not tiny else 1, norm_num_groups=32 if not tiny else 4,
        sample_size=1024 if not tiny else 32, scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def _build_flux(tiny: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    # The defaults are FLUX.1-dev's sizes (12B); dev is guidance-distilled, hence guidance_embeds.
    transformer = FluxTransformer2DModel(guidance_embeds=True) if not tiny else FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=_vae(tiny, scaling_factor=0.3611, shift_factor=0.1159),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)


def _build_sd3(tiny: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        num_layers=24, attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
        caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
        sample_size=128, in_channels=16, patch_size=2,
    ) if not tiny else SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=64)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(tiny, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)


ARCHITECTURES = {
    # T5 at max_sequence_length 512; CLIP-L pooled (768).
    "flux-dev": Architecture("flux-dev", _build_flux, lambda tiny: 512 if not tiny else 16,
                             lambda tiny: 4096 if not tiny else 32, lambda tiny: 768 if not tiny else 32,
                             guidance=3.5, classifier_free=False, packed_latents=True),
    # 77 CLIP tokens + 256 T5 tokens; CLIP-L + CLIP-G pooled (768 + 1280).
    "sd3-medium": Architecture("sd3-medium", _build_sd3, lambda tiny: 333 if not tiny else 16,
                               lambda tiny: 4096 if not tiny else 32, lambda tiny: 2048 if not tiny else 64,
                               guidance=7.0, classifier_free=True, packed_latents=False),
}


@contextlib.contextmanager
def _construction(device: str, dtype: Any) -> Iterator[None]:
    """Create parameters directly on the device in the target dtype: a 12B model never sits in fp32."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(arch: Architecture, placement: Placement, tiny: bool) -> Any:
    import torch

    torch.manual_seed(0)
    with _construction(placement.device, placement.torch_dtype()):
        pipe = arch.build(tiny)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_arguments(arch: Architecture, placement: Placement, tiny: bool, batch: int, size: int,
                   steps: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator("cpu").manual_seed(0)

    def embeds(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator).to(placement.device, placement.torch_dtype())

    tokens, width, pooled = arch.text_tokens(tiny), arch.text_width(tiny), arch.pooled_width(tiny)
    arguments: dict[str, Any] = {
        "prompt_embeds": embeds(batch, tokens, width), "pooled_prompt_embeds": embeds(batch, pooled),
        "width": size, "height": size, "num_inference_steps": steps, "guidance_scale": arch.guidance,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in range(batch)], "output_type": "pil",
    }
    if arch.classifier_free:
        arguments["negative_prompt_embeds"] = embeds(batch, tokens, width)
        arguments["negative_pooled_prompt_embeds"] = embeds(batch, pooled)
    return arguments


