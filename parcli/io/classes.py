"""Which id is which class for the catalogue's class sets; they ship inside the package, so
`par classes` and `--class NAME` work before any download."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from parcli.errors import SettingError

IMAGENET = "imagenet-1k"
DIGITS = "digits"
CLASS_SETS = (IMAGENET, DIGITS)
_IMAGENET_FILE = Path(__file__).parents[1] / "assets" / "imagenet-1k-classes.tsv"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_SHOWN = 8  # matches named in a message about an ambiguous name


@dataclass(frozen=True)
class ClassSet:
    name: str
    names: tuple[tuple[str, ...], ...]  # the names of class id i, most common first
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def label(self, class_id: int) -> str:
        """The class's first name ("golden retriever"); the id itself if it has none."""
        return self.names[class_id][0] if 0 <= class_id < len(self) else str(class_id)

    def slug(self, class_id: int) -> str:
        """The first name as a file-name part ("golden-retriever"); '' where it is the id."""
        return class_slug(self.label(class_id), class_id)

    def search(self, query: str) -> list[int]:
        """Ids equal to the query, or whose names contain it (case-insensitive), in id order."""
        query = query.strip().casefold()
        return [
            i
            for i, names in enumerate(self.names)
            if query == str(i) or any(query in name.casefold() for name in names)
        ]

    def resolve(self, text: str) -> int:
        """The class id `text` means: an id, a name, or part of exactly one class's names."""
        wanted = text.strip()
        try:
            class_id = int(wanted)
        except ValueError:
            pass
        else:
            if not 0 <= class_id < len(self):
                raise SettingError(
                    "class", f"class {class_id} is out of range: {self.name} ids run from 0 "
                    f"to {len(self) - 1} (`par classes` lists them)",
                )  # fmt: skip
            return class_id
        folded = wanted.casefold()
        exact = [i for i, names in enumerate(self.names) if folded in map(str.casefold, names)]
        found = exact or self.search(wanted)
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(f"{i} {self.label(i)}" for i in found[:_SHOWN])
            more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
            raise SettingError(
                "class", f"{text!r} matches {len(found)} {self.name} classes: {shown}{more}; "
                "give the id or a longer name",
            )  # fmt: skip
        # Ids are no names to spell near (7 is not close to "eleven"); one class is named once,
        # by the name that came close where its first name is only its id (7 seven, not 7 7).
        everything = {
            name.casefold(): (i, name)
            for i, names in enumerate(self.names)
            for name in names
            if name != str(i)
        }
        shown = {}
        for match in difflib.get_close_matches(folded, list(everything), n=3, cutoff=0.6):
            class_id, name = everything[match]
            label = self.label(class_id)
            shown.setdefault(class_id, f"{class_id} {name if label == str(class_id) else label}")
        hint = "`par classes QUERY` searches the names"
        if shown:
            hint = "closest: " + ", ".join(shown.values())
        raise SettingError("class", f"no {self.name} class is called {text!r}; {hint}")


@cache
def class_set(name: str) -> ClassSet:
    """One of CLASS_SETS."""
    if name == IMAGENET:
        names = []
        for line in _IMAGENET_FILE.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                class_id, _synset, lemmas = line.split("\t")
                assert int(class_id) == len(names), f"{_IMAGENET_FILE.name} is out of order"
                names.append(tuple(lemmas.split(", ")))
        return ClassSet(IMAGENET, tuple(names), "ILSVRC-2012 synsets, WordNet 3.0 lemmas (timm)")
    if name == DIGITS:
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        return ClassSet(DIGITS, tuple((str(i), word) for i, word in enumerate(words)), "MNIST")
    raise ValueError(f"unknown class set {name!r}; known: {', '.join(CLASS_SETS)}")


def class_set_of_size(count: int) -> ClassSet | None:
    """The class set a model with `count` classes most likely uses; None when none fits."""
    return next((class_set(n) for n in CLASS_SETS if len(class_set(n)) == count), None)


def class_slug(name: str | None, class_id: int) -> str:
    """A class name as a file-name part; '' for no name, or one that only repeats the id."""
    slug = _NOT_SLUG.sub("-", (name or "").casefold()).strip("-")
    return "" if slug == str(class_id) else slug


def resolve_classes(texts: list[str], classes: ClassSet | None) -> list[int]:
    """Class ids of --class values; names need a class set, ids do not."""
    if classes is not None:
        return [classes.resolve(text) for text in texts]
    ids = []
    for text in texts:
        try:
            ids.append(int(text))
        except ValueError:
            raise SettingError(
                "class", f"{text!r} is not a class id, and this model's classes have no names"
            ) from None
    return ids
