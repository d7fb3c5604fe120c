"""PostgreSQL helpers shared by the fault tests: find a process's connections and kill them."""

from __future__ import annotations

import sqlalchemy as sa


def with_app(url: str, app: str) -> str:
    """*url* with an application_name, so the test can find (and kill) its connections."""
    return (
        sa.engine.make_url(url)
        .update_query_dict({"application_name": app})
        .render_as_string(hide_password=False)
    )


def terminate(url: str, app: str) -> int:
    """``pg_terminate_backend`` every connection named *app* (a server restart, as its
    clients see it); return how many there were."""
    admin = sa.create_engine(url)
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = :app"
                    ),
                    {"app": app},
                ).all()
            )
    finally:
        admin.dispose()
