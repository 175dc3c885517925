"""Is a model's explanation grounded in the catalogue's facts about the item it explains?

A sentence a language model writes about an item may name things that are not true of it:
another film, a director the catalogue does not list, the wrong year or genre. Before it is
published, every explanation is checked against the facts the prompt gave for the item and
for its because-item (the history item the top-K stage linked it to): their titles, their
item text (title, categories and readable knowledge-graph facts, chatrec.item_text) and
their categories. A sentence fails, with the first of these codes met:

| code | the sentence names |
|---|---|
| `other-title` | the title of another catalogue item (two or more words, or one capitalised word of 4+ letters) |
| `unknown-name` | a name (two or more capitalised words, e.g. a person) found in neither item's facts |
| `wrong-year` | a year (1800-2099) found in neither item's facts |
| `wrong-category` | a catalogue category (a genre, a product category) neither item has |
| `echo` | (explain prompts only) four or more words in a row of the prompt's own instructions: the model repeated the prompt instead of answering |

A failed explanation is replaced by the row's template `reason` and counted by code in the
manifest. The check is lexical: it cannot tell that a true-sounding sentence is vague, and a
title spelled differently is not recognised; what it catches is a sentence that names
something the catalogue says is not so, or that the catalogue does not say at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatrec.catalogue import ItemCatalogue

OTHER_TITLE, UNKNOWN_NAME, WRONG_YEAR, WRONG_CATEGORY = "other-title", "unknown-name", "wrong-year", "wrong-category"
ECHO = "echo"
CODES = (OTHER_TITLE, UNKNOWN_NAME, WRONG_YEAR, WRONG_CATEGORY, ECHO)
ECHO_WORDS = 4

# Titles are looked up as runs of up to this many words.
MAX_TITLE_WORDS = 8
# One-word titles ("Heat", "Seven") are also ordinary words: only a capitalised one that does
# not start the sentence, of at least this many letters, counts as a title.
MIN_ONE_WORD_TITLE = 4

_WORD = re.compile(r"[\w'&.-]+", re.UNICODE)
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
_TITLE_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(.*), (the|a|an)$")
# Words that start a sentence or a clause capitalised without naming anything.
_STARTERS = frozenset("""a an the this that these those it its it's if as since because both like you your
you'll you've fans another with for and but or so then here there what which who my our their his her
i i'm we they he she one each every more most also just only even all any some""".split())


def title_keys(display_title: str) -> set[str]:
    """The forms a sentence may name a title by: "Godfather, The (1972)" -> {"godfather, the",
    "the godfather", "godfather"}, case-folded, without the year."""
    flat = " ".join(_TITLE_YEAR.sub("", display_title).split()).casefold().strip(" \"'")
    keys = {flat} if flat else set()
    article = _TRAILING_ARTICLE.match(flat)
    if article:
        keys |= {f"{article.group(2)} {article.group(1)}", article.group(1)}
    return {k for k in keys if k}


def echoes(sentence: str, instructions: str, words: int = ECHO_WORDS) -> bool:
    """Whether `sentence` repeats `words` or more words in a row of `instructions` (a
    template's own text, placeholders left out)."""
    runs = set()
    for part in re.split(r"\$\w+", instructions):  # no run spans a placeholder
        said = [w.casefold() for w in _words(part)]
        runs |= {tuple(said[i:i + words]) for i in range(len(said) - words + 1)}
    got = [w.casefold() for w in _words(sentence)]
    return any(tuple(got[i:i + words]) in runs for i in range(len(got) - words + 1))


def _words(text: str) -> list[str]:
    return [w.strip(".'-") for w in _WORD.findall(text) if w.strip(".'-")]


def _key(words: list[str]) -> str:
    return " ".join(words).casefold()


@dataclass(frozen=True)
class _Facts:
    text: str  # case-folded: titles, item text, categories
    categories: frozenset[str]  # case-folded


class Grounding:
    """The check for one catalogue: `check(sentence, item_row, because_row)` -> None when
    grounded, else a code. `texts` are the catalogue's item texts by row (None: titles and
    categories only)."""

    def __init__(self, catalogue: ItemCatalogue, texts: list[str | None] | None = None) -> None:
        self.catalogue = catalogue
        self.texts = texts
        self.titles: dict[str, set[int]] = {}
        for row, title in enumerate(catalogue.display_titles):
            for key in title_keys(title):
                self.titles.setdefault(key, set()).add(row)
        self.categories = {c.casefold() for cats in catalogue.categories for c in cats if c.strip()}
        self._facts: dict[int, _Facts] = {}

    def facts(self, row: int) -> _Facts:
        facts = self._facts.get(row)
        if facts is None:
            cats = frozenset(c.casefold() for c in self.catalogue.categories[row])
            text = " \n".join([self.catalogue.display_titles[row], (self.texts[row] if self.texts else None) or "",
                               *sorted(cats)]).casefold()
            facts = self._facts[row] = _Facts(text, cats)
        return facts

    def check(self, sentence: str, item: int, because: int | None) -> str | None:
        rows = {item} | ({because} if because is not None and because >= 0 else set())
        facts = [self.facts(r) for r in rows]
        words = _words(sentence)
        for code in (self._other_title(words, rows), self._unknown_name(sentence, facts),
                     self._wrong_year(sentence, facts), self._wrong_category(words, facts)):
            if code:
                return code
        return None

    def _other_title(self, words: list[str], rows: set[int]) -> str | None:
        start = 0
        while start < len(words):
            # The longest title starting here; the item's own title is passed over whole, so
            # a word of it that is also another title ("Story") is not counted.
            span = next((words[start:end] for end in range(min(len(words), start + MAX_TITLE_WORDS), start, -1)
                         if _key(words[start:end]) in self.titles), None)
            if span is None:
                start += 1
                continue
            if self.titles[_key(span)] & rows:
                start += len(span)
                continue
            if len(span) > 1 or (start > 0 and span[0][:1].isupper() and len(span[0]) >= MIN_ONE_WORD_TITLE):
                return OTHER_TITLE
            start += 1
        return None

    @staticmethod
    def _unknown_name(sentence: str, facts: list[_Facts]) -> str | None:
        for clause in re.split(r"[.!?;:,()\"“”]", sentence):
            run: list[str] = []
            for word in [*_words(clause), ""]:
                if word[:1].isupper() and not (not run and word.casefold() in _STARTERS):
                    run.append(word)
                    continue
                if len(run) >= 2 and not any(_key(run) in f.text for f in facts):
                    return UNKNOWN_NAME
                run = []
        return None

    @staticmethod
    def _wrong_year(sentence: str, facts: list[_Facts]) -> str | None:
        for year in _YEAR.findall(sentence):
            if not any(year in f.text for f in facts):
                return WRONG_YEAR
        return None

    def _wrong_category(self, words: list[str], facts: list[_Facts]) -> str | None:
        have = set().union(*(f.categories for f in facts))
        # "comedy-drama" names two categories, unless the catalogue has it whole ("Sci-Fi").
        words = [part for w in words for part in ([w] if w.casefold() in self.categories else w.split("-")) if part]
        for n in (1, 2, 3):
            for start in range(len(words) - n + 1):
                key = _key(words[start:start + n])
                # "comedies", "thrillers": a plural names the category too.
                plural = key[:-3] + "y" if key.endswith("ies") else key[:-1] if key.endswith("s") else None
                for name in (key, plural):
                    if name in self.categories and name not in have and not any(name in f.text for f in facts):
                        return WRONG_CATEGORY
        return None
