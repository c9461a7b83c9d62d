"""What every command shares: consoles, one-line user errors, device/dtype options, progress."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import shlex
import sys
import time
import typing
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from parcli.config import SUPPORTED_REGIONS
from parcli.errors import SettingError, UserError
from parcli.io.catalogue import use_catalogue
from parcli.options import RunOptions

if TYPE_CHECKING:  # numpy and torch: imported when a command runs, not to parse its options
    from parcli.pipeline import Pipeline
    from parcli.plan import Pass

console = Console()
err_console = Console(stderr=True)

# Options several commands take, declared once so their names, help and parsing agree.
DeviceOption = Annotated[
    str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
]
OfflineOption = Annotated[bool, typer.Option(help="Never touch the network.")]
CatalogueOption = Annotated[
    Path | None,
    typer.Option(
        "--catalogue",
        envvar="PARCLI_CATALOGUE",
        help="Read this weights.toml instead of the packaged one (also PARCLI_CATALOGUE).",
        callback=lambda path: use_catalogue(path) or path,  # chosen as soon as it is parsed
    ),
]


# A run's settings (`parcli.options.RunOptions`) as options: each takes its field's type and
# default (auto for device and dtype). Where leaving one out means "decided later" (by the device,
# the model or the strategy), the default is None, which Typer does not show, and the help says
# so in words.
_RUN_HELP = {
    "device": typing.get_args(DeviceOption)[1],
    "dtype": "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.",
    "compile": typer.Option(
        "--compile/--no-compile",
        help="torch.compile the decoding step (the first run compiles; later runs reuse "
        "Inductor's disk cache); when not given, on CUDA only.",
    ),
    "quantize": "int8: weight-only int8 projections (a quarter of float32's bytes, faster at "
    "small batches; the tokens differ from float32's, so it is never the default).",
    "reference_kernels": typer.Option(
        "--reference-kernels",
        help="Run the kernels LlamaGen's and PAR's code runs (SDPA's math kernel after the "
        "first pass, the cache in the model's dtype and head width, unpacked products, nothing "
        "compiled; graphed on CUDA): their tokens in bf16 too, at some speed.",
    ),
    "threads": typer.Option(
        envvar="PARCLI_THREADS",
        help="CPU threads (also PARCLI_THREADS); when not given, 1 for small models (as fast, "
        "and unhurt by other busy processes), one per core for large ones.",
    ),
    "strategy": "How the passes are walked: par (one plan pass at a time) or sjd (speculative "
    "Jacobi decoding: drafts of the next passes verified in one pass; the same law of images in "
    "fewer passes).",
    "window": "Plan passes per iteration of --strategy sjd; the strategy's when not given.",
    "draft": "How --strategy sjd drafts a pass it has no prediction for yet: left (each token "
    "copied from its left neighbour in its region) or random.",
    "cfg_scale": "Classifier-free guidance scale; <= 1 turns it off; the model's when not given.",
    "temperature": "Softmax temperature; the model's (weights.toml) when not given.",
    "top_k": "Keep the k most likely tokens; 0 = all; the model's (weights.toml) when not given.",
    "top_p": "Nucleus sampling mass; 1.0 = off; the model's (weights.toml) when not given.",
}
# Most entries are only a help text.
_RUN_HELP = {k: typer.Option(help=v) if isinstance(v, str) else v for k, v in _RUN_HELP.items()}
RUN_DEFAULTS = {f.name: f.default for f in fields(RunOptions) if f.name in _RUN_HELP}
RUN_DEFAULTS.update(device="auto", dtype="auto")
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def run_options(**replaced: tuple[Any, Any]):
    """Add the run options to a command's signature, given to it as `run`: {field: value};
    `replaced` swaps an option's (annotation, default) (bench takes lists of values)."""
    hint = typing.get_type_hints(RunOptions)
    table = {k: (Annotated[hint[k], info], RUN_DEFAULTS[k]) for k, info in _RUN_HELP.items()}
    table |= replaced
    added = [inspect.Parameter(k, KEYWORD, annotation=a, default=d) for k, (a, d) in table.items()]

    def decorate(func):
        params = inspect.signature(func, eval_str=True).parameters.values()
        own = [p for p in params if p.name != "run"]

        def command(**kwargs):
            run = {name: kwargs.pop(name) for name in table}
            return func(**kwargs, run=run)

        return as_command(func, command, own + added)

    return decorate


