"""Drift rules that work without tuning: a run's statistics against a baseline (the previous run's, or a training
set's), each rule firing only when an effect size clears a floor **and** a significance test clears a bound.

The floor makes a huge batch not fire on a trivial change (every difference is "significant" at n = 10^7); the
significance bound, which tightens as n grows, makes a tiny batch not fire on noise. Every test uses only the
statistics a run already records (:class:`features.run_stats.FeatureStats`). Thresholds and their reasons are in
docs/ARCHITECTURE.md ("Default drift rules"); ``tolerance`` multiplies every effect floor.

- **missing share** (null, NaN or infinite among the rows): Cohen's h >= 0.2 and a two-proportion z-test.
- **numeric location**: standardized mean difference (Cohen's d) >= 0.5 and Welch's z.
- **numeric scale**: the spread grew or shrank by 2x or more, by the standard deviation *and* the interquartile
  range (so one outlier, or an integer feature's jumpy quartiles, cannot fire it alone), with the z of the IQR's
  log-ratio (its standard error estimated from each side's own quantiles, so heavy tails need more).
- **category shares** (strings, booleans): Cohen's h >= 0.2 on any value's share, from the top values both sides
  recorded; a value one side did not record counts as at most the smallest count that side recorded.
- **volume** (source rows read, against the previous run only): 3x fewer or more, and a Poisson z.

A side with fewer than :data:`MIN_ROWS` rows (or finite values, for the numeric rules) is never compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from features.dtypes import DType
from features.run_stats import TOP_VALUES, FeatureStats

MIN_ROWS = 30  # below this a batch's shares and moments are too noisy to compare
Z_BOUND = 5.0  # two-sided p ~ 6e-7 under a normal: ten features x 20 runs stay far from a false alarm
SHARE_FLOOR = 0.2  # Cohen's h: "small" effect (0% -> 1%, 10% -> 19%, 50% -> 60%)
LOCATION_FLOOR = 0.5  # Cohen's d: "medium" effect, half a standard deviation
SCALE_FLOOR = math.log(2)  # the spread doubled or halved
VOLUME_FLOOR = math.log(3)  # three times fewer or more source rows


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's measure: ``effect`` against its ``floor``, and ``z`` against :data:`Z_BOUND`."""

    rule: str
    effect: float
    floor: float
    z: float
    detail: str

    @property
    def fires(self) -> bool:
        return self.effect >= self.floor and self.z >= Z_BOUND

    def describe(self) -> str:
        return f"{self.detail} (effect {_num(self.effect)} >= {_num(self.floor)}, z {_num(self.z)})"


def feature_findings(new: FeatureStats, old: FeatureStats, tolerance: float = 1.0) -> list[Finding]:
    """Every rule that applies to a feature of this type, measured (firing or not)."""
    if new.count < MIN_ROWS or old.count < MIN_ROWS:
        return []
    findings = [_missing(new, old, tolerance)]
    dtype = DType(new.dtype)
    if dtype.is_numeric:
        findings += _numeric(new, old, tolerance)
    elif new.distinct is not None and old.distinct is not None:
        findings += _categories(new, old, tolerance)
    return [f for f in findings if f is not None]


def volume_finding(new_rows: int, old_rows: int, tolerance: float = 1.0) -> Finding | None:
    """Source rows read by this run against the previous one's."""
    if old_rows < MIN_ROWS and new_rows < MIN_ROWS:
        return None
    effect = math.inf if min(new_rows, old_rows) == 0 else abs(math.log(new_rows / old_rows))
    z = abs(new_rows - old_rows) / math.sqrt(new_rows + old_rows)
    return Finding("volume", effect, VOLUME_FLOOR * tolerance, z, f"source rows {old_rows:,} -> {new_rows:,}")


def _missing(new: FeatureStats, old: FeatureStats, tolerance: float) -> Finding | None:
    def missing(s: FeatureStats) -> int:
        return s.nulls + s.nan + s.pos_inf + s.neg_inf

    p_new, p_old = missing(new) / new.count, missing(old) / old.count
    return _share_finding("missing share", p_new, new.count, p_old, old.count, tolerance)


def _share_finding(rule: str, p_new: float, n_new: int, p_old: float, n_old: int, tolerance: float) -> Finding | None:
    pooled = (p_new * n_new + p_old * n_old) / (n_new + n_old)
    if pooled in (0.0, 1.0):
        return None
    h = abs(2 * math.asin(math.sqrt(p_new)) - 2 * math.asin(math.sqrt(p_old)))
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_new + 1 / n_old))
    corrected = max(0.0, abs(p_new - p_old) - 0.5 * (1 / n_new + 1 / n_old))  # continuity correction
    return Finding(rule, h, SHARE_FLOOR * tolerance, corrected / spread, f"{rule} {p_old:.1%} -> {p_new:.1%}")


