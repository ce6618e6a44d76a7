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

import dataclasses
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
from features.plan import Plan

if TYPE_CHECKING:
    from collections.abc import Sequence

    from features.plan import ViewPlan
    from features.protocols import OnlineStore
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
    old_plan: Plan | None = None,
    published: Callable[[ViewPlan], bool] | None = None,
    function_kept: Callable[[str], bool] | None = None,
) -> tuple[Plan, list[str]]:
    """The plan to look up with and the ``view:feature`` references a lookup under ``contract`` reads: all of
    the contract's, or those of ``features`` / ``feature_service``, which must be among them.

    When every requested feature has its contracted definition live, that is ``plan`` itself. Otherwise the
    contracted definitions are served side by side: ``old_plan`` (the contract's plan version), with each stored
    view whose definition changed read from its kept snapshot (:func:`kept_key`), or from its own snapshot while
    that still holds the contracted definition (after an apply, before the next run), as ``published`` (does
    the store serve this view's storage fingerprint under its online name?) says. :class:`ContractConflictError`
    names the features that can be served neither way (no kept snapshot, a request-time function whose source
    changed and whose applied text ``function_kept`` (by source fingerprint) does not have)."""
    contracted = contract.fingerprints
    if features is None and feature_service is None:
        wanted = list(contracted)
    else:
        # Named in the contract's plan when there is one: a contracted feature may be gone from the live plan.
        named_in = old_plan or plan
        wanted = [str(ref) for ref in named_in.select(features=features, feature_service=feature_service)]
        outside = [ref for ref in wanted if ref not in contracted]
        if outside:
            raise ContractError(
                f"contract '{contract.name}' does not cover {', '.join(outside)}; it covers: {', '.join(contracted)}"
            )
    changed = [ref for ref in wanted if fingerprint_of(plan, ref) != contracted[ref]]  # or gone from the plan
    if not changed:
        return plan, wanted
    if old_plan is None or published is None:
        raise ContractConflictError(contract.name, contract.plan_version, live_version, changed)
    lookup_plan, unservable = side_by_side_plan(plan, old_plan, wanted, published, function_kept)
    refused = [ref for ref in changed if ref in unservable]
    if refused:
        raise ContractConflictError(contract.name, contract.plan_version, live_version, refused)
    return lookup_plan, wanted


def kept_key(view: ViewPlan) -> str:
    """Where an earlier definition of ``view`` kept for a contract is served online: ``<view>@<storage fp>``."""
    return f"{view.name}@{view.storage_fingerprint[:12]}"


def stored_views_of(plan: Plan, refs: Sequence[str]) -> list[ViewPlan]:
    """The stored views ``refs`` read in ``plan``: their own, and the inputs of their on-demand features."""
    names: dict[str, None] = {}
    for ref in plan.resolve_refs(refs):
        if plan.is_on_demand(ref.view):
            names.update(dict.fromkeys(i.view for i in plan.on_demand_view(ref.view).inputs))
        else:
            names[ref.view] = None
    return [plan.view(name) for name in names]


def needs_keeping(live: Plan, view: ViewPlan) -> bool:
    """Whether the earlier definition ``view`` differs in stored values from the live plan's view of that name."""
    try:
        return live.view(view.name).storage_fingerprint != view.storage_fingerprint
    except LookupError:
        return True


def side_by_side_plan(
    live: Plan,
    old: Plan,
    refs: Sequence[str],
    published: Callable[[ViewPlan], bool],
    function_kept: Callable[[str], bool] | None = None,
) -> tuple[Plan, set[str]]:
    """``old`` with every stored view ``refs`` read whose definition changed since pointed at its kept snapshot
    (``online_key``) or left on its own snapshot while that still holds the old definition, and the references
    it cannot serve: those reading a changed view served neither way, and on-demand features of a function
    whose source changed when the module text it was applied with is not kept (``function_kept``)."""
    unservable: set[str] = set()
    replaced: dict[str, ViewPlan] = {}
    for view in stored_views_of(old, refs):
        if needs_keeping(live, view):
            kept = dataclasses.replace(view, online_key=kept_key(view))
            if published(kept):
                replaced[view.name] = kept
            elif not published(view):
                unservable.update(ref for ref in refs if view in stored_views_of(old, [ref]))
    for ref in old.resolve_refs(refs):
        if old.is_on_demand(ref.view):
            function = old.on_demand_view(ref.view).function
            live_function = _function_of(live, ref.view)
            if function is None or live_function == function:
                continue
            if not (function_kept is not None and function_kept(function.source_fingerprint)):
                unservable.add(str(ref))
    views = tuple(replaced.get(v.name, v) for v in old.views)
    needed = {r.view for r in old.resolve_refs(refs)}
    servable_on_demand = tuple(
        v
        for v in old.on_demand_views
        if v.function is None or (v.name in needed and not any(r.startswith(f"{v.name}:") for r in unservable))
    )
    return Plan(old.entities, views, old.services, servable_on_demand), unservable


