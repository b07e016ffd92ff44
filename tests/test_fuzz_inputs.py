"""Fuzzing the input checks: NIfTI files of every kind of header and voxel content, written as
real files through nibabel (and then, for some, with header bytes overwritten or the file cut
short), fed to every loader a user's file reaches: io.load_volume, io.load_label_map,
io.load_mask and the displacement-field reader (transforms.itk_image_to_displacement).

Two properties, for every input:
1. a loader either accepts it or raises one of our own error types (InvalidImageError and its
   subclass InvalidTransformError, FileNotFoundError): never a numpy, nibabel, zlib or other
   exception;
2. nothing accepted is silently wrong: an accepted volume is 3-D, float32, finite, with a
   finite invertible affine whose voxel sizes lie within io's bounds, and equals what nibabel
   itself reads from the file (voxels, and the affine as ITK/ANTs read it: nibabel's, except a
   header with neither qform nor sform, read from the voxel sizes alone); an accepted label map
   keeps the file's integer type and every value exactly, survives warping (`ops.warp_labels`
   by whole voxels is a shift of the array) and writing (same type, same values); an accepted
   field has the ITK layout and equals nibabel's reading with the LPS -> RAS sign flip.

The options of the API are fuzzed too (issue 36): RefineOptions and AffineOptions either refuse
a value at construction with a ValueError naming the field, or hold only finite, in-range
numbers, and then a refinement with them runs on a small pair and returns a finite velocity.

CI runs a bounded, reproducible search (200 examples, derandomized). A longer run:
``SMGIC_FUZZ_EXAMPLES=5000 pytest -q tests/test_fuzz_inputs.py`` (``SMGIC_FUZZ_RANDOM=1`` draws a
fresh random search instead of the fixed one).
"""

import gzip
import os
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from smgic_rt import io
from smgic_rt.geometry import transforms  # noqa: E402
from smgic_rt.io import InvalidImageError  # noqa: E402

EXAMPLES = int(os.environ.get("SMGIC_FUZZ_EXAMPLES", "200"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SMGIC_FUZZ_RANDOM", "") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OUR_ERRORS = (InvalidImageError, FileNotFoundError)

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
          np.float32, np.float64, np.complex64, np.complex128, bool]
SPECIAL_SIZES = [0.0, 1e-9, 1e-3, 0.049, 0.05, 0.5, 1.0, 2.0, 3.3, 20.0, 20.5, 1e4, -1.0, np.nan, np.inf]
INTENTS = [0, 2, 3, 1002, 1006, 1007, 1011, 2006, 32767, -5]
SLOPES = [np.nan, 0.0, 1.0, 2.5, -1.0, 1e-30, 1e30, np.inf]
INTERS = [0.0, 5.0, -1e6, np.nan, np.inf]

def sometimes(unusual, usual, one_in: int = 4):
    """`usual` most of the time, a draw from `unusual` about once in `one_in`: each example
    stays mostly valid, so that the checks past the first one get exercised too."""
    return st.integers(0, one_in - 1).flatmap(lambda k: unusual if k == 0 else st.just(usual) if not isinstance(
        usual, st.SearchStrategy) else usual)


valid_shapes = st.lists(st.integers(4, 12), min_size=3, max_size=3).map(tuple)
odd_shapes = st.one_of(
    st.lists(st.integers(1, 12), min_size=3, max_size=3),  # thin ones included
    st.lists(st.integers(1, 9), min_size=1, max_size=6),  # any dimensionality
    st.tuples(st.integers(4, 9), st.integers(4, 9), st.integers(4, 9), st.just(1)),  # trailing singleton
    st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9), st.just(1), st.sampled_from([3, 3, 2, 1])),  # ITK
    st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9), st.sampled_from([3, 1, 2])),
).map(tuple)
itk_field_shapes = st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9), st.just(1), st.just(3))
shapes = st.one_of(valid_shapes, odd_shapes, itk_field_shapes)
REAL_DTYPES = [d for d in DTYPES if np.dtype(d).kind not in "cb"]
dtypes = sometimes(st.sampled_from(DTYPES), st.sampled_from(REAL_DTYPES))
values = sometimes(st.sampled_from(["constant", "zeros", "integers", "nan", "inf", "huge", "tiny", "labels", "extreme"]),
                   st.sampled_from(["random", "labels", "integers"]))
