"""Centralized sampling as the X-Ray service does it, for SDKs pointed at the daemon: rules
(GetSamplingRules, Create/Update/DeleteSamplingRule) and reservoir quotas (GetSamplingTargets).

Each rule's reservoir (ReservoirSize requests a second) is shared by the clients that report
for it. A client's quota is a lease valid until its ReservoirQuotaTTL; a new quota never makes
the unexpired leases of a rule add up to more than its reservoir, and shares follow each client's
request rate, so the fleet samples at most ReservoirSize requests a second from the reservoir
(plus FixedRate of the rest), as against the service. No I/O: the clock is injected, and a
lock makes it safe to call from several threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xrayd.sampling.rules import (
    DEFAULT_RULE_NAME,
    MAX_RULES,
    RuleError,
    apply_update,
    default_rule,
    normalize,
)

TARGET_INTERVAL = 10  # seconds between an SDK's GetSamplingTargets calls
# A lease outlives one reporting interval, so a client that reports on time (10 s plus jitter)
# never finds its quota expired; a client that stops reporting frees its share after this.
LEASE_SECONDS = 2 * TARGET_INTERVAL
ACTIVE_SECONDS = 3 * TARGET_INTERVAL
MAX_STATISTICS = 25


class SamplingError(Exception):
    """A bad request: ``code`` is the service's exception name."""

    def __init__(self, message: str, code: str = "InvalidRequestException") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Lease:
    quota: int
    expires: float


@dataclass
class ClientState:
    last_report: float
    rate: float  # requests a second in its last reporting period
    lease: Lease | None = None


@dataclass
class RuleState:
    rule: dict[str, Any]
    created: float
    modified: float
    clients: dict[str, ClientState] = field(default_factory=dict)
    requests: int = 0
    sampled: int = 0
    borrowed: int = 0
    window_start: float = 0.0


