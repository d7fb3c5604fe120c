"""``sangkien demo``: one campaign and three initiatives through their lifecycle.

Runs on a temporary SQLite database with a moving clock, against the shipped workflows,
and prints every state each instance passes through, in order.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from sangkien.clock import FrozenClock
from sangkien.config import shipped_workflows_dir
from sangkien.directory import load_directory
from sangkien.errors import TransitionNotAllowed
from sangkien.model import Actor, Instance
from sangkien.runtime import Engine
from sangkien.templates import TemplateStore, shipped_templates_dir

__all__ = ["run_demo"]

COMMUNE = "xa-nghia-hanh"

OFFICER = Actor("le.thi.hoa", ["emulation_officer"], COMMUNE)
CHAIR = Actor("pham.van.duc", ["committee_chair", "unit_head"], COMMUNE)
SECRETARY = Actor("tran.thi.mai", ["council_secretary"], COMMUNE)
COUNCIL_CHAIR = Actor("vo.minh.tuan", ["council_chair"], COMMUNE)
AUTHOR_A = Actor("nguyen.van.an", ["civil_servant"], COMMUNE)
AUTHOR_B = Actor("dang.thi.binh", ["civil_servant"], COMMUNE)
AUTHOR_C = Actor("huynh.van.cuong", ["civil_servant"], COMMUNE)


def _application(name: str, title: str) -> dict[str, Any]:
    return {
        "kind": "operational",
        "field": "Cải cách hành chính",
        "description": f"{title}: quy trình, điều kiện và kết quả cải tiến.",
        "benefits": "Rút ngắn thời gian giải quyết hồ sơ cho người dân.",
        "scope": "commune",
        "authors": [name],
        "contribution_shares": [100],
    }


class _Demo:
    def __init__(self, engine: Engine, clock: FrozenClock, lang: str, echo: Callable[[str], None]):
        self.engine = engine
        self.clock = clock
        self.lang = lang
        self.echo = echo
        self.paths: dict[str, list[str]] = {}
        self.names: dict[str, str] = {}

    def label(self, inst: Instance, state: str) -> str:
        d = self.engine.definition(inst.workflow, inst.workflow_version)
        return f"{state} ({d.label(state, self.lang)})"

    def start(self, name: str, workflow: str, actor: Actor, **kwargs: Any) -> Instance:
        inst = self.engine.start(workflow, actor=actor, **kwargs)
        self.names[inst.id] = name
        self.paths[inst.id] = [inst.state]
        self.echo(
            f"{self.clock.now():%Y-%m-%d}  {name:<14} start{'':<17} -> "
            f"{self.label(inst, inst.state)}   by {actor.id}"
        )
        return inst

    def fire(
        self,
        inst: Instance,
        trigger: str,
        actor: Actor,
        data: Mapping[str, Any] | None = None,
        comment: str | None = None,
    ) -> Instance:
        before = self.engine.get(inst.id)
        after = self.engine.fire(inst.id, trigger, actor=actor, data=data, comment=comment)
        moved = after.state != before.state
        if moved:
            self.paths[inst.id].append(after.state)
        arrow = f"-> {self.label(after, after.state)}" if moved else "   (recorded, state kept)"
        self.echo(
            f"{self.clock.now():%Y-%m-%d}  {self.names[inst.id]:<14} {trigger:<22} "
            f"{arrow}   by {actor.id}"
        )
        return after

    def refused(
        self, inst: Instance, trigger: str, actor: Actor, data: Mapping[str, Any] | None = None
    ) -> None:
        try:
            self.engine.fire(inst.id, trigger, actor=actor, data=data)
        except TransitionNotAllowed as exc:
            self.echo(
                f"{self.clock.now():%Y-%m-%d}  {self.names[inst.id]:<14} {trigger:<22} "
                f"REFUSED for {actor.id}: {'; '.join(exc.reasons)}"
            )
        else:  # pragma: no cover - the shipped workflows forbid it
            raise AssertionError(f"{trigger} by {actor.id} should have been refused")

    def advance(self, days: int) -> None:
        self.clock.advance(timedelta(days=days))


def run_demo(
    *, lang: str = "vi", keep: str | None = None, echo: Callable[[str], None] = print
) -> dict[str, list[str]]:
    """Run the demo; return each instance's name and the states it passed through."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )  # the story is printed; per-transition log lines would drown it
    with tempfile.TemporaryDirectory(prefix="sangkien-demo-") as tmp:
        path = Path(keep) if keep else Path(tmp) / "demo.db"
        if keep and path.exists():
            path.unlink()
        clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
        workflows = sorted(shipped_workflows_dir().glob("*.yaml"))
        directory = load_directory()
        templates = TemplateStore([shipped_templates_dir()])
        engine = Engine(
            f"sqlite:///{path}",
            workflows=workflows,
            clock=clock,
            units=directory,
            lang=lang,
            directory=directory,
            templates=templates,
            channels=["log"],
        )
        try:
            result = _story(_Demo(engine, clock, lang, echo))
            breaks = engine.verify()
            echo("")
            echo("States passed through, in order:")
            for name, states in result.items():
                echo(f"  {name:<14} {' -> '.join(states)}")
            echo("")
            echo(
                f"History hash chains: {'intact' if not breaks else f'{len(breaks)} broken'}"
                f" ({sum(len(v) for v in result.values())} states recorded)"
            )
            from sangkien.outbox import counts

            queued = counts(engine)
            echo(
                "Messages written to the outbox: "
                + (", ".join(f"{n} {status}" for status, n in sorted(queued.items())) or "none")
                + " (delivered by `sangkien worker`)"
            )
            if keep:
                echo(f"Database kept at {path}")
        finally:
            engine.close()
    return result


