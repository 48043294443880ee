// node:stream — Readable, Writable, Duplex, Transform, PassThrough, pipeline, finished,
// Readable.from, async iteration, and conversions to/from WHATWG streams.
//
// Semantics kept from Node: flowing and paused modes ("data", "readable", read(n)),
// highWaterMark backpressure (push() and write() return false; "drain"), ordered _write
// calls, _final before "finish", end-of-stream and "close" after autoDestroy, destroy(error),
// objectMode, setEncoding, pipe() with backpressure, Transform backpressure (its write
// callback waits until the readable side is read). Constructors are plain functions, so
// older packages can inherit with `Readable.call(this)` + util.inherits.
// Not covered: _writev batching (each chunk is written alone), readable.unshift() of
// already-decoded data, `construct()`, stream.compose/duplexPair, the experimental
// operators (map, filter, ...), and Node's exact error codes beyond the common ones.

import { EventEmitter } from "node:events";
import { Buffer } from "node:buffer";
import { StringDecoder } from "node:string_decoder";

const nextTick = (fn, ...args) => queueMicrotask(() => fn(...args));
const DEFAULT_HWM = 64 * 1024;
const DEFAULT_OBJECT_HWM = 16;

function codedError(Kind, code, message) {
  const error = new Kind(message);
  error.code = code;
  return error;
}

function inherit(Child, Parent) {
  Object.setPrototypeOf(Child.prototype, Parent.prototype);
  Object.setPrototypeOf(Child, Parent);
}

function defineGetters(prototype, getters) {
  for (const [name, get] of Object.entries(getters)) {
    Object.defineProperty(prototype, name, { get, configurable: true, enumerable: false });
  }
}

export function getDefaultHighWaterMark(objectMode) {
  return objectMode ? DEFAULT_OBJECT_HWM : DEFAULT_HWM;
}

export function setDefaultHighWaterMark(_objectMode, _value) {}

// --- Stream (legacy base) ------------------------------------------------------------------
export function Stream(options) {
  EventEmitter.call(this, options);
}
inherit(Stream, EventEmitter);

// --- destroy, shared by all streams ---------------------------------------------------------
function destroy(error, callback) {
  const r = this._readableState;
  const w = this._writableState;
  if ((r ?? w).destroyed) {
    if (typeof callback === "function") nextTick(callback, error);
    return this;
  }
  if (r) r.destroyed = true;
  if (w) w.destroyed = true;
  if (error) {
    if (r && !r.errored) r.errored = error;
    if (w && !w.errored) w.errored = error;
  }
  const finish = (finalError) => {
    if (typeof callback === "function") callback(finalError);
    nextTick(() => {
      if (finalError && !(r ?? w).errorEmitted) {
        (r ?? w).errorEmitted = true;
        if (r) r.errorEmitted = true;
        if (w) w.errorEmitted = true;
        this.emit("error", finalError);
      }
      if (r) r.closed = true;
      if (w) w.closed = true;
      if ((r ?? w).emitClose !== false) this.emit("close");
    });
  };
  try {
    this._destroy(error ?? null, (e) => finish(e ?? error));
  } catch (e) {
    finish(e);
  }
  return this;
}

function defaultDestroy(error, callback) {
  callback(error);
}

// --- Readable ------------------------------------------------------------------------------
function ReadableState(options, isDuplex) {
  this.objectMode = !!(options.objectMode || (isDuplex && options.readableObjectMode));
  this.highWaterMark = options.readableHighWaterMark ?? options.highWaterMark ?? getDefaultHighWaterMark(this.objectMode);
  this.buffer = [];
  this.length = 0;
  this.flowing = null;
  this.ended = false;
  this.endEmitted = false;
  this.reading = false;
  this.readScheduled = false;
  this.flowScheduled = false;
  this.readableListening = false;
  this.emittedReadable = false;
  this.destroyed = false;
  this.closed = false;
  this.errored = null;
  this.errorEmitted = false;
  this.autoDestroy = options.autoDestroy ?? true;
  this.emitClose = options.emitClose ?? true;
  this.decoder = null;
  this.encoding = null;
  this.dataEmitted = false;
  this.pipes = [];
  if (options.encoding) {
    this.decoder = new StringDecoder(options.encoding);
    this.encoding = options.encoding;
  }
}

