// The admin listener's requests (admin.rs): list the objects resident on this thread,
// evict one, reset them all, and read or change one object's storage. Each runs on the
// object's own thread, through the object's own connection when it is resident, so an
// operator never races the object's events or leaves a stale instance behind.

import { core, primordials } from "ext:core/mod.js";
import { closeLocalSocketsOf } from "ext:dorun/03_websockets.js";
import { live } from "ext:dorun/10_objects.js";

const {
  ArrayPrototypePush,
  BigIntPrototypeToString,
  DateNow,
  DatePrototypeToISOString,
  Error,
  JSONParse,
  JSONStringify,
  MapPrototypeDelete,
  MapPrototypeGet,
  ObjectPrototypeIsPrototypeOf,
  SafeSet,
  String,
} = primordials;

const {
  op_dorun_reply_value,
  op_dorun_storage_open,
  op_dorun_storage_close,
  op_dorun_storage_commit,
  op_dorun_kv_list,
  op_dorun_alarm_get,
  op_dorun_alarm_delete,
  op_dorun_admin_sql,
  op_dorun_admin_hold,
  op_dorun_admin_restore,
  op_dorun_admin_snapshot,
  op_dorun_admin_discard,
} = core.ops;

const encoder = new TextEncoder();
const EVICTED = "The Durable Object was evicted by an operator (dorun admin listener).";
const RESET = "The Durable Object was reset by an operator (dorun admin listener).";
/** The close reason of its sockets (as the full reset's, in the admin listener). */
const RESET_REASON = "dorun was reset by an operator";

function reply(id, value) {
  op_dorun_reply_value(id, encoder.encode(JSONStringify(value)));
}

/** A stored value as JSON can show it: Maps, Sets, Dates, bytes and BigInts spelled out. */
function preview(value) {
  return JSONParse(JSONStringify(value, function (key, item) {
    const raw = this[key];
    if (typeof raw === "bigint") return `${BigIntPrototypeToString(raw)}n`;
    if (raw instanceof Date) return { $date: DatePrototypeToISOString(raw) };
    if (raw instanceof Map) return { $map: [...raw.entries()] };
    if (raw instanceof Set) return { $set: [...raw.values()] };
    if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, raw)) {
      return { $bytes: [...new Uint8Array(raw)] };
    }
    if (ArrayBuffer.isView(raw)) {
      return { $bytes: [...new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength)] };
    }
    if (raw === undefined) return { $undefined: true };
    return item;
  }) ?? null);
}

function residentObjects() {
  const out = [];
  for (const object of live.values()) {
    ArrayPrototypePush(out, {
      namespace: object.namespace,
      id: object.hex,
      name: object.name ?? null,
      inFlight: object.inFlight,
      lastActive: object.lastActive,
      sockets: object.sockets.size + object.localSockets,
    });
  }
  return out;
}

async function evict(namespace, hex) {
  const object = MapPrototypeGet(live, `${namespace}:${hex}`);
  if (object === undefined) return { evicted: false };
  MapPrototypeDelete(live, object.key);
  object.broken = new Error(EVICTED);
  try {
    await object.storage.outputGate();
  } catch {
    // The commit failed; the object reset itself and closed its storage.
  }
  object.storage.close();
  return { evicted: true };
}

/** Drops every object, or those of one namespace (`namespace` not null). */
function reset(namespace) {
  const started = DateNow();
  let objects = 0;
  const broken = new Error(RESET);
  const dropped = new SafeSet();
  for (const object of [...live.values()]) {
    if (namespace !== null && object.namespace !== namespace) continue;
    dropped.add(object);
    object.broken = broken;
    const handle = object.storage.adminHandle;
    if (handle !== 0) {
      // Its files are deleted next: no checkpoint, no fsync.
      op_dorun_admin_discard(handle);
      object.storage.forget();
    }
    MapPrototypeDelete(live, object.key);
    objects++;
  }
  // A full reset closed every socket from the registry already.
  const sockets = namespace === null ? 0 : closeLocalSocketsOf(dropped, 1012, RESET_REASON);
  const droppedAt = DateNow();
  // Held here (no event runs) until the admin listener has moved the data away.
  const released = op_dorun_admin_hold(objects);
  return {
    resident: objects,
    sockets,
    released,
    dropMs: droppedAt - started,
    heldMs: DateNow() - droppedAt,
  };
}

