"""ffedge: Forward-Forward CNNs, quantization-aware, for edge devices.

The device side (this package minus ``ffedge.train``) needs only numpy,
onnxruntime, typer/rich and pillow. The training side lives in
``ffedge.train`` and needs the ``[train]`` extra.
"""

__version__ = "0.1.0"
