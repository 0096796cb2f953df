"""``cl-eval``: score a trained model's test views: PQ^scene, per-frame PQ and mIoU against ground truth, and,
with or without ground truth, PSNR and the multi-view consistency of the lifted instances and of the 2D segments.
The run's hand corrections (``corrections.json`` beside config.yml) are applied; the report says how many.

Example::

    cl-eval --load-config outputs/scene/contrastive-lift/<run>/config.yml --output-path metrics.json \\
        --render-dir renders
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import tyro
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.markup import escape
from rich.table import Table

from contrastive_lift_ns.atomic import atomic_output_dir, atomic_write_json
from contrastive_lift_ns.data.scene_format import SceneFormatError, write_label_map
from contrastive_lift_ns.drawing.images import contact_sheet, id_image, save_rgb
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate, missing_ground_truth
from contrastive_lift_ns.keys import Batch, Output
from contrastive_lift_ns.scripts.cli import RunError, check_writable, load_run, run_command

_SHEET_VIEWS = 4


@dataclass
class EvalConfig:
    """Render the test views (``test_filenames``, or nerfstudio's eval split) and score them."""

    load_config: Path
    """The ``config.yml`` of a trained contrastive-lift run."""
    output_path: Path = Path("metrics.json")
    """Where to write the metrics as JSON."""
    render_dir: Optional[Path] = None
    """If set, write per view ``instance/<stem>.png`` (uint16 ids), ``semantics/<stem>.png`` (class ids) and
    ``rgb/<stem>.png``, and ``contact_sheet.png``: a few views as RGB | 2D segments | lifted | ground truth."""
    step: Optional[int] = None
    """Evaluate the checkpoint of this step instead of the newest one."""
    overwrite: bool = False
    """Replace a non-empty render_dir."""

    def main(self) -> None:
        start = time.perf_counter()
        check_writable(self.output_path, "--output-path", folder=False)
        if self.render_dir is not None:
            check_writable(self.render_dir, "--render-dir", folder=True)
            if self.render_dir.is_dir() and any(self.render_dir.iterdir()) and not self.overwrite:
                raise RunError(f"--render-dir {self.render_dir} is not empty; pass --overwrite to replace it")
        config, pipeline, step = load_run(self.load_config, self.step)
        reason = pipeline.model.objects_unavailable(step)
        if reason is not None:
            raise RunError(f"--load-config {self.load_config}: {reason}")
        if self.render_dir is None:
            metrics = evaluate(pipeline)
        else:
            with atomic_output_dir(self.render_dir, overwrite=True) as folder:
                for sub in ("instance", "semantics", "rgb"):
                    (folder / sub).mkdir()
                names = [Path(p).stem for p in pipeline.datamanager.eval_dataset.image_filenames]
                sheet_rows: List[List[np.ndarray]] = []
                metrics = evaluate(pipeline, on_view=_view_writer(folder, names, sheet_rows))
                titles = ["RGB", "2D segments", "lifted instances", "ground truth"][: len(sheet_rows[0])]
                Image.fromarray(contact_sheet(sheet_rows, titles)).save(folder / "contact_sheet.png")
        report = {
            **metrics,
            "step": step,
            "command": " ".join(sys.argv),
            "config": str(self.load_config),
            "method": config.method_name,
            "num_views": len(pipeline.datamanager.eval_dataset),
            **_corrections(pipeline),
            "seconds": round(time.perf_counter() - start, 2),
        }
        missing = missing_ground_truth(pipeline)
        if missing:
            report["missing_ground_truth"] = missing
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        write_metrics(self.output_path, report)
        _print_table(report)
        if report["corrections"]:
            CONSOLE.print(f"Scored with {report['corrections']} hand corrections from {report['corrections_file']}")
        else:
            CONSOLE.print("Scored without hand corrections")
        if missing:
            CONSOLE.print(
                f"No ground truth in the test views ({', '.join(missing)} missing in transforms.json): PQ and mIoU "
                "need it; the image metrics and the consistency are reported."
            )
        dropped = report.get("dropped_classes_authors_filter")
        if dropped:
            CONSOLE.print(
                f"[yellow]The authors' class filter drops {escape(str(dropped))} (too few predicted or ground-truth "
                f"pixels): pq_scene_authors_filter {report['pq_scene_authors_filter']:.4f} leaves them out, while "
                f"pq_scene scores them (a missed class counts 0).[/yellow]"
            )


def _corrections(pipeline) -> Dict[str, Any]:
    """How many hand corrections were applied (``corrections``, 0 for none), and from which file."""
    applied = len(pipeline.model.corrections) if pipeline.model.uses_clustering else 0
    return {"corrections": applied, "corrections_file": str(pipeline.corrections_path) if applied else None}


def write_metrics(path: Path, report: Dict[str, Any]) -> None:
    """Writes the report as JSON, a NaN (a consistency with no overlapping views) as null: JSON has no NaN."""
    atomic_write_json(path, {key: None if _is_nan(value) else value for key, value in report.items()})


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _view_writer(folder: Path, names: List[str], sheet_rows: List[List[np.ndarray]]):
    """Writes each view's maps, and keeps a few evenly spaced views for the contact sheet."""
    sheet_views = set(np.linspace(0, len(names) - 1, min(_SHEET_VIEWS, len(names))).round().astype(int).tolist())

    def write(index: int, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> None:
        stem = names[index]
        ids = outputs[Output.INSTANCE_ID][..., 0].long().cpu().numpy()
        write_label_map(folder / "instance" / f"{stem}.png", ids, sixteen_bit=True)
        classes = outputs[Output.SEMANTIC_CLASS][..., 0].long().cpu().numpy()
        write_label_map(folder / "semantics" / f"{stem}.png", classes)
        save_rgb(folder / "rgb" / f"{stem}.png", outputs["rgb"])
        if index in sheet_views:
            rgb = (batch["image"][..., :3].clamp(0, 1) * 255).round().byte().numpy()
            row = [rgb, id_image(batch[Batch.SEGMENTS][..., 0].numpy()), id_image(ids)]
            if Batch.GT_INSTANCE in batch:
                row.append(id_image(batch[Batch.GT_INSTANCE][..., 0].numpy()))
            sheet_rows.append(row)

    return write


def _print_table(report: Dict[str, Any]) -> None:
    table = Table(title=f"cl-eval: {report['method']} at step {report['step']}, {report['num_views']} test views")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, int) and (key.startswith("num_objects") or key == "consistency_pairs"):
            table.add_row(key, str(value))
    CONSOLE.print(table)


def entrypoint() -> None:
    """Entry point of the ``cl-eval`` command."""
    run_command("cl-eval", tyro.cli(EvalConfig).main, (RunError, SceneFormatError, FileExistsError))


if __name__ == "__main__":
    entrypoint()
