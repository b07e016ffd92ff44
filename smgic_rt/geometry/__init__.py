"""Voxel and world geometry: the `_C` kernels' wrappers (ops), transforms and fields, filters."""
