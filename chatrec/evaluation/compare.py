"""A/B comparison of two runs on the same test users: is the difference real?

For each metric, over the test users both runs were scored on: the two means, the absolute
and relative delta (B - A), a paired bootstrap confidence interval of the delta (users
resampled with replacement), and a paired t-test p-value. A difference whose interval
excludes 0 is called significant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from scipy import stats

from chatrec.errors import InputDataError

# 2,000 resamples put the Monte-Carlo error of a 95% interval's ends well below the
# interval's own width for a few hundred users or more; more only costs time.
DEFAULT_BOOTSTRAP = 2000
# Resamples drawn at once: (chunk, n_users) indices stay ~100 MB at a million users.
_CHUNK = 16


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    a: float
    b: float
    delta: float  # b - a
    relative: float | None  # (b - a) / a; None when a is 0
    ci_low: float
    ci_high: float
    p_value: float | None  # paired t-test; None when every per-user difference is 0
    users: int

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def compare_per_user(
    a: pl.DataFrame,
    b: pl.DataFrame,
    metrics: list[str],
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[MetricDelta]:
    """Paired comparison of per-user metric tables (user_id + metric columns)."""
    paired = a.select("user_id", *metrics).join(
        b.select("user_id", *metrics), on="user_id", how="inner", suffix="_b"
    )
    if paired.height == 0:
        raise InputDataError("the two runs share no test user: they cannot be compared")
    rng = np.random.default_rng(seed)
    n = paired.height
    samples = [rng.integers(0, n, size=(min(_CHUNK, n_bootstrap - i), n)) for i in range(0, n_bootstrap, _CHUNK)]
    alpha = (1 - confidence) / 2
    out = []
    for metric in metrics:
        va = paired[metric].to_numpy()  # (n,)
        vb = paired[f"{metric}_b"].to_numpy()  # (n,)
        diff = vb - va  # (n,)
        boot = np.concatenate([diff[idx].mean(axis=1) for idx in samples])  # (n_bootstrap,)
        mean_a, mean_b = float(va.mean()), float(vb.mean())
        p = None
        if np.ptp(diff) <= 1e-12:
            # Every user moved by the same amount: no variance, so no t statistic; a
            # non-zero constant shift is as certain as a difference gets.
            p = 0.0 if diff.size and diff[0] != 0 else None
        elif n > 1:
            p = float(stats.ttest_rel(vb, va).pvalue)
        out.append(
            MetricDelta(
                metric=metric,
                a=mean_a,
                b=mean_b,
                delta=mean_b - mean_a,
                relative=(mean_b - mean_a) / mean_a if mean_a else None,
                ci_low=float(np.quantile(boot, alpha)),
                ci_high=float(np.quantile(boot, 1 - alpha)),
                p_value=p,
                users=n,
            )
        )
    return out
