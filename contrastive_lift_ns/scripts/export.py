"""``cl-export``: take the objects out of a trained model as an instance-labelled point cloud, one PLY per
object, and an object table.

Example::

    cl-export --load-config outputs/scene/contrastive-lift/<run>/config.yml --output-dir exports/scene
    cl-export --load-config .../config.yml --output-dir exports/two --objects 3,7 --num-points 1000000

Writes, atomically (a failed run leaves nothing at --output-dir):

- ``scene.ply``: every point, with x, y, z, red, green, blue, instance (0: no object) and semantic_class;
- ``objects/<id>.ply``: the points of each object;
- ``objects.json``: one row per object (``ExportedObject``), with its confidence.

The run's hand corrections (``corrections.json`` beside config.yml, made in the viewer) are applied: a merge
exports one object, a deleted object none.

Positions are in the coordinates of the poses in the scene's transforms.json, not nerfstudio's normalised ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape
from rich.table import Table

from contrastive_lift_ns.atomic import atomic_output_dir, atomic_write_json
from contrastive_lift_ns.console import progress_bar
from contrastive_lift_ns.data.scene_format import SceneFormatError
from contrastive_lift_ns.export.objects import ExportedObject, find_objects
from contrastive_lift_ns.export.ply import write_ply
from contrastive_lift_ns.export.point_cloud import (
    LabelledPoints,
    remove_outliers,
    sample_points,
    transform_points,
    vote_labels,
)
from contrastive_lift_ns.pipeline import ContrastiveLiftPipeline
from contrastive_lift_ns.scripts.cli import RunError, check_writable, load_run, run_command


class ExportError(RunError):
    """A run or a flag that cannot be exported; the message names the file or the flag."""


@dataclass
class ExportConfig:
    """Export a trained model's objects: scene.ply, objects/<id>.ply and objects.json."""

    load_config: Path
    """The ``config.yml`` of a trained contrastive-lift run."""
    output_dir: Path
    """Folder to write to; it must be empty or absent unless --overwrite is given."""
    num_points: int = 200_000
    """Pixels of the training views to render; each ray that hits a surface becomes a point. 200k take about
    3 minutes on a 2-core CPU for contrastive-lift-small; on a GPU, millions give denser clouds."""
    min_points: int = 50
    """Objects with fewer points (after detaching stray parts, see contrastive_lift_ns.export.objects) are left
    out of objects/ and objects.json, and their points get instance 0 in scene.ply, so every id in scene.ply has
    its row. Scale it with --num-points."""
    objects: str = "all"
    """Which objects go into objects/ and objects.json: all, or comma-separated ids such as 3,7 (the model's
    ids, as in the viewer). scene.ply always holds every object."""
    min_view_points: int = 5
    """An object counts as visible in a training view if at least this many of its points were sampled from
    that view."""
    crop: bool = True
    """Keep only points inside the model's scene box; beyond it lies the contracted background (sky, far
    walls), whose depth is unreliable."""
    min_confidence: float = 0.0
    """Leave out of objects/ and objects.json the objects whose confidence (objects.json's ``confidence``, in
    [0, 1]) is below this; their points get instance 0 in scene.ply. Objects without a confidence (a checkpoint
    from before confidences) are kept. 0 keeps every object."""
    recluster: bool = False
    """Cluster the instance embeddings again before exporting (neither the checkpoint nor the corrections file
    is changed), e.g. for a run that stopped before its first clustering. linear-assignment-lift has nothing to
    cluster and ignores it."""
    seed: int = 0
    """Seed of the pixel sampling."""
    overwrite: bool = False
    """Replace a non-empty --output-dir."""

    def main(self) -> None:
        start = time.perf_counter()
        self._check_flags()
        _, pipeline, step = load_run(self.load_config)
        if not isinstance(pipeline, ContrastiveLiftPipeline):
            raise ExportError(
                f"--load-config {self.load_config}: not a contrastive-lift run ({type(pipeline).__name__})"
            )
        model = pipeline.model
        if self.recluster and model.uses_clustering and step >= model.config.instance_loss_start_step:
            pipeline.recluster(save_corrections=False)
        reason = model.objects_unavailable(step)
        if reason is not None:
            hint = "; or pass --recluster to cluster it now" if model.uses_clustering and "clustered" in reason else ""
            raise ExportError(f"--load-config {self.load_config}: {reason}{hint}")
        if self.min_confidence > 0 and not model.uses_clustering:
            raise ExportError("--min-confidence: linear-assignment-lift has no clustering, so no confidences")
        confidence = {i: c for i, _, c in pipeline.objects()} if model.uses_clustering else {}
        doubtful = sorted(i for i, c in confidence.items() if c < self.min_confidence)
        wanted = self._wanted_ids(pipeline, doubtful)
        points, view_names = self._points(pipeline)
        points = replace(points, instance=np.where(np.isin(points.instance, doubtful), 0, points.instance))
        objects, points = find_objects(
            points, model.scene_classes.names, view_names, self.min_points, self.min_view_points, confidence
        )
        if wanted is not None:
            found = {o.id for o in objects}
            missing = sorted(set(wanted) - found)
            if missing:
                raise ExportError(
                    f"--objects: {_ids(missing)} got fewer than --min-points {self.min_points} points in this export "
                    f"(exported: {_ids(sorted(found))}); lower --min-points or raise --num-points"
                )
            objects = [o for o in objects if o.id in wanted]
        self._write(points, objects, step)
        _print_table(objects, len(points), self.output_dir, time.perf_counter() - start)

    def _check_flags(self) -> None:
        check_writable(self.output_dir, "--output-dir", folder=True)
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()) and not self.overwrite:
            raise ExportError(f"--output-dir {self.output_dir} is not empty; pass --overwrite to replace it")
        for flag in ("num_points", "min_points", "min_view_points"):
            if getattr(self, flag) < 1:
                raise ExportError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(self, flag)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ExportError(f"--min-confidence must lie in [0, 1], got {self.min_confidence}")
        self._requested_ids()

    def _requested_ids(self) -> Optional[List[int]]:
        """The ids given to --objects, or None for all."""
        if self.objects.strip().lower() == "all":
            return None
        try:
            ids = [int(part) for part in self.objects.split(",") if part.strip()]
        except ValueError:
            raise ExportError(
                f"--objects must be 'all' or comma-separated ids such as 3,7; got '{self.objects}'"
            ) from None
        if not ids:
            raise ExportError("--objects needs at least one id (or 'all')")
        return ids

    def _wanted_ids(self, pipeline: ContrastiveLiftPipeline, doubtful: List[int]) -> Optional[List[int]]:
        """The requested ids, checked against the model's (corrected) objects before any rendering."""
        wanted = self._requested_ids()
        if wanted is None:
            return None
        model = pipeline.model
        if model.uses_clustering:
            valid = [i for i, _, _ in pipeline.objects()]
        else:
            valid = list(range(1, model.config.max_instances + 1))
        unknown = [i for i in wanted if i not in valid]
        if unknown:
            raise ExportError(f"--objects: no object {_ids(unknown)} in this model; its objects are {_ids(valid)}")
        below = [i for i in wanted if i in doubtful]
        if below:
            raise ExportError(
                f"--objects: {_ids(below)} have a confidence below --min-confidence {self.min_confidence}; lower it"
            )
        return wanted

    def _points(self, pipeline: ContrastiveLiftPipeline) -> Tuple[LabelledPoints, List[str]]:
        """Surface points of the training views in the scene's pose coordinates, and the views' names."""
        datamanager = pipeline.datamanager
        sample = datamanager.training_pixels(self.num_points, self.seed)
        rays = datamanager.train_ray_generator(sample.indices.to(pipeline.device))
        with progress_bar() as bar:
            task = bar.add_task("Rendering rays", total=self.num_points)
            points = sample_points(pipeline.model, rays, self.crop, lambda n: bar.advance(task, n))
        if not len(points):
            raise ExportError(
                f"--load-config {self.load_config}: none of the {self.num_points} rendered rays hit a surface"
                + (" inside the scene box; try --no-crop" if self.crop else "")
            )
        points = vote_labels(remove_outliers(points))
        metadata = datamanager.train_dataset.metadata
        points = replace(points, xyz=transform_points(metadata["to_poses"], points.xyz))
        return points, list(metadata["frame_names"])

    def _write(self, points: LabelledPoints, objects: List[ExportedObject], step: int) -> None:
        comments = [f"cl-export of {self.load_config} at step {step}", "coordinates: the scene's transforms.json poses"]
        with atomic_output_dir(self.output_dir, overwrite=self.overwrite) as folder:
            write_ply(folder / "scene.ply", points, comments)
            (folder / "objects").mkdir()
            for exported in objects:
                member = points.subset(points.instance == exported.id)
                write_ply(folder / "objects" / f"{exported.id}.ply", member, comments)
            table = {
                "config": str(self.load_config.resolve()),
                "step": step,
                "coordinates": "those of the camera poses in the scene's transforms.json",
                "num_points": len(points),
                "objects": [o.row() for o in objects],
            }
            atomic_write_json(folder / "objects.json", table)


def _ids(ids: List[int]) -> str:
    return ", ".join(str(i) for i in ids) if ids else "none"


def _print_table(objects: List[ExportedObject], num_points: int, output_dir: Path, seconds: float) -> None:
    table = Table(title=f"cl-export: {len(objects)} objects, {num_points} points → {escape(str(output_dir))}")
    for column in ("id", "class", "points", "centroid", "views", "confidence"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for o in objects:
        centroid = ", ".join(f"{v:.3f}" for v in o.centroid)
        confidence = "-" if o.confidence is None else f"{o.confidence:.2f}"
        table.add_row(str(o.id), o.class_name, str(o.num_points), centroid, str(len(o.views)), confidence)
    CONSOLE.print(table)
    CONSOLE.print(f"Done in {seconds:.1f} s")


def entrypoint() -> None:
    """Entry point of the ``cl-export`` command."""
    run_command("cl-export", tyro.cli(ExportConfig).main, (RunError, SceneFormatError, FileExistsError))


if __name__ == "__main__":
    entrypoint()
