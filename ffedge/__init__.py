"""ffedge: Forward-Forward CNNs, quantization-aware, for edge devices.

The device side (this package minus ``ffedge.train``) needs only numpy,
onnxruntime, typer/rich and pillow. The training side lives in
``ffedge.train`` and needs the ``[train]`` extra.
"""

__version__ = "0.1.0"


def finetune(bundle, data, out=None, **options):  # type: ignore[no-untyped-def]
    """Fine-tune a bundle on labelled data, as ``ffedge finetune`` (see :class:`ffedge.finetuning.FinetuneConfig`)."""
    from ffedge.finetuning.loop import FinetuneConfig, finetune as _finetune

    return _finetune(bundle, FinetuneConfig(data=data, **options), out=out)
