"""The PostgreSQL fixture really isolates tests in their own schema."""

import sqlalchemy as sa


def test_pg_schema_is_fresh_and_private(pg_url: str) -> None:
    """Each PostgreSQL test gets an empty schema of its own on the search path."""
    eng = sa.create_engine(pg_url)
    with eng.begin() as conn:
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
        tables = conn.exec_driver_sql(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).scalar()
    eng.dispose()
    assert schema is not None and schema.startswith("t_")
    assert tables == 0
