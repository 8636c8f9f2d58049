"""SigV4 verification with botocore, as AWS does it: rebuild the canonical request from what
arrived (the headers the signature names), sign it again with the secret of the access key the
request names, and compare."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
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


def verify(method: str, url: str, headers: Mapping[str, str], body: bytes,
           secrets: Mapping[str, str]) -> Verdict:
    """``headers``: as received (any case); ``secrets``: access key id -> secret key."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lower = {k.lower(): v for k, v in headers.items()}
    if "authorization" not in lower:
        return Verdict(False, reason="unsigned request")
    try:
        fields = parse_authorization(lower["authorization"])
        access_key, date, region, service, _ = fields["Credential"].split("/")
        signed = tuple(fields["SignedHeaders"].split(";"))
        signature = fields["Signature"]
    except (ValueError, KeyError) as exc:
        return Verdict(False, reason=f"bad Authorization header: {exc}")
    secret = secrets.get(access_key)
    if secret is None:
        return Verdict(False, access_key, region, service, signed, "unknown access key")
    missing = [h for h in signed if h not in lower]
    if missing:
        return Verdict(False, access_key, region, service, signed, f"signed headers missing: "
                       f"{missing}")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={h: lower[h] for h in signed})
    request.context["timestamp"] = lower.get("x-amz-date", "")
    token = lower.get("x-amz-security-token")
    auth = SigV4Auth(Credentials(access_key, secret, token), service, region)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        return Verdict(False, access_key, region, service, signed, "signature mismatch")
    if not lower.get("x-amz-date", "").startswith(date):
        return Verdict(False, access_key, region, service, signed, "date mismatch")
    return Verdict(True, access_key, region, service, signed)