export function Readable(options = {}) {
  if (!(this instanceof Readable)) return new Readable(options);
  Stream.call(this, options);
  this._readableState = new ReadableState(options ?? {}, this instanceof Duplex);
  if (typeof options?.read === "function") this._read = options.read;
  if (typeof options?.destroy === "function") this._destroy = options.destroy;
  if (options?.signal) addAbortSignal(options.signal, this);
}
inherit(Readable, Stream);

Readable.prototype._read = function (_size) {
  throw codedError(Error, "ERR_METHOD_NOT_IMPLEMENTED", "The _read() method is not implemented");
};
Readable.prototype._destroy = defaultDestroy;
Readable.prototype.destroy = destroy;

Readable.prototype.push = function (chunk, encoding) {
  const state = this._readableState;
  if (state.destroyed) return false;
  state.reading = false;
  if (chunk === null) {
    state.ended = true;
    if (state.decoder) {
      const rest = state.decoder.end();
      if (rest) addChunk(state, rest);
    }
    scheduleFlow(this);
    return false;
  }
  if (state.ended) {
    const error = codedError(Error, "ERR_STREAM_PUSH_AFTER_EOF", "stream.push() after EOF");
    this.destroy(error);
    return false;
  }
  if (!state.objectMode) {
    if (typeof chunk === "string") {
      chunk = Buffer.from(chunk, encoding ?? "utf8");
    } else if (chunk instanceof Uint8Array) {
      if (!(chunk instanceof Buffer)) chunk = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } else {
      const error = codedError(TypeError, "ERR_INVALID_ARG_TYPE", 'The "chunk" argument must be of type string or an instance of Buffer or Uint8Array');
      this.destroy(error);
      return false;
    }
    if (state.decoder) chunk = state.decoder.write(chunk);
    if (chunk.length === 0) {
      scheduleRead(this);
      return state.length < state.highWaterMark;
    }
  }
  addChunk(state, chunk);
  scheduleFlow(this);
  return state.length < state.highWaterMark;
};

Readable.prototype.unshift = function (chunk) {
  const state = this._readableState;
  if (chunk === null) return this.push(null);
  if (!state.objectMode && typeof chunk === "string") chunk = Buffer.from(chunk);
  state.buffer.unshift(chunk);
  state.length += state.objectMode ? 1 : chunk.length;
  scheduleFlow(this);
  return state.length < state.highWaterMark;
};

function addChunk(state, chunk) {
  state.buffer.push(chunk);
  state.length += state.objectMode ? 1 : chunk.length;
}

function takeChunk(state) {
  const chunk = state.buffer.shift();
  state.length -= state.objectMode ? 1 : chunk.length;
  return chunk;
}

function joinChunks(state, chunks) {
  if (state.decoder) return chunks.join("");
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
}

Readable.prototype.read = function (n) {
  const state = this._readableState;
  if (n !== undefined) n = Number(n);
  let result = null;
  if (state.length > 0 && n !== 0) {
    if (state.objectMode) {
      result = takeChunk(state);
    } else if (n === undefined || Number.isNaN(n) || n >= state.length) {
      if (n === undefined || Number.isNaN(n) || state.ended || n === state.length) {
        result = joinChunks(state, state.buffer.splice(0));
        state.length = 0;
      }
    } else {
      const parts = [];
      let need = n;
      while (need > 0) {
        const head = state.buffer[0];
        if (head.length <= need) {
          parts.push(takeChunk(state));
          need -= head.length;
        } else {
          parts.push(head.slice(0, need));
          state.buffer[0] = head.slice(need);
          state.length -= need;
          need = 0;
        }
      }
      result = joinChunks(state, parts);
    }
  }
  if (result !== null) {
    state.dataEmitted = true;
    this.emit("data", result);
  }
  if (state.ended && state.length === 0) {
    endReadable(this);
  } else if (result === null) {
    state.emittedReadable = false;
  }
  if (!state.ended && state.length < state.highWaterMark) scheduleRead(this);
  return result;
};

/** Calls _read() once the current tick is over, unless a read is in progress. */
function scheduleRead(stream) {
  const state = stream._readableState;
  if (state.readScheduled || state.reading || state.ended || state.destroyed) return;
  state.readScheduled = true;
  nextTick(() => {
    state.readScheduled = false;
    if (state.reading || state.ended || state.destroyed || state.length >= state.highWaterMark) return;
    state.reading = true;
    try {
      stream._read(state.objectMode ? DEFAULT_OBJECT_HWM : state.highWaterMark);
    } catch (error) {
      stream.destroy(error);
    }
  });
}

