"""Fetching catalogue entries through huggingface_hub, against a local imitation of the Hub.

Two HTTP servers on 127.0.0.1 stand in for huggingface.co: the "hub" answers
``HEAD/GET /{repo}/resolve/{revision}/{file}`` like the Hub does for LFS files (a 302 to a storage
host, with ``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size``; a 404 carries
``X-Error-Code: EntryNotFound``) and the "cdn" serves the bytes with ``Range`` support. Nothing
else is ever contacted: HF_ENDPOINT points at the local hub and every cache is a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import huggingface_hub.file_download
import huggingface_hub.utils._http
import pytest
import torch
from conftest import tiny_model
from typer.testing import CliRunner

from parcli.commands import weights as weights_cli
from parcli.config import GPT_PRESETS
from parcli.io import hub
from parcli.io.catalogue import Catalogue
from parcli.io.checkpoints import load_transformer, load_vq, read_checkpoint
from parcli.plan import Plan
from parcli.sampling import SamplingConfig, image_uniforms
from parcli.strategies.par import generate_tokens
from parcli.vq import VQConfig, VQModel

REPO = "test-org/tiny-par"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GPT_FILE = "tiny-4x.pt"
VQ_FILE = "vq_tiny.pt"
VQ_CFG = VQConfig(codebook_size=32, codebook_dim=8, z_channels=32, ch=32, ch_mult=(1, 1))
CHUNK = 64 * 1024
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _pickle(state: dict) -> bytes:
    """A checkpoint in the published layout: {"model": state_dict, "args": Namespace, ...}."""
    buffer = io.BytesIO()
    torch.save({"model": state, "args": argparse.Namespace(gpt_model="tiny"), "steps": 7}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published() -> dict[str, bytes]:
    gpt = tiny_model(regions=4, seed=3)
    torch.manual_seed(4)
    vq = VQModel(VQ_CFG)
    return {GPT_FILE: _pickle(gpt.state_dict()), VQ_FILE: _pickle(vq.state_dict())}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """State shared by the two servers: the files, the failure mode and a request log."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.blobs = {_sha(data): data for data in files.values()}
        self.mode = "ok"  # "ok", "500", "cut-once", "cut-then-500"
        self.cuts = 0
        self.requests: list[tuple[str, str, str, str | None]] = []
        self.lock = threading.Lock()
        self.hub_url = ""
        self.cdn_url = ""

    def log(self, role: str, method: str, path: str, range_header: str | None) -> None:
        with self.lock:
            self.requests.append((role, method, path, range_header))

    def gets(self, path_part: str) -> list[tuple[str, str, str, str | None]]:
        return [r for r in self.requests if r[1] == "GET" and path_part in r[2]]


def _handler(state: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            state.log(role, self.command, self.path, self.headers.get("Range"))
            if state.mode == "500":
                self._send(500, {"Content-Type": "text/plain"}, b"Internal Error")
            elif role == "hub":
                self._resolve()
            else:
                self._blob()

        def _resolve(self) -> None:
            match = RESOLVE.match(self.path.split("?")[0])
            data = state.files.get(match["file"]) if match and match["repo"] == REPO else None
            if data is None:
                self._send(
                    404,
                    {
                        "X-Error-Code": "EntryNotFound",
                        "X-Error-Message": "Entry not found",
                        "X-Repo-Commit": COMMIT,
                    },
                    b'{"error":"Entry not found"}',
                )
                return
            sha = _sha(data)
            self._send(
                302,
                {
                    "Location": f"{state.cdn_url}/blobs/{sha}?signature=local",
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"git-{sha[:40]}"',
                    "Accept-Ranges": "bytes",
                },
            )

        def _blob(self) -> None:
            sha = self.path.split("?")[0].rsplit("/", 1)[-1]
            data = state.blobs.get(sha)
            if data is None:
                self._send(404, {}, b"no such blob")
                return
            wanted = self.headers.get("Range")
            start = 0
            if wanted:
                if state.mode == "cut-then-500":
                    self._send(500, {}, b"storage unavailable")
                    return
                start = int(re.match(r"bytes=(\d+)-", wanted).group(1))
            body = data[start:]
            code = 206 if wanted else 200
            headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha}"'}
            if wanted:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            cut = self.command == "GET" and not wanted and state.mode.startswith("cut")
            if cut and state.mode == "cut-once" and state.cuts > 0:
                cut = False
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if cut:  # promise the whole file, send half of it, hang up
                state.cuts += 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-transfer (the interrupted downloads tested here) is expected:
    no traceback for it in the test output."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def fake_hub(published):
    state = FakeHub(published)
    servers = []
    for role in ("hub", "cdn"):
        server = _QuietServer(("127.0.0.1", 0), _handler(state, role))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        setattr(state, f"{role}_url", f"http://127.0.0.1:{server.server_address[1]}")
    yield state
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, fake_hub):
    """Isolated caches, the local Hub as HF_ENDPOINT, no telemetry, no Xet, no waiting."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("PARCLI_HOME", str(tmp_path / "parcli"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
    for name in ("PARCLI_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub reads its cache folder from the environment once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # huggingface_hub waits between retries (1 s after a dropped connection, exponential backoff
    # on 5xx); the tests replace only its `time.sleep`, not the global one.
    no_wait = types.SimpleNamespace(sleep=lambda seconds: None, time=time.time)
    monkeypatch.setattr(huggingface_hub.file_download, "time", no_wait)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", no_wait)
    # Chunks of 10 MB by default: smaller ones make the tiny files span several.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    return tmp_path


def _catalogue(tmp_path: Path, published: dict[str, bytes], **extra: str) -> Catalogue:
    gpt_extra = "".join(f"{key} = {value}\n" for key, value in extra.items())
    text = f"""