voxel_size = sometimes(st.sampled_from(SPECIAL_SIZES), st.floats(0.1, 10.0), one_in=6)
translation = sometimes(st.sampled_from([1e30, np.nan, -1e8]), st.floats(-300.0, 300.0), one_in=10)
codes = sometimes(st.integers(0, 4), st.just(1))


@st.composite
def affines(draw):
    sizes = [draw(voxel_size) for _ in range(3)]
    angles = draw(st.lists(st.floats(-3.2, 3.2), min_size=3, max_size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    with np.errstate(invalid="ignore", over="ignore"):
        linear = rotation @ np.diag(sizes)
        linear = linear + draw(sometimes(st.sampled_from([0.01, 0.3, 5.0]), 0.0, one_in=6)) * np.triu(np.ones((3, 3)), 1)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [draw(translation) for _ in range(3)]
    return affine


@st.composite
def nifti_files(draw):
    """(file name, bytes) of a NIfTI image written by nibabel, maybe then mutated."""
    shape = draw(shapes)
    dtype = np.dtype(draw(dtypes))
    kind = draw(values)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape) * 10.0 ** draw(st.integers(-3, 6))
    if kind == "constant":
        data = np.full(shape, draw(st.sampled_from([0.0, 1.0, -7.5, 1e20])))
    elif kind == "zeros":
        data = np.zeros(shape)
    elif kind in ("integers", "labels"):
        data = rng.integers(0, 5 if kind == "labels" else 1000, size=shape).astype(np.float64)
    elif kind == "nan":
        data.flat[rng.integers(0, data.size)] = np.nan
    elif kind == "inf":
        data.flat[rng.integers(0, data.size)] = np.inf * rng.choice([-1, 1])
    elif kind == "huge":
        data = data * 1e300
    elif kind == "tiny":
        data = data * 1e-300
    elif kind == "extreme" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = rng.choice([info.min, info.max, 0], size=shape).astype(np.float64)
    if dtype.kind == "c":
        array = (data + 1j * rng.normal(size=shape)).astype(dtype)
    elif dtype.kind in "iub":
        with np.errstate(invalid="ignore", over="ignore"):
            array = np.nan_to_num(data, nan=0, posinf=0, neginf=0)
            if dtype.kind != "b":
                info = np.iinfo(dtype)
                array = np.clip(array, info.min, info.max)
            array = array.astype(dtype)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            array = data.astype(dtype)

    sform = draw(affines())
    qform = draw(sometimes(affines(), sform))
    try:
        image = nib.Nifti1Image(array, None)
        header = image.header
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header.set_qform(qform, code=draw(codes))
            header.set_sform(sform, code=draw(codes))
            if draw(sometimes(st.just(True), False, one_in=8)):
                header["pixdim"][1:4] = [draw(st.sampled_from(SPECIAL_SIZES)) for _ in range(3)]
            is_field_like = len(shape) >= 4 and shape[-1] == 3
            header["intent_code"] = draw(sometimes(st.sampled_from(INTENTS), 1007 if is_field_like else 0))
            if draw(sometimes(st.just(True), False, one_in=6)):
                header["scl_slope"] = draw(st.sampled_from(SLOPES))
                header["scl_inter"] = draw(st.sampled_from(INTERS))
            header["xyzt_units"] = draw(sometimes(st.sampled_from([1, 3, 10, 18, 255]), st.sampled_from([0, 2]), one_in=8))
        raw = image.to_bytes()
    except Exception:
        # nibabel itself refuses to write some of these (a dtype NIfTI has no code for, a
        # quaternion from a non-rotation): nothing reaches our loaders from them.
        hypothesis.assume(False)
    gz = draw(st.booleans())
    mutation = draw(sometimes(st.sampled_from(["header bytes", "truncate", "data bytes"]), "none"))
    raw = bytearray(raw)
    if mutation == "header bytes":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, 351))] = draw(st.integers(0, 255))
    elif mutation == "data bytes" and len(raw) > 352:
        raw[draw(st.integers(352, len(raw) - 1))] ^= 0xFF
    raw = bytes(raw)
    if gz:
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    return ("image.nii.gz" if gz else "image.nii"), raw


def _nibabel_reading(path):
    """What nibabel reads: (float64 voxels with scaling applied, affine)."""
    image = nib.load(str(path))
    return np.asarray(image.get_fdata(dtype=np.float64)), np.asarray(image.affine, dtype=np.float64)


