"""Why an item was recommended: the history item it is most like, and what they share.

`because_item_id` is the item of the user's recent history whose vector is closest to the
recommended item's (ties go to the more recent one). The `reason` names the most specific
thing the two share, in this order:
1. a knowledge-graph entity (same director, writer, actor...), the rarest one first: an
   entity linked to many items (the language English) says nothing;
2. categories ("both Crime, Thriller");
3. otherwise text similarity ("similar to ...").
"""

from __future__ import annotations

import numpy as np

from chatrec.catalogue import ItemCatalogue

# An entity shared by more than this share of the catalogue (a country, a language, a
# broad genre) is too common to explain anything; directors and cast are far below it.
MAX_ENTITY_SHARE = 0.02
MAX_CATEGORIES_IN_REASON = 3

# Knowledge-graph relation labels read as nouns in a reason ("same director as ...").
_RELATION_NOUNS = {
    "directed by": "director",
    "written by": "writer",
    "produced by": "producer",
    "actor": "actor",
    "starring": "actor",
    "cinematography": "cinematographer",
    "production companies": "studio",
    "subjects": "subject",
    "sequel": "series",
    "prequel": "series",
    "author": "author",
    "artist": "artist",
    "brand": "brand",
    "creator": "creator",
}


def because_rows(catalogue: ItemCatalogue, recommended: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """(k,) recommended rows, (r,) recent rows newest first -> (k,) the closest recent row each."""
    if len(recent) == 0:
        return np.full(len(recommended), -1, dtype=np.int64)
    sims = catalogue.vectors[recommended] @ catalogue.vectors[recent].T  # (k, r)
    return recent[np.argmax(sims, axis=1)]  # argmax takes the first (most recent) of ties


def reason(catalogue: ItemCatalogue, item: int, because: int) -> str:
    if because < 0:
        return "recommended from your history"
    title = catalogue.display_titles[because]
    limit = max(2, int(MAX_ENTITY_SHARE * catalogue.size))
    shared_entities = catalogue.entities[item] & catalogue.entities[because]
    specific = sorted(
        (catalogue.entity_items.get(e, limit + 1), e)
        for e in shared_entities
        if catalogue.entity_items.get(e, limit + 1) <= limit
    )
    shared_categories = sorted(catalogue.categories[item] & catalogue.categories[because])
    parts = []
    if specific:
        label = specific[0][1].split("\t", 1)[0]
        parts.append(f"same {_RELATION_NOUNS.get(label, label)} as {title}")
    if shared_categories:
        both = ", ".join(shared_categories[:MAX_CATEGORIES_IN_REASON])
        parts.append(f"like {title}: both {both}" if not parts else f"both {both}")
    if not parts:
        return f"similar to {title}"
    return "; ".join(parts)
