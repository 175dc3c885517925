"""Turn a language model's answer into exactly K valid, distinct candidates, whatever it says.

The answer is untrusted text. The first JSON object or array in it is read with the standard
JSON decoder (prose or a code fence around it is ignored; nothing is repaired or guessed).
Its ranking entries name candidates by number (what the prompt asks for), by item id
(`{"id": ...}`) or by title (case, spacing, quotes and a trailing ", The" do not matter).
Entries that name no candidate are ignored, repeats are dropped, and the slots left over are
filled from the top-K stage's order. The result always holds min(K, N) distinct candidates.

Every user gets a status and, when the answer was not used cleanly, a reason:

| status | meaning |
|---|---|
| `used` | every slot came from the answer (a reason names a defect that cost nothing, e.g. `wrong-count` for extra entries) |
| `partial` | some slots came from the answer, the rest from the top-K order |
| `fallback` | the top-K order: the answer was unusable, or no prompt was sent |
| `not-selected` | outside `rerank.users` or the token budget: the top-K order, no prompt sent |

| reason | what happened |
|---|---|
| `empty` | the answer was empty or whitespace |
| `not-json` | no complete JSON object or array in it (garbage, or cut off by max_new_tokens) |
| `wrong-shape` | JSON, but not `{"ranking": [...]}` or a list |
| `wrong-count` | fewer or more than K entries (and nothing worse) |
| `unknown-title` | an entry's title or text matches no candidate |
| `not-candidate` | a number outside 1..N, or an id that is not a candidate |
| `duplicate` | a candidate named twice |
| `bad-entry` | an entry that is not a number, a string or an object naming an item |
| `too-long` | the prompt plus max_new_tokens exceeds the model's context (not sent) |
| `engine-error` | the engine failed on this prompt (vLLM, with continue-on-error) |
| `no-candidates` | the user has no candidates (nothing to rerank) |
| `not-selected` / `over-budget` | with status `not-selected`: outside rerank.users / past rerank.token_budget |

The reason given is the first problem met, reading the answer in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from chatrec.rerank.prompt import Candidate, clip

USED, PARTIAL, FALLBACK, NOT_SELECTED = "used", "partial", "fallback", "not-selected"
STATUSES = (USED, PARTIAL, FALLBACK, NOT_SELECTED)

EMPTY = "empty"
NOT_JSON = "not-json"
WRONG_SHAPE = "wrong-shape"
WRONG_COUNT = "wrong-count"
UNKNOWN_TITLE = "unknown-title"
NOT_CANDIDATE = "not-candidate"
DUPLICATE = "duplicate"
BAD_ENTRY = "bad-entry"
TOO_LONG = "too-long"
ENGINE_ERROR = "engine-error"
NO_CANDIDATES = "no-candidates"
OVER_BUDGET = "over-budget"

# One sentence is rarely over 200 characters; 280 leaves room and keeps a runaway answer
# from filling the output table.
EXPLANATION_CHARS = 280
QUESTION_CHARS = 200

_NUMBER = re.compile(r"^\s*#?\s*(\d+)\s*\.?\s*$")
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(.*), (the|a|an)$")


@dataclass(frozen=True)
class Reranked:
    """One user's outcome. `order` holds positions into the candidates (0-based), best
    first, min(K, N) of them, all distinct; `explanations[i]` belongs to `order[i]` (None
    for a slot the answer did not fill)."""

    order: tuple[int, ...]
    explanations: tuple[str | None, ...]
    status: str
    reason: str | None
    question: str | None = None
    llm_items: int = 0


def unchanged(n_candidates: int, k: int, *, status: str, reason: str | None) -> Reranked:
    """The top-K order as it was: for fallbacks and users who were not selected."""
    slots = min(k, n_candidates)
    return Reranked(tuple(range(slots)), (None,) * slots, status, reason)


def parse_answer(text: str | None, candidates: Sequence[Candidate], k: int) -> Reranked:
    """The answer `text` for `candidates` (the top-K stage's order) -> exactly min(K, N)
    distinct candidates with a status and reason (see the module docstring)."""
    n = len(candidates)
    if n == 0:
        return unchanged(0, k, status=FALLBACK, reason=NO_CANDIDATES)
    if text is None or not text.strip():
        return unchanged(n, k, status=FALLBACK, reason=EMPTY)
    value = _first_json(text)
    if value is _NO_JSON:
        return unchanged(n, k, status=FALLBACK, reason=NOT_JSON)
    question = None
    if isinstance(value, dict):
        question = _clean(value.get("question"), QUESTION_CHARS)
        entries = value.get("ranking")
    else:
        entries = value
    if not isinstance(entries, list):
        return unchanged(n, k, status=FALLBACK, reason=WRONG_SHAPE)

    slots = min(k, n)
    resolver = _Resolver(candidates)
    picked: list[int] = []
    explanations: list[str | None] = []
    problems: list[str] = []
    for entry in entries:
        position, problem = resolver.resolve(entry, taken=picked)
        if problem is not None:
            problems.append(problem)
            continue
        picked.append(position)
        explanations.append(_clean(entry.get("explanation"), EXPLANATION_CHARS) if isinstance(entry, dict) else None)
    if len(entries) != slots:
        problems.append(WRONG_COUNT)
    reason = problems[0] if problems else None
    if not picked:  # an answer that names no candidate: its question is not trusted either
        return Reranked(*_filled([], [], n, slots), FALLBACK, reason or WRONG_COUNT, None, 0)
    llm_items = min(len(picked), slots)
    order, texts = _filled(picked[:slots], explanations[:slots], n, slots)
    status = USED if llm_items == slots else PARTIAL
    return Reranked(order, texts, status, reason, question, llm_items)


def _filled(picked: list[int], explanations: list[str | None], n: int, slots: int):
    """The answer's picks, then the top-K order's remaining candidates, to `slots` items."""
    chosen = set(picked)
    rest = [i for i in range(n) if i not in chosen][: slots - len(picked)]
    return tuple(picked + rest), tuple(explanations + [None] * len(rest))


_NO_JSON = object()


def _first_json(text: str) -> Any:
    """The first complete JSON object or array in `text`, or _NO_JSON."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            return value
    return _NO_JSON


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s")


def one_sentence(text: str | None) -> str | None:
    """A free-text answer -> its first sentence (first non-empty line, surrounding quotes
    and markdown stars dropped), capped at EXPLANATION_CHARS; None when nothing is left."""
    if not text:
        return None
    line = next((l for l in text.splitlines() if l.strip(" \t\"'*`")), "")
    line = line.replace("**", "").strip(" \t\"'*`")
    return _clean(_SENTENCE_END.split(line, maxsplit=1)[0].strip(" \"'”’“‘"), EXPLANATION_CHARS)


def _clean(value: Any, chars: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return clip(value, chars)


def _title_key(title: str) -> str:
    """Case, spacing, surrounding quotes and a MovieLens-style trailing article ignored:
    "Matrix, The" and " the  MATRIX " give the same key."""
    flat = " ".join(title.split()).strip("\"'`*").rstrip(".").strip().casefold()
    match = _TRAILING_ARTICLE.match(flat)
    return f"{match.group(2)} {match.group(1)}" if match else flat


class _Resolver:
    """Maps an answer's entry to a candidate position."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.n = len(candidates)
        self.by_id = {c.item_id: i for i, c in reversed(list(enumerate(candidates)))}
        # Titles can repeat (remakes): a title names the first such candidate not yet taken.
        self.by_title: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            keys = {_title_key(c.title), _title_key(_YEAR.sub("", c.title))}
            for key in keys:
                self.by_title.setdefault(key, []).append(i)

    def resolve(self, entry: Any, *, taken: list[int]) -> tuple[int, str | None]:
        if isinstance(entry, dict):
            if "item" in entry:
                entry = entry["item"]
            elif "id" in entry:
                item_id = entry["id"]
                if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
                    return -1, BAD_ENTRY
                position = self.by_id.get(str(item_id).strip())
                return self._check(position, taken, NOT_CANDIDATE)
            elif "title" in entry:
                entry = entry["title"]
                if not isinstance(entry, str):
                    return -1, BAD_ENTRY
                return self._title(entry, taken)
            else:
                return -1, BAD_ENTRY
        if isinstance(entry, bool):
            return -1, BAD_ENTRY
        if isinstance(entry, float) and entry.is_integer():
            entry = int(entry)
        if isinstance(entry, int):
            return self._number(entry, taken)
        if isinstance(entry, str):
            match = _NUMBER.match(entry)
            if match:
                return self._number(int(match.group(1)), taken)
            return self._title(entry, taken)
        return -1, BAD_ENTRY

    def _number(self, number: int, taken: list[int]) -> tuple[int, str | None]:
        return self._check(number - 1 if 1 <= number <= self.n else None, taken, NOT_CANDIDATE)

    def _title(self, title: str, taken: list[int]) -> tuple[int, str | None]:
        positions = self.by_title.get(_title_key(title))
        if not positions:
            return -1, UNKNOWN_TITLE
        free = [p for p in positions if p not in taken]
        return (free[0], None) if free else (positions[0], DUPLICATE)

    @staticmethod
    def _check(position: int | None, taken: list[int], missing: str) -> tuple[int, str | None]:
        if position is None:
            return -1, missing
        if position in taken:
            return position, DUPLICATE
        return position, None
