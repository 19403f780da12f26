"""Configuration: ``zerogate.yaml`` plus ``ZEROGATE_*`` environment variables.

Precedence (highest first): explicit keyword arguments, ``ZEROGATE_*`` environment variables,
the YAML file, the embedded defaults. Nested keys are reached from the environment with a
double underscore (``ZEROGATE_AUDIT__CHECKPOINT_EVERY=500``); a few flat names that the issues
and docs promise are accepted too (``ZEROGATE_INFERENCE_LISTEN``,
``ZEROGATE_WORKLOAD_API_SOCKET``).

Unknown keys (in the file or as ``ZEROGATE_*`` variables) and bad values are rejected at start
with a ``ConfigError`` naming the key. Every subsystem reads its own section; the kernel imports
no subsystem (DESIGN.md section 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from zerogate.errors import ConfigError

ENV_PREFIX = "ZEROGATE_"
CONFIG_ENV = "ZEROGATE_CONFIG"
DEFAULT_CONFIG_FILE = "zerogate.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Flat environment names promised by the docs, mapped to their nested key.
FLAT_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "ZEROGATE_INFERENCE_LISTEN": ("inference", "listen"),
    "ZEROGATE_WORKLOAD_API_SOCKET": ("identity", "workload_api_socket"),
}
# ZEROGATE_* variables that are not settings keys.
NON_SETTING_ENV = {CONFIG_ENV, "ZEROGATE_TEST_DATABASE_URL", "ZEROGATE_TEST_POSTGRES_URL"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port 0-65535, got {value!r}")
    return value


class AuditSettings(Section):
    """The hash-chained audit log (zerogate/audit.py)."""

    checkpoint_every: int = Field(1000, ge=1, description="sign a checkpoint every N records")
    checkpoint_interval_s: float = Field(
        10.0, gt=0, description="... or every T seconds when records arrived"
    )
    max_payload_bytes: int = Field(
        1 << 20, ge=1024, description="largest canonical JSON payload accepted"
    )
    batch_max: int = Field(1024, ge=1, description="most records written in one transaction")
    signing_key: Path | None = Field(
        None, description="Ed25519 PEM key for checkpoints; default <data_dir>/audit-ed25519.pem"
    )
    capture_content: bool = Field(
        False, description="store prompt/output text in inference audit records"
    )


class TelemetrySettings(Section):
    """OpenTelemetry and Prometheus (zerogate/telemetry.py). OTLP export turns on when the
    standard OTEL_EXPORTER_OTLP_ENDPOINT variable is set."""

    service_name: str = Field("zerogate", description="OpenTelemetry service.name")
    metrics_enabled: bool = Field(True, description="serve Prometheus text at /metrics")


class K8sPsatSettings(Section):
    """Kubernetes projected service-account token attestation (like SPIRE's k8s_psat)."""

    cluster: str = Field("", description="cluster name used in selectors; empty disables")
    issuer: str = Field("", description="expected `iss` of service-account tokens")
    audience: str = Field("zerogate", description="expected audience of the projected token")
    jwks_file: Path | None = Field(None, description="the cluster's service-account JWKS (file)")
    jwks_url: str = Field("", description="... or its URL (https)")


class IdentitySettings(Section):
    """SPIFFE CA, SVIDs and the Workload API (identity/)."""

    key_type: Literal["ec-p256", "ec-p384", "rsa-2048"] = Field(
        "ec-p256", description="CA and JWT signing key type"
    )
    key_store: Literal["disk", "memory"] = Field(
        "disk", description="where CA keys live: disk (0600 files in data_dir) or memory"
    )
    ca_ttl_s: int = Field(86400, ge=60, description="lifetime of a CA certificate")
    x509_svid_ttl_s: int = Field(3600, ge=10, description="default X.509-SVID lifetime")
    jwt_svid_ttl_s: int = Field(300, ge=10, description="default JWT-SVID lifetime")
    jwt_algorithm: Literal["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256"] = Field(
        "ES256", description="JWT-SVID signing algorithm"
    )
    upstream_ca_cert: Path | None = Field(
        None, description="upstream CA certificate (PEM); empty: self-signed root"
    )
    upstream_ca_key: Path | None = Field(None, description="upstream CA private key (PEM)")
    upstream_ca_bundle: Path | None = Field(
        None, description="upstream trust anchors (PEM) when the upstream CA is an intermediate"
    )
    workload_api_socket: Path | None = Field(
        None, description="Workload API Unix socket; default <data_dir>/workload.sock"
    )
    server_dns_names: list[str] = Field(
        default_factory=lambda: ["localhost", "zerogate.zerogate.svc"],
        description="DNS SANs on the control plane's own X.509-SVID",
    )
    bundle_refresh_hint_s: int = Field(300, ge=1, description="spiffe_refresh_hint of the bundle")
    k8s_psat: K8sPsatSettings = Field(default_factory=K8sPsatSettings)


class PolicySettings(Section):
    """Rego engines, policy store and decision log (policy/)."""

    engine: Literal["opa", "regorus", "opa-server"] = Field(
        "opa", description="opa (embedded OPA), regorus, or opa-server (remote OPA)"
    )
    rego_dir: Path | None = Field(
        None, description="policy directory; default the rego/ shipped with zerogate"
    )
    watch: bool = Field(True, description="reload when files in rego_dir change")
    opa_urls: list[str] = Field(
        default_factory=list, description="OPA servers for engine opa-server"
    )
    opa_timeout_ms: int = Field(200, ge=1, description="per-request budget for a remote OPA")
    decision_cache_size: int = Field(10000, ge=0, description="decision cache entries; 0 = off")
    decision_log_mask: list[str] = Field(
        default_factory=list, description="input paths removed from decision logs, e.g. /input/x"
    )
    bundle_signing_key: Path | None = Field(
        None, description="PEM key to sign served bundles (.signatures.json)"
    )


class ModelSettings(Section):
    name: str = Field(description="model name clients ask for")
    task: Literal["embeddings", "chat"]
    backend: Literal["local-torch", "openai-upstream"] = "local-torch"
    path: str = Field("", description="local weights (dir or file); empty: the packaged default")
    url: str = Field("", description="upstream base URL for openai-upstream")
    upstream_model: str = Field("", description="model name at the upstream; default `name`")
    api_key_env: str = Field("", description="env var holding the upstream credential")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    timeout_s: float = Field(60.0, gt=0, description="openai-upstream: per-read timeout")
    max_retries: int = Field(
        2, ge=0, le=10, description="openai-upstream: retries on connect errors, 429 and 5xx"
    )


def _default_models() -> list[ModelSettings]:
    return [
        ModelSettings(name="all-MiniLM-L6-v2", task="embeddings"),
        ModelSettings(name="SmolLM2-135M-Instruct", task="chat"),
    ]


class InferenceSettings(Section):
    """The gated OpenAI-compatible model service (inference/)."""

    enabled: bool = Field(True, description="start the inference service with `zerogate serve`")
    listen: str = Field("127.0.0.1:8000", description="HOST:PORT of the inference service")
    spiffe_id_path: str = Field("/inference", description="the service's own SPIFFE ID path")
    audience: list[str] = Field(
        default_factory=list,
        description="accepted JWT-SVID audiences; default the service's SPIFFE ID",
    )
    trusted_proxy_ids: list[str] = Field(
        default_factory=list,
        description="SPIFFE IDs allowed to send x-forwarded-client-cert",
    )
    token_cache: bool = Field(True, description="cache verified JWT-SVIDs until expiry")
    bundle_staleness_factor: float = Field(
        3.0, gt=0, description="503 when the bundle is older than refresh_hint x factor"
    )
    batch_max: int = Field(64, ge=1, description="micro-batch size limit")
    batch_wait_ms: float = Field(2.0, ge=0, description="micro-batch collection window")
    models: list[ModelSettings] = Field(default_factory=_default_models)

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)


