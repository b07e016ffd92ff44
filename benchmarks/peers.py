"""smgic-register beside PICSL Greedy and ANTs SyN, in one run, each tool in its own process.

    python benchmarks/peers.py --runs 5 --json benchmarks/results/peers.json

Per pair and tool: wall seconds from the tool's process start to its exit with every output
written (median over ``--runs``), Dice on the structures both label maps share (where the fixed
image has labels; benchmarks/structures.csv), the peak resident memory of that process
(``os.wait4``'s ``ru_maxrss``) and the bytes it wrote to its output folder; then the ratios
smgic / Greedy and smgic / ANTs of the medians of the same run. Every process gets 2 threads
(``OMP_NUM_THREADS``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, ``--threads 2`` / ``-threads 2``).
Runs are interleaved (smgic, Greedy, ANTs, smgic, ...) so that a change of load on a shared
machine touches every tool alike.

Tools (how Greedy and ANTs are run is defined once, in benchmarks/peer_tools.py):

- ``smgic``: ``python -m smgic_rt.cli register FIXED MOVING -o OUT --moving-labels L --threads 2``
  of this checkout (``--smgic-command console`` runs the ``smgic-register`` on PATH instead);
- ``smgic_accurate``: the same with ``--quality accurate`` (not run unless named in ``--tools``),
  so that both presets are timed beside the same runs of the peers;
- ``greedy``: ``python benchmarks/peer_tools.py greedy ...``;
- ``ants``: ``python benchmarks/peer_tools.py ants ...``.

Pairs (``--pairs``, comma-separated):

- ``demo``: `smgic_rt.demo.demo_pair()`: the Colin27 head (181x217x181) onto the ICBM 2009c head
  (193x229x193) with Colin27's AAL labels; the ICBM head has no labels, so no Dice;
- ``conformed256``: the CAT12 brain (benchmarks/real_pairs.py) resampled once onto a
  FreeSurfer-style conformed grid (256^3, 1 mm, LIA, centred on its field of view, uint8 like
  FreeSurfer's ``orig.mgz``), with its neuromorphometrics labels, onto the FSL MNI152 brain
  (182x218x182 LAS) with its Desikan-Killiany labels;
- ``real``: the fully unseen real pair Colin27 brain (AAL) onto the CAT12 brain
  (neuromorphometrics), raw headers;
- ``tiny``: the same pair at 4 mm, seconds per tool (for tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import real_pairs  # noqa: E402
from smgic_rt.demo import demo_pair  # noqa: E402

TOOLS = ("smgic", "smgic_accurate", "greedy", "ants")
DEFAULT_TOOLS = ("smgic", "greedy", "ants")
SMGIC_TOOLS = {"smgic": (), "smgic_accurate": ("--quality", "accurate")}
PAIRS = ("demo", "conformed256", "real", "tiny")
THREADS = 2
log = logging.getLogger("benchmarks.peers")


def conformed_grid(image, size: int = 256) -> np.ndarray:
    """FreeSurfer's conformed geometry for `image`: `size`^3 voxels of 1 mm, LIA orientation
    (voxel axes along -x, -z, +y), centred on the centre of the image's field of view."""
    centre = (image.affine @ np.r_[(np.asarray(image.shape[:3]) - 1) / 2.0, 1.0])[:3]
    linear = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ np.full(3, (size - 1) / 2.0)
    return affine


