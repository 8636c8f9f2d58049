"""Sampling rules in the shape of the X-Ray service's SamplingRule: validation, defaults, the
Default rule and the rules file. Pure.

Every field is checked as botocore's service model (xray 2016-04-12) describes it: types,
ranges and lengths, the Attributes map (at most 5 entries, keys and values of 1 to 32
characters) and SamplingRateBoost. Integers are the service's 32-bit integers, so nothing
stored can outgrow what a JSON encoder writes."""

from __future__ import annotations

import json
import math
from typing import Any

ARN_PREFIX = "arn:aws:xray:local:000000000000:sampling-rule/"
DEFAULT_RULE_NAME = "Default"
MAX_RULES = 25  # the service's quota of rules, the Default rule not counted
STRING_FIELDS = ("ServiceName", "ServiceType", "Host", "HTTPMethod", "URLPath", "ResourceARN")
STRING_LIMITS = {"ServiceName": 64, "ServiceType": 64, "Host": 64, "HTTPMethod": 10,
                 "URLPath": 128, "ResourceARN": 500}
MAX_INTEGER = 2**31 - 1  # the service model's "integer" (a Java int)
MAX_ATTRIBUTES = 5
ATTRIBUTE_LENGTH = 32
MAX_TAGS = 200


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


def integer(value: Any, key: str, low: int, high: int = MAX_INTEGER) -> int:
    """A whole number within [low, high] (a float with no fraction counts, as JSON has one
    number type); RuleError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{key} must be an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RuleError(f"{key} must be an integer")
    if not low <= value <= high:
        raise RuleError(f"{key} must be between {low} and {high}")
    return int(value)


def double(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{key} must be a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise RuleError(f"{key} must be between {low:g} and {high:g}")
    return float(value)


def string(value: Any, key: str, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise RuleError(f"{key} must be a string")
    if not low <= len(value) <= high:
        raise RuleError(f"{key} must be {low} to {high} characters long")
    return value


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RuleError("Attributes must map strings to strings")
    if len(value) > MAX_ATTRIBUTES:
        raise RuleError(f"Attributes has {len(value)} entries, at most {MAX_ATTRIBUTES}")
    for key, item in value.items():
        string(key, "An Attributes key", 1, ATTRIBUTE_LENGTH)
        string(item, f"Attributes value of {key}", 1, ATTRIBUTE_LENGTH)
    return dict(value)


def boost(value: Any) -> dict[str, Any]:
    """A checked SamplingRateBoost."""
    if not isinstance(value, dict):
        raise RuleError("SamplingRateBoost must be an object")
    for key in ("MaxRate", "CooldownWindowMinutes"):
        if key not in value:
            raise RuleError(f"SamplingRateBoost.{key} is required")
    return {"MaxRate": double(value["MaxRate"], "SamplingRateBoost.MaxRate", 0, 1),
            "CooldownWindowMinutes": integer(value["CooldownWindowMinutes"],
                                             "SamplingRateBoost.CooldownWindowMinutes", 0)}


def check_tags(tags: Any) -> None:
    """CreateSamplingRule's Tags (checked, not kept: offline mode has no tagging API)."""
    if tags is None:
        return
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise RuleError(f"Tags must be a list of at most {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, dict) or "Key" not in tag or "Value" not in tag:
            raise RuleError("Each tag needs a Key and a Value")
        string(tag["Key"], "Tag Key", 1, 128)
        string(tag["Value"], "Tag Value", 0, 256)


def _checked(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule's fields, each checked and in its type; RuleError names the first bad one."""
    out: dict[str, Any] = {"RuleName": rule["RuleName"]}
    for key in STRING_FIELDS:
        value = rule.get(key)
        if value is None or value == "":
            raise RuleError(f"{key} is required")
        out[key] = string(value, key, 1, STRING_LIMITS[key])
    for key in ("Priority", "FixedRate", "ReservoirSize", "Version"):
        if rule.get(key) is None:
            raise RuleError(f"{key} is required")
    out["Priority"] = integer(rule["Priority"], "Priority", 1, 9999)
    out["FixedRate"] = double(rule["FixedRate"], "FixedRate", 0, 1)
    out["ReservoirSize"] = integer(rule["ReservoirSize"], "ReservoirSize", 0)
    out["Version"] = integer(rule["Version"], "Version", 1, 1)
    out["Attributes"] = _attributes(rule.get("Attributes"))
    if rule.get("SamplingRateBoost") is not None:
        out["SamplingRateBoost"] = boost(rule["SamplingRateBoost"])
    out["RuleARN"] = ARN_PREFIX + out["RuleName"]
    return out


def normalize(raw: Any, fill_defaults: bool) -> dict[str, Any]:
    """A checked copy of a SamplingRule. With ``fill_defaults`` (rules file) the match fields
    default to "*"; the API (CreateSamplingRule) requires them, as the service does."""
    if not isinstance(raw, dict):
        raise RuleError("A sampling rule must be a JSON object")
    rule = dict(raw)
    name = string(rule.get("RuleName"), "RuleName", 1, 32)
    if fill_defaults:
        for key in STRING_FIELDS:
            rule.setdefault(key, "*")
        rule.setdefault("Version", 1)
    try:
        return _checked(rule)
    except RuleError as exc:
        raise RuleError(f"{name}: {exc}") from None


UPDATABLE = ("ResourceARN", "Priority", "FixedRate", "ReservoirSize", "Host", "ServiceName",
             "ServiceType", "HTTPMethod", "URLPath", "Attributes", "SamplingRateBoost")
DEFAULT_UPDATABLE = ("FixedRate", "ReservoirSize", "SamplingRateBoost")


def apply_update(rule: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The rule after a SamplingRuleUpdate (the Default rule takes rate, reservoir and boost
    only)."""
    changed = dict(rule)
    for key in UPDATABLE:
        if key in update and update[key] is not None:
            if rule["RuleName"] == DEFAULT_RULE_NAME and key not in DEFAULT_UPDATABLE:
                raise RuleError("Only FixedRate, ReservoirSize and SamplingRateBoost of the "
                                "Default rule can change")
            changed[key] = update[key]
    if rule["RuleName"] == DEFAULT_RULE_NAME:
        changed["FixedRate"] = double(changed["FixedRate"], "FixedRate", 0, 1)
        changed["ReservoirSize"] = integer(changed["ReservoirSize"], "ReservoirSize", 0)
        if changed.get("SamplingRateBoost") is not None:
            changed["SamplingRateBoost"] = boost(changed["SamplingRateBoost"])
        return changed
    return normalize(changed, fill_defaults=False)


def parse_rules_file(text: str) -> list[dict[str, Any]]:
    """Rules from a file: a list of SamplingRule objects, ``{"SamplingRules": [...]}``, or the
    output of ``aws xray get-sampling-rules`` (``{"SamplingRuleRecords": [...]}``). A rule named
    Default sets the Default rule's rate, reservoir and boost (its other fields are ignored)."""
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
            # Only these can change on the Default rule; the rest (as `aws xray
            # get-sampling-rules` prints it: "*" everywhere, priority 10000) is its own.
            rule = apply_update(default_rule(), {k: item.get(k) for k in DEFAULT_UPDATABLE})
        else:
            rule = normalize(item, fill_defaults=True)
        if rule["RuleName"] in names:
            raise RuleError(f"rule {rule['RuleName']} appears twice")
        names.add(rule["RuleName"])
        rules.append(rule)
    if len([r for r in rules if r["RuleName"] != DEFAULT_RULE_NAME]) > MAX_RULES:
        raise RuleError(f"more than {MAX_RULES} rules")
    return rules
