"""Who is calling and which name they asked for: forwarded-header trust and the Host allow-list.

Why: per-client limits, the login throttle and the cross-site check all rest on two things a
client can write itself, ``X-Forwarded-For`` and ``Host``.

1. ``X-Forwarded-*`` are read only when the connection comes from a configured proxy
   (``--forwarded-allow-ips``, addresses or networks); the client is then the rightmost address
   that is not one of those proxies (each proxy appends the address it saw; the left end is
   whatever the client wrote). On a HuggingFace Space, where only HF's proxy can reach the app
   and its address is not known in advance, the client is the rightmost entry: the one the
   proxy appended. Uvicorn's own reading of these headers is turned off (app.py), so this is
   the only one.
2. ``Host`` must name this server (DNS rebinding: a foreign name that resolves to 127.0.0.1
   makes a web page same-origin with a loopback server). An IP literal is always accepted (a
   rebinding needs a name), ``localhost`` too, plus the names in ``--allowed-hosts``. On a
   loopback bind that is all; on a LAN bind without ``--allowed-hosts`` any name is accepted
   (the login protects it; the README says to set the list).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _network(text: str):
    text = text.strip()
    if not text:
        return None
    if text == "*":
        raise ValueError("'*' would trust every client's own X-Forwarded-For; name the proxies' addresses")
    return ipaddress.ip_network(text, strict=False)


def parse_networks(text: str | None) -> tuple:
    """``"127.0.0.1, 10.0.0.0/8"`` -> networks; raises ValueError on a malformed entry."""
    return tuple(n for n in (_network(part) for part in (text or "").split(",")) if n is not None)


def _ip(text: str):
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header, without port and brackets, lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class Addresses:
    proxies: tuple = ()  # networks whose X-Forwarded-* headers are believed
    last_hop: bool = False  # on a Space: the client is the rightmost X-Forwarded-For entry
    allowed_hosts: frozenset | None = field(default=None)  # None: any Host name

    @classmethod
    def for_bind(cls, bind_host: str, allowed: str | None, proxies: str | None, on_space: bool) -> "Addresses":
        names = {host_name(n) for n in (allowed or "").split(",") if n.strip()}
        if on_space:
            allowed_hosts = None
        elif bind_host in LOOPBACK_NAMES or names:
            allowed_hosts = frozenset(names | LOOPBACK_NAMES)
        else:
            allowed_hosts = None
        return cls(proxies=parse_networks(proxies), last_hop=on_space, allowed_hosts=allowed_hosts)

    def trusted_peer(self, scope) -> bool:
        """Does this connection come from a proxy whose X-Forwarded-* headers we believe?"""
        if self.last_hop:
            return True
        peer = _ip((scope.get("client") or ("", 0))[0])
        return peer is not None and any(peer in net for net in self.proxies)

    def client(self, scope, forwarded_for: str) -> str | None:
        """The client's address from a trusted peer's ``X-Forwarded-For``; None: keep the peer."""
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        if not hops:
            return None
        if self.last_hop:
            ip = _ip(hops[-1])
            return str(ip) if ip else None
        for hop in reversed(hops):
            ip = _ip(hop)
            if ip is None:
                return None  # a garbled hop: believe nothing beyond it
            if not any(ip in net for net in self.proxies):
                return str(ip)
        return None

    def host_allowed(self, host_header: str) -> bool:
        if self.allowed_hosts is None:
            return True
        name = host_name(host_header)
        if not name:
            return False
        return name in self.allowed_hosts or _ip(name) is not None
