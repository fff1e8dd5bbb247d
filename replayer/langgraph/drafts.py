"""What ``put``, ``put_writes``, ``delete_thread``, ``prune`` and ``copy_thread`` append: the events as drafts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from journal.events import Draft, Event
from replayer.langgraph.format import (
    FORMAT,
    REGISTRY,
    STALE_EPOCH,
    CheckpointConfigError,
    configurable_of,
    decode_value,
    encode_value,
    pack_data,
)
from replayer.langgraph.index import ThreadIndex, is_delta
from replayer.langgraph_fold import CHECKPOINT, DELETED, PRUNED, THREAD, WRITES


def checkpoint_draft(serde: SerializerProtocol, index: ThreadIndex, jthread: str, config: RunnableConfig,
                     checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions,
                     ahead: int = 0) -> tuple[Draft, RunnableConfig]:
    """The checkpoint event of a put; ``ahead``: how many events of the thread the same append writes before it."""
    conf = configurable_of(config)
    ns: str = conf.get("checkpoint_ns", "") or ""
    thread_id = str(conf["thread_id"])
    parent = conf.get("checkpoint_id")
    c: dict[str, Any] = dict(checkpoint)
    values: dict[str, Any] = c.pop("channel_values", None) or {}
    full_metadata = get_checkpoint_metadata(config, metadata)
    late = parent is not None and parent in index.dead
    payload = {
        "v": FORMAT, "epoch": STALE_EPOCH if late else index.epoch, "thread_id": thread_id, "ns": ns,
        "id": checkpoint["id"], "parent": parent,
        # Plain copies for people reading the journal (audit timeline, replay); the saver reads the
        # serialized forms only.
        "step": full_metadata.get("step"), "source": full_metadata.get("source"),
        "checkpoint": encode_value(serde.dumps_typed(c)),
        "metadata": encode_value(serde.dumps_typed(full_metadata)),
        # A late put stores its values whole: its deltas would name versions of a deleted past.
        "blobs": (ThreadIndex() if late else index).encode_blobs(serde, ns, values, new_versions),
    }
    # Appended only if the thread's head is still the one the index folded (plus the writes carried in the same
    # append): a put never lands on top of something it has not seen (a tombstone, another writer's checkpoint);
    # on a conflict it reads and retries.
    draft = Draft(thread=jthread, type=CHECKPOINT, payload=pack_data(CHECKPOINT, payload), node=_node(full_metadata),
                  expected_seq=index.seq + ahead)
    return draft, {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}


def _node(metadata: CheckpointMetadata) -> str | None:
    source = metadata.get("source")
    return f"langgraph:{source}" if isinstance(source, str) else None


def writes_draft(serde: SerializerProtocol, jthread: str, index: ThreadIndex, config: RunnableConfig,
                 writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> Draft:
    conf = configurable_of(config)
    checkpoint_id = conf.get("checkpoint_id")
    if not checkpoint_id:
        raise CheckpointConfigError("put_writes needs config['configurable']['checkpoint_id']")
    payload = {
        "v": FORMAT, "epoch": STALE_EPOCH if checkpoint_id in index.dead else index.epoch,
        "thread_id": str(conf["thread_id"]), "ns": conf.get("checkpoint_ns", "") or "",
        "checkpoint_id": checkpoint_id, "task_id": task_id, "task_path": task_path,
        "channels": sorted({channel for channel, _ in writes}),  # plain, for people reading the journal
        "writes": [[WRITES_IDX_MAP.get(channel, idx), channel, encode_value(serde.dumps_typed(value))]
                   for idx, (channel, value) in enumerate(writes)],
    }
    return Draft(thread=jthread, type=WRITES, payload=pack_data(WRITES, payload), node=_task_node(task_path))


def knows_checkpoint(index: ThreadIndex, checkpoint_id: Any) -> bool:
    """Whether the checkpoint is in the thread's index (put or read by this process, or deleted)."""
    return checkpoint_id in index.dead or any(checkpoint_id in ids for ids in index.checkpoints.values())


def _task_node(task_path: str) -> str | None:
    """The graph node whose task wrote, for the journal's ``node`` column ("~__pregel_pull, tools" → "tools")."""
    kind, _, name = task_path.partition(", ")
    return name[:256] if kind == "~__pregel_pull" and name else None


def deleted_draft(jthread: str, thread_id: str) -> Draft:
    return Draft(thread=jthread, type=DELETED, payload={"v": FORMAT, "thread_id": thread_id})


def unregistered(index: ThreadIndex) -> bool:
    """Whether a put is the thread's first checkpoint, so it registers the thread for ``list(None)``.

    Not "the thread's first event": a task's writes may land before the checkpoint they follow.
    Two first puts racing both register, which is harmless (the registry is read as a set).
    """
    return not index.checkpoints and index.epoch == 0 and not index.dead


