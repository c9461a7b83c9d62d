"""Hostile input, built here: files whose header lies, truncated and bit-flipped files, markup in
user strings, paths that try to leave their folder. Each must end in exit code 2, one line on
stderr, no traceback, and nothing written outside the output. The module prints how many inputs
it tried."""

import json
import random
import signal

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.test_cli import run

TRIED = {"count": 0}


def assert_clean_refusal(result, *fragments):
    TRIED["count"] += 1
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture(scope="module", autouse=True)
def report_count():
    yield
    print(f"\nhostile inputs tried: {TRIED['count']}")


def _rewrite(source, target, **changes):
    """A copy of a checkpoint whose metadata (config fields or top-level keys) says otherwise."""
    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
    config = json.loads(meta["config"])
    for key, value in changes.items():
        if key in config:
            config[key] = value
        else:
            meta[key] = value
    meta["config"] = json.dumps(config)
    save_file(load_file(str(source)), str(target), metadata=meta)
    return target


LYING_CONFIGS = [
    ({"n_head": 0}, "n_head must be between 1"),
    ({"rope_base": "abc"}, "rope_base must be a number"),
    ({"dim": "128"}, "dim must be an integer"),
    ({"n_layer": 200000}, "n_layer must be between 1 and 1024"),
    ({"n_layer": 3}, "declares 3 layers but holds 2"),
    ({"grid": [4096, 4096]}, "grid [4096, 4096]"),
    ({"grid": "8x8"}, "grid must be a list of integers"),
    ({"vocab_size": True}, "vocab_size must be an integer"),
    ({"norm_eps": float("nan")}, "unreadable config"),
    ({"cfg_scale": "abc"}, "records cfg_scale 'abc'"),
    ({"temperature": "-1"}, "records temperature '-1'"),
    ({"top_k": "2.5"}, "records top_k '2.5'"),
    ({"cfg_scale": "nan"}, "records cfg_scale 'nan'"),
    ({"cfg_scale": "-5"}, "records cfg_scale '-5'"),
]


@pytest.mark.parametrize(("changes", "message"), LYING_CONFIGS)
def test_a_header_that_lies_is_refused_before_building(files, tmp_path, changes, message):
    liar = _rewrite(files["gpt4"], tmp_path / "liar.safetensors", **changes)
    out = tmp_path / "x.png"
    result = run("generate", "--checkpoint", liar, "--tokenizer", files["vq"], "-c", 1, "-o", out)
    assert_clean_refusal(result, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"ch": 0}, "ch must be between 1"), ({"ch_mult": [1, "x"]}, "ch_mult must be an integer")],
)
def test_a_tokenizer_header_that_lies(files, tmp_path, changes, message):
    liar = _rewrite(files["vq"], tmp_path / "vq.safetensors", **changes)
    result = run("generate", "--checkpoint", files["gpt4"], "--tokenizer", liar, "-c", 1, "-o",
                 tmp_path / "x.png")  # fmt: skip
    assert_clean_refusal(result, message)


