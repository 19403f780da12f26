"""Configuration: file + environment, defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from zerogate.cli import app
from zerogate.config import load_settings, render_default_yaml
from zerogate.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ZEROGATE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(Path(__file__).parent)


def test_embedded_defaults() -> None:
    s = load_settings()
    assert s.trust_domain == "zerogate.internal"
    assert s.listen == "127.0.0.1:8443"
    assert s.inference.listen == "127.0.0.1:8000"
    assert s.effective_database_url == f"sqlite:///{Path('.zerogate') / 'zerogate.db'}"
    assert s.workload_api_socket == Path(".zerogate/workload.sock").absolute()


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "zerogate.yaml"
    cfg.write_text("trust_domain: file.example\naudit:\n  checkpoint_every: 7\n")
    monkeypatch.setenv("ZEROGATE_TRUST_DOMAIN", "env.example")
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("ZEROGATE_INFERENCE_LISTEN", "127.0.0.1:9000")
    s = load_settings(cfg)
    assert s.trust_domain == "env.example"
    assert s.audit.checkpoint_every == 7
    assert s.data_dir == tmp_path / "d"
    assert s.inference.listen == "127.0.0.1:9000"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus: 1\n", "bogus: unknown key"),
        ("audit:\n  nope: 2\n", "audit.nope: unknown key"),
        ("listen: nowhere\n", "listen:"),
        ("trust_domain: Upper.Example\n", "trust_domain:"),
        ("audit:\n  checkpoint_every: 0\n", "audit.checkpoint_every:"),
        ("policy:\n  engine: regopy\n", "policy.engine:"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "zerogate.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(cfg)


def test_unknown_env_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROGATE_LSTEN", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="ZEROGATE_LSTEN"):
        load_settings()


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_init_writes_every_key_with_defaults(tmp_path: Path) -> None:
    target = tmp_path / "zerogate.yaml"
    result = CliRunner().invoke(app, ["init", "--path", str(target)])
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert text == render_default_yaml()
    data = yaml.safe_load(text)
    assert data["trust_domain"] == "zerogate.internal"
    assert data["audit"]["checkpoint_every"] == 1000
    assert "# SPIFFE trust domain" in text
    # the written file loads back to the defaults
    assert load_settings(target) == load_settings()
    again = CliRunner().invoke(app, ["init", "--path", str(target)])
    assert again.exit_code == 2
    assert "--force" in again.output


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "zerogate.yaml"
    cfg.write_text("bogus_key: 1\n")
    result = CliRunner().invoke(app, ["audit", "tail", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "bogus_key: unknown key" in result.output


def test_cli_sets_go_runtime_defaults_unless_the_operator_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from zerogate.cli import GO_RUNTIME_DEFAULTS

    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    monkeypatch.setenv("GOGC", "100")  # the operator's own value
    target = tmp_path / "zerogate.yaml"
    assert CliRunner().invoke(app, ["init", "--path", str(target)]).exit_code == 0
    assert os.environ["GOGC"] == "100"
    assert os.environ["GOMEMLIMIT"] == GO_RUNTIME_DEFAULTS["GOMEMLIMIT"] == "1GiB"
