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
from chatrec.row_lists import RowLists

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


# Users per einsum block in `because_matrix`: bounds its (users, k, recent, dim) gathers.
BECAUSE_BLOCK = 256


def because_matrix(catalogue: ItemCatalogue, recommended: np.ndarray, recent: RowLists | list[np.ndarray]) -> np.ndarray:
    """`because_rows` for a block of users at once: (n, k) recommended rows (-1: none), n
    newest-first recent rows -> (n, k) the closest recent row each, -1 where there is none."""
    n, k = recommended.shape
    out = np.full((n, k), -1, dtype=np.int64)
    padded = RowLists.of(recent).padded()  # (n, r) newest first, -1 past the history
    if n == 0 or padded.shape[1] == 0:
        return out
    vectors = catalogue.vectors
    for start in range(0, n, BECAUSE_BLOCK):
        rec = recommended[start : start + BECAUSE_BLOCK]  # (b, k)
        hist = padded[start : start + BECAUSE_BLOCK]  # (b, r)
        sims = np.matmul(vectors[np.maximum(rec, 0)], vectors[np.maximum(hist, 0)].transpose(0, 2, 1))  # (b, k, r)
        sims = np.where(hist[:, None, :] >= 0, sims, -np.inf)
        best = np.argmax(sims, axis=2)  # (b, k) the first (most recent) of ties
        found = np.take_along_axis(hist, best, axis=1)  # (b, k)
        out[start : start + BECAUSE_BLOCK] = np.where(rec >= 0, found, -1)
    return out


class Reasons:
    """`reason` for many (item, because) pairs at once, the same words, vectorised: each
    item's categories are a bit set (one bit per category name), so what two items share is
    one AND; the few distinct shared sets are worded once each. Only pairs where both items
    have knowledge-graph entities go through `reason` one by one."""

    def __init__(self, catalogue: ItemCatalogue) -> None:
        self.catalogue = catalogue
        names = sorted(set().union(*catalogue.categories)) if catalogue.size else []
        bit = {name: 1 << i for i, name in enumerate(names)}
        # Python ints in an object array: any number of categories, & still elementwise.
        masks = [sum(bit[c] for c in cats) for cats in catalogue.categories]
        dtype = np.int64 if len(names) < 63 else object
        self.category_bits = np.array(masks, dtype=dtype)  # (n_items,)
        self.names = names
        self.has_entities = np.array([bool(e) for e in catalogue.entities], dtype=bool)  # (n_items,)
        self.titles = np.asarray(catalogue.display_titles, dtype=object)  # (n_items,)
        self._shared_text: dict[int, str] = {}

    def _both(self, mask: int) -> str:
        text = self._shared_text.get(mask)
        if text is None:
            shared = [self.names[i] for i in range(mask.bit_length()) if mask >> i & 1]  # sorted by name
            text = self._shared_text[mask] = ", ".join(shared[:MAX_CATEGORIES_IN_REASON])
        return text

    def __call__(self, items: np.ndarray, because: np.ndarray) -> np.ndarray:
        """(m,) item rows, (m,) because rows (-1: none) -> (m,) object array of reasons."""
        m = len(items)
        out = np.full(m, "recommended from your history", dtype=object)
        linked = np.flatnonzero(because >= 0)
        if len(linked) == 0:
            return out
        item, b = items[linked], because[linked]
        by_entity = self.has_entities[item] & self.has_entities[b]  # (l,) worded one by one
        for j in np.flatnonzero(by_entity):
            out[linked[j]] = reason(self.catalogue, int(item[j]), int(b[j]))
        rest = ~by_entity
        titles = self.titles[b[rest]]
        shared = (self.category_bits[item[rest]] & self.category_bits[b[rest]]).tolist()
        out[linked[rest]] = [f"like {t}: both {self._both(s)}" if s else f"similar to {t}"
                             for t, s in zip(titles, shared)]
        return out
