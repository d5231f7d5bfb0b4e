"""Export a training run to a bundle: one ONNX file per FF layer, the head, label arrays, manifest.

:func:`export_bundle` is the pipeline: check, write the graphs
(:mod:`ffedge.train.export_graph`), the other files and the manifest
(:mod:`ffedge.train.export_artifacts`), check parity with the torch model, move
into place. The bundle is built in a temporary folder beside ``out`` and renamed
into place only after the parity check passed, so a failed export never leaves a
half-written bundle; which ``out`` may be replaced is :mod:`ffedge.train.bundle_folder`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ffedge.bundle import MANIFEST, PRECISIONS
from ffedge.errors import CheckFailed, FFEdgeError
from ffedge.fsutil import replace_folder
from ffedge.options import check_float, check_int
from ffedge.bundle.manifest import write_manifest
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.bundle_folder import bundle_problem, check_bundle_out
from ffedge.train.export_artifacts import (
    DEFAULT_REPLAY,
    build_manifest,
    hash_files,
    write_finetune_files,
    write_label_arrays,
)
from ffedge.train.export_graph import write_graphs
from ffedge.train.export_shared import write_shared
from ffedge.train.export_topk import write_topk
from ffedge.train.model import FFNet, float_copy
from ffedge.train.run_files import load_run
from ffedge.train.run_folder import temp_folder_beside

# Export fails below this top-1 agreement between the torch model and the bundle
# (see export/README.md: one-step rounding differences flip well under 0.5% of
# predictions; a broken export (saturating kernels, wrong scales) flips several %).
DEFAULT_MIN_AGREEMENT = 0.99


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    precision: str = "int8",
    force: bool = False,
    verify_samples: int = 1000,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    reporter: Reporter | None = None,
    master: bool = False,
    replay: int = DEFAULT_REPLAY,
) -> dict[str, Any]:
    """Export ``run_dir`` to the bundle folder ``out``; returns the manifest (with the parity report).

    ``master`` adds ``master.npz``: the float master weights that on-device
    fine-tuning (``ffedge finetune``) trains and re-quantizes, and ``replay.npz``:
    ``replay`` class-balanced training examples it rehearses so that the bundle
    does not forget its training data (0: none).
    """
    rep = reporter or QuietReporter()
    run_dir, out = Path(run_dir), Path(out)
    cfg, net = load_for_export(run_dir, out, precision, force, verify_samples, min_agreement, replay)
    model = net if precision == "int8" else float_copy(net)
    tmp = temp_folder_beside(out)
    try:
        layers, fused = write_graphs(model, cfg, tmp, precision, rep)
        channels = int(cfg["input"]["shape"][0])
        shared = write_shared(tmp, cfg["encoding"], channels)
        topk, head_net = write_topk(tmp, cfg["encoding"], channels, model.head_layers) if shared else (None, None)
        label_arrays = write_label_arrays(cfg["encoding"], tmp)
        extra = write_finetune_files(model, cfg, tmp, replay) if master else {}
        manifest = build_manifest(
            cfg, model, precision, run_dir, hash_files(tmp), layers, label_arrays, fused, shared, topk, head_net
        )
        manifest = write_manifest(tmp / MANIFEST, {**manifest, **extra}).to_dict()  # checked as every reader checks it
        if verify_samples:
            manifest = _verify(tmp, run_dir, out, manifest, (cfg, net), verify_samples, min_agreement, rep)
        replace_folder(tmp, out, bundle_problem)  # an old bundle is removed only after (if it still is a bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_for_export(
    run_dir: Path,
    out: Path,
    precision: str,
    force: bool,
    verify_samples: int,
    min_agreement: float,
    replay: int,
    unquantized_hint: str = "export it with --fp32",
) -> tuple[dict[str, Any], FFNet]:
    """Check the options and ``out``, and load the run (which must be quantized for int8; ``unquantized_hint``
    ends the error otherwise)."""
    if precision not in PRECISIONS:
        raise FFEdgeError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    cfg, net = load_run(run_dir)
    if precision == "int8" and not cfg["model"]["quant"]:
        raise FFEdgeError(f"{run_dir} was trained without quantization (--no-quant): {unquantized_hint}")
    check_float(min_agreement, "--min-agreement", 0.0, 1.0)
    check_int(verify_samples, "--verify-samples", 0)
    check_int(replay, "--replay", 0)
    check_bundle_out(out, force)
    return cfg, net


def _verify(
    tmp: Path,
    run_dir: Path,
    out: Path,
    manifest: dict[str, Any],
    cfg_net: tuple[dict[str, Any], FFNet],
    samples: int,
    min_agreement: float,
    reporter: Reporter,
) -> dict[str, Any]:
    """Check the bundle in ``tmp`` against the torch model; record the report in the manifest, fail below ``min_agreement``."""
    from ffedge.train.parity import parity_report  # looked up at call time (tests replace it)

    report = parity_report(tmp, run_dir, samples=samples, reporter=reporter, cfg_net=cfg_net)
    manifest["parity"] = report
    manifest = write_manifest(tmp / MANIFEST, manifest).to_dict()
    if report["agreement"] < min_agreement:
        raise CheckFailed(
            f"parity check failed: the bundle agrees with the torch model on {report['agreement']:.2%} of "
            f"{report['samples']} held-out images (needs {min_agreement:.2%}); nothing was written to {out}"
        )
    return manifest