/** Moves buffered data to consumers: "data" in flowing mode, "readable" in paused mode. */
function scheduleFlow(stream) {
  const state = stream._readableState;
  if (state.flowScheduled) return;
  state.flowScheduled = true;
  nextTick(() => {
    state.flowScheduled = false;
    flow(stream);
  });
}

function flow(stream) {
  const state = stream._readableState;
  if (state.destroyed) return;
  if (state.flowing) {
    while (state.flowing && state.buffer.length > 0) {
      state.dataEmitted = true;
      stream.emit("data", takeChunk(state));
    }
  } else if (state.readableListening && (state.length > 0 || state.ended) && !state.emittedReadable) {
    state.emittedReadable = true;
    stream.emit("readable");
    state.emittedReadable = false;
  }
  if (state.ended && state.length === 0) {
    endReadable(stream);
  } else if (state.flowing || state.readableListening) {
    scheduleRead(stream);
  }
}

function endReadable(stream) {
  const state = stream._readableState;
  if (state.endEmitted || state.endScheduled) return;
  state.endScheduled = true;
  nextTick(() => {
    if (state.endEmitted || state.destroyed || state.length > 0) return;
    state.endEmitted = true;
    stream.emit("end");
    const w = stream._writableState;
    if (w && stream.allowHalfOpen === false && !w.ending) stream.end();
    if (state.autoDestroy && (!w || (w.finished && w.autoDestroy !== false))) stream.destroy();
  });
}

Readable.prototype.on = function (event, listener) {
  const result = Stream.prototype.on.call(this, event, listener);
  const state = this._readableState;
  if (event === "data") {
    if (state.flowing !== false) this.resume();
  } else if (event === "readable") {
    state.readableListening = true;
    state.flowing = false;
    scheduleFlow(this);
    scheduleRead(this);
  }
  return result;
};
Readable.prototype.addListener = Readable.prototype.on;

Readable.prototype.resume = function () {
  const state = this._readableState;
  if (!state.flowing) {
    state.flowing = !state.readableListening;
    scheduleFlow(this);
    scheduleRead(this);
  }
  return this;
};

Readable.prototype.pause = function () {
  const state = this._readableState;
  if (state.flowing !== false) {
    state.flowing = false;
    this.emit("pause");
  }
  return this;
};

Readable.prototype.isPaused = function () {
  return this._readableState.flowing === false;
};

Readable.prototype.setEncoding = function (encoding) {
  const state = this._readableState;
  state.decoder = new StringDecoder(encoding);
  state.encoding = state.decoder.encoding;
  const pending = state.buffer.splice(0);
  state.length = 0;
  for (const chunk of pending) {
    const text = typeof chunk === "string" ? chunk : state.decoder.write(chunk);
    if (text.length > 0) addChunk(state, text);
  }
  return this;
};

Readable.prototype.pipe = function (destination, options = {}) {
  const source = this;
  const state = this._readableState;
  const onData = (chunk) => {
    if (destination.write(chunk) === false) source.pause();
  };
  const onDrain = () => source.resume();
  const onEnd = () => {
    if (options?.end !== false && destination !== globalThis.process?.stdout) destination.end();
  };
  const cleanup = () => {
    source.removeListener("data", onData);
    source.removeListener("end", onEnd);
    destination.removeListener("drain", onDrain);
  };
  source.on("data", onData);
  source.once("end", onEnd);
  destination.on("drain", onDrain);
  state.pipes.push({ destination, cleanup });
  destination.emit("pipe", source);
  if (!state.flowing) source.resume();
  return destination;
};

Readable.prototype.unpipe = function (destination = undefined) {
  const state = this._readableState;
  for (const pipe of [...state.pipes]) {
    if (destination !== undefined && pipe.destination !== destination) continue;
    pipe.cleanup();
    state.pipes.splice(state.pipes.indexOf(pipe), 1);
    pipe.destination.emit("unpipe", this);
  }
  if (state.pipes.length === 0) this.pause();
  return this;
};

Readable.prototype.wrap = function (oldStream) {
  oldStream.on("data", (chunk) => {
    if (!this.push(chunk)) oldStream.pause?.();
  });
  oldStream.on("end", () => this.push(null));
  oldStream.on("error", (error) => this.destroy(error));
  this._read = () => oldStream.resume?.();
  return this;
};

