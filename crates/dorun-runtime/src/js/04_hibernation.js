// The Hibernation API: the pieces of `ctx` that manage an object's hibernatable WebSockets
// (acceptWebSocket with tags, getWebSockets, getTags, auto-responses, the event timeout),
// and delivering a hibernatable socket's event to the object, whose JS WebSocket is made
// again from its registry id after eviction.

import { core, primordials } from "ext:core/mod.js";
import { config } from "ext:dorun/00_runtime.js";
import {
  messageData,
  WebSocketInternals,
  WebSocketRequestResponsePair,
} from "ext:dorun/03_websockets.js";

const { ArrayPrototypePush, Date, Error, Number, ObjectPrototypeIsPrototypeOf, RangeError, String, TypeError } =
  primordials;

const {
  op_dorun_ws_object_sockets,
  op_dorun_ws_tags,
  op_dorun_ws_set_auto_response,
  op_dorun_ws_auto_response,
  op_dorun_ws_auto_response_timestamp,
  op_dorun_ws_set_event_timeout,
  op_dorun_ws_event_timeout,
} = core.ops;

const { maxAutoResponseBytes: MAX_AUTO_RESPONSE_BYTES } = config.socketLimits;
const MAX_EVENT_TIMEOUT_MS = 604800000;
const encoder = new TextEncoder();

/** The JS WebSocket for hibernatable socket `id` of `object`, made again after eviction. */
function materialize(object, id) {
  let ws = object.sockets.get(id);
  if (ws === undefined) {
    ws = WebSocketInternals.hibernated(id, object);
    object.sockets.set(id, ws);
  }
  return ws;
}

/** Delivers a hibernatable socket's event to the object's handler (input gate passed). */
export async function runHibernatableEvent(object, incoming) {
  const ws = materialize(object, incoming.socket);
  const instance = object.instance;
  const event = incoming.event;
  if (event.type === "message") {
    if (typeof instance.webSocketMessage === "function") {
      await instance.webSocketMessage(ws, messageData(event.data));
    }
  } else if (event.type === "close") {
    try {
      if (typeof instance.webSocketClose === "function") {
        await instance.webSocketClose(ws, event.code, event.reason, event.clean);
      }
    } finally {
      object.sockets.delete(incoming.socket);
    }
  } else if (typeof instance.webSocketError === "function") {
    await instance.webSocketError(ws, new Error(event.message));
  }
}

/** The Hibernation API methods of `ctx` for `object`. */
export function hibernationApi(object) {
  return {
    acceptWebSocket(ws, tags = undefined) {
      WebSocketInternals.acceptHibernatable(ws, object, tags);
    },
    getWebSockets(tag = undefined) {
      const ids = op_dorun_ws_object_sockets(
        object.namespace,
        object.hex,
        tag === undefined || tag === null ? null : String(tag),
      );
      const result = [];
      for (const id of ids) ArrayPrototypePush(result, materialize(object, id));
      return result;
    },
    getTags(ws) {
      if (!WebSocketInternals.isHibernatable(ws)) {
        throw new Error("only hibernatable websockets can have tags.");
      }
      return op_dorun_ws_tags(WebSocketInternals.id(ws));
    },
    setWebSocketAutoResponse(pair = undefined) {
      if (pair === undefined || pair === null) {
        op_dorun_ws_set_auto_response(object.namespace, object.hex, null, null);
        return;
      }
      if (!ObjectPrototypeIsPrototypeOf(WebSocketRequestResponsePair.prototype, pair)) {
        throw new TypeError("setWebSocketAutoResponse() expects a WebSocketRequestResponsePair.");
      }
      const requestSize = encoder.encode(pair.request).byteLength;
      if (requestSize > MAX_AUTO_RESPONSE_BYTES) {
        throw new RangeError(
          `Request cannot be larger than ${MAX_AUTO_RESPONSE_BYTES} bytes. A request of size ${requestSize} was provided.`,
        );
      }
      const responseSize = encoder.encode(pair.response).byteLength;
      if (responseSize > MAX_AUTO_RESPONSE_BYTES) {
        throw new RangeError(
          `Response cannot be larger than ${MAX_AUTO_RESPONSE_BYTES} bytes. A response of size ${responseSize} was provided.`,
        );
      }
      op_dorun_ws_set_auto_response(object.namespace, object.hex, pair.request, pair.response);
    },
    getWebSocketAutoResponse() {
      const pair = op_dorun_ws_auto_response(object.namespace, object.hex);
      return pair === null || pair === undefined
        ? null
        : new WebSocketRequestResponsePair(pair[0], pair[1]);
    },
    getWebSocketAutoResponseTimestamp(ws) {
      const id = WebSocketInternals.id(ws);
      const time = id === 0 ? null : op_dorun_ws_auto_response_timestamp(id);
      return time === null || time === undefined ? null : new Date(time);
    },
    setHibernatableWebSocketEventTimeout(ms = undefined) {
      if (ms !== undefined && ms !== null && ms > MAX_EVENT_TIMEOUT_MS) {
        throw new Error(`Event timeout should not exceed ${MAX_EVENT_TIMEOUT_MS} ms.`);
      }
      op_dorun_ws_set_event_timeout(object.namespace, object.hex, ms ? Number(ms) : 0);
    },
    getHibernatableWebSocketEventTimeout() {
      return op_dorun_ws_event_timeout(object.namespace, object.hex) ?? null;
    },
  };
}

