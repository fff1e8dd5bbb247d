"""The audit console: ``agent-journal serve``, a read-only web view where an auditor walks a run step by step.

    from replayer.console import create_app
    app = create_app(settings)          # an ASGI app; uvicorn serves it, Starlette's TestClient drives it

Sign-in is a tenant reader's PostgreSQL login (everything is then read as that login, through
row-level security) or an operator credential (the token ``serve`` prints, or the admin
database user) that picks a tenant. Needs ``starlette``, ``jinja2``, ``itsdangerous``,
``python-multipart`` and ``uvicorn`` (dependencies of agent-journal).
"""

from replayer.console.app import create_app
from replayer.console.auth import Session, Sessions, SignInFailed

__all__ = ["Session", "Sessions", "SignInFailed", "create_app"]