def _squeeze(array):
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _check_geometry(affine):
    assert affine.shape == (4, 4) and np.all(np.isfinite(affine))
    sizes = io.voxel_sizes(affine)
    assert np.all(sizes >= io.MIN_VOXEL_SIZE_MM) and np.all(sizes <= io.MAX_VOXEL_SIZE_MM)
    assert abs(np.linalg.det(affine[:3, :3])) > 0
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])


def _itk_affine(path):
    """The affine ITK/ANTs use: nibabel's, but the voxel sizes alone (origin 0, LPS axes) for a
    NIfTI header with neither qform nor sform (checked against antspyx in
    tests/test_header_without_forms.py)."""
    image = nib.load(str(path))
    header = image.header
    if not int(header["qform_code"]) and not int(header["sform_code"]):
        sizes = [abs(float(v)) or 1.0 for v in header["pixdim"][1:4]]
        return np.diag([-sizes[0], -sizes[1], sizes[2], 1.0])
    return np.asarray(image.affine, dtype=np.float64)


def _label_dtype(path):
    """The type a label map keeps: the file's integer type (bool as uint8); int32 for float
    files (int64 when their values do not fit)."""
    image = nib.load(str(path))
    stored = np.dtype(image.get_data_dtype())
    scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
    if stored.kind == "b":
        return np.dtype(np.uint8)
    if stored.kind in "iu" and not scaled:
        return stored
    values = np.rint(image.get_fdata(dtype=np.float64))
    fits = not values.size or (values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max)
    return np.dtype(np.int32 if fits else np.int64)


def _check_volume(volume, path, dtype):
    assert volume.data.ndim == 3 and volume.data.dtype == dtype and volume.data.flags.c_contiguous
    assert np.all(np.isfinite(volume.data))
    assert min(volume.shape) >= io.MIN_AXIS_VOXELS
    _check_geometry(volume.affine)
    data, _ = _nibabel_reading(path)
    np.testing.assert_array_equal(volume.affine, _itk_affine(path))
    data = _squeeze(data)
    assert data.shape == volume.shape
    if dtype.kind in "iu":
        image = nib.load(str(path))
        if np.dtype(image.get_data_dtype()).kind in "iub" and image.dataobj.slope == 1 and image.dataobj.inter == 0:
            exact = _squeeze(np.asarray(image.dataobj))  # integers of any size: compared as stored
            np.testing.assert_array_equal(volume.data, exact.astype(volume.data.dtype))
            assert np.array_equal(volume.data.astype(object), exact.astype(object))
        else:
            np.testing.assert_array_equal(volume.data, np.rint(data))
    else:
        # float32 of nibabel's float64 reading (integers above 2^24 round alike either way).
        np.testing.assert_allclose(volume.data.astype(np.float64), data, rtol=2.0 ** -23, atol=1e-44)


def _check_labels_travel(labels, folder):
    """Warped by whole voxels the labels shift exactly; written, they come back alike."""
    from smgic_rt.geometry import ops

    shift = np.zeros((3, *labels.shape), np.float32)
    shift[0] = 1.0  # out[x] = labels[x + 1]
    warped = ops.warp_labels(np.ascontiguousarray(labels.data, dtype=np.int64)[None], shift)[0]
    expected = np.zeros(labels.shape, np.int64)
    expected[:-1] = labels.data[1:]
    np.testing.assert_array_equal(warped, expected)
    path = Path(folder) / "written_labels.nii.gz"
    io.save_image_atomic(io.make_nifti(labels.data, labels.affine), path)
    back = nib.load(str(path))
    assert np.dtype(back.get_data_dtype()) == labels.data.dtype
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.data)


