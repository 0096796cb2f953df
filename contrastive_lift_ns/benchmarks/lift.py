"""The paper's two Messy Rooms claims, side by side on ``cl-make-scene`` scenes, over several seeds.

- Table 2: PQ^scene against the number of objects for ``contrastive-lift`` (slow-fast), its vanilla loss and
  ``linear-assignment-lift`` (Panoptic Lifting), with the 2D segmenter's own PQ for reference.
- Table 6: training speed of the instance stage against the number of objects.

Protocol (the paper's): for each scene, geometry, colour and semantics are trained once (no instance loss);
then each method trains only its instance field from that checkpoint, everything else frozen, so the
instance loss is the only difference. ``linear-assignment-lift`` gets the authors' own setting for Messy Rooms,
500 instance logits, whatever the scene holds (not the scene's object count, which no user knows). Each seed
generates its own scenes. With several workers, scenes train in parallel processes; each step time is then
that of one process on its share of the CPU.

Every row reports PQ^scene (strict class filter), thing-class PQ^scene, per-frame PQ of the lift and of the 2D
input, mIoU, PSNR, the matched objects (IoU > 0.5 in PQ^scene) beside the predicted ids and the objects visible
in the test views, the min_cluster_size the clustering chose, and the instance stage's step time.
``--sweep-min-cluster-size`` re-clusters each trained slow-fast model with fixed sizes too.
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Tuple

import torch
from nerfstudio.utils.eval_utils import eval_setup

from contrastive_lift_ns.atomic import atomic_output_dir, atomic_write_json
from contrastive_lift_ns.benchmarks.timing import machine, quiet, train_timed
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate
from contrastive_lift_ns.generator.room import CameraLayout
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import METHODS, trainer_config

PAPER_TABLE_2 = {  # Old Room environment, PQ^scene
    "linear-assignment-lift": {25: 73.2, 50: 69.9, 100: 64.3, 500: 51.0},
    "contrastive-lift-vanilla": {25: 74.1, 50: 71.2, 100: 63.6, 500: 49.7},
    "contrastive-lift": {25: 78.9, 50: 75.8, 100: 69.1, 500: 55.0},
}
PROFILES: Dict[str, Dict[str, Any]] = {
    # A check of the protocol: 64 px does not resolve the objects beyond 25 of them.
    "quick": {"views": 32, "resolution": 64, "scene_steps": 800, "instance_steps": 800, "small": True},
    # The ordering on a 2-core CPU, about an hour per seed. A view shows 20-30 objects whatever the room's size,
    # so the views grow with the objects (every object in about 15 training views), and the scene's training and
    # the instance stage with the views (every object gets about as many image visits in a large room).
    "cpu": {
        "views": 64,
        "views_per_object": 0.8,
        "resolution": 128,
        "scene_steps": 2000,
        "scene_steps_per_view": 8,
        "instance_steps": 800,
        "instance_steps_per_view": 5,
        "cluster_pixels": 100_000,
        "small": True,
    },
    # The paper's sizes, scaled to a GPU.
    "gpu": {
        "views": 100,
        "views_per_object": 1.0,
        "resolution": 256,
        "scene_steps": 20000,
        "scene_steps_per_view": 20,
        "instance_steps": 10000,
        "instance_steps_per_view": 50,
        "cluster_pixels": 200_000,
        "small": False,
    },
}

_ROW_KEYS = (
    "pq_scene",
    "pq_scene_things",
    "pq_scene_authors_filter",
    "pq_frame",
    "segmenter_pq_frame",
    "segmenter_pq_scene",
    "consistency",
    "segmenter_consistency",
    "miou",
    "psnr",
    "num_objects_matched",
    "num_objects_pred",
    "num_objects_gt",
)


@dataclass
class LiftBenchmark:
    """Table 2 and Table 6 of the paper on generated scenes."""

    output_dir: Path = Path("bench-results/lift")
    """Results folder: results.md, results.json, pq_scene.png, speed.png and the scenes and runs."""
    profile: Literal["quick", "cpu", "gpu"] = "gpu"
    """quick: 64 px, minutes (checks the protocol); cpu: 128 px, the comparison on a 2-core CPU; gpu: 256 px."""
    objects: Tuple[int, ...] = (25, 50, 100, 500)
    """Numbers of objects, one scene each per seed."""
    seeds: Tuple[int, ...] = (0,)
    """Scene seeds; tables give the mean ± standard deviation over them."""
    hard_objects: Tuple[int, ...] = ()
    """Also these numbers of objects with ``cl-make-scene --preset hard`` (a worse simulated segmenter), each seed."""
    depth_objects: Tuple[int, ...] = ()
    """Also these numbers of objects trained with the generator's depth maps (the label volume and nerfstudio's
    depth loss), each seed; every other row is RGB only, the paper's protocol."""
    layouts: Tuple[CameraLayout, ...] = ()
    """Also these camera layouts (``cl-make-scene --camera-layout``: forward, walkthrough, panorama) with
    ``layout_objects`` objects, each seed, against the dome of the other rows."""
    layout_objects: int = 25
    """Objects in each ``layouts`` scene."""
    sweep_min_cluster_size: Tuple[int, ...] = ()
    """Also cluster the trained slow-fast models of the first seed with these fixed min_cluster_size values and
    score them."""
    overwrite: bool = False
    """Replace a non-empty output folder."""
    workers: int = 0
    """Scenes trained at once, each in its own process with an equal share of the CPU threads. 0: one per CPU
    core for the CPU profiles (a small model uses one core well), else 1 (one GPU)."""
    threads: int = 0
    """torch threads per worker; 0: the CPU's cores shared equally among the workers."""

    def main(self) -> Dict[str, Any]:
        return _run(self)


