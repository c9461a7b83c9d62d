import re
import textwrap
from pathlib import Path

import pytest

import parcli
from parcli.config import GPT_PRESETS
from parcli.io.catalogue import DEFAULT_PATH, Catalogue, CatalogueError, load_catalogue, tomllib

# The published files and the paper's FIDs: name -> (repo, file, arch, regions, fid)
LLAMAGEN = "FoundationVision/LlamaGen"
PAR = "Epiphqny/PAR"
PUBLISHED = {
    "vq-ds16-c2i": (LLAMAGEN, "vq_ds16_c2i.pt", "VQ-16", None, 2.19),
    "llamagen-b-384": (LLAMAGEN, "c2i_B_384.pt", "GPT-B", 1, 6.09),
    "llamagen-l-384": (LLAMAGEN, "c2i_L_384.pt", "GPT-L", 1, 3.07),
    "llamagen-xl-384": (LLAMAGEN, "c2i_XL_384.pt", "GPT-XL", 1, 2.62),
    "llamagen-xxl-384": (LLAMAGEN, "c2i_XXL_384.pt", "GPT-XXL", 1, 2.34),
    "llamagen-3b-384": (LLAMAGEN, "c2i_3B_384.pt", "GPT-3B", 1, 2.18),
    "par-xl-4x": (PAR, "PAR-XL-4x.pt", "GPT-XL", 4, 2.61),
    "par-xxl-4x": (PAR, "PAR-XXL-4x.pt", "GPT-XXL", 4, 2.35),
    "par-3b-4x": (PAR, "PAR-3B-4x.pt", "GPT-3B", 4, 2.29),
    "par-3b-16x": (PAR, "PAR-3B-16x.pt", "GPT-3B", 16, 2.88),
}
PAR_CFG = {"par-xl-4x": 1.5, "par-xxl-4x": 1.435, "par-3b-4x": 1.345, "par-3b-16x": 1.5}


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


def test_packaged_file_is_the_repository_file():
    packaged = Path(parcli.__file__).parent / "weights.toml"
    root = Path(parcli.__file__).parent.parent / "weights.toml"
    assert packaged.is_file()
    if root.exists():
        assert packaged.read_bytes() == root.read_bytes()


def test_all_spec_entries(cat):
    downloaded = [e.name for e in cat.entries() if not e.is_packaged]
    assert sorted(downloaded) == sorted(PUBLISHED)
    for name, (repo, file, arch, regions, fid) in PUBLISHED.items():
        entry = cat.get(name)
        assert entry.name == name
        assert entry.repo == repo and entry.file == file and entry.arch == arch
        assert entry.url == f"https://huggingface.co/{repo}/resolve/main/{file}"
        assert entry.fid == pytest.approx(fid)
        assert entry.sha256 is None
        assert entry.path is None and not entry.is_packaged
        assert entry.licence
        assert entry.approx_size_bytes and entry.approx_size_bytes > 0
        if regions is None:
            assert entry.kind == "vq"
        else:
            assert entry.kind == "gpt"
            assert entry.regions == regions
            assert entry.grid == (24, 24)
            assert entry.tokenizer == "vq-ds16-c2i"
            assert entry.cfg_scale and entry.cfg_scale > 1
            assert entry.arch in GPT_PRESETS
    for name, cfg in PAR_CFG.items():
        assert cat.get(name).cfg_scale == pytest.approx(cfg)
    assert {e.licence for e in cat.entries() if e.repo == LLAMAGEN} == {"MIT"}


