"""Evaluation metrics for lifted panoptic segmentations: scene-level and per-frame panoptic quality, and mIoU."""
