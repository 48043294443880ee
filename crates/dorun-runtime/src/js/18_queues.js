// Queues: the producer binding (`env.<binding>.send` / `sendBatch`, stored by
// queue_binding.rs) and the consumer's side of a delivery (`queue(batch, env, ctx)`), whose
// batch the `dorun` crate's queues.rs hands over as an internal request. A message body is
// serialised here as its content type says (`v8`, the default, is V8's structured clone);
// the limits and messages follow Cloudflare's local implementation (Miniflare's broker and
// workerd's queue API).

import { core, primordials } from "ext:core/mod.js";

const {
  ArrayBufferIsView,
  ArrayPrototypePush,
  DataView,
  Date,
  Error,
  JSONParse,
  JSONStringify,
  MathMax,
  NumberIsInteger,
  ObjectFreeze,
  StringPrototypeToLowerCase,
  TypeError,
  TypedArrayPrototypeGetByteLength,
  Uint8Array,
} = primordials;
const { op_dorun_queue_send } = core.ops;

const { ArrayBuffer, TextDecoder, TextEncoder } = globalThis;
const getRandomValues = globalThis.crypto.getRandomValues.bind(globalThis.crypto);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const MAX_MESSAGE_BYTES = 128 * 1000;
const MAX_BATCH_MESSAGES = 100;
const MAX_BATCH_BYTES = (256 + 32) * 1000;
const MAX_DELAY_SECONDS = 24 * 60 * 60;
const CONTENT_TYPES = ["text", "bytes", "json", "v8"];

function contentTypeOf(contentType) {
  if (contentType === undefined) return "v8";
  const lower = StringPrototypeToLowerCase(`${contentType}`);
  if (CONTENT_TYPES.includes(lower)) return lower;
  throw new TypeError(`Unsupported queue message content type: ${contentType}`);
}

function bytesOf(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

/** The body as bytes of its content type. */
function serialise(body, contentType) {
  switch (contentType) {
    case "text":
      if (typeof body !== "string") {
        throw new TypeError(
          `Content Type "text" requires a value of type string, but received: ${typeof body}`,
        );
      }
      return encoder.encode(body);
    case "bytes":
      if (!ArrayBufferIsView(body)) {
        throw new TypeError(
          `Content Type "bytes" requires a value of type ArrayBufferView, but received: ${typeof body}`,
        );
      }
      return bytesOf(body);
    case "json":
      return encoder.encode(JSONStringify(body));
    default:
      return core.serialize(body, { forStorage: true });
  }
}

function checkDelay(delaySeconds, operation) {
  if (delaySeconds === undefined) return undefined;
  if (
    typeof delaySeconds !== "number" || !NumberIsInteger(delaySeconds) || delaySeconds < 0 ||
    delaySeconds > MAX_DELAY_SECONDS
  ) {
    throw new Error(`Queue ${operation} failed: Bad Request`);
  }
  return delaySeconds;
}

function messageId() {
  const bytes = getRandomValues(new Uint8Array(16));
  let id = "";
  for (let i = 0; i < bytes.length; i++) id += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
  return id;
}

class WorkerQueue {
  #queue;
  #deliveryDelay;

  constructor(queue, deliveryDelay) {
    this.#queue = queue;
    this.#deliveryDelay = deliveryDelay ?? 0;
  }

  async send(body, options) {
    if (body === undefined) throw new TypeError("Message body cannot be undefined");
    const contentType = contentTypeOf(options?.contentType);
    const bytes = serialise(body, contentType);
    const delay = checkDelay(options?.delaySeconds, "send");
    if (TypedArrayPrototypeGetByteLength(bytes) > MAX_MESSAGE_BYTES) {
      throw new Error("Queue send failed: Payload Too Large");
    }
    await op_dorun_queue_send(this.#queue, [{
      id: messageId(),
      body: bytes,
      contentType,
      delaySeconds: delay ?? this.#deliveryDelay,
    }], "send");
  }

  async sendBatch(messages, options) {
    const list = [...messages];
    if (list.length === 0) throw new TypeError("sendBatch() requires at least one message");
    const out = [];
    let total = 0;
    let largest = 0;
    for (const message of list) {
      const body = message?.body;
      if (body === undefined) throw new TypeError("Message body cannot be undefined");
      const contentType = contentTypeOf(message.contentType);
      const bytes = serialise(body, contentType);
      const length = TypedArrayPrototypeGetByteLength(bytes);
      total += length;
      largest = MathMax(largest, length);
      ArrayPrototypePush(out, {
        id: messageId(),
        body: bytes,
        contentType,
        delaySeconds: checkDelay(message.delaySeconds, "sendBatch"),
      });
    }
    const delay = checkDelay(options?.delaySeconds, "sendBatch") ?? this.#deliveryDelay;
    if (out.length > MAX_BATCH_MESSAGES || largest > MAX_MESSAGE_BYTES || total > MAX_BATCH_BYTES) {
      throw new Error("Queue sendBatch failed: Payload Too Large");
    }
    for (const message of out) message.delaySeconds ??= delay;
    await op_dorun_queue_send(this.#queue, out, "sendBatch");
  }
}