class AdmissionSettings(Section):
    """The Kubernetes admission webhook (admission/)."""

    validate_timeout_s: float = Field(3.0, gt=0, description="deadline of a validate review")
    mutate_timeout_s: float = Field(1.0, gt=0, description="deadline of a mutate review")
    failure_mode: Literal["deny", "allow"] = Field(
        "deny", description="answer on deadline or engine error"
    )
    gatekeeper_dir: Path | None = Field(
        None, description="directory of ConstraintTemplate/Constraint YAML"
    )
    namespace: str = Field("zerogate", description="namespace zerogate runs in (exempted)")
    service: str = Field("zerogate", description="webhook Service name")


class RuntimeSettings(Section):
    """Falco event ingestion and response (runtime/)."""

    max_body_bytes: int = Field(4 << 20, ge=1024, description="largest accepted POST body")
    dedup_window_s: int = Field(3600, ge=1, description="same event id within: recorded once")
    nats_url: str = Field("", description="NATS server for the JetStream consumer; empty: off")
    nats_stream: str = Field("FALCO", description="JetStream stream name")
    nats_subjects: list[str] = Field(
        default_factory=lambda: ["falco.>"], description="subjects Falcosidekick publishes to"
    )
    nats_durable: str = Field("zerogate", description="durable consumer name")
    alert_webhook: str = Field("", description="URL that `alert` actions POST to")
    quarantine_ttl_s: int = Field(3600, ge=1, description="default quarantine lifetime")
    action_throttle_s: int = Field(
        300, ge=0, description="the same action for one (rule, workload) runs once per window"
    )
    kubernetes_actions: bool = Field(
        False, description="let policy label/evict pods via the in-cluster Kubernetes API"
    )
    responder_backlog_max: int = Field(
        50_000,
        ge=1,
        description="events below Critical (and not in revoke_rules) waiting for the responder "
        "at most; beyond it their response is skipped (they stay stored and audited)",
    )
    recent_events: int = Field(
        20,
        ge=0,
        le=1000,
        description="how many of the pod's events of the last hour the response policy sees "
        "as input.recent (newest first); each costs OPA ~20 us of input handling per decision",
    )
    log_empty_decisions: bool = Field(
        False,
        description="decision-log the response policy's decisions that yield no action too "
        "(each event has its runtime.event record either way; decisions that act are always "
        "logged)",
    )
    event_retention_s: int = Field(
        7 * 86400,
        ge=0,
        description="events last seen longer ago are deleted from the events table (their "
        "audit records stay); at least dedup_window_s; 0: kept forever",
    )
    prune_interval_s: int = Field(60, ge=1, description="how often expired events are pruned")
    parse_processes: int | None = Field(
        None,
        ge=0,
        le=64,
        description="worker processes that parse big batches (POST bodies over "
        "parse_inline_bytes); default one per core beyond the first, at most 4; 0: in-process",
    )
    parse_inline_bytes: int = Field(
        64 << 10, ge=0, description="POST bodies up to this size are parsed in-process"
    )

    @model_validator(mode="after")
    def _retention_covers_dedup(self) -> RuntimeSettings:
        # a repeat inside the dedup window must still find its first occurrence
        if 0 < self.event_retention_s < self.dedup_window_s:
            raise ValueError(
                f"event_retention_s ({self.event_retention_s}) must be 0 or at least "
                f"dedup_window_s ({self.dedup_window_s})"
            )
        return self


