"""The contract every matrix baseline keeps: fit on an InteractionMatrix, then score users.

A `Baseline` holds no data: `fit(matrix, params)` returns a `FittedBaseline`, which scores a
batch of users over every item, names the history item behind each recommendation, and
words the reason. `fit_grid` fits a whole tuning grid, so a baseline can reuse expensive
work across grid points (EASE-recency computes its item matrix once per lambda).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.errors import ConfigError


class FittedBaseline(Protocol):
    matrix: InteractionMatrix  # the interactions it was fitted on; scores exclude nothing

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(n,) user codes -> (n, n_items) float32 scores, higher is better."""

    def because(self, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n,) user codes, (n, K) recommended codes (-1 = none) -> (n, K) history item codes, -1 = none."""

    def reasons(self, items: np.ndarray, because: np.ndarray, titles: Mapping[str, str] | None) -> list[str]:
        """(m,) recommended codes, (m,) because codes -> m reason texts."""


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its type, its lower bound, and whether None has a meaning."""

    kind: type
    low: float  # smallest allowed value
    low_open: bool = False  # True: `low` itself is not allowed
    none_means: str | None = None  # e.g. "all": None, or this word, is allowed and means it

    def convert(self, baseline: str, key: str, value: Any) -> Any:
        """`value` (a number, or text such as "inf" from a command line) checked and converted."""
        bound = f"{'>' if self.low_open else '>='} {self.low:g}"
        noun = {int: "an integer", float: "a number"}.get(self.kind, self.kind.__name__)
        allowed = f"{noun} {bound}" + (f", or {self.none_means!r}" if self.none_means else "")
        if self.none_means is not None and (value is None or value == self.none_means):
            return None
        try:
            if isinstance(value, bool) or (self.kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            converted = self.kind(value)
        except (TypeError, ValueError, OverflowError):
            converted = None
        if converted is None or math.isnan(converted) or converted < self.low or (self.low_open and converted == self.low):
            raise ConfigError(f"baseline {baseline!r} parameter {key!r} must be {allowed}, got {value!r}")
        return converted


class Baseline(ABC):
    name: str
    params: dict[str, Param] = {}  # what `resolve_params` accepts
    defaults: dict[str, Any] = {}  # used when there is nothing to tune on

    @abstractmethod
    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> FittedBaseline: ...

    def fit_grid(
        self, matrix: InteractionMatrix, grid: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], FittedBaseline]]:
        """One fitted model per grid point, in grid order (override to share work)."""
        for params in grid:
            yield params, self.fit(matrix, params)

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The defaults overridden by `params`, each value checked and converted to its type."""
        resolved = dict(self.defaults)
        for key, value in (params or {}).items():
            if key not in self.params:
                allowed = sorted(self.params) or "none"
                raise ConfigError(f"baseline {self.name!r} has no parameter {key!r}; its parameters: {allowed}")
            resolved[key] = self.params[key].convert(self.name, key, value)
        return resolved


@dataclass(frozen=True)
class EarlyStopping:
    """How an epoch-trained baseline's epoch count was chosen on validation."""

    best_epoch: int  # epochs trained when validation peaked (1-based): the weights kept
    best_score: float  # validation NDCG@10 at best_epoch
    epochs_run: int
    max_epochs: int
    patience: int  # epochs without a gain that stop training
    stopped_early: bool  # patience ran out before max_epochs
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"epoch", "loss", "ndcg@10"}] per evaluation

    def to_manifest(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_ndcg@10": self.best_score,
            "epochs_run": self.epochs_run,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
        }


class EpochTrainedBaseline(Baseline):
    """A baseline trained by gradient epochs: validation chooses its epoch count, not a grid.

    `params["epochs"]` None means "choose on validation": `fit_early_stopped` trains on the
    train matrix, calls `score(model)` (validation NDCG@10) as it goes, stops when patience
    runs out and returns the model with its best weights restored. `fit` trains exactly
    `params["epochs"]` epochs (the refit on train + valid) and needs that number.
    """

    @abstractmethod
    def fit_early_stopped(
        self, matrix: InteractionMatrix, params: Mapping[str, Any], score: Callable[[FittedBaseline], float]
    ) -> tuple[FittedBaseline, EarlyStopping]: ...


def jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for a JSON manifest: infinity as the string "inf" (JSON has no infinity)."""
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in params.items()}
