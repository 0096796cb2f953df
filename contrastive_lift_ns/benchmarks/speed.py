"""Speed and memory of the lift, from one run on one machine.

1. Step time of ``contrastive-lift`` (all losses on) over plain ``nerfacto``: same scene, rays per step and
   hash grids. Target: ≤ 1.10.
2. Step time and peak memory of the instance stage (scene frozen) against the number of objects, for the
   three instance losses. Target for slow-fast: ≤ 1.05× from 25 to 500 objects.
3. Clustering time (rendering the sampled pixels, then HDBSCAN) for 25k, 100k and 400k pixels.
4. Frames per second of rendering the ``instance`` output at 256² and 512².
5. Scaling over processes: steps per second of ``contrastive-lift`` trained by 1 and 2 processes (nerfstudio's
   distributed training: gloo on the CPU, NCCL on GPUs), each process with its own batch, so a step of N
   processes trains N times the rays. On a CPU the processes share its cores.

Step times that are compared are measured side by side: the models train in one process, one step of each
in turn, so a slow spell of a shared machine slows all of them alike; the proposal networks follow their
steady update schedule from the start. Peak memory is measured apart, each model alone in a fresh process.
On a GPU the hash grids use tiny-cuda-nn when it is installed, and nerfstudio's mixed precision.
"""

from __future__ import annotations

import copy
import datetime
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

from contrastive_lift_ns.atomic import atomic_write_json
from contrastive_lift_ns.benchmarks.timing import machine, quiet, train_interleaved, train_timed
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import METHODS, trainer_config
from contrastive_lift_ns.workarounds import without_lpips


@dataclass
class SpeedBenchmark:
    """Step-time ratio to nerfacto, instance-stage scaling, clustering time and render speed."""

    output_path: Path = Path("bench-results/speed.json")
    """Where to write the figures (JSON; a Markdown table is printed)."""
    small: bool = True
    """Use the CPU-sized preset (``contrastive-lift-small``'s grids and samples) for every model."""
    rays_per_step: int = 1024
    """Rays per training step, the same for every model."""
    steps: int = 120
    """Timed steps per measurement (after the warm-up); their mean is the step time."""
    warmup: int = 10
    """Untimed steps first."""
    objects: Tuple[int, ...] = (25, 100, 500)
    """Scene sizes for the instance-stage scaling."""
    resolution: int = 64
    """Scene resolution for the training measurements."""
    cluster_train_steps: int = 600
    """Steps trained before clustering and rendering are timed (embeddings need some structure)."""
    cluster_pixels: Tuple[int, ...] = (25_000, 100_000, 400_000)
    """Sampled pixel counts for the clustering time."""
    render_sizes: Tuple[int, ...] = (256, 512)
    """Square render sizes for the frames-per-second figure."""
    processes: Tuple[int, ...] = (1, 2)
    """Numbers of training processes for the scaling row (one GPU each, or a share of the CPU cores)."""
    seed: int = 0
    """Scene seed."""

    def main(self) -> Dict[str, Any]:
        return _run(self)


def _run(config: SpeedBenchmark) -> Dict[str, Any]:
    results: Dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    with tempfile.TemporaryDirectory(prefix="cl-bench-speed-") as tmp:
        scenes = {
            n: make_scene(
                MakeSceneConfig(
                    output_dir=Path(tmp) / f"scene-{n}",
                    num_objects=n,
                    num_views=40,
                    resolution=config.resolution,
                    seed=config.seed,
                ),
                progress=False,
            )  # fmt: skip
            for n in config.objects
        }
        first = scenes[config.objects[0]]
        nerfacto, lift = _in_subprocess(
            _time_together, config, [(first, "nerfacto", False, 0), (first, "slow-fast", False, 0)], Path(tmp)
        )
        results["ratio"] = {
            "nerfacto_step_ms": nerfacto["step_ms"],
            "contrastive_lift_step_ms": lift["step_ms"],
            "ratio": lift["step_ms"] / nerfacto["step_ms"],
            "cpu_time_ratio": lift["cpu_step_ms"] / nerfacto["cpu_step_ms"],
            "nerfacto_peak_mb": _in_subprocess(_peak_memory, config, first, "nerfacto", Path(tmp), False, 0),
            "contrastive_lift_peak_mb": _in_subprocess(_peak_memory, config, first, "slow-fast", Path(tmp), False, 0),
        }
        results["instance_stage"] = []
        for method, loss in METHODS.items():
            jobs = [(scenes[n], loss, True, n) for n in config.objects]
            for n, timing in zip(config.objects, _in_subprocess(_time_together, config, jobs, Path(tmp))):
                peak = _in_subprocess(_peak_memory, config, scenes[n], loss, Path(tmp), True, n)
                results["instance_stage"].append({"method": method, "objects": n, **timing, "peak_mb": peak})
        results.update(_in_subprocess(_cluster_and_render, config, first, Path(tmp)))
        results["scaling"] = [_scaling(config, first, Path(tmp) / f"scaling-{n}", n) for n in config.processes]
    config.output_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.output_path, results)
    print(markdown(results))
    return results


