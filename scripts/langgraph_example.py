"""A LangGraph agent checkpointed on the journal: stopped for a human, resumed in another process, audited.

No LLM and no network: ``stand_in_model`` answers deterministically from the conversation, as a
model would (ask for the ``issue_refund`` tool, then report its result). The graph:

    START → model ─(tool call)→ approval ─(interrupt: a human decides)→ tools → model → END
                  └(no call)→ END          └(denied)→ model

    python scripts/langgraph_example.py start  --tenant acme --thread refund-1234   # stops at the interrupt
    python scripts/langgraph_example.py resume --tenant acme --thread refund-1234 --decision approve
    python scripts/langgraph_example.py all    --tenant acme --thread refund-1234   # both, each in its own
                                                                 # process, then `agent-journal audit timeline`
                                                                 # and `agent-journal replay --at-seq`

The servers come from the ``JOURNAL_*`` environment, or the embedded ones `agent-journal up` started.
``start`` and ``resume`` need Redis only; ``all`` migrates the database (idempotent) before it audits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, interrupt

from journal.client import JournalClient
from replayer.langgraph import JournalSaver


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@tool
def issue_refund(order: int, amount: float) -> str:
    """Refund an order (a stand-in: it only answers with a refund id)."""
    return json.dumps({"refund_id": f"r-{order}", "amount": amount})


def stand_in_model(state: State) -> dict[str, list[AnyMessage]]:
    """The deterministic 'model': first ask for the refund tool, then report what the tool (or the human) said."""
    last = state["messages"][-1]
    if isinstance(last, HumanMessage):
        call = {"name": "issue_refund", "args": {"order": 1234, "amount": 150.0}, "id": "call-1"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}
    if isinstance(last, ToolMessage) and last.status == "error":
        return {"messages": [AIMessage(content=f"Refund not issued: {last.content}")]}
    return {"messages": [AIMessage(content=f"Refund issued: {last.content}")]}


def approval(state: State) -> Command[Any]:
    """A human approves each tool call: the graph stops here (interrupt) until one answers."""
    call = state["messages"][-1].tool_calls[0]  # type: ignore[union-attr]
    decision = interrupt({"question": "Issue this refund?", "tool": call["name"], "args": call["args"]})
    if decision == "approve":
        return Command(goto="tools")
    denied = ToolMessage(content=f"denied by a human ({decision})", tool_call_id=call["id"], status="error")
    return Command(goto="model", update={"messages": [denied]})


def build(saver: JournalSaver) -> Any:
    g = StateGraph(State)
    g.add_node("model", stand_in_model)
    g.add_node("approval", approval)
    g.add_node("tools", ToolNode([issue_refund]))
    g.add_edge(START, "model")
    g.add_conditional_edges("model", lambda s: "approval" if s["messages"][-1].tool_calls else END,
                            ["approval", END])
    g.add_edge("tools", "model")
    return g.compile(checkpointer=saver)


def start(tenant: str, thread: str) -> None:
    with JournalClient.from_env() as client:
        graph = build(JournalSaver(client, tenant=tenant))
        out = graph.invoke({"messages": [HumanMessage("Please refund order 1234, it arrived broken.")]},
                           {"configurable": {"thread_id": thread}})
        asked = out["__interrupt__"][0].value
        print(json.dumps({"stopped_at": "approval", "asks": asked, "head": client.head(tenant, thread)}))


def resume(tenant: str, thread: str, decision: str) -> None:
    with JournalClient.from_env() as client:
        graph = build(JournalSaver(client, tenant=tenant))
        config = {"configurable": {"thread_id": thread}}
        waiting = graph.get_state(config)
        if waiting.next != ("approval",):
            raise SystemExit(f"thread {thread} is not waiting for approval (next: {waiting.next})")
        out = graph.invoke(Command(resume=decision), config)
        print(json.dumps({"answer": out["messages"][-1].content, "messages": len(out["messages"]),
                          "head": client.head(tenant, thread)}))


def _agent_journal() -> list[str]:
    """The `agent-journal` command of this interpreter's environment (or the one on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "agent-journal")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("agent-journal")
    return [found] if found else [sys.executable, "-m", "journal.cli"]


def run_all(tenant: str, thread: str, decision: str) -> None:
    me = [sys.executable, os.path.abspath(__file__)]
    # Two processes: nothing of the first survives but what it wrote to the journal.
    stopped = json.loads(subprocess.run([*me, "start", "--tenant", tenant, "--thread", thread],
                                        check=True, capture_output=True, text=True).stdout)
    print("stopped:", json.dumps(stopped))
    done = json.loads(subprocess.run([*me, "resume", "--tenant", tenant, "--thread", thread, "--decision", decision],
                                     check=True, capture_output=True, text=True).stdout)
    print("resumed:", json.dumps(done))
    aj = _agent_journal()
    # The audit reads PostgreSQL too: its schema and roles must exist (what `agent-journal migrate` does once for a
    # new database; a projector does it as it starts). Right after `agent-journal up` in a new folder, nothing did.
    subprocess.run([*aj, "migrate"], check=True, capture_output=True, text=True)
    print(subprocess.run([*aj, "audit", "timeline", tenant, thread], check=True, capture_output=True,
                         text=True).stdout)
    at = subprocess.run([*aj, "replay", tenant, thread, "--at-seq", str(stopped["head"]), "--format", "json"],
                        check=True, capture_output=True, text=True).stdout
    state = json.loads(at)
    print(f"replay at seq {stopped['head']} (the interrupt):", json.dumps(
        {"last_seq": state["last_seq"], "status": state["status"],
         "langgraph_events": [o["type"] for o in state["opaque"]]}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("step", choices=["start", "resume", "all"])
    ap.add_argument("--tenant", default="acme")
    ap.add_argument("--thread", default="refund-1234")
    ap.add_argument("--decision", default="approve", help="the human's answer: 'approve', or anything else to deny")
    args = ap.parse_args(argv)
    if args.step == "start":
        start(args.tenant, args.thread)
    elif args.step == "resume":
        resume(args.tenant, args.thread, args.decision)
    else:
        run_all(args.tenant, args.thread, args.decision)


if __name__ == "__main__":
    main()
