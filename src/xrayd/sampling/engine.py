"""Centralized sampling as the X-Ray service does it, for SDKs pointed at the daemon: rules
(GetSamplingRules, Create/Update/DeleteSamplingRule) and reservoir quotas (GetSamplingTargets).

Each rule's reservoir (ReservoirSize requests a second) is shared by the clients that report
for it. A client's quota is a lease valid until its ReservoirQuotaTTL; a new quota never makes
the unexpired leases of a rule add up to more than its reservoir, and shares follow each client's
request rate, so the fleet samples at most ReservoirSize requests a second from the reservoir
(plus FixedRate of the rest), as against the service. No I/O of its own: the clock is
injected, rules are kept through an optional RuleStore (the trace store's table in offline
mode), and a lock makes it safe to call from several threads.

Adaptive sampling: a rule with SamplingRateBoost is boosted to its MaxRate for BOOST_SECONDS
when a client reports anomalies for it (SamplingBoostStatisticsDocuments), at most once per
CooldownWindowMinutes (at least a minute); targets carry the boost as SamplingBoost.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xrayd.sampling.rules import (
    DEFAULT_RULE_NAME,
    DEFAULT_UPDATABLE,
    MAX_RULES,
    RuleError,
    apply_update,
    check_tags,
    default_rule,
    integer,
    normalize,
    string,
)

TARGET_INTERVAL = 10  # seconds between an SDK's GetSamplingTargets calls
# A lease outlives one reporting interval, so a client that reports on time (10 s plus jitter)
# never finds its quota expired; a client that stops reporting frees its share after this.
LEASE_SECONDS = 2 * TARGET_INTERVAL
ACTIVE_SECONDS = 3 * TARGET_INTERVAL
MAX_STATISTICS = 25
BOOST_SECONDS = 60.0  # "brief sampling boosts (up to 1 minute)", the developer guide says
MAX_COUNT = 2**63 - 1  # counters stop here: every answer stays encodable


class RuleStore(Protocol):
    """Where rules outlive the process: records as (rule, created, modified, origin), origin
    "file" (from the rules file) or "api"."""

    def load(self) -> list[StoredRule]: ...

    def save(self, record: StoredRule) -> None: ...

    def delete(self, name: str) -> None: ...


@dataclass(frozen=True)
class StoredRule:
    rule: dict[str, Any]
    created: float
    modified: float
    origin: str  # "file" or "api"


class PersistError(Exception):
    """The rule store failed: the change was not made."""


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
    origin: str = "api"
    boost_until: float = 0.0
    boost_started: float = -math.inf


def merge_rules(stored: list[StoredRule], file_rules: list[dict[str, Any]], now: float
                ) -> list[StoredRule]:
    """The rules in force at start-up: the rules file's rules as the file says (replacing a
    stored rule of the same name, even one changed through the API since), the rules created
    through the API kept, and stored rules that came from the file but are no longer in it
    gone (a Default rule from the file goes back to the service's default)."""
    in_file = {rule["RuleName"]: rule for rule in file_rules}
    merged: dict[str, StoredRule] = {}
    for record in stored:
        name = record.rule["RuleName"]
        if record.origin == "file" and name not in in_file:
            continue
        merged[name] = record
    for name, rule in in_file.items():
        old = merged.get(name)
        if old is None:
            merged[name] = StoredRule(rule, now, now, "file")
        elif old.rule != rule or old.origin != "file":
            merged[name] = StoredRule(rule, old.created, now, "file")
    if DEFAULT_RULE_NAME not in merged:
        merged[DEFAULT_RULE_NAME] = StoredRule(default_rule(), now, now, "api")
    default = merged.pop(DEFAULT_RULE_NAME)
    # Within the quota: the file's rules first, then the API's oldest first.
    others = sorted(merged.values(), key=lambda r: (r.origin != "file", r.created))
    return [default, *others[:MAX_RULES]]


def checked_record(record: StoredRule) -> StoredRule | None:
    """A stored record validated again (the table may be older or edited); None if invalid."""
    try:
        if record.rule.get("RuleName") == DEFAULT_RULE_NAME:
            rule = apply_update(default_rule(), {k: record.rule.get(k)
                                                 for k in DEFAULT_UPDATABLE})
        else:
            rule = normalize(record.rule, fill_defaults=False)
        float(record.created), float(record.modified)
    except (RuleError, TypeError, ValueError, AttributeError):
        return None
    return StoredRule(rule, float(record.created), float(record.modified), record.origin)


class SamplingEngine:
    def __init__(self, rules: list[dict[str, Any]] | None = None,
                 clock: Callable[[], float] | None = None, store: RuleStore | None = None,
                 on_invalid: Callable[[str], None] | None = None) -> None:
        import time

        self.clock = clock or time.time
        self.lock = threading.Lock()  # the API handlers run in several threads
        self.store = store
        now = self.clock()
        stored: list[StoredRule] = []
        if store is not None:
            for record in store.load():
                good = checked_record(record)
                if good is None:
                    if on_invalid is not None:
                        on_invalid(f"stored sampling rule {str(record.rule.get('RuleName'))[:32]}"
                                   " is not valid and was dropped")
                    store.delete(str(record.rule.get("RuleName")))
                else:
                    stored.append(good)
        records = merge_rules(stored, rules or [], now)
        if store is not None:
            keep = {r.rule["RuleName"] for r in records}
            for record in stored:
                name = record.rule["RuleName"]
                if name not in keep:
                    if record.origin == "api" and on_invalid is not None:
                        on_invalid(f"sampling rule {name} was dropped: with the rules file's "
                                   f"rules there would be more than {MAX_RULES}")
                    store.delete(name)
            for record in records:
                if record not in stored:
                    store.save(record)
        self._rules: dict[str, RuleState] = {
            r.rule["RuleName"]: RuleState(r.rule, r.created, r.modified, window_start=now,
                                          origin=r.origin)
            for r in records}
        self.last_modification = now

    @property
    def rule_count(self) -> int:
        """Rules in force, the Default rule included."""
        with self.lock:
            return len(self._rules)

    def _save(self, state: RuleState) -> None:
        if self.store is None:
            return
        try:
            self.store.save(StoredRule(state.rule, state.created, state.modified, state.origin))
        except Exception as exc:
            raise PersistError(f"the sampling rule could not be stored: {exc}") from exc

    def _forget(self, name: str) -> None:
        if self.store is None:
            return
        try:
            self.store.delete(name)
        except Exception as exc:
            raise PersistError(f"the sampling rule could not be deleted: {exc}") from exc

    # --- rules -----------------------------------------------------------------------
    @staticmethod
    def _record(state: RuleState) -> dict[str, Any]:
        return {"SamplingRule": dict(state.rule), "CreatedAt": state.created,
                "ModifiedAt": state.modified}

    def get_rules(self) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self._rules.values(),
                             key=lambda s: (s.rule["Priority"], s.rule["RuleName"]))
            return {"SamplingRuleRecords": [self._record(s) for s in ordered]}

    def _find(self, name: Any, arn: Any) -> RuleState:
        try:
            if name is not None:
                string(name, "RuleName", 1, 32)
            if arn is not None:
                string(arn, "RuleARN", 1, 1024)
        except RuleError as exc:
            raise SamplingError(str(exc)) from None
        if not name and not arn:
            raise SamplingError("RuleName or RuleARN is required")
        for state in self._rules.values():
            if (name and state.rule["RuleName"] == name) or (arn and state.rule["RuleARN"] == arn):
                return state
        raise SamplingError("Rule not found", "InvalidRequestException")

    def create_rule(self, raw: Any, tags: Any = None) -> dict[str, Any]:
        try:
            rule = normalize(raw, fill_defaults=False)
            check_tags(tags)
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
            self._save(state)
            self._rules[rule["RuleName"]] = state
            self.last_modification = now
            return {"SamplingRuleRecord": self._record(state)}

    def update_rule(self, update: Any) -> dict[str, Any]:
        if not isinstance(update, dict):
            raise SamplingError("SamplingRuleUpdate is required")
        with self.lock:
            state = self._find(update.get("RuleName"), update.get("RuleARN"))
            try:
                rule = apply_update(state.rule, update)
            except RuleError as exc:
                raise SamplingError(str(exc)) from None
            now = self.clock()
            self._save(RuleState(rule, state.created, now, origin=state.origin))
            state.rule = rule
            state.modified = self.last_modification = now
            return {"SamplingRuleRecord": self._record(state)}

    def delete_rule(self, name: str | None, arn: str | None) -> dict[str, Any]:
        with self.lock:
            state = self._find(name, arn)
            if state.rule["RuleName"] == DEFAULT_RULE_NAME:
                raise SamplingError("The Default rule cannot be deleted")
            self._forget(state.rule["RuleName"])
            del self._rules[state.rule["RuleName"]]
            self.last_modification = self.clock()
            return {"SamplingRuleRecord": self._record(state)}

    # --- targets ---------------------------------------------------------------------
    def targets(self, documents: Any, boost_documents: Any = None) -> dict[str, Any]:
        """GetSamplingTargets: a request that breaks the service model is refused as a whole
        (SamplingError); statistics of rules that do not exist are answered as unprocessed."""
        if not isinstance(documents, list) or not documents:
            raise SamplingError("SamplingStatisticsDocuments is required")
        if boost_documents is None:
            boost_documents = []
        try:
            _check_list(documents, "SamplingStatisticsDocuments", _check_statistics)
            _check_list(boost_documents, "SamplingBoostStatisticsDocuments", _check_boost)
        except RuleError as exc:
            raise SamplingError(str(exc)) from None
        with self.lock:
            now = self.clock()
            targets, unprocessed, unprocessed_boost = [], [], []
            for doc in boost_documents:
                state = self._rules.get(doc["RuleName"])
                if state is None:
                    unprocessed_boost.append({"RuleName": doc["RuleName"], "ErrorCode": "400",
                                              "Message": "Rule not found"})
                    continue
                self._consider_boost(state, doc, now)
            for doc in documents:
                state = self._rules.get(doc["RuleName"])
                if state is None:
                    unprocessed.append({"RuleName": doc["RuleName"], "ErrorCode": "400",
                                        "Message": "Rule not found"})
                    continue
                targets.append(self._target(state, doc, now))
            return {"SamplingTargetDocuments": targets,
                    "LastRuleModification": self.last_modification,
                    "UnprocessedStatistics": unprocessed,
                    "UnprocessedBoostStatistics": unprocessed_boost}

    @staticmethod
    def _consider_boost(state: RuleState, doc: dict[str, Any], now: float) -> None:
        """Boost the rule to its MaxRate when anomalies were reported, once a cooldown."""
        settings = state.rule.get("SamplingRateBoost")
        if not settings or doc["AnomalyCount"] == 0:
            return
        cooldown = max(60.0, 60.0 * settings["CooldownWindowMinutes"])
        if now - state.boost_started < cooldown or settings["MaxRate"] <= state.rule["FixedRate"]:
            return
        state.boost_started = now
        state.boost_until = now + BOOST_SECONDS

    def _target(self, state: RuleState, doc: dict[str, Any], now: float) -> dict[str, Any]:
        client_id = doc["ClientID"]
        requests = int(doc["RequestCount"])
        state.requests = min(MAX_COUNT, state.requests + requests)
        state.sampled = min(MAX_COUNT, state.sampled + int(doc["SampledCount"]))
        state.borrowed = min(MAX_COUNT, state.borrowed + int(doc.get("BorrowCount") or 0))
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
        target = {"RuleName": state.rule["RuleName"], "FixedRate": state.rule["FixedRate"],
                  "ReservoirQuota": quota, "ReservoirQuotaTTL": now + LEASE_SECONDS,
                  "Interval": TARGET_INTERVAL}
        settings = state.rule.get("SamplingRateBoost")
        if settings and now < state.boost_until:
            target["SamplingBoost"] = {"BoostRate": settings["MaxRate"],
                                       "BoostRateTTL": state.boost_until}
        return target

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