function kvEntries(handle, request) {
  const flat = op_dorun_kv_list(handle, {
    start: request.start ?? undefined,
    prefix: request.prefix ?? undefined,
    limit: request.limit ?? 1000,
  });
  const entries = [];
  for (let i = 0; i < flat.length; i += 2) {
    let value;
    try {
      value = preview(core.deserialize(flat[i + 1], { forStorage: true }));
    } catch (error) {
      value = { $unreadable: String(error?.message ?? error) };
    }
    ArrayPrototypePush(entries, { key: flat[i], value, bytes: flat[i + 1].byteLength });
  }
  return { entries };
}

/** Runs one storage request; `write` says whether it must be committed. */
function storageRequest(handle, request) {
  switch (request.op) {
    case "kv":
      return { write: false, result: kvEntries(handle, request) };
    case "sql": {
      const result = JSONParse(op_dorun_admin_sql(handle, String(request.query ?? "")));
      return { write: result.rowsWritten > 0, result };
    }
    case "alarm":
      return { write: false, result: { alarm: op_dorun_alarm_get(handle) } };
    case "deleteAlarm": {
      const had = op_dorun_alarm_get(handle);
      if (had !== null) op_dorun_alarm_delete(handle);
      return { write: had !== null, result: { deleted: had !== null, alarm: null } };
    }
  }
  throw new Error(`unknown storage request '${request.op}'`);
}

/** Replaces the object's storage with a file (an import): evicted first, then restored. */
async function restore(namespace, hex, source) {
  const { evicted } = await evict(namespace, hex);
  const alarm = op_dorun_admin_restore(namespace, hex, String(source));
  return { restored: true, evicted, alarm };
}

/**
 * Copies the object's committed content to a file (an export). Its file is locked by its
 * own connection while it is open, so the copy is taken through that connection, once
 * the commits in flight are done; otherwise through one of our own, closed at once.
 */
async function snapshot(namespace, hex, target) {
  const key = `${namespace}:${hex}`;
  const object = MapPrototypeGet(live, key);
  if ((object?.storage.adminHandle ?? 0) !== 0) {
    try {
      await object.storage.outputGate();
    } catch {
      // The commit failed; the object reset itself and closed its storage.
    }
  }
  const own = MapPrototypeGet(live, key)?.storage.adminHandle ?? 0;
  try {
    if (own !== 0) {
      op_dorun_admin_snapshot(own, String(target));
      return { exported: true };
    }
    const handle = op_dorun_storage_open(namespace, hex, object?.name ?? null, false);
    if (handle === null) return { error: "no such object", status: 404 };
    try {
      op_dorun_admin_snapshot(handle, String(target));
    } finally {
      op_dorun_storage_close(handle);
    }
    return { exported: true };
  } catch (error) {
    return { error: String(error?.message ?? error), status: 503 };
  }
}

async function objectRequest(namespace, hex, text) {
  const request = JSONParse(text);
  if (request.op === "restore") return await restore(namespace, hex, request.source);
  if (request.op === "snapshot") return await snapshot(namespace, hex, request.target);
  const object = MapPrototypeGet(live, `${namespace}:${hex}`);
  const own = object?.storage.adminHandle ?? 0;
  if (own !== 0) {
    const { write, result } = storageRequest(own, request);
    if (write) await op_dorun_storage_commit(own);
    return result;
  }
  // Not resident (or it never touched storage): a connection of our own, closed (and
  // committed) before anything else runs on this thread.
  const handle = op_dorun_storage_open(namespace, hex, object?.name ?? null, false);
  if (handle === null) return { error: "no such object", status: 404 };
  try {
    return storageRequest(handle, request).result;
  } finally {
    op_dorun_storage_close(handle);
  }
}

async function run(incoming) {
  switch (incoming.action) {
    case "resident":
      return residentObjects();
    case "evict":
      return await evict(incoming.namespace, incoming.objectId);
    case "reset":
      return reset(incoming.namespace ?? null);
    case "object":
      return await objectRequest(incoming.namespace, incoming.objectId, incoming.request);
  }
  throw new Error(`unknown admin action '${incoming.action}'`);
}

/** An `admin` event: always answered with JSON (`{error}` when it failed). */
export async function handleAdminEvent(incoming) {
  let value;
  try {
    value = await run(incoming);
  } catch (error) {
    value = { error: String(error?.message ?? error), status: 400 };
  }
  reply(incoming.id, value);
}
