// Durable Object storage: the KV API (async and sync), SQL with its cursor, transactions,
// and the alarm record, each call a synchronous op on the object's SQLite file
// (storage.rs). Writes go into an implicit transaction that the output gate (07_gates.js)
// commits at the end of the turn.

import { core, primordials } from "ext:core/mod.js";
import { config } from "ext:dorun/00_runtime.js";
import "ext:dorun/01_globals.js";
import { OutputGate } from "ext:dorun/07_gates.js";

const {
  ArrayIsArray,
  ArrayPrototypePush,
  ArrayPrototypeSort,
  DateNow,
  DatePrototype,
  DatePrototypeGetTime,
  Error,
  MathFloor,
  MathMax,
  MapPrototypeSet,
  NumberIsFinite,
  ObjectKeys,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  PromiseReject,
  PromiseResolve,
  RangeError,
  SafeMap,
  String,
  SymbolIterator,
  TypeError,
} = primordials;

const {
  op_dorun_storage_open,
  op_dorun_storage_close,
  op_dorun_storage_rollback,
  op_dorun_storage_commit,
  op_dorun_storage_durable,
  op_dorun_storage_in_transaction,
  op_dorun_storage_savepoint,
  op_dorun_storage_release,
  op_dorun_storage_rollback_to,
  op_dorun_kv_get,
  op_dorun_kv_put,
  op_dorun_kv_delete,
  op_dorun_kv_list,
  op_dorun_kv_delete_all,
  op_dorun_alarm_get,
  op_dorun_alarm_set,
  op_dorun_alarm_delete,
  op_dorun_sql_exec,
  op_dorun_sql_database_size,
} = core.ops;

const deleteAllDeletesAlarm = config.deleteAllDeletesAlarm;

// --- storage ------------------------------------------------------------------------------
// Cloudflare's KV limits.
const MAX_KEYS = 128;
const MAX_KEY_BYTES = 2048;
const MAX_VALUE_BYTES = 131072;
const encoder = new TextEncoder();

function checkKeyCount(count) {
  if (count > MAX_KEYS) {
    throw new RangeError(
      `Maximum number of key value pairs is ${MAX_KEYS}. ${count} pairs were provided.`,
    );
  }
}

