""".ci/device_check.py --cpu: the same code path as on a GPU, on numpy arrays, within its
budget, writing the JSON that a GPU run writes (issue 19)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_check_cpu_writes_a_complete_report(tmp_path):
    out = tmp_path / "check"
    budget_minutes = 2.5
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "device_check.py"), "--cpu", "--out", str(out),
         "--minutes", str(budget_minutes), "--skip-tests", "--repeats", "1", "--shape", "24", "28", "20",
         "--pair-mm", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60 * budget_minutes + 120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert (out / "device_check.log").stat().st_size > 0
    assert report["schema_version"] == 1 and report["mode"] == "cpu" and report["ok"] is True
    assert report["finished_within_budget"] and report["elapsed_seconds"] <= 60 * budget_minutes
    assert report["build"]["status"] == "skipped" and report["build"]["module"]["file"].startswith(str(ROOT))
    assert report["tests"] == {"status": "skipped", "reason": "--skip-tests"}

    kernels = report["kernels"]
    assert kernels["status"] == "ok" and kernels["arrays"] == "numpy" and kernels["shape"] == [24, 28, 20]
    names = {row["kernel"] for row in kernels["kernels"]}
    for expected in ("warp linear 1ch", "warp label", "integrate_velocity (7 steps)", "compose", "upsample_field",
                     "downsample_haar", "affine_field", "jacobian_determinant", "filter_axis gaussian", "lncc",
                     "image_gradient", "affine_ncc_sums (half grid)", "affine_ssd_sums (half grid, 4ch)"):
        assert expected in names
    for row in kernels["kernels"]:
        assert row["status"] == "ok", row
        assert row["max_abs_difference"] == 0.0  # numpy on both sides
        assert row["repeats"] == 1 and row["median_seconds"] > 0

    registration = report["registration"]
    assert registration["status"] in ("ok", "partial"), registration
    full = registration["runs"][0]
    assert full["variant"] == "full" and full["backend"] == "onnxruntime" and full["repeats"] >= 1
    # Per-stage seconds as the Registrar's stats name them, whatever the names are.
    assert full["seconds"] and all(isinstance(v, float) and v >= 0 for v in full["seconds"].values())
    assert sum(full["seconds"].values()) <= full["wall_seconds"] + 1e-6
    assert any(name.startswith("level") for name in full["network_seconds"])


def test_device_check_refuses_a_bad_budget(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "device_check.py"), "--cpu", "--out",
                           str(tmp_path), "--minutes", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--minutes must be > 0" in done.stderr
