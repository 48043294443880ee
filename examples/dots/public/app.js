// The page: joins the room named in the URL (/room/<name>, default "lobby"), shows every
// player's dot and sends this pointer's position (as fractions of the board).
const room = location.pathname.match(/^\/room\/([\w-]{1,64})/)?.[1] ?? "lobby";
document.getElementById("room").textContent = `room ${room}`;
const board = document.getElementById("board");
const status = document.getElementById("status");
const dots = new Map();
let me = null;

function place({ player, color, x, y }) {
  let dot = dots.get(player);
  if (!dot) {
    dot = document.createElement("div");
    dot.className = player === me ? "dot me" : "dot";
    dot.style.background = color;
    board.append(dot);
    dots.set(player, dot);
  }
  dot.style.left = `${x * 100}%`;
  dot.style.top = `${y * 100}%`;
}

const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const socket = new WebSocket(`${scheme}//${location.host}/api/room/${room}/ws`);
socket.onopen = () => (status.textContent = "connected");
socket.onclose = () => (status.textContent = "disconnected");
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.type === "welcome") {
    me = message.player;
    message.dots.forEach(place);
  } else if (message.type === "move") {
    place(message);
  } else if (message.type === "leave") {
    dots.get(message.player)?.remove();
    dots.delete(message.player);
  }
};
board.addEventListener("pointermove", (event) => {
  if (socket.readyState !== WebSocket.OPEN) return;
  const box = board.getBoundingClientRect();
  socket.send(JSON.stringify({
    x: (event.clientX - box.left) / box.width,
    y: (event.clientY - box.top) / box.height,
  }));
});
