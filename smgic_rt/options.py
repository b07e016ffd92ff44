"""The checks that the API, the CLIs and batch share, and options that merge field by field.

The stages' options are frozen dataclasses decorated with `records_given`: each remembers the
fields it was given, so that a preset and options given explicitly merge field by field
(`merged`): ``RefineOptions(max_seconds=5)`` over the accurate preset changes only the time limit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import numbers

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_choice", "records_given", "given_fields", "merged",
           "with_given", "BACKENDS", "STAGE_MODES", "METRICS", "QUALITIES", "check_mode", "check_registrar_options"]

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
STAGE_MODES = ("auto", "on", "off")
# What the affine stage and the refinement compare images by (smgic_rt.methods.similarity).
METRICS = ("ncc", "mind")
# The presets of smgic_rt.presets, named here so that a command line is parsed without the stages.
QUALITIES = ("fast", "accurate")


def is_int(value) -> bool:
    """An integer (numpy's too) that is not a bool: Python counts True as 1, a count of ours never does."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (numpy's too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _expected(kind: str, minimum, maximum, positive: bool, allow_none: bool) -> str:
    """"a positive int", "an int >= 0", "a finite number in [0, 1] or None", ..."""
    if positive or (kind == "int" and minimum == 1 and maximum is None):
        words = f"a positive {kind}"
    elif minimum is not None and maximum is not None:
        words = f"{'an int' if kind == 'int' else 'a finite number'} in [{minimum}, {maximum}]"
    else:
        words = ("an int" if kind == "int" else "a finite number") + (f" >= {minimum}" if minimum is not None else "") \
            + (f" <= {maximum}" if maximum is not None else "")
    return words + (" or None" if allow_none else "")


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None, allow_none=False):
    """`value` when it is an int in [minimum, maximum] (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_expected('int', minimum, maximum, False, allow_none)}, got {value!r}")
    return value


def check_number(value, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, allow_none=False):
    """`value` when it is a finite real number in range (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok or (positive and not value > 0):
        raise ValueError(f"{name} must be {_expected('number', minimum, maximum, positive, allow_none)}, got {value!r}")
    return value


def check_choice(value, name: str, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_mode(value, name: str) -> str:
    """A stage mode from "auto" / "on" / "off" (or a bool)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return check_choice(value, name, STAGE_MODES)


def records_given(cls):
    """Make the dataclass `cls` remember which fields its constructor was given (`given_fields`)."""
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))

    cls.__init__ = __init__
    return cls


def given_fields(options) -> frozenset:
    """The fields `options` was made with (every field for an object of no `records_given` class)."""
    given = getattr(options, "_given", None)
    return frozenset(f.name for f in dataclasses.fields(options)) if given is None else given


def merged(preset, explicit):
    """`preset` with the fields `explicit` was given taken from it; `explicit` None: `preset`."""
    if explicit is None:
        return preset
    if type(explicit) is not type(preset):
        raise TypeError(f"options must be a {type(preset).__module__}.{type(preset).__name__}, "
                        f"got {type(explicit).__name__}")
    return dataclasses.replace(preset, **{name: getattr(explicit, name) for name in given_fields(explicit)})


def with_given(options, cls, **fields):
    """A `cls` given the fields `options` was given (None: none) and `fields` besides, so that it
    still merges field by field over a preset."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__module__}.{cls.__name__}, got {type(options).__name__}")
    given = {} if options is None else {name: getattr(options, name) for name in given_fields(options)}
    return cls(**{**given, **fields})


def check_registrar_options(*, backend="auto", quality="fast", affine="auto", network="auto", refine="auto",
                            threads=None, metric=None) -> dict:
    """The Registrar's arguments checked and normalised: one check for the API, the CLIs and batch
    (batch calls it before any worker starts)."""
    check_choice(backend, "backend", BACKENDS)
    if metric is not None:
        check_choice(metric, "metric", METRICS)
    check_choice(quality, "quality", QUALITIES)
    if is_number(refine):
        raise ValueError(f"refine must be one of {list(STAGE_MODES)}, got {refine!r}; the refinement's budget "
                         "is RefineOptions(levels=...) (or max_seconds=..., a wall-clock limit)")
    return {"backend": backend, "quality": quality, "affine": check_mode(affine, "affine"),
            "network": check_mode(network, "network"), "refine": check_mode(refine, "refine"), "metric": metric,
            # Threads beyond the machine's only wait on each other.
            "threads": check_int(threads, "threads", minimum=1, maximum=os.cpu_count() or 1, allow_none=True)}
