// Durable Object IDs and namespaces (`env.NAME`): IDs are derived in Rust (namespaces.rs),
// as workerd derives them; a namespace hands out stubs made by the RPC layer (06_rpc.js).

import { core, primordials } from "ext:core/mod.js";

const { Error, RangeError, String, TypeError } = primordials;

const { op_dorun_id_from_name, op_dorun_new_unique_id, op_dorun_id_from_string } = core.ops;

/** [namespace index, hex, name] of an id. */
let idParts;

export class DurableObjectId {
  #namespace;
  #hex;
  #name;
  constructor(namespace, hex, name) {
    this.#namespace = namespace;
    this.#hex = hex;
    this.#name = name;
  }
  toString() {
    return this.#hex;
  }
  equals(other) {
    return other instanceof DurableObjectId && other.#hex === this.#hex;
  }
  get name() {
    return this.#name;
  }
  get jurisdiction() {
    return undefined;
  }
  static {
    idParts = (id) => [id.#namespace, id.#hex, id.#name];
  }
}

export { idParts };

/** Makes the stub of an id; set by 03_rpc.js, which owns stubs. */
let makeStub = null;
export function setStubMaker(f) {
  makeStub = f;
}

const NOT_IMPLEMENTED_JURISDICTION = "Jurisdiction restrictions are not implemented in dorun.";

export class DurableObjectNamespace {
  #index;
  constructor(index) {
    this.#index = index;
  }
  idFromName(name) {
    name = String(name);
    return new DurableObjectId(this.#index, op_dorun_id_from_name(this.#index, name), name);
  }
  newUniqueId(options = undefined) {
    if (options?.jurisdiction != null) throw new Error(NOT_IMPLEMENTED_JURISDICTION);
    return new DurableObjectId(this.#index, op_dorun_new_unique_id(this.#index), undefined);
  }
  idFromString(text) {
    return new DurableObjectId(
      this.#index,
      op_dorun_id_from_string(this.#index, String(text)),
      undefined,
    );
  }
  get(id, options = undefined) {
    if (!(id instanceof DurableObjectId)) {
      throw new TypeError(
        "Failed to execute 'get' on 'DurableObjectNamespace': parameter 1 is not of type 'DurableObjectId'.",
      );
    }
    if (idParts(id)[0] !== this.#index) {
      throw new TypeError("ID is not for this Durable Object class.");
    }
    const mode = options?.routingMode;
    if (mode !== undefined && mode !== "primary-only") {
      throw new RangeError(`unknown routingMode: ${mode}`);
    }
    return makeStub(id);
  }
  getByName(name, options = undefined) {
    return this.get(this.idFromName(name), options);
  }
  jurisdiction(jurisdiction) {
    if (jurisdiction != null) throw new Error(NOT_IMPLEMENTED_JURISDICTION);
    return this;
  }
}
