// env.<binding> of a `d1_databases` entry: a D1Database with workerd's surface (prepare,
// bind, first, all, raw, run, batch, exec, withSession) over one SQLite file per database
// (d1_binding.rs). Results, `meta` and error messages follow Cloudflare's local
// implementation (workerd's D1 client in front of Miniflare's D1 server).

import { core, primordials } from "ext:core/mod.js";

const {
  ArrayBufferIsView,
  ArrayFrom,
  ArrayIsArray,
  ArrayPrototypeEvery,
  ArrayPrototypeMap,
  MathFloor,
  NumberPrototypeToString,
  ObjectFromEntries,
  ObjectPrototypeIsPrototypeOf,
  String,
  StringPrototypePadStart,
  StringPrototypeSplit,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;

const { op_dorun_d1_batch, op_dorun_d1_exec } = core.ops;

const { ArrayBuffer, Error } = globalThis;

const kCreate = Symbol("D1");
const FIRST_UNCONSTRAINED = "first-unconstrained";
const FIRST_PRIMARY = "first-primary";

/** An error as D1 throws it: `<code>: <message>`, with the message as its cause. */
function d1Error(code, message, cause = message) {
  return new Error(`${code}: ${message}`, { cause: new Error(cause) });
}

/** A bound value as D1 takes it: numbers and strings as they are, booleans as 1 / 0,
 * null, and bytes (an ArrayBuffer, a view or an array of byte values) as a blob. */
function bindable(value) {
  const type = typeof value;
  if (type === "number" || type === "string") return value;
  if (type === "boolean") return value ? 1 : 0;
  if (type === "object") {
    if (value === null) return null;
    if (
      ArrayIsArray(value) &&
      ArrayPrototypeEvery(value, (b) => typeof b === "number" && b >= 0 && b < 256)
    ) {
      return value;
    }
    if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, value)) {
      return ArrayFrom(new Uint8Array(value));
    }
    // A typed array gives its elements (each later cut to a byte); a DataView nothing.
    if (ArrayBufferIsView(value)) return ArrayFrom(value);
  }
  throw d1Error(
    "D1_TYPE_ERROR",
    `Type '${type}' not supported for value '${value}'`,
  );
}

/** D1's `meta` for one statement's answer, as Cloudflare's local implementation gives it. */
function meta(answer) {
  return {
    served_by: "dorun",
    duration: answer.duration,
    changes: answer.changes,
    last_row_id: answer.lastRowId,
    changed_db: answer.changes > 0 || answer.changedSchema,
    size_after: answer.sizeAfter,
    rows_read: answer.rowsRead,
    rows_written: answer.rowsWritten,
  };
}

function rowObjects(answer) {
  return ArrayPrototypeMap(
    answer.rows,
    (row) => ObjectFromEntries(ArrayPrototypeMap(row, (cell, i) => [answer.columns[i], cell])),
  );
}

function hex(number, digits) {
  return StringPrototypePadStart(NumberPrototypeToString(number, 16), digits, "0");
}

/** A session bookmark for a history position: ordered as strings as the positions are. */
function bookmarkOf(position) {
  const high = MathFloor(position / 4294967296);
  const low = position % 4294967296;
  return `${hex(0, 8)}-${hex(high, 8)}-${hex(low, 8)}-${hex(0, 32)}`;
}

/** Runs the statements (`{ statement, params }`) on `database`, in one transaction. */
async function runBatch(database, statements, session) {
  let answers;
  try {
    answers = await op_dorun_d1_batch(
      database,
      ArrayPrototypeMap(statements, (s) => ({ sql: s.statement, params: s.params ?? [] })),
    );
  } catch (error) {
    throw d1Error("D1_ERROR", error?.message ?? String(error));
  }
  if (session !== null && answers.length > 0) session.seen(answers[0].position);
  return answers;
}

function result(answer) {
  return { success: true, meta: meta(answer), results: rowObjects(answer) };
}

class D1PreparedStatement {
  #database;
  #session;

  constructor(token, database, session, statement, params) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#database = database;
    this.#session = session;
    // Public, as in workerd: batch() reads them from whatever it is given.
    this.statement = statement;
    this.params = params;
  }

  bind(...values) {
    return new D1PreparedStatement(
      kCreate,
      this.#database,
      this.#session,
      this.statement,
      ArrayPrototypeMap(values, bindable),
    );
  }

  async #answer() {
    const [answer] = await runBatch(this.#database, [this], this.#session);
    return answer;
  }

  async first(column) {
    const rows = rowObjects(await this.#answer());
    if (rows.length === 0) return null;
    const row = rows[0];
    if (column === undefined) return row;
    if (row[column] === undefined) {
      throw d1Error("D1_COLUMN_NOTFOUND", `Column not found (${column})`, "Column not found");
    }
    return row[column];
  }

  async run() {
    return result(await this.#answer());
  }

  async all() {
    return result(await this.#answer());
  }

  async raw(options) {
    const answer = await this.#answer();
    if (options?.columnNames) return [answer.columns, ...answer.rows];
    return answer.rows;
  }
}

class D1DatabaseSession {
  #database;
  #bookmark;

  constructor(token, database, constraintOrBookmark) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    if (!constraintOrBookmark) {
      throw new Error("D1_SESSION_ERROR: invalid bookmark or constraint");
    }
    this.#database = database;
    this.#bookmark = constraintOrBookmark;
  }

  /** Keeps the newest bookmark seen. */
  seen(position) {
    const bookmark = bookmarkOf(position);
    const current = this.getBookmark();
    if (current === null || current < bookmark) this.#bookmark = bookmark;
  }

  prepare(sql) {
    return new D1PreparedStatement(kCreate, this.#database, this, sql, []);
  }

  async batch(statements) {
    return ArrayPrototypeMap(await runBatch(this.#database, statements.map((s) => s), this), result);
  }

  getBookmark() {
    return this.#bookmark === FIRST_UNCONSTRAINED || this.#bookmark === FIRST_PRIMARY
      ? null
      : this.#bookmark;
  }
}

class D1Database {
  #name;

  constructor(token, name) {
    if (token !== kCreate) throw new TypeError("Illegal constructor");
    this.#name = name;
  }

  prepare(sql) {
    return new D1PreparedStatement(kCreate, this.#name, null, sql, []);
  }

  async batch(statements) {
    // `statements.map`, as workerd calls it: a non-array fails the same way.
    const list = statements.map((s) => s);
    return ArrayPrototypeMap(await runBatch(this.#name, list, null), result);
  }

  async exec(query) {
    const lines = StringPrototypeSplit(query.trim(), "\n");
    try {
      return await op_dorun_d1_exec(this.#name, query);
    } catch (error) {
      const message = `Error in line 1: ${lines[0]}: ${error?.message ?? error}`;
      throw d1Error("D1_EXEC_ERROR", message);
    }
  }

  withSession(constraintOrBookmark) {
    let value = constraintOrBookmark?.trim();
    if (value === undefined || value === null || value === "") value = FIRST_UNCONSTRAINED;
    return new D1DatabaseSession(kCreate, this.#name, value);
  }

  /** @deprecated Only D1's alpha databases had it. */
  async dump() {
    throw d1Error("D1_DUMP_ERROR", "Status + 404", "Status 404");
  }
}

/** The binding object of database `name`. */
export function createD1Database(name) {
  return new D1Database(kCreate, name);
}