function sortKeys(keys) {
  return ArrayPrototypeSort(keys, (a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function listArgs(options = {}) {
  if (options.start !== undefined && options.startAfter !== undefined) {
    throw new TypeError("list() cannot be called with both start and startAfter values.");
  }
  if (options.limit !== undefined && !(options.limit > 0)) {
    throw new TypeError("List limit must be positive.");
  }
  const start = options.startAfter !== undefined
    ? String(options.startAfter) + "\0"
    : options.start === undefined ? undefined : String(options.start);
  return {
    start,
    end: options.end === undefined ? undefined : String(options.end),
    prefix: options.prefix === undefined ? undefined : String(options.prefix),
    reverse: !!options.reverse,
    limit: options.limit === undefined ? undefined : options.limit >>> 0,
  };
}

const SQL_DISABLED =
  "SQL is not enabled for this Durable Object class. To enable it, change `new_classes` to `new_sqlite_classes` within the 'migrations' field in your wrangler.jsonc or wrangler.toml file.";
const KV_DISABLED =
  "The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects, which can be enabled by changing `new_classes` to `new_sqlite_classes` within the 'migrations' field in your wrangler.jsonc or wrangler.toml file.";

export class SqlStorageCursor {
  #columns;
  #rows;
  #index = 0;
  #rowsWritten;
  constructor(columns, rows, rowsWritten) {
    this.#columns = columns;
    this.#rows = rows;
    this.#rowsWritten = rowsWritten;
  }
  #object(row) {
    const out = {};
    for (let i = 0; i < this.#columns.length; i++) out[this.#columns[i]] = row[i];
    return out;
  }
  next() {
    if (this.#index < this.#rows.length) {
      return { done: false, value: this.#object(this.#rows[this.#index++]) };
    }
    return { done: true, value: undefined };
  }
  [SymbolIterator]() {
    return this;
  }
  toArray() {
    const out = [];
    while (this.#index < this.#rows.length) {
      ArrayPrototypePush(out, this.#object(this.#rows[this.#index++]));
    }
    return out;
  }
  one() {
    const remaining = this.#rows.length - this.#index;
    if (remaining === 0) {
      throw new Error("Expected exactly one result from SQL query, but got no results.");
    }
    if (remaining > 1) {
      throw new Error("Expected exactly one result from SQL query, but got multiple results.");
    }
    return this.next().value;
  }
  raw() {
    const cursor = this;
    const rows = this.#rows;
    return {
      next() {
        if (cursor.#index < rows.length) return { done: false, value: rows[cursor.#index++] };
        return { done: true, value: undefined };
      },
      [SymbolIterator]() {
        return this;
      },
      toArray() {
        const out = [];
        while (cursor.#index < rows.length) ArrayPrototypePush(out, rows[cursor.#index++]);
        return out;
      },
    };
  }
  get columnNames() {
    return [...this.#columns];
  }
  get rowsRead() {
    return this.#index;
  }
  get rowsWritten() {
    return this.#rowsWritten;
  }
}

export class DurableObjectStorage {
  #object;
  /** The database handle; 0 before the first storage call that needs one. */
  #handle = 0;
  #outputGate;
  #depth = 0;
  constructor(object) {
    this.#object = object;
    this.#outputGate = new OutputGate((error) => object.reset(error));
  }

  /** The database handle, creating the file on first use. */
  #db() {
    if (this.#handle === 0) {
      this.#handle = op_dorun_storage_open(
        this.#object.namespace,
        this.#object.hex,
        this.#object.name ?? null,
        true,
      );
    }
    return this.#handle;
  }

  /** The open database handle, or 0 (the admin listener uses the object's connection). */
  get adminHandle() {
    return this.#handle;
  }

  /** Drops the handle without closing it (the admin's reset closed it). */
  forget() {
    this.#handle = 0;
  }

  /** The database handle for a read; 0 if the object has never written anything. */
  #dbIfExists() {
    if (this.#handle === 0) {
      this.#handle = op_dorun_storage_open(
        this.#object.namespace,
        this.#object.hex,
        this.#object.name ?? null,
        false,
      ) ?? 0;
    }
    return this.#handle;
  }

  /**
   * After a write: commit at the end of this turn. Unless the write was made with
   * `allowUnconfirmed`, the output gate is held until that commit is durable.
   */
  #wrote(options = undefined) {
    if (!this.#outputGate.committing && op_dorun_storage_in_transaction(this.#handle)) {
      const written = op_dorun_storage_commit(this.#handle);
      const durable = PromisePrototypeThen(
        written,
        (ticket) => (ticket === 0 ? undefined : op_dorun_storage_durable(ticket)),
      );
      this.#outputGate.track(written, durable);
    }
    if (options?.allowUnconfirmed !== true) this.#outputGate.hold();
  }

  /** Resolves when every confirmed write so far is durable; rejects if a commit failed. */
  outputGate() {
    return this.#outputGate.wait();
  }

  /** The output gate if a confirmed write is not yet durable, else null. */
  pendingGate() {
    return this.#outputGate.pending();
  }

  /** Resolves when every write so far, confirmed or not, is durable. */
  sync() {
    return this.#outputGate.sync();
  }

  /** Whether the object's database is open (it holds files). */
  get isOpen() {
    return this.#handle !== 0;
  }

  close() {
    if (this.#handle !== 0) {
      const handle = this.#handle;
      this.#handle = 0;
      op_dorun_storage_close(handle);
    }
  }

  rollbackAndClose() {
    if (this.#handle !== 0) {
      const handle = this.#handle;
      this.#handle = 0;
      try {
        op_dorun_storage_rollback(handle);
      } finally {
        op_dorun_storage_close(handle);
      }
    }
  }

  #read(key) {
    const handle = this.#dbIfExists();
    if (handle === 0) return undefined;
    const bytes = op_dorun_kv_get(handle, String(key));
    return bytes === null || bytes === undefined
      ? undefined
      : core.deserialize(bytes, { forStorage: true });
  }

  #write(key, value) {
    if (value === undefined) throw new TypeError("put() called with undefined value.");
    key = String(key);
    const bytes = core.serialize(value, { forStorage: true });
    if (!this.#object.sqlite) {
      // KV-backed classes (new_classes) have Cloudflare's KV limits.
      const keySize = encoder.encode(key).byteLength;
      if (keySize > MAX_KEY_BYTES) {
        throw new RangeError(
          `Keys cannot be larger than ${MAX_KEY_BYTES} bytes. A key of size ${keySize} was provided.`,
        );
      }
      if (bytes.byteLength > MAX_VALUE_BYTES + 34) {
        throw new RangeError(
          `Values cannot be larger than ${MAX_VALUE_BYTES} bytes. A value of size ${bytes.byteLength} was provided.`,
        );
      }
    }
    op_dorun_kv_put(this.#db(), key, bytes);
  }

  getSync(keys) {
    if (ArrayIsArray(keys)) {
      checkKeyCount(keys.length);
      const result = new SafeMap();
      for (const key of sortKeys([...keys])) {
        const value = this.#read(key);
        if (value !== undefined) MapPrototypeSet(result, String(key), value);
      }
      return new Map(result);
    }
    return this.#read(keys);
  }

  putSync(keyOrEntries, value, options = undefined) {
    if (keyOrEntries !== null && typeof keyOrEntries === "object") {
      const keys = ObjectKeys(keyOrEntries);
      checkKeyCount(keys.length);
      for (const key of keys) {
        if (keyOrEntries[key] !== undefined) this.#write(key, keyOrEntries[key]);
      }
    } else {
      this.#write(keyOrEntries, value);
    }
    this.#wrote(options);
  }

  deleteSync(keys, options = undefined) {
    if (ArrayIsArray(keys)) checkKeyCount(keys.length);
    const handle = this.#dbIfExists();
    if (handle === 0) return ArrayIsArray(keys) ? 0 : false;
    let result;
    if (ArrayIsArray(keys)) {
      checkKeyCount(keys.length);
      result = 0;
      for (const key of keys) if (op_dorun_kv_delete(handle, String(key))) result++;
    } else {
      result = op_dorun_kv_delete(handle, String(keys));
    }
    this.#wrote(options);
    return result;
  }

  listSync(options) {
    const args = listArgs(options ?? {});
    const handle = this.#dbIfExists();
    if (handle === 0) return new Map();
    const flat = op_dorun_kv_list(handle, args);
    const result = new Map();
    for (let i = 0; i < flat.length; i += 2) {
      result.set(flat[i], core.deserialize(flat[i + 1], { forStorage: true }));
    }
    return result;
  }

  // Asynchronous KV API: SQLite reads are synchronous, so results are already settled
  // promises and no other event can run in between (the input gate holds trivially).
  get(keys, _options) {
    try {
      return PromiseResolve(this.getSync(keys));
    } catch (error) {
      return PromiseReject(error);
    }
  }
  put(keyOrEntries, value, options) {
    try {
      const entries = keyOrEntries !== null && typeof keyOrEntries === "object";
      if (entries && value !== undefined && (value === null || typeof value !== "object")) {
        throw new TypeError(
          "put() may only be called with a single key-value pair and optional options as put(key, value, options) or with multiple key-value pairs and optional options as put(entries, options)",
        );
      }
      if (entries) this.putSync(keyOrEntries, undefined, value);
      else this.putSync(keyOrEntries, value, options);
      return PromiseResolve();
    } catch (error) {
      return PromiseReject(error);
    }
  }
  delete(keys, options) {
    try {
      return PromiseResolve(this.deleteSync(keys, options));
    } catch (error) {
      return PromiseReject(error);
    }
  }
  list(options = {}) {
    try {
      return PromiseResolve(this.listSync(options));
    } catch (error) {
      return PromiseReject(error);
    }
  }
  deleteAll(_options) {
    try {
      if (this.#depth > 0) throw new Error("Cannot call deleteAll() within a transaction");
      op_dorun_kv_delete_all(this.#db(), !deleteAllDeletesAlarm);
      this.#wrote();
      return PromiseResolve();
    } catch (error) {
      return PromiseReject(error);
    }
  }

  transactionSync(callback) {
    const handle = this.#db();
    const name = `_cf_sync_savepoint_${this.#depth}`;
    op_dorun_storage_savepoint(handle, name);
    this.#wrote();
    this.#depth++;
    try {
      const result = callback();
      op_dorun_storage_release(handle, name);
      return result;
    } catch (error) {
      op_dorun_storage_rollback_to(handle, name);
      throw error;
    } finally {
      this.#depth--;
    }
  }

  async transaction(closure) {
    const storage = this;
    return await this.#object.blockConcurrencyWhile(async () => {
      const handle = storage.#db();
      const name = `_cf_savepoint_${storage.#depth}`;
      op_dorun_storage_savepoint(handle, name);
      storage.#wrote();
      storage.#depth++;
      let rolledBack = false;
      const txn = {
        get: (k, o) => storage.get(k, o),
        put: (k, v, o) => storage.put(k, v, o),
        delete: (k, o) => storage.delete(k, o),
        list: (o) => storage.list(o),
        getAlarm: (o) => storage.getAlarm(o),
        setAlarm: (t, o) => storage.setAlarm(t, o),
        deleteAlarm: (o) => storage.deleteAlarm(o),
        deleteAll: () => PromiseReject(new Error("Cannot call deleteAll() within a transaction")),
        rollback: () => {
          rolledBack = true;
        },
      };
      try {
        const result = await closure(txn);
        if (rolledBack) op_dorun_storage_rollback_to(handle, name);
        else op_dorun_storage_release(handle, name);
        return result;
      } catch (error) {
        op_dorun_storage_rollback_to(handle, name);
        throw error;
      } finally {
        storage.#depth--;
      }
    }, { resetOnError: false });
  }

  // --- alarms: stored in the object's database (committed with the writes around
  // them) and scheduled by the runtime's alarm scheduler once committed.

  /** The stored alarm time, or null. */
  storedAlarm() {
    const handle = this.#dbIfExists();
    if (handle === 0) return null;
    return op_dorun_alarm_get(handle) ?? null;
  }

  getAlarm(_options) {
    try {
      const time = this.storedAlarm();
      // While alarm() runs, its own alarm reads as null (unless it set a new one).
      if (time !== null && time === this.#object.runningAlarm) return PromiseResolve(null);
      return PromiseResolve(time);
    } catch (error) {
      return PromiseReject(error);
    }
  }

  setAlarm(scheduledTime, options = undefined) {
    try {
      let time;
      if (ObjectPrototypeIsPrototypeOf(DatePrototype, scheduledTime)) {
        time = DatePrototypeGetTime(scheduledTime);
      } else if (typeof scheduledTime === "number") {
        time = scheduledTime;
      } else {
        throw new TypeError(
          "Failed to execute 'setAlarm' on 'DurableObjectStorage': parameter 1 is not of type 'Date or number'.",
        );
      }
      if (!NumberIsFinite(time)) throw new TypeError("setAlarm() requires a finite time.");
      if (time <= 0) {
        throw new TypeError("setAlarm() cannot be called with an alarm time <= 0");
      }
      if (
        this.#object.instance !== null &&
        typeof this.#object.instance.alarm !== "function"
      ) {
        throw new TypeError(
          "Your Durable Object class must have an alarm() handler in order to call setAlarm()",
        );
      }
      time = MathFloor(MathMax(time, DateNow()));
      const current = this.storedAlarm();
      if (current === time && current !== this.#object.runningAlarm) return PromiseResolve();
      op_dorun_alarm_set(this.#db(), time);
      this.#wrote(options);
      return PromiseResolve();
    } catch (error) {
      return PromiseReject(error);
    }
  }

  deleteAlarm(options = undefined) {
    try {
      if (this.storedAlarm() !== null) {
        op_dorun_alarm_delete(this.#db());
        this.#wrote(options);
      }
      return PromiseResolve();
    } catch (error) {
      return PromiseReject(error);
    }
  }

  get kv() {
    if (!this.#object.sqlite) throw new Error(KV_DISABLED);
    const storage = this;
    return {
      get: (key) => storage.getSync(String(key)),
      put: (key, value) => storage.putSync(String(key), value),
      delete: (key) => storage.deleteSync(String(key)),
      list: (options) => storage.listSync(options).entries(),
    };
  }

  get sql() {
    const storage = this;
    const object = this.#object;
    return {
      exec(query, ...bindings) {
        if (!object.sqlite) throw new Error(SQL_DISABLED);
        const handle = storage.#db();
        let result;
        try {
          result = op_dorun_sql_exec(handle, String(query), bindings);
        } finally {
          storage.#wrote();
        }
        return new SqlStorageCursor(result[0], result[1], result[3]);
      },
      get databaseSize() {
        if (!object.sqlite) throw new Error(SQL_DISABLED);
        return op_dorun_sql_database_size(storage.#db());
      },
    };
  }
}