// A terminal chat client: each line you type is sent; everything the room says is printed.
//
//   node client.mjs ws://127.0.0.1:8787/api/room/lobby/websocket alice
//
// Needs a Node.js with a global WebSocket: Node 22+, or Node 20/21 with
// `node --experimental-websocket client.mjs ...`.
import { createInterface } from "node:readline";

const [url, name] = process.argv.slice(2);
if (!url || !name) {
  console.error("usage: node client.mjs ws://HOST/api/room/ROOM/websocket NAME");
  process.exit(2);
}
const socket = new WebSocket(`${url}?name=${encodeURIComponent(name)}`);
socket.addEventListener("message", (event) => {
  const data = JSON.parse(event.data);
  if (data.history) for (const m of data.history) console.log(`${m.name}: ${m.message}`);
  else if (data.joined) console.log(`* ${data.joined} joined (online: ${data.online.join(", ")})`);
  else if (data.quit) console.log(`* ${data.quit} left`);
  else if (data.error) console.log(`! ${data.error}`);
  else console.log(`${data.name}: ${data.message}`);
});
socket.addEventListener("close", (event) => {
  console.log(`* disconnected (${event.code})`);
  process.exit(0);
});
socket.addEventListener("open", () => {
  const input = createInterface({ input: process.stdin });
  input.on("line", (line) => {
    if (line.trim() !== "") socket.send(JSON.stringify({ message: line }));
  });
  input.on("close", () => socket.close(1000, "bye"));
});
