"""Training contracts: the features a model was trained on, with their fingerprints, served only as trained.

A training set's manifest records the plan version and the fingerprint of every feature it holds. Registered
as a contract (``skewless contract register F.manifest.json --name fraud_model_v7``, or
:meth:`FeatureStore.register_contract`), it is kept in the registry, and a lookup may name it
(``"contract": "fraud_model_v7"`` over HTTP, ``trained_with=`` in Python): the service answers only when
every requested feature's live definition has the contracted fingerprint, and answers 409 naming the features
that changed otherwise. Never a silent substitution. A lookup naming only the contract asks for all of its
features.

Registration checks the manifest against the registry: its plan version must exist with the manifest's plan
fingerprint (a manifest from another repository, or a registry rebuilt since, is refused), and each feature's
fingerprint must be the one that plan version gives it (a tampered manifest is refused).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import ContractConflictError, ContractError, SkewlessError, UnknownNameError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from features.plan import Plan
    from features.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Contract:
    """A registered training contract: its name, the plan version it was trained on, and the fingerprint of each
    feature (``view:feature`` -> fingerprint)."""

    name: str
    plan_version: int
    plan_fingerprint: str
    fingerprints: dict[str, str]
    registered_at: datetime
    registered_by: str
    manifest: str = ""  # where the manifest was registered from
    retired_at: datetime | None = None

    @property
    def refs(self) -> list[str]:
        return list(self.fingerprints)


def from_manifest(name: str, path: str | os.PathLike[str], registry: Registry) -> dict[str, Any]:
    """The contract fields of the manifest at ``path``, checked against ``registry``; :class:`ContractError`
    says what is wrong."""
    if not name or any(c.isspace() for c in name):
        raise ContractError(f"a contract name must be non-empty and without spaces, not {name!r}")
    try:
        data = json.loads(Path(path).read_text())
        plan_version = int(data["plan_version"])
        plan_fingerprint = str(data["plan_fingerprint"])
        fingerprints = {str(ref): str(fp) for ref, fp in dict(data["feature_fingerprints"]).items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"{path} is not a training-set manifest skewless wrote: {exc}") from None
    known = {v.version: v for v in registry.versions()}
    applied = known.get(plan_version)
    if applied is None or applied.fingerprint != plan_fingerprint:
        versions = ", ".join(map(str, sorted(known))) or "none"
        raise ContractError(
            f"{path} was built from plan version {plan_version} (fingerprint {plan_fingerprint[:12]}), which this "
            f"repository's registry does not hold (its versions: {versions}): a manifest of another repository, "
            "or of a registry rebuilt since"
        )
    if not fingerprints:
        raise ContractError(f"{path} names no features")
    for ref, fingerprint in fingerprints.items():
        actual = fingerprint_of(applied.plan, ref)
        if actual is None:
            raise ContractError(f"{path}: plan version {plan_version} has no feature {ref}")
        if actual != fingerprint:
            raise ContractError(
                f"{path}: the fingerprint of {ref} ({fingerprint[:12]}) is not the one plan version {plan_version} "
                f"gives it ({actual[:12]}): the manifest was edited"
            )
    return {
        "name": name,
        "plan_version": plan_version,
        "plan_fingerprint": plan_fingerprint,
        "fingerprints": fingerprints,
        "manifest": str(Path(path).resolve()),
    }


def select(
    plan: Plan,
    live_version: int | None,
    contract: Contract,
    *,
    features: Sequence[str] | None = None,
    feature_service: str | None = None,
) -> list[str]:
    """The ``view:feature`` references a lookup under ``contract`` reads: all of the contract's, or those of
    ``features`` / ``feature_service``, which must be among them. :class:`ContractConflictError` when a live
    definition differs from the contracted one."""
    contracted = contract.fingerprints
    if features is None and feature_service is None:
        wanted = list(contracted)
    else:
        wanted = [str(ref) for ref in plan.select(features=features, feature_service=feature_service)]
        outside = [ref for ref in wanted if ref not in contracted]
        if outside:
            raise ContractError(
                f"contract '{contract.name}' does not cover {', '.join(outside)}; it covers: {', '.join(contracted)}"
            )
    changed = []
    for ref in wanted:
        if fingerprint_of(plan, ref) != contracted[ref]:  # changed, or gone from the live plan
            changed.append(ref)
    if changed:
        raise ContractConflictError(contract.name, contract.plan_version, live_version, changed)
    return wanted


def broken_by(plan: Plan, contracts: dict[str, Contract]) -> dict[str, list[str]]:
    """Per active contract, the features whose definition in ``plan`` is not the contracted one (contracts
    ``plan`` keeps whole are left out): what ``skewless plan`` warns about before an apply."""
    out = {}
    for name, contract in contracts.items():
        if contract.retired_at is None:
            changed = [ref for ref, fp in contract.fingerprints.items() if fingerprint_of(plan, ref) != fp]
            if changed:
                out[name] = changed
    return out


def fingerprint_of(plan: Plan, ref: str) -> str | None:
    """The fingerprint ``plan`` gives the feature ``view:feature``; None when it has no such feature."""
    try:
        (resolved,) = plan.resolve_refs([ref])
        return plan.feature_plan(resolved).fingerprint
    except (LookupError, ValueError):
        return None


def find(contracts: dict[str, Contract], name: str) -> Contract:
    """The active contract ``name``; :class:`UnknownNameError` (HTTP 404) with the known ones."""
    found = contracts.get(name)
    if found is None or found.retired_at is not None:
        raise UnknownNameError("contract", name, [n for n, c in contracts.items() if c.retired_at is None])
    return found


class ContractCache:
    """The registered contracts, read from ``provider`` (the registry) at most every ``refresh_seconds``: a
    server checks a lookup's contract without a registry read per request. A failed refresh keeps the contracts
    it has."""

    def __init__(self, provider: Callable[[], dict[str, Contract]], refresh_seconds: float = 1.0) -> None:
        self.provider = provider
        self.refresh_seconds = refresh_seconds
        self._contracts: dict[str, Contract] | None = None
        self._read_at = 0.0

    def get(self) -> dict[str, Contract]:
        now = time.monotonic()
        if self._contracts is None or now - self._read_at >= self.refresh_seconds:
            try:
                self._contracts = self.provider()
            except SkewlessError:
                if self._contracts is None:
                    raise
                log.warning("could not refresh the training contracts; using those read before", exc_info=True)
            self._read_at = now
        return self._contracts
