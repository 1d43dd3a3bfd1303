"""A service's /metrics (Prometheus text format), parsed into samples to look up and sum."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.harness.pinning import PinnedConnection
from tests.harness.processes import Service

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    text: str
    samples: dict[SampleKey, float]
    families: dict[str, str]  # family name -> type
    sample_names: dict[str, str]  # sample name -> family name

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when it is not exported (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_values(self, name: str, label: str) -> set[str]:
        """The values `label` takes on the samples named `name`."""
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """`{label value: sample}` for the samples named `name` that have `labels`."""
        wanted = set(labels.items())
        return {
            dict(ls)[label]: v
            for (n, ls), v in self.samples.items()
            if n == name and wanted <= ls and label in dict(ls)
        }


def parse_scrape(text: str) -> Scrape:
    samples: dict[SampleKey, float] = {}
    families: dict[str, str] = {}
    sample_names: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key} in one scrape"
            samples[key] = sample.value
            sample_names[sample.name] = family.name
    return Scrape(text, samples, families, sample_names)


def scrape(service: Service, via: PinnedConnection | None = None) -> Scrape:
    """`/metrics` of `service` (all workers: multiprocess mode), on a new connection or
    through a pinned one."""
    if via is None:
        response = httpx.get(service.url + "/metrics", timeout=10)
        assert response.status_code == 200, response.text[:300]
        assert response.headers["content-type"].startswith("text/plain")
        return parse_scrape(response.text)
    reply = via.request("GET", "/metrics")
    assert reply.status == 200, reply.describe()
    assert reply.headers["content-type"].startswith("text/plain")
    return parse_scrape(reply.body.decode())
