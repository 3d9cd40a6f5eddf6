"""Prometheus metrics of the student deployment, through Ray Serve's custom metrics.

Ray exports them with the node's other metrics on its metrics export port (``ray start
--metrics-export-port=8080``, or ``ray.init(_metrics_export_port=...)``), prefixed ``ray_``, with
Serve's ``deployment``/``replica``/``application`` tags added; every series here also carries
``version`` (the served artifact's directory name), so a canary and its primary, or two rollouts,
are told apart (a request the canary answered carries the canary's version):

- ``raydistill_requests_total{version, code}``: HTTP requests by status code;
- ``raydistill_request_latency_ms{version}``: histogram of request latency inside the replica;
- ``raydistill_batch_size{version}``: histogram of instances per forward pass;
- ``raydistill_predictions_total{version, answered_by}``: instances answered, by ``student``/``teacher``;
- ``raydistill_escalations_total{version}`` / ``raydistill_escalation_failures_total{version}``:
  instances sent to the cascade's teacher, and those it did not answer.

(Ray adds ``_total`` to counters itself; the names below omit it.)
"""
from __future__ import annotations

from ray.serve import metrics

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ServeMetrics:
    """The deployment's counters and histograms, tagged with the served ``version``."""

    def __init__(self, version: str) -> None:
        self.requests = metrics.Counter("raydistill_requests", description="HTTP requests by status code",
                                        tag_keys=("version", "code"))
        self.latency = metrics.Histogram("raydistill_request_latency_ms", description="request latency in the replica (ms)",
                                         boundaries=LATENCY_MS, tag_keys=("version",))
        self.batch_size = metrics.Histogram("raydistill_batch_size", description="instances per forward pass",
                                            boundaries=BATCH, tag_keys=("version",))
        self.predictions = metrics.Counter("raydistill_predictions", description="instances answered, by model",
                                           tag_keys=("version", "answered_by"))
        self.escalations = metrics.Counter("raydistill_escalations", description="instances sent to the teacher",
                                           tag_keys=("version",))
        self.failures = metrics.Counter("raydistill_escalation_failures",
                                        description="escalated instances the teacher did not answer", tag_keys=("version",))
        for metric in (self.requests, self.latency, self.batch_size, self.predictions, self.escalations, self.failures):
            metric.set_default_tags({"version": version})

    def request(self, code: int, seconds: float, *, version: str | None = None) -> None:
        self.requests.inc(tags=self._tags(version, code=str(code)))
        self.latency.observe(1000.0 * seconds, tags=self._tags(version))

    def batch(self, instances: int) -> None:
        self.batch_size.observe(instances)

    def answered(self, who: str, instances: int, *, version: str | None = None) -> None:
        if instances:
            self.predictions.inc(instances, tags=self._tags(version, answered_by=who))

    def escalated(self, instances: int, *, version: str | None = None) -> None:
        self.escalations.inc(instances, tags=self._tags(version))

    def escalation_failed(self, instances: int, *, version: str | None = None) -> None:
        self.failures.inc(instances, tags=self._tags(version))

    @staticmethod
    def _tags(version: str | None, **tags: str) -> dict[str, str]:
        """``tags`` plus ``version`` when the answer came from another model version (a canary)."""
        return {**tags, "version": version} if version else tags
