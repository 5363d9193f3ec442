"""Helpers of the OpenAI door's integration tests: SDK clients and /metrics scrapes."""

from __future__ import annotations

import urllib.request

from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families


def sdk_for(stack, key: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.http_url}/v1", api_key=key, max_retries=0, timeout=120)


def scrape(url: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from a /metrics URL."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
