// A plain JavaScript Worker: greets, echoes, and shows what the runtime passes in.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/":
        return new Response(`${env.GREETING} from dorun!\n`);
      case "/echo":
        // Streams the request body straight back.
        return new Response(request.body, {
          headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
        });
      case "/whoami":
        return Response.json({
          url: request.url,
          method: request.method,
          ip: request.headers.get("cf-connecting-ip"),
          userAgent: navigator.userAgent,
        });
      default:
        return new Response("Not found\n", { status: 404 });
    }
  },
};
