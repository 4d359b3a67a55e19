"""torch.compile for a pipeline: one set of compiler flags, shape-generic graphs, and telling its failures apart.

Every compiled configuration runs under the same flags, set here and nowhere else (`COMPILER_FLAGS`):
torchao is asked not to change inductor's settings itself (`set_inductor_config=False`), so a model
compiled after an fp8 one, or a benchmark row without fp8, does not run under other flags.

Shapes: the repeated transformer blocks (or the whole transformer) and the VAE decoder are compiled with
`dynamic=True` and with duck sizing off, so a graph traced at one size serves every other size, square or
not. PyTorch still specialises a dimension of size 1, so a batch of one image and a batch of several are
two graphs: warm-up runs each size at batch 1 and at `max_batch_images` (see `warmup.py`), after which no
accepted size or batch size compiles again (tested on the CPU by counting Dynamo's graphs).
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.memory import exception_chain

logger = logging.getLogger(__name__)

# Inductor's flags for every compiled model, the ones diffusers' and torchao's published recipes use:
# 1x1 convolutions as matmuls (the VAE), coordinate-descent tuning of the generated kernels (slower first
# compile, faster kernels; on the GPU only), no epilogue fusion (the recipes' choice for these models).
INDUCTOR_FLAGS: dict[str, Any] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
    "fx_graph_cache": True,
}
# Shape specialisation: without duck sizing a square warm-up does not tie width to height.
SHAPE_FLAGS: dict[str, Any] = {"use_duck_shape": False}


def configure_compiler() -> None:
    """Set the compiler flags for the process (idempotent; call before compiling anything)."""
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as shape_config

    for name, value in INDUCTOR_FLAGS.items():
        setattr(inductor_config, name, value)
    for name, value in SHAPE_FLAGS.items():
        setattr(shape_config, name, value)


def compile_transformer(transformer: Any, mode: str, *, cpu_offload: bool) -> tuple[str, str] | None:
    """Compile for `mode` ("regional" or "full"). Returns (option, detail) to record as applied, or None when
    nothing could be compiled (the caller records why)."""
    name = type(transformer).__name__
    if mode == "regional":
        try:
            transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
        except ValueError:
            if cpu_offload:
                return None
            transformer.compile(fullgraph=True, dynamic=True)
            return "compile", (f"full: {name} declares no repeated blocks for regional compilation, so the whole "
                               "transformer is compiled (dynamic shapes)")
        return "compile", "regional: torch.compile of the repeated transformer blocks (dynamic shapes)"
    transformer.compile(fullgraph=True, dynamic=True)
    return "compile", "full: torch.compile of the whole transformer (dynamic shapes)"


def compile_vae_decoder(vae: Any) -> str:
    """The VAE's decoder network (what `vae.decode` runs for every image) through `nn.Module.compile`."""
    vae.decoder.compile(fullgraph=True, dynamic=True)
    return "torch.compile of the VAE decoder (dynamic shapes)"


def compiled_modules(pipe: Any) -> list[Any]:
    """The pipeline's modules that carry a compiled call (the transformer's blocks or itself, the decoder)."""
    found = []
    for component in (pipe.transformer, pipe.vae):
        found += [module for module in component.modules()
                  if getattr(module, "_compiled_call_impl", None) is not None]
    return found


def suspend_compile(pipe: Any) -> list[tuple[Any, Any]]:
    """Make the pipeline run eagerly; returns what `restore_compile` needs to undo that.

    `nn.Module.compile` keeps the compiled call in `_compiled_call_impl`; with it cleared the module calls its
    plain forward.
    """
    saved = [(module, module._compiled_call_impl) for module in compiled_modules(pipe)]
    for module, _ in saved:
        module._compiled_call_impl = None
    return saved


def restore_compile(saved: list[tuple[Any, Any]]) -> None:
    for module, compiled in saved:
        module._compiled_call_impl = compiled


def is_compile_failure(exc: BaseException) -> bool:
    """Raised by torch.compile's machinery (Dynamo tracing, Inductor code generation, the C++ or Triton build),
    directly or as the cause of another error. Dynamo also wraps errors of the model code it traces, so this
    only says the compiler was involved: the caller retries eagerly to find out whose failure it was."""
    return any(type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))
               for error in exception_chain(exc))


def is_recompile_limit(exc: BaseException) -> bool:
    """Dynamo refused to compile yet another graph for a function (`torch._dynamo.config.recompile_limit`;
    with `fullgraph=True` that is an error, not a silent fallback). Not a broken toolchain: the call runs
    eagerly this once and compile stays on."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    return any(isinstance(error, FailOnRecompileLimitHit) for error in exception_chain(exc))


def graphs_compiled() -> int:
    """How many graphs Dynamo has compiled in this process (its `unique_graphs` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
