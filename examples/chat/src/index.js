// Chat rooms on Durable Objects with the WebSocket Hibernation API.
//
//   GET /                                   a small browser client
//   GET /api/room/<room>/websocket?name=X   WebSocket into room <room> as user X
//   GET /api/room/<room>/history            the room's last messages as JSON
//
// Each room is one ChatRoom object. Sockets are accepted with ctx.acceptWebSocket, so an
// idle room is evicted from memory while its users stay connected; each socket carries its
// user's name in its attachment, which survives that. Messages are kept in the room's SQL
// table and the last 50 are replayed to whoever joins.
import { DurableObject } from "cloudflare:workers";
import page from "./page.html";

const HISTORY = 50;

export class ChatRoom extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, name TEXT NOT NULL, message TEXT NOT NULL, at INTEGER NOT NULL)",
    );
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/history")) return Response.json(this.history());
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const name = (url.searchParams.get("name") ?? "").trim().slice(0, 32);
    if (name === "") return new Response("a ?name= is required", { status: 400 });
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server, [name]);
    server.serializeAttachment({ name });
    server.send(JSON.stringify({ history: this.history() }));
    this.broadcast({ joined: name, online: this.online() });
    return new Response(null, { status: 101, webSocket: client });
  }

  history() {
    return this.ctx.storage.sql
      .exec("SELECT name, message, at FROM messages ORDER BY id DESC LIMIT ?", HISTORY)
      .toArray()
      .reverse();
  }

  online() {
    return this.ctx.getWebSockets().map((ws) => ws.deserializeAttachment()?.name).filter(Boolean);
  }

  broadcast(payload, except = null) {
    const text = JSON.stringify(payload);
    for (const ws of this.ctx.getWebSockets()) {
      if (ws === except) continue;
      try {
        ws.send(text);
      } catch {
        // Closing or gone; its close event cleans up.
      }
    }
  }

  webSocketMessage(ws, raw) {
    const { name } = ws.deserializeAttachment();
    let message;
    try {
      message = String(JSON.parse(raw).message ?? "").slice(0, 1000);
    } catch {
      ws.send(JSON.stringify({ error: 'send JSON like {"message": "hi"}' }));
      return;
    }
    if (message === "") return;
    const at = Date.now();
    this.ctx.storage.sql.exec(
      "INSERT INTO messages (name, message, at) VALUES (?, ?, ?)",
      name,
      message,
      at,
    );
    // Sent after the insert commits (the output gate), so nobody sees a message that
    // could still be lost.
    this.broadcast({ name, message, at });
  }

  webSocketClose(ws, code, reason) {
    const { name } = ws.deserializeAttachment();
    this.broadcast({ quit: name, online: this.online().filter((n) => n !== name) }, ws);
  }

  webSocketError(ws) {
    this.webSocketClose(ws, 1011, "error");
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/") {
      return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    const match = url.pathname.match(/^\/api\/room\/([^/]+)\/(websocket|history)$/);
    if (match === null) return new Response("not found", { status: 404 });
    const room = decodeURIComponent(match[1]).slice(0, 64);
    return env.ROOMS.getByName(room).fetch(request);
  },
};