def _run(loader, *args, **kwargs):
    """The loader's result, or None when it refused with one of our errors; anything else fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HeaderWarning and numpy's warnings are allowed, not errors
        try:
            return loader(*args, **kwargs)
        except OUR_ERRORS:
            return None


@FUZZ_SETTINGS
@given(nifti_files())
def test_loaders_refuse_with_our_errors_or_return_what_nibabel_reads(case):
    name, raw = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(raw)

        volume = _run(io.load_volume, path, name="fuzzed image", allow_constant=True)
        if volume is not None:
            _check_volume(volume, path, np.dtype(np.float32))
            assert volume.source == str(path)

        labels = _run(io.load_label_map, path, name="fuzzed labels")
        if labels is not None:
            _check_volume(labels, path, _label_dtype(path))
            _check_labels_travel(labels, folder)

        like = volume or labels
        if like is not None:
            mask = _run(io.load_mask, path, like=like, name="fuzzed mask")
            if mask is not None:
                # A mask is 0/1 where the file's values are zero/nonzero, on the file's grid.
                assert mask.data.dtype == np.float32 and set(np.unique(mask.data)) <= {0.0, 1.0}
                data, _ = _nibabel_reading(path)
                np.testing.assert_array_equal(mask.data, (_squeeze(data) != 0).astype(np.float32))

        field = _run(transforms.itk_image_to_displacement, path, name="fuzzed transform")
        if field is not None:
            ras, affine = field
            _check_geometry(affine)
            image = nib.load(str(path))
            assert image.shape[3:] in ((1, 3), (3,))
            assert image.shape[3:] == (1, 3) or int(image.header["intent_code"]) in (1006, 1007)
            assert ras.dtype == np.float32 and ras.shape == (3, *image.shape[:3]) and np.all(np.isfinite(ras))
            data, _ = _nibabel_reading(path)
            np.testing.assert_array_equal(affine, _itk_affine(path))
            data = data.reshape(*image.shape[:3], 3)
            for c, sign in enumerate((-1.0, -1.0, 1.0)):
                np.testing.assert_array_equal(ras[c], (sign * data[..., c]).astype(np.float32))


def test_the_fuzzer_reaches_both_outcomes():
    """The search is not vacuous: some inputs are accepted by each loader and others refused."""
    outcomes = {"volume": set(), "labels": set(), "field": set()}

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(nifti_files())
    def probe(case):
        name, raw = case
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(raw)
            outcomes["volume"].add(_run(io.load_volume, path, allow_constant=True) is not None)
            outcomes["labels"].add(_run(io.load_label_map, path) is not None)
            outcomes["field"].add(_run(transforms.itk_image_to_displacement, path) is not None)

    probe()
    assert outcomes["volume"] == {True, False}
    assert outcomes["labels"] == {True, False}
    assert False in outcomes["field"]


# ------------------------------------------------------------------ the API's options

odd_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 70),
                        st.sampled_from([0, 0.0, -1, -0.5, np.nan, np.inf, -np.inf, True, "1", None]))


def _maybe(usual, one_in=3):
    return sometimes(odd_numbers, usual, one_in=one_in)


# How often each field is odd, drawn per example: with some 25 fields, one odd field in three
# would leave almost no options accepted, and the run after acceptance untested. Each field alone
# is fuzzed by test_each_field_alone_refuses_or_holds_a_finite_value.
odd_rates = st.sampled_from([3, 12, 60])


def _level_or_not(level, rate):
    """A level's constructor arguments now and then replaced by something that is not a level."""
    return sometimes(st.sampled_from([(4, 2), 4, None, "level"]), level, one_in=4 * rate)


@st.composite
def refine_levels(draw, rate=3):
    """Level arguments, usually coarse to fine powers of 2 from 8 to 1/2, any field odd about once in `rate`."""
    factors = draw(sometimes(st.lists(st.sampled_from([0, 0.5, 0.25, 1, 2, 3, 4, 8, -2, 2.0, 0.75]), max_size=4),
                             st.lists(st.sampled_from([8, 4, 2, 1, 0.5]), min_size=1, max_size=4, unique=True)
                             .map(lambda fs: sorted(fs, reverse=True)), one_in=rate))
    level = st.fixed_dictionaries({
        "iterations": sometimes(st.one_of(st.integers(-2, 4), odd_numbers), 2, one_in=rate),
        "radius": _maybe(1, rate), "fluid_sigma": _maybe(1.5, rate), "reg": _maybe(0.05, rate),
        "symmetric": sometimes(st.sampled_from([0, 1, "yes", None]), st.booleans(), one_in=rate),
        "gradient": sometimes(st.sampled_from(["sobel", None, 1]), st.sampled_from(["window", "exact"]), one_in=rate),
    })
    levels = []
    for factor in factors:
        arguments = dict(draw(level), factor=draw(_maybe(factor, rate)))
        levels.append(draw(_level_or_not(st.just(arguments), rate)))
    return levels


