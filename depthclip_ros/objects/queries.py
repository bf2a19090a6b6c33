"""The rules for object queries (sentences such as "the red chair next to the door") and
for the referring step's settings (mixing weights, protocol), without torch: the node's
parameter table and the tools check them before any model is loaded."""

from __future__ import annotations

import math
from typing import Sequence

from depthclip_ros.engine.config import MAX_PROMPT_CHARS

MAX_QUERIES = 16
MAX_QUERY_CHARS = MAX_PROMPT_CHARS
PROTOCOLS = ('paper', 'node')
DEFAULT_ALPHA = 0.95  # RefCOCO / RefCOCO+; the paper uses 0.85 for long expressions
DEFAULT_BETA = 0.5


def check_queries(queries: Sequence[str]) -> list[str]:
    """Non-empty strings of at most ``MAX_QUERY_CHARS``, at most ``MAX_QUERIES`` of them."""
    if isinstance(queries, str):
        raise TypeError('queries must be a list of strings, not one string')
    queries = list(queries)
    if len(queries) > MAX_QUERIES:
        raise ValueError(f'at most {MAX_QUERIES} queries, got {len(queries)}')
    for query in queries:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f'every query must be a non-empty string, got {query!r}')
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f'query {query[:40]!r}... is longer than {MAX_QUERY_CHARS} '
                             f'characters')
    return [q.strip() for q in queries]


def check_mix(name: str, value: float) -> float:
    """``alpha`` and ``beta`` are mixing weights in [0, 1]; raises ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be a number in [0, 1], got {value!r}')
    return float(value)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {", ".join(PROTOCOLS)}, got {protocol!r}')
    return protocol
