"""Checkpoint -> model bundle (per-level ONNX + config.json) -> TensorRT engines.

Run as ``python -m export {bundle,tensorrt,trtexec-cmd} ...`` from a source checkout; see
``python -m export --help``.
"""
