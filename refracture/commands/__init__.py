"""One module per CLI command group. Each exposes typer-annotated functions that
``refracture.cli`` registers; heavy imports stay inside the functions so ``--help`` is fast."""
