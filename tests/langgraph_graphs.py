"""The small LangGraph graph several test modules run: a plan step, then a human approval at ``interrupt()``.

Import it after ``pytest.importorskip("langgraph...")``: LangGraph is an optional extra.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt


class Steps(TypedDict):
    steps: list[str]


def approval_builder() -> Any:
    """The uncompiled graph: ``plan`` adds "plan", ``approve`` asks a human and adds "approved:<answer>"."""
    def plan(state: Steps) -> dict[str, list[str]]:
        return {"steps": [*state["steps"], "plan"]}

    def approve(state: Steps) -> dict[str, list[str]]:
        decision = interrupt({"question": "go?"})
        return {"steps": [*state["steps"], f"approved:{decision}"]}

    g = StateGraph(Steps)
    g.add_node("plan", plan)
    g.add_node("approve", approve)
    g.add_edge(START, "plan")
    g.add_edge("plan", "approve")
    g.add_edge("approve", END)
    return g


def approval_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    return approval_builder().compile(checkpointer=saver)
