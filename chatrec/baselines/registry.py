"""Baselines by name: the names `chatrec baseline NAME` and the run manifests use."""

from __future__ import annotations

from dataclasses import dataclass

from chatrec.baselines.base import Baseline
from chatrec.baselines.ease import Ease, EaseRecency
from chatrec.baselines.itemknn import ItemKNN
from chatrec.baselines.lowrank import LowRankRecency
from chatrec.baselines.popularity import Popularity
from chatrec.baselines.sasrec import SASRec
from chatrec.errors import ConfigError


@dataclass(frozen=True)
class ContentBaseline:
    """Zero-shot text-encoder baseline: chatrec's own pipeline (pipelines.full_run.run_job)
    on the same train (+ valid) interactions. It needs the items table and an encoder; it
    has no parameters to tune."""

    name: str = "content"


BASELINES: dict[str, Baseline | ContentBaseline] = {
    b.name: b
    for b in (Popularity(), ItemKNN(), Ease(), EaseRecency(), LowRankRecency(), SASRec(), ContentBaseline())
}


def get_baseline(name: str) -> Baseline | ContentBaseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}") from None
