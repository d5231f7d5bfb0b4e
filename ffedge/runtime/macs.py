"""Multiply-accumulates of goodness over all labels, counted from the manifest (device side).

A conv layer performs ``out_C * H * W * in_C * k * k`` MACs per hypothesis (H, W its
input's: padding is 'same', pooling comes after the conv), and every image goes through
the net once per label (K hypotheses). A bundle with a shared graph runs layer 0's
image channels once per image and adds the label channels' part, precomputed per label:
its layer 0 costs ``out_C * H * W * C_img * k * k`` per image. Normalization, pooling
and goodness are not counted (no MACs of a GEMM).
"""

from __future__ import annotations

from ffedge.bundle.manifest import LayerEntry, Manifest


def has_shared_graph(m: Manifest) -> bool:
    """Whether the manifest names a shared layer-0 graph (``net_shared.onnx``)."""
    return m.shared is not None


def layer_macs(layer: LayerEntry, in_channels: int | None = None) -> int | None:
    """MACs of one conv layer on one input (``in_channels``: only that many of its input channels); None when the
    manifest does not give its kernel."""
    if layer.kernel is None:
        return None
    c_in, h, w = layer.in_shape
    return layer.out_shape[0] * h * w * (c_in if in_channels is None else in_channels) * layer.kernel**2


def macs_per_image(m: Manifest, shared_layer0: bool = False) -> int | None:
    """MACs of goodness over all K labels for one image: every layer per hypothesis, or (``shared_layer0``) layer 0's
    image channels once and the other layers per hypothesis. None when a layer's kernel is not in the manifest."""
    k = len(m.classes)
    per = [layer_macs(layer) for layer in m.layers]
    if any(v is None for v in per):
        return None
    total = k * sum(v for v in per[1:] if v is not None)
    if shared_layer0:
        first = layer_macs(m.layers[0], m.input.shape[0])
        assert first is not None
        return total + first
    return total + k * (per[0] or 0)
