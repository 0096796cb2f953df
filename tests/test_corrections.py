"""Hand corrections of the objects (merge, split, delete, undo), their file, and the objects' confidence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastive_lift_ns.clustering.confidence import object_confidence
from contrastive_lift_ns.clustering.corrections import ClusterSample, CorrectionError, Corrections, Delete, Merge
from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig
from contrastive_lift_ns.data.scene_format import read_label_map
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.keys import Batch, Output
from contrastive_lift_ns.scripts import eval as eval_script
from contrastive_lift_ns.scripts import export as export_script
from contrastive_lift_ns.scripts.cli import load_run

from .conftest import train_in_process


def _blobs(centres, per_blob=200, spread=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor(centres, dtype=torch.float32)
    noise = torch.randn(len(centres) * per_blob, 3, generator=generator) * spread
    points = centres.repeat_interleave(per_blob, 0) + noise
    return points, torch.arange(len(centres)).repeat_interleave(per_blob)


def _fitted(centres, seed=0):
    """Clusters fitted on one tight blob per centre, and the sample they were fitted on."""
    points, blob = _blobs(centres, seed=seed)
    classes = torch.ones(len(points), dtype=torch.long)
    clusters = ClusteringConfig(min_cluster_size=50).setup(thing_classes=(1,))
    clusters.fit(points, classes)
    sample = ClusterSample(clusters.assign(points, classes), points, classes)
    return clusters, sample, blob


def _one_object(centres, seed=0):
    """Blobs the clustering took for one object (id 1), as a sample."""
    points, blob = _blobs(centres, seed=seed)
    ones = torch.ones(len(points), dtype=torch.long)
    return ClusterSample(ones, points, ones.clone()), blob


def _id_of(sample: ClusterSample, blob: torch.Tensor, b: int) -> int:
    return int(sample.ids[blob == b][0])


def _corrected(corrections: Corrections, sample: ClusterSample) -> torch.Tensor:
    return corrections.apply(sample.ids, sample.embeddings, sample.positions)


def test_merge_gives_one_id_delete_gives_zero_and_untouched_ids_stay():
    clusters, sample, blob = _fitted([[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
    a, b, c, d = (_id_of(sample, blob, k) for k in range(4))
    corrections = Corrections()
    corrections.merge([b, a], clusters.ids.tolist())
    corrections.delete(c, clusters.ids.tolist())
    ids = _corrected(corrections, sample)
    assert set(ids[(blob == 0) | (blob == 1)].tolist()) == {min(a, b)}
    assert (ids[blob == 2] == 0).all()
    assert (ids[blob == 3] == d).all()  # untouched: same id, so the same colour
    assert corrections.object_ids(clusters.ids.tolist()) == sorted([min(a, b), d])


def test_split_turns_one_id_into_parts_and_undo_restores_it():
    sample, blob = _one_object([[0, 0, 0], [0.4, 0, 0]])
    whole = 1
    before = sample.ids.clone()
    corrections = Corrections()
    split = corrections.split(whole, 2, [whole], sample)
    ids = _corrected(corrections, sample)
    assert len(ids.unique()) == 2 and whole in ids.tolist()
    # the parts follow the two blobs, and the new id is one the clustering never had
    modes = [int(ids[blob == b].mode().values) for b in range(2)]
    assert modes[0] != modes[1] and all((ids[blob == b] == modes[b]).float().mean() > 0.95 for b in range(2))
    assert split.part_ids[1] > whole and sum(split.sizes) == len(ids)
    assert corrections.undo() is split and torch.equal(_corrected(corrections, sample), before)
    with pytest.raises(CorrectionError, match="no object 99"):
        corrections.delete(99, [whole])


def test_split_parts_use_3d_points_where_the_embedding_cannot_tell_them_apart():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(400, 3, generator=generator) * 0.05  # one embedding
    positions = torch.cat([torch.zeros(200, 3), torch.full((200, 3), 5.0)]) + torch.rand(400, 3, generator=generator)
    classes = torch.ones(400, dtype=torch.long)
    sample = ClusterSample(torch.full((400,), 4), embeddings, classes, positions)
    corrections = Corrections()
    corrections.split(4, 2, [4], sample)
    ids = _corrected(corrections, sample)
    assert len(ids[:200].unique()) == 1 and len(ids[200:].unique()) == 1 and ids[0] != ids[-1]


def test_a_reclustering_keeps_a_merge_of_surviving_ids_and_says_what_it_drops():
    clusters, sample, blob = _fitted([[0, 0, 0], [3, 0, 0], [0, 3, 0]])
    a, b, c = (_id_of(sample, blob, k) for k in range(3))
    corrections = Corrections()
    corrections.merge([a, b], clusters.ids.tolist())
    corrections.delete(c, clusters.ids.tolist())
    # training goes on: the embeddings drift and the third object is gone; ids follow by matching
    moved, moved_blob = _blobs([[0.1, 0, 0], [3, 0.1, 0]], seed=1)
    classes = torch.ones(len(moved), dtype=torch.long)
    clusters.fit(moved, classes)
    dropped = corrections.rebase(clusters.ids.tolist(), ClusterSample(clusters.assign(moved, classes), moved, classes))
    assert corrections.operations == [Merge(tuple(sorted((a, b))))]
    assert len(dropped) == 1 and f"delete of {c}" in dropped[0]
    ids = corrections.apply(clusters.assign(moved, classes), moved)
    assert set(ids.tolist()) == {min(a, b)}


def test_a_reclustering_refits_a_split_and_its_parts_keep_their_ids():
    sample, blob = _one_object([[0, 0, 0], [0.4, 0, 0]])
    corrections = Corrections()
    split = corrections.split(1, 2, [1], sample)
    first = _corrected(corrections, sample)
    moved, moved_blob = _one_object([[0.02, 0, 0], [0.42, 0, 0]], seed=1)  # the embeddings drifted
    assert corrections.rebase([1], moved) == [] and corrections.operations[0] != split
    again = _corrected(corrections, moved)
    assert set(again.tolist()) == set(split.part_ids)
    for b in range(2):  # each blob keeps its part's id
        assert again[moved_blob == b].mode().values == first[blob == b].mode().values


def test_the_file_round_trips(tmp_path):
    sample, blob = _one_object([[0, 0, 0], [0.4, 0, 0], [3, 0, 0]])
    sample.ids[blob == 2] = 2
    corrections = Corrections()
    corrections.split(1, 2, [1, 2], sample)
    corrections.merge([1, 2], [1, 2])
    path = tmp_path / "corrections.json"
    corrections.save(path)
    loaded = Corrections.load(path)
    assert loaded.operations == corrections.operations
    assert torch.equal(_corrected(loaded, sample), _corrected(corrections, sample))
    assert not list(tmp_path.glob(".corrections*"))  # no temporary file left


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not a readable corrections file"),
        ('{"version": 1, "corrections": [{"op": "merge", "ids": [1, "x"]}]}', "correction 1 is not valid"),
        ('{"version": 1, "corrections": [{"op": "paint"}]}', "unknown op"),
        ("[]", "not a corrections file"),
    ],
)
def test_a_corrupt_file_is_an_error_naming_it(tmp_path, text, match):
    path = tmp_path / "corrections.json"
    path.write_text(text)
    with pytest.raises(CorrectionError, match=match) as raised:
        Corrections.load(path)
    assert str(path) in str(raised.value)


def test_corrections_naming_unknown_ids_are_left_out_on_opening():
    clusters, sample, blob = _fitted([[0, 0, 0], [3, 0, 0]])
    a, b = clusters.ids.tolist()
    corrections = Corrections([Merge((a, 99)), Merge((a, b))])
    dropped = corrections.rebase(clusters.ids.tolist())
    assert corrections.operations == [Merge((a, b))] and "99" in dropped[0]


def test_confidence_is_low_for_a_merge_a_fragment_and_a_one_view_speck():
    """Four objects, each one 2D segment in each of 10 views; the clustering got one right, merged two, and
    took a speck seen in one view for an object."""
    rng = np.random.default_rng(0)
    views = np.tile(np.arange(10), 40)
    segments = np.repeat([1, 2, 3], [160, 120, 120])
    embeddings = np.concatenate([rng.normal(c, 0.05, (n, 3)) for c, n in ((0, 160), (3, 120), (3.3, 120))])
    classes = np.ones(400, dtype=np.int64)
    ids = np.repeat([1, 2, 2], [160, 120, 120])  # 1 right; 2 merges segments 2 and 3
    ids[:4], views[:4], embeddings[:4] = 3, 0, 6.0  # a speck
    rated = object_confidence(ids, embeddings, classes, segments, views)
    assert set(rated) == {1, 2, 3} and rated[1][0] == 156 and all(0 <= c <= 1 for _, c in rated.values())
    assert rated[1][1] > 0.7 and rated[1][1] > rated[2][1] and rated[1][1] > rated[3][1]


def test_clusters_keep_a_size_and_a_confidence_per_object_through_a_checkpoint():
    clusters, sample, blob = _fitted([[0, 0, 0], [3, 0, 0]])
    assert clusters.sizes.tolist() == [200, 200]
    assert ((clusters.confidence >= 0) & (clusters.confidence <= 1)).all()
    restored = ClusteringConfig().setup(thing_classes=(1,))
    restored.set_extra_state(clusters.get_extra_state())
    assert torch.equal(restored.confidence, clusters.confidence)


def test_fresh_ids_of_a_clustering_start_above_the_reserved_ones():
    clusters, sample, blob = _fitted([[0, 0, 0]])
    clusters.reserved_ids = 40
    points, _ = _blobs([[0, 0, 0], [3, 0, 0]], seed=1)
    clusters.fit(points, torch.ones(len(points), dtype=torch.long))
    assert sorted(clusters.ids.tolist()) == [1, 41]


def test_saved_json_is_the_documented_format(tmp_path):
    clusters, sample, blob = _fitted([[0, 0, 0], [3, 0, 0]])
    corrections = Corrections()
    corrections.delete(int(clusters.ids[0]), clusters.ids.tolist())
    corrections.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == {
        "version": 1,
        "corrections": [{"op": "delete", "id": int(clusters.ids[0])}],
    }


# ---------------------------------------------------------------- on a tiny trained scene


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    scene = make_scene(
        MakeSceneConfig(output_dir=root / "scene", num_objects=4, num_views=16, resolution=32, seed=2), progress=False
    )
    return train_in_process(
        scene, root / "outputs", max_steps=300, semantic_loss_start_step=50, instance_loss_start_step=100
    )


def test_corrections_beside_the_run_are_applied_by_cl_eval_and_cl_export(tiny_run, tmp_path):
    _, pipeline, _ = load_run(tiny_run)
    assert pipeline.corrections_path == tiny_run.parent / "corrections.json"
    objects = pipeline.objects()
    assert len(objects) >= 2 and all(0 <= c <= 1 for _, _, c in objects)
    (a, *_), (b, *_) = sorted(objects, key=lambda row: -row[1])[:2]  # the two largest
    corrections = Corrections()
    corrections.merge([a, b], pipeline.model.clusters.ids.tolist())
    corrections.save(pipeline.corrections_path)
    kept, gone = min(a, b), max(a, b)
    try:
        renders = tmp_path / "renders"
        eval_script.EvalConfig(load_config=tiny_run, output_path=tmp_path / "metrics.json", render_dir=renders).main()
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["corrections"] == 1 and metrics["corrections_file"] == str(pipeline.corrections_path)
        rendered = set(np.unique(np.concatenate([read_label_map(p).ravel() for p in renders.glob("instance/*.png")])))
        assert gone not in rendered
        # cl-export's objects are the corrected ones (checked before any rendering)
        with pytest.raises(export_script.ExportError, match=f"no object {gone} in this model"):
            export_script.ExportConfig(load_config=tiny_run, output_dir=tmp_path / "export", objects=str(gone)).main()
    finally:
        pipeline.corrections_path.unlink()


def test_a_corrupt_or_unknown_corrections_file_is_named_and_the_run_opens_without_it(tiny_run, capsys):
    path = tiny_run.parent / "corrections.json"
    try:
        path.write_text("{ half a file")
        _, pipeline, _ = load_run(tiny_run)
        assert len(pipeline.model.corrections) == 0
        assert str(path) in capsys.readouterr().out.replace("\n", "")
        Corrections([Delete(9999)]).save(path)
        _, pipeline, _ = load_run(tiny_run)
        out = capsys.readouterr().out.replace("\n", "")
        assert len(pipeline.model.corrections) == 0 and str(path) in out and "9999" in out
    finally:
        path.unlink(missing_ok=True)


def _rendered_ids(pipeline) -> np.ndarray:
    """The instance ids of every training view (a split divides the object where the training views see it)."""
    cameras = pipeline.datamanager.train_dataset.cameras
    renders = [pipeline.model.get_outputs_for_camera(cameras[i : i + 1]) for i in range(len(cameras))]
    return np.stack([r[Output.INSTANCE_ID][..., 0].long().numpy() for r in renders])


def test_split_delete_and_undo_on_a_trained_scene(tiny_run):
    _, pipeline, _ = load_run(tiny_run)
    try:
        big = max(pipeline.objects(), key=lambda row: row[1])[0]
        before = _rendered_ids(pipeline)
        pipeline.split_object(big, 2)
        parts = set(np.unique(_rendered_ids(pipeline)[before == big]).tolist())
        assert len(parts - {0}) >= 2 and big in parts
        pipeline.undo_correction()
        assert np.array_equal(_rendered_ids(pipeline), before)
        pipeline.delete_object(big)
        deleted = _rendered_ids(pipeline)
        assert (deleted[before == big] == 0).all() and np.array_equal(deleted[before != big], before[before != big])
        pipeline.undo_correction()
        assert np.array_equal(_rendered_ids(pipeline), before)
    finally:
        pipeline.corrections_path.unlink(missing_ok=True)


def test_confidence_is_higher_for_matched_objects_than_for_unmatched_ones(trained_run):
    _, pipeline, _ = load_run(trained_run.config)
    pipeline.recluster(min_cluster_size=8, save_corrections=False)  # small sizes add fragments: unmatched objects
    predicted, gt = [], []
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        predicted.append(pipeline.model.get_outputs_for_camera(camera)[Output.INSTANCE_ID][..., 0].long().numpy())
        gt.append(batch[Batch.GT_INSTANCE][..., 0].long().numpy())
    predicted, gt = np.stack(predicted), np.stack(gt)
    matched = {
        i for i in np.unique(predicted[predicted > 0]).tolist()
        if any(_iou(predicted == i, gt == g) > 0.5 for g in np.unique(gt[predicted == i]).tolist() if g > 0)
    }  # fmt: skip
    confidence = {i: c for i, _, c in pipeline.objects()}
    right = [confidence[i] for i in matched]
    wrong = [c for i, c in confidence.items() if i not in matched]
    assert right and len(wrong) >= 3, (right, wrong)
    # AUC: how often a matched object is more confident than an unmatched one
    auc = np.mean([r > w for r in right for w in wrong])
    assert auc > 0.75, (auc, right, wrong)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
