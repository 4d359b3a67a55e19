"""Per-model speed and memory options for a local diffusers pipeline, each one switchable.

Set in `[models.<id>]` (see `server.settings.ModelSettings`). Each option either applies, or switches
itself off with a logged reason (no CUDA, GPU too old, package missing, model without support), so one
config file serves a GPU box and a laptop. A setting that can never work (fp8 without compile, a
malformed warm-up size) is rejected when the settings load; a warm-up size the model does not accept,
when the model loads. What applied and what was switched off is kept on the runner and shown by
`GET /v1/models`, `imageserve models` and `imageserve doctor`.

Modules: `plan` (the options and what can apply here), `apply` (applying a plan to a pipeline), `compiler`
(torch.compile flags, shapes and failures), `fp8` (which layers torchao quantizes), `warmup`.

Option (default): trade-off. Without CUDA: behaviour.

dtype (bf16, `IMAGESERVE_DTYPE` or per model)
    bf16: full tensor-core speed, what SD3 and FLUX were trained in. fp16: same speed, but FLUX can
    overflow to black images. fp32: twice the memory, several times slower; the reference.
    Without CUDA: always fp32 (half precision is slow or missing on CPUs).
attention_backend (native)
    native: PyTorch SDPA in torch 2.13's own order: flash, then memory-efficient, then math, then cuDNN.
    Math takes every input, so native never reaches cuDNN, even on Hopper where cuDNN's kernel may be the
    fastest for these head sizes. native_cudnn, native_flash, native_efficient: prefer that SDPA kernel
    (FLUX: through diffusers' attention dispatcher, that kernel only; SD3: first in PyTorch's order,
    the others as fallbacks). Whether native_cudnn wins on an H100/H200 is what the GPU benchmark's lease
    preset measures (`benchmarks/gpu_benchmark.py --preset lease`); no GPU has run it yet, so it is not
    in the suggested profile. flash (flash-attn), xformers, sage (sageattention: 8-bit QK, slightly
    different pixels): only if that package is installed, else switched off. native_math: the unfused
    reference, slowest.
    For SD3, xformers and fuse_qkv do not combine (no xformers processor for fused projections): fuse_qkv
    switches off.
    FLUX goes through diffusers' attention dispatcher (its transformer only); SD3's processors do not
    (diffusers 0.42), so for SD3 native_* makes that kernel PyTorch's first choice around each call, the
    others staying as fallbacks (the VAE's 512-wide head needs one), and xformers uses the pipeline's
    xformers switch.
    Without CUDA: native and native_math run; the others switch off (logged) and native is used.
compile (off) and compile_vae (true)
    regional: torch.compile of the repeated transformer blocks (`compile_repeated_blocks`, fullgraph):
    about 1.5x faster denoising on an H100 (published) for a cold start of tens of seconds, paid by
    warm-up. A model that declares no repeated blocks (SD3 in diffusers 0.42) gets full instead, logged.
    full: the whole transformer; a longer compile. Graphs are compiled with dynamic shapes (and duck
    sizing off), so after warm-up at batch 1 and at `max_batch_images` no new size or batch size
    compiles again: a request at a size warm-up did not cover never stalls the device for a compile.
    With compile_vae (the default) the VAE decoder, part of every request, is compiled the same way; its
    gain on a GPU is not measured yet. Inductor's flags are set in one place for every compiled model
    (`compiler.INDUCTOR_FLAGS`, diffusers' and torchao's published choices). Not used, for cold-start
    reasons: mode="max-autotune" and CUDA graphs, which the fastest published recipes add (they tune
    and capture per shape, minutes per size). full cannot trace cpu_offload's hooks, so with
    cpu_offload full is switched off (regional works). A call that fails inside torch.compile (a broken
    C++ or Triton toolchain, an op Dynamo cannot trace) is retried eagerly; if that works, compile
    switches off for good, logged. A call that hits Dynamo's recompile limit runs eagerly that once and
    compile stays on.
    Without CUDA: runs with inductor's C++ backend (needs g++/clang++, else switched off, logged);
    slower than eager for the tiny models.
fuse_qkv (false)
    One matmul for Q, K and V (`fuse_qkv_projections`): a few % faster, best with compile. diffusers keeps
    the unfused weights too, so the transformer takes more memory: +18% for FLUX.1-dev (4.0 GiB in bf16),
    +17% for SD3-medium (parameters counted on the meta device).
    Without CUDA: applies.
quantize (none)
    fp8: torchao dynamic fp8 (row-wise) quantization of the Linear layers inside the repeated blocks
    (not the embedders or the output projection, and not the unfused q/k/v weights fuse_qkv leaves
    behind; see `fp8.py`): faster on top of compile, about half the blocks' weight memory, small pixel
    differences. Needs compile (eager fp8 is slower than bf16; a setting without compile is rejected),
    bf16 weights (row-wise scaling takes no other dtype), compute capability >= 8.9 (Ada, Hopper,
    Blackwell) and the `gpu` extra (torchao); not combined with cpu_offload.
    Without CUDA: switched off (logged).
channels_last_vae (false)
    VAE convolutions in NHWC layout: faster decode on tensor cores, no cost. Without CUDA: applies.
vae_tiling (false)
    Decode images larger than the VAE's tile (1024 px for SD3 and FLUX) in overlapping tiles: peak memory
    stays flat for 2048 px images; slower decode, faint seams are possible. Without CUDA: applies.
cpu_offload (false)
    `enable_model_cpu_offload()` instead of `.to("cuda")`: each component moves to the GPU only while it
    runs, so the card needs room for the largest one only (FLUX.1-dev's transformer: 22.2 GiB in bf16, at
    the edge of a 24 GB card; not measured here); much slower (weights cross PCIe on every request).
    Without CUDA: switched off (logged).
warmup_sizes ([]) and warmup_steps (2)
    At load, run each size at batch 1 and at `max_batch_images` so compilation and kernel autotuning
    happen before the first request; start-up takes longer. Use with `IMAGESERVE_PRELOAD`, else the first
    request pays the load and the warm-up. Without CUDA: runs (slowly with compile).
debug_oom_above_images (unset)
    Testing aid: a batch of more images than this raises `torch.OutOfMemoryError` inside the pipeline
    call, to exercise the out-of-memory path (batch split, then 503) without a GPU.
"""

from pipelines.optimizations.apply import AppliedOptimizations, apply_optimizations
from pipelines.optimizations.compiler import (
    INDUCTOR_FLAGS,
    configure_compiler,
    graphs_compiled,
    is_compile_failure,
    is_recompile_limit,
    restore_compile,
    suspend_compile,
)
from pipelines.optimizations.fp8 import fp8_config, fp8_targets, quantize_blocks
from pipelines.optimizations.plan import (
    ATTENTION_BACKENDS,
    FP8_MIN_CAPABILITY,
    AttentionBackend,
    OptimizationOptions,
    OptimizationPlan,
    cxx_compiler,
    parse_size,
    plan_optimizations,
)
from pipelines.optimizations.warmup import warm_up

__all__ = [
    "ATTENTION_BACKENDS", "FP8_MIN_CAPABILITY", "INDUCTOR_FLAGS", "AppliedOptimizations", "AttentionBackend",
    "OptimizationOptions", "OptimizationPlan", "apply_optimizations", "configure_compiler", "cxx_compiler",
    "fp8_config", "fp8_targets", "graphs_compiled", "is_compile_failure", "is_recompile_limit", "parse_size",
    "plan_optimizations", "quantize_blocks", "restore_compile", "suspend_compile", "warm_up",
]
