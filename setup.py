"""Build smgic_rt and its compiled module smgic_rt._C.

The CPU path (g++ + OpenMP) is always built. The CUDA path is built with nvcc when nvcc is found,
or forced with SMGIC_WITH_CUDA=1 (error if nvcc is missing) / SMGIC_WITH_CUDA=0 (never).
torch's CUDAExtension is not used: it needs a CUDA build of torch. Instead the .cu files are
compiled by nvcc into objects that the normal setuptools link step picks up, and the CUDA runtime
is linked statically so the module imports on machines without CUDA libraries or a driver.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
# sm_75 (Turing) .. sm_90 (Hopper) as machine code, plus PTX of the last one for newer GPUs
# (the driver compiles it for them at load time). SMGIC_CUDA_ARCHS="90" (or "80,90") builds only
# those, e.g. for the one GPU of a machine (.ci/device_check.py does): a faster build.
DEFAULT_CUDA_ARCHS = ["75", "80", "86", "89", "90"]


def _cuda_archs():
    text = os.environ.get("SMGIC_CUDA_ARCHS", "").replace(" ", ",").strip(",")
    if not text:
        return DEFAULT_CUDA_ARCHS
    archs = [a for a in text.split(",") if a]
    if not all(re.fullmatch(r"\d{2,3}[af]?", a) for a in archs):
        raise RuntimeError(f"SMGIC_CUDA_ARCHS must list compute capabilities like '90' or '80,90', got {text!r}")
    return archs


CUDA_ARCHS = _cuda_archs()


def _find_nvcc():
    explicit = os.environ.get("SMGIC_NVCC")
    if explicit:
        return explicit
    for home_var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(home_var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cuda_root(nvcc):
    """The toolkit folder: nvcc may be a wrapper script, so ask nvcc itself (_HERE_ = <root>/bin)."""
    for home_var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(home_var)
        if home and os.path.isdir(home):
            return home
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, check=False)
        match = re.search(r"_HERE_=(\S+)", dry.stdout + dry.stderr)
        if match:
            return os.path.dirname(match.group(1))
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _cudart_static_dir(root):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        if os.path.exists(os.path.join(root, sub, "libcudart_static.a")):
            return os.path.join(root, sub)
    raise RuntimeError(f"libcudart_static.a not found under the CUDA toolkit at {root}")


def _want_cuda():
    flag = os.environ.get("SMGIC_WITH_CUDA")
    nvcc = _find_nvcc()
    if flag is None or flag == "":
        return nvcc is not None, nvcc
    if flag not in ("0", "1"):
        raise RuntimeError(f"SMGIC_WITH_CUDA must be 0 or 1, got {flag!r}")
    if flag == "1" and nvcc is None:
        raise RuntimeError("SMGIC_WITH_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
    return flag == "1", nvcc


def _sources(ext):
    return sorted(glob.glob(os.path.join(CSRC, "**", f"*.{ext}"), recursive=True))


WITH_CUDA, NVCC = _want_cuda()
ARCH_TEXT = ",".join(f"sm_{a}" for a in CUDA_ARCHS) + f",compute_{CUDA_ARCHS[-1]}"
DEFINES = [("SMGIC_WITH_CUDA", "1"), ("SMGIC_CUDA_ARCHS", f'"{ARCH_TEXT}"')] if WITH_CUDA else []


class BuildExtWithNvcc(build_ext):
    """build_ext that first compiles csrc/**/*.cu with nvcc and links the objects in."""

    def build_extensions(self):
        # setuptools relinks only when a dependency is newer than the built module, so the build
        # configuration and the headers count as dependencies: switching SMGIC_WITH_CUDA or
        # editing a header rebuilds instead of keeping a stale module.
        stamp = os.path.join(self.build_temp, "smgic_build_config.txt")
        config = f"cuda={int(WITH_CUDA)} archs={ARCH_TEXT if WITH_CUDA else ''}\n"
        os.makedirs(self.build_temp, exist_ok=True)
        if not os.path.exists(stamp) or open(stamp).read() != config:
            with open(stamp, "w") as handle:
                handle.write(config)
        for ext in self.extensions:
            ext.depends = list(ext.depends) + [stamp] + _sources("h") + _sources("cuh")
            if WITH_CUDA:
                self._compile_cuda(ext)
                ext.depends += ext.extra_objects
        super().build_extensions()

    def _compile_cuda(self, ext):
        cu_files = _sources("cu")
        if not cu_files:
            return
        root = _cuda_root(NVCC)
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        gencode = []
        for arch in CUDA_ARCHS:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
        defines = [f"-D{name}={value}" for name, value in DEFINES]
        for source in cu_files:
            obj = os.path.join(out_dir, source.replace(os.sep, "_").replace(".cu", ".o"))
            depends = [source] + _sources("h") + _sources("cuh")
            if self.force or not os.path.exists(obj) or any(
                    os.path.getmtime(d) > os.path.getmtime(obj) for d in depends):
                cmd = [NVCC, "-c", source, "-o", obj, "-O3", "-std=c++17", "--threads", "0",
                       "-Xcompiler", "-fPIC", f"-I{CSRC}", *defines, *gencode]
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
            ext.extra_objects.append(obj)
        ext.library_dirs.append(_cudart_static_dir(root))
        ext.extra_link_args += ["-lcudart_static", "-lrt", "-lpthread", "-ldl"]


ext_modules = [
    Pybind11Extension(
        "smgic_rt._C",
        _sources("cpp"),
        include_dirs=[CSRC],
        define_macros=DEFINES,
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtWithNvcc})