def test_families(cat):
    fams = cat.families
    shipped = {"digits", "digits-video"}
    assert set(fams) == {"par-xl", "par-xxl", "par-3b", "llamagen-b", "llamagen-l", *shipped}
    assert [e.name for e in fams["digits"]] == ["digits-1", "digits-4", "digits-16"]
    videos = ["digits-video-1", "digits-video-4", "digits-video-16"]
    assert [e.name for e in fams["digits-video"]] == videos
    for family in shipped:
        for entry in fams[family]:
            assert entry.is_packaged and entry.package_path.is_file()
            tokenizer = cat.tokenizer_for(entry)
            for shipped_file in (entry, tokenizer):
                size = shipped_file.package_path.stat().st_size
                assert shipped_file.approx_size_bytes == pytest.approx(size, rel=0.01)
    assert cat.get("digits-video-4").grid == (6, 8, 8)
    assert [e.name for e in fams["par-3b"]] == ["llamagen-3b-384", "par-3b-4x", "par-3b-16x"]
    assert [e.name for e in fams["par-xl"]] == ["llamagen-xl-384", "par-xl-4x"]
    assert [e.name for e in fams["par-xxl"]] == ["llamagen-xxl-384", "par-xxl-4x"]
    assert cat.default_family == "par-3b"
    assert cat.resolve(None).name == "par-3b-16x"


@pytest.mark.parametrize(
    ("model", "regions", "expected"),
    [
        ("par-3b", 16, "par-3b-16x"),
        ("par-3b", 4, "par-3b-4x"),
        ("par-3b", 1, "llamagen-3b-384"),
        ("par-3b", None, "par-3b-16x"),
        ("par-xl", None, "par-xl-4x"),
        ("par-xxl", 1, "llamagen-xxl-384"),
        ("llamagen-b", None, "llamagen-b-384"),
        ("PAR-3B", 4, "par-3b-4x"),
        ("par-3b-4x", None, "par-3b-4x"),
        ("par-3b-4x", 4, "par-3b-4x"),
        ("llamagen-xl-384", 1, "llamagen-xl-384"),
    ],
)
def test_resolve(cat, model, regions, expected):
    assert cat.resolve(model, regions).name == expected


def test_resolve_missing_region_count_lists_available(cat):
    with pytest.raises(CatalogueError) as info:
        cat.resolve("par-xl", 16)
    assert str(info.value) == "par-xl has no 16-region checkpoint; available: 1, 4"
    assert info.value.setting == "regions"


def test_resolve_entry_with_mismatched_regions(cat):
    with pytest.raises(CatalogueError, match="par-3b-4x is a 4-region checkpoint, not 16") as info:
        cat.resolve("par-3b-4x", 16)
    assert "give no region count, or use family 'par-3b'" in str(info.value)
    assert info.value.setting == "regions"


def test_resolve_tokenizer_is_not_a_model(cat):
    with pytest.raises(CatalogueError, match="not a generation model"):
        cat.resolve("vq-ds16-c2i", None)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("par-3b-8x", "par-3b-4x"), ("par-xxl-4", "par-xxl-4x"), ("llamagen-3b", "llamagen-3b-384")],
)
def test_unknown_names_suggest_close_matches(cat, name, suggestion):
    for lookup in (cat.get, cat.resolve):
        with pytest.raises(CatalogueError) as info:
            lookup(name)
        message = str(info.value)
        assert "\n" not in message
        assert name in message and suggestion in message


def test_unknown_name_without_close_match_lists_families(cat):
    with pytest.raises(CatalogueError, match="known: .*par-3b"):
        cat.resolve("stable-diffusion")


def test_tokenizer_lookup(cat):
    vq = cat.tokenizer_for(cat.get("par-3b-16x"))
    assert vq.name == "vq-ds16-c2i" and vq.kind == "vq"
    assert cat.tokenizer_for(cat.get("llamagen-b-384")) is vq
    assert cat.tokenizer_for(vq) is vq


def test_load_catalogue_is_cached():
    assert load_catalogue() is load_catalogue()


# ------------------------------------------------------------ custom catalogues

