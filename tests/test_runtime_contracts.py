"""The runtime owns its contracts: `smgic_rt` needs nothing from `training/` or `export/`, only
`smgic_rt.io.atomic` renames files into place, and the torch backend runs from an installed wheel."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "smgic_rt"


def _runtime_modules():
    return sorted(p for p in RUNTIME.rglob("*.py"))


def _imported_names(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_runtime_imports_nothing_from_training_or_export():
    offenders = [(str(path.relative_to(ROOT)), name) for path in _runtime_modules() for name in _imported_names(path)
                 if name.split(".")[0] in ("training", "export")]
    assert offenders == []


def test_torch_is_loaded_only_by_the_torch_backend():
    """No runtime module but the torch backend imports torch at module level, and importing all
    of them (and running a registration without the torch backend) loads no torch: a torch CUDA
    tensor handed to `ops` brings its own torch along."""
    allowed = {RUNTIME / "backends" / "torch.py", RUNTIME / "backends" / "torch_model.py"}
    offenders = []
    for path in _runtime_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if path not in allowed and any(name.split(".")[0] == "torch" for name in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _runtime_modules()
                     if p not in allowed and p.name != "__main__.py")
    script = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
              "import nibabel as nib\nfrom smgic_rt import Registrar\n"
              "image = nib.load(nib.__path__[0] + '/tests/data/anatomical.nii')\n"
              "Registrar(backend='onnxruntime', affine='off', network='on', refine='off').register(image, image)\n"
              "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_only_the_atomic_writer_renames_files_into_place():
    # os.replace/os.rename/shutil.move, and Path.replace/Path.rename (one argument, not a string:
    # str.replace takes two, JavaScript's a regular expression).
    rename = re.compile(r"\bos\.(replace|rename)\(|\bshutil\.move\(|\.(replace|rename)\(\s*[A-Za-z_][\w.]*\s*\)")
    offenders = []
    for path in _runtime_modules():
        if path == RUNTIME / "io" / "atomic.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#")[0]
            if rename.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
    # The detector does see renames: the atomic writer's own.
    assert sum(bool(rename.search(line)) for line in (RUNTIME / "io" / "atomic.py").read_text().splitlines()) >= 3


@pytest.mark.slow
def test_torch_backend_runs_from_an_installed_wheel_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a folder of its own and register a real image with the
    torch backend from a working directory where neither `training` nor `export` exists."""
    pytest.importorskip("torch")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "SMGIC_WITH_CUDA": "0"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, env=env, cwd=tmp_path)
    wheel = next(wheels.glob("smgic_rt-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    script = f"""
import importlib.util, sys
import nibabel as nib
import smgic_rt
from smgic_rt import Registrar
assert smgic_rt.__file__.startswith({str(site)!r}), smgic_rt.__file__
for name in ("training", "export"):
    assert importlib.util.find_spec(name) is None, name + " is importable here"
image = nib.load(nib.__path__[0] + "/tests/data/anatomical.nii")
result = Registrar(backend="torch", affine="off", network="on", refine="off").register(image, image)
assert result.stats["backend"] == "torch" and result.stats["stages"]["network"]["ran"]
for name in ("training", "export"):
    assert name not in sys.modules, name
print("ok", float(abs(result.forward_ras).max()))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
