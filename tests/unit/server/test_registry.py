"""The model registry built from the settings."""

from __future__ import annotations

from server.registry import build_registry
from server.settings import load_settings


def test_a_model_added_with_a_local_kind_takes_what_its_builtin_twin_takes() -> None:
    registry = build_registry(load_settings(models={
        "my-flux": {"kind": "flux", "source": "/weights/my-flux"},
        "my-sd3": {"kind": "sd3", "source": "/weights/my-sd3", "custom_sizes": False, "extra_params": ["seed"]},
    }))
    flux, sd3 = registry.get("my-flux"), registry.get("my-sd3")
    assert flux.custom_sizes and flux.accepts_size(768, 512)
    assert flux.extra_params == registry.get("flux-dev").extra_params
    assert flux.default_steps == registry.get("flux-dev").default_steps and flux.price_usd == 0.0
    assert not sd3.custom_sizes and sd3.extra_params == frozenset({"seed"})  # its own table wins
    assert "negative_prompt" in registry.get("stable-diffusion-3").extra_params
