"""`ffedge rollback`: make the version an in-place update was made from current again."""

from __future__ import annotations

from pathlib import Path

import typer

from ffedge.cli.app import app, print_json, say


@app.command("rollback")
def rollback(
    bundle: Path = typer.Argument(..., help="Bundle folder updated in place (e.g. by ffedge finetune)."),
    as_json: bool = typer.Option(False, "--json", help="Print the versions before and after as JSON."),
) -> None:
    """Undo the last in-place update of a bundle: its previous version becomes current (the undone one is kept in versions/)."""
    from ffedge.bundle import read_manifest
    from ffedge.bundle.update import bundle_version, check_no_links, rollback as do_rollback

    check_no_links(bundle)  # before the manifest is read
    before = bundle_version(read_manifest(bundle))
    manifest = do_rollback(bundle)
    if as_json:
        print_json({"bundle": str(bundle), "rolled_back": before, "current": bundle_version(manifest)})
        return
    say(
        f"rolled back {bundle}: version {bundle_version(manifest)} is current (version {before} kept in versions/ as rolled back)"
    )
