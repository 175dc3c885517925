"""The grounding check of the rerank stage's explanations (chatrec.rerank.grounding) on a
small catalogue whose titles include ordinary words, a trailing article and a title inside
another."""

import json

import numpy as np
import pyarrow as pa
import pytest

from chatrec import schemas
from chatrec.catalogue import build_catalogue
from chatrec.item_text import render_item_text
from chatrec.rerank.grounding import Grounding, echoes, title_keys
from chatrec.rerank.prompt import natural_title
from tests.test_rerank_stage import ScriptedEngine, world  # noqa: F401 (a fixture)
from tests.test_rerank_stage import run as stage_run

TITLES = ["Heat", "Alien", "Toy Story", "Jaws", "Matrix, The", "Up", "Story", "Toy Story 2"]
CATEGORIES = [["Drama", "Crime"], ["Horror", "Sci-Fi"], ["Animation", "Children's"], ["Thriller"], ["Sci-Fi"],
              ["Animation", "Comedy"], ["Drama"], ["Animation"]]


@pytest.fixture(scope="module")
def grounding():
    n = len(TITLES)
    items = pa.table({
        "item_id": [f"i{k}" for k in range(n)], "title": TITLES, "year": [str(1990 + k) for k in range(n)],
        "categories": CATEGORIES,
        "description": ["A heist in Los Angeles." if k == 0 else f"number {k}" for k in range(n)],
        "attributes": [["directed by: Michael Mann"] if k == 0 else [] for k in range(n)],
    }).cast(schemas.ITEMS)
    catalogue = build_catalogue(items, np.eye(n, dtype=np.float32))
    texts = render_item_text(items).sort_by("row").column("text").to_pylist()
    return Grounding(catalogue, texts)


def test_title_keys_cover_a_trailing_article_and_drop_the_year():
    assert title_keys("Matrix, The (1999)") == {"matrix, the", "the matrix", "matrix"}
    assert title_keys("Toy Story (1995)") == {"toy story"}


@pytest.mark.parametrize("sentence, item, because", [
    ("Like Heat, Alien is a tense 1991 Horror film.", 1, 0),  # the item, its because-item, its year and genre
    ("The Matrix is Sci-Fi, as you like.", 4, 1),  # "Matrix, The" named the usual way
    ("Heat was directed by Michael Mann, set in Los Angeles.", 0, None),  # names from the item's own facts
    ("Toy Story 2 is a fun Animation sequel.", 7, 2),  # a title inside the item's own ("Story", "Toy Story")
    ("Up next: something lighter for you.", 3, None),  # "Up" starts the sentence: not the film
    ("It is a gripping thriller, like the crime drama you watched.", 3, 0),  # genres of the two items
    ("A story you will enjoy.", 3, None),  # a one-word title in lower case is a word
])
def test_grounded_sentences_pass(grounding, sentence, item, because):
    assert grounding.check(sentence, item, because) is None


@pytest.mark.parametrize("sentence, item, because, code", [
    ("Fans of Jaws will love it.", 1, 0, "other-title"),
    ("Like Toy Story, it is fun.", 1, 0, "other-title"),
    ("A worthy companion to the matrix.", 3, None, "other-title"),
    ("It has the charm of a Story you knew.", 3, None, "other-title"),
    ("Directed by Stanley Kubrick, it is a classic.", 3, None, "unknown-name"),
    ("A 1977 classic.", 3, None, "wrong-year"),
    ("A great horror ride.", 3, 0, "wrong-category"),
    ("Another of the best comedies.", 0, 1, "wrong-category"),
    ("A comedy-drama for the whole family.", 0, 6, "wrong-category"),
])
def test_sentences_that_name_anything_else_fail_with_their_code(grounding, sentence, item, because, code):
    assert grounding.check(sentence, item, because) == code


def test_a_fact_of_the_because_item_is_allowed_but_not_one_of_a_third_item(grounding):
    assert grounding.check("Set in Los Angeles like Heat.", 3, 0) is None
    assert grounding.check("Set in Los Angeles.", 3, 1) == "unknown-name"


