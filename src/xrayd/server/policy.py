"""Who may call the daemon's HTTP servers from a browser's reach: the checks against DNS
rebinding and cross-site requests (docs/operations.md, "Threat model").

- ``Host`` must name this machine's loopback (``localhost``, 127.0.0.0/8, ``[::1]``), the
  configured listen address, or a host the operator allows (``--allowed-hosts``). A page of
  another site whose DNS name was re-pointed at 127.0.0.1 sends its own name as ``Host``.
  When the server listens on every interface, any IP literal is accepted too: rebinding needs
  a DNS name, and a client that types an IP address reaches the address it means.
- A request with an ``Origin`` that is not the server's own, or ``Sec-Fetch-Site:
  cross-site``, comes from another site's page: refused; except following a link to a page
  (a top-level GET navigation), which reads and changes nothing for the other site.
- Mutating calls (any method but GET, HEAD and OPTIONS) need an AWS JSON content type or none
  (the Go SDK and ADOT Python's sampler send none). ``text/plain``, forms and multipart are the
  types a page of another origin can send without a CORS preflight.

Pure: a Request in, a Refusal or None out. Each server chooses what applies to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from xrayd.server.threaded import Refusal, Request

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
AWS_JSON = frozenset({"application/x-amz-json-1.0", "application/x-amz-json-1.1",
                      "application/json"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(authority: str) -> str:
    """The host of a ``Host`` value or address (``[::1]:2000`` → ``::1``), lower case, without
    a trailing dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    if authority.count(":") == 1:
        authority = authority.partition(":")[0]
    return authority.rstrip(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback_name(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def parse_allowed_hosts(text: str | Iterable[str]) -> frozenset[str]:
    """``--allowed-hosts``: a comma list of host names or IP addresses (a port is ignored);
    ``*`` allows every host, ``.example.com`` a domain and its subdomains."""
    items = text.split(",") if isinstance(text, str) else text
    hosts = set()
    for item in items:
        item = item.strip()
        if item.startswith(".") or item == "*":
            hosts.add(item.lower())
        elif item:
            hosts.add(host_name(item))
    return frozenset(hosts)


@dataclass(frozen=True)
class HostAllowList:
    listen_host: str = "127.0.0.1"
    allowed: frozenset[str] = frozenset()

    @classmethod
    def for_address(cls, address: str, allowed: str | Iterable[str] = ()) -> HostAllowList:
        return cls(host_name(address.rpartition(":")[0] if ":" in address else address),
                   parse_allowed_hosts(allowed))

    def allows(self, authority: str) -> bool:
        host = host_name(authority)
        if not host:
            return False
        if "*" in self.allowed or host in self.allowed or is_loopback_name(host):
            return True
        if host == self.listen_host or (self.listen_host in WILDCARDS and _ip(host)):
            return True
        return any(host == a[1:] or host.endswith(a) for a in self.allowed if a[:1] == ".")


def _fetch(request: Request, what: str) -> str:
    return (request.header(f"sec-fetch-{what}") or "").strip().lower()


def _top_level_visit(request: Request) -> bool:
    """Following a link from another site to the viewer: a GET for a whole page, which reads
    nothing for the other site and changes nothing (framing it is refused)."""
    return (request.method in ("GET", "HEAD") and _fetch(request, "mode") == "navigate"
            and _fetch(request, "dest") == "document")


def _media_type(value: str) -> str:
    return value.partition(";")[0].strip().lower()


def _same_origin(origin: str, host: str | None) -> bool:
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme != "http" or parts.path or not parts.hostname:
        return False
    own = urlsplit("http://" + host.strip())
    try:
        return (parts.hostname, parts.port or 80) == (own.hostname, own.port or 80)
    except ValueError:  # a port that is not a number
        return False


@dataclass(frozen=True)
class RequestPolicy:
    """What a server refuses before its handler sees a request. ``hosts`` None: any Host;
    ``content_types`` None: any content type on mutating calls."""

    hosts: HostAllowList | None = None
    same_origin_only: bool = True
    content_types: frozenset[str] | None = None

    def check(self, request: Request) -> Refusal | None:
        host = request.header("host")
        if self.hosts is not None and host is not None and not self.hosts.allows(host):
            return Refusal(421, "MisdirectedRequestException",
                           f"Host {host[:100]!r} is not this server's; see --allowed-hosts")
        if self.same_origin_only:
            origin = request.header("origin")
            if origin is not None and not _same_origin(origin, host):
                return Refusal(403, "AccessDeniedException",
                               f"cross-origin request from {origin[:100]!r} refused")
            if _fetch(request, "site") == "cross-site" and not _top_level_visit(request):
                return Refusal(403, "AccessDeniedException", "cross-site request refused")
        if self.content_types is not None and request.method not in SAFE_METHODS:
            types = [v for k, v in request.headers if k.lower() == "content-type"]
            if any(_media_type(v) not in self.content_types for v in types):
                return Refusal(415, "UnsupportedMediaTypeException",
                               f"Content-Type {types[0][:100]!r} is not accepted; use "
                               "application/x-amz-json-1.1 or application/json")
        return None


def api_policy(address: str, allowed_hosts: str | Iterable[str] = ()) -> RequestPolicy:
    """The X-Ray API, the viewer and the signing proxy: all three checks."""
    return RequestPolicy(HostAllowList.for_address(address, allowed_hosts), True, AWS_JSON)


def read_only_policy(address: str, allowed_hosts: str | Iterable[str] = ()) -> RequestPolicy:
    """The admin endpoint (GET only): Host and origin checks."""
    return RequestPolicy(HostAllowList.for_address(address, allowed_hosts), True, None)
