"""`ffedge info`: what a bundle holds, after verifying and loading every file (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ffedge.cli.app import app, print_json, say, shown
from ffedge.errors import EXIT_FAILED

if TYPE_CHECKING:
    from ffedge.bundle.manifest import Manifest

# Keys of every label encoding's config (ffedge.labels.base.LabelEncoding.to_config) that are not its parameters.
ENCODING_FRAME_KEYS = ("name", "version", "num_classes", "image_shape")


@app.command("info")
def info(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and checks as JSON."),
) -> None:
    """What a bundle holds (classes, input, label encoding, layers, bits, sizes), after verifying and loading every file.

    Exit 1 when a file fails its sha256 (a failed check: the report says which); a bundle that cannot be read,
    or a file that does not load or does not fit the manifest, is a one-line error (exit 2).
    """
    from ffedge.bundle import MANIFEST, check_files, check_paths, read_manifest
    from ffedge.bundle.update import versions
    from ffedge.errors import FFEdgeError
    from ffedge.runtime import load_and_check

    m = read_manifest(bundle)
    check_paths(bundle, m)
    try:
        check_files(bundle, m)
        status = "ok (every file matches its sha256)"
    except FFEdgeError as e:
        status = f"FAILED: {e}"
    checked = load_and_check(bundle, verified=True) if status.startswith("ok") else {}
    sizes = {n: (bundle / n).stat().st_size for n in m.files if (bundle / n).is_file()}
    total = sum(sizes.values()) + (bundle / MANIFEST).stat().st_size
    history = versions(bundle)
    if as_json:
        print_json(
            {
                "manifest": m.to_dict(),
                "checksums": status,
                "loaded": checked,
                "sizes": sizes,
                "total_bytes": total,
                "versions": history,
            }
        )
    else:
        _print_info(bundle, m, sizes, total, history, status, checked)
    if not status.startswith("ok"):
        raise typer.Exit(EXIT_FAILED)


def _short(value: object, items: int = 3, depth: int = 0) -> str:
    """A config value in a few characters: floats to 6 significant digits, lists cut after ``items`` (and 3 levels deep)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, (list, tuple)):
        if depth >= 3:
            return "[...]"
        if len(value) > items and all(isinstance(v, (int, float, str)) and v == value[0] for v in value):
            return f"[{_short(value[0], items, depth + 1)} x{len(value)}]"
        parts = [_short(v, items, depth + 1) for v in value[:items]]
        return "[" + ", ".join(parts) + (f", ... ({len(value)} values)]" if len(value) > items else "]")
    text = shown(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encoding_params(enc: dict[str, Any]) -> str:
    """The parameters a bundle's label encoding config holds (whatever its encoding stores), as ``key=value, ...``."""
    return ", ".join(f"{shown(k)}={_short(v)}" for k, v in enc.items() if k not in ENCODING_FRAME_KEYS)


def _print_info(
    bundle: Path,
    m: "Manifest",
    sizes: dict[str, int],
    total: int,
    history: list[dict[str, Any]],
    status: str,
    checked: dict[str, str],
) -> None:
    """The text form of ``ffedge info``."""
    from ffedge.cli.table import Table

    c, h, w = m.input.shape
    enc = m.encoding
    say(
        f"bundle {shown(str(bundle))}: format {m.format} v{m.version}, {m.precision}, made {shown(m.created or '?')} "
        f"by ffedge {shown(m.ffedge_version or '?')}"
    )
    say(f"classes ({len(m.classes)}): {', '.join(map(shown, m.classes))}")
    say(f"input: {c}x{h}x{w} pixels, mean {m.input.mean}, std {m.input.std}")
    say(f"labels: {shown(enc.get('name'))} {encoding_params(enc)}".rstrip())
    t = Table("layer", "file", "in", "out", "norm", "conv", "bits w/a", "bytes", "integer kernels")
    for i, layer in enumerate(m.layers):
        q = layer.quant
        fused = sum(v for k_, v in (layer.ort_ops or {}).items() if k_.startswith(("QLinear", "ConvInteger")))
        conv = f"{layer.channels or '?'} {layer.kernel or '?'}x{layer.kernel or '?'}" + (" +pool" if layer.pool else "")
        t.add_row(
            str(i),
            shown(layer.file),
            "x".join(map(str, layer.in_shape)),
            "x".join(map(str, layer.out_shape)),
            layer.norm_kind,
            conv,
            f"{q.weight_bits}/{q.act_bits}" if q else "32/32",
            str(sizes.get(layer.file, "missing")),
            str(fused),
        )
    t.print()
    head = (
        f"{shown(m.head.file)} on layers {m.head.layers}, {m.head.grid_size}x{m.head.grid_size} grid"
        if m.head
        else "none"
    )
    say(f"prediction by goodness of layer(s) {m.predict_layers}; head: {head}")
    say(f"size: {total / 1e6:.3f} MB in {len(sizes) + 1} files")
    p = m.parity
    if p is not None and p.agreement is not None and p.samples is not None and p.bundle_accuracy is not None:
        say(
            f"parity at export: agreement {p.agreement:.2%} on {p.samples} images (bundle accuracy {p.bundle_accuracy:.2%})"
        )
    for v in history:
        details = ", ".join(
            f"{k} {shown(v[k])}"
            for k in ("event", "data", "examples", "accuracy_before", "accuracy_after", "seconds")
            if k in v
        )
        say(f"version {v['version']} ({shown(v.get('status', '?'))}): {shown(v.get('time', '?'))} {details}")
    say(f"checksums: {shown(status)}")
    if checked:
        say("loaded and checked:")
        for name, what in checked.items():
            say(f"  {shown(name)}: {what}")