def _numeric(new: FeatureStats, old: FeatureStats, tolerance: float) -> list[Finding]:
    n_new, n_old = new.values, old.values
    if n_new < MIN_ROWS or n_old < MIN_ROWS or new.mean is None or old.mean is None:
        return []
    if not all(math.isfinite(v) for v in (new.mean, old.mean, new.stddev or 0.0, old.stddev or 0.0)):
        return []  # moments overflowed float64: nothing sound to compare
    sd_new, sd_old = new.stddev or 0.0, old.stddev or 0.0
    out: list[Finding] = []
    pooled = math.sqrt((sd_new**2 + sd_old**2) / 2)
    diff = abs(new.mean - old.mean)
    error = math.sqrt(sd_new**2 / n_new + sd_old**2 / n_old)
    out.append(
        Finding(
            "mean",
            _ratio(diff, pooled),
            LOCATION_FLOOR * tolerance,
            _ratio(diff, error),
            f"mean {_num(old.mean)} -> {_num(new.mean)}",
        )
    )
    scale = _scale(new, old)
    if scale is not None:
        effect, z = scale
        out.append(
            Finding(
                "spread",
                effect,
                SCALE_FLOOR * tolerance,
                z,
                f"stddev {_num(sd_old)} -> {_num(sd_new)}, IQR {_num(_iqr(old))} -> {_num(_iqr(new))}",
            )
        )
    return out


def _scale(new: FeatureStats, old: FeatureStats) -> tuple[float, float] | None:
    """The smaller of the two log-ratios of spread (stddev, IQR), and the z of the IQR's: its standard error
    comes from each side's own quantiles (the density near each quartile, read off p5, p50 and p95), so a
    heavy-tailed feature, whose quartiles wander more than a normal's, needs a larger change to fire. When
    neither side has an IQR (a feature that is mostly one value), the stddev alone, with its normal-theory z."""
    sd_new, sd_old = new.stddev or 0.0, old.stddev or 0.0
    if sd_new == 0 and sd_old == 0:
        return None
    sd_effect = _log_ratio(sd_new, sd_old)
    iqr_new, iqr_old = _iqr(new), _iqr(old)
    if iqr_new is None or iqr_old is None or (iqr_new == 0 and iqr_old == 0):
        n_new, n_old = new.values, old.values
        return sd_effect, sd_effect / math.sqrt(1 / (2 * (n_new - 1)) + 1 / (2 * (n_old - 1)))
    iqr_effect = _log_ratio(iqr_new, iqr_old)
    error = math.sqrt(_ln_iqr_variance(new) + _ln_iqr_variance(old))
    return min(sd_effect, iqr_effect), _ratio(iqr_effect, error)


def _ln_iqr_variance(stats: FeatureStats) -> float:
    """The sampling variance of ln(IQR) from the asymptotic variances of the quartiles, p(1 - p) / (n f^2), with
    the density f near each quartile estimated from the recorded quantiles (for a normal this overstates the
    variance by about a third: a conservative bound)."""
    q = {k: float(v) for k, v in stats.quantiles.items()}
    iqr = q["p75"] - q["p25"]
    low, high = q["p50"] - q["p5"], q["p95"] - q["p50"]
    if iqr <= 0 or low <= 0 or high <= 0:
        return math.inf
    f25, f75 = 0.45 / low, 0.45 / high
    n = stats.values
    variance = (0.1875 / f25**2 + 0.1875 / f75**2 - 2 * 0.0625 / (f25 * f75)) / n
    return variance / iqr**2


def _iqr(stats: FeatureStats) -> float | None:
    q1, q3 = stats.quantiles.get("p25"), stats.quantiles.get("p75")
    return None if q1 is None or q3 is None else float(q3) - float(q1)


def _log_ratio(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return math.inf if min(a, b) <= 0 else abs(math.log(a / b))


def _ratio(a: float, b: float) -> float:
    if a == 0:
        return 0.0
    return math.inf if b == 0 else a / b


def _categories(new: FeatureStats, old: FeatureStats, tolerance: float) -> list[Finding]:
    n_new, n_old = new.values, old.values
    if n_new < MIN_ROWS or n_old < MIN_ROWS:
        return []
    counts_new, counts_old = dict(new.top), dict(old.top)
    worst: Finding | None = None
    for value in dict.fromkeys([*counts_old, *counts_new]):
        share_new = _share(counts_new, value) / n_new
        share_old = _share(counts_old, value) / n_old
        finding = _share_finding(f"share of {value!r}", share_new, n_new, share_old, n_old, tolerance)
        if finding is not None and (worst is None or _rank(finding) > _rank(worst)):
            worst = finding
    return [] if worst is None else [worst]


def _share(counts: Mapping[Any, int], value: object) -> int:
    """Rows holding ``value``: recorded, or 0 when the top values are complete (fewer than :data:`TOP_VALUES`),
    or at most the smallest count recorded (the conservative bound: it can only make the difference smaller)."""
    if value in counts:
        return counts[value]
    if len(counts) < TOP_VALUES:
        return 0
    return min(counts.values())


def _rank(finding: Finding) -> tuple[bool, float]:
    return finding.fires, finding.effect / finding.floor


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