def as_command(func, command, parameters: list[inspect.Parameter]):
    """`command` under `func`'s name and docstring, with the signature Typer reads options from."""
    command = functools.wraps(func)(command)
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def old_spellings(**aliases: tuple[str, str]):
    """Keep options' former spellings working but out of --help (Typer cannot hide one name of an
    option): `out=("--out", "output")` adds a hidden --out for parameter `output`."""

    def decorate(func):
        params = dict(inspect.signature(func, eval_str=True).parameters)
        defaults, required, shown, hidden = {}, set(), {}, []
        for name, (flag, real) in aliases.items():
            base, info = typing.get_args(params[real].annotation)[:2]
            names = [info.default] if isinstance(info.default, str) else []
            shown[real] = "/".join(sorted([*names, *info.param_decls], key=len))
            if params[real].default is inspect.Parameter.empty:
                required.add(real)
                # The parser no longer marks it required: its help says so instead.
                info = copy.copy(info)
                info.help = f"{info.help} \\[required]"
                optional = Annotated[base | None, info]  # type: ignore[valid-type]
                params[real] = params[real].replace(annotation=optional, default=None)
            defaults[real] = params[real].default
            hint = Annotated[base | None, typer.Option(flag, hidden=True)]  # type: ignore
            hidden.append(inspect.Parameter(name, KEYWORD, annotation=hint, default=None))

        def command(**kwargs):
            for name, (flag, real) in aliases.items():
                old = kwargs.pop(name)
                if old is not None:
                    if kwargs[real] != defaults[real]:
                        raise fail(f"{flag} is the old name of {shown[real]}: give one of them")
                    kwargs[real] = old
            for real in required:
                if kwargs[real] is None:
                    raise fail(f"missing option {shown[real]}")
            return func(**kwargs)

        # Keyword-only parameters (the hidden ones among them) after the others, as Python wants.
        return as_command(func, command, sorted([*params.values(), *hidden], key=lambda p: p.kind))

    return decorate


BATCH_HELP = "Images generated together."

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


