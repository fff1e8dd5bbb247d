"""One place for SQL per package: no statement is written inline anywhere else.

SQLAlchemy Core tables (``projections/tables.py``) are the schema. Every statement is either built
from them (``tables.compiled(...)``: no SQL text in the source at all) or is a named constant in
the one module of its package that holds them:

* ``journal/durable.py``: the client's reads of the durable tier, which ``projections`` and
  ``replayer`` reuse where the statement is the same, and the embedded server's database bootstrap;
* ``projections/statements.py``: the projector's hand-written statements (the binary ``COPY``, the
  pipelined ``unnest()`` batch statements, ``SET LOCAL``; role DDL as ``psycopg.sql`` templates);
* ``projections/tables.py``: the schema itself (its ``CHECK`` constraint and server defaults are SQL
  fragments, none starts with a verb today, but it is where they would belong);
* ``replayer/sources.py``: the replayer's PostgreSQL boundary (audit's tool-usage queries included).

The walk flags a string literal (f-strings by their leading text) whose first word is an SQL verb:
in upper case, as the code writes SQL (``"SELECT"``, ``"ALTER"`` as a fragment, ``f"SET ROLE {x}"``),
or in any case when a statement's shape follows (``select … from``, ``insert into``, ``set local``…).
Docstrings are prose and are skipped; migrations own their DDL and are not walked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("journal", "projections", "replayer")
ALLOWED = {"journal/durable.py", "projections/statements.py", "projections/tables.py", "replayer/sources.py"}

_VERBS = ("SELECT|INSERT|UPDATE|DELETE|COPY|WITH|SET|RESET|CREATE|ALTER|DROP|GRANT|REVOKE|LOCK|EXPLAIN|"
          "TRUNCATE|COMMIT")
#: An upper-case verb as the first word (alone, or followed by anything but more letters).
_UPPER = re.compile(rf"\s*(?:{_VERBS})(?![A-Za-z_])")
#: Any case, when what follows the verb has a statement's shape.
_SHAPED = re.compile(
    r"\s*(?:select\s.*\bfrom\b|select\s+(?:\d|\*|count\(|exists\b|set_config\(|pg_)|insert\s+into\b|"
    r"update\s+[\w.]+\s+(?:\w+\s+)?set\b|delete\s+from\b|copy\s+[\w.]+\s.*\b(?:from|to)\s+(?:stdin|stdout)\b|"
    r"with\s+\w+\s+as\s*\(|set\s+(?:local|session|role)\b|reset\s+role\b|"
    r"(?:create|alter|drop)\s+(?:temp|temporary|table|role|index|database|schema|unique|policy|function)\b|"
    r"grant\s+\S+\s+(?:to|on)\b|revoke\s+\S+\s+(?:from|on)\b|lock\s+table\b|explain\s+\w)",
    re.IGNORECASE | re.DOTALL)


def looks_like_sql(text: str) -> bool:
    return bool(_UPPER.match(text) or _SHAPED.match(text))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def inline_sql(source: str, name: str) -> list[str]:
    """``line: text`` of every SQL-looking literal in ``source``."""
    tree = ast.parse(source, name)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
            skip.update(id(v) for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if looks_like_sql(text):
            found.append(f"{node.lineno}: {text.strip()[:60]!r}")
    return found


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if "migrations" not in p.parts]


def test_statements_live_only_in_their_packages_statement_modules() -> None:
    misplaced = [f"{path.relative_to(ROOT)}:{hit}" for path in _modules()
                 if path.relative_to(ROOT).as_posix() not in ALLOWED
                 for hit in inline_sql(path.read_text(), str(path))]
    assert not misplaced, "SQL written outside its package's statement module:\n" + "\n".join(misplaced)


def test_the_walk_sees_statements_and_not_prose() -> None:
    """The detector itself: statements in any case and as f-strings are found, docstrings and words are not."""
    hits = inline_sql('"""Create the bucket; delete every trace."""\n'
                      'a = "SELECT 1"\nb = f"SET ROLE {a}"\nc = "insert into journal.x values (1)"\n'
                      'd = "ALTER"\ne = "  update journal.threads t set x = 1"\n'
                      'f = "create"\ng = "delete every trace of a tenant"\nh = "set"\n'
                      'i = "Set aside those tenants"\nj = "with no thread left"\n', "example")
    assert [h.split(":")[0] for h in hits] == ["2", "3", "4", "5", "6"]
