"""User profiles: the users table's attributes blended into the user vector (history.profile_weight)."""

import numpy as np
import pyarrow as pa
import pytest

from chatrec import schemas
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import TextEncoder, fixed_size_list_to_numpy
from chatrec.histories import build_histories
from chatrec.user_vectors import RecencyMeanUserEncoder


def _catalogue(dim: int) -> ItemCatalogue:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ItemCatalogue(
        item_ids=np.array(["i1", "i2", "i3"], dtype=object), vectors=vectors, display_titles=["a", "b", "c"],
        categories=[frozenset()] * 3, entities=[frozenset()] * 3, entity_items={},
    )


def _histories(profiles: list[str | None]) -> pa.Table:
    return pa.table(
        {
            "user_id": ["u1", "u2"],
            "recent_rows": [[0, 1], [2]],
            "seen_rows": [[0, 1], [2]],
            "history_len": [2, 1],
            "profile_text": profiles,
            "history_key": pa.array([None, None], pa.int64()),
        }
    ).cast(schemas.HISTORIES)


def test_histories_carry_the_profile_text_of_the_users_table():
    log = pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [1, 2]}).cast(schemas.INTERACTIONS)
    items = pa.table({"item_id": ["i1", "i2"], "row": [0, 1], "text": ["a", "b"], "text_sha256": ["x", "y"]})
    users = pa.table({"user_id": ["u1"], "attributes": [["age: 24", "occupation: technician"]]}).cast(schemas.USERS)
    histories = build_histories(log, items.cast(schemas.ITEM_TEXT), max_items=5, users=users).histories
    assert histories.column("profile_text").to_pylist() == ["age: 24. occupation: technician", None]


def test_profile_weight_blends_the_encoded_profile_into_the_history_vector(tiny_model_dir):
    kwargs = dict(model=str(tiny_model_dir), fingerprint=None, max_length=32, batch_size=8)
    dim = TextEncoder(**kwargs).model.config.hidden_size
    catalogue = _catalogue(dim)
    batch = _histories(["age: 24. occupation: technician", None])

    def vectors(weight: float) -> np.ndarray:
        encoder = RecencyMeanUserEncoder(catalogue=catalogue, half_life=10.0, profile_weight=weight, text_encoder=kwargs)
        return fixed_size_list_to_numpy(encoder(batch).column("embedding"))  # (2, dim)

    history_only, half, profile_only = vectors(0.0), vectors(0.5), vectors(1.0)
    profile = TextEncoder(**kwargs).encode(["age: 24. occupation: technician"])[0]
    # Weight 1 is the profile alone; weight 0.5 lies between; a user without a profile keeps
    # the history vector whatever the weight.
    assert profile_only[0] == pytest.approx(profile, abs=1e-5)
    expected = history_only[0] + profile
    assert half[0] == pytest.approx(expected / np.linalg.norm(expected), abs=1e-5)
    assert half[1] == pytest.approx(history_only[1], abs=1e-6)
    assert np.linalg.norm(half, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
