"""The rerank parser against scripted answers: every malformed shape the Chat-Rec paper
reports (wrong count, misformatted titles, lost ids) and then some. Whatever the answer,
each user gets exactly min(K, N) valid, distinct candidates, and the status says why."""

import json
import random

import pytest

from chatrec.rerank import parsing
from chatrec.rerank.parsing import parse_answer
from chatrec.rerank.prompt import Candidate

CANDIDATES = [
    Candidate("i1", "Heat (1995)", "Heat (1995). Categories: Action, Crime."),
    Candidate("i2", "Matrix, The (1999)", "Matrix, The (1999). Categories: Sci-Fi."),
    Candidate("i3", "Heat (1986)", "Heat (1986). Categories: Drama."),
    Candidate("i4", "Toy Story (1995)", "Toy Story (1995). Categories: Animation."),
    Candidate("i5", "Alien (1979)", "Alien (1979). Categories: Horror, Sci-Fi."),
]
K = 3


def answer(*items, question="Do you prefer older films?"):
    return json.dumps({"ranking": [{"item": i, "explanation": f"Because of {i}."} for i in items],
                      "question": question})


def ids(result):
    return [CANDIDATES[p].item_id for p in result.order]


def assert_valid(result, k=K):
    assert len(result.order) == min(k, len(CANDIDATES))
    assert len(set(result.order)) == len(result.order)
    assert all(0 <= p < len(CANDIDATES) for p in result.order)
    assert len(result.explanations) == len(result.order)
    assert 0 <= result.llm_items <= len(result.order)
    # Slots the answer did not fill carry no explanation.
    assert all(e is None for e in result.explanations[result.llm_items:])


CASES = {
    # name: (answer, status, reason, item ids)
    "valid": (answer(3, 1, 5), "used", None, ["i3", "i1", "i5"]),
    "too few": (answer(4, 2), "partial", "wrong-count", ["i4", "i2", "i1"]),
    "too many": (answer(5, 4, 3, 2), "used", "wrong-count", ["i5", "i4", "i3"]),
    "titles with case, spacing, article and year variants":
        (answer("the matrix", "  HEAT (1995) ", "Heat"), "used", None, ["i2", "i1", "i3"]),
    "titles under a title key": (json.dumps({"ranking": [{"title": "Alien"}, {"title": "toy story (1995)"},
                                                         {"title": "'Heat (1986)'"}]}),
                                 "used", None, ["i5", "i4", "i3"]),
    "unknown title": (answer("Jaws (1975)", 2, 4), "partial", "unknown-title", ["i2", "i4", "i1"]),
    "number out of range": (answer(9, 1, 2), "partial", "not-candidate", ["i1", "i2", "i3"]),
    "ids, one not a candidate": (json.dumps({"ranking": [{"id": "i99"}, {"id": "i4"}, {"id": " i5 "}]}),
                                 "partial", "not-candidate", ["i4", "i5", "i1"]),
    "duplicates": (answer(2, 2, 5, 1), "used", "duplicate", ["i2", "i5", "i1"]),
    "duplicate title": (answer("Toy Story", "toy story", 1), "partial", "duplicate", ["i4", "i1", "i2"]),
    "truncated json": ('{"ranking": [{"item": 1, "explanation": "Because you liked', "fallback", "not-json",
                       ["i1", "i2", "i3"]),
    "empty": ("", "fallback", "empty", ["i1", "i2", "i3"]),
    "whitespace": ("  \n\t ", "fallback", "empty", ["i1", "i2", "i3"]),
    "prose around json": ("Sure! Here is my ranking:\n```json\n" + answer(5, 3, 1) + "\n```\nEnjoy.",
                          "used", None, ["i5", "i3", "i1"]),
    "prose only": ("I think you will like Alien and Heat.", "fallback", "not-json", ["i1", "i2", "i3"]),
    "wrong shape": ('{"items": [1, 2, 3]}', "fallback", "wrong-shape", ["i1", "i2", "i3"]),
    "bare list of numbers as strings": ('["#4", "2.", "5"]', "used", None, ["i4", "i2", "i5"]),
    "bad entries only": ("[null, true, [1], {}]", "fallback", "bad-entry", ["i1", "i2", "i3"]),
    "empty ranking": ('{"ranking": []}', "fallback", "wrong-count", ["i1", "i2", "i3"]),
    "nothing usable": (answer("Jaws", 0, 7), "fallback", "unknown-title", ["i1", "i2", "i3"]),
}


@pytest.mark.parametrize("name", CASES)
def test_scripted_answers(name):
    text, status, reason, expected = CASES[name]
    result = parse_answer(text, CANDIDATES, K)
    assert (result.status, result.reason, ids(result)) == (status, reason, expected)
    assert_valid(result)


def test_explanations_and_question_are_kept_for_the_slots_the_model_filled():
    result = parse_answer(answer(4, 2), CANDIDATES, K)
    assert result.explanations == ("Because of 4.", "Because of 2.", None)
    assert result.question == "Do you prefer older films?"
    assert result.llm_items == 2


def test_explanations_are_one_line_and_capped_and_fallback_has_no_question():
    long = "word " * 200
    text = json.dumps({"ranking": [{"item": 1, "explanation": "line\none  " + long}, {"item": 2}, {"item": 3}],
                       "question": 42})
    result = parse_answer(text, CANDIDATES, K)
    assert result.status == "used"
    assert "\n" not in result.explanations[0] and len(result.explanations[0]) <= 280
    assert result.explanations[1] is None and result.question is None
    assert parse_answer(answer("Jaws", "Up", "Ran"), CANDIDATES, K).question is None


def test_k_larger_than_the_candidates_gives_every_candidate_once():
    result = parse_answer(answer(2, 1), CANDIDATES[:2], 5)
    assert (result.status, result.reason, result.order) == ("used", None, (1, 0))


def test_no_candidates():
    result = parse_answer(answer(1), [], K)
    assert (result.status, result.reason, result.order) == ("fallback", "no-candidates", ())


def test_random_garbage_never_breaks_the_invariants():
    rng = random.Random(0)
    alphabet = '{}[]":,0123456789 abcHeat\n'
    pieces = ['{"ranking": [', '{"item": ', '"Heat"', '"i2"', "]}", ", ", "3", "-1", "1e9", '"question": "?"']
    for _ in range(500):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        result = parse_answer(text, CANDIDATES, K)
        assert_valid(result)
        assert result.status in {"used", "partial", "fallback"}


@pytest.mark.parametrize("answer, sentence", [
    ('"Heat is a 1970 Drama worth your time." And more.', "Heat is a 1970 Drama worth your time."),
    ("\n\n**You will love it!** Really.", "You will love it!"),
    ("One line\nanother line", "One line"),
    ("  ", None),
    (None, None),
])
def test_an_explain_answer_is_cut_to_its_first_sentence(answer, sentence):
    assert parsing.one_sentence(answer) == sentence