def _function_of(plan: Plan, view: str) -> Any:
    try:
        return plan.on_demand_view(view).function
    except LookupError:
        return None


def kept_versions(
    live: Plan, contracts: dict[str, Contract], plan_of: Callable[[int], Plan], limit: int
) -> list[tuple[Plan, ViewPlan, list[str]]]:
    """The earlier definitions runs keep current for the active contracts: (the contract's plan, its view with
    ``online_key`` set, the contracts that need it), at most ``limit`` per view (those of the newest contracts)."""
    found: dict[tuple[str, str], tuple[Plan, ViewPlan, list[str]]] = {}
    newest_first = sorted(
        (c for c in contracts.values() if c.retired_at is None), key=lambda c: c.registered_at, reverse=True
    )
    per_view: dict[str, int] = {}
    for contract in newest_first:
        try:
            old = plan_of(contract.plan_version)
        except LookupError:
            continue
        for view in stored_views_of(old, contract.refs):
            if not view.online or not needs_keeping(live, view):
                continue
            identity = (view.name, view.storage_fingerprint)
            if identity in found:
                found[identity][2].append(contract.name)
                continue
            if per_view.get(view.name, 0) >= limit:
                continue
            per_view[view.name] = per_view.get(view.name, 0) + 1
            kept = dataclasses.replace(view, online_key=kept_key(view))
            # The engines find the view in the plan by name: the plan must hold the kept one.
            views = tuple(kept if v.name == view.name else v for v in old.views)
            found[identity] = (dataclasses.replace(old, views=views), kept, [contract.name])
    return list(found.values())


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
    """The registered contracts, read from ``provider`` (the registry) at most every ``refresh_seconds``, and what
    a lookup under one reads (:meth:`selection`), worked out once per contract, plan version and selection: a
    server checks a lookup's contract without a registry or store read per request. A failed refresh keeps the
    contracts it has. ``plan_of`` (a plan version's plan) and ``online`` (the store, asked whether a kept
    snapshot is published) let it serve earlier definitions side by side; without them a changed feature is
    refused."""

    def __init__(
        self,
        provider: Callable[[], dict[str, Contract]],
        refresh_seconds: float = 1.0,
        *,
        plan_of: Callable[[int], Plan] | None = None,
        online: OnlineStore | None = None,
        function_kept: Callable[[str], bool] | None = None,
    ) -> None:
        self.provider = provider
        self.refresh_seconds = refresh_seconds
        self.plan_of = plan_of
        self.online = online
        self.function_kept = function_kept
        self._contracts: dict[str, Contract] | None = None
        self._read_at = 0.0
        self._plans: dict[int, Plan] = {}
        self._published: dict[str, bool] = {}
        self._selections: dict[tuple[Any, ...], tuple[Plan, list[str]]] = {}

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
            self._published.clear()  # kept snapshots get published by runs: asked again after each refresh
            self._selections.clear()
        return self._contracts

    def selection(
        self,
        plan: Plan,
        live_version: int | None,
        name: str,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
    ) -> tuple[Plan, list[str]]:
        """The plan to look up with and the references to read for a lookup under the contract ``name``
        (:func:`select`); UnknownNameError for an unknown or retired contract."""
        contract = find(self.get(), name)
        key = (name, live_version, id(plan), None if features is None else tuple(features), feature_service)
        found = self._selections.get(key)
        if found is not None:
            return found
        old = self._plan(contract.plan_version) if self.plan_of is not None and self.online is not None else None
        chosen = select(
            plan,
            live_version,
            contract,
            features=features,
            feature_service=feature_service,
            old_plan=old,
            published=self._is_published,
            function_kept=self.function_kept,
        )
        self._selections[key] = chosen
        return chosen

    def _plan(self, version: int) -> Plan:
        found = self._plans.get(version)
        if found is None:
            assert self.plan_of is not None
            found = self._plans[version] = self.plan_of(version)
        return found

    def _is_published(self, view: ViewPlan) -> bool:
        """Whether the store serves ``view``'s definition (its storage fingerprint) under its online name."""
        key = f"{view.online_name} {view.storage_fingerprint}"
        found = self._published.get(key)
        if found is None:
            assert self.online is not None
            live = self.online.live_snapshot(view)
            found = self._published[key] = live is not None and live.storage_fingerprint == view.storage_fingerprint
        return found
