"""Panoptic quality (scene-level and per-frame) and mIoU, as the Contrastive Lift paper evaluates them.

Inputs are integer label maps: a semantic class and an instance id per pixel, for the prediction and the
ground truth (GT). Every function takes one array of any shape (e.g. ``N×H×W`` for N views, or a pooled 1D
list) or a sequence of per-frame arrays.

**PQ^scene** (:func:`panoptic_quality` given all test views). The pixels of all views are pooled into one
list with no per-frame id offset, so a *segment* is one ``(class, instance id)`` pair across all views: an
object must keep the same id in every view to be matched. Standard PQ (Kirillov et al., CVPR 2019) is then
computed on that list:

- *Void.* A GT pixel is void when its class is ``void_class`` (e.g. 0 for ScanNet-style data; ``None`` for
  Messy Rooms, whose class 0 "background" is a real stuff class) or when it is a thing pixel with instance
  id 0 (an unannotated object). Void pixels belong to no GT segment. A predicted pixel is *unlabelled* when
  its class is ``void_class`` or it is a thing pixel with instance id 0; it belongs to no predicted segment,
  but it still belongs to its GT segment, so leaving an object unlabelled costs IoU (as in the COCO
  panopticapi; torchmetrics instead drops such pixels from the GT segment too).
- *Stuff.* Every class that is not in ``thing_classes`` (nor ``void_class``) is stuff: its instance ids are
  set to 0 in both maps, so each stuff class is one scene-wide segment.
- *Matching.* A predicted and a GT segment match when they have the same class and IoU > 0.5, which makes
  the match unique. The predicted segment's pixels on GT void are left out of the union.
- *Counting.* Matched pairs are TPs; unmatched GT segments are FNs; an unmatched predicted segment is a FP
  unless more than half of its pixels lie on GT void. Per class, SQ = ΣIoU / TP (0 without TPs),
  RQ = TP / (TP + ½FP + ½FN) and PQ = SQ · RQ = ΣIoU / (TP + ½FP + ½FN).
- *Class filter.* A class is scored when its GT segments **or** its predicted segments cover at least
  ``min_class_fraction`` of the non-void pixels (``class_filter="strict"``, the default and the headline
  figure): a class the prediction misses entirely scores 0, and a hallucinated one scores 0, so missing a
  class can never raise PQ. The authors' rule reads "a class that covers less than 0.5% of the predicted
  pixels, or less than 0.5% of the GT pixels, is dropped"; ``class_filter="authors"`` takes it literally
  (both must cover the fraction), for comparison with the paper's figures. It drops a class the
  prediction misses instead of scoring it 0, so a model that predicts no objects at all can score above one
  that finds them; the dropped classes are listed in the result. ``min_class_fraction=0`` scores every
  class with a segment in either map, under both filters.
- *Average.* The reported PQ, SQ and RQ are means over the scored classes, things and stuff together (for
  Messy Rooms: the mean of background and foreground). They are NaN when no class is scored.

The authors remove GT void pixels before matching. That gives the same IoUs as leaving them out of the
union here; the only difference is the standard rule that a predicted segment lying mostly on void is not a
FP, which we keep. The authors' script also prints SQ and RQ under each other's names; we do not replicate
that: ``sq`` here is the segmentation quality (mean IoU of matches) and ``rq`` the recognition quality (F1).

**Per-frame PQ** (:func:`per_frame_panoptic_quality`): the same computation on each frame alone (ids need
not agree across frames, and the class filter applies within the frame); the reported PQ is the mean over
frames of each frame's class-averaged PQ, skipping frames with no scored class.

**mIoU** (:func:`mean_iou`): one confusion matrix over all pixels of all frames, GT void removed; IoU per
class; the mean over the classes present in the GT or the prediction (classes with a non-empty union).

**Resizing.** The authors resize prediction and GT to 512×512 with nearest-neighbour sampling before
matching. Every function takes ``resize_to=(H, W)`` to do the same (default ``None``: no resize, shapes must
already agree); prediction and GT may then differ in size.

Everything is vectorised: segments and segment pairs are indexed with one counting pass over the pixels, and
the per-segment work is O(#segments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

LabelMaps = Union[np.ndarray, Sequence[np.ndarray]]
"""One integer array of any shape (e.g. N×H×W), or a sequence of per-frame arrays."""
ClassFilter = Literal["strict", "authors"]


class ClassQuality(NamedTuple):
    """Panoptic quality of one class."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int