def _run(config: LiftBenchmark) -> Dict[str, Any]:
    profile = PROFILES[config.profile]
    # Largest scene first, beside the smaller ones: the workers finish at about the same time.
    counts = sorted(config.objects, reverse=True)
    counts = counts[:1] + sorted(counts[1:])  # none at all: only hard, depth or layout rows
    jobs = [_Job(count, seed) for seed in config.seeds for count in counts]
    jobs += [_Job(count, seed, preset="hard") for seed in config.seeds for count in sorted(config.hard_objects)]
    jobs += [_Job(count, seed, depth=True) for seed in config.seeds for count in sorted(config.depth_objects)]
    jobs += [_Job(config.layout_objects, seed, layout=layout) for seed in config.seeds for layout in config.layouts]
    workers = config.workers or ((os.cpu_count() or 1) if profile["small"] else 1)
    workers = min(workers, len(jobs))
    threads = config.threads or max(1, (os.cpu_count() or 1) // workers)
    with atomic_output_dir(config.output_dir, overwrite=config.overwrite) as folder:
        first = config.seeds[0]
        sweep = config.sweep_min_cluster_size
        # the sweep re-clusters the first seed's headline scenes (realistic, RGB only, dome)
        headline = (first, "realistic", False, "dome")
        args = [
            (job, folder, profile, threads, sweep if (job.seed, job.preset, job.depth, job.layout) == headline else ())
            for job in jobs
        ]
        if workers == 1:
            per_scene = [_scene_rows(*job) for job in args]
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                per_scene = pool.starmap(_scene_rows, args, chunksize=1)
        rows = sorted(
            (row for scene_rows in per_scene for row in scene_rows),
            key=lambda r: (r["seed"], r["objects"], r["preset"], r.get("depth", False), r.get("layout", "dome")),
        )
        summary = {
            "command": " ".join(sys.argv),
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "profile": {"name": config.profile, **profile},
            "config": {k: str(v) for k, v in asdict(config).items()},
            "rows": rows,
        }
        atomic_write_json(folder / "results.json", summary)
        (folder / "results.md").write_text(markdown(summary))
        _plots(rows, folder)
        _point_configs_at(folder, Path(config.output_dir))
    print(markdown(summary))
    return summary


@dataclass(frozen=True)
class _Job:
    """One scene of the benchmark."""

    count: int
    seed: int
    preset: str = "realistic"
    depth: bool = False
    layout: CameraLayout = "dome"

    @property
    def name(self) -> str:
        variants = (self.preset, "depth" if self.depth else "", self.layout)
        return "-".join([f"{self.count}-seed{self.seed}", *(v for v in variants if v not in ("realistic", "", "dome"))])


def _point_configs_at(folder: Path, final: Path) -> None:
    """The runs' config.yml files name the temporary folder the benchmark writes in; they name ``final``, the
    folder it becomes, so that ``ns-viewer``, ``cl-eval`` and ``ns-render`` open the runs once it is in place.
    (A config stores each path as the list of its parts, the folder's unique temporary name one of them.)"""
    for path in folder.glob("runs/**/config.yml"):
        path.write_text(path.read_text().replace(f"- {folder.name}\n", f"- {final.name}\n"))


def _scene_rows(
    job: _Job, folder: Path, profile: Dict[str, Any], threads: int, sweep: Tuple[int, ...]
) -> List[Dict[str, Any]]:
    """One scene: generated, trained without instances, then each method's instance stage on it."""
    torch.set_num_threads(threads)
    count, seed, preset, depth, name = job.count, job.seed, job.preset, job.depth, job.name
    views = max(profile["views"], round(profile.get("views_per_object", 0) * count))
    scene = make_scene(
        MakeSceneConfig(
            output_dir=folder / f"scene-{name}",
            num_objects=count,
            num_views=views,
            resolution=profile["resolution"],
            seed=seed,
            preset=preset,
            camera_layout=job.layout,
        ),
        progress=False,
    )
    scene_steps = profile["scene_steps"] + profile.get("scene_steps_per_view", 0) * views
    instance_steps = max(profile["instance_steps"], profile.get("instance_steps_per_view", 0) * views)
    checkpoint = _train_scene(scene, folder / "runs" / f"{name}-scene", scene_steps, profile, depth)
    rows = []
    for method in METHODS:
        output = folder / "runs" / f"{name}-{method}"
        config, step_seconds = _instance_stage(scene, checkpoint, method, output, instance_steps, profile, depth)
        pipeline = eval_setup(config.get_base_dir() / "config.yml", test_mode="test")[1]
        timing = {"step_ms": 1000 * step_seconds, "iterations_per_second": 1 / step_seconds}
        extra = {"views": views, "scene_steps": scene_steps, "instance_steps": instance_steps, **timing}
        variant = {"preset": preset, "depth": depth, "layout": job.layout}
        rows.append(_row(pipeline, count, seed, method, {**variant, **extra}))
        print(json.dumps(rows[-1]), flush=True)
        if method == "contrastive-lift":
            for size in sweep:
                pipeline.recluster(min_cluster_size=size)
                swept = {**variant, "swept": True, "min_cluster_size": size}
                rows.append(_row(pipeline, count, seed, method, swept))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(pipeline, count: int, seed: int, method: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    metrics = evaluate(pipeline)
    sizes = pipeline.model.clusters.min_cluster_sizes
    return {
        "objects": count,
        "seed": seed,
        "method": method,
        # NaN (a consistency with no overlapping views) becomes null: JSON has no NaN.
        **{key: None if _is_nan(metrics[key]) else metrics[key] for key in _ROW_KEYS},
        "min_cluster_size": next(iter(sizes.values()), None) if pipeline.model.uses_clustering else None,
        **extra,
    }


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _base(method: str, profile: Dict[str, Any], depth: bool):
    # A registered method name: eval_setup looks the run's method up to rebuild its datamanager.
    config = trainer_config(method, METHODS[method], small=profile["small"])
    config.pipeline.datamanager.dataparser.use_depth = depth
    config.pipeline.model.clustering.recluster_every = 0  # cluster once, at the end
    config.pipeline.model.use_appearance_embedding = False  # generated scenes have constant lighting
    config.pipeline.model.clustering.num_pixels = profile.get(
        "cluster_pixels", config.pipeline.model.clustering.num_pixels
    )
    return config


def _train_scene(scene: Path, output: Path, steps: int, profile: Dict[str, Any], depth: bool) -> Path:
    """Geometry, colour and semantics, with no instance loss."""
    config = quiet(_base("contrastive-lift", profile, depth), output)
    config.pipeline.datamanager.data = scene
    config.pipeline.model.instance_loss_start_step = 10**9
    return train_timed(config, steps).checkpoint


def _instance_stage(
    scene: Path, checkpoint: Path, method: str, output: Path, steps: int, profile: Dict[str, Any], depth: bool
):
    """Trains one method's instance field alone from the scene checkpoint; returns its config and step time."""
    config = quiet(_base(method, profile, depth), output)
    config.pipeline.datamanager.data = scene
    model = config.pipeline.model
    model.instance_field_only, model.pretrained_checkpoint = True, checkpoint
    model.semantic_loss_start_step = model.instance_loss_start_step = 0
    return config, train_timed(config, steps).mean_step


def _mean_std(values: List[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


_MATCHED, _IDS = "num_objects_matched", "num_objects_pred"


def _column(row: Dict[str, Any]) -> Tuple[int, str]:
    layout = row.get("layout", "dome")
    return row["objects"], row.get("preset", "realistic") + (", depth" if row.get("depth") else "") + (
        "" if layout == "dome" else f", {layout}"
    )


def markdown(summary: Dict[str, Any]) -> str:
    """The results as Markdown tables: means ± standard deviations over the seeds, one column per number of
    objects (and segmenter preset)."""
    rows = [r for r in summary["rows"] if not r.get("swept")]
    columns = sorted({_column(r) for r in rows}, key=lambda c: (c[1] != "realistic", c))
    seeds = sorted({r["seed"] for r in rows})

    def cell(method: str, column: Tuple[int, str], key: str, scale: float = 100.0, digits: int = 1) -> str:
        values = [r[key] for r in rows if r["method"] == method and _column(r) == column and r.get(key) is not None]
        return _mean_std(values, scale, digits) if values else "-"

    def label(column: Tuple[int, str]) -> str:
        return f"{column[0]} objects" + ("" if column[1] == "realistic" else f" ({column[1]})")

    header = "| method | " + " | ".join(label(c) for c in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    per_seed = {label(c): sorted({r["seed"] for r in rows if _column(r) == c}) for c in columns}
    lines = [
        f"Machine: {summary['machine']}; date: {summary['date']}; profile: {summary['profile']}",
        f"Command: `{summary['command']}`; seeds: {seeds} (mean ± standard deviation over them); seeds per column: "
        + ", ".join(f"{name}: {found}" for name, found in per_seed.items()),
        "",
        "PQ^scene ×100 (strict class filter; paper's Table 2, Old Room, in brackets):",
        "",
        header,
        rule,
    ]
    for method in METHODS:
        cells = []
        for c in columns:
            paper = PAPER_TABLE_2[method].get(c[0]) if c[1] == "realistic" else None
            cells.append(cell(method, c, "pq_scene") + (f" ({paper})" if paper else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    segmenter = " | ".join(cell("contrastive-lift", c, "segmenter_pq_scene") for c in columns)
    lines.append(f"| 2D segmenter | {segmenter} |")
    tables = (
        ("Thing-class PQ^scene ×100:", "pq_scene_things", 100.0, 1),
        ("Per-frame PQ ×100 (2D segmenter in the last row):", "pq_frame", 100.0, 1),
        ("mIoU ×100:", "miou", 100.0, 1),
        ("PSNR (dB):", "psnr", 1.0, 1),
        ("Matched objects (IoU > 0.5 in PQ^scene; visible in the test views in the last row):", _MATCHED, 1.0, 1),
        ("Predicted ids (distinct object ids in the test views; splits and stray ids count):", _IDS, 1.0, 1),
        ("min_cluster_size chosen:", "min_cluster_size", 1.0, 0),
        ("Instance-stage training speed, ms/step (paper's Table 6 in its caption):", "step_ms", 1.0, 0),
    )
    for title, key, scale, digits in tables:
        lines += ["", title, "", header, rule]
        for method in METHODS:
            lines.append(f"| {method} | " + " | ".join(cell(method, c, key, scale, digits) for c in columns) + " |")
        if key == "pq_frame":
            segmenter = " | ".join(cell("contrastive-lift", c, "segmenter_pq_frame") for c in columns)
            lines.append(f"| 2D segmenter | {segmenter} |")
        if key == _MATCHED:
            lines.append(
                "| visible | " + " | ".join(cell("contrastive-lift", c, "num_objects_gt", 1.0) for c in columns) + " |"
            )
    swept = [r for r in summary["rows"] if r.get("swept")]
    if swept:
        sizes = sorted({r["min_cluster_size"] for r in swept})
        lines += ["", "contrastive-lift re-clustered with fixed min_cluster_size: PQ^scene ×100 (matched / ids):", ""]
        lines += [header.replace("| method |", "| min_cluster_size |"), rule]
        for size in ["auto", *sizes]:
            cells = []
            for c in columns:
                pick = [
                    r
                    for r in (rows if size == "auto" else swept)
                    if r["method"] == "contrastive-lift"
                    and _column(r) == c
                    and (size == "auto" or r["min_cluster_size"] == size)
                ]
                if pick:
                    pq = _mean_std([r["pq_scene"] for r in pick], 100.0)
                    found = [r[_MATCHED] for r in pick if _MATCHED in r]  # rows from before the count have none
                    matched = _mean_std(found) if found else "-"
                    cells.append(f"{pq} ({matched} / {_mean_std([r[_IDS] for r in pick])})")
                else:
                    cells.append("-")
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(rows: List[Dict[str, Any]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("swept") and _column(r)[1] == "realistic"]
    for key, label, name in (("pq_scene", "PQ^scene", "pq_scene.png"), ("iterations_per_second", "it/s", "speed.png")):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for method in METHODS:
            counts = sorted({r["objects"] for r in rows if r["method"] == method})
            values = [[r[key] for r in rows if r["method"] == method and r["objects"] == n] for n in counts]
            means = [statistics.fmean(v) for v in values]
            spread = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            axes.errorbar(counts, means, yerr=spread, marker="o", capsize=3, label=method)
        axes.set_xscale("log")
        axes.set_xlabel("objects in the scene")
        axes.set_ylabel(label)
        axes.legend()
        figure.tight_layout()
        figure.savefig(folder / name, dpi=120)
        plt.close(figure)
