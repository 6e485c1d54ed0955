"""The browser code parses as ES modules and keeps to the page's Content-Security-Policy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "static"
TEMPLATES = ROOT / "templates"
NODE = shutil.which("node") or "/usr/bin/node"

STATIC_FILES = sorted(p for p in STATIC.rglob("*") if p.is_file())
SCRIPTS = [p for p in STATIC_FILES if p.suffix in (".js", ".mjs")]
TEMPLATE_FILES = sorted(TEMPLATES.glob("*.html"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_static_files_exist() -> None:
    assert SCRIPTS, "no JavaScript under static/"
    assert any(p.suffix == ".css" for p in STATIC_FILES), "no stylesheet under static/"


def test_node_is_available() -> None:
    # A missing node must fail the suite, not silently skip the syntax checks.
    assert Path(NODE).exists(), "node is required to check static/ (apt-get install nodejs)"


@pytest.mark.parametrize("path", SCRIPTS, ids=rel)
def test_script_parses_as_an_es_module(path: Path) -> None:
    assert Path(NODE).exists(), "node is required to check static/"
    # --input-type=module makes node parse stdin strictly as a module, whatever the
    # file's extension or the nearest package.json say.
    result = subprocess.run(
        [NODE, "--input-type=module", "--check"],
        input=path.read_bytes(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"{rel(path)}:\n{result.stderr.decode(errors='replace')}"


@pytest.mark.parametrize("path", SCRIPTS, ids=rel)
def test_script_never_parses_data_as_html(path: Path) -> None:
    source = path.read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in source, f"{rel(path)} uses {sink}; build DOM with textContent instead"
    assert not re.search(r"setAttribute\(\s*[\"'](style|on\w+)[\"']", source), (
        f"{rel(path)} sets a style or event-handler attribute, which the CSP refuses"
    )


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=rel)
def test_template_has_no_inline_script_or_style(path: Path) -> None:
    html = path.read_text()
    for tag in re.findall(r"<script\b[^>]*>", html, flags=re.I):
        assert "src=" in tag, f"{rel(path)} has an inline script: {tag}"
        assert 'type="module"' in tag, f"{rel(path)}: scripts are ES modules: {tag}"
    assert not re.search(r"<style\b", html, flags=re.I), f"{rel(path)} has a <style> block"
    assert not re.search(r"\sstyle\s*=", html, flags=re.I), f"{rel(path)} has a style attribute"
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), (
        f"{rel(path)} has an inline event handler"
    )
    assert not re.search(r"(src|href)=\"(https?:)?//", html), (
        f"{rel(path)} loads something from another origin"
    )


def test_every_referenced_static_file_exists() -> None:
    referenced = set()
    for path in TEMPLATE_FILES:
        referenced.update(re.findall(r"\"/static/([^\"?#]+)\"", path.read_text()))
    for script in SCRIPTS:
        for spec in re.findall(
            r"^import[^;]*?from\s+\"(\./[^\"]+)\"", script.read_text(), flags=re.M | re.S
        ):
            referenced.add(str((script.parent / spec).resolve().relative_to(STATIC)))
    missing = sorted(r for r in referenced if not (STATIC / r).is_file())
    assert referenced and not missing, f"missing static files: {missing}"
