"""`python -m smgic_rt.cli` builds only the chosen command's parser: registering does not import
`smgic_rt.apply`, and both commands still parse as before."""

import subprocess
import sys

PROBE = """
import sys
from smgic_rt import cli
status = cli.main([{args}])
print(status, "smgic_rt.apply" in sys.modules)
"""


def _run(args: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def test_register_does_not_import_apply(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    assert _run(f"'register', '{missing}', '{missing}', '-o', '{tmp_path / 'out'}'") == "1 False"


def test_apply_still_parses_its_options(tmp_path):
    missing = tmp_path / "missing.mat"
    out = _run(f"'apply', '{missing}', '{missing}', '{missing}', '{tmp_path / 'out.nii.gz'}', '--interpolation', 'label'")
    assert out == "1 True"
