"""Sampling rules in the shape of the X-Ray service's SamplingRule: validation, defaults, the
Default rule and the rules file. Pure."""

from __future__ import annotations

import json
from typing import Any

ARN_PREFIX = "arn:aws:xray:local:000000000000:sampling-rule/"
DEFAULT_RULE_NAME = "Default"
MAX_RULES = 25  # the service's quota of rules, the Default rule not counted
STRING_FIELDS = ("ServiceName", "ServiceType", "Host", "HTTPMethod", "URLPath", "ResourceARN")
STRING_LIMITS = {"ServiceName": 64, "ServiceType": 64, "Host": 64, "HTTPMethod": 10,
                 "URLPath": 128, "ResourceARN": 500}


class RuleError(Exception):
    """An invalid rule (InvalidRequestException)."""


def default_rule() -> dict[str, Any]:
    """The service's Default rule: one request a second, then 5 %."""
    return {
        "RuleName": DEFAULT_RULE_NAME, "RuleARN": ARN_PREFIX + DEFAULT_RULE_NAME,
        "ResourceARN": "*", "Priority": 10000, "FixedRate": 0.05, "ReservoirSize": 1,
        "ServiceName": "*", "ServiceType": "*", "Host": "*", "HTTPMethod": "*", "URLPath": "*",
        "Version": 1, "Attributes": {},
    }


def _number(rule: dict[str, Any], key: str, low: float, high: float | None, integer: bool
            ) -> None:
    value = rule.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{key} must be a number")
    if integer and value != int(value):
        raise RuleError(f"{key} must be an integer")
    if value < low or (high is not None and value > high):
        limit = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise RuleError(f"{key} must be {limit}")
    rule[key] = int(value) if integer else float(value)


def normalize(raw: Any, fill_defaults: bool) -> dict[str, Any]:
    """A checked copy of a SamplingRule. With ``fill_defaults`` (rules file) the match fields
    default to "*"; the API (CreateSamplingRule) requires them, as the service does."""
    if not isinstance(raw, dict):
        raise RuleError("A sampling rule must be a JSON object")
    rule = dict(raw)
    name = rule.get("RuleName")
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        raise RuleError("RuleName must be a string of 1 to 32 characters")
    if fill_defaults:
        for key in STRING_FIELDS:
            rule.setdefault(key, "*")
        rule.setdefault("Version", 1)
    for key in STRING_FIELDS:
        value = rule.get(key)
        if not isinstance(value, str) or not value:
            raise RuleError(f"{name}: {key} is required")
        if len(value) > STRING_LIMITS[key]:
            raise RuleError(f"{name}: {key} is longer than {STRING_LIMITS[key]} characters")
    for key, low, high, integer in (("Priority", 1, 9999, True), ("FixedRate", 0, 1, False),
                                    ("ReservoirSize", 0, None, True), ("Version", 1, 1, True)):
        try:
            _number(rule, key, low, high, integer)
        except RuleError as exc:
            raise RuleError(f"{name}: {exc}") from None
    attributes = rule.get("Attributes") or {}
    if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise RuleError(f"{name}: Attributes must map strings to strings")
    rule["Attributes"] = attributes
    rule["RuleARN"] = ARN_PREFIX + name
    known = {"RuleName", "RuleARN", "Priority", "FixedRate", "ReservoirSize", "Version",
             "Attributes", *STRING_FIELDS}
    return {k: v for k, v in rule.items() if k in known}


UPDATABLE = ("ResourceARN", "Priority", "FixedRate", "ReservoirSize", "Host", "ServiceName",
             "ServiceType", "HTTPMethod", "URLPath", "Attributes")


def apply_update(rule: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The rule after a SamplingRuleUpdate (the Default rule takes rate and reservoir only)."""
    changed = dict(rule)
    for key in UPDATABLE:
        if key in update and update[key] is not None:
            if rule["RuleName"] == DEFAULT_RULE_NAME and key not in ("FixedRate",
                                                                     "ReservoirSize"):
                raise RuleError("Only FixedRate and ReservoirSize of the Default rule can change")
            changed[key] = update[key]
    if rule["RuleName"] == DEFAULT_RULE_NAME:
        _number(changed, "FixedRate", 0, 1, False)
        _number(changed, "ReservoirSize", 0, None, True)
        return changed
    return normalize(changed, fill_defaults=False)


def parse_rules_file(text: str) -> list[dict[str, Any]]:
    """Rules from a file: a list of SamplingRule objects, ``{"SamplingRules": [...]}``, or the
    output of ``aws xray get-sampling-rules`` (``{"SamplingRuleRecords": [...]}``). A rule named
    Default sets the Default rule's rate and reservoir."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise RuleError(f"not valid JSON: {exc}") from None
    if isinstance(document, dict) and "SamplingRuleRecords" in document:
        items = [r.get("SamplingRule") if isinstance(r, dict) else r
                 for r in document["SamplingRuleRecords"] or []]
    elif isinstance(document, dict) and "SamplingRules" in document:
        items = document["SamplingRules"] or []
    elif isinstance(document, list):
        items = document
    else:
        raise RuleError('expected a list of rules or {"SamplingRules": [...]}')
    if not isinstance(items, list):
        raise RuleError("the rules must be a list")
    rules = []
    names = set()
    for item in items:
        if isinstance(item, dict) and item.get("RuleName") == DEFAULT_RULE_NAME:
            rule = apply_update(default_rule(), item)
        else:
            rule = normalize(item, fill_defaults=True)
        if rule["RuleName"] in names:
            raise RuleError(f"rule {rule['RuleName']} appears twice")
        names.add(rule["RuleName"])
        rules.append(rule)
    if len([r for r in rules if r["RuleName"] != DEFAULT_RULE_NAME]) > MAX_RULES:
        raise RuleError(f"more than {MAX_RULES} rules")
    return rules