PACKAGED = """
default_family = "tiny"

[models.tiny-vq]
kind = "vq"
path = "assets/tiny/vq.safetensors"
arch = "VQ-tiny"
licence = "MIT"

[models.tiny-1x]
kind = "gpt"
path = "assets/tiny/gpt-1x.safetensors"
arch = "custom"
grid = [8, 8]
regions = 1
family = "tiny"
tokenizer = "tiny-vq"
cfg_scale = 1
licence = "MIT"

[models.tiny-4x]
kind = "gpt"
path = "assets/tiny/gpt-4x.safetensors"
arch = "custom"
grid = [8, 8]
regions = 4
family = "tiny"
tokenizer = "tiny-vq"
cfg_scale = 1.5
licence = "MIT"
sha256 = "{sha}"
"""


def _write(tmp_path, text) -> Path:
    path = tmp_path / "weights.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_package_relative_path_entries(tmp_path):
    cat = Catalogue.load(_write(tmp_path, PACKAGED.replace("{sha}", "ab" * 32)))
    entry = cat.resolve("tiny")
    assert entry.name == "tiny-4x"
    assert entry.is_packaged and entry.repo is None and entry.url is None
    assert (
        entry.package_path
        == Path(parcli.__file__).resolve().parent / "assets/tiny/gpt-4x.safetensors"
    )
    assert entry.filename == "gpt-4x.safetensors"
    assert entry.source == str(entry.package_path)
    assert entry.cfg_scale == 1.5 and isinstance(cat.get("tiny-1x").cfg_scale, float)
    assert entry.sha256 == "ab" * 32
    assert cat.tokenizer_for(entry).package_path.name == "vq.safetensors"