class Settings(BaseSettings):
    """The whole configuration. Build with ``load_settings`` to get ConfigError on bad input."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path(".zerogate"), description="state: database, keys, sockets")
    database_url: str = Field(
        "", description="SQLAlchemy URL; default sqlite:///<data_dir>/zerogate.db"
    )
    trust_domain: str = Field("zerogate.internal", description="SPIFFE trust domain")
    listen: str = Field("127.0.0.1:8443", description="HOST:PORT of the control plane (HTTPS)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    log_format: Literal["json", "kv"] = Field("kv", description="json or key=value lines")
    audit: AuditSettings = Field(default_factory=AuditSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        # SPIFFE-ID spec section 2.1: lowercase letters, digits, dots, dashes, underscores.
        if not value or len(value) > 255:
            raise ValueError("trust domain must be 1-255 characters")
        if any(c not in "abcdefghijklmnopqrstuvwxyz0123456789.-_" for c in value):
            raise ValueError(
                f"trust domain {value!r} may only hold lowercase letters, digits, '.', '-', '_'"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _FlatAliasSource(settings_cls), env_settings)

    # Derived locations -------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'zerogate.db'}"

    @property
    def audit_signing_key(self) -> Path:
        return self.audit.signing_key or self.data_dir / "audit-ed25519.pem"

    @property
    def workload_api_socket(self) -> Path:
        # absolute: clients address it as unix:///path (a relative path would be read as
        # the URI's authority, which the Workload Endpoint spec forbids)
        return (self.identity.workload_api_socket or self.data_dir / "workload.sock").absolute()

    @property
    def rego_dir(self) -> Path:
        return self.policy.rego_dir or REPO_ROOT / "rego"


class _FlatAliasSource(PydanticBaseSettingsSource):
    """Reads the flat ``ZEROGATE_INFERENCE_LISTEN``-style names into nested keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for env, (section, key) in FLAT_ENV_ALIASES.items():
            if env in os.environ:
                out.setdefault(section, {})[key] = os.environ[env]
        return out


