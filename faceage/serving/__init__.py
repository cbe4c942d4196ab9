"""Serving: photos to ages, annotated copies, the MLflow pyfunc model, ONNX and TorchScript export."""
