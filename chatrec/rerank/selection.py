"""Which users the rerank stage serves: `rerank.users`, then `rerank.token_budget`.

Users are ordered by a hash of the seed and their id, so a sample is a fair one (not the
lowest ids) and the same users are picked night after night while the population lasts.
The token budget admits users in that order until the next one would pass it: a budget cut
is itself a fair sample, and raising the budget only adds users.
"""

from __future__ import annotations

import hashlib
from itertools import accumulate
from typing import Sequence

import pyarrow as pa

from chatrec.errors import ConfigError


def hash_order(user_ids: Sequence[str], seed: int) -> list[tuple[float, str]]:
    """(u in [0, 1), user id) for every user, sorted by u (ties by id)."""
    keyed = []
    for user in user_ids:
        digest = hashlib.sha256(f"{seed}\x00{user}".encode()).digest()
        keyed.append((int.from_bytes(digest[:8], "big") / 2**64, user))
    return sorted(keyed)


def select_users(
    user_ids: Sequence[str], users: int | float | str, *, seed: int, users_table: pa.Table | None = None
) -> list[str]:
    """The users `rerank.users` selects, in admission (hash) order.

    users: "all"; a float share in (0, 1]: users whose hash falls below it (about that share,
    and a superset of any smaller share's); an int count: the first that many by hash;
    "segment:NAME=VALUE": users whose users-table attribute NAME equals VALUE.
    """
    ordered = hash_order(user_ids, seed)
    if users == "all":
        return [u for _, u in ordered]
    if isinstance(users, str):
        name, _, value = users.removeprefix("segment:").partition("=")
        members = _segment(users_table, f"{name.strip()}: {value.strip()}")
        return [u for _, u in ordered if u in members]
    if isinstance(users, float):
        return [u for h, u in ordered if h < users]
    return [u for _, u in ordered[:users]]


def _segment(users_table: pa.Table | None, attribute: str) -> set[str]:
    if users_table is None:
        raise ConfigError("rerank.users names a segment, which needs the users table (inputs.users)")
    members = set()
    for user, attributes in zip(users_table.column("user_id").to_pylist(), users_table.column("attributes").to_pylist()):
        if attributes and attribute in (a.strip() for a in attributes):
            members.add(user)
    return members


def admitted(costs: Sequence[int], budget: int | None) -> int:
    """How many users, in order, fit in `budget` tokens (each costs its prompt tokens plus
    max_new_tokens); all of them without a budget."""
    if budget is None:
        return len(costs)
    return sum(1 for total in accumulate(costs) if total <= budget)
