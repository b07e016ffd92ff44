"""smgic_rt.write_behind: images written on a background thread are the files the direct writer
makes, in the order given; a failed write surfaces, and every started write is waited for."""

import gzip
import threading

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import io
from smgic_rt.write_behind import WriteBehind


def _image(seed, shape=(70, 80, 60, 3)):  # several 8 MiB gzip pieces in the larger one
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return io.make_nifti(data, np.diag([1.0, 1.0, 1.0, 1.0]))


def test_written_behind_equals_written_directly(tmp_path):
    images = [_image(seed, shape) for seed, shape in ((0, (70, 80, 60, 3)), (1, (20, 30, 10)), (2, (5, 6, 7)))]
    writer_threads = []
    with WriteBehind(threads=2) as writes:
        for number, image in enumerate(images):
            writes.image(image, tmp_path / f"behind_{number}.nii.gz")
            writer_threads.append(threading.active_count())
    for number, image in enumerate(images):
        io.save_image_atomic(image, tmp_path / f"direct_{number}.nii.gz", threads=2)
        behind, direct = (tmp_path / f"{kind}_{number}.nii.gz" for kind in ("behind", "direct"))
        assert gzip.decompress(behind.read_bytes()) == gzip.decompress(direct.read_bytes())
        np.testing.assert_array_equal(np.asarray(nib.load(behind).dataobj), np.asarray(image.dataobj))
    assert max(writer_threads) > 1  # the writes ran beside the caller


def test_a_failed_write_is_raised_and_later_writes_are_still_waited_for(tmp_path):
    with pytest.raises(FileNotFoundError):
        with WriteBehind() as writes:
            writes.image(_image(3, (8, 8, 8)), tmp_path / "missing_folder" / "a.nii.gz")
    with pytest.raises(FileNotFoundError):  # raised by the next call, before that write starts
        with WriteBehind() as writes:
            writes.image(_image(3, (8, 8, 8)), tmp_path / "missing_folder" / "a.nii.gz")
            writes.image(_image(4, (8, 8, 8)), tmp_path / "b.nii.gz")
    assert not (tmp_path / "b.nii.gz").exists()


def test_the_callers_own_error_is_the_one_raised(tmp_path):
    with pytest.raises(KeyError):
        with WriteBehind() as writes:
            writes.image(_image(5, (8, 8, 8)), tmp_path / "missing_folder" / "c.nii.gz")
            raise KeyError("the caller's")