@st.composite
def refine_options(draw):
    rate = draw(odd_rates)
    kwargs = dict(
        levels=draw(refine_levels(rate)), as_list=draw(sometimes(st.just(True), False, one_in=4 * rate)),
        elastic_sigma=draw(_maybe(0.0, rate)), step=draw(_maybe(0.5, rate)), min_step=draw(_maybe(0.02, rate)),
        plateau=draw(_maybe(1e-4, rate)), steps=draw(_maybe(7, rate)), eps=draw(_maybe(1e-3, rate)),
        boundary=draw(_maybe(2, rate)), antialias=draw(_maybe(0.5, rate)),
        max_seconds=draw(sometimes(odd_numbers, None, one_in=rate)),
    )
    return kwargs


def _made(cls, arguments):
    """`cls(**arguments)` for a dict, the argument itself for anything else (not a level)."""
    return cls(**arguments) if isinstance(arguments, dict) else arguments


def _options_or_refusal(options_cls, level_cls, kwargs, names):
    """`options_cls` built from drawn `kwargs` (its levels made of `level_cls`, as a list or a
    tuple), or None when refused, the refusal naming one of the fields `names`."""
    kwargs = dict(kwargs)
    as_list = kwargs.pop("as_list")
    try:
        levels = [_made(level_cls, arguments) for arguments in kwargs.pop("levels")]
        return options_cls(levels=levels if as_list else tuple(levels), **kwargs)
    except ValueError as error:
        assert _names_a_field(error, names), error
        return None


def _names_a_field(error, names) -> bool:
    """The message starts with the field refused (``step``, ``level reg``, ``affine levels``, ...)."""
    return any(str(error).startswith(f"{name} must") for name in names)


def _field_names(cls, prefix="") -> list:
    import dataclasses

    return [prefix + f.name for f in dataclasses.fields(cls)]


def _finite(value, low, strict) -> bool:
    return not isinstance(value, bool) and np.isfinite(value) and (value > low if strict else value >= low)


def _finite_in_range(options) -> None:
    from smgic_rt.methods.refine import MAX_SIGMA_VOXELS, Level

    assert isinstance(options.levels, tuple) and options.levels
    for level in options.levels:
        assert isinstance(level, Level)
        assert _finite(level.factor, 0, True) and level.factor >= 0.5 and float(np.log2(level.factor)).is_integer()
        assert isinstance(level.iterations, int) and not isinstance(level.iterations, bool) and level.iterations >= 0
        assert isinstance(level.radius, int) and 1 <= level.radius <= MAX_SIGMA_VOXELS
        assert _finite(level.fluid_sigma, 0, False) and level.fluid_sigma <= MAX_SIGMA_VOXELS
        assert _finite(level.reg, 0, False)
        assert isinstance(level.symmetric, bool) and level.gradient in ("window", "exact")
    factors = [level.factor for level in options.levels]
    assert factors == sorted(set(factors), reverse=True)  # coarse to fine, each grid once
    for name, low, strict in (("elastic_sigma", 0, False), ("step", 0, True), ("min_step", 0, True),
                              ("plateau", 0, False), ("eps", 0, True), ("antialias", 0, False)):
        assert _finite(getattr(options, name), low, strict), name
    assert options.min_step <= options.step
    assert isinstance(options.steps, int) and 1 <= options.steps <= 30
    assert isinstance(options.boundary, int) and options.boundary >= 0
    assert options.max_seconds is None or (np.isfinite(options.max_seconds) and options.max_seconds > 0)


@FUZZ_SETTINGS
@given(refine_options(), st.integers(0, 2**32 - 1))
def test_refine_options_refuse_or_run(kwargs, seed):
    import dataclasses

    from smgic_rt.methods.refine import Level, RefineOptions, refine_velocity

    options = _options_or_refusal(RefineOptions, Level, kwargs,
                                  _field_names(RefineOptions) + _field_names(Level, "level "))
    if options is None:
        return
    _finite_in_range(options)
    # refine_velocity runs the levels on the grid it is given (the finer grids have their own
    # images, made by the RefineStage): those levels, two iterations each at most.
    levels = tuple(dataclasses.replace(level, iterations=min(level.iterations, 2)) for level in options.model_grid_levels)
    if not levels:
        return
    rng = np.random.default_rng(seed)
    fixed = rng.random((10, 11, 9)).astype(np.float32)
    moving = np.roll(fixed, 1, axis=int(rng.integers(0, 3)))
    result = refine_velocity(fixed, moving, options=dataclasses.replace(options, levels=levels, max_seconds=None))
    assert result.velocity.shape == (3, 10, 11, 9) and np.all(np.isfinite(result.velocity))