def test_truncated_and_bit_flipped_files(files, tmp_path):
    data = files["gpt4"].read_bytes()
    rng = random.Random(0)
    cases = [data[:cut] for cut in (1, 8, 100, len(data) // 2, len(data) - 1)]
    for _ in range(12):
        flipped = bytearray(data)
        position = rng.randrange(0, min(len(data), 2000))  # the header and first tensors
        flipped[position] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for index, blob in enumerate(cases):
        bad = tmp_path / f"bad{index}.safetensors"
        bad.write_bytes(blob)
        out = tmp_path / f"out{index}.png"
        result = run("generate", "--checkpoint", bad, "--tokenizer", files["vq"], "-c", 1, "-q",
                     "-o", out)  # fmt: skip
        if result.exit_code == 0:  # a flip inside a weight's value is a valid, different file
            TRIED["count"] += 1
            continue
        assert_clean_refusal(result)
        assert not out.exists()


def _run_and_signal(args, signum, after, cwd):
    """`python -m parcli ARGS`, sent `signum` `after` seconds in, but not before `main()` has
    installed its handlers (earlier, Python's own defaults would answer); (exit code, stderr)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "parcli", *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    while not _catches(process.pid, signal.SIGTERM) and process.poll() is None:
        time.sleep(0.005)
    time.sleep(max(0.0, after - (time.monotonic() - started)))
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux's /proc; elsewhere, assume so)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return True
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(2, 130, "interrupted"), (15, 143, "terminated")]
)
@pytest.mark.parametrize("after", [0.3, 4.0])  # during start-up (imports), and while writing
def test_signals_clean_up_and_say_one_line(tmp_path, signum, code, word, after):
    out = tmp_path / "out"
    args = ["generate", "-m", "digits-1", "-c", "1", "-n", "400", "--batch-size", "400", "-q",
            "-o", f"{out}/"]  # fmt: skip
    returncode, err = _run_and_signal(args, signum, after, tmp_path)
    TRIED["count"] += 1
    if returncode == 0:  # the machine was fast enough to finish first
        return
    assert returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].strip().endswith(word) or word in lines[-1], err
    assert len(lines) == 1, err
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers


# What a C extension's import does when a signal interrupts its initialisation: the import
# fails, and retrying it fails with an ImportError (numpy's core); the signal's own exception
# never reaches the program.
INTERRUPT_AN_IMPORT = """
import os, signal, sys, time
class InterruptAnImport:
    def find_spec(self, name, path=None, target=None):
        if {when} and not os.path.exists({fired!r}):
            open({fired!r}, 'w').close()
            try:
                os.kill(os.getpid(), {signum})
                time.sleep(5)
            except BaseException:
                raise ImportError('cannot load module more than once per process') from None
        return None
sys.meta_path.insert(0, InterruptAnImport())
"""


@pytest.mark.parametrize(
    ("when", "signum", "code", "word"),
    [
        # start-up: while numpy's C core initialises (a CI run once met this by chance)
        ("any(m.endswith('._multiarray_umath') for m in sys.modules)", 2, 130, "interrupted"),
        # the run: PIL, imported at the first PNG
        ("name == 'PIL.Image' and 'parcli.cli' in sys.modules", 2, 130, "interrupted"),
        ("name == 'PIL.Image' and 'parcli.cli' in sys.modules", 15, 143, "terminated"),
    ],
)
def test_a_signal_inside_an_import_still_ends_in_one_line(tmp_path, when, signum, code, word):
    import os
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    fired = tmp_path / "fired"
    code_text = INTERRUPT_AN_IMPORT.format(when=when, fired=str(fired), signum=signum)
    (hook / "sitecustomize.py").write_text(code_text)
    search_path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "parcli", "generate", "-m", "digits-1", "-c", "1", "-n", "3", "-q",
         "-o", "out/"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": search_path}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert fired.exists(), "the signal was never sent: the import was not seen"
    assert result.returncode == code, result.stderr
    assert result.stderr.strip() == word, result.stderr
    written = [p.name for p in tmp_path.rglob("*") if p.suffix == ".png" or p.name[0] == "."]
    assert written == []


def test_bad_destinations_are_named_before_any_work(files, tmp_path):
    source = files["gpt4"]  # a safetensors source: converting it would read and hash it
    cases = [
        (["convert-weights", source, tmp_path / "out.png"], "DST: ", "use .safetensors"),
        (["convert-weights", source, tmp_path], "DST: ", "(no suffix)"),
        (["convert-weights", source, tmp_path / "no" / "x.safetensors"], "DST: ", "does not exist"),
        (["convert-weights", source, tmp_path / "x.safetensors", "--heads", "0"], "--heads: "),
        (["train", "vq", "--data", "digits", "-o", tmp_path / "v.png"], "--output: ", ".png"),
        (
            [
                "train",
                "gpt",
                "--data",
                "digits",
                "--tokenizer",
                files["vq"],
                "--out",
                tmp_path / "no" / "g.safetensors",
            ],
            "--output: ",
            "does not exist",
        ),  # fmt: skip
        (["bench", "--arch", "GPT-B", "--cfg-scale", "-2"], "--cfg-scale: must be between 0"),
        (["eval", "-m", "digits", "--json", tmp_path / "no" / "e.json"], "--json: "),
    ]
    for args, *fragments in cases:
        assert_clean_refusal(run(*args), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_files_that_are_not_what_their_name_says(files, tmp_path):
    import zipfile

    import torch

    archive = tmp_path / "notes.pt"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes/readme.txt", "hello")
    legacy = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    for source, message in (
        (archive, "is a zip archive but not a PyTorch checkpoint"),
        (legacy, "model.safetensors: neither a LlamaGen/PAR transformer nor a VQ tokenizer"),
    ):
        out = tmp_path / "x.safetensors"
        assert_clean_refusal(run("convert-weights", source, out), message)
        result = run("generate", "--checkpoint", source, "--tokenizer", files["vq"], "-c", 1,
                     "-q", "-o", tmp_path / "x.png")  # fmt: skip
        assert_clean_refusal(result, message)
        assert not out.exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["x.png", "x.jpg", "x.gif", "x.mp4"])
def test_a_full_disk_is_one_line_and_leaves_nothing(files, tmp_path, monkeypatch, capfd, name):
    import errno

    import imageio_ffmpeg
    from PIL import Image

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda path: (0, 0.0))
    model = "gpt4video" if name.endswith((".gif", ".mp4")) else "gpt4"
    result = run("generate", "--checkpoint", files[model], "--tokenizer", files["vq"], "-c", 1,
                 "-q", "-o", tmp_path / name)  # fmt: skip
    assert_clean_refusal(result, f"cannot write {tmp_path / name}")
    assert "Exception ignored" not in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


MARKUP = ["x[/]y", "[bold]b[/bold]", "no[red]dir", "[old]", "[link=file:///etc]e[/link]", "\\[x]"]


@pytest.mark.parametrize("text", MARKUP)
def test_text_from_the_user_is_never_markup(files, tmp_path, text):
    tokenizer = ["--tokenizer", files["vq"]]
    cases = [
        (["generate", "--model", text, "-c", 1, "-o", tmp_path / "a.png"], text),
        (["generate", "--checkpoint", tmp_path / f"{text}.safetensors", *tokenizer, "-c", 1],
         str(tmp_path / f"{text}.safetensors")),
        (["generate", "-m", "digits", "-c", text, "-o", tmp_path / "a.png"], text),
        (["generate", "-m", "digits", "-c", 1, "-o", tmp_path / text / "o.png"],
         str(tmp_path / text)),
        (["classes", text], text),
        (["weights", "path", text], text),
        (["info", tmp_path / f"{text}.png"], str(tmp_path / f"{text}.png")),
        (["weights", "list", "--catalogue", tmp_path / f"{text}.toml"],
         str(tmp_path / f"{text}.toml")),
        (["bench", "--arch", text], text),
    ]  # fmt: skip
    for args, shown in cases:
        result = run(*args)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert_clean_refusal(result, shown)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--threads", 100000), {}, "--threads: must be between 1 and"),
        ((), {"PARCLI_THREADS": "100000"}, "--threads: must be between 1 and"),
        (("--cfg-scale", "inf"), {}, "--cfg-scale: must be between 0 and 100"),
        (("--cfg-scale", "nan"), {}, "--cfg-scale: must be between 0 and 100"),
        (("--temperature", "inf"), {}, "--temperature: must be between 0 and 100"),
        (("--temperature", "nan"), {}, "--temperature: must be between 0 and 100"),
        (("--top-k", 2**40), {}, "--top-k: must be between 0 (off) and"),
    ],
)
def test_runaway_numbers_are_refused(files, tmp_path, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "x.png"
    common = ("generate", "--checkpoint", files["gpt4"], "--tokenizer", files["vq"], "-q")
    result = run(*common, "-c", 1, "-o", out, *args)
    assert_clean_refusal(result, message)
    assert not out.exists()


def test_the_thread_bound_is_one_function_for_the_engine_and_the_options():
    from parcli.engine.threads import choose_threads, max_threads
    from parcli.errors import SettingError
    from parcli.options import RunOptions

    most = max_threads()
    assert choose_threads(10, most) == most
    for check in (lambda n: choose_threads(10, n), lambda n: RunOptions(threads=n).check()):
        for wrong in (0, most + 1, 10**9):
            with pytest.raises(SettingError, match=f"between 1 and {most}"):
                check(wrong)


def test_a_bench_batch_that_cannot_fit_is_refused_before_building(files, monkeypatch):
    import parcli.pipeline as pipeline_module

    def never(*args, **kwargs):
        raise AssertionError("a pipeline was built")

    monkeypatch.setattr(pipeline_module, "load_pipeline", never)
    result = run(
        "bench", "--checkpoint", files["gpt4"], "--tokenizer", files["vq"], "--regions", 4,
        "--batch-size", 99999999,
    )  # fmt: skip
    assert_clean_refusal(result, "--batch-size")


def _extreme(rng, depth=0):
    """A JSON value at some edge: huge, tiny, non-finite, empty, deep or of the wrong kind."""
    choices = [
        None, True, False, 0, -1, 2**63, -(2**64), 10**400, 1e308, -1e-308,
        float("nan"), float("inf"), float("-inf"), "", "\x1b]0;x\x07\n$ rm -rf ~", "9" * 5000,
        [], {}, [1, "2", None],
    ]  # fmt: skip
    if depth < 2 and rng.random() < 0.2:
        return {"k": _extreme(rng, depth + 1)} if rng.random() < 0.5 else [_extreme(rng, depth + 1)]
    if rng.random() < 0.05:
        return "[" * 3000
    return rng.choice(choices)


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _clean(result, allowed=(2,)):
    assert result.exit_code in allowed, result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert_clean_refusal(result)


def test_fuzz_recipes_run_json_shards_and_npz_inputs(files, tmp_path, monkeypatch):
    """Seeded random and extreme values into every file par reads back; each ends in a clean
    refusal (or, where the value happens to be valid, a clean success)."""
    import numpy as np

    from parcli.io.npz import write_arrays
    from parcli.io.recipe import Recipe, RecipeError
    from parcli.quality import fid as fid_module
    from tests.test_provenance import _recipe

    rng = random.Random(1234)
    bystander = tmp_path / "bystander.txt"
    bystander.write_text("mine")
    tried = 0

    valid = _recipe().to_dict()
    for case in range(60):
        data = dict(valid)
        for key in rng.sample(sorted(data), rng.randint(1, 3)):
            data[key] = _extreme(rng)
        path = tmp_path / f"recipe{case}.json"
        path.write_text(json.dumps(data))
        try:
            Recipe.from_dict(json.loads(path.read_text()), "x")
            ok = True
        except RecipeError:
            ok = False
        _clean(run("info", path), (0,) if ok else (2,))
        tried += 1

    monkeypatch.setattr(
        fid_module, "inception", lambda device, offline=False: lambda x: x.double().mean((2, 3))
    )
    write_arrays(tmp_path / "a.npz", {"arr_0": np.arange(8 * 4 * 4 * 3).reshape(8, 4, 4, 3)
                                      .astype(np.uint8)})  # fmt: skip
    write_arrays(tmp_path / "ref.npz", {"mu": np.zeros(3), "sigma": np.eye(3)})
    reference = (tmp_path / "ref.npz").read_bytes()
    for case in range(40):
        data = bytearray(reference)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        path = tmp_path / f"ref{case}.npz"
        path.write_bytes(bytes(data))
        _clean(run("fid", "-q", tmp_path / "a.npz", path), (0, 2))
        tried += 1
    for case in range(20):
        arrays = {
            "mu": np.full(rng.choice([(3,), (4,), (3, 1)]), _pick_number(rng)),
            "sigma": np.full(rng.choice([(3, 3), (3,), (4, 4)]), _pick_number(rng)),
        }
        path = tmp_path / f"stats{case}.npz"
        write_arrays(path, arrays)
        _clean(run("fid", "-q", tmp_path / "a.npz", path), (0, 2))
        tried += 1

    sample_args = ("sample", "--checkpoint", files["gpt4"], "--tokenizer", files["vq"], "-q",
                   "--per-class", 1, "--classes", "0-1", "--shard-size", 1)  # fmt: skip
    for case in range(12):
        out = tmp_path / f"run{case}"
        out.mkdir()
        (out / "run.json").write_text(json.dumps(_extreme(rng)) if case % 3 else "[" * 5000)
        before = _snapshot(out)
        _clean(run(*sample_args, "--out", out))
        assert _snapshot(out) == before
        tried += 1
    out = tmp_path / "shards-run"
    assert run(*sample_args, "--out", out).exit_code == 0
    for case in range(8):
        record = out / "shards" / f"{case % 2:05d}.json"
        record.write_text(json.dumps({"images": _extreme(rng), "first": 0, "sha256": "x"}))
        (out / "samples.npz").unlink()
        _clean(run(*sample_args, "--out", out), (0,))
        tried += 1
    assert bystander.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("recipe", "ref",
        "stats", "run", "a.npz", "shards-run", "bystander")))  == []  # fmt: skip
    TRIED["count"] += tried
    print(f"\nfuzz inputs tried: {tried}")


def _pick_number(rng):
    return rng.choice([0.0, 1.0, -1.0, 1e308, float("nan"), float("inf"), 1e-320])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--grid", "100000"), "--grid: 100000x100000 is 10000000000 tokens, over the 65536"),
        (("--grid", "2x300x300"), "--grid: 2x300x300 is 180000 tokens"),
        (("--image-size", 160000), "--image-size: must be a positive multiple of 16 up to 4096"),
        (("--heads", 100000), "--heads: must be between 1 and 1024"),
    ],
)
def test_convert_refuses_what_par_could_not_load(tmp_path, args, message):
    import torch

    from tests.conftest import tiny_model

    src = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model(regions=4).state_dict()}, src)
    dst = tmp_path / "x.safetensors"
    assert_clean_refusal(run("convert-weights", src, dst, *args), message)
    assert not dst.exists()


def test_convert_never_writes_a_file_its_loader_refuses(tmp_path):
    import torch

    from parcli.io.convert import convert
    from parcli.io.tensors import WeightsError
    from tests.conftest import tiny_model

    src = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model(regions=4).state_dict()}, src)
    dst = tmp_path / "x.safetensors"
    with pytest.raises(WeightsError, match="par cannot load"):
        convert(src, dst, heads=4, grid=(100000, 100000))
    assert not dst.exists()


@pytest.mark.parametrize("size", [0, -16, 17])
def test_an_image_size_the_tokenizer_cannot_cut_is_refused(files, tmp_path, size):
    import torch

    from tests.conftest import tiny_model

    src = tmp_path / "tiny.pt"
    torch.save({"model": tiny_model(regions=4).state_dict()}, src)
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (20, 20)).save(folder / "x.png")
    message = "--image-size: must be a positive multiple of"
    cases = [
        ("convert-weights", src, tmp_path / "x.safetensors", "--heads", 4),
        ("bench", "--arch", "GPT-B"),
        ("train", "vq", "--data", folder.parent, "--out", tmp_path / "v.safetensors"),
        ("train", "gpt", "--data", folder.parent, "--tokenizer", files["vq"], "--out",
         tmp_path / "g.safetensors"),
    ]  # fmt: skip
    for args in cases:
        assert_clean_refusal(run(*args, "--image-size", size), message)
    assert not list(tmp_path.glob("*.safetensors"))


def _digits_catalogue(tmp_path, *replacements, name="mine.toml"):
    from parcli.io.catalogue import DEFAULT_PATH

    text = DEFAULT_PATH.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_catalogue_entry_that_names_the_wrong_file_is_refused(tmp_path):
    from parcli.io.catalogue import PACKAGE_DIR
    from parcli.io.files import file_sha256

    # Without their sha256 (which would refuse the swap first), to reach the regions check.
    unhashed = [
        (f'sha256 = "{file_sha256(PACKAGE_DIR / f"assets/digits/gpt-{n}.safetensors")}"\n', "")
        for n in (1, 4)
    ]
    swapped = _digits_catalogue(
        tmp_path,
        *unhashed,
        ('path = "assets/digits/gpt-1.safetensors"', 'path = "assets/digits/X.safetensors"'),
        ('path = "assets/digits/gpt-4.safetensors"', 'path = "assets/digits/gpt-1.safetensors"'),
        ('path = "assets/digits/X.safetensors"', 'path = "assets/digits/gpt-4.safetensors"'),
    )
    out = tmp_path / "x.png"
    for model in ("digits-1", "digits-4"):
        result = run("generate", "-m", model, "-c", 1, "-q", "-o", out, "--catalogue", swapped)
        assert_clean_refusal(result, f"{model}: the catalogue says", "correct the entry")
    assert not out.exists()


def test_a_packaged_file_is_checked_against_its_catalogue_sha256(tmp_path):
    from parcli.io.catalogue import PACKAGE_DIR
    from parcli.io.files import file_sha256

    right = file_sha256(PACKAGE_DIR / "assets/digits/vq.safetensors")
    listed = f'sha256 = "{right}"'
    out = tmp_path / "x.png"
    for sha, code in (("0" * 64, 2), (right, 0)):
        mine = _digits_catalogue(tmp_path, (listed, f'sha256 = "{sha}"'), name=f"{code}.toml")
        result = run("generate", "-m", "digits-4", "-c", 1, "-q", "-o", out, "--catalogue", mine)
        if code == 2:
            assert_clean_refusal(result, "digits-vq: ", "the catalogue expects 0000")
            assert not out.exists()
        else:
            assert result.exit_code == 0, result.output
            assert out.exists()


def test_a_catalogue_that_never_ends_is_refused(tmp_path, monkeypatch):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100000)
    big = tmp_path / "big.toml"
    big.write_text("#" * (2 << 20))
    cases = [
        ("/dev/zero", "is not a regular file"),
        (fifo, "is not a regular file"),
        (tmp_path, str(tmp_path)),
        (deep, "is nested too deeply"),
        (big, "is over 1 MiB"),
    ]
    for path, message in cases:
        assert_clean_refusal(run("weights", "list", "--catalogue", path), message)
        with monkeypatch.context() as env:
            env.setenv("PARCLI_CATALOGUE", str(path))
            assert_clean_refusal(run("classes", "7"), message)


def test_pngs_over_the_decompression_bomb_limit(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above it, refuses at twice
    folder = tmp_path / "out"
    folder.mkdir()
    Image.new("L", (40, 40)).save(folder / "warns.png")
    Image.new("L", (50, 50)).save(folder / "bomb.png")
    before = _snapshot(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning printed would be a second line
        assert_clean_refusal(run("info", folder / "bomb.png"), "bomb.png is too large an image")
        assert_clean_refusal(run("info", folder / "warns.png"), "carries no parcli recipe")
        result = run("generate", "-m", "digits", "-c", 1, "-n", 1, "-q", "-o", f"{folder}/")
    assert result.exit_code == 0, result.output
    assert len(list(folder.iterdir())) == 3
    assert all(_snapshot(folder)[path] == data for path, data in before.items())


def test_a_custom_pt_says_how_to_give_its_heads(files, tmp_path):
    import torch

    from tests.conftest import tiny_model

    src = tmp_path / "custom.pt"
    torch.save({"model": tiny_model(regions=4).state_dict()}, src)
    out = tmp_path / "x.png"
    for command in (["generate", "-c", 1, "-o", out], ["sample", "--out", tmp_path / "s"]):
        result = run(*command, "--checkpoint", src, "--tokenizer", files["vq"], "-q")
        assert_clean_refusal(
            result, "cannot tell the attention heads", "convert it first with `par convert-weights "
            f"{src} custom.safetensors --heads N`"
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.pt"]


def test_par_fid_help_names_the_extra_and_its_errors_start_a_line(tmp_path, monkeypatch):
    import numpy as np

    from parcli.io.npz import write_arrays
    from parcli.quality import fid as fid_module

    assert "pip install 'parcli[fid]'" in " ".join(run("fid", "--help").output.split())
    monkeypatch.setattr(
        fid_module, "inception", lambda device, offline=False: lambda x: x.double().mean((2, 3))
    )
    write_arrays(tmp_path / "a.npz", {"arr_0": np.zeros((4, 8, 8, 3), np.uint8)})
    write_arrays(tmp_path / "b.npz", {"arr_0": np.zeros((1, 8, 8, 3), np.uint8)})
    result = run("fid", tmp_path / "a.npz", tmp_path / "b.npz")  # b holds too few images
    assert result.exit_code == 2, result.output
    lines = result.output.replace("\r", "\n").splitlines()
    assert lines[-1].startswith("error: ") and "FID needs at least two" in lines[-1], lines
    assert "images through Inception-v3" in result.output


def test_a_terminal_that_cannot_encode_the_summary(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "parcli", "generate", "--model", "digits", "-c", "1", "-o",
         "out.png"],
        cwd=tmp_path, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    assert (tmp_path / "out.png").is_file()
    assert b"-> out.png" in result.stdout + result.stderr


def test_the_longest_legal_file_name_is_written(tmp_path):
    from parcli.io import files

    name = "x" * 250 + ".png"  # 254 characters: the file system takes 255
    result = run("generate", "-m", "digits", "-c", 1, "-q", "-o", tmp_path / name)
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [name]
    # What a killed run leaves is found and removed by a resumed one, and nothing else is.
    left = files._create_temp(tmp_path / name)
    assert left.name.startswith(".") and left.suffix == ".png"
    assert files.remove_temporaries(tmp_path) == [left]
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_weights_list_shows_catalogue_text_inert(tmp_path, monkeypatch):
    hostile = "MIT\\u001b]0;pwned\\u0007\\u202e[red]x"
    mine = _digits_catalogue(
        tmp_path, ('licence = "CC BY-SA 3.0 (MNIST data)"', f'licence = "{hostile}"')
    )
    monkeypatch.setenv("PARCLI_HOME", str(tmp_path / "home\x1b[2J"))
    result = run("weights", "list", "--catalogue", mine)
    assert result.exit_code == 0, result.output
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in result.output
    assert "home\\x1b[2J" in result.output and "MIT\\x1" in result.output  # shown as escapes


def test_fuzz_catalogues(tmp_path, monkeypatch):
    """The packaged catalogue with one value at a time replaced by a random or extreme one: every
    command that reads it either works or refuses in one line."""
    import re

    from parcli.io.catalogue import DEFAULT_PATH

    text = DEFAULT_PATH.read_text(encoding="utf-8")
    values = list(re.finditer(r"^(\w+) = (.+)$", text, re.M))
    rng = random.Random(7)
    extremes = ['""', "-1", "0", "1e400", "nan", "inf", str(2**70), '"' + "x" * 5000 + '"', "[]"]
    extremes += ["[1, 2, 3]", "{a = 1}", "true", '"\\u001b]0;x\\u0007"', '"../../etc/passwd"']
    monkeypatch.setenv("PARCLI_OFFLINE", "1")
    tried = 0
    for _ in range(40):
        line = rng.choice(values)
        mutated = text[: line.start(2)] + rng.choice(extremes) + text[line.end(2) :]
        path = tmp_path / "fuzz.toml"
        path.write_text(mutated, encoding="utf-8")
        generate = ["generate", "-m", "digits", "-c", "1", "-q", "-o", f"{tmp_path}/x.png"]
        for args in (["weights", "list"], ["classes", "3"], generate):
            result = run(*args, "--catalogue", path)
            tried += 1
            assert "Traceback" not in result.output, (line.group(0), result.output)
            if result.exit_code != 0:
                lines = [x for x in result.output.splitlines() if x.strip()]
                assert result.exit_code == 2 and len(lines) == 1, (line.group(0), result.output)
                assert lines[0].startswith("error:"), (line.group(0), result.output)
    print(f"\ncatalogue inputs tried: {tried}")
