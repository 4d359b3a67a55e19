"""fp8 quantization of the transformer's repeated blocks, through torchao.

Only the Linear layers inside the repeated blocks (FLUX's double- and single-stream blocks, SD3's joint
blocks) are quantized: they run compiled, where torchao's fp8 matmuls are fast, and hold nearly all the
weights. The embedders, the timestep/guidance MLPs and the output projection outside the blocks stay in
bf16: they run every step outside the compiled regions (eager fp8 is slower than bf16) and are the most
precision-sensitive layers. After `fuse_qkv_projections`, diffusers keeps the unfused q/k/v weights beside
the fused ones; those are never called again and are left alone (quantizing them would cost time and
memory for nothing: about 2 GiB for FLUX.1-dev).
"""

from __future__ import annotations

from typing import Any

# Transformers whose diffusers class declares no `_repeated_blocks` (SD3 in diffusers 0.42): their blocks.
_UNDECLARED_BLOCKS: dict[str, tuple[str, ...]] = {"SD3Transformer2DModel": ("JointTransformerBlock",)}
# A fused projection and the unfused ones it replaces (diffusers' `fuse_projections`).
_FUSED_REPLACES: dict[str, tuple[str, ...]] = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def repeated_block_classes(transformer: Any) -> tuple[str, ...]:
    declared = tuple(type(transformer)._repeated_blocks)
    return declared or _UNDECLARED_BLOCKS.get(type(transformer).__name__, ())


def _replaced_by_fusion(transformer: Any) -> set[str]:
    """Names of the unfused projections that a fused one has replaced."""
    import torch

    dead: set[str] = set()
    for name, module in transformer.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        prefix = f"{name}." if name else ""
        for fused, replaced in _FUSED_REPLACES.items():
            if isinstance(getattr(module, fused, None), torch.nn.Linear):
                dead.update(prefix + child for child in replaced)
    return dead


def fp8_targets(transformer: Any) -> list[str]:
    """The fully-qualified names of the Linear layers to quantize, in module order."""
    import torch

    blocks = repeated_block_classes(transformer)
    dead = _replaced_by_fusion(transformer)
    inside = [name for name, module in transformer.named_modules() if type(module).__name__ in blocks]
    targets = []
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or name in dead:
            continue
        if not any(name.startswith(block + ".") for block in inside):
            continue
        if module.in_features % 16 or module.out_features % 16:  # fp8 kernels take multiples of 16
            continue
        targets.append(name)
    return targets


def fp8_config() -> Any:
    """torchao's dynamic fp8 (row-wise) config; inductor's flags stay ours (see `compiler.INDUCTOR_FLAGS`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def quantize_blocks(transformer: Any, config: Any | None = None) -> list[str]:
    """Quantize `fp8_targets` with `config` (default `fp8_config()`); returns the names quantized.

    Tests pass another torchao config that runs on a CPU to check that exactly these layers change.
    """
    from torchao.quantization import quantize_

    targets = set(fp8_targets(transformer))
    quantize_(transformer, config if config is not None else fp8_config(),
              filter_fn=lambda _module, name: name in targets)
    return sorted(targets)
