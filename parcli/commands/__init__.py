"""Typer commands of `par`, one module each; `parcli.cli` mounts them."""
