"""The TensorRT operator check: real ONNX exports with and without GridSample."""

import json

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export.opcheck import _OPS_FILE, graph_op_types, tensorrt_supported_ops, unsupported_ops  # noqa: E402


class ConvResize(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(3, 3, 2, stride=2)

    def forward(self, image):
        x = torch.nn.functional.leaky_relu(self.conv(image), 0.2)
        x = self.up(x)
        return torch.nn.functional.interpolate(x, scale_factor=0.5, mode="trilinear", align_corners=False)


class Warp(torch.nn.Module):
    def forward(self, image, grid):
        return torch.nn.functional.grid_sample(image, grid, align_corners=True)


def _export(module, args, path):
    torch.onnx.export(module, args, str(path), opset_version=20, dynamo=False)
    return onnx.load(str(path))


def test_data_file_is_consistent():
    data = json.loads(_OPS_FILE.read_text())
    supported = tensorrt_supported_ops()
    assert {"Conv", "ConvTranspose", "Resize", "Concat", "Tanh", "LeakyRelu", "Add", "Mul"} <= supported
    assert "GridSample" in data["excluded"] and "GridSample" not in supported


def test_conv_resize_graph_passes(tmp_path):
    model = _export(ConvResize(), (torch.rand(1, 2, 8, 8, 8),), tmp_path / "conv.onnx")
    ops = {op for _, op in graph_op_types(model)}
    assert {"Conv", "ConvTranspose", "Resize"} <= ops
    assert unsupported_ops(model) == []


def test_grid_sample_graph_is_flagged(tmp_path):
    grid = torch.rand(1, 4, 4, 4, 3) * 2 - 1
    model = _export(Warp(), (torch.rand(1, 1, 4, 4, 4), grid), tmp_path / "warp.onnx")
    assert unsupported_ops(model) == ["GridSample"]
    assert unsupported_ops(tmp_path / "warp.onnx") == ["GridSample"]