def test_the_stage_replaces_ungrounded_explanations_by_the_reason_and_counts_them(ray_cluster, world):
    # u0's candidates are i1..i5 (Alien, Toy Story, Jaws, Ran, Brazil), each because of i0
    # (Heat, 1970, Drama); u1's are i0, i2..i5, because of i1 (Alien, 1971, Horror).
    answers = {
        "u0": json.dumps({"ranking": [
            {"item": 1, "explanation": "Like Heat, Alien is a tense 1971 Horror film."},
            {"item": 3, "explanation": "Fans of Fargo will love it."},
            {"item": 2, "explanation": "A 1999 classic."}]}),
        "u1": json.dumps({"ranking": [
            {"item": 5, "explanation": "A great war story."},
            {"item": 4, "explanation": "Directed by Stanley Kubrick."},
            {"item": 1, "explanation": "Heat is a 1970 Drama, like nothing else."}]}),
        # u2's answer is unusable: its top 2 of 3 slots get an explain prompt each (keyed
        # user<TAB>candidate position), u2's because-item being i2 (Toy Story).
        "u2": "",
        "u2\t0": '"Heat is a 1970 Drama worth your time." And more.',
        "u2\t1": "Like Jaws, it bites.",
        "u3\t1": "Say to them what the two share.",  # an echo of explain-v1's instructions
    }
    stats, recs, _, _ = stage_run(world, "grounding", engine=ScriptedEngine, answers=answers, users="all",
                                  explain_items=2)
    assert [r["explanation"] for r in recs["u0"]] == [
        "Like Heat, Alien is a tense 1971 Horror film.", "similar to Heat", "similar to Heat"]
    assert [r["explanation"] for r in recs["u1"]] == [
        "similar to Alien", "similar to Alien", "Heat is a 1970 Drama, like nothing else."]
    assert [r["item_id"] for r in recs["u1"]] == ["i5", "i4", "i0"]  # the order is the model's still
    assert [r["explanation"] for r in recs["u2"]] == [
        "Heat is a 1970 Drama worth your time.", "similar to Toy Story", None]
    # Users with a usable answer get explain prompts only for the slots it left unexplained.
    assert [r["explanation"] for r in recs["u3"]] == [None, "similar to Jaws", None]
    explanations = stats["explanations"]
    assert explanations["replaced_examples"]["other-title"] == ["Fans of Fargo will love it.", "Like Jaws, it bites."]
    assert {k: v for k, v in explanations.items() if k not in ("explain_prompts", "replaced_examples")} == {
        "written": 9, "grounded": 3, "grounded_share": 0.3333,
        "replaced": {"echo": 1, "other-title": 2, "unknown-name": 1, "wrong-category": 1, "wrong-year": 1},
        "distinct_share": 1.0, "mean_chars": 40.7,
    }
    # u2..u5 without an answer: 2 slots each.
    assert explanations["explain_prompts"]["prompts"] == 8 and explanations["explain_prompts"]["tokens_in"] > 0


def test_an_explain_answer_that_repeats_the_prompt_is_an_echo_and_titles_read_naturally():
    instructions = "In one sentence, say to them what the two share and why they may enjoy the recommendation."
    assert echoes("Say to them what the two share: both thrillers.", instructions)
    assert not echoes("The two share a taste for slow-burning thrillers.", instructions)
    # A placeholder's name is not the prompt's wording: no run spans $because.
    assert not echoes("They liked because we recommend it.", "Someone liked $because\nWe recommend $item")
    assert natural_title("Assignment, The (1997). Action, Thriller") == "The Assignment (1997). Action, Thriller"
    assert natural_title("Walk in the Clouds, A (1995)") == "A Walk in the Clouds (1995)"
    assert natural_title("Toy Story (1995). Animation") == "Toy Story (1995). Animation"
