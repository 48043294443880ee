// The pricing worker: reached only through service bindings, by JS RPC.
import { WorkerEntrypoint } from "cloudflare:workers";

const PRICES = { tea: 350, cake: 450, coffee: 300 };

export class Quotes extends WorkerEntrypoint {
  quote(items) {
    let total = 0;
    for (const { sku, qty } of items) {
      const price = PRICES[sku];
      if (price === undefined) throw new RangeError(`unknown sku "${sku}"`);
      total += price * qty;
    }
    return { total, currency: this.ctx.props.currency ?? "USD" };
  }
}

export default {
  fetch() {
    return new Response("pricing is reached through service bindings\n", { status: 404 });
  },
};
