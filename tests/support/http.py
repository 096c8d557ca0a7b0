"""Tiny HTTP client for the agent's /metrics, /health and /ready (stdlib only)."""

from __future__ import annotations

import http.client

from prometheus_client.parser import text_string_to_metric_families


def http_get(host: str, port: int, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of one request; any status is returned, not raised."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def scrape(host: str, port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics parsed with prometheus_client's parser: sample name -> {sorted labels: value}."""
    status, body = http_get(host, port, "/metrics")
    assert status == 200, body
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    total = 0.0
    for key, v in metrics.get(name, {}).items():
        have = dict(key)
        if all(have.get(k) == want for k, want in labels.items()):
            total += v
    return total
