"""Sampling rules and statistics checked as the service model says, adaptive sampling boosts,
and rules kept in the store across restarts. Engine-level tests without sockets, then boto3
against a real ``xrayd --offline``."""

from __future__ import annotations

import json
import signal
import sqlite3

import botocore.config
import botocore.exceptions
import orjson
import pytest

from offline_support import start_offline, xray_client
from test_sampling_engine import Clock
from xrayd.sampling.engine import (
    BOOST_SECONDS,
    SamplingEngine,
    SamplingError,
    StoredRule,
    merge_rules,
)
from xrayd.sampling.persist import SqliteRuleStore
from xrayd.sampling.rules import default_rule, normalize, parse_rules_file

RULE = {"RuleName": "reports", "ResourceARN": "*", "Priority": 5, "FixedRate": 0.05,
        "ReservoirSize": 3, "ServiceName": "reports", "ServiceType": "*", "Host": "*",
        "HTTPMethod": "*", "URLPath": "*", "Version": 1}


def stats(rule: str = "reports", **extra) -> dict:
    return {"RuleName": rule, "ClientID": "a" * 24, "RequestCount": 10, "SampledCount": 1,
            "BorrowCount": 0, "Timestamp": 1_700_000_000, **extra}


def boost_stats(rule: str = "reports", anomalies: int = 3) -> dict:
    return {"RuleName": rule, "ServiceName": "reports", "Timestamp": 1_700_000_000,
            "AnomalyCount": anomalies, "TotalCount": 10, "SampledAnomalyCount": 0}


BAD_RULES = [
    ("ReservoirSize", 1e20), ("ReservoirSize", 2**31), ("ReservoirSize", -1),
    ("ReservoirSize", "5"), ("ReservoirSize", True), ("ReservoirSize", 1.5),
    ("ReservoirSize", None), ("Priority", 0), ("Priority", 10000), ("Priority", 2.5),
    ("FixedRate", 1.01), ("FixedRate", -0.1), ("FixedRate", "0.5"), ("FixedRate", 1e400),
    ("Version", 2), ("RuleName", "x" * 33), ("RuleName", ""), ("RuleName", 7),
    ("ServiceName", "s" * 65), ("ServiceType", "t" * 65), ("Host", "h" * 65),
    ("HTTPMethod", "GETGETGETGE"), ("URLPath", "/" * 129), ("ResourceARN", "a" * 501),
    ("ServiceName", ["x"]), ("Attributes", {f"k{i}": "v" for i in range(6)}),
    ("Attributes", {"k" * 33: "v"}), ("Attributes", {"k": "v" * 33}), ("Attributes", {"k": ""}),
    ("Attributes", {"k": 5}), ("Attributes", ["k"]),
    ("SamplingRateBoost", {"MaxRate": 0.5}), ("SamplingRateBoost", {"MaxRate": 1.5,
                                                                   "CooldownWindowMinutes": 1}),
    ("SamplingRateBoost", {"MaxRate": 0.5, "CooldownWindowMinutes": -1}),
    ("SamplingRateBoost", {"MaxRate": 0.5, "CooldownWindowMinutes": 1e20}),
    ("SamplingRateBoost", "fast"),
]


@pytest.mark.parametrize(("key", "value"), BAD_RULES)
def test_every_rule_field_is_checked_on_create_and_update(key, value):
    sampling = SamplingEngine([], Clock())
    with pytest.raises(SamplingError) as info:
        sampling.create_rule({**RULE, key: value})
    assert info.value.code == "InvalidRequestException"
    assert key.split("Name")[0] in str(info.value) or "Attributes" in str(info.value)
    sampling.create_rule(RULE)
    # Not in SamplingRuleUpdate: RuleName (it names the rule), Version; null: left as it is.
    if key not in ("RuleName", "Version") and value is not None:
        with pytest.raises(SamplingError):
            sampling.update_rule({"RuleName": "reports", key: value})
    orjson.dumps(sampling.get_rules())  # still encodable: nothing bad was stored
    [record] = [r for r in sampling.get_rules()["SamplingRuleRecords"]
                if r["SamplingRule"]["RuleName"] == "reports"]
    assert record["SamplingRule"] == normalize(RULE, fill_defaults=False)


def test_tags_are_checked():
    sampling = SamplingEngine([], Clock())
    for tags in ([{"Key": "", "Value": "x"}], [{"Key": "k"}], "k=v",
                 [{"Key": f"k{i}", "Value": "v"} for i in range(201)]):
        with pytest.raises(SamplingError):
            sampling.create_rule(RULE, tags)
    sampling.create_rule(RULE, [{"Key": "team", "Value": ""}])


