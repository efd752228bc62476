"""The peer's side of the conversation: a LangGraph graph with a ``messages`` state.

Needs the ``[bench]`` extra (``langgraph``, ``langgraph-checkpoint-sqlite``); imported
only by :mod:`benchmarks.workloads.peer_child` when it is there. No
``from __future__ import annotations`` here: LangGraph reads the state's annotations at
run time.
"""

import time
from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from ..common import reply_text, user_text


class State(TypedDict):
    """The conversation: messages merged by ``add_messages``."""

    messages: Annotated[list[AnyMessage], add_messages]


def model(state: State) -> dict[str, list[AnyMessage]]:
    """The model node: the same reply text the scripted model gives for this turn."""
    return {"messages": [AIMessage(content=reply_text(len(state["messages"]) // 2))]}


def converse(saver: Any, turns: int, forks: int, fork_at: int) -> dict[str, Any]:
    """``turns`` turns on one thread, then ``forks`` forks at message ``fork_at`` with one
    turn each; the seconds of both parts."""
    builder = StateGraph(State)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    graph = builder.compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "peer"}}
    fork_config: Any = None
    started = time.perf_counter()
    for turn in range(turns):
        graph.invoke({"messages": [HumanMessage(content=user_text(turn))]}, config)
        if 2 * (turn + 1) == fork_at:
            fork_config = graph.get_state(config).config
    conversation = time.perf_counter() - started
    started = time.perf_counter()
    for fork in range(forks):
        # Invoking from an earlier checkpoint forks the thread there (time travel).
        graph.invoke({"messages": [HumanMessage(content=user_text(turns + fork))]}, fork_config)
    forked = time.perf_counter() - started
    return {"conversation": conversation, "forks": forked}
