// Worker for benches/bindings.sh: one route per binding operation. Same code on dorun and
// on `wrangler dev`; answers carry no timings, so both servers' answers can be compared.
//
//   GET  /                     "ok" (readiness)
//   POST /init?from=F&n=N      creates the D1 table, rows with ids F..F+N-1, KV keys kF..k(F+N-1)
//   GET  /kv/get?k=KEY         the value, 404 when missing
//   PUT  /kv/put?k=KEY         stores the request body
//   GET  /d1/first?id=ID       prepare().bind().first() of one row, as JSON
//   POST /d1/insert            prepare().bind().run() of one INSERT; changes and last_row_id
//   PUT  /r2/put/<key>         streams the request body into the bucket; key, size, etag
//   GET  /r2/get/<key>         streams the object back, 404 when missing
const SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)";

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const path = url.pathname;
    const method = request.method;

    if (path === "/" && method === "GET") return new Response("ok");

    if (path === "/kv/get" && method === "GET") {
      const value = await env.KV.get(url.searchParams.get("k") ?? "");
      return value === null ? new Response("missing", { status: 404 }) : new Response(value);
    }
    if (path === "/kv/put" && method === "PUT") {
      await env.KV.put(url.searchParams.get("k") ?? "", await request.text());
      return new Response("stored");
    }

    if (path === "/d1/first" && method === "GET") {
      const row = await env.DB.prepare("SELECT id, name, value FROM items WHERE id = ?")
        .bind(Number(url.searchParams.get("id")))
        .first();
      return row === null ? new Response("missing", { status: 404 }) : Response.json(row);
    }
    if (path === "/d1/insert" && method === "POST") {
      const n = Math.floor(Math.random() * 1e9);
      const result = await env.DB.prepare("INSERT INTO items (name, value) VALUES (?, ?)")
        .bind("inserted", n)
        .run();
      return Response.json({ success: result.success, changes: result.meta.changes });
    }

    if (path.startsWith("/r2/put/") && method === "PUT") {
      const object = await env.BUCKET.put(path.slice("/r2/put/".length), request.body);
      return Response.json({ key: object.key, size: object.size, etag: object.etag });
    }
    if (path.startsWith("/r2/get/") && method === "GET") {
      const object = await env.BUCKET.get(path.slice("/r2/get/".length));
      if (object === null) return new Response("missing", { status: 404 });
      return new Response(object.body, {
        headers: { "content-type": "application/octet-stream", etag: object.httpEtag },
      });
    }

    if (path === "/init" && method === "POST") {
      const from = Number(url.searchParams.get("from") ?? 0);
      const n = Number(url.searchParams.get("n") ?? 100);
      await env.DB.prepare(SCHEMA).run();
      const insert = env.DB.prepare("INSERT OR REPLACE INTO items (id, name, value) VALUES (?, ?, ?)");
      const rows = [];
      for (let i = from; i < from + n; i++) rows.push(insert.bind(i, `item ${i}`, i));
      await env.DB.batch(rows);
      const puts = [];
      for (let i = from; i < from + n; i++) puts.push(env.KV.put(`k${i}`, `value of k${i}`));
      await Promise.all(puts);
      const { count } = await env.DB.prepare("SELECT COUNT(*) AS count FROM items").first();
      return Response.json({ rows: count, kv: n });
    }

    return new Response("not found", { status: 404 });
  },
};
