"""Streamed previews through a tiny autoencoder when one is there (built offline here, random weights, as the
tiny models are): it decodes the previews, the final image is still the model's own, and without it the
model's VAE decodes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.scheduler import BatchKey, ImageJobSpec
from tests.support.runners import tiny_runner


def _tiny_autoencoder(folder: Path) -> Path:
    from diffusers import AutoencoderTiny

    # Four blocks, three 2x upsamplings: the 8x of the tiny models' VAE (and of TAEF1 / TAESD3).
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4,
                    upsampling_scaling_factor=2).save_pretrained(folder)
    return folder


async def _stream(runner, previews: list) -> np.ndarray:
    key = BatchKey(runner._spec.id, 128, 128, 4, 3.5, runner._spec.max_sequence_length)
    spec = ImageJobSpec("a red cube", 3, previews=2, on_preview=lambda index, pixels: previews.append(pixels))
    return (await runner.run_batch(key, [spec])).outputs[0]


@pytest.mark.slow
async def test_a_tiny_autoencoder_decodes_the_previews_when_it_is_there(model_cache: Path, tmp_path: Path) -> None:
    with_tiny = tiny_runner(model_cache, "tiny-flux", preview_vae=str(_tiny_autoencoder(tmp_path / "taef1")))
    plain = tiny_runner(model_cache, "tiny-flux")
    try:
        await with_tiny.load()
        await plain.load()
        assert with_tiny.preview_decoder == f"tiny autoencoder {tmp_path / 'taef1'}"
        assert plain.preview_decoder == "the model's own VAE"
        tiny_previews: list = []
        own_previews: list = []
        final_tiny = await _stream(with_tiny, tiny_previews)
        final_own = await _stream(plain, own_previews)
    finally:
        with_tiny.close()
        plain.close()
    assert len(tiny_previews) == len(own_previews) == 2
    assert tiny_previews[0].shape == own_previews[0].shape == (128, 128, 3)
    assert not np.array_equal(tiny_previews[0], own_previews[0])  # another decoder made them
    assert np.array_equal(final_tiny, final_own)  # the image itself is the model's own VAE's
