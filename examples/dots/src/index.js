// Dots: everyone in a room sees everyone's dot move. The page (public/) is served from the
// assets; /api/room/<name>/... reaches that room's Durable Object.
import { DurableObject } from "cloudflare:workers";
import { createHash, randomUUID } from "node:crypto";
import { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"];

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      "CREATE TABLE IF NOT EXISTS dots (player TEXT PRIMARY KEY, color TEXT, x REAL, y REAL)",
    );
    // Moves fan out to every socket of the room through one emitter.
    this.moves = new EventEmitter();
    this.moves.on("move", (dot) => {
      const message = JSON.stringify({ type: "move", ...dot });
      for (const ws of this.ctx.getWebSockets()) ws.send(message);
    });
  }

  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/state")) return Response.json(this.dots());
    if (request.headers.get("upgrade") !== "websocket") {
      return new Response("expected a WebSocket", { status: 426 });
    }
    // A short, stable-looking player id: the first 8 bytes of a SHA-256, in hex.
    const player = createHash("sha256").update(randomUUID()).digest("hex").slice(0, 16);
    const color = COLORS[Buffer.from(player, "hex")[0] % COLORS.length];
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    server.serializeAttachment({ player, color });
    server.send(JSON.stringify({ type: "welcome", player, color, dots: this.dots() }));
    return new Response(null, { status: 101, webSocket: client });
  }

  webSocketMessage(ws, message) {
    const { player, color } = ws.deserializeAttachment();
    const { x, y } = JSON.parse(message);
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    this.ctx.storage.sql.exec(
      "INSERT INTO dots VALUES (?, ?, ?, ?) ON CONFLICT (player) DO UPDATE SET x = excluded.x, y = excluded.y",
      player,
      color,
      x,
      y,
    );
    this.moves.emit("move", { player, color, x, y });
  }

  webSocketClose(ws) {
    const { player } = ws.deserializeAttachment();
    this.ctx.storage.sql.exec("DELETE FROM dots WHERE player = ?", player);
    const message = JSON.stringify({ type: "leave", player });
    for (const other of this.ctx.getWebSockets()) if (other !== ws) other.send(message);
  }

  dots() {
    return this.ctx.storage.sql.exec("SELECT player, color, x, y FROM dots").toArray();
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/api\/room\/([\w-]{1,64})\/(ws|state)$/);
    if (match) return env.ROOMS.getByName(match[1]).fetch(request);
    if (url.pathname.startsWith("/api/")) return new Response("not found", { status: 404 });
    return env.ASSETS.fetch(request);
  },
};