def command_app(name: str, help: str, completion: bool = False) -> typer.Typer:
    """A Typer app (or sub-app) with the settings every `par` command group shares."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        add_completion=completion,
    )


def one_line_usage_errors() -> None:
    """Show a command-line mistake as one line, like every other refusal, not a usage panel."""
    from typer import rich_utils

    def show(error) -> None:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help was shown
            return
        ctx = getattr(error, "ctx", None)
        fail(error.format_message() + (f"; see {ctx.command_path} --help" if ctx else ""))

    rich_utils.rich_format_error = show


def fail(message: str) -> typer.Exit:
    end_counter()
    err_console.print(
        f"[bold red]error:[/] {escape(inert(message))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(2)  # a user's error, as click's usage errors


_mid_line = [False]  # whether a counter left stderr's cursor at the end of a line


def show_counter(text: str) -> None:
    """Write `text` over the current stderr line; what is printed next calls `end_counter` first."""
    err_console.print(f"\r{text}", end="", markup=False, highlight=False)
    _mid_line[0] = True


def end_counter() -> None:
    """End the line a counter left open, so that the next line starts on its own."""
    if _mid_line[0]:
        _mid_line[0] = False
        err_console.print()


# Characters that move the cursor, end a line or reorder text: a file's strings could forge
# output (a fake prompt, a new window title) with them, so they are shown as escapes.
_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def inert(text: str) -> str:
    """`text` with every control character, line separator and bidi override as an escape."""

    def shown(char: str) -> str:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS:
            code = ord(char)
            return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        return char

    return "".join(shown(char) for char in str(text))


@contextlib.contextmanager
def user_errors(options: Mapping[str, str] | None = None) -> Iterator[None]:
    """Known failures as one red line (exit code 2) naming the option at fault; Ctrl-C as 130."""
    try:
        yield
    except UserError as exc:
        message = str(exc)
        if exc.setting is not None:
            option = (options or {}).get(exc.setting) or "--" + exc.setting.replace("_", "-")
            message = f"{option}: {message}"
        raise fail(message) from None
    except KeyboardInterrupt:
        err_console.print("interrupted", style="yellow")
        raise typer.Exit(130) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None


def parse_ints(text: str, setting: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16]: positive integers, in the order given."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"takes comma-separated integers, e.g. 1,4,16; not {text!r}"
        raise SettingError(setting, message) from None
    if not values or min(values) < 1:
        raise SettingError(setting, f"needs positive integers, not {text!r}")
    return values


def parse_region_list(text: str) -> list[int]:
    """`1,4,16` -> [1, 4, 16], refusing counts PAR has no checkpoints for."""
    values = sorted(set(parse_ints(text, "regions")))
    if any(n not in SUPPORTED_REGIONS for n in values):
        allowed = ", ".join(map(str, SUPPORTED_REGIONS))
        raise SettingError("regions", f"must be among {allowed}, not {text!r}")
    return values


def parse_classes(text: str | None, num_classes: int) -> tuple[int, ...]:
    """`0-9,207` -> (0, 1, ..., 9, 207): ids and inclusive ranges, sorted; None: every class."""
    if text is None:
        return tuple(range(num_classes))
    wrong = f"takes class ids and ranges, e.g. 0-9,207; not {text!r}"
    chosen: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise SettingError("classes", wrong) from None
        if low > high:
            raise SettingError("classes", wrong)
        chosen.update(range(low, high + 1))
    if not chosen or min(chosen) < 0 or max(chosen) >= num_classes:
        raise SettingError("classes", f"must lie in 0 to {num_classes - 1}, not {text!r}")
    return tuple(sorted(chosen))


def command_line() -> str:
    """The command as typed, for the records a run keeps."""
    return shlex.join(["par", *sys.argv[1:]])


def warn_if_emulated(device, dtype) -> None:
    """Say so when the chosen dtype would run emulated (bf16 on most CPUs)."""
    from parcli.engine.devices import emulated_dtype_note

    if note := emulated_dtype_note(device, dtype):
        err_console.print(
            f"[yellow]note:[/] {escape(note)} (--dtype fp32)", highlight=False, soft_wrap=True
        )


def pass_counter(progress: Progress, pipe: Pipeline, batches: int) -> Callable[[Pass], None]:
    """The callback advancing a task on `progress` that counts the passes of `batches` batches."""
    passes, total = pipe.plan.num_passes, pipe.plan.num_passes * batches
    task = progress.add_task(escape(pipe.name), total=total, status=waiting_status(pipe))

    plain = not progress.disable and not progress.console.is_terminal
    last_line = time.monotonic()

    def advance(step: Pass) -> None:
        nonlocal last_line
        status = f"pass {step.index + 1}/{passes}"
        if batches > 1:
            status += f" · batch {int(progress.tasks[task].completed) // passes + 1}/{batches}"
        progress.update(task, advance=1, status=status)
        if plain and time.monotonic() - last_line >= PLAIN_PROGRESS_SECONDS:
            # What a log sees of the bar: where it is, the time spent and the time left.
            last_line, done = time.monotonic(), progress.tasks[task].completed
            elapsed = progress.tasks[task].elapsed or 0.0
            progress.console.print(
                f"{pipe.name}: {status} ({100 * done / total:.0f} %), "
                f"{elapsed:.0f} s, about {elapsed * (total - done) / done:.0f} s left",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip

    return advance


def waiting_status(pipe: Pipeline) -> str:
    """What a bar says while the first pass waits on one-time work (compiling, timing int8)."""
    if pipe.engine.compiled:
        return "compiling the step (the first run of each pass width; later runs reuse the cache)"
    if pipe.times_kernels_first():
        return "timing the int8 products on this machine (once; remembered in kernels.json)"
    return ""


PLAIN_PROGRESS_SECONDS = 30.0  # a log (stderr not a terminal) gets a plain line this often


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