def _check_list(items: Any, what: str, check: Callable[[Any], None]) -> None:
    if not isinstance(items, list):
        raise RuleError(f"{what} must be a list")
    if len(items) > MAX_STATISTICS:
        raise RuleError(f"At most {MAX_STATISTICS} {what}")
    for index, doc in enumerate(items):
        if not isinstance(doc, dict):
            raise RuleError(f"{what}[{index}] must be an object")
        try:
            check(doc)
        except RuleError as exc:
            raise RuleError(f"{what}[{index}]: {exc}") from None


def _required(doc: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if doc.get(key) is None:
            raise RuleError(f"{key} is required")


def _timestamp(value: Any) -> None:
    if isinstance(value, bool) or not (
            (isinstance(value, int | float) and math.isfinite(value))
            or (isinstance(value, str) and 0 < len(value) <= 64)):
        raise RuleError("Timestamp must be a timestamp")


def _check_statistics(doc: dict[str, Any]) -> None:
    """A SamplingStatisticsDocument as the service model has it (counts are 32-bit)."""
    _required(doc, ("RuleName", "ClientID", "Timestamp", "RequestCount", "SampledCount"))
    string(doc["RuleName"], "RuleName", 1, 32)
    string(doc["ClientID"], "ClientID", 24, 24)
    _timestamp(doc["Timestamp"])
    for key in ("RequestCount", "SampledCount", "BorrowCount"):
        if doc.get(key) is not None:
            doc[key] = integer(doc[key], key, 0)


def _check_boost(doc: dict[str, Any]) -> None:
    """A SamplingBoostStatisticsDocument."""
    _required(doc, ("RuleName", "ServiceName", "Timestamp", "AnomalyCount", "TotalCount",
                    "SampledAnomalyCount"))
    string(doc["RuleName"], "RuleName", 1, 32)
    string(doc["ServiceName"], "ServiceName", 0, 64)
    _timestamp(doc["Timestamp"])
    for key in ("AnomalyCount", "TotalCount", "SampledAnomalyCount"):
        doc[key] = integer(doc[key], key, 0)