Readable.prototype[Symbol.asyncIterator] = async function* () {
  const stream = this;
  const queue = [];
  let finished = false;
  let error = null;
  let wake = null;
  const notify = () => {
    const resolve = wake;
    wake = null;
    resolve?.();
  };
  const onData = (chunk) => {
    queue.push(chunk);
    stream.pause();
    notify();
  };
  const onEnd = () => {
    finished = true;
    notify();
  };
  const onError = (e) => {
    error = e;
    notify();
  };
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);
  stream.on("close", onEnd);
  try {
    while (true) {
      if (queue.length > 0) {
        yield queue.shift();
        continue;
      }
      if (error) throw error;
      if (finished) {
        if (!stream._readableState.endEmitted && !stream._readableState.errored) {
          throw codedError(Error, "ERR_STREAM_PREMATURE_CLOSE", "Premature close");
        }
        return;
      }
      stream.resume();
      await new Promise((resolve) => (wake = resolve));
    }
  } finally {
    stream.removeListener("data", onData);
    stream.removeListener("end", onEnd);
    stream.removeListener("error", onError);
    stream.removeListener("close", onEnd);
    if (!finished && !error) stream.destroy();
  }
};

Readable.prototype.toArray = async function () {
  const out = [];
  for await (const chunk of this) out.push(chunk);
  return out;
};

defineGetters(Readable.prototype, {
  readable() {
    const s = this._readableState;
    return !s.destroyed && !s.endEmitted && !s.errored;
  },
  readableEnded() {
    return this._readableState.endEmitted;
  },
  readableFlowing() {
    return this._readableState.flowing;
  },
  readableLength() {
    return this._readableState.length;
  },
  readableHighWaterMark() {
    return this._readableState.highWaterMark;
  },
  readableObjectMode() {
    return this._readableState.objectMode;
  },
  readableEncoding() {
    return this._readableState.encoding;
  },
  readableAborted() {
    const s = this._readableState;
    return s.destroyed && !s.endEmitted;
  },
  readableDidRead() {
    return this._readableState.dataEmitted;
  },
  destroyed() {
    return (this._readableState ?? this._writableState).destroyed;
  },
  closed() {
    return (this._readableState ?? this._writableState).closed;
  },
  errored() {
    return (this._readableState ?? this._writableState).errored;
  },
});

/** A Readable of the values of an (async) iterable; objectMode unless told otherwise. */
Readable.from = function (iterable, options = {}) {
  if (typeof iterable === "string" || iterable instanceof Uint8Array) {
    const chunk = iterable;
    return new Readable({
      objectMode: true,
      ...options,
      read() {
        this.push(chunk);
        this.push(null);
      },
    });
  }
  const iterator = iterable[Symbol.asyncIterator]?.() ?? iterable[Symbol.iterator]?.();
  if (iterator === undefined) {
    throw codedError(TypeError, "ERR_INVALID_ARG_TYPE", 'The "iterable" argument must be an instance of Iterable');
  }
  let reading = false;
  return new Readable({
    objectMode: true,
    ...options,
    async read() {
      if (reading) return;
      reading = true;
      try {
        while (true) {
          const { value, done } = await iterator.next();
          if (done) {
            this.push(null);
            return;
          }
          const resolved = await value;
          if (resolved === null) throw codedError(TypeError, "ERR_STREAM_NULL_VALUES", "May not write null values to stream");
          if (!this.push(resolved)) return;
        }
      } catch (error) {
        this.destroy(error);
      } finally {
        reading = false;
      }
    },
    destroy(error, callback) {
      Promise.resolve(error ? iterator.throw?.(error) : iterator.return?.()).then(
        () => callback(error),
        (e) => callback(e ?? error),
      );
    },
  });
};

Readable.fromWeb = function (readableStream, options = {}) {
  return Readable.from(readableStream, { objectMode: false, ...options });
};

Readable.toWeb = function (readable) {
  const iterator = readable[Symbol.asyncIterator]();
  return new ReadableStream({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(typeof value === "string" ? new TextEncoder().encode(value) : value);
    },
    cancel(reason) {
      readable.destroy(reason);
    },
  });
};

Readable.isDisturbed = (stream) => stream._readableState?.dataEmitted ?? false;

