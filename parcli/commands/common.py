"""What every command shares: consoles, one-line user errors, device/dtype options, progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)

EXIT_USER_ERROR = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is a complete one-line answer for the user."""
    from parcli.media import OutputError
    from parcli.pipeline import PipelineError
    from parcli.plan import PlanError
    from parcli.registry import RegistryError
    from parcli.weights import WeightsError

    types: list[type[BaseException]] = [
        OutputError,
        PipelineError,
        PlanError,
        RegistryError,
        WeightsError,
    ]
    with contextlib.suppress(ImportError):
        from parcli.hub import FetchError

        types.append(FetchError)
    return tuple(types)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn known failures into one red line and exit code 2; Ctrl-C into exit code 130."""
    try:
        yield
    except user_error_types() as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted", style="yellow")
        raise typer.Exit(130) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None


def warn_if_emulated(device, dtype) -> None:
    """Say so when the chosen dtype would run emulated (bf16 on most CPUs)."""
    from parcli.pipeline import emulated_dtype_note

    note = emulated_dtype_note(device, dtype)
    if note:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def pass_progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )
