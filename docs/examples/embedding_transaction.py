"""Run a transition inside the host's own database transaction.

The host writes its own row (a dossier in its portal) and sangkien fires a trigger on the
same SQLAlchemy connection: they commit together, or roll back together when anything in
the block fails. Run it:

    python docs/examples/embedding_transaction.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sangkien import Actor, Engine
from sangkien.config import shipped_workflows_dir

OFFICER = Actor("le.thi.hoa", ["emulation_officer"], "xa-nghia-hanh")
CHAIR = Actor("pham.van.duc", ["committee_chair"], "xa-nghia-hanh")

# The host's own table, in the host's own metadata.
host_metadata = sa.MetaData()
dossiers = sa.Table(
    "portal_dossiers",
    host_metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("instance_id", sa.String(36), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
)


class SignatureServiceDown(Exception):
    """The host's own failure, after the transition, inside the same transaction."""


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sangkien-tx-") as tmp:
        host_db = sa.create_engine(f"sqlite:///{Path(tmp) / 'portal.db'}")
        # Once, at deploy time: sangkien's tables and workflows, and the host's tables.
        # (On PostgreSQL run `sangkien db upgrade` instead of migrate=True.)
        Engine(host_db, migrate=True, workflows=sorted(shipped_workflows_dir().glob("*.yaml")))
        host_metadata.create_all(host_db)

        # 1. Commit together: the instance, its history and the host's dossier.
        with host_db.begin() as conn:
            workflow = Engine(conn)  # joins the transaction; never commits by itself
            campaign = workflow.start(
                "campaign",
                actor=OFFICER,
                data={
                    "title": "Phong trào sáng kiến 2030",
                    "registration_deadline": "2030-04-30",
                    "submission_deadline": "2030-09-30",
                },
            )
            conn.execute(
                dossiers.insert().values(id="HS-001", instance_id=campaign.id, status="draft")
            )
        print("committed:", campaign.state, "| dossier HS-001 draft")

        # 2. Roll back together: the host fails after the transition.
        try:
            with host_db.begin() as conn:
                workflow = Engine(conn)
                launched = workflow.fire(
                    campaign.id,
                    "launch",
                    actor=CHAIR,
                    data={"decision_number": "15/KH-UBND", "launched_on": "2030-03-02"},
                )
                conn.execute(
                    dossiers.update().where(dossiers.c.id == "HS-001").values(status="launched")
                )
                print("inside the block:", launched.state)
                raise SignatureServiceDown("the e-signature service did not answer")
        except SignatureServiceDown as exc:
            print("rolled back:", exc)

        with host_db.connect() as conn:
            workflow = Engine(conn)
            after = workflow.get(campaign.id)
            events = workflow.history(campaign.id)
            status = conn.execute(
                sa.select(dossiers.c.status).where(dossiers.c.id == "HS-001")
            ).scalar_one()
        print("after the rollback:", after.state, "| dossier:", status, "| events:", len(events))
        assert after.state == "draft" and status == "draft" and len(events) == 1

        # 3. Retry: this time both changes commit.
        with host_db.begin() as conn:
            Engine(conn).fire(
                campaign.id,
                "launch",
                actor=CHAIR,
                data={"decision_number": "15/KH-UBND", "launched_on": "2030-03-02"},
                idempotency_key="portal-launch-HS-001",
            )
            conn.execute(
                dossiers.update().where(dossiers.c.id == "HS-001").values(status="launched")
            )
        with host_db.connect() as conn:
            state = Engine(conn).get(campaign.id).state
        print("after the retry:", state)
        assert state == "launched"
        host_db.dispose()
        return {"instance": campaign.id, "state": state}


if __name__ == "__main__":
    main()