// --- Writable ------------------------------------------------------------------------------
function WritableState(options, isDuplex) {
  this.objectMode = !!(options.objectMode || (isDuplex && options.writableObjectMode));
  this.highWaterMark = options.writableHighWaterMark ?? options.highWaterMark ?? getDefaultHighWaterMark(this.objectMode);
  this.decodeStrings = options.decodeStrings !== false;
  this.defaultEncoding = options.defaultEncoding ?? "utf8";
  this.buffer = [];
  this.length = 0;
  this.writing = false;
  this.corked = 0;
  this.ending = false;
  this.ended = false;
  this.finalCalled = false;
  this.finished = false;
  this.needDrain = false;
  this.destroyed = false;
  this.closed = false;
  this.errored = null;
  this.errorEmitted = false;
  this.autoDestroy = options.autoDestroy ?? true;
  this.emitClose = options.emitClose ?? true;
}

export function Writable(options = {}) {
  if (!(this instanceof Writable) && !(this instanceof Duplex)) return new Writable(options);
  Stream.call(this, options);
  initWritable(this, options ?? {}, false);
}
inherit(Writable, Stream);

function initWritable(stream, options, isDuplex) {
  stream._writableState = new WritableState(options, isDuplex);
  if (typeof options.write === "function") stream._write = options.write;
  if (typeof options.writev === "function") stream._writev = options.writev;
  if (typeof options.final === "function") stream._final = options.final;
  if (typeof options.destroy === "function") stream._destroy = options.destroy;
  if (options.signal) addAbortSignal(options.signal, stream);
}

Object.defineProperty(Writable, Symbol.hasInstance, {
  value(object) {
    if (Function.prototype[Symbol.hasInstance].call(this, object)) return true;
    return this === Writable && object?._writableState !== undefined;
  },
});

const WritableMethods = {
  _write(chunk, encoding, callback) {
    if (typeof this._writev === "function" && this._writev !== WritableMethods._writev) {
      this._writev([{ chunk, encoding }], callback);
      return;
    }
    throw codedError(Error, "ERR_METHOD_NOT_IMPLEMENTED", "The _write() method is not implemented");
  },

  _writev: undefined,

  write(chunk, encoding, callback) {
    const state = this._writableState;
    if (typeof encoding === "function") {
      callback = encoding;
      encoding = undefined;
    }
    encoding ??= state.defaultEncoding;
    callback = typeof callback === "function" ? callback : () => {};
    let error = null;
    if (chunk === null) {
      error = codedError(TypeError, "ERR_STREAM_NULL_VALUES", "May not write null values to stream");
    } else if (state.ending) {
      error = codedError(Error, "ERR_STREAM_WRITE_AFTER_END", "write after end");
    } else if (state.destroyed) {
      error = codedError(Error, "ERR_STREAM_DESTROYED", "Cannot call write after a stream was destroyed");
    } else if (!state.objectMode) {
      if (typeof chunk === "string") {
        if (state.decodeStrings) {
          chunk = Buffer.from(chunk, encoding);
          encoding = "buffer";
        }
      } else if (chunk instanceof Uint8Array) {
        if (!(chunk instanceof Buffer)) chunk = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        encoding = "buffer";
      } else {
        error = codedError(TypeError, "ERR_INVALID_ARG_TYPE", 'The "chunk" argument must be of type string or an instance of Buffer or Uint8Array');
      }
    }
    if (error !== null) {
      nextTick(callback, error);
      if (!state.destroyed) this.destroy(error);
      return false;
    }
    const size = state.objectMode ? 1 : chunk.length;
    state.length += size;
    const below = state.length < state.highWaterMark;
    if (!below) state.needDrain = true;
    if (state.writing || state.corked > 0 || state.errored) {
      state.buffer.push({ chunk, encoding, callback, size });
    } else {
      doWrite(this, chunk, encoding, callback, size);
    }
    return below && !state.errored && !state.destroyed;
  },

  end(chunk, encoding, callback) {
    const state = this._writableState;
    if (typeof chunk === "function") {
      callback = chunk;
      chunk = undefined;
    } else if (typeof encoding === "function") {
      callback = encoding;
      encoding = undefined;
    }
    if (chunk !== undefined && chunk !== null) this.write(chunk, encoding);
    if (state.corked > 0) {
      state.corked = 1;
      this.uncork();
    }
    if (typeof callback === "function") {
      if (state.finished) nextTick(callback);
      else if (state.ending && state.errored) nextTick(callback, state.errored);
      else {
        this.once("finish", () => callback());
        this.once("error", (error) => callback(error));
      }
    }
    if (!state.ending) {
      state.ending = true;
      maybeFinish(this);
      state.ended = true;
    }
    return this;
  },

  cork() {
    this._writableState.corked++;
  },

  uncork() {
    const state = this._writableState;
    if (state.corked > 0) {
      state.corked--;
      if (state.corked === 0 && !state.writing) clearBuffer(this);
    }
  },

  setDefaultEncoding(encoding) {
    this._writableState.defaultEncoding = encoding;
    return this;
  },

  _final: undefined,
};

