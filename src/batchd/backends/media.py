"""Which image and document URLs a backend may be asked to fetch.

A ``{"type": "url", "url": ...}`` source is fetched by whoever runs the model: the hosted
API from its own network, but a vLLM or SGLang server from the model host's, where a URL
such as ``http://169.254.169.254/`` (cloud metadata) or ``http://10.0.0.5/admin`` reaches
what no key holder should. So each backend has a policy, checked when a request is
validated for its backend (a refused URL is that request's ``invalid_request_error``):

* by default, ``http`` and ``https`` URLs only, naming a public address or a DNS name;
  never a loopback, private, link-local or otherwise non-global address (in any of the
  spellings an HTTP client accepts: ``127.1``, ``2130706433``, ``[::ffff:10.0.0.1]``), nor
  ``localhost``, a single-label name or a name under ``.localhost``, ``.local``,
  ``.internal`` or ``.home.arpa``;
* with ``allowed_url_hosts`` in the backend's config, only hosts matching one of its
  patterns (``images.example.com``, ``*.cdn.example``), which may name internal hosts on
  purpose; an empty list refuses every URL source.

A public name may still resolve to an internal address on the model host: name the hosts
you expect in ``allowed_url_hosts`` and start vLLM with ``--allowed-media-domains``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from batchd.errors import InvalidRequest
from batchd.schemas.messages import CountTokensParams
from batchd.validation import Params

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """``allowed_hosts``: host patterns; ``None`` means any public host."""

    allowed_hosts: tuple[str, ...] | None = None

    def check(self, params: Params | CountTokensParams) -> None:
        """Raise InvalidRequest naming a URL source this backend may not fetch."""
        self._check(url_sources(params))

    def check_chat(self, body: Mapping[str, Any]) -> None:
        """The same for an OpenAI chat body's URL parts (``chat_url_sources``)."""
        self._check(chat_url_sources(body))

    def _check(self, sources: Iterator[tuple[str, str]]) -> None:
        for where, url in sources:
            problem = self.problem(url)
            if problem:
                raise InvalidRequest(f"{where}: {problem}")

    def problem(self, url: str) -> str | None:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https"):
            return f"only http and https URLs may be fetched, not {parts.scheme or url!r}"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "the URL names no host"
        if self.allowed_hosts is not None:
            if any(fnmatchcase(host, pattern.lower()) for pattern in self.allowed_hosts):
                return None
            return f"this backend fetches URLs only from {', '.join(self.allowed_hosts)}"
        if _is_local(host):
            return (
                f"the URL names a loopback, private or link-local host ({host}); "
                "name it in the backend's allowed_url_hosts to allow it"
            )
        return None


def _is_local(host: str) -> bool:
    address = _address(host)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return not address.is_global
    return "." not in host or host == "localhost" or host.endswith(_LOCAL_SUFFIXES)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # The legacy IPv4 spellings that inet_aton (and so most HTTP clients) accept.
    if host[:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_sources(params: Params | CountTokensParams) -> Iterator[tuple[str, str]]:
    """(where, url) of every URL source in the messages, nested ones included (the
    content of a tool result or of a document), without recursion."""
    stack: list[tuple[str, Any]] = [
        (f"messages.{i}.content", m.content) for i, m in enumerate(params.messages)
    ]
    while stack:
        where, blocks = stack.pop()
        if not isinstance(blocks, list):
            continue
        for j, block in enumerate(blocks):
            if not isinstance(block, dict):
                continue
            source = block.get("source")
            if isinstance(source, dict):
                if source.get("type") == "url" and isinstance(source.get("url"), str):
                    yield f"{where}.{j}.source.url", source["url"]
                stack.append((f"{where}.{j}.source.content", source.get("content")))
            stack.append((f"{where}.{j}.content", block.get("content")))


# OpenAI content parts that a model server fetches by URL (the last two: vLLM's own)
_URL_PARTS = ("image_url", "video_url", "audio_url")


def chat_url_sources(body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, url) of every part of an OpenAI chat body's messages that names a URL to
    fetch (``{"type": "image_url", "image_url": {"url": ...}}`` and its kin, or a plain
    string in their place); ``data:`` URLs carry their bytes and are not fetched."""
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _URL_PARTS:
                continue
            value = part.get(kind)
            url = value.get("url") if isinstance(value, dict) else value
            if isinstance(url, str) and not url.startswith("data:"):
                yield f"messages.{i}.content.{j}.{kind}.url", url


def policy_for(allowed_url_hosts: Sequence[str] | None) -> UrlPolicy:
    return UrlPolicy(None if allowed_url_hosts is None else tuple(allowed_url_hosts))
