"""Who the client is, and the headers a request carries on its way upstream.

Incoming ``X-Forwarded-*`` and ``Forwarded`` values are believed only from peers
in ``trusted_proxies``; otherwise the client is the socket peer and the scheme is
the listener's.  Rate limits and OAuth verification rely on this being right.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from asyncgate.settings import GatewaySettings

# RFC 9110 §7.6.1 connection-specific fields, plus the proxy credentials meant for us.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
_FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ClientInfo:
    """The client as the gateway believes it: address, scheme and host it used."""

    address: str
    scheme: str
    host: str
    forwarded_for: str  # the X-Forwarded-For value to send upstream
    trusted_peer: bool


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    if not trusted or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_info(request: web.Request, settings: GatewaySettings) -> ClientInfo:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    peer_address = str(peer[0]) if peer else ""
    listener_scheme = (
        "https" if request.transport and request.transport.get_extra_info("sslcontext") else "http"
    )
    host = request.headers.get("Host", "")
    trusted = settings.trusted_proxies
    if not _is_trusted(peer_address, trusted):
        return ClientInfo(peer_address, listener_scheme, host, peer_address, False)
    chain = [
        a.strip()
        for v in request.headers.getall("X-Forwarded-For", [])
        for a in v.split(",")
        if a.strip()
    ]
    # The client is the right-most address that is not one of our own proxies.
    address = peer_address
    for hop in reversed(chain):
        address = hop
        if not _is_trusted(hop, trusted):
            break
    scheme = request.headers.get("X-Forwarded-Proto", listener_scheme).split(",")[0].strip()
    fwd_host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return ClientInfo(address, scheme, fwd_host, ", ".join([*chain, peer_address]), True)


def connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Hop-by-hop names plus every header the ``Connection`` header names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Copy headers without hop-by-hop ones, keeping repeats and order."""
    skip = connection_named(headers) | {d.lower() for d in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def upstream_request_headers(
    request: web.Request, client: ClientInfo, upstream_host: str | None
) -> CIMultiDict[str]:
    """Headers for the upstream request: end-to-end ones, then our forwarding headers.

    Forwarding headers are set after hop-by-hop removal, so a client cannot delete
    them by naming them in ``Connection``.
    """
    drop = {"host"} if client.trusted_peer else {"host", *_FORWARDING}
    out = end_to_end(request.headers, drop)
    for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        out.popall(name, None)
    out["Host"] = upstream_host if upstream_host is not None else client.host
    out["X-Forwarded-For"] = client.forwarded_for
    out["X-Forwarded-Proto"] = client.scheme
    out["X-Forwarded-Host"] = client.host
    version = f"{request.version.major}.{request.version.minor}"
    via = request.headers.getall("Via", [])
    out.popall("Via", None)
    out["Via"] = ", ".join([*via, f"{version} asyncgate"])
    return out
