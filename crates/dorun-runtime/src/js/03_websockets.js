// WebSockets as Workers have them: WebSocketPair, the server end's accept(), send and close,
// `new Response(null, { status: 101, webSocket })`, and the Hibernation API's pieces that
// live on the socket (attachments, tags) or on the object (auto-response, event timeout).
//
// The connection itself is held by the front door (crates/dorun/src/websocket.rs) and the
// socket registry (src/sockets.rs); a JS WebSocket is a handle on a registry id. A
// hibernatable socket's JS object can be dropped with its Durable Object and made again
// from the id when the next event arrives.

import { core, primordials } from "ext:core/mod.js";
import { config, currentObject, pendingOutputGate, runAs } from "ext:dorun/00_runtime.js";
import { setFetchWebSocket } from "ext:dorun/01_globals.js";

const {
  ArrayBufferIsView,
  ArrayPrototypeIncludes,
  ArrayPrototypePush,
  Error,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  RangeError,
  ReflectConstruct,
  SafeMap,
  SafeWeakMap,
  String,
  SymbolFor,
  TypeError,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetByteOffset,
  ArrayBufferPrototypeSlice,
  ObjectDefineProperty,
  Proxy,
  WeakMapPrototypeGet,
  WeakMapPrototypeSet,
  DataViewPrototypeGetBuffer,
  DataViewPrototypeGetByteLength,
  DataViewPrototypeGetByteOffset,
} = primordials;

const {
  op_dorun_ws_accept_local,
  op_dorun_ws_accept_object,
  op_dorun_ws_send_text,
  op_dorun_ws_send_binary,
  op_dorun_ws_close,
  op_dorun_ws_state,
  op_dorun_ws_set_attachment,
  op_dorun_ws_attachment,
  op_dorun_ws_connect,
  op_dorun_ws_start,
  op_dorun_ws_accept_remote,
  op_dorun_reply_value,
} = core.ops;

const { toInnerResponse } = core.loadExtScript("ext:deno_fetch/23_response.js");

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

// Cloudflare's limits, as the Rust side enforces them (sockets.rs).
const {
  maxTags: MAX_TAGS,
  maxTagLength: MAX_TAG_LENGTH,
  maxAttachmentBytes: MAX_ATTACHMENT_BYTES,
} = config.socketLimits;
const MAX_CLOSE_REASON_BYTES = 123;

const encoder = new TextEncoder();
const CREATE = SymbolFor("dorun.createWebSocket");
const EMPTY = new Uint8Array(0);

/** WebSockets accepted with accept() on this thread, by registry id. */
const localSockets = new SafeMap();

function copyBytes(data) {
  if (ObjectPrototypeIsPrototypeOf(ArrayBuffer.prototype, data)) return new Uint8Array(data);
  if (ArrayBufferIsView(data)) {
    if (ObjectPrototypeIsPrototypeOf(DataView.prototype, data)) {
      return new Uint8Array(
        DataViewPrototypeGetBuffer(data),
        DataViewPrototypeGetByteOffset(data),
        DataViewPrototypeGetByteLength(data),
      );
    }
    return new Uint8Array(
      TypedArrayPrototypeGetBuffer(data),
      TypedArrayPrototypeGetByteOffset(data),
      TypedArrayPrototypeGetByteLength(data),
    );
  }
  return null;
}

/** Module-private access to WebSocket's private state; filled in by its static block. */
const WebSocketInternals = {};