function doWrite(stream, chunk, encoding, callback, size) {
  const state = stream._writableState;
  state.writing = true;
  let called = false;
  const onWrite = (error) => {
    if (called) {
      stream.destroy(codedError(Error, "ERR_MULTIPLE_CALLBACK", "Callback called multiple times"));
      return;
    }
    called = true;
    state.writing = false;
    state.length -= size;
    if (error) {
      nextTick(callback, error);
      stream.destroy(error);
      return;
    }
    nextTick(() => {
      callback(null);
      if (state.buffer.length > 0 && state.corked === 0) {
        clearBuffer(stream);
      } else {
        if (state.needDrain && state.length === 0 && !state.ending && !state.destroyed) {
          state.needDrain = false;
          stream.emit("drain");
        }
        maybeFinish(stream);
      }
    });
  };
  try {
    stream._write(chunk, encoding, onWrite);
  } catch (error) {
    onWrite(error);
  }
}

function clearBuffer(stream) {
  const state = stream._writableState;
  if (state.writing || state.destroyed) return;
  const next = state.buffer.shift();
  if (next === undefined) {
    maybeFinish(stream);
    return;
  }
  doWrite(stream, next.chunk, next.encoding, next.callback, next.size);
}

function maybeFinish(stream) {
  const state = stream._writableState;
  if (!state.ending || state.finished || state.writing || state.buffer.length > 0 || state.destroyed || state.errored) {
    return;
  }
  if (state.finalCalled) return;
  state.finalCalled = true;
  const finish = (error) => {
    if (error) {
      stream.destroy(error);
      return;
    }
    state.finished = true;
    nextTick(() => {
      if (state.destroyed) return;
      stream.emit("finish");
      const r = stream._readableState;
      if (state.autoDestroy && (!r || (r.endEmitted && r.autoDestroy !== false))) stream.destroy();
    });
  };
  if (typeof stream._final === "function") {
    nextTick(() => {
      try {
        stream._final(finish);
      } catch (error) {
        finish(error);
      }
    });
  } else {
    finish(null);
  }
}

const writableGetters = {
  writable() {
    const s = this._writableState;
    return !s.destroyed && !s.ending && !s.errored;
  },
  writableEnded() {
    return this._writableState.ending;
  },
  writableFinished() {
    return this._writableState.finished;
  },
  writableLength() {
    return this._writableState.length;
  },
  writableHighWaterMark() {
    return this._writableState.highWaterMark;
  },
  writableObjectMode() {
    return this._writableState.objectMode;
  },
  writableCorked() {
    return this._writableState.corked;
  },
  writableNeedDrain() {
    const s = this._writableState;
    return !s.destroyed && !s.ending && s.needDrain;
  },
  writableAborted() {
    const s = this._writableState;
    return s.destroyed && !s.finished;
  },
};

Object.assign(Writable.prototype, WritableMethods);
Writable.prototype._destroy = defaultDestroy;
Writable.prototype.destroy = destroy;
defineGetters(Writable.prototype, writableGetters);
defineGetters(Writable.prototype, {
  destroyed() {
    return this._writableState.destroyed;
  },
  closed() {
    return this._writableState.closed;
  },
  errored() {
    return this._writableState.errored;
  },
});

Writable.fromWeb = function (writableStream, options = {}) {
  const writer = writableStream.getWriter();
  return new Writable({
    ...options,
    write(chunk, _encoding, callback) {
      writer.write(chunk).then(() => callback(), callback);
    },
    final(callback) {
      writer.close().then(() => callback(), callback);
    },
    destroy(error, callback) {
      writer.abort(error).then(() => callback(error), () => callback(error));
    },
  });
};

Writable.toWeb = function (writable) {
  return new WritableStream({
    write(chunk) {
      return new Promise((resolve, reject) => {
        writable.write(chunk, (error) => (error ? reject(error) : resolve()));
      });
    },
    close() {
      return new Promise((resolve) => writable.end(resolve));
    },
    abort(reason) {
      writable.destroy(reason);
    },
  });
};

