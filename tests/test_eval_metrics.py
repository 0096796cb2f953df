"""cl-eval's metrics.json is strict JSON: a metric without a value (no overlapping test views) is null."""

from __future__ import annotations

import json
import math

import pytest

from contrastive_lift_ns.scripts.eval import write_metrics


def _strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_a_nan_metric_is_written_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"consistency": float("nan"), "consistency_pairs": 0, "psnr": 21.5, "method": "m"})
    text = path.read_text()
    with pytest.raises(ValueError, match="NaN is not JSON"):
        json.loads('{"consistency": NaN}', parse_constant=_strict)  # the check itself can fail
    report = json.loads(text, parse_constant=_strict)
    assert report == {"consistency": None, "consistency_pairs": 0, "psnr": 21.5, "method": "m"}
    assert not math.isnan(report["psnr"])