default_family = "tiny"

[models.tiny-vq]
kind = "vq"
repo = "{REPO}"
file = "{VQ_FILE}"
arch = "VQ-2"
licence = "MIT"
approx_size_bytes = {len(published[VQ_FILE])}

[models.tiny-4x]
kind = "gpt"
repo = "{REPO}"
file = "{GPT_FILE}"
arch = "GPT-tiny"
grid = [8, 8]
regions = 4
family = "tiny"
tokenizer = "tiny-vq"
cfg_scale = 1.5
licence = "MIT"
approx_size_bytes = {len(published[GPT_FILE])}
{gpt_extra}
[models.tiny-missing]
kind = "gpt"
repo = "{REPO}"
file = "not-published.pt"
arch = "GPT-tiny"
grid = [8, 8]
regions = 16
family = "tiny"
tokenizer = "tiny-vq"
cfg_scale = 1.5
licence = "MIT"

[models.digits-vq]
kind = "vq"
path = "assets/digits/vq.safetensors"
arch = "VQ-4"
licence = "MIT"

[models.digits-4x]
kind = "gpt"
path = "assets/digits/gpt-4x.safetensors"
arch = "GPT-digits"
grid = [8, 8]
regions = 4
family = "digits"
tokenizer = "digits-vq"
cfg_scale = 1.0
licence = "MIT"
"""
    path = tmp_path / "weights.toml"
    path.write_text(text, encoding="utf-8")
    return Catalogue.load(path)


@pytest.fixture
def tiny_arch(monkeypatch):
    """The test transformer's (layers, heads, width) as a published architecture."""
    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))


@pytest.fixture
def cat(env, published) -> Catalogue:
    return _catalogue(env, published)


def _hf_blobs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "hf" / "hub").rglob("blobs/*") if p.is_file())


def _downloads(tmp_path: Path) -> list[str]:
    """Files in our downloads folder, relative to the folder of this revision."""
    folder = tmp_path / "parcli" / "downloads" / REPO.replace("/", "--") / "main"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _part(tmp_path: Path, name: str = GPT_FILE) -> Path:
    return tmp_path / "parcli" / "downloads" / REPO.replace("/", "--") / "main" / f"{name}.part"


def _hf_download(fake_hub: FakeHub, name: str) -> Path:
    """Put ``name`` into the HF cache the way other HF tools do."""
    path = huggingface_hub.hf_hub_download(REPO, name, endpoint=fake_hub.hub_url)
    return Path(path)


def _weights_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "parcli" / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------ locations


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PARCLI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "home"
    monkeypatch.delenv("PARCLI_HOME")
    assert hub.cache_dir() == tmp_path / "xdg" / "parcli"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.cache_dir() == tmp_path / "user" / ".cache" / "parcli"


