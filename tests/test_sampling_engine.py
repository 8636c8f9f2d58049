"""Sampling logic without sockets: rules, and reservoir quotas shared among clients."""

from __future__ import annotations

import pytest

from xrayd.sampling.engine import (
    ACTIVE_SECONDS,
    LEASE_SECONDS,
    TARGET_INTERVAL,
    SamplingEngine,
    SamplingError,
    fair_shares,
)
from xrayd.sampling.rules import RuleError, parse_rules_file


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def stats(client: str, requests: int, rule: str = "r") -> dict:
    return {"RuleName": rule, "ClientID": client.ljust(24, "0"), "RequestCount": requests,
            "SampledCount": 0, "BorrowCount": 0, "Timestamp": 0}


def engine(reservoir: int = 10) -> tuple[SamplingEngine, Clock]:
    clock = Clock()
    rules = parse_rules_file(f'[{{"RuleName": "r", "Priority": 1, "FixedRate": 0.1, '
                             f'"ReservoirSize": {reservoir}}}]')
    return SamplingEngine(rules, clock), clock


def quota(engine: SamplingEngine, client: str, requests: int) -> int:
    [target] = engine.targets([stats(client, requests)])["SamplingTargetDocuments"]
    return target["ReservoirQuota"]


def test_fair_shares_add_up_to_the_reservoir():
    assert fair_shares(10, {"a": 30.0, "b": 10.0}) == {"a": 8, "b": 2}
    assert fair_shares(1, {"a": 5.0, "b": 5.0}) == {"a": 1, "b": 0}
    assert fair_shares(3, {"a": 0.0, "b": 0.0, "c": 0.0}) == {"a": 1, "b": 1, "c": 1}
    assert fair_shares(0, {"a": 1.0}) == {"a": 0}


def test_leases_never_exceed_the_reservoir_and_converge():
    sampling, clock = engine(10)
    assert quota(sampling, "a", 100) == 10  # alone: the whole reservoir
    assert quota(sampling, "b", 100) == 0  # a still holds it
    for _ in range(3):
        clock.now += TARGET_INTERVAL
        quota(sampling, "a", 100)
        quota(sampling, "b", 100)
        assert sum(sampling.quotas("r").values()) <= 10
    assert sampling.quotas("r") == {"a".ljust(24, "0"): 5, "b".ljust(24, "0"): 5}


def test_a_silent_client_frees_its_share():
    sampling, clock = engine(4)
    quota(sampling, "a", 10)
    clock.now += ACTIVE_SECONDS + 1
    assert quota(sampling, "b", 10) == 4


def test_target_fields_and_unprocessed_statistics():
    sampling, clock = engine(2)
    answer = sampling.targets([stats("a", 1), stats("a", 1, rule="missing")])
    [target] = answer["SamplingTargetDocuments"]
    assert target["FixedRate"] == 0.1 and target["Interval"] == TARGET_INTERVAL
    assert target["ReservoirQuotaTTL"] == clock.now + LEASE_SECONDS
    assert [u["RuleName"] for u in answer["UnprocessedStatistics"]] == ["missing"]
    assert answer["UnprocessedBoostStatistics"] == []
    with pytest.raises(SamplingError):
        sampling.targets([])
    # A document that breaks the service model refuses the whole request, as the service's
    # front end does.
    with pytest.raises(SamplingError, match="ClientID"):
        sampling.targets([stats("a", 1), {**stats("a", 1), "ClientID": "short"}])


def test_rule_changes_move_last_modification():
    sampling, clock = engine()
    before = sampling.targets([stats("a", 1)])["LastRuleModification"]
    clock.now += 5
    sampling.update_rule({"RuleName": "r", "FixedRate": 0.5})
    assert sampling.targets([stats("a", 1)])["LastRuleModification"] == before + 5
    names = [r["SamplingRule"]["RuleName"] for r in sampling.get_rules()["SamplingRuleRecords"]]
    assert names == ["r", "Default"]
    with pytest.raises(SamplingError):
        sampling.update_rule({"RuleName": "Default", "ServiceName": "x"})
    with pytest.raises(SamplingError):
        sampling.delete_rule("nope", None)


@pytest.mark.parametrize("text", [
    "{", '{"x": 1}', '[{"RuleName": "a"}]', '[{"RuleName": "a", "Priority": 0, '
    '"FixedRate": 0.1, "ReservoirSize": 1}]',
    '[{"RuleName": "a", "Priority": 1, "FixedRate": 1.5, "ReservoirSize": 1}]',
])
def test_bad_rules_files(text):
    with pytest.raises(RuleError):
        parse_rules_file(text)


def test_rules_file_forms_and_default_override():
    rule = '{"RuleName": "a", "Priority": 1, "FixedRate": 0.1, "ReservoirSize": 1}'
    default = '{"RuleName": "Default", "FixedRate": 0.2, "ReservoirSize": 3}'
    for text in (f"[{rule}]", f'{{"SamplingRules": [{rule}]}}',
                 f'{{"SamplingRuleRecords": [{{"SamplingRule": {rule}}}]}}'):
        [parsed] = parse_rules_file(text)
        assert parsed["ServiceName"] == "*" and parsed["Version"] == 1
    rules = parse_rules_file(f"[{rule}, {default}]")
    sampling = SamplingEngine(rules, Clock())
    records = {r["SamplingRule"]["RuleName"]: r["SamplingRule"]
               for r in sampling.get_rules()["SamplingRuleRecords"]}
    assert records["Default"]["ReservoirSize"] == 3 and records["Default"]["Priority"] == 10000