function createQueue(queue, deliveryDelay) {
  return new WorkerQueue(queue, deliveryDelay);
}

// --- the consumer -------------------------------------------------------------------------------

/** What the handler decided, message by message (queues.rs reads it back as JSON). */
class QueueResult {
  ackAll = false;
  retryAll = false;
  retryAllDelay = undefined;
  acks = new Set();
  retries = new Map();
}

function retryDelayOf(options) {
  const delay = options?.delaySeconds;
  if (delay === undefined) return undefined;
  if (typeof delay !== "number" || !NumberIsInteger(delay) || delay < 0 || delay > MAX_DELAY_SECONDS) {
    throw new TypeError(`delaySeconds must be an integer from 0 to ${MAX_DELAY_SECONDS}`);
  }
  return delay;
}

class Message {
  #result;
  constructor(fields, body, result) {
    this.id = fields.id;
    this.timestamp = new Date(fields.timestamp);
    this.body = body;
    this.attempts = fields.attempts;
    this.#result = result;
  }

  ack() {
    const result = this.#result;
    if (result.ackAll || result.retryAll || result.retries.has(this.id)) return;
    result.acks.add(this.id);
  }

  retry(options) {
    const result = this.#result;
    const delay = retryDelayOf(options);
    if (result.ackAll || result.retryAll || result.acks.has(this.id)) return;
    result.retries.set(this.id, delay);
  }
}

class MessageBatch {
  #result;
  constructor(queue, messages, metadata, result) {
    this.queue = queue;
    this.messages = ObjectFreeze(messages);
    this.metadata = metadata;
    this.#result = result;
  }

  ackAll() {
    if (this.#result.retryAll) return;
    this.#result.ackAll = true;
  }

  retryAll(options) {
    const delay = retryDelayOf(options);
    if (this.#result.ackAll) return;
    this.#result.retryAll = true;
    this.#result.retryAllDelay = delay;
  }
}

function deserialise(bytes, contentType) {
  switch (contentType) {
    case "text":
      return decoder.decode(bytes);
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "bytes": {
      const copy = new ArrayBuffer(bytes.byteLength);
      new Uint8Array(copy).set(bytes);
      return copy;
    }
    default:
      return core.deserialize(bytes, { forStorage: true });
  }
}

/**
 * The batch a delivery carries: a little-endian u32 length, that many bytes of JSON
 * (`{queue, metadata, messages: [{id, timestamp, attempts, contentType, length}]}`), then
 * the bodies one after another.
 */
function decodeBatch(buffer) {
  const bytes = new Uint8Array(buffer);
  const head = new DataView(buffer).getUint32(0, true);
  const meta = JSONParse(decoder.decode(bytes.subarray(4, 4 + head)));
  const result = new QueueResult();
  const messages = [];
  let at = 4 + head;
  for (const fields of meta.messages) {
    const body = deserialise(bytes.subarray(at, at + fields.length), fields.contentType);
    at += fields.length;
    ArrayPrototypePush(messages, new Message(fields, body, result));
  }
  return { batch: new MessageBatch(meta.queue, messages, meta.metadata, result), result };
}

/** What queues.rs needs to know of a finished (or failed) delivery. */
function outcomeOf(result, error) {
  const retries = [];
  for (const { 0: id, 1: delaySeconds } of result.retries) {
    ArrayPrototypePush(retries, { id, delaySeconds: delaySeconds ?? null });
  }
  return JSONStringify({
    ok: error === undefined,
    error: error === undefined ? null : `${error?.stack ?? error}`,
    ackAll: result.ackAll,
    retryAll: result.retryAll,
    retryAllDelay: result.retryAllDelay ?? null,
    acks: [...result.acks],
    retries,
  });
}

export { createQueue, decodeBatch, outcomeOf };