// --- Duplex, Transform, PassThrough --------------------------------------------------------
export function Duplex(options = {}) {
  if (!(this instanceof Duplex)) return new Duplex(options);
  Readable.call(this, options);
  initWritable(this, options ?? {}, true);
  this.allowHalfOpen = options?.allowHalfOpen !== false;
  if (options?.readable === false) {
    this._readableState.ended = true;
    this._readableState.endEmitted = true;
  }
  if (options?.writable === false) {
    this._writableState.ending = true;
    this._writableState.finished = true;
  }
}
inherit(Duplex, Readable);
Object.assign(Duplex.prototype, WritableMethods);
defineGetters(Duplex.prototype, writableGetters);

Duplex.from = function (body) {
  if (body instanceof Duplex) return body;
  if (body instanceof Readable) return body;
  if (typeof body?.[Symbol.asyncIterator] === "function" || typeof body?.[Symbol.iterator] === "function") {
    return Readable.from(body);
  }
  throw codedError(TypeError, "ERR_INVALID_ARG_TYPE", "Duplex.from: unsupported body");
};

export function Transform(options = {}) {
  if (!(this instanceof Transform)) return new Transform(options);
  Duplex.call(this, options);
  if (typeof options?.transform === "function") this._transform = options.transform;
  if (typeof options?.flush === "function") this._flush = options.flush;
  this._pendingWriteCallback = null;
}
inherit(Transform, Duplex);

Transform.prototype._transform = function (_chunk, _encoding, _callback) {
  throw codedError(Error, "ERR_METHOD_NOT_IMPLEMENTED", "The _transform() method is not implemented");
};

Transform.prototype._write = function (chunk, encoding, callback) {
  const readable = this._readableState;
  this._transform(chunk, encoding, (error, data) => {
    if (error) {
      callback(error);
      return;
    }
    if (data !== undefined && data !== null) this.push(data);
    if (readable.length < readable.highWaterMark || readable.flowing) callback();
    else this._pendingWriteCallback = callback;
  });
};

Transform.prototype._read = function () {
  const callback = this._pendingWriteCallback;
  this._readableState.reading = false;
  if (callback !== null) {
    this._pendingWriteCallback = null;
    callback();
  }
};

Transform.prototype._final = function (callback) {
  const done = (error, data) => {
    if (error) {
      callback(error);
      return;
    }
    if (data !== undefined && data !== null) this.push(data);
    this.push(null);
    callback();
  };
  if (typeof this._flush === "function") this._flush(done);
  else done();
};

export function PassThrough(options = {}) {
  if (!(this instanceof PassThrough)) return new PassThrough(options);
  Transform.call(this, options);
}
inherit(PassThrough, Transform);
PassThrough.prototype._transform = function (chunk, _encoding, callback) {
  callback(null, chunk);
};

// --- finished, pipeline, addAbortSignal ----------------------------------------------------
/** Calls `callback(error?)` once `stream` has ended, finished, errored or closed early. */
export function finished(stream, options, callback) {
  if (typeof options === "function") {
    callback = options;
    options = {};
  }
  options ??= {};
  const r = stream._readableState;
  const w = stream._writableState;
  const wantReadable = options.readable ?? !!r;
  const wantWritable = options.writable ?? !!w;
  let readableDone = !wantReadable || !r || r.endEmitted;
  let writableDone = !wantWritable || !w || w.finished;
  let called = false;
  const done = (error) => {
    if (called) return;
    called = true;
    cleanup();
    callback.call(stream, error);
  };
  const onEnd = () => {
    readableDone = true;
    if (writableDone) done();
  };
  const onFinish = () => {
    writableDone = true;
    if (readableDone) done();
  };
  const onError = (error) => done(error);
  const onClose = () => {
    if ((r?.errored ?? w?.errored)) return done(r?.errored ?? w?.errored);
    if ((wantReadable && r && !r.endEmitted) || (wantWritable && w && !w.finished)) {
      return done(codedError(Error, "ERR_STREAM_PREMATURE_CLOSE", "Premature close"));
    }
    done();
  };
  const cleanup = () => {
    stream.removeListener("end", onEnd);
    stream.removeListener("finish", onFinish);
    stream.removeListener("error", onError);
    stream.removeListener("close", onClose);
  };
  stream.on("end", onEnd);
  stream.on("finish", onFinish);
  if (options.error !== false) stream.on("error", onError);
  stream.on("close", onClose);
  const errored = r?.errored ?? w?.errored;
  if (errored) nextTick(done, errored);
  else if (readableDone && writableDone) nextTick(done);
  else if ((r ?? w)?.closed) nextTick(onClose);
  return cleanup;
}

