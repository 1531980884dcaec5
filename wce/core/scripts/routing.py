"""Routing `/fn/...` requests to endpoints: exact paths before patterns, deterministically.

A pattern is a path whose segments are literals or `{name}`. Two endpoints clash when they have
the same method and the same *shape* (literals equal, parameters in the same places): they would
answer the same requests, so the second is refused when saved. Among patterns that match a path,
the one with the most literal segments wins, then the earliest literal (left to right), so the
outcome never depends on the order endpoints were saved in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest

SEGMENT_RE = re.compile(r"[A-Za-z0-9_.~-]+")
PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,30})\}")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed endpoint path."""

    segments: tuple[str | None, ...]  # a literal, or None for a parameter
    names: tuple[str, ...]  # parameter names, in order

    @property
    def shape(self) -> tuple[str | None, ...]:
        return self.segments

    @property
    def rank(self) -> tuple[int, tuple[int, ...]]:
        """Sort key: more literals first, then literals earlier."""
        return (-sum(s is not None for s in self.segments), tuple(0 if s is not None else 1 for s in self.segments))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params = {}
        names = iter(self.names)
        for seg, part in zip(self.segments, parts, strict=True):
            if seg is None:
                if not part:
                    return None
                params[next(names)] = part
            elif seg != part:
                return None
        return params


def parse_pattern(path: object) -> Pattern:
    """Check and parse an endpoint path like `/hello/{name}`."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 200:
        raise BadRequest("path must start with '/' (at most 200 characters)")
    parts = path.strip("/").split("/") if path.strip("/") else []
    segments: list[str | None] = []
    names: list[str] = []
    for part in parts:
        m = PARAM_RE.fullmatch(part)
        if m:
            if m.group(1) in names:
                raise BadRequest(f"parameter {{{m.group(1)}}} appears twice")
            names.append(m.group(1))
            segments.append(None)
        elif SEGMENT_RE.fullmatch(part):
            segments.append(part)
        else:
            raise BadRequest(f"bad path segment {part!r}: use letters, digits, '_.~-' or {{name}}")
    return Pattern(tuple(segments), tuple(names))


class EndpointRouter:
    """The routing table of one cenv's endpoints."""

    def __init__(self, endpoints: list[tuple[int, str, str]]) -> None:
        """endpoints: (id, method, path)."""
        self._exact: dict[str, dict[str, int]] = {}
        self._patterns: list[tuple[Pattern, str, int]] = []
        for sid, method, path in endpoints:
            p = parse_pattern(path)
            if p.names:
                self._patterns.append((p, method, sid))
            else:
                self._exact.setdefault("/" + "/".join(s for s in p.segments if s), {})[method] = sid
        self._patterns.sort(key=lambda x: (x[0].rank, x[2]))

    def match(self, method: str, path: str) -> tuple[int | None, dict[str, str], set[str]]:
        """(endpoint id, params, methods allowed on that path): id None when no method matches."""
        norm = "/" + path.strip("/")
        exact = self._exact.get(norm, {})
        if method in exact:
            return exact[method], {}, set(exact)
        parts = path.strip("/").split("/") if path.strip("/") else []
        allowed = set(exact)
        for p, m, sid in self._patterns:
            params = p.match(parts)
            if params is not None:
                if m == method:
                    return sid, params, {m}
                allowed.add(m)
        return None, {}, allowed
