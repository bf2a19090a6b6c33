"""The rules for object queries (sentences such as "the red chair next to the door"),
without torch: the node's parameter table and the tools check queries before any model
is loaded."""

from __future__ import annotations

from typing import Sequence

from depthclip_ros.engine.config import MAX_PROMPT_CHARS

MAX_QUERIES = 16
MAX_QUERY_CHARS = MAX_PROMPT_CHARS


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
