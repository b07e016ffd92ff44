"""smgic-batch when runs are killed, interrupted, rerun in part or find their outputs edited
(issue 36, defect 8). On e7b1639: killing the parent with SIGKILL left an orphan worker idling;
after an interrupt a pair complete on disk was listed "not run"; a rerun with a subset of the
pairs cut summary.csv, summary.json and report.html down to the subset; an output changed by
hand made its pair fail on every rerun instead of being redone, as the README says.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import batch
from smgic_rt.io import make_nifti

from test_registrar_support import make_tiny_bundle

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
REPO = Path(__file__).resolve().parents[1]
IDS = ["p1", "p2", "p3"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _pairs_csv(folder: Path, ids) -> Path:
    if not (folder / "a.nii.gz").exists():  # written once: a rewritten input makes outputs stale
        image = nib.load(str(ANATOMICAL))
        data = np.asarray(image.dataobj, dtype=np.float32)
        nib.save(make_nifti(data, image.affine), str(folder / "a.nii.gz"))
        nib.save(make_nifti(np.ascontiguousarray(data[::-1]), image.affine), str(folder / "b.nii.gz"))
    path = folder / f"pairs_{'_'.join(ids)}.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["id", "fixed", "moving"])
        writer.writeheader()
        for pair_id in ids:  # a pair's row depends on its id alone, whichever table it is in
            writer.writerow({"id": pair_id, "fixed": "a.nii.gz", "moving": "b.nii.gz" if pair_id == "p2" else "a.nii.gz"})
    return path


def _run(csv_path, out, bundle, **kwargs):
    kwargs.setdefault("workers", 1)
    return batch.register_many(csv_path, out, bundle=bundle, backend="onnxruntime", affine="off", refine="off",
                               progress=False, threads_per_worker=1, **kwargs)


def _children(pid: int) -> set:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_workers_die_with_their_parent(tmp_path, bundle):
    csv_path = _pairs_csv(tmp_path, [f"q{i}" for i in range(6)])
    parent = subprocess.Popen([sys.executable, "-m", "smgic_rt.batch", str(csv_path), "-o", str(tmp_path / "out"),
                               "--bundle", str(bundle), "--backend", "onnxruntime", "--affine", "off", "--refine", "off",
                               "--workers", "2", "-q"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    workers = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(workers) < 2 and parent.poll() is None:
        workers = {pid for pid in _children(parent.pid)
                   if b"multiprocessing" in (Path("/proc") / str(pid) / "cmdline").read_bytes()}
        time.sleep(0.2)
    assert workers, "no worker process started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    orphans = [pid for pid in workers if _alive(pid)]
    for pid in orphans:  # do not leave them behind whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"worker(s) {orphans} outlived their parent by 15 s"


def test_interrupt_keeps_pairs_finished_on_disk(tmp_path, bundle):
    """The parent is interrupted after the first result: the pair still in flight finishes in
    its worker (the pool waits for it) and is complete on disk, so it counts as registered."""
    csv_path = _pairs_csv(tmp_path, IDS)

    def interrupt(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(csv_path, tmp_path / "out", bundle, workers=2, callback=interrupt)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    statuses = {record["id"]: record["status"] for record in summary["pairs"]}
    complete = {pair_id for pair_id in IDS if (tmp_path / "out" / ".smgic-batch" / f"{pair_id}.json").is_file()}
    assert len(complete) == 2
    assert {pair_id for pair_id, status in statuses.items() if status == "registered"} == complete
    assert [status for status in statuses.values()].count("not run") == 1


def test_subset_rerun_keeps_the_summaries_whole(tmp_path, bundle):
    out = tmp_path / "out"
    _run(_pairs_csv(tmp_path, IDS), out, bundle)
    summary = _run(_pairs_csv(tmp_path, ["p2"]), out, bundle)
    assert summary["counts"] == {"registered": 0, "skipped": 1, "failed": 0}  # this run's own work
    assert sorted(record["id"] for record in summary["pairs"]) == IDS
    assert sorted(record["id"] for record in json.loads((out / "summary.json").read_text())["pairs"]) == IDS
    with open(out / "summary.csv", newline="") as stream:
        assert sorted(row["id"] for row in csv.DictReader(stream)) == IDS
    page = (out / "report.html").read_text()
    assert all(pair_id in page for pair_id in IDS)


def test_an_output_changed_by_hand_is_kept_and_its_pair_redone(tmp_path, bundle):
    out = tmp_path / "out"
    csv_path = _pairs_csv(tmp_path, IDS)
    _run(csv_path, out, bundle)
    edited = out / "p2" / "report.json"
    edited.write_text(edited.read_text().replace("{", '{"my note": "checked by hand", ', 1))
    summary = _run(csv_path, out, bundle)
    statuses = {record["id"]: record["status"] for record in summary["pairs"]}
    assert statuses == {"p1": "skipped", "p2": "registered", "p3": "skipped"}
    kept = out / "p2.changed-1" / "report.json"
    assert "checked by hand" in kept.read_text()  # nothing of the user's is lost
    assert "checked by hand" not in (out / "p2" / "report.json").read_text()
    assert {r["id"]: r["status"] for r in _run(csv_path, out, bundle)["pairs"]} == dict.fromkeys(IDS, "skipped")
