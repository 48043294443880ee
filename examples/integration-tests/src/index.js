// A small app whose own test suite (test/) runs against dorun: a to-do list per name, in a
// Durable Object with SQL storage, and a reminder alarm.
import { DurableObject } from "cloudflare:workers";

export class TodoList extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, text TEXT NOT NULL, done INTEGER DEFAULT 0)",
    );
  }

  add(text) {
    return this.ctx.storage.sql
      .exec("INSERT INTO items (text) VALUES (?) RETURNING id", text)
      .one().id;
  }

  complete(id) {
    this.ctx.storage.sql.exec("UPDATE items SET done = 1 WHERE id = ?", id);
  }

  async list() {
    const items = this.ctx.storage.sql
      .exec("SELECT id, text, done FROM items ORDER BY id")
      .toArray()
      .map((row) => ({ ...row, done: row.done === 1 }));
    return { items, reminded: (await this.ctx.storage.get("reminded")) ?? false };
  }

  async remindIn(ms) {
    await this.ctx.storage.setAlarm(Date.now() + ms);
  }

  async alarm() {
    await this.ctx.storage.put("reminded", true);
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/lists\/([^/]+)(\/items(?:\/(\d+))?|\/remind)?$/);
    if (!match) return new Response("not found", { status: 404 });
    const list = env.LISTS.getByName(match[1]);
    if (request.method === "GET" && !match[2]) return Response.json(await list.list());
    if (request.method === "POST" && match[2] === "/items") {
      const { text } = await request.json();
      return Response.json({ id: await list.add(text) }, { status: 201 });
    }
    if (request.method === "POST" && match[3]) {
      await list.complete(Number(match[3]));
      return new Response(null, { status: 204 });
    }
    if (request.method === "POST" && match[2] === "/remind") {
      await list.remindIn(Number(url.searchParams.get("in") ?? "0"));
      return new Response(null, { status: 202 });
    }
    return new Response("method not allowed", { status: 405 });
  },
};
