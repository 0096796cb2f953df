"""Tests of the panoptic metrics: hand-made cases, and a cross-check against torchmetrics' PanopticQuality."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality

from contrastive_lift_ns.evaluation.panoptic_quality import (
    mean_iou,
    panoptic_quality,
    per_frame_panoptic_quality,
    resize_nearest,
)

BACKGROUND, OBJECT = 0, 1  # Messy-Rooms-style classes: both real, "object" is the only thing class


def _two_views() -> tuple:
    """Two 10×10 views of a background with one object (GT id 7) of 20 pixels in each view."""
    sem = np.zeros((2, 10, 10), dtype=np.int64)
    ids = np.zeros((2, 10, 10), dtype=np.int64)
    sem[:, 2:4, 0:10] = OBJECT
    ids[:, 2:4, 0:10] = 7
    return sem, ids


def test_perfect_prediction_scores_one_whatever_the_id_values() -> None:
    sem, ids = _two_views()
    result = panoptic_quality(sem, np.where(ids > 0, 42, 0), sem, ids, thing_classes=[OBJECT])
    assert (result.pq, result.sq, result.rq) == (1.0, 1.0, 1.0)
    assert set(result.per_class) == {BACKGROUND, OBJECT}
    assert result.per_class[OBJECT][3:] == (1, 0, 0)
    assert (result.num_pred_segments, result.num_gt_segments) == (1, 1)


def test_id_swapped_across_views_fails_scene_pq_but_not_per_frame_pq() -> None:
    sem, gt_ids = _two_views()
    pred_ids = gt_ids.copy()
    pred_ids[0][gt_ids[0] > 0] = 1
    pred_ids[1][gt_ids[1] > 0] = 2
    scene = panoptic_quality(sem, pred_ids, sem, gt_ids, thing_classes=[OBJECT])
    # Each predicted id covers half of the scene-wide object: IoU = 0.5 is not > 0.5, so 0 TP, 2 FP, 1 FN.
    assert scene.per_class[OBJECT] == (0.0, 0.0, 0.0, 0, 2, 1)
    assert scene.pq == pytest.approx(0.5)  # mean of background (1) and object (0)
    frames = per_frame_panoptic_quality(sem, pred_ids, sem, gt_ids, thing_classes=[OBJECT])
    assert frames.pq == 1.0
    assert [f.pq for f in frames.frames] == [1.0, 1.0]


def test_mostly_consistent_id_matches_with_its_share_of_the_object() -> None:
    sem, gt_ids = _two_views()
    sem[1] = BACKGROUND
    sem[1, 2:3, 0:10] = OBJECT  # the object is 20 pixels in view 0 and 10 in view 1
    gt_ids[1] = np.where(sem[1] == OBJECT, 7, 0)
    pred_ids = np.where(sem == OBJECT, 1, 0)
    pred_ids[1][sem[1] == OBJECT] = 2
    obj = panoptic_quality(sem, pred_ids, sem, gt_ids, thing_classes=[OBJECT]).per_class[OBJECT]
    assert obj.tp == 1 and obj.fp == 1 and obj.fn == 0
    assert obj.sq == pytest.approx(20 / 30)
    assert obj.pq == pytest.approx((20 / 30) / 1.5)


def test_split_object() -> None:
    gt_sem = np.array([OBJECT] * 100 + [BACKGROUND] * 100)
    gt_ids = np.array([5] * 100 + [0] * 100)
    pred_ids = np.array([1] * 70 + [2] * 30 + [0] * 100)
    obj = panoptic_quality(gt_sem, pred_ids, gt_sem, gt_ids, thing_classes=[OBJECT]).per_class[OBJECT]
    assert obj.tp == 1 and obj.fp == 1 and obj.fn == 0
    assert obj.pq == pytest.approx(0.7 / 1.5)
    assert obj.sq == pytest.approx(0.7)
    assert obj.rq == pytest.approx(1 / 1.5)


def test_merged_objects() -> None:
    gt_sem = np.full(100, OBJECT)
    gt_ids = np.array([1] * 60 + [2] * 40)
    result = panoptic_quality(gt_sem, np.full(100, 9), gt_sem, gt_ids, thing_classes=[OBJECT])
    assert result.per_class[OBJECT] == pytest.approx((0.6 / 1.5, 0.6, 1 / 1.5, 1, 0, 1))
    assert (result.num_pred_segments, result.num_gt_segments) == (1, 2)


def test_void_pixels_are_ignored() -> None:
    void, wall, chair = 0, 1, 5
    gt_sem = np.array([void] * 30 + [wall] * 50 + [chair] * 20 + [chair] * 10)
    gt_ids = np.array([0] * 30 + [0] * 50 + [3] * 20 + [0] * 10)  # chair with id 0 = unannotated = void
    pred_sem = np.array([chair] * 30 + [wall] * 50 + [chair] * 20 + [wall] * 10)
    # On GT void, the prediction labels part of the chair and a separate chair (id 8) lying entirely on void.
    pred_ids = np.array([3] * 10 + [8] * 20 + [0] * 50 + [3] * 20 + [0] * 10)
    result = panoptic_quality(pred_sem, pred_ids, gt_sem, gt_ids, thing_classes=[chair], void_class=void)
    assert result.pq == 1.0
    assert result.per_class[chair][3:] == (1, 0, 0)  # the chair on void is no FP
    assert result.per_class[wall][3:] == (1, 0, 0)


def test_predicted_segment_mostly_on_void_is_no_false_positive_but_half_on_void_is() -> None:
    void, wall, chair = 0, 1, 5
    gt_sem = np.array([void] * 10 + [wall] * 90)
    gt_ids = np.zeros(100, dtype=np.int64)
    pred_sem = np.array([chair] * 10 + [chair] * 9 + [wall] * 81)
    pred_ids = np.array([4] * 19 + [0] * 81)
    result = panoptic_quality(pred_sem, pred_ids, gt_sem, gt_ids, thing_classes=[chair], void_class=void)
    assert chair not in result.per_class  # no GT chair and no FP: nothing to score
    pred_sem[10:20] = chair  # now exactly half on void: counted
    pred_ids[10:20] = 4
    result = panoptic_quality(
        pred_sem, pred_ids, gt_sem, gt_ids, thing_classes=[chair], void_class=void, min_class_fraction=0
    )
    assert result.per_class[chair] == (0.0, 0.0, 0.0, 0, 1, 0)


def test_unlabelled_predicted_thing_pixels_cost_iou() -> None:
    gt_sem = np.full(100, OBJECT)
    gt_ids = np.full(100, 1)
    pred_ids = np.array([6] * 80 + [0] * 20)
    obj = panoptic_quality(gt_sem, pred_ids, gt_sem, gt_ids, thing_classes=[OBJECT]).per_class[OBJECT]
    assert obj == pytest.approx((0.8, 0.8, 1.0, 1, 0, 0))


def test_stuff_instance_ids_are_ignored() -> None:
    sem, ids = _two_views()
    rng = np.random.default_rng(0)
    noisy_gt = np.where(sem == OBJECT, ids, rng.integers(0, 50, ids.shape))
    noisy_pred = np.where(sem == OBJECT, 3, rng.integers(0, 50, ids.shape))
    result = panoptic_quality(sem, noisy_pred, sem, noisy_gt, thing_classes=[OBJECT])
    assert result.pq == 1.0
    assert result.per_class[BACKGROUND][3:] == (1, 0, 0)


def test_a_missed_class_scores_zero_and_the_authors_filter_drops_it() -> None:
    # Class 2 (stuff) is 10% of the GT but never predicted.
    gt_sem = np.array([0] * 90 + [2] * 10)
    pred_sem = np.zeros(100, dtype=np.int64)
    ids = np.zeros(100, dtype=np.int64)
    strict = panoptic_quality(pred_sem, ids, gt_sem, ids, thing_classes=[1])
    assert set(strict.per_class) == {0, 2} and strict.per_class[2].pq == 0.0
    assert strict.pq == pytest.approx(0.45)  # missing a class never raises PQ
    authors = panoptic_quality(pred_sem, ids, gt_sem, ids, thing_classes=[1], class_filter="authors")
    assert set(authors.per_class) == {0} and authors.dropped_classes == [2]
    assert authors.pq == pytest.approx(0.9)
    # a class below the fraction in both maps is dropped by either filter
    tiny = np.array([0] * 999 + [2])
    result = panoptic_quality(np.zeros(1000, dtype=np.int64), np.zeros(1000, dtype=np.int64), tiny, tiny * 0, [1])
    assert result.dropped_classes == [2] and result.pq == pytest.approx(0.999)


def test_a_prediction_of_background_alone_scores_half_its_background_pq() -> None:
    """Two classes (background stuff, object things): predicting no object must not beat finding them."""
    gt_sem = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
    gt_ids = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
    nothing = np.zeros_like(gt_sem)
    result = panoptic_quality(nothing, nothing, gt_sem, gt_ids, thing_classes=[1])
    assert result.per_class[1].pq == 0.0
    assert result.pq == pytest.approx(result.per_class[0].pq / 2)
    assert panoptic_quality(gt_sem, gt_ids, gt_sem, gt_ids, thing_classes=[1]).pq == 1.0


def test_large_ids_take_the_sorting_path_with_the_same_result() -> None:
    rng = np.random.default_rng(1)
    gt_sem, gt_ids, pred_sem, pred_ids = _random_scene(rng, void_class=None)
    small = panoptic_quality(pred_sem, pred_ids, gt_sem, gt_ids, thing_classes=THINGS)
    large = panoptic_quality(pred_sem, pred_ids * 10**9, gt_sem, gt_ids * 10**9, thing_classes=THINGS)
    assert small == large


def test_resize_to_common_size() -> None:
    sem, ids = _two_views()
    big_sem, big_ids = (np.repeat(np.repeat(x, 3, axis=1), 3, axis=2) for x in (sem, ids))
    assert np.array_equal(resize_nearest(big_sem, (10, 10)), sem)
    result = panoptic_quality(big_sem, big_ids, sem, ids, thing_classes=[OBJECT], resize_to=(20, 20))
    assert result.pq == 1.0
    with pytest.raises(ValueError, match="same number of pixels"):
        panoptic_quality(big_sem, big_ids, sem, ids, thing_classes=[OBJECT])


def test_mean_iou_by_hand() -> None:
    gt = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    pred = np.array([1, 2, 1, 1, 2, 2, 0, 3])
    # Void removed: class 1 IoU 2/3, class 2 IoU 1/3, class 3 IoU 1; class 4 is absent, class 0 is void.
    assert mean_iou(pred, gt, num_classes=5, void_class=0) == pytest.approx(2 / 3)
    # Class 0 real: IoUs 0, 2/4, 1/4, 1.
    assert mean_iou(pred, gt, num_classes=5) == pytest.approx(0.4375)
    assert math.isnan(mean_iou(pred[:2], gt[:2], num_classes=5, void_class=0))


# --- cross-check against torchmetrics ------------------------------------------------------------------------

STUFF, THINGS = (1, 2), (3, 4)
UNKNOWN = 99  # a category torchmetrics does not know, which it treats as void
TM_TOL = 1e-6  # torchmetrics divides the integer areas in float32


def _random_scene(rng: np.random.Generator, void_class, views: int = 3, height: int = 24, width: int = 32) -> tuple:
    """Views of rectangles (objects keep their id across views) and a prediction with realistic mistakes."""
    gt_sem = rng.choice(STUFF, size=(views, 1, 1)).repeat(height, 1).repeat(width, 2)
    gt_sem[:, height // 2 :, :] = STUFF[1]
    gt_ids = np.zeros_like(gt_sem)
    for obj in range(1, 9):
        cls = THINGS[obj % 2]
        h, w = rng.integers(3, 10, size=2)
        for view in rng.choice(views, size=rng.integers(1, views + 1), replace=False):
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            gt_sem[view, y : y + h, x : x + w] = cls
            gt_ids[view, y : y + h, x : x + w] = obj
    if void_class is not None:
        gt_sem[:, :2, :] = void_class  # a void band, and an unannotated object
        gt_ids[:, :2, :] = 0
        gt_ids[0, 2:5, 0:6], gt_sem[0, 2:5, 0:6] = 0, THINGS[0]

    pred_sem, pred_ids = gt_sem.copy(), gt_ids.copy()
    if void_class is not None:  # predictions are never void or unlabelled (torchmetrics treats those differently)
        pred_sem[pred_sem == void_class] = STUFF[0]
    pred_ids[np.isin(pred_sem, THINGS) & (pred_ids == 0)] = 50
    pred_ids[1][pred_ids[1] == 2] = 20  # object 2 gets another id in view 1
    pred_ids[pred_ids == 3] = 4  # objects 3 and 4 merged where same class
    shifted = np.roll(pred_ids, 2, axis=2)  # boundaries off by two pixels in some views
    pred_ids[2] = shifted[2]
    noise = rng.random(pred_sem.shape) < 0.05
    pred_sem[noise] = rng.choice(STUFF + THINGS, size=noise.sum())
    pred_ids[noise] = rng.integers(1, 12, size=noise.sum())
    pred_ids[np.isin(pred_sem, THINGS) & (pred_ids == 0)] = 60
    return gt_sem, gt_ids, pred_sem, pred_ids


def _torchmetrics_pq(gt_sem, gt_ids, pred_sem, pred_ids, void_class) -> PanopticQuality:
    """torchmetrics on the views concatenated into one image; our GT void made into an unknown category."""
    gt_void = np.isin(gt_sem, THINGS) & (gt_ids == 0)
    if void_class is not None:
        gt_void |= gt_sem == void_class
    target = np.stack([np.where(gt_void, UNKNOWN, gt_sem), gt_ids], axis=-1).reshape(1, -1, gt_sem.shape[-1], 2)
    preds = np.stack([pred_sem, pred_ids], axis=-1).reshape(1, -1, pred_sem.shape[-1], 2)
    metric = PanopticQuality(things=set(THINGS), stuffs=set(STUFF), return_sq_and_rq=True)
    metric.update(torch.from_numpy(preds), torch.from_numpy(target))
    return metric


@pytest.mark.parametrize("void_class", [None, 0])
@pytest.mark.parametrize("seed", range(4))
def test_scene_pq_matches_torchmetrics_on_concatenated_views(seed: int, void_class) -> None:
    rng = np.random.default_rng(seed)
    gt_sem, gt_ids, pred_sem, pred_ids = _random_scene(rng, void_class)
    ours = panoptic_quality(pred_sem, pred_ids, gt_sem, gt_ids, THINGS, void_class, min_class_fraction=0)
    metric = _torchmetrics_pq(gt_sem, gt_ids, pred_sem, pred_ids, void_class)

    order = sorted(THINGS) + sorted(STUFF)  # torchmetrics' category order
    for k, cls in enumerate(order):
        counts = (int(metric.true_positives[k]), int(metric.false_positives[k]), int(metric.false_negatives[k]))
        if counts == (0, 0, 0):
            assert cls not in ours.per_class
            continue
        assert ours.per_class[cls][3:] == counts, cls
        tp = counts[0]
        assert ours.per_class[cls].sq * tp == pytest.approx(float(metric.iou_sum[k]), abs=TM_TOL)
    assert sum(ours.per_class[c].tp for c in ours.per_class) > 0  # the scenes do exercise matching
    assert [ours.pq, ours.sq, ours.rq] == pytest.approx(metric.compute().tolist(), abs=TM_TOL)


@pytest.mark.parametrize("seed", range(2))
def test_per_frame_pq_matches_torchmetrics_frame_by_frame(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    gt_sem, gt_ids, pred_sem, pred_ids = _random_scene(rng, void_class=0)
    ours = per_frame_panoptic_quality(pred_sem, pred_ids, gt_sem, gt_ids, THINGS, 0, min_class_fraction=0)
    theirs = [
        _torchmetrics_pq(gt_sem[i : i + 1], gt_ids[i : i + 1], pred_sem[i : i + 1], pred_ids[i : i + 1], 0).compute()
        for i in range(len(gt_sem))
    ]
    assert [f.pq for f in ours.frames] == pytest.approx([float(t[0]) for t in theirs], abs=TM_TOL)
    assert ours.pq == pytest.approx(float(np.mean([float(t[0]) for t in theirs])), abs=TM_TOL)


def test_matched_objects_count_objects_not_ids():
    """Splitting every object in two adds ids but no matched object."""
    gt_instances = np.repeat(np.arange(1, 6), 20).reshape(1, 10, 10)
    semantics = np.ones_like(gt_instances)
    whole = panoptic_quality(semantics, gt_instances, semantics, gt_instances, thing_classes=[1])
    halves = gt_instances * 2 - (np.arange(100).reshape(1, 10, 10) % 2)  # each object's pixels under two ids
    split = panoptic_quality(semantics, halves, semantics, gt_instances, thing_classes=[1])
    assert whole.num_matched_segments == 5
    assert split.num_pred_segments == 10 and split.num_matched_segments == 0  # two halves: IoU 0.5 each