function isStream(value) {
  return value !== null && typeof value === "object" && typeof value.on === "function" &&
    (value._readableState !== undefined || value._writableState !== undefined || typeof value.pipe === "function");
}

/**
 * Pipes streams into each other; the first may be an (async) iterable, later ones may be
 * async generator functions taking the previous step as an iterable. Calls `callback(error?)`
 * when the last one finishes or any fails (then all are destroyed).
 */
export function pipeline(...streams) {
  const callback = typeof streams[streams.length - 1] === "function" && streams.length > 1 &&
      !isStream(streams[streams.length - 1])
    ? streams.pop()
    : null;
  if (Array.isArray(streams[0]) && streams.length === 1) streams = streams[0];
  if (callback === null) throw codedError(TypeError, "ERR_INVALID_ARG_TYPE", 'The "callback" argument must be of type function');
  if (streams.length < 2) throw codedError(TypeError, "ERR_MISSING_ARGS", 'The "streams" argument must be specified');

  const stages = [];
  let previous = null;
  let lastPromise = null;
  for (let i = 0; i < streams.length; i++) {
    let stage = streams[i];
    if (typeof stage === "function") {
      const result = stage(previous ?? (async function* () {})());
      if (i === streams.length - 1 && typeof result?.then === "function") {
        lastPromise = result;
        break;
      }
      stage = Readable.from(result, { objectMode: true });
    } else if (!isStream(stage)) {
      stage = Readable.from(stage, { objectMode: true });
    }
    stages.push(stage);
    // A generator step reads `previous` itself; a stream step is piped into.
    if (previous !== null && typeof streams[i] !== "function") previous.pipe(stage);
    previous = stage;
  }

  let failed = false;
  const fail = (error) => {
    if (failed) return;
    failed = true;
    for (const stage of stages) if (!stage.destroyed) stage.destroy(error);
    callback(error);
  };
  for (let i = 0; i < stages.length; i++) {
    const last = i === stages.length - 1 && lastPromise === null;
    finished(stages[i], { readable: last ? undefined : true, writable: last ? true : undefined }, (error) => {
      if (error) return fail(error);
      if (last && !failed) {
        failed = true;
        callback();
      }
    });
  }
  if (lastPromise !== null) {
    lastPromise.then((value) => {
      if (!failed) {
        failed = true;
        callback(undefined, value);
      }
    }, fail);
  }
  return stages[stages.length - 1];
}

export function addAbortSignal(signal, stream) {
  const onAbort = () => stream.destroy(Object.assign(new DOMException("The operation was aborted", "AbortError"), { cause: signal.reason }));
  if (signal.aborted) nextTick(onAbort);
  else signal.addEventListener("abort", onAbort, { once: true });
  return stream;
}

export function isReadable(stream) {
  return !!stream?._readableState && stream.readable;
}

export function isWritable(stream) {
  return !!stream?._writableState && stream.writable;
}

export function isErrored(stream) {
  return !!(stream?._readableState?.errored ?? stream?._writableState?.errored);
}

export function isDisturbed(stream) {
  return Readable.isDisturbed(stream);
}

export const promises = {
  pipeline(...streams) {
    let signal;
    const last = streams[streams.length - 1];
    if (last !== null && typeof last === "object" && !isStream(last) && typeof last[Symbol.asyncIterator] !== "function" &&
      typeof last[Symbol.iterator] !== "function") {
      signal = streams.pop().signal;
    }
    return new Promise((resolve, reject) => {
      const tail = pipeline(...streams, (error, value) => (error ? reject(error) : resolve(value)));
      if (signal) addAbortSignal(signal, tail);
    });
  },
  finished(stream, options = {}) {
    return new Promise((resolve, reject) => {
      finished(stream, options, (error) => (error ? reject(error) : resolve()));
    });
  },
};

Stream.Stream = Stream;
Stream.Readable = Readable;
Stream.Writable = Writable;
Stream.Duplex = Duplex;
Stream.Transform = Transform;
Stream.PassThrough = PassThrough;
Stream.pipeline = pipeline;
Stream.finished = finished;
Stream.addAbortSignal = addAbortSignal;
Stream.promises = promises;
Stream.isReadable = isReadable;
Stream.isWritable = isWritable;
Stream.isErrored = isErrored;
Stream.isDisturbed = isDisturbed;
Stream.getDefaultHighWaterMark = getDefaultHighWaterMark;
Stream.setDefaultHighWaterMark = setDefaultHighWaterMark;
Readable.Readable = Readable;

export default Stream;
