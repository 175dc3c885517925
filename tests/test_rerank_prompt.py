"""Rerank prompts: versioned template files, deterministic rendering, what the model is shown."""

import hashlib
from importlib import resources

import pytest

from chatrec.rerank.prompt import Candidate, answer_schema, clip, load_template, render_prompt

CANDIDATES = [
    Candidate("i7", "Heat (1995)", "Heat (1995). Categories: Action, Crime. A thief and a detective."),
    Candidate("i3", "Alien (1979)", "Alien (1979). Categories: Horror, Sci-Fi."),
    Candidate("i9", "Toy Story (1995)", "Toy Story (1995). Categories: Animation."),
]


def render(**overrides):
    args = dict(profile="age: 24. occupation: student", history=["Jaws (1975)", "Ran (1985)"],
                candidates=CANDIDATES, k=2)
    args.update(overrides)
    return render_prompt(load_template("rerank-v1"), **args)


def test_template_version_is_name_plus_sha256_of_the_packaged_file():
    template = load_template("rerank-v1")
    data = resources.files("chatrec.rerank").joinpath("templates", "rerank-v1.txt").read_bytes()
    assert template.sha256 == hashlib.sha256(data).hexdigest()
    assert template.version == f"rerank-v1@{template.sha256[:12]}"
    with pytest.raises(ValueError, match="no rerank template named 'rerank-v9'"):
        load_template("rerank-v9")


def test_rendering_is_deterministic_and_shows_profile_history_and_numbered_candidates():
    prompt = render()
    assert prompt == render()
    assert "User profile: age: 24. occupation: student" in prompt
    assert "- Jaws (1975)\n- Ran (1985)" in prompt
    assert "1. Heat (1995). Categories: Action, Crime. A thief and a detective.\n2. Alien (1979)" in prompt
    assert "3. Toy Story (1995)" in prompt
    assert "exactly 2 different candidates, each by its number (1 to 3)" in prompt
    assert "$" not in prompt  # every placeholder filled
    # Item ids are never shown: the model answers with numbers, which map back to ids.
    assert "i7" not in prompt and "i3" not in prompt


def test_missing_profile_and_history_say_so_and_k_is_capped_by_the_candidates():
    prompt = render(profile=None, history=[], k=10)
    assert "User profile: not given" in prompt
    assert "(nothing yet)" in prompt
    assert "exactly 3 different candidates" in prompt
    assert render(history=["Ran (1985)", "Jaws (1975)"]) != render()  # history order matters


def test_clip_cuts_at_a_word_and_flattens_lines():
    assert clip("one two\nthree", 50) == "one two three"
    assert clip("alpha beta gamma delta", 14) == "alpha beta..."
    assert len(clip("x" * 100, 20)) <= 20


def test_answer_schema_asks_for_k_numbered_entries():
    schema = answer_schema(5, 3)
    ranking = schema["properties"]["ranking"]
    assert ranking["minItems"] == ranking["maxItems"] == 3
    assert ranking["items"]["properties"]["item"] == {"type": "integer", "minimum": 1, "maximum": 5}
    assert answer_schema(2, 3)["properties"]["ranking"]["minItems"] == 2
