"""SigV4 verification with botocore, as AWS does it: rebuild the canonical request from what
arrived (the header lines the signature names, as received: a name sent twice is one canonical
header with its values joined by ",", as AWS joins them), sign it again with the secret of the
access key the request names, and compare. The signature itself is botocore's computation."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    ok: bool
    access_key: str = ""
    region: str = ""
    service: str = ""
    signed_headers: tuple[str, ...] = ()
    reason: str = ""


def parse_authorization(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        raise ValueError(f"not SigV4: {scheme!r}")
    fields = {}
    for part in rest.split(","):
        key, _, val = part.strip().partition("=")
        fields[key] = val
    return fields


def verify(method: str, url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]],
           body: bytes, secrets: Mapping[str, str]) -> Verdict:
    """``headers``: the header lines as received, as (name, value) pairs in order (or a
    mapping, any case); ``secrets``: access key id -> secret key."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest, HTTPHeaders
    from botocore.credentials import Credentials

    lines = list(headers.items() if isinstance(headers, Mapping) else headers)
    values: dict[str, list[str]] = {}
    for name, value in lines:
        values.setdefault(name.lower(), []).append(value)
    if "authorization" not in values:
        return Verdict(False, reason="unsigned request")
    if len(values["authorization"]) > 1:
        return Verdict(False, reason="more than one Authorization header")
    try:
        fields = parse_authorization(values["authorization"][0])
        access_key, date, region, service, _ = fields["Credential"].split("/")
        signed = tuple(fields["SignedHeaders"].split(";"))
        signature = fields["Signature"]
    except (ValueError, KeyError) as exc:
        return Verdict(False, reason=f"bad Authorization header: {exc}")
    secret = secrets.get(access_key)
    if secret is None:
        return Verdict(False, access_key, region, service, signed, "unknown access key")
    missing = [h for h in signed if h not in values]
    if missing:
        return Verdict(False, access_key, region, service, signed, f"signed headers missing: "
                       f"{missing}")
    request = AWSRequest(method=method, url=url, data=body)
    # Every received line of a signed name, duplicates kept: botocore joins them with ",".
    request.headers = HTTPHeaders.from_pairs(
        [(name, value) for name, value in lines if name.lower() in signed])
    amz_date = ",".join(values.get("x-amz-date", []))
    request.context["timestamp"] = amz_date
    tokens = values.get("x-amz-security-token")
    auth = SigV4Auth(Credentials(access_key, secret, ",".join(tokens) if tokens else None),
                     service, region)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        return Verdict(False, access_key, region, service, signed, "signature mismatch")
    if not amz_date.startswith(date):
        return Verdict(False, access_key, region, service, signed, "date mismatch")
    return Verdict(True, access_key, region, service, signed)
