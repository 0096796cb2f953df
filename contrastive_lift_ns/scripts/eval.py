"""``cl-eval``: score a trained model's test views against ground truth (PQ^scene, per-frame PQ, mIoU, PSNR).

Example::

    cl-eval --load-config outputs/scene/contrastive-lift/<run>/config.yml --output-path metrics.json \\
        --render-dir renders
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import tyro
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.table import Table

from contrastive_lift_ns.data.scene_format import atomic_output_dir, atomic_write_json, write_label_map
from contrastive_lift_ns.evaluation.scene_evaluation import evaluate, missing_ground_truth
from contrastive_lift_ns.viewer.images import contact_sheet, id_image, save_rgb

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
    overwrite: bool = False
    """Replace a non-empty render_dir."""

    def main(self) -> None:
        start = time.perf_counter()
        if not self.load_config.is_file():
            sys.exit(f"cl-eval: --load-config {self.load_config}: no such file")
        if self.render_dir is not None and self.render_dir.is_dir() and any(self.render_dir.iterdir()):
            if not self.overwrite:
                sys.exit(f"cl-eval: --render-dir {self.render_dir} is not empty; pass --overwrite to replace it")
        config, pipeline, _, step = eval_setup(self.load_config, test_mode="test")
        missing = missing_ground_truth(pipeline)
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
            "seconds": round(time.perf_counter() - start, 2),
        }
        if missing:
            report["missing_ground_truth"] = missing
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_path, report)
        _print_table(report)
        if missing:
            sys.exit(
                f"cl-eval: the test views have no ground truth ({', '.join(missing)} missing in transforms.json), "
                f"so only image metrics were computed; they are in {self.output_path}"
            )


def _view_writer(folder: Path, names: List[str], sheet_rows: List[List[np.ndarray]]):
    """Writes each view's maps, and keeps a few evenly spaced views for the contact sheet."""
    sheet_views = set(np.linspace(0, len(names) - 1, min(_SHEET_VIEWS, len(names))).round().astype(int).tolist())

    def write(index: int, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> None:
        stem = names[index]
        ids = outputs.get("instance_id", torch.zeros_like(outputs["semantic_class"]))[..., 0].long().cpu().numpy()
        write_label_map(folder / "instance" / f"{stem}.png", ids, sixteen_bit=True)
        write_label_map(folder / "semantics" / f"{stem}.png", outputs["semantic_class"][..., 0].long().cpu().numpy())
        save_rgb(folder / "rgb" / f"{stem}.png", outputs["rgb"])
        if index in sheet_views:
            rgb = (batch["image"][..., :3].clamp(0, 1) * 255).round().byte().numpy()
            row = [rgb, id_image(batch["segments"][..., 0].numpy()), id_image(ids)]
            if "gt_instance" in batch:
                row.append(id_image(batch["gt_instance"][..., 0].numpy()))
            sheet_rows.append(row)

    return write


def _print_table(report: Dict) -> None:
    table = Table(title=f"cl-eval: {report['method']} at step {report['step']}, {report['num_views']} test views")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, int) and key.startswith("num_objects"):
            table.add_row(key, str(value))
    CONSOLE.print(table)


def entrypoint() -> None:
    tyro.cli(EvalConfig).main()


if __name__ == "__main__":
    entrypoint()
