"""Frontends turn a source model into an `onnx_ir.Model` ready for analysis."""
from graphprune.frontends.onnx import load_onnx, normalize, save_onnx

__all__ = ["load_onnx", "normalize", "save_onnx"]
