"""Node code of examples/research_agent.py (imported as research_nodes:<name>)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

TAG = re.compile(r"<[^>]+>")
# Characters of search results given to the summarizing model.
DIGEST_CHARS = 6000


def digest(ctx: Any, queries: list[str], results: list[Any]) -> str:
    """The search results as short text for the model: per query, the hits'
    titles and snippets (Wikipedia's search API), or the start of the body."""
    parts = []
    for query, result in zip(queries, results, strict=False):
        if not isinstance(result, dict):
            parts.append(f"## {query}\n(no result)")
            continue
        body = result.get("body")
        hits = (body or {}).get("query", {}).get("search") if isinstance(body, dict) else None
        if isinstance(hits, list):
            lines = [
                f"- {hit.get('title', '')}: {html.unescape(TAG.sub('', hit.get('snippet', '')))}"
                for hit in hits
                if isinstance(hit, dict)
            ]
            text = "\n".join(lines) or "(no hits)"
        else:
            text = body if isinstance(body, str) else json.dumps(body)[:1500]
        parts.append(f"## {query}\n{text}")
    out = "\n\n".join(parts)
    ctx.log(f"{len(queries)} searches, {len(out)} characters of results")
    return out[:DIGEST_CHARS]
