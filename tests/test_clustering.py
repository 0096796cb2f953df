"""Clustering embeddings into objects, on hand-made embeddings."""

from __future__ import annotations

import pytest
import torch

from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig, InstanceClusters, _smallest_near_best
from contrastive_lift_ns.clustering.specks import absorb_specks, speck_limit
from contrastive_lift_ns.drawing.palette import embedding_colours, id_colours


def _blobs(centres, per_blob=300, spread=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor(centres, dtype=torch.float32)
    points = (
        centres.repeat_interleave(per_blob, 0) + torch.randn(len(centres) * per_blob, 3, generator=generator) * spread
    )
    return points, torch.arange(len(centres)).repeat_interleave(per_blob)


def _clusters(**config) -> InstanceClusters:
    return ClusteringConfig(**config).setup(thing_classes=(1, 2))


def test_blobs_become_one_object_each_and_pixels_take_their_nearest_centroid():
    points, blob = _blobs([[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
    clusters = _clusters(min_cluster_size=50)
    stats = clusters.fit(points, torch.ones(len(points), dtype=torch.long))
    assert stats[1]["clusters"] == 4
    ids = clusters.assign(points, torch.ones(len(points), dtype=torch.long))
    # one id per blob, four distinct ids
    assert all(len(ids[blob == b].unique()) == 1 for b in range(4)) and len(ids.unique()) == 4


def test_classes_are_clustered_separately_and_stuff_gets_zero():
    points, blob = _blobs([[0, 0, 0], [3, 0, 0]])
    classes = torch.where(blob == 0, 1, 2)
    clusters = _clusters(min_cluster_size=50)
    clusters.fit(points, classes)
    assert sorted(clusters.classes.tolist()) == [1, 2]
    # the same embedding gets a different object in another class, and nothing in a stuff class
    probe = torch.zeros(3, 3)
    ids = clusters.assign(probe, torch.tensor([1, 2, 0]))
    assert ids[0] != ids[1] and ids[0] > 0 and ids[1] > 0 and ids[2] == 0


def test_no_thing_pixels_or_a_single_cluster_do_not_crash():
    points, blob = _blobs([[0, 0, 0]])
    clusters = _clusters()
    views, segments = torch.zeros_like(blob), blob + 1
    clusters.fit(points, torch.zeros(len(points), dtype=torch.long), segments, views)  # all stuff
    # a clustering that found no objects still counts as done: every pixel then gets id 0
    assert clusters.fitted and len(clusters.ids) == 0
    assert (clusters.assign(points, torch.ones(len(points), dtype=torch.long)) == 0).all()
    clusters.fit(points, torch.ones(len(points), dtype=torch.long), segments, views)  # one object
    assert len(clusters.ids) == 1
    assert (clusters.assign(points, torch.ones(len(points), dtype=torch.long)) == clusters.ids[0]).all()


def test_min_cluster_size_is_chosen_to_reproduce_the_2d_segments():
    """Each object is two tight sub-blobs: a small min_cluster_size splits objects in two, which the 2D
    segments (one per object per view) reject; the chosen size gives one cluster per object."""
    centres = [[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]]
    halves = [[x + dx, y, z] for x, y, z in centres for dx in (0.0, 0.6)]
    points, half = _blobs(halves, per_blob=250, spread=0.04)
    obj = half // 2
    views = torch.randint(0, 10, (len(points),), generator=torch.Generator().manual_seed(0))
    segments = obj * 7 + views + 1  # arbitrary ids, new in every view
    clusters = _clusters()
    stats = clusters.fit(points, torch.ones(len(points), dtype=torch.long), segments, views)
    assert stats[1]["clusters"] == 4 and stats[1]["score"] > 0.95, stats
    ids = clusters.assign(points, torch.ones(len(points), dtype=torch.long))
    assert all(len(ids[obj == o].unique()) == 1 for o in range(4))
    assert _clusters(min_cluster_size=20).fit(points, torch.ones(len(points), dtype=torch.long))[1]["clusters"] == 8
    with pytest.raises(ValueError, match="2D segments"):
        _clusters().fit(points, torch.ones(len(points), dtype=torch.long))


def test_the_size_choice_prefers_the_smallest_size_near_the_best_score():
    """The within-view score does not see merges of objects never in one view, so a size that merges them may
    score a hair above one that keeps them apart: the smallest size within the tolerance wins."""
    tried = [(5, "speckle", 0.90), (10, "apart", 0.955), (20, "merged", 0.96)]
    assert _smallest_near_best(tried, 0.01)[1] == "apart"
    assert _smallest_near_best(tried, 0.0)[1] == "merged"
    assert _smallest_near_best(tried, 0.1)[1] == "speckle"
    # end to end: four pairs of objects, each pair close in embedding space and never in one view, and a fifth
    # object with a satellite blob seen in one view only: the size that merges the pairs also absorbs the
    # satellite, so it scores a hair (0.006) above every size that keeps the pairs apart
    generator = torch.Generator().manual_seed(0)
    centres = [[x + dx, y, z] for x, y, z in [[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]] for dx in (0.0, 0.5)]
    paired, pair = _blobs(centres, per_blob=250, spread=0.05)
    main, _ = _blobs([[4, 4, 0]], per_blob=400, seed=1)
    satellite, _ = _blobs([[4.6, 4, 0]], per_blob=200, seed=2)
    points = torch.cat([paired, main, satellite])
    obj = torch.cat([pair, torch.full((600,), 8)])
    views = torch.cat(
        [
            torch.randint(0, 10, (len(paired),), generator=generator) + 10 * (pair % 2),
            torch.randint(0, 20, (400,), generator=generator),
            torch.zeros(200, dtype=torch.long),
        ]
    )
    classes = torch.ones(len(points), dtype=torch.long)

    def pair_ids(tolerance):
        clusters = _clusters(size_tolerance=tolerance)
        clusters.fit(points, classes, obj * 23 + views + 1, views)
        ids = clusters.assign(points, classes)
        return {ids[obj == o].mode().values.item() for o in range(8)}

    assert len(pair_ids(0.01)) == 8
    assert len(pair_ids(0.0)) == 4  # the best score alone merges every pair


def test_centroids_of_any_number_survive_a_state_dict_round_trip():
    points, _ = _blobs([[0, 0, 0], [3, 0, 0], [0, 3, 0]])
    fitted = _clusters(min_cluster_size=50)
    fitted.fit(points, torch.ones(len(points), dtype=torch.long))
    fresh = _clusters()
    assert not fresh.fitted
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(fresh.centroids, fitted.centroids) and torch.equal(fresh.ids, fitted.ids)
    assert torch.equal(fresh.classes, fitted.classes)


def test_ids_stay_with_their_objects_when_reclustering():
    points, blob = _blobs([[0, 0, 0], [3, 0, 0], [0, 3, 0]])
    clusters = _clusters(min_cluster_size=50)
    classes = torch.ones(len(points), dtype=torch.long)
    clusters.fit(points, classes)
    before = clusters.assign(points, classes)
    moved, _ = _blobs([[0.1, 0, 0], [3, 0.1, 0], [0, 3, 0.1], [5, 5, 5]], seed=1)  # drift, plus a new object
    clusters.fit(moved, torch.ones(len(moved), dtype=torch.long))
    after = clusters.assign(points, classes)
    assert torch.equal(before, after)
    assert len(clusters.ids) == 4 and len(set(clusters.ids.tolist())) == 4


def test_colours_are_fixed_per_id_and_per_embedding():
    ids = torch.tensor([0, 1, 2, 300, 1])
    colours = id_colours(ids)
    assert torch.equal(colours[1], colours[4]) and not torch.equal(colours[1], colours[2])
    assert torch.equal(colours, id_colours(ids.clone()))
    assert (colours[3] != colours[0]).any()  # ids past the palette never wrap onto the background grey
    embeddings = torch.randn(10, 3)
    assert torch.equal(embedding_colours(embeddings), embedding_colours(embeddings.clone()))
    assert embedding_colours(torch.randn(4, 8)).shape == (4, 3)


def _two_rooms(per_object=400, seed=0):
    """Two objects with the same embedding, far apart in space, never in one view (views 0-4 see the first,
    views 5-9 the second); each view's segment ids are its own."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(2 * per_object, 3, generator=generator) * 0.05
    centres = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]).repeat_interleave(per_object, 0)
    positions = centres + torch.rand(2 * per_object, 3, generator=generator) * 0.5
    views = torch.randint(0, 5, (2 * per_object,), generator=generator) + torch.arange(2).repeat_interleave(
        per_object
    ) * 5
    segments = torch.full_like(views, 7)
    return embeddings, positions, views, segments


def test_two_objects_never_in_one_view_with_one_embedding_get_two_ids():
    embeddings, positions, views, segments = _two_rooms()
    classes = torch.ones(len(embeddings), dtype=torch.long)
    clusters = _clusters()
    stats = clusters.fit(embeddings, classes, segments, views, positions=positions)
    assert stats[1]["clusters"] == 1 and stats[1]["objects"] == 2
    ids = clusters.assign(embeddings, classes, positions)
    first, second = ids[:400].unique(), ids[400:].unique()
    assert len(first) == 1 and len(second) == 1 and first != second
    # without positions (the embedding alone) there is no telling them apart
    assert len(clusters.assign(embeddings, classes).unique()) == 1
    # the split survives a checkpoint
    restored = _clusters()
    restored.set_extra_state(clusters.get_extra_state())
    assert torch.equal(restored.assign(embeddings, classes, positions), ids)


def test_blobs_that_share_a_2d_segment_stay_one_object():
    """A gap in space inside one view's segment is a depth error (a floater), not a second object."""
    embeddings, positions, views, segments = _two_rooms()
    views[400:] = views[:400]  # both blobs seen in the same views, under the same segment id
    classes = torch.ones(len(embeddings), dtype=torch.long)
    clusters = _clusters()
    stats = clusters.fit(embeddings, classes, segments, views, positions=positions)
    assert stats[1]["objects"] == 1
    assert len(clusters.assign(embeddings, classes, positions).unique()) == 1


def test_specks_take_the_id_around_them_and_small_objects_keep_theirs():
    ids = torch.zeros(32, 32, dtype=torch.long)
    ids[4:20, 4:14], ids[4:20, 14:24] = 1, 2  # two objects side by side
    ids[9:12, 13:15] = 7  # a speck of object 7 on their edge, 6 px
    ids[10, 20] = 8  # a one-pixel speck inside object 2
    ids[26:29, 26:29] = 3  # a small object on the background, 9 px
    ids[3:5, 30] = 1  # a 2 px piece of object 1 that borders no other object
    classes = torch.where(ids > 0, 1, 0)  # 1: a thing class, 0: the background's
    classes[:, 28:] = torch.where(ids[:, 28:] > 0, 1, 5)  # another background class at the right edge
    cleaned_classes, cleaned = absorb_specks(classes, ids, max_pixels=speck_limit(32, 32, 0.25))  # 8 px
    assert cleaned[10, 20] == 2
    assert set(cleaned[9:12, 13:15].unique().tolist()) <= {1, 2}
    assert (cleaned[26:29, 26:29] == 3).all()  # larger than a speck
    # a lone speck is background seen as an object: it takes the background's id and the class around it
    assert (cleaned[3:5, 30] == 0).all() and (cleaned_classes[3:5, 30] == 5).all()
    lone = torch.zeros_like(ids, dtype=torch.bool)
    lone[3:5, 30] = True
    assert torch.equal(cleaned[(ids < 7) & ~lone], ids[(ids < 7) & ~lone])  # only the specks changed
    assert torch.equal(cleaned_classes[~lone], classes[~lone])
    unchanged = absorb_specks(classes, ids, max_pixels=0)
    assert torch.equal(unchanged[0], classes) and torch.equal(unchanged[1], ids)
