"""PyTorch SM-GICNet: model, losses, data pipeline and progressive training.

Run as ``python -m training --help`` from a source checkout. The runtime (`smgic_rt`) never imports
this package; `export/` turns its checkpoints into model bundles.
"""