class WebSocket extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;
  // workerd's names for the same constants (partyserver compares readyState to these).
  static READY_STATE_CONNECTING = CONNECTING;
  static READY_STATE_OPEN = OPEN;
  static READY_STATE_CLOSING = CLOSING;
  static READY_STATE_CLOSED = CLOSED;

  /** The other end of the pair, while both ends live in this isolate. */
  #peer = null;
  /** Registry id once this end is accepted (or, for a client end, once its peer is). */
  #id = 0;
  /** A client end received from another isolate (stub.fetch): the registry id it stands for. */
  #remote = 0;
  #accepted = false;
  #hibernatable = false;
  #usedInResponse = false;
  #state = OPEN;
  /** The Durable Object this socket belongs to (for its async context and pinning). */
  #object = null;
  /** Sends waiting for the output gate, in order. */
  #sendChain = null;
  #attachment = null;
  /** An outbound socket's URL and negotiated subprotocol. */
  #url = null;
  #protocol = "";
  /** close() called on an outbound socket still connecting: [code, reason]. */
  #closeWhenOpen = null;
  /** on<event> attribute handlers. */
  #handlers = { __proto__: null };
  binaryType = "arraybuffer";

  /** `new WebSocket(url, protocols)`: an outbound socket, open once connected. */
  constructor(url, protocols = undefined) {
    super();
    if (url === CREATE) return;
    let parsed;
    try {
      parsed = new URL(String(url));
    } catch {
      throw new DOMException(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`, "SyntaxError");
    }
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    else if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new DOMException(
        `Failed to construct 'WebSocket': The URL's scheme must be either 'ws' or 'wss'. '${parsed.protocol}' is not allowed.`,
        "SyntaxError",
      );
    }
    const headers = [];
    if (protocols !== undefined) {
      const list = typeof protocols === "string" ? [protocols] : [...protocols];
      if (list.length > 0) ArrayPrototypePush(headers, ["sec-websocket-protocol", list.join(", ")]);
    }
    this.#url = parsed.href;
    this.#state = CONNECTING;
    this.#accepted = true;
    const object = currentObject();
    PromisePrototypeThen(op_dorun_ws_connect(this.#url, headers), ([id, protocol]) => {
      this.#id = id;
      this.#protocol = protocol;
      this.#state = OPEN;
      this.#listen(object);
      this.dispatchEvent(new Event("open"));
      if (this.#closeWhenOpen !== null) {
        const [code, reason] = this.#closeWhenOpen;
        this.#state = CLOSING;
        op_dorun_ws_close(id, code ?? null, reason);
      }
    }, (error) => {
      this.#state = CLOSED;
      this.dispatchEvent(new ErrorEvent("error", { message: error.message, error }));
      this.dispatchEvent(new CloseEvent("close", { code: 1006, reason: "", wasClean: false }));
    });
  }

  /** Starts delivering an outbound socket's events to this object. */
  #listen(object, start = true) {
    localSockets.set(this.#id, this);
    if (object !== null) {
      this.#object = object;
      object.localSockets++;
    }
    if (start) op_dorun_ws_start(this.#id);
  }

  get onopen() {
    return this.#handlers.open ?? null;
  }
  set onopen(f) {
    this.#setHandler("open", f);
  }
  get onmessage() {
    return this.#handlers.message ?? null;
  }
  set onmessage(f) {
    this.#setHandler("message", f);
  }
  get onclose() {
    return this.#handlers.close ?? null;
  }
  set onclose(f) {
    this.#setHandler("close", f);
  }
  get onerror() {
    return this.#handlers.error ?? null;
  }
  set onerror(f) {
    this.#setHandler("error", f);
  }
  #setHandler(type, f) {
    if (!(type in this.#handlers)) {
      this.addEventListener(type, (event) => {
        const handler = this.#handlers[type];
        if (typeof handler === "function") handler.call(this, event);
      });
    }
    this.#handlers[type] = typeof f === "function" ? f : null;
  }

  static {
    WebSocketInternals.pair = () => {
      const client = new WebSocket(CREATE);
      const server = new WebSocket(CREATE);
      client.#peer = server;
      server.#peer = client;
      return [client, server];
    };
    WebSocketInternals.remote = (id) => {
      const ws = new WebSocket(CREATE);
      ws.#remote = id;
      return ws;
    };
    WebSocketInternals.hibernated = (id, object) => {
      const ws = new WebSocket(CREATE);
      ws.#id = id;
      ws.#accepted = true;
      ws.#hibernatable = true;
      ws.#object = object;
      return ws;
    };
    WebSocketInternals.acceptHibernatable = (ws, object, tags) => ws.#acceptHibernatable(object, tags);
    WebSocketInternals.id = (ws) => ws.#id;
    WebSocketInternals.isHibernatable = (ws) => ws.#hibernatable;
    WebSocketInternals.tokenForResponse = (ws) => ws.#tokenForResponse();
    WebSocketInternals.peerClosed = (ws, code, reason, clean) => {
      ws.#state = CLOSED;
      const object = ws.#object;
      if (!ws.#hibernatable && object !== null) object.localSockets--;
      return new CloseEvent("close", { code, reason, wasClean: clean });
    };
    WebSocketInternals.object = (ws) => ws.#object;
    WebSocketInternals.outbound = (id, protocol, url) => {
      const ws = new WebSocket(CREATE);
      ws.#id = id;
      ws.#protocol = protocol;
      ws.#url = url;
      return ws;
    };
  }

  get readyState() {
    if (this.#id !== 0) {
      const shared = op_dorun_ws_state(this.#id);
      return shared > this.#state ? shared : this.#state;
    }
    return this.#state;
  }
  get url() {
    return this.#url;
  }
  get protocol() {
    return this.#protocol;
  }
  get extensions() {
    return "";
  }

  accept() {
    if (this.#hibernatable) {
      throw new TypeError("Can't accept() WebSocket after enabling hibernation.");
    }
    if (this.#accepted) return;
    if (this.#peer === null && this.#remote === 0 && this.#id !== 0) {
      // The socket of a `fetch` with `Upgrade: websocket`.
      this.#accepted = true;
      this.#listen(currentObject());
      return;
    }
    if (this.#remote !== 0) {
      // The client end of a socket an object returned through stub.fetch(): this code
      // becomes its client (the runtime relays between the two ends).
      if (this.#usedInResponse) {
        throw new TypeError("Can't accept() WebSocket that was already used in a response.");
      }
      this.#id = op_dorun_ws_accept_remote(this.#remote);
      this.#remote = 0;
      this.#accepted = true;
      this.#listen(currentObject(), false);
      return;
    }
    if (this.#peer === null) {
      throw new TypeError("This WebSocket cannot be accepted.");
    }
    if (this.#peer.#accepted) {
      throw new TypeError(
        "dorun does not support using both ends of a WebSocketPair in the same Worker; return one end in a Response.",
      );
    }
    if (this.#usedInResponse) {
      throw new TypeError("Can't accept() WebSocket that was already used in a response.");
    }
    this.#id = op_dorun_ws_accept_local();
    this.#accepted = true;
    this.#peer.#id = this.#id;
    localSockets.set(this.#id, this);
    // A standard WebSocket pins its Durable Object in memory (no hibernation).
    const object = currentObject();
    if (object !== null) {
      this.#object = object;
      object.localSockets++;
    }
  }

  #acceptHibernatable(object, tags) {
    if (!ObjectPrototypeIsPrototypeOf(WebSocket.prototype, this)) {
      throw new TypeError("acceptWebSocket() expects a WebSocket.");
    }
    if (this.#accepted && !this.#hibernatable) {
      throw new Error(
        "Cannot call `acceptWebSocket()` if the WebSocket was already accepted via `accept()`",
      );
    }
    if (this.#accepted || this.#peer === null || this.#peer.#accepted || this.#usedInResponse) {
      throw new Error(
        "Cannot call `acceptWebSocket()` on this WebSocket because its pair has already been accepted or used in a Response.",
      );
    }
    const unique = [];
    for (const tag of tags ?? []) {
      const text = String(tag);
      if (text.length > MAX_TAG_LENGTH) {
        throw new Error(`"${text}" is longer than the max tag length (${MAX_TAG_LENGTH} characters).`);
      }
      if (!ArrayPrototypeIncludes(unique, text)) ArrayPrototypePush(unique, text);
    }
    if (unique.length > MAX_TAGS) {
      throw new Error(`a Hibernatable WebSocket cannot have more than ${MAX_TAGS} tags`);
    }
    this.#id = op_dorun_ws_accept_object(object.namespace, object.hex, object.name ?? null, unique);
    this.#accepted = true;
    this.#hibernatable = true;
    this.#object = object;
    this.#peer.#id = this.#id;
    object.sockets.set(this.#id, this);
  }

  #tokenForResponse() {
    if (this.#remote !== 0) return this.#remote;
    if (this.#peer === null || this.#accepted) {
      throw new TypeError("The webSocket of a Response must be the client end of a WebSocketPair.");
    }
    if (this.#usedInResponse) {
      throw new TypeError("This WebSocket was already used in a Response.");
    }
    if (this.#id === 0) {
      throw new TypeError(
        "dorun needs the server end of a WebSocketPair to be accepted (accept() or ctx.acceptWebSocket()) before the client end is returned in a Response.",
      );
    }
    this.#usedInResponse = true;
    return this.#id;
  }

  #checkSendable() {
    if (this.#state === CONNECTING) {
      throw new DOMException("Failed to execute 'send' on 'WebSocket': Still in CONNECTING state.", "InvalidStateError");
    }
    if (!this.#accepted) {
      throw new TypeError(
        "You must call one of accept() or state.acceptWebSocket() on this WebSocket before sending messages.",
      );
    }
    if (this.readyState !== OPEN) {
      throw new TypeError("Can't call WebSocket send() after close().");
    }
  }

  /** Runs `action` now, or after the output gate and earlier gated sends, keeping order. */
  #gated(action) {
    const gate = pendingOutputGate();
    if (gate === null && this.#sendChain === null) {
      action();
      return;
    }
    const previous = this.#sendChain;
    const chain = (async () => {
      if (previous !== null) await previous;
      if (gate !== null) await gate;
      action();
    })();
    this.#sendChain = chain;
    PromisePrototypeThen(chain, () => {
      if (this.#sendChain === chain) this.#sendChain = null;
    }, (error) => {
      if (this.#sendChain === chain) this.#sendChain = null;
      // A failed commit resets the object; the message it gated is never sent.
      console.error("WebSocket message dropped:", error);
    });
  }

  send(data) {
    this.#checkSendable();
    const id = this.#id;
    if (typeof data === "string") {
      this.#gated(() => op_dorun_ws_send_text(id, data));
      return;
    }
    const bytes = copyBytes(data);
    if (bytes === null) {
      throw new TypeError(
        "Failed to execute 'send' on 'WebSocket': parameter 1 is not of type 'ArrayBuffer or ArrayBufferView or string'.",
      );
    }
    // Copy now: the caller may reuse its buffer before a gated send goes out.
    const copy = new Uint8Array(bytes);
    this.#gated(() => op_dorun_ws_send_binary(id, copy));
  }

  close(code = undefined, reason = undefined) {
    if (code !== undefined) {
      code = Number(code);
      const reserved = code === 1004 || code === 1005 || code === 1006 || code === 1015;
      if (!Number.isInteger(code) || code < 1000 || code > 4999 || reserved) {
        throw new TypeError(`Invalid WebSocket close code: ${code}.`);
      }
    }
    reason = reason === undefined ? "" : String(reason);
    if (encoder.encode(reason).byteLength > MAX_CLOSE_REASON_BYTES) {
      throw new DOMException(
        `The WebSocket close reason must be at most ${MAX_CLOSE_REASON_BYTES} bytes.`,
        "SyntaxError",
      );
    }
    if (!this.#accepted) {
      throw new TypeError(
        "You must call one of accept() or state.acceptWebSocket() on this WebSocket before closing it.",
      );
    }
    if (this.#state === CONNECTING) {
      this.#closeWhenOpen = [code, reason];
      return;
    }
    if (this.readyState !== OPEN) return;
    this.#state = CLOSING;
    const id = this.#id;
    this.#gated(() => op_dorun_ws_close(id, code ?? null, reason));
  }

  serializeAttachment(value) {
    const bytes = core.serialize(value, { forStorage: true });
    if (bytes.byteLength > MAX_ATTACHMENT_BYTES) {
      throw new Error(
        `A WebSocket 'attachment' cannot be larger than ${MAX_ATTACHMENT_BYTES} bytes.'attachment' was ${bytes.byteLength} bytes.`,
      );
    }
    if (this.#id !== 0) op_dorun_ws_set_attachment(this.#id, bytes);
    else this.#attachment = bytes;
  }

  deserializeAttachment() {
    const bytes = this.#id !== 0 ? op_dorun_ws_attachment(this.#id) : this.#attachment;
    if (bytes === null || bytes === undefined) return null;
    return core.deserialize(bytes, { forStorage: true });
  }
}

// As on the DOM and in workerd, the state constants are on instances too.
for (const name of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) {
  for (const key of [name, `READY_STATE_${name}`]) {
    ObjectDefineProperty(WebSocket.prototype, key, {
      value: WebSocket[name],
      enumerable: true,
    });
  }
}

class WebSocketPair {
  constructor() {
    const [client, server] = WebSocketInternals.pair();
    this[0] = client;
    this[1] = server;
  }
}

class WebSocketRequestResponsePair {
  #request;
  #response;
  constructor(request, response) {
    if (typeof request !== "string" || typeof response !== "string") {
      throw new TypeError("WebSocketRequestResponsePair() expects two strings.");
    }
    this.#request = request;
    this.#response = response;
  }
  get request() {
    return this.#request;
  }
  get response() {
    return this.#response;
  }
  getRequest() {
    return this.#request;
  }
  getResponse() {
    return this.#response;
  }
}

// --- Response with a webSocket -----------------------------------------------------------
const NativeResponse = globalThis.Response;
const responseSockets = new SafeWeakMap();
// deno's Response refuses status 101; a WebSocket response is built with 200 and then
// given its real status.
const WorkersResponse = new Proxy(NativeResponse, {
  construct(target, args, newTarget) {
    const init = args[1];
    const webSocket = init !== null && typeof init === "object" ? init.webSocket ?? null : null;
    if (webSocket === null) return ReflectConstruct(target, args, newTarget);
    if (!ObjectPrototypeIsPrototypeOf(WebSocket.prototype, webSocket)) {
      throw new TypeError("Response webSocket must be a WebSocket.");
    }
    if (init.status !== 101) {
      throw new RangeError("Responses with a WebSocket must have status code 101.");
    }
    if (args[0] !== null && args[0] !== undefined) {
      throw new TypeError("Response with status 101 cannot have a body.");
    }
    const response = ReflectConstruct(target, [null, { ...init, status: 200 }], newTarget);
    toInnerResponse(response).status = 101;
    toInnerResponse(response).statusMessage = "Switching Protocols";
    WeakMapPrototypeSet(responseSockets, response, webSocket);
    return response;
  },
});
ObjectDefineProperty(NativeResponse.prototype, "webSocket", {
  get() {
    return WeakMapPrototypeGet(responseSockets, this) ?? null;
  },
  configurable: true,
  enumerable: true,
});
ObjectDefineProperty(globalThis, "Response", {
  value: WorkersResponse,
  writable: true,
  enumerable: false,
  configurable: true,
});

/** The registry id to hand the front door for a Response's webSocket, or null. */
function responseSocketToken(response) {
  const webSocket = WeakMapPrototypeGet(responseSockets, response);
  const token = webSocket === undefined ? 0 : WebSocketInternals.tokenForResponse(webSocket);
  return token === 0 ? null : token;
}

// --- fetch() with `Upgrade: websocket` ------------------------------------------------------
setFetchWebSocket(async (request) => {
  const url = new URL(request.url);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  const headers = [];
  for (const [name, value] of request.headers) ArrayPrototypePush(headers, [name, value]);
  const [id, protocol] = await op_dorun_ws_connect(url.href, headers);
  const webSocket = WebSocketInternals.outbound(id, protocol, url.href);
  const responseHeaders = protocol === "" ? {} : { "sec-websocket-protocol": protocol };
  return new Response(null, { status: 101, webSocket, headers: responseHeaders });
});

// --- events ---------------------------------------------------------------------------------
// A socket event (events.rs `SocketEvent`) is `{type: "message", data}` (a string or bytes),
// `{type: "close", code, reason, clean}` or `{type: "error", message}`.

function messageData(data) {
  if (typeof data === "string") return data;
  return TypedArrayPrototypeGetByteLength(data) === data.buffer.byteLength
    ? data.buffer
    : ArrayBufferPrototypeSlice(data.buffer, data.byteOffset, data.byteOffset + data.byteLength);
}

/** A `localSocket` event: for a WebSocket accepted with accept() on this thread. */
function handleLocalSocketEvent(incoming) {
  const ws = localSockets.get(incoming.socket);
  const socketEvent = incoming.event;
  try {
    if (ws === undefined) return;
    let event;
    if (socketEvent.type === "close") {
      localSockets.delete(incoming.socket);
      event = WebSocketInternals.peerClosed(
        ws,
        socketEvent.code,
        socketEvent.reason,
        socketEvent.clean,
      );
    } else if (socketEvent.type === "message") {
      event = new MessageEvent("message", { data: messageData(socketEvent.data) });
    } else {
      event = new ErrorEvent("error", {
        message: socketEvent.message,
        error: new Error(socketEvent.message),
      });
    }
    const object = WebSocketInternals.object(ws);
    if (object !== null) runAs(object, () => ws.dispatchEvent(event));
    else ws.dispatchEvent(event);
  } finally {
    op_dorun_reply_value(incoming.id, EMPTY);
  }
}

/**
 * Closes (with `code`, `reason`) and forgets the WebSockets that objects in `objects` (a Set)
 * accepted without hibernation or opened (an operator's reset of one namespace drops those
 * objects; a full reset closes every socket in the registry instead). Returns how many.
 */
function closeLocalSocketsOf(objects, code, reason) {
  let closed = 0;
  for (const ws of [...localSockets.values()]) {
    const object = WebSocketInternals.object(ws);
    if (object === null || !objects.has(object)) continue;
    const id = WebSocketInternals.id(ws);
    localSockets.delete(id);
    op_dorun_ws_close(id, code, reason);
    closed++;
  }
  return closed;
}

export {
  closeLocalSocketsOf,
  handleLocalSocketEvent,
  messageData,
  WorkersResponse,
  responseSocketToken,
  WebSocket,
  WebSocketInternals,
  WebSocketPair,
  WebSocketRequestResponsePair,
};
