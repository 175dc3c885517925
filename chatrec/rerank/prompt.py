"""Rerank prompts: a versioned template rendered deterministically per user.

Templates are package files (chatrec/rerank/templates/<name>.txt) with `string.Template`
placeholders: $profile, $history (one line per recent item), $candidates (numbered lines of
item text), $k (items wanted) and $n (candidates shown). A template's version is its name
plus the sha256 of its bytes; the manifest records both, so a changed file is a new version.

The same user, history and candidates always give the same prompt, byte for byte: nothing
here depends on time, randomness or dictionary order.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

_LEADING_TITLE_ARTICLE = re.compile(r"^([^.]*?), (The|A|An)\b(?=\s*(\(\d{4}\))?(\.|$|\s))")
NO_PROFILE = "not given"
NO_HISTORY = "(nothing yet)"


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    sha256: str

    @property
    def version(self) -> str:
        """"rerank-v1@<first 12 hex digits of the sha256>": what the manifest names."""
        return f"{self.name}@{self.sha256[:12]}"


@dataclass(frozen=True)
class Candidate:
    """One candidate as the prompt shows it and the parser maps it back."""

    item_id: str
    title: str  # "Title (year)", as reasons name items
    text: str  # the prompt's line for it (item text, clipped)


def load_template(name: str) -> Template:
    """A packaged template by name (e.g. "rerank-v1"). Raises ValueError for an unknown name."""
    try:
        data = resources.files("chatrec.rerank").joinpath("templates", f"{name}.txt").read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no rerank template named {name!r} in chatrec/rerank/templates/") from None
    return Template(name=name, text=data.decode("utf-8"), sha256=hashlib.sha256(data).hexdigest())


def clip(text: str, chars: int) -> str:
    """`text` on one line, at most `chars` characters, cut at a word boundary with "..."."""
    flat = " ".join(text.split())
    if len(flat) <= chars:
        return flat
    cut = flat[: chars - 3]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" .,;:") + "..."


def render_prompt(
    template: Template,
    *,
    profile: str | None,
    history: Sequence[str],
    candidates: Sequence[Candidate],
    k: int,
) -> str:
    """The user message for one user. `history` is display titles, most recent first;
    candidates are numbered 1..n in the order given (the top-K stage's order)."""
    values = {
        "profile": " ".join(profile.split()) if profile and profile.strip() else NO_PROFILE,
        "history": "\n".join(f"- {title}" for title in history) if history else NO_HISTORY,
        "candidates": "\n".join(f"{i}. {c.text}" for i, c in enumerate(candidates, start=1)),
        "k": str(min(k, len(candidates))),
        "n": str(len(candidates)),
    }
    return string.Template(template.text).substitute(values)


def render_explain_prompt(template: Template, *, item: str, because: str | None) -> str:
    """The user message asking for one item's explanation: `item` and `because` are their
    item texts (title, categories, readable facts), clipped; titles read naturally."""
    return string.Template(template.text).substitute(
        {"item": natural_title(" ".join(item.split())),
         "because": natural_title(" ".join(because.split())) if because else NO_HISTORY})


def natural_title(text: str) -> str:
    """A catalogue title with a trailing article put back in front, as people write it:
    "Assignment, The (1997). Thriller" -> "The Assignment (1997). Thriller" (a small model
    given the catalogue's form tends to call the item "The (1997)")."""
    return _LEADING_TITLE_ARTICLE.sub(r"\2 \1", text, count=1)


def answer_schema(n_candidates: int, k: int) -> dict:
    """JSON schema of the answer the template asks for: engines with structured output
    (vLLM) constrain decoding to it; the parser checks the same rules either way."""
    k = min(k, n_candidates)
    return {
        "type": "object",
        "properties": {
            "ranking": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "item": {"type": "integer", "minimum": 1, "maximum": n_candidates},
                        "explanation": {"type": "string"},
                    },
                    "required": ["item", "explanation"],
                },
                "minItems": k,
                "maxItems": k,
            },
            "question": {"type": "string"},
        },
        "required": ["ranking", "question"],
    }