def _story(demo: _Demo) -> dict[str, list[str]]:
    echo = demo.echo
    echo("sangkien demo: a commune People's Committee campaign on administrative reform")
    echo("")
    campaign = demo.start(
        "campaign",
        "campaign",
        OFFICER,
        unit=COMMUNE,
        data={
            "title": "Phong trào thi đua đăng ký sáng kiến về cải cách hành chính năm 2026",
            "topic": "Cải cách hành chính",
            "registration_deadline": "2026-04-30",
            "submission_deadline": "2026-09-30",
        },
    )
    campaign = demo.fire(
        campaign, "launch", CHAIR, {"decision_number": "15/KH-UBND", "launched_on": "2026-03-02"}
    )
    demo.advance(3)

    a = demo.start(
        "initiative A",
        "initiative",
        AUTHOR_A,
        parent=campaign.id,
        data={"title": "Tiếp nhận hồ sơ một cửa qua Zalo"},
    )
    b = demo.start(
        "initiative B",
        "initiative",
        AUTHOR_B,
        parent=campaign.id,
        data={"title": "Số hóa sổ hộ tịch"},
    )
    c = demo.start(
        "initiative C",
        "initiative",
        AUTHOR_C,
        parent=campaign.id,
        data={"title": "Phiếu hẹn điện tử"},
    )
    for inst, author in ((a, AUTHOR_A), (b, AUTHOR_B), (c, AUTHOR_C)):
        demo.fire(
            inst,
            "register",
            author,
            {"authors": [demo.names[inst.id]], "plan": "Áp dụng thử tại bộ phận một cửa"},
        )
    demo.advance(10)
    demo.fire(c, "withdraw", AUTHOR_C, comment="Chuyển công tác")

    for inst, author, first in ((a, AUTHOR_A, "2026-03-16"), (b, AUTHOR_B, "2026-03-20")):
        demo.fire(inst, "apply", author, {"first_applied_on": first})
    demo.advance(60)
    campaign = demo.fire(campaign, "close_registration", OFFICER)
    for inst, author, name in ((a, AUTHOR_A, "Nguyễn Văn An"), (b, AUTHOR_B, "Đặng Thị Bình")):
        demo.fire(inst, "update", author, _application(name, demo.names[inst.id]))
        demo.fire(inst, "submit", author)
        demo.fire(
            inst,
            "issue_receipt",
            SECRETARY,
            {"receipt_number": f"BN-{inst.id[:4]}", "answer_due_on": "2026-06-15"},
        )

    demo.advance(7)
    demo.fire(b, "request_amendment", SECRETARY, comment="Bổ sung số liệu hiệu quả áp dụng")
    demo.advance(10)
    demo.fire(b, "update", AUTHOR_B, {"benefits": "Giảm 40% thời gian tra cứu hộ tịch."})
    demo.fire(b, "resubmit", AUTHOR_B)
    demo.fire(a, "accept", SECRETARY)
    demo.fire(b, "accept", SECRETARY)

    demo.advance(30)
    demo.refused(
        a,
        "evaluate",
        Actor(AUTHOR_A.id, ["council_chair"], COMMUNE),
        {"score": 99, "votes_for": 5, "votes_total": 5, "scope": "commune"},
    )
    demo.fire(
        a,
        "evaluate",
        COUNCIL_CHAIR,
        {
            "score": 82,
            "votes_for": 5,
            "votes_total": 6,
            "scope": "commune",
            "council_meeting_on": "2026-07-10",
        },
    )
    demo.fire(
        b,
        "evaluate",
        COUNCIL_CHAIR,
        {
            "score": 45,
            "votes_for": 2,
            "votes_total": 6,
            "scope": "commune",
            "council_meeting_on": "2026-07-10",
        },
    )
    demo.advance(5)
    demo.refused(
        b, "recognize", CHAIR, {"decision_number": "88/QĐ-UBND", "certificate_number": "GCN-02"}
    )
    demo.fire(
        a, "recognize", CHAIR, {"decision_number": "88/QĐ-UBND", "certificate_number": "GCN-01"}
    )
    demo.fire(b, "not_recognize", CHAIR, comment="Điểm đánh giá dưới mức đạt của phong trào")

    demo.advance(90)
    campaign = demo.fire(campaign, "start_evaluation", OFFICER)
    demo.fire(
        campaign,
        "conclude",
        CHAIR,
        {
            "conclusion_number": "120/TB-UBND",
            "summary": "1 sáng kiến được công nhận, 1 không được công nhận, 1 rút.",
        },
    )
    return {demo.names[i]: states for i, states in demo.paths.items()}