@st.composite
def affine_options(draw):
    rate = draw(odd_rates)
    resolutions = draw(sometimes(st.lists(_maybe(4.0, rate), max_size=3), [8.0, 4.0], one_in=rate))
    counts = sometimes(st.one_of(st.integers(-2, 40), odd_numbers), 10, one_in=rate)
    levels = [draw(_level_or_not(st.just(dict(resolution_mm=resolution, rigid_iterations=draw(counts),
                                               affine_iterations=draw(counts))), rate))
              for resolution in resolutions]
    kwargs = dict(levels=levels, as_list=draw(sometimes(st.just(True), False, one_in=4 * rate)),
                  radius_mm=draw(_maybe(60.0, rate)),
                  moments=draw(sometimes(st.sampled_from([0, 1, "yes", None]), st.booleans(), one_in=rate)))
    return kwargs


@FUZZ_SETTINGS
@given(affine_options())
def test_affine_options_refuse_or_hold_finite_values(kwargs):
    from smgic_rt.methods.affine import AffineLevel, AffineOptions

    options = _options_or_refusal(AffineOptions, AffineLevel, kwargs,
                                  ["affine levels", "radius_mm", "moments"] + _field_names(AffineLevel, "affine level "))
    if options is None:
        return
    assert isinstance(options.levels, tuple) and options.levels
    for level in options.levels:
        assert isinstance(level, AffineLevel) and _finite(level.resolution_mm, 0, True)
        for name in ("rigid_iterations", "affine_iterations"):
            count = getattr(level, name)
            assert isinstance(count, int) and not isinstance(count, bool) and count >= 0, name
    assert list(options.resolutions) == sorted(set(options.resolutions), reverse=True)
    assert _finite(options.radius_mm, 0, True) and isinstance(options.moments, bool)


FIELDS_ALONE = ([("Level", name) for name in ("factor", "iterations", "radius", "fluid_sigma", "reg", "symmetric",
                                              "gradient")]
                + [("RefineOptions", name) for name in ("elastic_sigma", "step", "min_step", "plateau", "steps", "eps",
                                                        "boundary", "antialias", "max_seconds")]
                + [("AffineLevel", name) for name in ("resolution_mm", "rigid_iterations", "affine_iterations")]
                + [("AffineOptions", name) for name in ("radius_mm", "moments")])


@pytest.mark.parametrize("owner,name", FIELDS_ALONE)
def test_each_field_alone_refuses_or_holds_a_finite_value(owner, name):
    """Every field but one usual: each field's check is reached alone, so a missing one lets an
    odd value into options that the checks above then find."""
    from smgic_rt.methods.affine import AffineLevel, AffineOptions
    from smgic_rt.methods.refine import Level, RefineOptions

    def make(value):
        if owner == "Level":
            return RefineOptions(levels=(Level(**(dict(factor=4, iterations=2) | {name: value})), Level(1, 2)))
        if owner == "RefineOptions":
            return RefineOptions(**{name: value})
        if owner == "AffineLevel":
            return AffineOptions(levels=(AffineLevel(**(dict(resolution_mm=8.0, rigid_iterations=10) | {name: value})),))
        return AffineOptions(**{name: value})

    names = (_field_names(RefineOptions) + _field_names(Level, "level ") + ["affine levels", "radius_mm", "moments"]
             + _field_names(AffineLevel, "affine level "))

    @settings(max_examples=max(EXAMPLES // 4, 50), deadline=None, derandomize=True, database=None)
    @given(odd_numbers)
    def check(value):
        try:
            options = make(value)
        except ValueError as error:
            assert _names_a_field(error, names), error
            return
        if owner.startswith("Affine"):
            level = options.levels[0]
            assert _finite(level.resolution_mm, 0, True) and _finite(options.radius_mm, 0, True)
            assert all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                       for n in (level.rigid_iterations, level.affine_iterations))
            assert isinstance(options.moments, bool)
        else:
            _finite_in_range(options)

    check()
