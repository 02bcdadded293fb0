"""In-process stand-ins for libraries the test machines lack (TensorRT, cuda-python, ...)."""