def _scaling(config: SpeedBenchmark, scene: Path, output: Path, processes: int) -> Dict[str, Any]:
    """Steps per second of ``processes`` ranks training together (all losses on), as nerfstudio's launcher runs
    them: one process group, then one trainer per rank."""
    output.mkdir(parents=True)
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=_scaling_rank, args=(rank, processes, port, config, scene, output))
        for rank in range(processes)
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    if any(rank.exitcode for rank in ranks):
        raise RuntimeError(f"a training process of the {processes}-process scaling run failed")
    step_ms = json.loads((output / "rank0.json").read_text())["step_ms"]
    return {
        "processes": processes,
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "step_ms": step_ms,
        "steps_per_second": 1000 / step_ms,
        "rays_per_second": 1000 / step_ms * processes * config.rays_per_step,
    }


def _scaling_rank(rank: int, processes: int, port: int, config: SpeedBenchmark, scene: Path, output: Path) -> None:
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    if processes > 1:
        dist.init_process_group(
            "nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes
        )
    trainer = _config(config, scene, "slow-fast", output / f"rank{rank}", False, 0)
    trainer.machine.seed += rank  # as nerfstudio's launcher seeds its ranks
    try:
        run = train_timed(trainer, config.warmup + config.steps, config.warmup, False, rank, processes)
    finally:
        if processes > 1:
            dist.destroy_process_group()
    if rank == 0:
        (output / "rank0.json").write_text(json.dumps({"step_ms": 1000 * run.mean_step}))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _in_subprocess(fn, *args) -> Dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _config(config: SpeedBenchmark, scene: Path, loss: str, output: Path, frozen: bool, objects: int):
    """One model's trainer config; ``loss="nerfacto"`` gives plain nerfacto with the same grids and rays."""
    trainer = trainer_config("speed", "slow-fast" if loss == "nerfacto" else loss, small=config.small)
    trainer = quiet(trainer, output)
    datamanager = trainer.pipeline.datamanager
    datamanager.data = scene
    datamanager.train_num_rays_per_batch = config.rays_per_step
    model = trainer.pipeline.model
    model.semantic_loss_start_step = model.instance_loss_start_step = 0
    model.proposal_warmup = 1  # the proposal networks' steady schedule (an update every few steps) from the start
    model.clustering.recluster_every = 0
    model.clustering.num_pixels = 1_000  # the clustering at a run's last step is not timed: keep it cheap
    model.instance_field_only = frozen
    model.max_instances = max(objects, 1)
    if loss == "nerfacto":
        nerfacto_fields = {f.name: getattr(model, f.name) for f in fields(NerfactoModelConfig) if f.name != "_target"}
        trainer.pipeline = VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                data=scene,
                train_num_rays_per_batch=config.rays_per_step,
                eval_num_rays_per_batch=config.rays_per_step,
            ),
            model=NerfactoModelConfig(**nerfacto_fields),
        )
    return trainer


def _time_together(config: SpeedBenchmark, jobs, output: Path) -> List[Dict[str, float]]:
    """Mean step times of several models trained in one process, one step of each in turn.

    ``jobs`` holds ``(scene, loss, frozen, objects)`` per model.
    """
    trainers = [
        _config(config, scene, loss, output / f"job-{i}", frozen, objects)
        for i, (scene, loss, frozen, objects) in enumerate(jobs)
    ]
    with without_lpips():
        runs = train_interleaved(trainers, config.warmup + config.steps, warmup=config.warmup)
    return [
        {
            "step_ms": 1000 * run.mean_step,
            "cpu_step_ms": 1000 * run.mean_cpu_step,
            "steps_ms": [1000 * t for t in run.step_seconds],
        }
        for run in runs
    ]