@pytest.mark.parametrize("bad", [
    {"BorrowCount": "x"}, {"BorrowCount": 1e20}, {"RequestCount": 2**31}, {"RequestCount": -1},
    {"SampledCount": None}, {"ClientID": "a" * 25}, {"RuleName": "r" * 33}, {"Timestamp": None},
    {"Timestamp": {"at": 1}}, {"RequestCount": 1.5},
])
def test_every_statistics_field_is_checked(bad):
    sampling = SamplingEngine([normalize(RULE, fill_defaults=False)], Clock())
    with pytest.raises(SamplingError) as info:
        sampling.targets([{**stats(), **bad}])
    assert info.value.code == "InvalidRequestException"
    with pytest.raises(SamplingError):
        sampling.targets([stats()], [{**boost_stats(), "AnomalyCount": 2**40}])
    with pytest.raises(SamplingError):
        sampling.targets([stats()] * 26)


def test_statistics_counters_stay_within_64_bits():
    sampling = SamplingEngine([normalize(RULE, fill_defaults=False)], Clock())
    state = sampling._rules["reports"]
    state.requests = 2**63 - 2
    sampling.targets([stats(RequestCount=2**31 - 1)])
    summary = sampling.statistic_summaries()
    assert max(s["RequestCount"] for s in summary["SamplingStatisticSummaries"]) == 2**63 - 1
    orjson.dumps(summary)


def test_anomalies_boost_a_rule_once_a_cooldown_window():
    clock = Clock()
    rule = normalize({**RULE, "SamplingRateBoost": {"MaxRate": 0.5, "CooldownWindowMinutes": 2}},
                     fill_defaults=False)
    sampling = SamplingEngine([rule], clock)

    def target(*boosts):
        answer = sampling.targets([stats()], list(boosts))
        [doc] = answer["SamplingTargetDocuments"]
        return doc, answer["UnprocessedBoostStatistics"]

    doc, _ = target(boost_stats(anomalies=0))
    assert "SamplingBoost" not in doc
    doc, unprocessed = target(boost_stats(), boost_stats(rule="missing"))
    assert doc["SamplingBoost"] == {"BoostRate": 0.5, "BoostRateTTL": clock.now + BOOST_SECONDS}
    assert [u["RuleName"] for u in unprocessed] == ["missing"]
    assert doc["FixedRate"] == 0.05  # the rule itself is unchanged
    clock.now += BOOST_SECONDS + 1
    doc, _ = target(boost_stats())  # within the two-minute cooldown: no second boost
    assert "SamplingBoost" not in doc
    clock.now += 60
    doc, _ = target(boost_stats())
    assert doc["SamplingBoost"]["BoostRate"] == 0.5
    records = sampling.get_rules()["SamplingRuleRecords"]
    assert records[0]["SamplingRule"]["SamplingRateBoost"] == {"MaxRate": 0.5,
                                                               "CooldownWindowMinutes": 2}


def test_the_rules_file_wins_for_its_rules_and_api_rules_are_kept():
    file_rule = normalize({**RULE, "RuleName": "checkout", "FixedRate": 0.3}, fill_defaults=True)
    api_rule = normalize(RULE, fill_defaults=False)
    stale = normalize({**RULE, "RuleName": "old"}, fill_defaults=True)
    changed_default = {**default_rule(), "FixedRate": 0.2}
    stored = [StoredRule({**file_rule, "FixedRate": 0.9}, 10.0, 20.0, "file"),
              StoredRule(api_rule, 11.0, 11.0, "api"), StoredRule(stale, 12.0, 12.0, "file"),
              StoredRule(changed_default, 1.0, 13.0, "api")]
    merged = {r.rule["RuleName"]: r for r in merge_rules(stored, [file_rule], 100.0)}
    assert set(merged) == {"Default", "checkout", "reports"}
    assert merged["checkout"] == StoredRule(file_rule, 10.0, 100.0, "file")
    assert merged["reports"] == StoredRule(api_rule, 11.0, 11.0, "api")
    assert merged["Default"].rule["FixedRate"] == 0.2  # changed through the API: kept


def test_rules_persist_in_the_store_table(tmp_path):
    path = str(tmp_path / "t.db")
    clock = Clock()
    sampling = SamplingEngine([], clock, SqliteRuleStore(path))
    created = sampling.create_rule(RULE)["SamplingRuleRecord"]
    clock.now += 10
    sampling.update_rule({"RuleName": "Default", "ReservoirSize": 4})
    sampling.create_rule({**RULE, "RuleName": "gone"})
    sampling.delete_rule("gone", None)
    clock.now += 10
    again = SamplingEngine([], clock, SqliteRuleStore(path))
    records = {r["SamplingRule"]["RuleName"]: r for r in again.get_rules()["SamplingRuleRecords"]}
    assert set(records) == {"Default", "reports"}
    assert records["reports"] == created
    assert records["Default"]["SamplingRule"]["ReservoirSize"] == 4
    assert again.rule_count == 2
    # A row that does not hold a valid rule (an edited file) is dropped with a warning.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE sampling_rules SET rule = ? WHERE name = 'reports'",
                 (json.dumps({**RULE, "ReservoirSize": 1e20}),))
    warnings: list[str] = []
    third = SamplingEngine([], clock, SqliteRuleStore(path), on_invalid=warnings.append)
    assert third.rule_count == 1 and "reports" in warnings[0]
    assert conn.execute("SELECT count(*) FROM sampling_rules").fetchone()[0] == 1


