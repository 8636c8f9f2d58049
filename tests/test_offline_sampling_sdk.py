"""The real SDK's centralized sampling against offline mode: rules come from the rules file,
statistics are reported, and a rule's reservoir is shared by two SDK clients.

The SDK's pollers are driven by calling them directly (the same code its threads run every
10 s and 300 s), and decisions are made at one fixed second, so nothing here waits on time."""

from __future__ import annotations

import json
import time

from offline_support import recorder, start_offline, xray_client

RULES = {"SamplingRules": [{
    "RuleName": "checkout", "Priority": 1, "FixedRate": 0.0, "ReservoirSize": 2,
    "ServiceName": "checkout-api", "HTTPMethod": "POST", "URLPath": "/orders*",
}]}
ORDER = {"service": "checkout-api", "method": "POST", "path": "/orders/7", "host": "shop.local"}


def sdk_client(port: int):
    rec = recorder(f"127.0.0.1:{port}", sampling=True)
    sampler = rec.sampler
    sampler._started = True  # no poller threads: the test runs the polls
    sampler._rule_poller._refresh_cache()
    return sampler


def decide(sampler, request: dict, now: int, count: int) -> tuple[str, int]:
    """(matched rule, how many of ``count`` requests at second ``now`` were sampled)."""
    rule = sampler._cache.get_matched_rule(dict(request), now)
    sampled = sum(bool(sampler._process_matched_rule(rule, now)) for _ in range(count))
    return rule.name, sampled


def test_sdk_sampling_follows_the_rules_file_and_shares_the_reservoir(start_xrayd, tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(RULES))
    daemon, port, _store = start_offline(start_xrayd, tmp_path, "--sampling-rules",
                                         str(rules_file))
    assert "2 sampling rules loaded" in daemon.output  # with the Default rule
    first, second = sdk_client(port), sdk_client(port)
    for sampler in (first, second):
        names = sorted(rule.name for rule in sampler._cache.rules)
        assert names == ["Default", "checkout"]

    now = int(time.time())
    # Before any target: each client may borrow one request a second, then FixedRate 0.
    assert decide(first, ORDER, now, 10) == ("checkout", 1)
    assert decide(second, ORDER, now, 10) == ("checkout", 1)
    assert decide(first, {**ORDER, "method": "GET", "path": "/health"}, now, 1)[0] == "Default"

    client = xray_client(port)
    for _round in range(2):
        first._target_poller._do_work()
        second._target_poller._do_work()
        quotas = [s._cache.get_matched_rule(dict(ORDER), now).reservoir.quota
                  for s in (first, second)]
        assert sum(quotas) <= 2, quotas
        decide(first, ORDER, now, 1)
        decide(second, ORDER, now, 1)
    assert quotas == [1, 1]  # a fair share each once both have reported

    summaries = {s["RuleName"]: s for s in
                 client.get_sampling_statistic_summaries()["SamplingStatisticSummaries"]}
    assert summaries["checkout"]["RequestCount"] == 22
    assert summaries["checkout"]["BorrowCount"] == 2

    # At a new second both clients together take exactly the rule's reservoir of 2.
    later = now + 5
    taken = decide(first, ORDER, later, 20)[1] + decide(second, ORDER, later, 20)[1]
    assert taken == 2


def test_sampling_rule_api_changes_what_sdks_get(start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    client = xray_client(port)
    rule = {"RuleName": "reports", "ResourceARN": "*", "Priority": 5, "FixedRate": 0.5,
            "ReservoirSize": 3, "ServiceName": "reports", "ServiceType": "*", "Host": "*",
            "HTTPMethod": "*", "URLPath": "*", "Version": 1}
    created = client.create_sampling_rule(SamplingRule=rule)["SamplingRuleRecord"]
    assert created["SamplingRule"]["RuleARN"].endswith("sampling-rule/reports")
    client.update_sampling_rule(SamplingRuleUpdate={"RuleName": "reports", "FixedRate": 0.25})
    sampler = sdk_client(port)
    [matched] = [r for r in sampler._cache.rules if r.name == "reports"]
    assert matched.rate == 0.25 and matched.reservoir is not None
    client.delete_sampling_rule(RuleName="reports")
    names = [r["SamplingRule"]["RuleName"]
             for r in client.get_sampling_rules()["SamplingRuleRecords"]]
    assert names == ["Default"]
    import botocore.exceptions
    import pytest

    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.delete_sampling_rule(RuleName="Default")
    assert info.value.response["Error"]["Code"] == "InvalidRequestException"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.create_sampling_rule(SamplingRule={**rule, "FixedRate": 2})
    assert info.value.response["Error"]["Code"] == "InvalidRequestException"
