"""Everything that makes pixels: model loading, the batching scheduler, the GPU worker, tiny models."""