def registration_draft(jthread: str, thread_id: str) -> Draft:
    return Draft(thread=REGISTRY, type=THREAD, payload={"v": FORMAT, "thread_id": thread_id, "thread": jthread})


def read_registry(events: Sequence[Event], known: dict[str, str]) -> None:
    """Fold registry events into ``known`` (journal thread → LangGraph thread id), first registration first."""
    for ev in events:
        p = ev.payload
        if ev.type == THREAD and isinstance(p, dict) and isinstance(p.get("thread"), str):
            known.setdefault(p["thread"], str(p.get("thread_id")))


def prune_draft(index: ThreadIndex, jthread: str, thread_id: str, keep_last: int, older_than_ms: int | None,
                now_ms: int, reason: str) -> Draft | None:
    """The retention record dropping what ``keep_last``/``older_than_ms`` let go, or None if nothing goes.

    Kept whatever the rule says: the newest ``keep_last`` checkpoints of each namespace, and every
    checkpoint where a run stopped with work pending (pending writes and no child checkpoint: an
    ``interrupt`` waiting for its human, a task that failed or a run that was killed), since a
    resume starts from it and its writes.
    """
    children = {(ns, s.parent) for ns, space in index.checkpoints.items() for s in space.values() if s.parent}
    drop: list[list[str]] = []
    for ns, space in index.checkpoints.items():
        for i, cid in enumerate(sorted(space, reverse=True)):
            if i < keep_last:
                continue
            if older_than_ms is not None and space[cid].ts_ms > now_ms - older_than_ms:
                continue
            if index.writes.get((ns, cid)) and (ns, cid) not in children:
                continue
            drop.append([ns, cid])
    if not drop:
        return None
    return Draft(thread=jthread, type=PRUNED, payload={
        "v": FORMAT, "epoch": index.epoch, "thread_id": thread_id, "reason": reason, "drop": drop})


def copy_drafts(serde: SerializerProtocol, source: ThreadIndex, target: ThreadIndex, jthread: str,
                thread_id: str) -> list[Draft]:
    """Every checkpoint of ``source`` (oldest first per namespace) and its writes, as events of ``jthread``.

    Each checkpoint carries the channel versions it needs that the copy has not written yet: a
    delta as stored when its base was copied before it, else the value whole (a pruned checkpoint's
    delta base is not copied, so no copied delta points at it).
    """
    drafts: list[Draft] = []
    for ns in sorted(source.checkpoints):
        written: set[tuple[str, Any]] = set()
        for cid in sorted(source.checkpoints[ns]):
            stored = source.checkpoints[ns][cid]
            checkpoint = serde.loads_typed(decode_value(stored.checkpoint))
            metadata = serde.loads_typed(decode_value(stored.metadata))
            blobs: dict[str, dict[str, Any]] = {}
            for channel, version in checkpoint["channel_versions"].items():
                key = (ns, channel, version)
                if (channel, version) in written or key not in source.blobs:
                    continue
                blob = source.blobs[key]
                if is_delta(blob) and (channel, blob["base"]) in written:
                    blobs[channel] = {"version": version, **blob}
                elif is_delta(blob):
                    _, value = source.value(serde, ns, channel, version)
                    blobs[channel] = {"version": version, "value": encode_value(serde.dumps_typed(value))}
                else:
                    blobs[channel] = {"version": version, "value": blob}
                written.add((channel, version))
            drafts.append(Draft(thread=jthread, type=CHECKPOINT, node=_node(metadata), payload=pack_data(CHECKPOINT, {
                "v": FORMAT, "epoch": target.epoch, "thread_id": thread_id, "ns": ns, "id": cid,
                "parent": stored.parent, "step": metadata.get("step"), "source": metadata.get("source"),
                "checkpoint": stored.checkpoint, "metadata": stored.metadata, "blobs": blobs})))
            by_task: dict[tuple[str, str], list[list[Any]]] = {}
            for task_id, channel, value, task_path, idx in source.ordered_writes(ns, cid):
                by_task.setdefault((task_id, task_path), []).append([idx, channel, value])
            for (task_id, task_path), writes in by_task.items():
                drafts.append(Draft(thread=jthread, type=WRITES, node=_task_node(task_path), payload=pack_data(WRITES, {
                    "v": FORMAT, "epoch": target.epoch, "thread_id": thread_id, "ns": ns, "checkpoint_id": cid,
                    "task_id": task_id, "task_path": task_path, "channels": sorted({w[1] for w in writes}),
                    "writes": writes})))
    return drafts


def checkpoints_of_runs(serde: SerializerProtocol, index: ThreadIndex, run_ids: set[str]) -> list[list[str]]:
    """``[ns, checkpoint id]`` of every checkpoint whose metadata names one of ``run_ids``."""
    return [[ns, cid] for ns, space in index.checkpoints.items() for cid, stored in space.items()
            if str(serde.loads_typed(decode_value(stored.metadata)).get("run_id")) in run_ids]