def test_url_is_derived_when_omitted(tmp_path):
    text = """
    default_family = "f"
    [models.v]
    kind = "vq"
    repo = "someone/repo"
    file = "v.pt"
    arch = "VQ-16"
    licence = "MIT"
    [models.g]
    kind = "gpt"
    repo = "someone/repo"
    file = "g.pt"
    arch = "GPT-B"
    grid = [16, 16]
    regions = 1
    family = "f"
    tokenizer = "v"
    cfg_scale = 2.0
    licence = "MIT"
    """
    cat = Catalogue.load(_write(tmp_path, text))
    assert cat.get("g").url == "https://huggingface.co/someone/repo/resolve/main/g.pt"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('kind = "vq"', 'kind = "diffusion"', "'tiny-vq': unknown kind 'diffusion'"),
        ("regions = 4\n", "", "'tiny-4x': missing field 'regions'"),
        ('licence = "MIT"\nsha256', "sha256", "'tiny-4x': missing field 'licence'"),
        ("regions = 4", "regions = 8", "'tiny-4x': field 'regions' must be one of"),
        ("regions = 4", 'regions = "4"', "'tiny-4x': field 'regions' must be an integer"),
        ("regions = 4", "regoins = 4", "'tiny-4x': unknown field 'regoins'"),
        ("regions = 4", 'regions = 4\nclasses = "cifar"', "'classes' must be one of imagenet-1k"),
        ('path = "assets/tiny/gpt-1x', 'path = "../gpt-1x', "'tiny-1x': field 'path'"),
        ("grid = [8, 8]\nregions = 4", "grid = [8]\nregions = 4", "'tiny-4x': field 'grid'"),
        ('tokenizer = "tiny-vq"\ncfg_scale = 1.5', 'tokenizer = "x"\ncfg_scale = 1.5', "'x'"),
        ('"{sha}"', '"abc"', "'tiny-4x': field 'sha256'"),
        ("regions = 4", "regions = 1", "two 1-region checkpoints"),
        ('default_family = "tiny"', 'default_family = "tinyy"', "default_family 'tinyy'"),
        (
            'path = "assets/tiny/vq.safetensors"',
            'path = "a.pt"\nrepo = "x/y"',
            "'tiny-vq': give either 'path' or 'repo'",
        ),
    ],
)
def test_validation_errors_name_entry_and_field(tmp_path, old, new, message):
    assert old in PACKAGED
    text = PACKAGED.replace(old, new, 1).replace("{sha}", "cd" * 32)
    with pytest.raises(CatalogueError) as info:
        Catalogue.load(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_downloaded_entry_needs_repo_and_file(tmp_path):
    text = PACKAGED.replace('path = "assets/tiny/vq.safetensors"', 'repo = "x/y"')
    with pytest.raises(CatalogueError, match="'tiny-vq': missing field 'file'"):
        Catalogue.load(_write(tmp_path, text.replace("{sha}", "cd" * 32)))


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read"):
        Catalogue.load(tmp_path / "nope.toml")
    with pytest.raises(CatalogueError, match="cannot parse"):
        Catalogue.load(_write(tmp_path, "default_family = \n"))


def test_sampling_defaults_come_from_the_sampling_table_unless_an_entry_sets_its_own(tmp_path):
    text = PACKAGED.replace("{sha}", "ab" * 32).replace(
        'default_family = "tiny"\n',
        'default_family = "tiny"\n\n[sampling]\ntop_k = 40\ntop_p = 0.9\n',
    )
    text = text.replace("cfg_scale = 1.5\n", "cfg_scale = 1.5\ntop_k = 8\n")
    cat = Catalogue.load(_write(tmp_path, text))
    one, four = cat.get("tiny-1x"), cat.get("tiny-4x")
    assert (one.top_k, one.top_p, one.temperature) == (40, 0.9, None)
    assert (four.top_k, four.top_p) == (8, 0.9)
    assert cat.get("tiny-vq").top_k is None  # tokenizers sample nothing
    with pytest.raises(CatalogueError, match=r"\[sampling\] may only set"):
        Catalogue.load(_write(tmp_path, text.replace("top_p = 0.9", "seed = 3")))
    with pytest.raises(CatalogueError, match="'top_p' must be in"):
        Catalogue.load(_write(tmp_path, text.replace("top_p = 0.9", "top_p = 0")))


def test_the_published_entries_sample_as_the_reference_fid_protocol(cat):
    for entry in cat.entries("gpt"):
        if entry.is_packaged:  # trained here: their own settings, in their model cards
            continue
        assert (entry.temperature, entry.top_k, entry.top_p) == (1.0, 0, 1.0), entry.name


@pytest.mark.parametrize(
    ("repo", "file", "field"),
    [
        ("x/y", "../../../../victim.txt", "file"),
        ("x/y", "/etc/passwd", "file"),
        ("x/y", "a\\\\..\\\\b.pt", "file"),
        ("../y", "g.pt", "repo"),
        ("x/..", "g.pt", "repo"),
        ("x", "g.pt", "repo"),
        ("x/y/z", "g.pt", "repo"),
    ],
)
def test_repo_and_file_cannot_lead_out_of_the_cache(tmp_path, repo, file, field):
    text = PACKAGED.replace(
        'path = "assets/tiny/vq.safetensors"', f'repo = "{repo}"\nfile = "{file}"'
    )
    with pytest.raises(CatalogueError, match=f"'tiny-vq': field '{field}'"):
        Catalogue.load(_write(tmp_path, text.replace("{sha}", "cd" * 32)))


def test_a_file_in_a_repository_folder_is_fine(tmp_path):
    text = PACKAGED.replace('path = "assets/tiny/vq.safetensors"', 'repo = "x/y"\nfile = "a/b.pt"')
    cat = Catalogue.load(_write(tmp_path, text.replace("{sha}", "cd" * 32)))
    assert cat.get("tiny-vq").url.endswith("/x/y/resolve/main/a/b.pt")


def test_generate_samples_published_models_as_the_authors_demo_does():
    from parcli.io.locate import model_files
    from parcli.sampling import SamplingConfig

    def fetch(entries):
        return {entry.name: Path(entry.filename) for entry in entries}

    demo = model_files("par-3b-4x", None, fetch=fetch, demo=True).defaults
    assert demo == SamplingConfig(cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)
    evaluation = model_files("par-3b-4x", None, fetch=fetch).defaults
    assert evaluation == SamplingConfig(cfg_scale=1.345, temperature=1.0, top_k=0, top_p=1.0)
    # Trained here, no authors' demo: the entry's own settings either way.
    assert model_files("digits-4", None, demo=True).defaults.cfg_scale == 2.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[demo]\nseed = 1", "may only set cfg_scale"),
        ("[demo]\ntop_k = 1.5", "'top_k' must be an integer"),
        ("[demo]\ncfg_scale = -1", "'cfg_scale' must be a number >= 0"),
        ("[demo]\ntop_p = 0", "'top_p' must be in (0, 1]"),
    ],
)
def test_demo_table_is_checked(table, message):
    data = tomllib.loads(table)
    data.update(tomllib.loads(DEFAULT_PATH.read_text(encoding="utf-8")) | {"demo": data["demo"]})
    with pytest.raises(CatalogueError, match=re.escape(message)):
        Catalogue.from_dict(data)


