// Requests and responses between the isolate thread and JS: a request event's head (and
// body resource) as a `Request`, and a `Response` back as one answer op: buffered, streamed
// chunk by chunk, or handing a WebSocket to the front door.

import { core, primordials } from "ext:core/mod.js";
import { console } from "ext:dorun/00_runtime.js";
import { responseSocketToken } from "ext:dorun/03_websockets.js";

const { ObjectPrototypeIsPrototypeOf, PromisePrototypeThen, TypeError } = primordials;

const { op_dorun_respond, op_dorun_respond_stream, op_dorun_respond_failure } = core.ops;

const streams = core.loadExtScript("ext:deno_web/06_streams.js");
const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");
const { fromInnerRequest, newInnerRequest } = core.loadExtScript(
  "ext:deno_fetch/23_request.js",
);
const { toInnerResponse } = core.loadExtScript("ext:deno_fetch/23_response.js");

const encoder = new TextEncoder();

/** A `Request` from an event's request head (events.rs `RequestHead`). */
export function makeRequest(head) {
  const body = head.bodyRid === null
    ? null
    : new InnerBody(streams.readableStreamForRid(head.bodyRid));
  const inner = newInnerRequest(head.method, head.url, () => head.headers, body, false);
  return fromInnerRequest(inner, "immutable");
}

/** Answers event `id` with `response`. */
export function sendResponse(id, response) {
  const inner = toInnerResponse(response);
  const status = inner.status;
  const headers = inner.headerList;
  const body = inner.body;
  // A WebSocket response hands its socket to the front door.
  const socket = responseSocketToken(response);
  if (body === null) {
    op_dorun_respond(id, status, headers, null, socket);
    return;
  }
  const source = body.streamOrStatic;
  if (!ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, source)) {
    const bytes = typeof source.body === "string" ? encoder.encode(source.body) : source.body;
    source.consumed = true;
    op_dorun_respond(id, status, headers, bytes, null);
    return;
  }
  if (streams.isReadableStreamLocked(source) || streams.isReadableStreamDisturbed(source)) {
    throw new TypeError("The response body has already been used.");
  }
  const rid = streams.resourceForReadableStream(source);
  PromisePrototypeThen(op_dorun_respond_stream(id, status, headers, rid), undefined, (error) => {
    console.error("Error while streaming the response body:", error);
  });
}

/** Answers event `id` with the Worker's code having failed (the status is chosen in Rust). */
export function respondFailure(id) {
  op_dorun_respond_failure(id);
}
