"""The scene format, its dataparser, dataset and per-image pixel sampler."""