def write_pair(name: str, folder: Path) -> dict:
    """Write pair `name`'s files into `folder`; returns its description with file paths
    (``fixed_labels`` is None where the fixed image has no labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        files = demo_pair()
        return {"name": name, "fixed": str(files["fixed"]), "moving": str(files["moving"]),
                "moving_labels": str(files["moving_labels"]), "fixed_labels": None, "structures": None,
                "what": "demo pair: Colin27 head onto the ICBM 2009c head, AAL labels (no fixed labels)"}
    if name == "conformed256":
        fixed, fixed_labels = real_pairs.load_brain("mni152")
        moving, moving_labels = real_pairs.load_brain("cat12")
        target = conformed_grid(moving)
        shape = (256, 256, 256)
        data = real_pairs.resample_to(moving.dataobj, moving.affine, target, shape, order=1)
        top = float(np.percentile(data[data > 0], 99.9))
        data = np.clip(np.rint(255.0 * data / top), 0, 255).astype(np.uint8)
        labels = real_pairs.resample_nearest(moving_labels.dataobj, moving_labels.affine, target, shape)
        moving, moving_labels = nib.Nifti1Image(data, target), nib.Nifti1Image(labels.astype(np.int16), target)
        fixed_atlas, moving_atlas, what = "desikan_killiany", "neuromorphometrics", (
            "CAT12 brain on a 256^3 1 mm LIA conformed grid (neuromorphometrics) onto the FSL MNI152 brain "
            "182x218x182 (Desikan-Killiany)")
    elif name == "tiny":  # seconds per tool: for tests
        fixed, fixed_labels = real_pairs.downsampled(*real_pairs.load_brain("cat12"), spacing=4.0)
        moving, moving_labels = real_pairs.downsampled(*real_pairs.load_brain("colin27"), spacing=4.0)
        fixed_atlas, moving_atlas, what = "neuromorphometrics", "aal", "the real pair at 4 mm (tests)"
    elif name == "real":
        fixed, fixed_labels = real_pairs.load_brain("cat12")
        moving, moving_labels = real_pairs.load_brain("colin27")
        fixed_atlas, moving_atlas, what = "neuromorphometrics", "aal", (
            "Colin27 brain (AAL) onto the CAT12 brain (neuromorphometrics), raw headers, both unseen in training")
    else:
        raise ValueError(f"pair must be one of {list(PAIRS)}, got {name!r}")
    paths = {}
    for role, image in (("fixed", fixed), ("fixed_labels", fixed_labels), ("moving", moving),
                        ("moving_labels", moving_labels)):
        paths[role] = str(folder / f"{role}.nii.gz")
        nib.save(image, paths[role])
    shared = real_pairs.shared_structures(fixed_atlas, moving_atlas)
    return {"name": name, **paths, "structures": [s.name for s in shared], "what": what,
            "fixed_shape": list(fixed.shape), "moving_shape": list(moving.shape),
            "moving_orientation": "".join(nib.aff2axcodes(moving.affine))}


def tool_command(tool: str, pair: dict, outdir: Path, smgic_command: str = "module", smgic_args=()) -> list:
    if tool in SMGIC_TOOLS:
        head = ["smgic-register"] if smgic_command == "console" else [sys.executable, "-m", "smgic_rt.cli", "register"]
        return head + [pair["fixed"], pair["moving"], "-o", str(outdir), "--moving-labels", pair["moving_labels"],
                       "--threads", str(THREADS), "-q", *SMGIC_TOOLS[tool], *smgic_args]
    if tool in ("greedy", "ants"):
        return [sys.executable, str(Path(__file__).resolve().with_name("peer_tools.py")), tool, pair["fixed"],
                pair["moving"], "-o", str(outdir), "--moving-labels", pair["moving_labels"], "--threads", str(THREADS)]
    raise ValueError(f"tool must be one of {list(TOOLS)}, got {tool!r}")


def tool_environment() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(THREADS)
    env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(THREADS)
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# A tiny launcher between this process and each tool: a child's ru_maxrss keeps the peak of the
# process it was forked from (Linux carries it across exec), so forking the tool from this
# benchmark (hundreds of MiB of brains) would report our memory, not the tool's. The launcher
# (python -S, about 10 MiB resident when it forks, recorded as launcher_rss_mib) forks and execs the tool, times it from
# fork to exit and writes the tool's rusage as JSON.
LAUNCHER = r"""
import json, os, sys, time
# the launcher's own resident size when it forks: the most the tool's peak can carry over from it
with open("/proc/self/statm") as statm:
    launcher = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as handle:
    json.dump({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "ru_maxrss_kib": usage.ru_maxrss,
               "launcher_rss_kib": launcher, "exit_code": os.waitstatus_to_exitcode(status)}, handle)
