"""`ffedge export` and `ffedge verify`: training run -> bundle, and parity of the two."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ffedge.cli.app import app, choice, err_console, print_json, say
from ffedge.errors import EXIT_SIGINT, EXIT_SIGTERM, CheckFailed, FFEdgeError, one_line

EXPORT_FORMATS = ("onnx", "qonnx")
ExportFormat = choice(EXPORT_FORMATS)


def parity_lines(report: dict[str, Any]) -> list[str]:
    """Human-readable parity report."""
    lines = [
        f"parity on {report['samples']} held-out images vs {report['reference']}:",
        f"  goodness, all labels: agreement {report['agreement']:.2%}, accuracy torch "
        f"{report['torch_accuracy']:.2%} / bundle {report['bundle_accuracy']:.2%}",
        f"  softmax head:         agreement {report['head_agreement']:.2%}, accuracy torch "
        f"{report['head_torch_accuracy']:.2%} / bundle {report['head_bundle_accuracy']:.2%}",
    ]
    for i, d in enumerate(report["layers"]):
        if "max_steps" in d:
            lines.append(
                f"  layer {i}: max difference {d['max_steps']:.2f} output steps, "
                f"{d['frac_off_by_more_than_half_step']:.4%} of values off by > 0.5 step"
            )
        else:
            lines.append(f"  layer {i}: max difference {d['max_abs']:.3g} (relative {d['max_rel']:.3g})")
    return lines


def qonnx_lines(report: dict[str, Any]) -> list[str]:
    """Human-readable report of the QONNX executor check."""
    lines = [
        f"qonnx check on {report['samples']} held-out images x every label:",
        f"  {report['executor']} vs the {report['reference']}",
        f"  goodness, all labels: agreement {report['agreement']:.2%}, accuracy qonnx "
        f"{report['qonnx_accuracy']:.2%} / bundle {report['bundle_accuracy']:.2%}",
        f"  summed goodness: max difference {report['max_goodness_diff']:.3g} (largest goodness {report['max_goodness']:.3g})",
    ]
    for i, d in enumerate(report["layers"]):
        lines.append(
            f"  layer {i}: max goodness difference {d['max_goodness_diff']:.3g} (largest {d['max_goodness']:.3g})"
        )
    return lines


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="Training run folder (made by ffedge train)."),
    int8: bool = typer.Option(
        False, "--int8", help="Export int8 (QCDQ, integer convolutions in onnxruntime). The default."
    ),
    fp32: bool = typer.Option(False, "--fp32", help="Export the float model the same way, for comparison."),
    fmt: ExportFormat = typer.Option(
        "onnx",
        "--format",
        help="onnx: the ONNX bundle ffedge's runtime runs. qonnx: one QONNX model per FF layer for FINN and qonnx "
        "(quantized runs; needs the qonnx package), checked with qonnx's executor against the int8 bundle.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder (default: export/RUN_NAME-int8, -fp32 or -qonnx)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace --out if it is a bundle or QONNX file set ffedge wrote (only after the new one passed its checks).",
    ),
    verify_samples: int = typer.Option(
        1000,
        "--verify-samples",
        help="Held-out images for the parity check (qonnx: for the executor check; 0 skips it).",
    ),
    min_agreement: float = typer.Option(
        0.99,
        "--min-agreement",
        help="Fail (exit 1, nothing written) below this top-1 agreement with the torch model (qonnx: with the int8 "
        "bundle).",
    ),
    master: bool = typer.Option(
        False,
        "--master",
        help="Also store the float master weights (master.npz) and replay examples (replay.npz), which on-device fine-tuning needs.",
    ),
    replay: int = typer.Option(
        500,
        "--replay",
        help="With --master: class-balanced training examples stored for rehearsal during fine-tuning (0: none).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the bundle's manifest (with the parity report) and its folder as JSON."
    ),
) -> None:
    """Export a run to a bundle (one ONNX file per FF layer, the softmax head, label arrays, manifest.json), or with
    --format qonnx to QONNX files for FINN."""
    from ffedge.fsutil import Terminated, sigterm_as_interrupt
    from ffedge.progress import RichReporter

    if int8 and fp32:
        raise FFEdgeError("--int8 and --fp32 exclude each other")
    if fmt == "qonnx" and (fp32 or master):
        raise FFEdgeError(
            f"--format qonnx exports the quantized layers only: {'--fp32' if fp32 else '--master'} is for --format onnx"
        )
    precision = "fp32" if fp32 else "int8"
    dest = out or Path("export") / f"{run_dir.resolve().name}-{'qonnx' if fmt == 'qonnx' else precision}"
    checks = {
        "force": force,
        "verify_samples": verify_samples,
        "min_agreement": min_agreement,
        "reporter": RichReporter(log_to_stderr=as_json),
    }
    try:
        with sigterm_as_interrupt():
            if fmt == "qonnx":
                from ffedge.train.export_qonnx import export_qonnx_bundle

                m = export_qonnx_bundle(run_dir, dest, **checks)
            else:
                from ffedge.train.export import export_bundle

                m = export_bundle(run_dir, dest, precision=precision, master=master, replay=replay, **checks)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        err_console.print(one_line(f"{what}: nothing was written to {dest}"), soft_wrap=True)
        raise typer.Exit(EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT) from None
    if as_json:
        print_json({"bundle": str(dest), "format": fmt, "precision": precision, "manifest": m})
        return
    if fmt == "qonnx":
        for i, layer in enumerate(m["layers"]):
            say(f"layer {i}: {layer['file']}, QONNX with {layer['ops'].get('Quant', 0)} Quant nodes")
        for line in qonnx_lines(m["check"]) if "check" in m else []:
            say(line)
        say(f"wrote {dest} (qonnx)")
        return
    for i, layer in enumerate(m["layers"]):
        fused = {k: v for k, v in layer["ort_ops"].items() if k.startswith(("QLinear", "ConvInteger", "MatMulInteger"))}
        say(f"layer {i}: {layer['file']}, integer kernels at EXTENDED optimization: {fused or 'none'}")
    if "parity" in m:
        for line in parity_lines(m["parity"]):
            say(line)
    say(f"wrote {dest} ({precision})")


@app.command("verify")
def verify(
    bundle: Path = typer.Argument(..., help="Bundle folder, or a QONNX file set (export --format qonnx)."),
    run_dir: Path = typer.Argument(..., help="The training run it was exported from."),
    samples: int = typer.Option(1000, "--samples", help="Held-out images to compare on."),
    min_agreement: float = typer.Option(0.99, "--min-agreement", help="Fail (exit 1) below this top-1 agreement."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a bundle against its training run: per-layer differences and top-1 agreement on held-out data. A QONNX
    file set is run under qonnx's executor and compared with the run's int8 bundle."""
    from ffedge.progress import RichReporter
    from ffedge.train.qonnx_check import is_qonnx_folder

    if is_qonnx_folder(bundle):
        from ffedge.train.qonnx_check import qonnx_report

        report = qonnx_report(bundle, run_dir, samples=samples, reporter=RichReporter(log_to_stderr=as_json))
        lines = qonnx_lines(report)
    else:
        from ffedge.train.parity import parity_report

        report = parity_report(bundle, run_dir, samples=samples, reporter=RichReporter(log_to_stderr=as_json))
        lines = parity_lines(report)
    if as_json:
        print_json(report)
    else:
        for line in lines:
            say(line)
    if report["agreement"] < min_agreement:
        raise CheckFailed(f"agreement {report['agreement']:.2%} is below --min-agreement {min_agreement:.2%}")