def _peak_memory(config: SpeedBenchmark, scene: Path, loss: str, output: Path, frozen: bool, objects: int) -> float:
    """Peak memory of one model trained alone in this process, for a few steps past the warm-up."""
    trainer = _config(config, scene, loss, output, frozen, objects)
    with without_lpips():
        return train_timed(trainer, config.warmup + 5, warmup=config.warmup, save=False).peak_mb


def _cluster_and_render(config: SpeedBenchmark, scene: Path, output: Path) -> Dict[str, Any]:
    """Trains a model briefly, then times clustering and rendering."""
    trainer = _config(config, scene, "slow-fast", output, False, 0)
    steps = config.cluster_train_steps
    trainer.pipeline.model.semantic_loss_start_step = steps // 6
    trainer.pipeline.model.instance_loss_start_step = steps // 3
    run = train_timed(trainer, steps, warmup=0, save=False)
    model = run.trainer.pipeline.model
    model.eval()
    clustering: List[Dict[str, float]] = []
    for pixels in config.cluster_pixels:
        stats = run.trainer.pipeline.recluster(num_pixels=pixels)
        hdbscan_seconds = stats["seconds"] - stats["render_seconds"]
        clustering.append(
            {
                "pixels": pixels,
                "render_s": stats["render_seconds"],
                "hdbscan_s": hdbscan_seconds,
                "objects": stats["objects"],
            }
        )
    camera = run.trainer.pipeline.datamanager.train_dataset.cameras[0:1].to(model.device)
    rendering = []
    for size in config.render_sizes:
        view = copy.deepcopy(camera)
        view.rescale_output_resolution(size / int(camera.width))
        model.get_outputs_for_camera(view)  # warm-up
        start = time.perf_counter()
        repeats = 3
        for _ in range(repeats):
            model.get_outputs_for_camera(view)
        rendering.append({"size": size, "fps": repeats / (time.perf_counter() - start)})
    return {"clustering": clustering, "rendering": rendering}


def markdown(results: Dict[str, Any]) -> str:
    ratio = results["ratio"]
    counts = sorted({r["objects"] for r in results["instance_stage"]})
    lines = [
        f"Machine: {results['machine']}; date: {results['date']}",
        f"Command: `{results['command']}`",
        "",
        f"- Step time, contrastive-lift / nerfacto: **{ratio['ratio']:.2f}** "
        f"({ratio['contrastive_lift_step_ms']:.0f} ms / {ratio['nerfacto_step_ms']:.0f} ms; "
        f"peak {ratio['contrastive_lift_peak_mb']:.0f} / {ratio['nerfacto_peak_mb']:.0f} MB); "
        f"in process CPU time: {ratio['cpu_time_ratio']:.2f}",
        "",
        "| instance stage | " + " | ".join(f"{n} objects" for n in counts) + f" | {counts[-1]}/{counts[0]} |",
        "|---|" + "---|" * (len(counts) + 1),
    ]
    for method in METHODS:
        rows = sorted((r for r in results["instance_stage"] if r["method"] == method), key=lambda r: r["objects"])
        cells = [f"{r['step_ms']:.0f} ms, {r['peak_mb']:.0f} MB" for r in rows]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {rows[-1]['step_ms'] / rows[0]['step_ms']:.2f}× |")
    lines += ["", "| clustering pixels | render | HDBSCAN | objects |", "|---|---|---|---|"]
    for row in results["clustering"]:
        lines.append(f"| {row['pixels']:,} | {row['render_s']:.1f} s | {row['hdbscan_s']:.1f} s | {row['objects']} |")
    lines += ["", "| render `instance` | frames/s |", "|---|---|"]
    lines += [f"| {r['size']}² | {r['fps']:.2f} |" for r in results["rendering"]]
    lines += ["", "| training processes | backend | ms/step | steps/s | rays/s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['processes']} | {r['backend']} | {r['step_ms']:.0f} | {r['steps_per_second']:.2f} | "
        f"{r['rays_per_second']:.0f} |"
        for r in results["scaling"]
    ]
    return "\n".join(lines) + "\n"
