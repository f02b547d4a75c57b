"""Rendering: batched inference and ONNX runtime for the U-Net."""
