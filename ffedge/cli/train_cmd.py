"""`ffedge train` (placeholder, filled in by the trainer work)."""
from ffedge.cli.app import app
import typer

@app.command()
def train(epochs: int = typer.Option(3, help="epochs")) -> None:
    """Train."""
    from ffedge.errors import FFEdgeError
    raise FFEdgeError(f"not yet {epochs}")
