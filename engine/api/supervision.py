"""Routes for supervisors: overdue and due-soon deadlines, campaign statistics."""

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from sangkien.api.context import ApiContext
from sangkien.api.schemas import CampaignStats, DeadlineOut, InstanceOut
from sangkien.model import Actor, Instance

__all__ = ["supervision_router"]


def supervision_router(ctx: ApiContext) -> APIRouter:
    """The deadline lists and campaign statistics of one API."""
    router = ctx.router("/v1")
    engine = ctx.engine
    actor_dep = Depends(ctx.actor)

    @router.get(
        "/deadlines/overdue",
        response_model=list[DeadlineOut],
        tags=["deadlines"],
        summary="Overdue deadlines",
    )
    def overdue(
        actor: Annotated[Actor, actor_dep],
        unit: Annotated[str | None, Query(max_length=128)] = None,
        workflow: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> list[DeadlineOut]:
        """Deadlines already past due in the caller's units, most late first."""
        items = engine.overdue(unit=unit, workflow=workflow, actor=actor, limit=limit)
        return [DeadlineOut.of(d) for d in items]

    @router.get(
        "/deadlines/due-soon",
        response_model=list[DeadlineOut],
        tags=["deadlines"],
        summary="Deadlines falling due soon",
    )
    def due_soon(
        actor: Annotated[Actor, actor_dep],
        within: Annotated[
            str, Query(min_length=1, max_length=64, description="A period: '5 working days'.")
        ] = "5 working days",
        unit: Annotated[str | None, Query(max_length=128)] = None,
        workflow: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> list[DeadlineOut]:
        """Deadlines not yet due that fall due within the period, soonest first."""
        items = engine.due_soon(within, unit=unit, workflow=workflow, actor=actor, limit=limit)
        return [DeadlineOut.of(d) for d in items]

    @router.get(
        "/campaigns/{campaign_id}/stats",
        response_model=CampaignStats,
        tags=["campaigns"],
        summary="Campaign statistics",
    )
    def campaign_stats(
        campaign_id: Annotated[str, Path(min_length=1, max_length=64)],
        actor: Annotated[Actor, actor_dep],
        recognized_state: Annotated[
            str, Query(min_length=1, max_length=64, description="State counted as recognized.")
        ] = "recognized",
    ) -> CampaignStats:
        """Child instances of a campaign the caller can see, by state and by unit."""
        campaign = engine.get(campaign_id, actor=actor)
        children: list[Instance] = []
        after: str | None = None
        while True:
            page = engine.list(parent=campaign_id, actor=actor, after=after, limit=1000)
            children.extend(page)
            if len(page) < 1000:
                break
            after = page[-1].id
        by_state = Counter(c.state for c in children)
        by_unit: dict[str, Counter[str]] = {}
        for c in children:
            by_unit.setdefault(c.unit, Counter())[c.state] += 1
        return CampaignStats(
            campaign=InstanceOut.of(campaign),
            total=len(children),
            by_state=dict(sorted(by_state.items())),
            by_unit={u: dict(sorted(s.items())) for u, s in sorted(by_unit.items())},
            recognized=[InstanceOut.of(c) for c in children if c.state == recognized_state],
        )

    return router
