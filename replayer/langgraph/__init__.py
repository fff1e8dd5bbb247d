"""LangGraph checkpointers on the journal: every checkpoint and every batch of pending writes is an event.

``JournalSaver`` (on ``JournalClient``) and ``AsyncJournalSaver`` (on ``AsyncJournalClient``) implement
LangGraph's ``BaseCheckpointSaver``. One LangGraph ``thread_id`` is one journal thread of the tenant
named by ``config["configurable"]["tenant_id"]`` (or the saver's default); subgraph namespaces
(``checkpoint_ns``) share their root thread's journal thread, as LangGraph shares the ``thread_id``.

Event types (custom, so the journal stores them verbatim and the fold keeps them in ``opaque``):

- ``x.langgraph.checkpoint``: one ``put``. The checkpoint without its values, its metadata, its
  parent id, and the values of the channels in ``new_versions`` only: a channel that did not change
  keeps pointing at the value stored by an earlier checkpoint (by ``(ns, channel, version)``). A
  list channel whose new value extends the previous stored version of that channel (the
  ``messages`` list) is stored as a delta: ``{"version", "base": previous version, "n": its length,
  "tail": the new items}``; a dict channel of which at most half the keys changed as
  ``{"version", "base", "set": the changed keys' values, "del": the removed keys}``; rebuilt on
  read. Anything else (and a dict every ``MAX_DELTA_DEPTH + 1``-th version, so a read applies a
  bounded chain of patches) is stored whole. A list is never stored whole again while it only
  grows: a read joins the stored items of its whole value and of every tail into one msgpack array
  and decodes that once (:func:`_join_lists`), which costs what decoding the list whole would.
- ``x.langgraph.writes``: one ``put_writes`` (a task's writes against one checkpoint), appended in the
  same append as the thread's next checkpoint when that comes within ``WRITES_LINGER``, else alone.
- ``x.langgraph.deleted``: ``delete_thread``'s tombstone. The journal is append-only, so deletion
  is a fact in the log: a reader forgets everything before it, and every checkpoint or write event
  carries the ``epoch`` (tombstones its writer had seen), so one that raced the delete (written
  after the tombstone by a writer that had not seen it) is ignored too; and a put or write whose
  parent checkpoint a tombstone removed is written as stale (``epoch`` -1): a graph still running
  when its thread was deleted cannot bring it back.
- ``x.langgraph.pruned``: a retention record (``prune``, ``expire``): the checkpoints it names, and
  their pending writes, are gone for the saver from then on. Nothing is deleted from the log.
- ``x.langgraph.thread`` in the tenant's journal thread ``_lg.threads``: the first put of a thread
  registers it there, so ``list(None)`` can find every LangGraph thread of the tenant.

In format 3 the fields only the saver reads (a checkpoint's ``checkpoint``, ``metadata`` and ``blobs``, a
write's ``writes``) are packed together as one msgpack ``data`` field (:func:`payload_fields` unpacks
them): the projector's queryable JSONB copy of the payload keeps the fields people query (``id``,
``parent``, ``step``, ``source``, ``ns``, a write's ``channels``) and shows ``data`` as its length,
instead of a nested map of versions and ``{"$bytes": n}`` stand-ins that cost more than the values.

Values are the serializer's bytes, stored as bytes (the journal's payloads carry msgpack bin): the
bytes alone for its usual ``"msgpack"`` type, else ``{"t": type, "b": bytes}``, or ``{"t": "json",
"s": text}`` when the serializer produced JSON. (Format 2 events, which wrapped every value as
``{"t", "b"}`` and always wrote a dict delta's ``del``, and format 1 events, which base64'd values as
``{"t", "b64"}``, are still read.)

Reads fold the thread's events into an in-process index, kept per thread (LRU) and brought up to
date on each call by reading only the events after the last seq it folded, so a ``get_tuple`` costs
one read of what is new, from whichever tier holds it.

Import this package explicitly (``from replayer.langgraph import JournalSaver``): ``import replayer``
does not import LangGraph.

Its modules, each importing only those before it: ``format`` (event types, thread ids, stored values,
errors), ``index`` (the fold and the delta check), ``drafts`` (what each method appends), ``savers``
(the two savers, their cache, locks and outbox).
"""

from replayer.langgraph.format import (
    REGISTRY,
    CheckpointConfigError,
    CheckpointCorrupt,
    decode_value,
    encode_value,
    journal_thread,
    next_version,
    payload_fields,
)
from replayer.langgraph.index import CHECK_WINDOW, MAX_DELTA_DEPTH, ThreadIndex
from replayer.langgraph.savers import CACHE_BYTES, DURABILITY_LEVELS, WRITES_LINGER, AsyncJournalSaver, JournalSaver
from replayer.langgraph_fold import CHECKPOINT, DELETED, PRUNED, THREAD, WRITES

__all__ = [
    "CACHE_BYTES",
    "CHECKPOINT",
    "CHECK_WINDOW",
    "DELETED",
    "DURABILITY_LEVELS",
    "MAX_DELTA_DEPTH",
    "PRUNED",
    "REGISTRY",
    "THREAD",
    "WRITES",
    "WRITES_LINGER",
    "AsyncJournalSaver",
    "CheckpointConfigError",
    "CheckpointCorrupt",
    "JournalSaver",
    "ThreadIndex",
    "decode_value",
    "encode_value",
    "journal_thread",
    "next_version",
    "payload_fields",
]
