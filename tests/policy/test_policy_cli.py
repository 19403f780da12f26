"""``zerogate policy`` commands through Typer's CliRunner: exit codes as ``opa test``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policy.bundle import read_bundle
from policy.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

POLICY = 'package demo\n\ndefault allow := false\n\nallow if input.user == "alice"\n'
PASSING = (
    "package demo_test\n\nimport data.demo\n\n"
    'test_alice if demo.allow with input as {"user": "alice"}\n'
)
FAILING = PASSING + '\ntest_bob_wrongly_expected if demo.allow with input as {"user": "bob"}\n'


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("engine", ["opa", "regorus"])
def test_shipped_policies_pass(engine: str) -> None:
    result = runner.invoke(app, ["test", str(REPO / "rego"), "--engine", engine])
    assert result.exit_code == 0, result.output
    assert "PASS: " in result.output and "FAIL" not in result.output


def test_verbose_lists_each_test_with_time(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY, "demo_test.rego": PASSING})
    result = runner.invoke(app, ["test", str(root), "-v"])
    assert result.exit_code == 0
    assert "data.demo_test.test_alice: PASS (" in result.output
    assert result.output.rstrip().endswith("PASS: 1/1")


def test_failing_test_exits_2_and_is_named(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY, "demo_test.rego": FAILING})
    result = runner.invoke(app, ["test", str(root)])
    assert result.exit_code == 2
    assert "data.demo_test.test_bob_wrongly_expected: FAIL" in result.output
    assert "PASS: 1/2" in result.output and "FAIL: 1/2" in result.output


def test_run_filters_by_regex(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY, "demo_test.rego": FAILING})
    result = runner.invoke(app, ["test", str(root), "--run", "alice"])
    assert result.exit_code == 0
    assert "PASS: 1/1" in result.output


def test_json_format(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY, "demo_test.rego": FAILING})
    result = runner.invoke(app, ["test", str(root), "--format", "json"])
    assert result.exit_code == 2
    items = json.loads(result.stdout)
    by_name = {i["name"]: i for i in items}
    assert by_name["test_bob_wrongly_expected"]["fail"] is True
    assert "fail" not in by_name["test_alice"]
    assert by_name["test_alice"]["location"]["row"] == 5


def test_parse_error_exits_1_with_location(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {"demo.rego": "package demo\n\nallow if {\n  input.x ==\n}\n", "demo_test.rego": PASSING},
    )
    result = runner.invoke(app, ["test", str(root)])
    assert result.exit_code == 1
    assert f"{root.as_posix()}/demo.rego:5:1: " in result.output


def test_no_tests_exits_1(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY})
    result = runner.invoke(app, ["test", str(root)])
    assert result.exit_code == 1
    assert "no tests found" in result.output


def test_eval_a_document_with_input(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo.rego": POLICY})
    (tmp_path / "input.json").write_text('{"user": "alice"}')
    result = runner.invoke(
        app, ["eval", "data.demo.allow", "-d", str(root), "-i", str(tmp_path / "input.json")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "result": [{"expressions": [{"value": True, "text": "data.demo.allow"}]}]
    }
    pretty = runner.invoke(app, ["eval", "data.demo.nothing", "-d", str(root), "-f", "pretty"])
    assert pretty.stdout.strip() == "undefined"


def test_eval_bad_input_file_exits_1(tmp_path: Path) -> None:
    (tmp_path / "input.json").write_text("{not json")
    result = runner.invoke(app, ["eval", "data.x", "-i", str(tmp_path / "input.json")])
    assert result.exit_code == 1
    assert "input" in result.output


def test_check(tmp_path: Path) -> None:
    good = _write(tmp_path / "good", {"demo.rego": POLICY})
    assert runner.invoke(app, ["check", str(good)]).exit_code == 0
    bad = _write(tmp_path / "bad", {"demo.rego": "package demo\nallow if nope(1)\n"})
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    assert "demo.rego:2:" in result.output and "nope" in result.output


def test_bundle_build_writes_an_opa_bundle(tmp_path: Path) -> None:
    root = _write(tmp_path / "p", {"demo.rego": POLICY, "demo_test.rego": PASSING})
    (root / "cfg").mkdir()
    (root / "cfg" / "data.json").write_text('{"k": 1}')
    out = tmp_path / "bundle.tar.gz"
    result = runner.invoke(app, ["bundle", "build", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    files = read_bundle(out.read_bytes())
    assert set(files) == {".manifest", "data.json", "demo.rego"}
    manifest = json.loads(files[".manifest"])
    assert manifest["roots"] == ["cfg", "demo"]
    assert manifest["revision"] in result.output
    assert json.loads(files["data.json"]) == {"cfg": {"k": 1}}


def test_eval_refuses_a_query_that_is_not_a_reference() -> None:
    result = runner.invoke(app, ["eval", "x == 1"])
    assert result.exit_code == 1
    assert "document reference" in result.output


def test_todo_tests_are_skipped_and_errors_count_as_failures(tmp_path: Path) -> None:
    tests = (
        "package demo_test\n\nimport data.demo\n\n"
        'todo_test_later if demo.allow with input as {"user": "x"}\n\n'
        'test_conflict if demo.v with input as {"a": 1, "b": 2}\n'
    )
    policy = POLICY + "\nv := input.a\n\nv := input.b\n"
    root = _write(tmp_path, {"demo.rego": policy, "demo_test.rego": tests})
    result = runner.invoke(app, ["test", str(root), "--format", "json"])
    assert result.exit_code == 2
    items = {i["name"]: i for i in json.loads(result.stdout)}
    assert items["todo_test_later"]["skip"] is True
    assert "conflict" in items["test_conflict"]["error"]["message"]
    pretty = runner.invoke(app, ["test", str(root)])
    assert "data.demo_test.test_conflict: ERROR" in pretty.output
    assert "ERROR: 1/2" in pretty.output and "SKIPPED: 1/2" in pretty.output
