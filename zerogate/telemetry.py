"""OpenTelemetry tracing and metrics, Prometheus exposition, structured logging.

Providers are created here and passed explicitly to whoever needs them (no global OTel state,
so tests build their own). OTLP export (traces and metrics) turns on when the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` variable is set. Metrics are exposed as Prometheus text from a
per-``Telemetry`` registry at ``/metrics``.

Log lines are ``key=value`` (or JSON objects with ``log_format: json``); field names used across
subsystems are defined once below.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Log field names, defined once (SPIRE pkg/common/telemetry/names.go does the same).
F_EVENT = "event"
F_SPIFFE_ID = "spiffe_id"
F_TRACE_ID = "trace_id"
F_REVISION = "revision"
F_SEQ = "seq"

if TYPE_CHECKING:  # FastAPI 0.165+; at run time the dict is all the argument needs
    from fastapi.telemetry import TelemetryConfig

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST

# FastAPI's own OpenTelemetry support (FastAPI 0.165+, ``FastAPI(telemetry=...)``), off in every
# zerogate app. zerogate's spans and metrics come from ``Telemetry``'s providers, which are not
# global. FastAPI's default switches itself on whenever some library sets a global provider,
# and then adds a second set of spans and metrics to every request. Its on-or-off check also
# reads the global providers on every request (~8 us on this project's 2-core VM); with
# everything off, that check is three dict lookups. FastAPI releases before 0.165 ignore the
# argument.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    span_exporter: InMemorySpanExporter | None = None
    _readers: list[MetricReader] = field(default_factory=list)

    @classmethod
    def create(cls, service_name: str = "zerogate", *, metrics: bool = True) -> Telemetry:
        """Production providers: OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, Prometheus."""
        resource = Resource.create({"service.name": service_name})
        tracer_provider = TracerProvider(resource=resource)
        registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = []
        if metrics:
            readers.append(PrometheusMetricReader(registry=registry))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        return cls(tracer_provider, meter_provider, registry, None, readers)

    @classmethod
    def in_memory(cls, service_name: str = "zerogate-test") -> Telemetry:
        """Providers for tests: spans kept in memory, metrics in a private registry."""
        resource = Resource.create({"service.name": service_name})
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(registry=registry)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        return cls(tracer_provider, meter_provider, registry, exporter, [reader])

    def tracer(self, name: str) -> Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> Meter:
        return self.meter_provider.get_meter(name)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


# Logging ----------------------------------------------------------------------------------

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"color_message", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=zerogate.audit event=... key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        message = record.getMessage()
        if message:
            parts.append(message if "=" in message else f"msg={_quote(message)}")
        for key, value in _fields(record).items():
            parts.append(f"{key}={_quote(str(value))}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs in the message become fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        pairs = _parse_pairs(message)
        if pairs is None:
            out["msg"] = message
        else:
            out.update(pairs)
        out.update({k: v for k, v in _fields(record).items() if _jsonable(v)})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _quote(value: str) -> str:
    if not value or any(c in value for c in ' "=\n\t'):
        return json.dumps(value)
    return value


def _parse_pairs(message: str) -> dict[str, str] | None:
    pairs: dict[str, str] = {}
    for token in message.split(" "):
        key, sep, value = token.partition("=")
        if not sep or not key:
            return None
        pairs[key] = value
    return pairs or None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def setup_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Route every logger to stderr in the chosen structured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("uvicorn.access", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