@dataclass
class PanopticResult:
    """Panoptic quality of one prediction against its ground truth."""

    pq: float
    """Mean PQ over the scored classes, in [0, 1]; NaN when no class is scored."""
    sq: float
    """Mean segmentation quality (mean IoU of matched segments) over the scored classes."""
    rq: float
    """Mean recognition quality (TP / (TP + ½FP + ½FN)) over the scored classes."""
    per_class: Dict[int, ClassQuality] = field(default_factory=dict)
    """The scored classes, by class id."""
    dropped_classes: List[int] = field(default_factory=list)
    """Classes that have a segment but are not scored by the class filter."""
    num_pred_segments: int = 0
    """Number of predicted thing segments (distinct (class, id) pairs of labelled thing pixels)."""
    num_gt_segments: int = 0
    """Number of GT thing segments."""
    num_matched_segments: int = 0
    """Number of GT thing segments matched by a predicted segment (IoU > 0.5; in scored and unscored classes)."""


@dataclass
class PerFramePanopticResult:
    """Per-frame panoptic quality: each frame scored alone, then averaged over frames."""

    pq: float
    """Mean over frames of the per-frame class-averaged PQ; NaN when no frame has a scored class."""
    sq: float
    """Mean over frames of the per-frame class-averaged SQ."""
    rq: float
    """Mean over frames of the per-frame class-averaged RQ."""
    frames: List[PanopticResult] = field(default_factory=list)
    """The result of each frame, in input order."""


