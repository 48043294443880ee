// A guestbook: D1 holds the entries, KV caches the list, R2 keeps each visitor's avatar,
// and a Durable Object per visitor limits how often they sign (its SQL storage keeps their
// recent signatures).
import { DurableObject } from "cloudflare:workers";

const CACHE_KEY = "entries:latest";

export class SignLimiter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS signed (at INTEGER NOT NULL)");
  }

  /** RPC: whether one more signature is allowed now, and records it if so. */
  allow() {
    const now = Date.now();
    const sql = this.ctx.storage.sql;
    sql.exec("DELETE FROM signed WHERE at < ?", now - 60_000);
    const recent = sql.exec("SELECT count(*) AS n FROM signed").one().n;
    if (recent >= Number(this.env.SIGNATURES_PER_MINUTE)) return false;
    sql.exec("INSERT INTO signed (at) VALUES (?)", now);
    return true;
  }
}

async function latest(env) {
  const cached = await env.CACHE.get(CACHE_KEY, "json");
  if (cached !== null) return { entries: cached, cache: "hit" };
  const { results } = await env.DB.prepare(
    "SELECT id, name, message, signed_at FROM entries ORDER BY id DESC LIMIT 20",
  ).all();
  await env.CACHE.put(CACHE_KEY, JSON.stringify(results), { expirationTtl: 60 });
  return { entries: results, cache: "miss" };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/entries" && request.method === "GET") {
      return Response.json(await latest(env));
    }
    const avatar = url.pathname.match(/^\/avatar\/([^/]+)$/);
    if (avatar !== null && request.method === "PUT") {
      // The image streams from the request into the bucket, with its content type.
      const object = await env.AVATARS.put(avatar[1], request.body, {
        httpMetadata: { contentType: request.headers.get("content-type") ?? "image/png" },
      });
      return Response.json({ size: object.size, etag: object.etag }, { status: 201 });
    }
    if (avatar !== null && request.method === "GET") {
      const object = await env.AVATARS.get(avatar[1], { onlyIf: request.headers });
      if (object === null) return new Response("no avatar", { status: 404 });
      const headers = new Headers({ etag: object.httpEtag });
      object.writeHttpMetadata(headers);
      return "body" in object
        ? new Response(object.body, { headers })
        : new Response(null, { status: 304, headers });
    }
    if (url.pathname === "/sign" && request.method === "POST") {
      const { name, message } = await request.json();
      if (typeof name !== "string" || typeof message !== "string" || name === "") {
        return Response.json({ error: "send {name, message}" }, { status: 400 });
      }
      if (!(await env.LIMITER.getByName(name).allow())) {
        return Response.json({ error: "slow down" }, { status: 429 });
      }
      try {
        const { meta } = await env.DB.prepare("INSERT INTO entries (name, message) VALUES (?, ?)")
          .bind(name, message)
          .run();
        await env.CACHE.delete(CACHE_KEY);
        return Response.json({ id: meta.last_row_id }, { status: 201 });
      } catch (error) {
        // The CHECK constraint: a message over 280 characters.
        return Response.json({ error: error.message }, { status: 422 });
      }
    }
    return new Response(
      "POST /sign {name, message} · GET /entries · PUT/GET /avatar/<name>\n",
      { status: 404 },
    );
  },
};