def test_every_catalogue_command_takes_catalogue_or_the_environment(tmp_path):
    from typer.testing import CliRunner

    from parcli.cli import app

    mine = tmp_path / "mine.toml"
    mine.write_text(
        DEFAULT_PATH.read_text(encoding="utf-8").replace(
            'default_family = "par-3b"', 'default_family = "digits"'
        ),
        encoding="utf-8",
    )
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    (tmp_path / "latin1.toml").write_bytes("# caf\xe9\n".encode("latin-1"))
    runner = CliRunner()
    commands = [
        ["classes", "7"],
        ["generate", "-c", "7", "-q", "-o", str(tmp_path / "x.png")],
        ["weights", "list"],
        ["weights", "path", "digits-4"],
        ["bench", "-m", "digits", "--regions", "4", "--repeats", "1", "--warmup", "0"],
        ["sample", "--per-class", "1", "--classes", "1", "--out", str(tmp_path / "s")],
        ["eval", "-m", "digits", "--regions", "4", "--samples-per-class", "1"],
    ]
    for command in commands:
        for args, env in (
            ([*command, "--catalogue", str(empty)], {}),
            (command, {"PARCLI_CATALOGUE": str(empty)}),
        ):
            result = runner.invoke(app, args, env=env)
            assert result.exit_code == 2, (args, result.output)
            assert "empty.toml: no [models.NAME] tables" in result.output, result.output
    bad = runner.invoke(app, ["weights", "list", "--catalogue", str(tmp_path / "latin1.toml")])
    assert bad.exit_code == 2 and "latin1.toml is not UTF-8 text" in bad.output
    # The chosen catalogue is read: its default family is the digits one.
    result = runner.invoke(app, ["classes", "--catalogue", str(mine)])
    assert result.exit_code == 0 and "10 of 10 digits classes" in result.output
    # ... and forgotten by the next command that names none.
    assert "1000 imagenet-1k" in runner.invoke(app, ["classes"]).output


def test_catalogue_messages_name_the_file_and_bound_the_grid(tmp_path):
    text = DEFAULT_PATH.read_text(encoding="utf-8").replace(
        "grid = [24, 24]", "grid = [100000, 100000]", 1
    )
    path = tmp_path / "other-name.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"^other-name.toml entry .*more than 65536 tokens"):
        Catalogue.load(path)


def test_shipped_checkpoints_carry_the_guidance_their_entries_give():
    from parcli.io.checkpoints import read_checkpoint

    for entry in load_catalogue().entries("gpt"):
        if entry.is_packaged:
            metadata = read_checkpoint(entry.package_path)[3]
            assert float(metadata.get("cfg_scale", "nan")) == entry.cfg_scale, entry.name
            assert float(metadata.get("temperature", "1")) == entry.temperature, entry.name


def test_every_packaged_file_has_its_sha256_in_the_catalogue():
    import hashlib

    from parcli.io.catalogue import PACKAGE_DIR, load_catalogue

    packaged = [e for e in load_catalogue().entries() if e.is_packaged]
    assert packaged
    for entry in packaged:
        digest = hashlib.sha256((PACKAGE_DIR / entry.path).read_bytes()).hexdigest()
        assert entry.sha256 == digest, entry.name
