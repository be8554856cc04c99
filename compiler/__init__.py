"""The ONNX compiler: import, passes, calibration, lowering, precision policy, code generation."""