class SamplingEngine:
    def __init__(self, rules: list[dict[str, Any]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.clock = clock or time.time
        self.lock = threading.Lock()  # the API handlers run in several threads
        now = self.clock()
        self._rules: dict[str, RuleState] = {
            DEFAULT_RULE_NAME: RuleState(default_rule(), now, now, window_start=now)}
        for rule in rules or []:
            self._rules[rule["RuleName"]] = RuleState(rule, now, now, window_start=now)
        self.last_modification = now

    # --- rules -----------------------------------------------------------------------
    def _record(self, state: RuleState) -> dict[str, Any]:
        return {"SamplingRule": dict(state.rule), "CreatedAt": state.created,
                "ModifiedAt": state.modified}

    def get_rules(self) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self._rules.values(),
                             key=lambda s: (s.rule["Priority"], s.rule["RuleName"]))
            return {"SamplingRuleRecords": [self._record(s) for s in ordered]}

    def _find(self, name: str | None, arn: str | None) -> RuleState:
        for state in self._rules.values():
            if (name and state.rule["RuleName"] == name) or (arn and state.rule["RuleARN"] == arn):
                return state
        raise SamplingError("Rule not found", "InvalidRequestException")

    def create_rule(self, raw: Any) -> dict[str, Any]:
        try:
            rule = normalize(raw, fill_defaults=False)
        except RuleError as exc:
            raise SamplingError(str(exc)) from None
        with self.lock:
            if rule["RuleName"] in self._rules:
                raise SamplingError(f"A rule named {rule['RuleName']} already exists")
            if len(self._rules) - 1 >= MAX_RULES:
                raise SamplingError(f"Limit of {MAX_RULES} sampling rules reached",
                                    "RuleLimitExceededException")
            now = self.clock()
            state = RuleState(rule, now, now, window_start=now)
            self._rules[rule["RuleName"]] = state
            self.last_modification = now
            return {"SamplingRuleRecord": self._record(state)}

    def update_rule(self, update: Any) -> dict[str, Any]:
        if not isinstance(update, dict):
            raise SamplingError("SamplingRuleUpdate is required")
        with self.lock:
            state = self._find(update.get("RuleName"), update.get("RuleARN"))
            try:
                state.rule = apply_update(state.rule, update)
            except RuleError as exc:
                raise SamplingError(str(exc)) from None
            state.modified = self.last_modification = self.clock()
            return {"SamplingRuleRecord": self._record(state)}

    def delete_rule(self, name: str | None, arn: str | None) -> dict[str, Any]:
        with self.lock:
            state = self._find(name, arn)
            if state.rule["RuleName"] == DEFAULT_RULE_NAME:
                raise SamplingError("The Default rule cannot be deleted")
            del self._rules[state.rule["RuleName"]]
            self.last_modification = self.clock()
            return {"SamplingRuleRecord": self._record(state)}

    # --- targets ---------------------------------------------------------------------
    def targets(self, documents: Any) -> dict[str, Any]:
        if not isinstance(documents, list) or not documents:
            raise SamplingError("SamplingStatisticsDocuments is required")
        if len(documents) > MAX_STATISTICS:
            raise SamplingError(f"At most {MAX_STATISTICS} SamplingStatisticsDocuments")
        with self.lock:
            now = self.clock()
            targets, unprocessed = [], []
            for doc in documents:
                problem = _check_statistics(doc)
                if problem:
                    unprocessed.append({"RuleName": str(doc.get("RuleName", ""))
                                        if isinstance(doc, dict) else "",
                                        "ErrorCode": "400", "Message": problem})
                    continue
                state = self._rules.get(doc["RuleName"])
                if state is None:
                    unprocessed.append({"RuleName": doc["RuleName"], "ErrorCode": "400",
                                        "Message": "Rule not found"})
                    continue
                targets.append(self._target(state, doc, now))
            return {"SamplingTargetDocuments": targets,
                    "LastRuleModification": self.last_modification,
                    "UnprocessedStatistics": unprocessed}

    def _target(self, state: RuleState, doc: dict[str, Any], now: float) -> dict[str, Any]:
        client_id = doc["ClientID"]
        requests = int(doc["RequestCount"])
        state.requests += requests
        state.sampled += int(doc["SampledCount"])
        state.borrowed += int(doc.get("BorrowCount") or 0)
        client = state.clients.get(client_id)
        period = now - client.last_report if client else TARGET_INTERVAL
        rate = requests / max(1.0, min(period, ACTIVE_SECONDS))
        if client is None:
            client = state.clients[client_id] = ClientState(now, rate)
        client.last_report, client.rate = now, rate
        for other_id in [c for c, s in state.clients.items()
                         if now - s.last_report > ACTIVE_SECONDS]:
            del state.clients[other_id]
        quota = self._quota(state, client_id, now)
        client.lease = Lease(quota, now + LEASE_SECONDS)
        return {"RuleName": state.rule["RuleName"], "FixedRate": state.rule["FixedRate"],
                "ReservoirQuota": quota, "ReservoirQuotaTTL": now + LEASE_SECONDS,
                "Interval": TARGET_INTERVAL}

    def _quota(self, state: RuleState, client_id: str, now: float) -> int:
        reservoir = int(state.rule["ReservoirSize"])
        shares = fair_shares(reservoir, {c: s.rate for c, s in state.clients.items()})
        held = sum(s.lease.quota for c, s in state.clients.items()
                   if c != client_id and s.lease is not None and s.lease.expires > now)
        return max(0, min(shares.get(client_id, 0), reservoir - held))

    def statistic_summaries(self) -> dict[str, Any]:
        """Per rule, what clients reported since the last call (GetSamplingStatisticSummaries)."""
        with self.lock:
            now = self.clock()
            summaries = []
            for state in self._rules.values():
                summaries.append({"RuleName": state.rule["RuleName"], "Timestamp": now,
                                  "RequestCount": state.requests,
                                  "BorrowCount": state.borrowed, "SampledCount": state.sampled})
                state.requests = state.sampled = state.borrowed = 0
                state.window_start = now
            return {"SamplingStatisticSummaries": summaries}

    def quotas(self, rule_name: str) -> dict[str, int]:
        """Unexpired leases of a rule's clients (for tests and the viewer)."""
        with self.lock:
            now = self.clock()
            state = self._rules[rule_name]
            return {c: s.lease.quota for c, s in state.clients.items()
                    if s.lease is not None and s.lease.expires > now}


def fair_shares(reservoir: int, rates: dict[str, float]) -> dict[str, int]:
    """Whole quotas adding up to ``reservoir``, in proportion to the rates (equal when all are
    zero), the remainder to the largest fractions, ties by client id."""
    if not rates or reservoir <= 0:
        return dict.fromkeys(rates, 0)
    total = sum(rates.values())
    weights = rates if total > 0 else dict.fromkeys(rates, 1.0)
    total = sum(weights.values())
    exact = {c: reservoir * w / total for c, w in weights.items()}
    shares = {c: math.floor(v) for c, v in exact.items()}
    left = reservoir - sum(shares.values())
    for c in sorted(exact, key=lambda c: (-(exact[c] - shares[c]), c))[:left]:
        shares[c] += 1
    return shares


def _check_statistics(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "A statistics document must be an object"
    name = doc.get("RuleName")
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        return "RuleName must be 1 to 32 characters"
    client = doc.get("ClientID")
    if not isinstance(client, str) or len(client) != 24:
        return "ClientID must be 24 characters"
    for key in ("RequestCount", "SampledCount"):
        value = doc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key} must be a non-negative integer"
    if "Timestamp" not in doc:
        return "Timestamp is required"
    return ""
