"""The package ladder has no back-edges, and every public name of every package imports.

``journal`` (events, codec, keys, the fold, the clients) ← ``projections`` (Redis → PostgreSQL)
← ``replayer`` (state, proofs, audits). A module imports only its own package and the packages
below it, at module level or inside a function alike.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LADDER = ("journal", "projections", "replayer")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``path``, wherever it sits in the module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", LADDER)
def test_no_module_imports_up_the_ladder(package: str) -> None:
    """No module of a package imports a package above it on the ladder."""
    above = set(LADDER[LADDER.index(package) + 1:])
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for path in _modules(package) for line, target in _imports(path) if target in above]
    assert not upward, "imports up the ladder:\n" + "\n".join(upward)


#: ``replayer.langgraph``'s own ladder, lowest first: each module imports only those before it.
LANGGRAPH_LADDER = ("format", "index", "drafts", "savers")


def test_langgraph_modules_import_only_those_below() -> None:
    """format ← index ← drafts ← savers: no module of the savers' package imports one after it."""
    upward = []
    for i, name in enumerate(LANGGRAPH_LADDER):
        path = ROOT / "replayer" / "langgraph" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("replayer.langgraph."):
                target = node.module.rsplit(".", 1)[1]  # type: ignore[union-attr]
                if target not in LANGGRAPH_LADDER[:i]:
                    upward.append(f"replayer/langgraph/{name}.py:{node.lineno} imports {target}")
    assert not upward, "imports up replayer.langgraph's ladder:\n" + "\n".join(upward)


def test_entry_points_are_only_plugin_boundaries() -> None:
    """The library finds none of its own layers through entry points: only CLI commands and demo stages."""
    import tomllib

    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {})
    assert set(groups) <= {"agent_journal.commands", "agent_journal.demo", "agent_journal.status",
                           "agent_journal.reducers"}


@pytest.mark.parametrize("package", LADDER)
def test_every_public_name_imports(package: str) -> None:
    """Each name in a package's ``__all__`` is an attribute of the imported package."""
    module = importlib.import_module(package)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert not missing


def test_importing_the_client_starts_nothing_and_imports_no_server_code() -> None:
    """``import journal`` loads neither the embedded process manager nor boto3 nor psutil."""
    import subprocess
    import sys

    code = ("import sys, journal; bad = [m for m in ('journal.embedded', 'boto3', 'psutil', 'projections', "
            "'replayer') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_library_logs_go_to_stderr_unless_the_application_configured_structlog() -> None:
    """structlog unconfigured prints to stdout, into a program's own output (a warning broke the JSON that
    scripts/langgraph_example.py prints on a Redis without AOF): the library's loggers print to stderr then,
    and follow the application's configuration once it has one."""
    import subprocess
    import sys

    code = ("import sys, structlog\n"
            "from journal import client\n"
            "client.log.warning('library_warning', detail=1)\n"
            "if len(sys.argv) > 1:\n"
            "    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
            "    client.log.warning('after_configure')\n")
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert plain.stdout == "" and "library_warning" in plain.stderr
    configured = subprocess.run([sys.executable, "-c", code, "configure"], capture_output=True, text=True, check=True)
    assert "after_configure" in configured.stdout and "after_configure" not in configured.stderr