sys.exit(0)
"""


def run_tool(tool: str, pair: dict, outdir: Path, smgic_command: str = "module", smgic_args=()) -> dict:
    """One run of `tool` on `pair` in its own process: wall seconds from its start to its exit,
    peak RSS, bytes written, Dice. Raises RuntimeError (with the tail of its output) when it fails."""
    command = tool_command(tool, pair, outdir, smgic_command, smgic_args)
    with tempfile.TemporaryDirectory(prefix="launcher_") as launcher_dir, tempfile.TemporaryFile() as output:
        measured = Path(launcher_dir) / "rusage.json"
        completed = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(measured), *command], stdout=output,
                                   stderr=subprocess.STDOUT, env=tool_environment(), cwd=str(common.REPO_ROOT),
                                   check=False)
        usage = json.loads(measured.read_text()) if measured.is_file() else {"exit_code": completed.returncode}
        if completed.returncode != 0 or usage["exit_code"] != 0:
            output.seek(0)
            tail = output.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{tool} exited with {usage['exit_code']} on {pair['name']}: {' '.join(command)}\n{tail}")
    seconds = usage["seconds"]
    row = {"seconds": seconds, "cpu_seconds": usage["cpu_seconds"], "peak_rss_mib": usage["ru_maxrss_kib"] / 1024.0,
           "launcher_rss_mib": usage["launcher_rss_kib"] / 1024.0, "bytes_written": folder_bytes(outdir),
           "files": sorted(p.name for p in Path(outdir).iterdir())}
    if pair.get("fixed_labels"):
        structures = [s for s in real_pairs.read_structures() if s.name in pair["structures"]]
        fixed_labels = np.asarray(nib.load(pair["fixed_labels"]).dataobj)
        warped = np.rint(np.asarray(nib.load(Path(outdir) / "warped_labels.nii.gz").dataobj)).astype(np.int32)
        per_structure = real_pairs.structure_dice(fixed_labels, warped, structures)
        row["dice_per_structure"] = per_structure
        row["dice"] = float(np.mean(list(per_structure.values())))
    return row


def run(pairs, tools, runs: int, smgic_command: str = "module", workdir=None, smgic_args=()) -> dict:
    report = {"runs": runs, "threads": THREADS, "tools": list(tools), "pairs": {},
              "smgic_command": " ".join(tool_command("smgic", {"fixed": "F", "moving": "M", "moving_labels": "L"},
                                                     Path("OUT"), smgic_command, smgic_args)),
              "cpu_count": os.cpu_count(), "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smgic_peers_", dir=workdir) as scratch:
        scratch = Path(scratch)
        for name in pairs:
            pair = write_pair(name, scratch / name / "inputs")
            results = {tool: [] for tool in tools}
            for number in range(runs):
                for tool in tools:
                    outdir = scratch / name / f"{tool}_{number}"
                    log.info("%s: %s run %d/%d", name, tool, number + 1, runs)
                    results[tool].append(run_tool(tool, pair, outdir, smgic_command, smgic_args))
                    shutil.rmtree(outdir)
            summary = {}
            for tool, rows in results.items():
                summary[tool] = {
                    "seconds_median": statistics.median(r["seconds"] for r in rows),
                    "seconds": [r["seconds"] for r in rows],
                    # CPU seconds (user + system) of the tool's process: less sensitive than wall
                    # time to other work on a shared machine
                    "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in rows),
                    "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rows),
                    "launcher_rss_mib": max(r["launcher_rss_mib"] for r in rows),
                    "bytes_written_median": statistics.median(r["bytes_written"] for r in rows),
                    "files": rows[0]["files"],
                }
                if "dice" in rows[0]:
                    summary[tool]["dice_median"] = statistics.median(r["dice"] for r in rows)
                    summary[tool]["dice_per_structure"] = rows[len(rows) // 2]["dice_per_structure"]
            ratios = {}
            for ours in (tool for tool in SMGIC_TOOLS if tool in summary):
                for peer in ("greedy", "ants"):
                    if peer in summary:
                        ratios[f"{ours}/{peer}"] = summary[ours]["seconds_median"] / summary[peer]["seconds_median"]
            description = {k: v for k, v in pair.items() if k not in ("fixed", "moving", "fixed_labels", "moving_labels")}
            report["pairs"][name] = {"pair": description, "summary": summary, "time_ratios": ratios, "per_run": results}
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def table(report: dict) -> str:
    """One row per pair and tool; our rows also say how many times faster than each peer they ran
    (the peer's median wall time over ours, and the same for CPU time)."""
    rows = []
    names = {"smgic": "smgic-register", "smgic_accurate": "smgic-register --quality accurate",
             "greedy": "Greedy (picsl-greedy)", "ants": "ANTs SyN (antspyx)"}
    for name, entry in report["pairs"].items():
        summary = entry["summary"]
        for tool, s in summary.items():
            speedups = []
            for peer in ("greedy", "ants"):
                if tool in SMGIC_TOOLS and peer in summary:
                    speedups.append(f"{summary[peer]['seconds_median'] / s['seconds_median']:.1f}x wall, "
                                    f"{summary[peer]['cpu_seconds_median'] / s['cpu_seconds_median']:.1f}x CPU")
                else:
                    speedups.append("")
            dice = f"{s['dice_median']:.3f}" if "dice_median" in s else "n/a"
            rows.append([name, names[tool], f"{s['seconds_median']:.1f}", f"{s['cpu_seconds_median']:.1f}", *speedups,
                         dice, f"{s['peak_rss_mib_max']:.0f}", f"{s['bytes_written_median'] / 1e6:.1f}"])
    return common.markdown_table(["pair", "tool", f"wall s (median of {report['runs']})", "CPU s (median)",
                                  "faster than Greedy", "faster than ANTs", "Dice (shared structures)",
                                  "peak RSS MiB", "MB written"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", default="demo,conformed256", help=f"comma-separated subset of {','.join(PAIRS)}")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)} (default {','.join(DEFAULT_TOOLS)})")
    parser.add_argument("--smgic-command", choices=("module", "console"), default="module",
                        help="module: python -m smgic_rt.cli register of this checkout; console: smgic-register on PATH")
    parser.add_argument("--smgic-args", default="", help="extra smgic-register arguments, e.g. '--refine off'")
    parser.add_argument("--workdir", help="folder for the temporary inputs and outputs (default: the system's)")
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args(argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if not pairs or set(pairs) - set(PAIRS):
        parser.error(f"--pairs must be a subset of {list(PAIRS)}, got {pairs}")
    if not tools or set(tools) - set(TOOLS):
        parser.error(f"--tools must be a subset of {list(TOOLS)}, got {tools}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = run(pairs, tools, args.runs, args.smgic_command, args.workdir, args.smgic_args.split())
    print(table(report))
    print(f"\n{report['cpu_count']} CPUs; load average (1, 5, 15 min) at the start {report['load_average_start']}, "
          f"at the end {report['load_average_end']}")
    if args.json:
        common.write_json_atomic(report, args.json)
    else:
        print(json.dumps({name: entry["time_ratios"] for name, entry in report["pairs"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
