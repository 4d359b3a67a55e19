"""Tiny random-weight twins of Stable Diffusion 3 and FLUX.1-dev, built offline.

They use the real pipeline classes (`StableDiffusion3Pipeline`, `FluxPipeline`) with tiny widths and
random weights under a fixed seed, so the whole serving path (tokenizers, text encoders, transformer,
8x VAE, scheduler) runs anywhere in seconds. They make noise, not pictures.

`build_tiny_model` writes a diffusers-layout folder with `save_pretrained`; the server then loads it
back through the same `from_pretrained(..., local_files_only=True)` call as real weights.
"""

from __future__ import annotations

import logging
import shutil
import string
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_SEED = 0
# Four VAE blocks: the VAE down-samples 8x, like the real SD3 and FLUX VAEs, so every size the API
# accepts (multiples of 16) comes out at exactly that size.
_VAE_BLOCKS = 4
_CLIP_WIDTH = 32
_T5_WIDTH = 32
_TEXT_MAX_POSITIONS = 77
_COMPLETE_MARKER = "model_index.json"

TINY_KINDS = ("tiny-sd3", "tiny-flux")


def _clip_tokenizer():
    """A character-level BPE CLIP tokenizer: every printable character is a token, no merges."""
    from transformers import CLIPTokenizer

    chars = sorted(set(string.printable.strip()) | {" "})
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        for token in (ch, ch + "</w>"):
            vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_TEXT_MAX_POSITIONS)


def _t5_tokenizer():
    """A small Unigram T5 tokenizer over printable characters."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in sorted(set(string.printable.strip()))]
    pieces += [("▁" + ch, -2.5) for ch in string.ascii_letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_CLIP_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TEXT_MAX_POSITIONS,
        projection_dim=_CLIP_WIDTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=_T5_WIDTH,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, *, flux: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,) * _VAE_BLOCKS,
        down_block_types=("DownEncoderBlock2D",) * _VAE_BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * _VAE_BLOCKS,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=1.5305 if not flux else 0.3611,
        shift_factor=0.0609 if not flux else 0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _build_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=_T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * _CLIP_WIDTH,
        out_channels=4,
        pos_embed_max_size=128,  # 128 patches * 2 * 8 = 2048 px, the largest size the API accepts
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(4, flux=False),
        text_encoder=CLIPTextModelWithProjection(_clip_config(len(clip_tok))),
        tokenizer=clip_tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(clip_tok))),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(t5_tok)),
        tokenizer_3=t5_tok,
    )


def _build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2, as the real model packs 16 into 64
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        pooled_projection_dim=_CLIP_WIDTH,
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled: it takes guidance as an input
        axes_dims_rope=(4, 6, 6),
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
        ),
        vae=_vae(4, flux=True),
        text_encoder=CLIPTextModel(_clip_config(len(clip_tok))),
        tokenizer=clip_tok,
        text_encoder_2=_t5_encoder(len(t5_tok)),
        tokenizer_2=t5_tok,
    )


_BUILDERS = {"tiny-sd3": _build_sd3, "tiny-flux": _build_flux}


def tiny_model_path(model_cache: Path, kind: str) -> Path:
    return Path(model_cache) / "tiny" / kind


def build_tiny_model(model_cache: Path, kind: str) -> Path:
    """Build (once) and save the tiny model `kind` under the model cache; return its folder.

    Built in a temporary folder and renamed into place, so a crash never leaves half a model.
    """
    import torch

    target = tiny_model_path(model_cache, kind)
    if (target / _COMPLETE_MARKER).exists():
        return target
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny model {kind!r}; expected one of {sorted(_BUILDERS)}")
    logger.info("building random-weight model %s under %s (seed %d)", kind, target, TINY_SEED)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        pipe = _BUILDERS[kind]()
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        pipe.save_pretrained(staging)
        if (target / _COMPLETE_MARKER).exists():  # another process won the race
            return target
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