def _known_env_names() -> set[str]:
    names = set(FLAT_ENV_ALIASES) | NON_SETTING_ENV
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        names.add(env)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub in annotation.model_fields:
                names.add(f"{env}__{sub.upper()}")
    return names


def _check_env() -> None:
    known = _known_env_names()
    for env in os.environ:
        if not env.startswith(ENV_PREFIX) or env in known:
            continue
        # deeper nesting (ZEROGATE_IDENTITY__K8S_PSAT__ISSUER) is validated by pydantic itself
        if env.count("__") >= 2 and env.rsplit("__", 1)[0] in known:
            continue
        raise ConfigError(f"unknown configuration key in environment: {env}")


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{key}: {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(problems)


def config_path(explicit: Path | None = None) -> Path | None:
    """The YAML file to read: explicit, then $ZEROGATE_CONFIG, then ./zerogate.yaml if present."""
    if explicit is not None:
        return explicit
    if CONFIG_ENV in os.environ:
        return Path(os.environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the file and the environment; raise ConfigError naming the key on bad input."""
    file_values: dict[str, Any] = {}
    origin = "defaults and environment"
    chosen = config_path(path)
    if chosen is not None:
        origin = str(chosen)
        try:
            loaded = yaml.safe_load(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {chosen}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {chosen} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {chosen} must hold a mapping at the top")
        file_values = loaded
    _check_env()
    # File values go in as init kwargs below explicit overrides; the env source must win over
    # the file, so merge: file < env < overrides.
    try:
        env_only = Settings()
        env_set = _explicitly_set(env_only)
        merged = _deep_merge(file_values, env_set)
        merged = _deep_merge(merged, overrides)
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc


def _explicitly_set(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        out[name] = _explicitly_set(value) if isinstance(value, Section) else value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def render_default_yaml() -> str:
    """A commented zerogate.yaml holding every key with its default (``zerogate init``)."""
    lines = [
        "# zerogate configuration. Every key is shown with its default.",
        "# Each key can be overridden by an environment variable: ZEROGATE_<KEY> at the top,",
        "# ZEROGATE_<SECTION>__<KEY> inside a section (e.g. ZEROGATE_AUDIT__CHECKPOINT_EVERY).",
        "",
    ]
    _render_model(Settings, Settings.model_construct(), lines, indent=0)
    return "\n".join(lines) + "\n"


def _render_model(cls: type[BaseModel], instance: BaseModel, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in cls.model_fields.items():
        value = getattr(instance, name, None)
        if value is None and field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _render_model(type(value), value, lines, indent + 1)
            continue
        dumped = _to_plain(value)
        text = yaml.safe_dump({name: dumped}, default_flow_style=False, sort_keys=False)
        for raw in text.rstrip("\n").splitlines():
            lines.append(pad + raw)


def _to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _to_plain(v) for k, v in value.model_dump(mode="json").items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