def test_offline_switches(monkeypatch):
    for name in ("PARCLI_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not hub.offline_requested(False)
    assert hub.offline_requested(True)
    monkeypatch.setenv("PARCLI_OFFLINE", "1")
    assert hub.offline_requested(False)
    monkeypatch.delenv("PARCLI_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_requested(False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline_requested(False)


def test_packaged_entries_are_present_without_download(cat, fake_hub):
    digits = cat.get("digits-4x")
    assert hub.is_present(digits)
    assert hub.converted_path(digits) == digits.package_path
    assert hub.is_present(cat.get("digits-vq"))
    paths = hub.ensure_files([digits, cat.get("digits-vq")], offline=True)
    assert paths == {
        "digits-4x": digits.package_path,
        "digits-vq": cat.get("digits-vq").package_path,
    }
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------ fetching


def test_fetch_convert_and_generate(cat, env, fake_hub, published, tiny_arch):
    model_entry, vq_entry = cat.get("tiny-4x"), cat.get("tiny-vq")
    assert not hub.is_present(model_entry) and not hub.is_present(vq_entry)
    reports: list[tuple[int, int | None]] = []
    statuses: list[str] = []
    gpt_path = hub.fetch(
        model_entry,
        on_bytes=lambda d, t: reports.append((d, t)),
        on_status=statuses.append,
        keep_original=True,
    )
    vq_path = hub.fetch(vq_entry)

    assert gpt_path == env / "parcli" / "weights" / "tiny-4x.safetensors"
    assert hub.is_present(model_entry) and hub.is_present(vq_entry)
    size = len(published[GPT_FILE])
    assert reports[-1] == (size, size)
    assert all(b[0] >= a[0] for a, b in zip(reports, reports[1:], strict=False))
    assert any("converting" in s for s in statuses)
    # Exactly the Hub's request pattern: HEAD on resolve, then GET on the storage URL.
    assert ("hub", "HEAD", f"/{REPO}/resolve/main/{GPT_FILE}", None) in fake_hub.requests
    assert len(fake_hub.gets("/blobs/")) == 2

    record = hub.read_record(model_entry)
    assert record["sha256"] == _sha(published[GPT_FILE])
    assert record["url"] == f"{fake_hub.hub_url}/{REPO}/resolve/main/{GPT_FILE}"
    model, meta = load_transformer(gpt_path)
    assert meta["source_sha256"] == _sha(published[GPT_FILE])
    assert meta["catalogue_name"] == "tiny-4x"
    assert model.cfg.regions == 4 and model.cfg.grid == (8, 8) and model.cfg.n_head == 4
    # One copy stays: the original is deleted once converted, unless asked to keep it; a kept
    # one lies in our downloads folder, complete, under its own name.
    assert _downloads(env) == [GPT_FILE]
    assert hub.raw_download_path(model_entry).read_bytes() == published[GPT_FILE]
    assert record["downloaded_to"] == str(hub.raw_download_path(model_entry))
    assert record["download_kept"] and not hub.read_record(vq_entry)["download_kept"]
    assert _hf_blobs(env) == []

    # End to end: tokens of the converted model equal those of the model that was published.
    vq, _ = load_vq(vq_path)
    reference = tiny_model(regions=4, seed=3)
    plan = Plan((8, 8), 4)
    labels = torch.tensor([1, 7])
    sampling = SamplingConfig(cfg_scale=1.5, top_k=8)
    draws = image_uniforms(0, range(2), plan.num_tokens)
    tokens = generate_tokens(model, plan, labels, sampling, draws)
    expected = generate_tokens(reference, plan, labels, sampling, draws)
    assert torch.equal(tokens, expected)
    with torch.no_grad():
        images = vq.decode_codes(tokens)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()

    # A second fetch touches nothing.
    before = len(fake_hub.requests)
    assert hub.fetch(model_entry) == gpt_path
    assert len(fake_hub.requests) == before


def test_heads_from_a_preset(cat, env, fake_hub, monkeypatch):
    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    paths = hub.ensure_files([cat.get("tiny-4x"), cat.get("tiny-vq")], offline=False)
    model, _ = load_transformer(paths["tiny-4x"])
    assert model.cfg.n_head == 4


def test_commands_say_what_they_download(cat, env, fake_hub, monkeypatch):
    from rich.console import Console

    from parcli.commands import downloads

    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    shown = io.StringIO()
    monkeypatch.setattr(downloads, "console", Console(file=shown, width=200))
    entries = [cat.get("tiny-4x"), cat.get("tiny-vq"), cat.get("digits-4x")]
    paths = downloads.model_fetcher(offline=False, quiet=False)(entries)
    assert "Downloading tiny-4x" in shown.getvalue() and "Downloading tiny-vq" in shown.getvalue()
    assert "digits" not in shown.getvalue()  # packaged: nothing to download
    assert paths == {entry.name: hub.converted_path(entry) for entry in entries}
    assert paths["tiny-4x"].is_file() and paths["tiny-vq"].is_file()


def test_unknown_heads_fail_without_leaving_a_file(cat, env, fake_hub, monkeypatch):
    with pytest.raises(hub.FetchError, match="heads"):
        hub.fetch(cat.get("tiny-4x"))
    assert not hub.is_present(cat.get("tiny-4x"))
    assert [n for n in _weights_files(env) if not n.endswith(".lock")] == []
    # The download itself is kept: the retry converts without downloading again.
    gets = len(fake_hub.gets("/blobs/"))
    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    hub.fetch(cat.get("tiny-4x"))
    assert len(fake_hub.gets("/blobs/")) == gets


def test_download_cut_off_midway_is_resumed(cat, env, fake_hub, published, tiny_arch):
    # huggingface_hub writes whole chunks, so the resumed request starts after the last chunk
    # that arrived before the cut.
    chunk = CHUNK
    fake_hub.mode = "cut-once"
    reports: list[int] = []
    path = hub.fetch(cat.get("tiny-4x"), on_bytes=lambda d, t: reports.append(d))
    size = len(published[GPT_FILE])
    ranges = [r[3] for r in fake_hub.gets("/blobs/")]
    assert fake_hub.cuts == 1
    assert ranges == [None, f"bytes={(size // 2) // chunk * chunk}-"]
    assert reports[-1] == size and max(reports) == size
    assert hub.read_record(cat.get("tiny-4x"))["sha256"] == _sha(published[GPT_FILE])
    assert load_transformer(path)[1]["source_sha256"] == _sha(published[GPT_FILE])
    assert _downloads(env) == []  # no part file, no sidecar, no original left


def _check_converted(entry, path: Path, data: bytes) -> None:
    assert hub.read_record(entry)["sha256"] == _sha(data)
    assert load_transformer(path)[1]["source_sha256"] == _sha(data)
    assert not hub.raw_download_path(entry).exists()  # converted, so deleted


def test_failed_download_is_resumed_by_the_next_run(cat, env, fake_hub, published, tiny_arch):
    entry = cat.get("tiny-4x")
    fake_hub.mode = "cut-then-500"
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(entry)
    message = str(info.value)
    assert re.search(r"server error \(HTTP 500\).*try again later", message)
    assert "run `par weights fetch tiny-4x` again to resume" in message and "\n" not in message
    assert not hub.is_present(entry)
    assert _hf_blobs(env) == []
    assert _downloads(env) == [f"{GPT_FILE}.part", f"{GPT_FILE}.part.json"]
    kept = _part(env).stat().st_size
    assert 0 < kept < len(published[GPT_FILE])
    assert _part(env).read_bytes() == published[GPT_FILE][:kept]

    fake_hub.mode = "ok"
    reports: list[tuple[int, int | None]] = []
    path = hub.fetch(entry, on_bytes=lambda d, t: reports.append((d, t)))
    size = len(published[GPT_FILE])
    assert fake_hub.gets("/blobs/")[-1][3] == f"bytes={kept}-"
    assert reports[0] == (kept, size) and reports[-1] == (size, size)  # the bar starts at the part
    _check_converted(entry, path, published[GPT_FILE])
    assert _downloads(env) == []


def _interrupt_after(limit: int):
    def on_bytes(done: int, total: int | None) -> None:
        if done >= limit:
            raise KeyboardInterrupt

    return on_bytes


def test_interrupted_fetch_resumes_across_runs(cat, env, fake_hub, published, tiny_arch):
    """Ctrl-C midway keeps the part file; the next run asks only for the rest."""
    entry = cat.get("tiny-4x")
    size = len(published[GPT_FILE])
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(entry, on_bytes=_interrupt_after(3 * CHUNK))
    kept = _part(env).stat().st_size
    assert 0 < kept < size and not hub.is_present(entry)
    assert json.loads(_part(env).with_suffix(".part.json").read_text())["size"] == size

    path = hub.fetch(entry)
    assert [r[3] for r in fake_hub.gets("/blobs/")] == [None, f"bytes={kept}-"]
    _check_converted(entry, path, published[GPT_FILE])
    assert _downloads(env) == []


def test_changed_remote_file_restarts_the_download(cat, env, fake_hub, published, tiny_arch):
    entry = cat.get("tiny-4x")
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(entry, on_bytes=_interrupt_after(2 * CHUNK))
    assert _part(env).stat().st_size > 0
    # A new version is published under the same name: another etag (and size).
    changed = _pickle(tiny_model(regions=4, seed=11).state_dict())
    fake_hub.files[GPT_FILE] = changed
    fake_hub.blobs[_sha(changed)] = changed

    path = hub.fetch(entry)
    assert fake_hub.gets("/blobs/")[-1][3] is None  # from byte 0, not from the stale part
    _check_converted(entry, path, changed)


def test_not_found(cat, env, fake_hub, tiny_arch):
    entry = cat.get("tiny-missing")
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(entry)
    message = str(info.value)
    assert message == (
        f"tiny-missing: not-published.pt not found at "
        f"{fake_hub.hub_url}/{REPO}/resolve/main/not-published.pt"
    )
    assert "\n" not in message


def test_server_error(cat, env, fake_hub):
    fake_hub.mode = "500"
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(cat.get("tiny-vq"))
    message = str(info.value)
    assert "server error (HTTP 500)" in message and "try again later" in message
    assert "\n" not in message
    assert not hub.is_present(cat.get("tiny-vq"))


def test_connection_refused(cat, env, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(hub.FetchError, match=rf"cannot connect to 127\.0\.0\.1:{port}"):
        hub.fetch(cat.get("tiny-vq"))


def test_sha256_mismatch_discards_the_download(env, fake_hub, published, tiny_arch):
    cat = _catalogue(env, published, sha256=f'"{"ab" * 32}"')
    entry = cat.get("tiny-4x")
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(entry)
    message = str(info.value)
    assert "sha256" in message and _sha(published[GPT_FILE]) in message and "ab" * 32 in message
    assert "discarded" in message
    assert _hf_blobs(env) == [] and _downloads(env) == []
    assert not hub.is_present(entry)
    assert hub.read_record(entry) is None


def test_sha256_match_is_accepted(env, fake_hub, published, tiny_arch):
    cat = _catalogue(env, published, sha256=f'"{_sha(published[GPT_FILE])}"')
    path = hub.fetch(cat.get("tiny-4x"))
    assert hub.read_record(cat.get("tiny-4x"))["sha256_expected"] == _sha(published[GPT_FILE])
    assert path.is_file()


@pytest.mark.parametrize("switch", ["flag", "PARCLI_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_touches_the_network(cat, env, fake_hub, monkeypatch, switch):
    if switch != "flag":
        monkeypatch.setenv(switch, "1")
    entries = [cat.get("tiny-4x"), cat.get("tiny-vq")]
    with pytest.raises(hub.FetchError) as info:
        hub.ensure_files(entries, offline=switch == "flag")
    assert str(info.value) == (
        "tiny-4x is not downloaded (tiny-4x.pt); run `par weights fetch tiny-4x`, "
        "or use the model `digits`, which ships with parcli"
    )
    with pytest.raises(hub.FetchError, match="tiny-vq is not downloaded"):
        hub.fetch(entries[1], offline=switch == "flag")
    assert fake_hub.requests == []


def test_offline_converts_a_complete_download(cat, env, fake_hub, monkeypatch, tiny_arch):
    monkeypatch.setenv("PARCLI_KEEP_ORIGINAL", "1")
    entry = cat.get("tiny-4x")
    hub.fetch(entry)
    assert hub.remove(entry) > 0
    assert not hub.is_present(entry)
    requests = len(fake_hub.requests)
    assert hub.fetch(entry, offline=True).is_file()
    assert len(fake_hub.requests) == requests


def test_offline_ignores_a_part_file(cat, env, fake_hub, tiny_arch):
    entry = cat.get("tiny-4x")
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(entry, on_bytes=_interrupt_after(CHUNK))
    requests = len(fake_hub.requests)
    with pytest.raises(hub.FetchError, match="tiny-4x is not downloaded"):
        hub.fetch(entry, offline=True)
    assert len(fake_hub.requests) == requests and _part(env).is_file()


def test_a_copy_in_the_hf_cache_is_used(cat, env, fake_hub, published, tiny_arch):
    entry = cat.get("tiny-4x")
    _hf_download(fake_hub, GPT_FILE)  # as another HF tool would have
    gets = len(fake_hub.gets("/blobs/"))
    requests = len(fake_hub.requests)
    path = hub.fetch(entry)
    assert len(fake_hub.requests) == requests and len(fake_hub.gets("/blobs/")) == gets
    assert _downloads(env) == []
    assert load_transformer(path)[1]["source_sha256"] == _sha(published[GPT_FILE])


def test_concurrent_fetches_download_once(cat, env, fake_hub, tiny_arch):
    entry = cat.get("tiny-4x")
    results: list[Path] = []
    errors: list[BaseException] = []
    waits: list[str] = []

    def worker() -> None:
        try:
            results.append(hub.fetch(entry, on_status=waits.append))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert len(fake_hub.gets("/blobs/")) == 1
    assert load_transformer(results[0])[0].cfg.regions == 4


def test_lock_is_exclusive_between_processes(cat, env):
    """While one process holds NAME.lock, another cannot take it."""
    lock = hub._in_weights(cat.get("tiny-4x"), ".lock")
    probe = (
        "import fcntl, sys\n"
        "with open(sys.argv[1], 'a+b') as f:\n"
        "    try:\n"
        "        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    except BlockingIOError:\n"
        "        sys.exit(3)\n"
    )
    with hub._locked(lock, None, "tiny-4x"):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0


def test_remove(cat, env, fake_hub):
    entry = cat.get("tiny-vq")
    assert hub.remove(entry) == 0
    hub.fetch(entry, keep_original=True)
    assert hub.remove(entry) > 0
    assert not hub.is_present(entry)
    assert _downloads(env) == [VQ_FILE]
    hub.fetch(entry)
    assert hub.remove(entry, download=True) > 0
    assert _downloads(env) == []
    # A part file left by an interrupted run goes too, and so does an HF-cache copy.
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(entry, on_bytes=_interrupt_after(CHUNK))
    assert _part(env, VQ_FILE).is_file()
    _hf_download(fake_hub, VQ_FILE)
    assert len(_hf_blobs(env)) == 1
    assert hub.remove(entry, download=True) > 0
    assert _downloads(env) == [] and _hf_blobs(env) == []
    with pytest.raises(hub.FetchError, match="ships with parcli"):
        hub.remove(cat.get("digits-vq"))


# ------------------------------------------------------------------------------ command line


def _run(*args: str):
    return CliRunner().invoke(weights_cli.app, list(args))


def test_cli_fetch_list_path_remove(cat, env, fake_hub, monkeypatch):
    monkeypatch.setitem(GPT_PRESETS, "GPT-tiny", (2, 4, 64))
    toml = str(env / "weights.toml")

    result = _run("path", "tiny-4x", "--catalogue", toml)
    assert result.exit_code == 1
    assert result.stdout.strip().endswith("tiny-4x.safetensors")

    result = _run("fetch", "tiny", "--regions", "4", "--catalogue", toml)
    assert result.exit_code == 0, result.output
    assert "Downloading tiny-4x" in result.output and "Downloading tiny-vq" in result.output
    assert hub.is_present(cat.get("tiny-4x")) and hub.is_present(cat.get("tiny-vq"))

    result = _run("list", "--json", "--catalogue", toml)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tiny-4x"]["present"] and rows["tiny-vq"]["present"]
    assert rows["digits-4x"]["present"] and rows["digits-4x"]["packaged"]
    assert not rows["tiny-missing"]["present"]
    assert rows["tiny-4x"]["family"] == "tiny" and rows["tiny-4x"]["regions"] == 4
    assert rows["tiny-4x"]["download_bytes"] == cat.get("tiny-4x").approx_size_bytes
    assert rows["tiny-4x"]["sha256"] == hub.read_record(cat.get("tiny-4x"))["sha256"]

    result = _run("list", "--catalogue", toml)
    assert result.exit_code == 0 and "tiny-4x" in result.stdout and "digits-4x" in result.stdout

    result = _run("path", "tiny-4x", "--catalogue", toml)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(hub.converted_path(cat.get("tiny-4x")))

    result = _run("remove", "tiny-4x", "--catalogue", toml)
    assert result.exit_code == 0 and "removed" in result.stdout
    assert not hub.is_present(cat.get("tiny-4x"))


def test_cli_errors_are_one_line(cat, env, fake_hub):
    toml = str(env / "weights.toml")
    result = _run("fetch", "tiny-missing", "--catalogue", toml)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found at" in lines[0] and "Traceback" not in result.output

    result = _run("fetch", "no-such-model", "--catalogue", toml)
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_a_file_in_the_hf_cache_is_never_deleted(cat, env, fake_hub, monkeypatch):
    entry = cat.get("tiny-vq")
    hub.fetch(entry, keep_original=True)
    assert hub.remove(entry) > 0
    # Pretend the original is in the user's Hugging Face cache: it stays after conversion.
    elsewhere = env / "hf-cache" / VQ_FILE
    elsewhere.parent.mkdir()
    hub.raw_download_path(entry).rename(elsewhere)
    monkeypatch.setattr(hub, "cached_download", lambda e: elsewhere)
    hub.fetch(entry)
    assert elsewhere.is_file() and hub.read_record(entry)["download_kept"]


@pytest.mark.parametrize("where", ["download", "conversion"])
def test_a_full_disk_is_refused_before_anything_is_written(
    cat, env, fake_hub, monkeypatch, where, tiny_arch
):
    entry = cat.get("tiny-4x")
    if where == "conversion":  # the original is on disk; only the converted copy must fit
        hub.fetch(entry, keep_original=True)
        hub.remove(entry)
    before = sorted(p.relative_to(env) for p in env.rglob("*") if p.is_file())
    size = len(hub.raw_download_path(entry).read_bytes()) if where == "conversion" else None
    monkeypatch.setattr(hub, "free_bytes", lambda folder: 1000)
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(entry)
    message = str(info.value)
    assert "tiny-4x needs" in message and "that disk has 1.0 kB free" in message
    assert "PARCLI_HOME" in message
    if size is not None:
        assert "to download" not in message
    after = sorted(
        p.relative_to(env) for p in env.rglob("*") if p.is_file() and p.suffix != ".lock"
    )
    assert [p for p in after if p.suffix != ".lock"] == [p for p in before if p.suffix != ".lock"]
    assert not hub.is_present(entry)


def test_fetch_can_store_bf16_at_half_the_size(cat, env, fake_hub, published, tiny_arch):
    entry = cat.get("tiny-4x")
    full = hub.fetch(entry, keep_original=True)
    full_size = full.stat().st_size
    hub.remove(entry)
    half = hub.fetch(entry, dtype="bf16")
    state, *_ = read_checkpoint(half)
    floats = [t for t in state.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)
    assert half.stat().st_size < 0.6 * full_size


def test_weights_fetch_refuses_an_unknown_dtype_before_downloading(fake_hub, env):
    from typer.testing import CliRunner

    from parcli.cli import app

    result = CliRunner().invoke(app, ["weights", "fetch", "par-3b-4x", "--dtype", "int3"])
    assert result.exit_code == 2 and "--dtype: unknown dtype 'int3'" in result.output
    assert fake_hub.requests == []


def test_a_download_says_what_how_large_from_and_to_where(cat, env, fake_hub):
    toml = str(env / "weights.toml")
    entry = cat.get("tiny-vq")
    result = _run("fetch", "tiny-vq", "--catalogue", toml)
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())  # however the console wrapped it
    host = fake_hub.hub_url.removeprefix("http://")
    assert (
        f"Downloading tiny-vq: {entry.file} (about {hub.human_size(entry.approx_size_bytes)}) "
        f"from {host}/{entry.repo} into {hub.converted_path(entry).parent}"
    ) in said


def test_without_a_network_a_download_fails_at_once_in_one_line(cat, env, monkeypatch, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")

    def never(*args, **kwargs):
        raise AssertionError("huggingface_hub was asked (and would retry five times)")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", never)
    result = _run("fetch", "tiny-vq", "--catalogue", str(env / "weights.toml"))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot connect to 127.0.0.1:{port}" in lines[0], lines
    assert "Retrying" not in caplog.text and "Traceback" not in result.output