def resize_nearest(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resizes the last two axes of a label map to ``size`` = (H, W) with nearest-neighbour sampling.

    Output pixel i samples input pixel floor(i · in / out), the convention of torch's ``mode="nearest"``.
    """
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"resizing needs label maps with at least 2 dimensions (…×H×W), got shape {labels.shape}")
    height, width = labels.shape[-2:]
    rows = np.arange(size[0]) * height // size[0]
    cols = np.arange(size[1]) * width // size[1]
    return labels[..., rows[:, None], cols[None, :]]


def panoptic_quality(
    pred_semantics: LabelMaps,
    pred_instances: LabelMaps,
    gt_semantics: LabelMaps,
    gt_instances: LabelMaps,
    thing_classes: Collection[int],
    void_class: Optional[int] = None,
    min_class_fraction: float = 0.005,
    resize_to: Optional[Tuple[int, int]] = None,
    class_filter: ClassFilter = "strict",
) -> PanopticResult:
    """Panoptic quality of all the given pixels pooled together; with all test views, this is PQ^scene.

    See the module docstring for the exact protocol (void, stuff, matching, class filter, averaging).

    Args:
        pred_semantics: predicted class per pixel.
        pred_instances: predicted instance id per pixel; ignored on stuff; 0 on a thing pixel = unlabelled.
        gt_semantics: GT class per pixel.
        gt_instances: GT instance id per pixel, consistent across views; 0 on a thing pixel = void.
        thing_classes: the classes with instances; every other class except ``void_class`` is stuff.
        void_class: the GT class that marks unannotated pixels, or None when every class is real.
        min_class_fraction: the class filter's threshold, as a fraction of the non-void pixels.
        resize_to: (H, W) to resize every map to with nearest-neighbour sampling, or None.
        class_filter: "strict": a class is scored if its GT or its prediction covers the fraction (a missed
            class scores 0); "authors": only if both do (the authors' rule, which drops a missed class).
    """
    if class_filter not in ("strict", "authors"):
        raise ValueError(f"class_filter must be 'strict' or 'authors', got {class_filter!r}")
    things = np.array(sorted({int(c) for c in thing_classes}), dtype=np.int64)
    if void_class is not None and np.isin(void_class, things):
        raise ValueError(f"void_class {void_class} cannot also be a thing class")
    pred_cls, pred_ids, gt_cls, gt_ids = (
        _pooled(maps, resize_to, name)
        for maps, name in (
            (pred_semantics, "pred_semantics"),
            (pred_instances, "pred_instances"),
            (gt_semantics, "gt_semantics"),
            (gt_instances, "gt_instances"),
        )
    )
    if not pred_cls.size == pred_ids.size == gt_cls.size == gt_ids.size:
        raise ValueError(
            "prediction and ground truth must have the same number of pixels, got "
            f"{pred_cls.size}, {pred_ids.size}, {gt_cls.size}, {gt_ids.size} (pass resize_to to resample)"
        )

    pred_seg, pred_seg_cls, pred_area = _segments(pred_cls, pred_ids, things, void_class)
    gt_seg, gt_seg_cls, gt_area = _segments(gt_cls, gt_ids, things, void_class)
    num_pred, num_gt = pred_seg_cls.size, gt_seg_cls.size

    # One pass over the pixels gives every (predicted segment, GT segment) overlap; index 0 = none/void.
    pair_keys, _, overlap = _unique(pred_seg * (num_gt + 1) + gt_seg)
    pair_pred, pair_gt = np.divmod(pair_keys, num_gt + 1)

    on_void = (pair_pred > 0) & (pair_gt == 0)
    pred_void_area = np.zeros(num_pred + 1, dtype=np.int64)
    pred_void_area[pair_pred[on_void]] = overlap[on_void]
    pred_void_area = pred_void_area[1:]

    candidate = (pair_pred > 0) & (pair_gt > 0)
    cand_pred, cand_gt, inter = pair_pred[candidate] - 1, pair_gt[candidate] - 1, overlap[candidate]
    same_class = pred_seg_cls[cand_pred] == gt_seg_cls[cand_gt]
    cand_pred, cand_gt, inter = cand_pred[same_class], cand_gt[same_class], inter[same_class]
    union = pred_area[cand_pred] - pred_void_area[cand_pred] + gt_area[cand_gt] - inter
    iou = inter / union
    # IoU > 0.5 makes each segment match at most one segment of the other map.
    matched = iou > 0.5
    match_pred, match_gt, match_iou = cand_pred[matched], cand_gt[matched], iou[matched]

    pred_matched = np.zeros(num_pred, dtype=bool)
    pred_matched[match_pred] = True
    gt_matched = np.zeros(num_gt, dtype=bool)
    gt_matched[match_gt] = True
    is_fp = ~pred_matched & (2 * pred_void_area <= pred_area)

    classes = np.union1d(pred_seg_cls, gt_seg_cls)
    n = classes.size
    pred_cls_idx = np.searchsorted(classes, pred_seg_cls)
    gt_cls_idx = np.searchsorted(classes, gt_seg_cls)
    tp = np.bincount(gt_cls_idx[match_gt], minlength=n)
    iou_sum = np.bincount(gt_cls_idx[match_gt], weights=match_iou, minlength=n)
    fp = np.bincount(pred_cls_idx[is_fp], minlength=n)
    fn = np.bincount(gt_cls_idx[~gt_matched], minlength=n)

    # Class coverage over the non-void pixels: the GT segments cover exactly those.
    num_valid = int(gt_area.sum())
    pred_cover = np.bincount(pred_cls_idx, weights=pred_area - pred_void_area, minlength=n)
    gt_cover = np.bincount(gt_cls_idx, weights=gt_area, minlength=n)
    threshold = min_class_fraction * num_valid
    if class_filter == "strict":
        covered = (pred_cover >= threshold) | (gt_cover >= threshold)
    else:
        covered = (pred_cover >= threshold) & (gt_cover >= threshold)
    scored = covered & (tp + fp + fn > 0)

    denominator = tp + 0.5 * fp + 0.5 * fn
    sq = np.divide(iou_sum, tp, out=np.zeros(n), where=tp > 0)
    rq = np.divide(tp, denominator, out=np.zeros(n), where=denominator > 0)
    pq = sq * rq

    per_class = {
        int(classes[k]): ClassQuality(float(pq[k]), float(sq[k]), float(rq[k]), int(tp[k]), int(fp[k]), int(fn[k]))
        for k in np.flatnonzero(scored)
    }
    return PanopticResult(
        pq=_mean(pq[scored]),
        sq=_mean(sq[scored]),
        rq=_mean(rq[scored]),
        per_class=per_class,
        dropped_classes=[int(c) for c in classes[~scored]],
        num_pred_segments=int(np.isin(pred_seg_cls, things).sum()),
        num_gt_segments=int(np.isin(gt_seg_cls, things).sum()),
        num_matched_segments=int(np.isin(gt_seg_cls[match_gt], things).sum()),
    )


def per_frame_panoptic_quality(
    pred_semantics: LabelMaps,
    pred_instances: LabelMaps,
    gt_semantics: LabelMaps,
    gt_instances: LabelMaps,
    thing_classes: Collection[int],
    void_class: Optional[int] = None,
    min_class_fraction: float = 0.005,
    resize_to: Optional[Tuple[int, int]] = None,
    class_filter: ClassFilter = "strict",
) -> PerFramePanopticResult:
    """Standard PQ of each frame on its own, averaged over frames; ids need not agree across frames.

    The inputs are N×H×W stacks or sequences of H×W frames; the arguments mean what they mean in
    :func:`panoptic_quality`, applied within each frame. Frames with no scored class are left out of the mean.
    """
    frames = [
        panoptic_quality(ps, pi, gs, gi, thing_classes, void_class, min_class_fraction, resize_to, class_filter)
        for ps, pi, gs, gi in zip(pred_semantics, pred_instances, gt_semantics, gt_instances, strict=True)
    ]
    return PerFramePanopticResult(
        pq=_mean(np.array([f.pq for f in frames], dtype=float)),
        sq=_mean(np.array([f.sq for f in frames], dtype=float)),
        rq=_mean(np.array([f.rq for f in frames], dtype=float)),
        frames=frames,
    )


def mean_iou(
    pred_semantics: LabelMaps,
    gt_semantics: LabelMaps,
    num_classes: int,
    void_class: Optional[int] = None,
    resize_to: Optional[Tuple[int, int]] = None,
) -> float:
    """Semantic mIoU from one confusion matrix over all pixels, GT void removed.

    The mean is over the classes in [0, num_classes) other than ``void_class`` that occur in the GT or the
    prediction on non-void pixels; NaN when there are none. A predicted ``void_class`` pixel counts as a miss.
    """
    pred = _pooled(pred_semantics, resize_to, "pred_semantics")
    gt = _pooled(gt_semantics, resize_to, "gt_semantics")
    if pred.size != gt.size:
        raise ValueError(f"prediction and ground truth must have the same number of pixels, got {pred.size}, {gt.size}")
    if void_class is not None:
        valid = gt != void_class
        pred, gt = pred[valid], gt[valid]
    for labels, name in ((pred, "pred_semantics"), (gt, "gt_semantics")):
        if labels.size and labels.max() >= num_classes:
            raise ValueError(f"{name} holds class {labels.max()}, outside [0, num_classes={num_classes})")
    confusion = np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    if void_class is not None and void_class < num_classes:
        present[void_class] = False
    return _mean(inter[present] / union[present])


def _pooled(maps: LabelMaps, resize_to: Optional[Tuple[int, int]], name: str) -> np.ndarray:
    """Flattens one array or a sequence of frames into one int64 pixel list, resizing each first if asked."""
    frames = [maps] if isinstance(maps, np.ndarray) else list(maps)
    flat = []
    for frame in frames:
        frame = np.asarray(frame)
        if frame.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integer labels, got dtype {frame.dtype}")
        if resize_to is not None:
            frame = resize_nearest(frame, resize_to)
        flat.append(frame.reshape(-1))
    pixels = np.concatenate(flat).astype(np.int64) if flat else np.zeros(0, dtype=np.int64)
    if pixels.size and pixels.min() < 0:
        raise ValueError(f"{name} holds negative labels; classes and instance ids must be ≥ 0")
    return pixels


def _segments(
    classes: np.ndarray, instances: np.ndarray, things: np.ndarray, void_class: Optional[int]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indexes the segments of one map.

    Returns the segment index of each pixel (0 = void/unlabelled, segments are 1…S), the class of each
    segment and its area in pixels.
    """
    is_thing = np.isin(classes, things)
    # Stuff ids are zeroed: each stuff class is one segment.
    instances = np.where(is_thing, instances, 0)
    no_segment = is_thing & (instances == 0)
    if void_class is not None:
        no_segment |= classes == void_class
    stride = int(instances.max(initial=0)) + 1
    keys = np.where(no_segment, 0, classes * stride + instances + 1)
    unique_keys, index, area = _unique(keys)
    if unique_keys.size and unique_keys[0] == 0:
        unique_keys, area = unique_keys[1:], area[1:]
    else:
        index = index + 1
    return index, (unique_keys - 1) // stride, area


def _unique(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True, return_counts=True)`` for non-negative int64 keys.

    Counting into a dense table is O(#pixels) instead of a sort; it is used when the key range is at most
    about the size of the input, so the table costs no more memory than the keys do.
    """
    max_key = int(keys.max(initial=0))
    if max_key > keys.size + (1 << 20):
        return np.unique(keys, return_inverse=True, return_counts=True)
    counts = np.bincount(keys, minlength=max_key + 1)
    unique_keys = np.flatnonzero(counts)
    lookup = np.zeros(max_key + 1, dtype=np.int64)
    lookup[unique_keys] = np.arange(unique_keys.size)
    return unique_keys, lookup[keys], counts[unique_keys]


def _mean(values: np.ndarray) -> float:
    """Mean that ignores NaNs; NaN (without a warning) when nothing is left."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
