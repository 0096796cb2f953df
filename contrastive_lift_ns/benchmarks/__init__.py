"""Timing benchmarks (run by ``cl-bench`` or as ``python -m contrastive_lift_ns.benchmarks.<name>``)."""
