"""Deployment graphs: ONNX (ONNX Runtime), TensorRT-flavoured ONNX, DeepStream files."""
