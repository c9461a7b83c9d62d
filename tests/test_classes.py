"""Class names: ids, names and partial names resolve exactly; bad names get one helpful line."""

import pytest

from parcli.errors import SettingError
from parcli.io.classes import DIGITS, IMAGENET, class_set, class_set_of_size, resolve_classes
from parcli.io.outputs import sample_stems
from parcli.io.recipe import Sample
from tests.test_cli import assert_user_error, run

WELL_KNOWN = {
    "tench": 0,
    "goldfish": 1,
    "golden retriever": 207,
    "tabby": 281,
    "tiger cat": 282,
    "lion": 291,
    "tiger": 292,
    "zebra": 340,
    "giant panda": 388,
    "analog clock": 409,
    "basketball": 430,
    "coffee mug": 504,
    "cheeseburger": 933,
    "Granny Smith": 948,
    "volcano": 980,
}


def test_imagenet_has_a_thousand_classes_in_id_order():
    names = class_set(IMAGENET)
    assert len(names) == 1000
    assert names.label(207) == "golden retriever"
    assert names.names[2][:2] == ("great white shark", "white shark")


@pytest.mark.parametrize(("name", "class_id"), sorted(WELL_KNOWN.items()))
def test_well_known_names(name, class_id):
    names = class_set(IMAGENET)
    assert names.resolve(name) == class_id
    assert names.resolve(name.upper()) == class_id
    assert names.resolve(f"  {class_id} ") == class_id


def test_an_exact_name_wins_over_longer_names_that_contain_it():
    # "tiger" is also part of "tiger cat", "tiger shark", "tiger beetle": the exact name decides.
    assert class_set(IMAGENET).resolve("tiger") == 292
    assert class_set(IMAGENET).resolve("Carassius auratus") == 1  # any of a class's names


def test_a_unique_part_of_a_name():
    assert class_set(IMAGENET).resolve("cheeseburg") == 933


def test_ambiguous_and_unknown_names_name_the_candidates():
    names = class_set(IMAGENET)
    with pytest.raises(SettingError, match=r"'retriever' matches 5 .*207 golden retriever"):
        names.resolve("retriever")
    with pytest.raises(SettingError, match="134 crane, 517 crane"):
        names.resolve("crane")
    with pytest.raises(SettingError, match="closest: 207 golden retriever"):
        names.resolve("golden retrievr")
    with pytest.raises(SettingError, match="out of range: imagenet-1k ids run from 0 to 999"):
        names.resolve("1000")


def test_an_unknown_digit_name_suggests_one_class_by_its_word():
    with pytest.raises(SettingError, match=r"'eleven'; closest: 7 seven$"):
        class_set(DIGITS).resolve("eleven")


def test_digits_by_numeral_or_word():
    digits = class_set(DIGITS)
    assert [digits.resolve(t) for t in ("3", "three", "Seven")] == [3, 3, 7]
    assert digits.slug(3) == ""  # the file name would repeat the id


def test_class_sets_by_size_and_ids_without_names():
    assert class_set_of_size(1000).name == IMAGENET
    assert class_set_of_size(10).name == DIGITS
    assert class_set_of_size(7) is None
    assert resolve_classes(["4", "2"], None) == [4, 2]
    with pytest.raises(SettingError, match="have no names"):
        resolve_classes(["lion"], None)


def test_file_stems_count_samples_per_class_over_the_run():
    imagenet, digits = class_set(IMAGENET), class_set(DIGITS)
    labels = [207, 207, 1, 207]
    samples = [Sample(c, imagenet.label(c), i) for i, c in enumerate(labels)]
    assert sample_stems(samples) == [
        "207-golden-retriever-s0000",
        "207-golden-retriever-s0001",
        "1-goldfish-s0000",
        "207-golden-retriever-s0002",
    ]
    digits_samples = [Sample(3, digits.label(3), i) for i in range(2)]
    assert sample_stems(digits_samples) == ["3-s0000", "3-s0001"]
    assert sample_stems([Sample(5, None, 0)]) == ["5-s0000"]


def test_par_classes_lists_and_searches_offline():
    result = run("classes", "retriever")
    assert result.exit_code == 0, result.output
    assert "207  golden retriever" in result.output
    assert "5 of 1000 imagenet-1k classes" in result.output
    result = run("classes", "-m", "digits")
    assert result.exit_code == 0 and "3  3, three" in result.output
    assert_user_error(run("classes", "no such thing"), "no imagenet-1k class matches")


def test_generate_takes_a_name_and_names_the_files(tmp_path):
    out = tmp_path / "out"
    result = run("generate", "-m", "digits-4", "-c", "seven", "-n", "2", "-q", "-o", f"{out}/")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["7-s0000.png", "7-s0001.png"]
    bad = run("generate", "-m", "digits-4", "-c", "retriever", "-q", "-o", f"{out}/")
    assert_user_error(bad, "--class: no digits class is called 'retriever'")