# --- boto3 against the daemon -------------------------------------------------------------
def unchecked_client(port: int):
    """boto3 without its own parameter validation: the daemon must refuse what it sends."""
    import boto3

    return boto3.client(
        "xray", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id="AKIDTESTTESTTEST", aws_secret_access_key="test-secret-key",
        config=botocore.config.Config(parameter_validation=False, retries={"max_attempts": 1}))


def refused(call, **kwargs) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "InvalidRequestException"
    return error["Error"]["Message"]


def test_bad_sampling_requests_get_400_and_never_break_later_calls(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = unchecked_client(port)
    assert "ReservoirSize" in refused(client.create_sampling_rule,
                                      SamplingRule={**RULE, "ReservoirSize": 1e20})
    assert "Attributes" in refused(
        client.create_sampling_rule,
        SamplingRule={**RULE, "Attributes": {f"k{i}": "v" * 32 for i in range(100)}})
    client.create_sampling_rule(SamplingRule=RULE)
    assert "ReservoirSize" in refused(
        client.update_sampling_rule,
        SamplingRuleUpdate={"RuleName": "reports", "ReservoirSize": 2**64})
    assert "BorrowCount" in refused(client.get_sampling_targets,
                                    SamplingStatisticsDocuments=[stats(BorrowCount="many")])
    assert "AnomalyCount" in refused(
        client.get_sampling_targets, SamplingStatisticsDocuments=[stats()],
        SamplingBoostStatisticsDocuments=[boost_stats(anomalies=-1)])
    rules = client.get_sampling_rules()["SamplingRuleRecords"]
    assert [r["SamplingRule"]["ReservoirSize"] for r in rules] == [3, 1]
    answer = client.get_sampling_targets(SamplingStatisticsDocuments=[stats()])
    assert answer["SamplingTargetDocuments"][0]["ReservoirQuota"] == 3


def test_boost_fields_through_boto3(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    boosted = {**RULE, "SamplingRateBoost": {"MaxRate": 0.6, "CooldownWindowMinutes": 5}}
    record = client.create_sampling_rule(SamplingRule=boosted)["SamplingRuleRecord"]
    assert record["SamplingRule"]["SamplingRateBoost"] == {"MaxRate": 0.6,
                                                           "CooldownWindowMinutes": 5}
    answer = client.get_sampling_targets(
        SamplingStatisticsDocuments=[stats()],
        SamplingBoostStatisticsDocuments=[boost_stats(), boost_stats(rule="nope")])
    [target] = answer["SamplingTargetDocuments"]
    assert target["SamplingBoost"]["BoostRate"] == 0.6
    # Boosts last BOOST_SECONDS, past the quota's lease.
    assert target["SamplingBoost"]["BoostRateTTL"] > target["ReservoirQuotaTTL"]
    assert [u["RuleName"] for u in answer["UnprocessedBoostStatistics"]] == ["nope"]


def test_api_rules_survive_a_restart_and_the_rules_file_seeds_its_own(start_xrayd, tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps([{"RuleName": "checkout", "Priority": 1,
                                       "FixedRate": 0.1, "ReservoirSize": 2}]))
    daemon, port, store = start_offline(start_xrayd, tmp_path, "--sampling-rules",
                                        str(rules_file))
    assert "Offline mode: 2 sampling rules loaded" in daemon.output
    client = xray_client(port)
    created = client.create_sampling_rule(SamplingRule=RULE)["SamplingRuleRecord"]
    client.update_sampling_rule(SamplingRuleUpdate={"RuleName": "Default", "FixedRate": 0.2})
    client.update_sampling_rule(SamplingRuleUpdate={"RuleName": "checkout", "FixedRate": 0.9})
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    rules_file.write_text(json.dumps([{"RuleName": "checkout", "Priority": 1,
                                       "FixedRate": 0.4, "ReservoirSize": 2}]))
    again, port, _store = start_offline(start_xrayd, tmp_path, "--sampling-rules",
                                        str(rules_file), name=store.name)
    assert "Offline mode: 3 sampling rules loaded" in again.output
    records = {r["SamplingRule"]["RuleName"]: r
               for r in xray_client(port).get_sampling_rules()["SamplingRuleRecords"]}
    assert records["reports"] == created
    assert records["Default"]["SamplingRule"]["FixedRate"] == 0.2
    assert records["checkout"]["SamplingRule"]["FixedRate"] == 0.4  # the file's, again


def test_the_output_of_get_sampling_rules_loads_as_a_rules_file():
    """`aws xray get-sampling-rules > rules.json` prints the Default rule with every field."""
    sampling = SamplingEngine([normalize(RULE, fill_defaults=False)], Clock())
    printed = sampling.get_rules()
    printed["SamplingRuleRecords"][1]["SamplingRule"]["FixedRate"] = 0.3
    rules = parse_rules_file(json.dumps(printed, default=str))
    assert [r["RuleName"] for r in rules] == ["reports", "Default"]
    assert rules[1] == {**default_rule(), "FixedRate": 0.3}
