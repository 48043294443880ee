//! dorun: a self-hosted Cloudflare Durable Objects runtime.
//!
//! # Layout
//! - [`admin`]: the admin listener (JSON API, metrics, health, web page), separate from
//!   the front door.
//! - [`backup`]: `dorun export` / `dorun import` (SQLite online backup, JSON dumps).
//! - [`admin_client`]: the CLI's client of the admin listener (`import --admin`, `inspect`).
//! - [`inspect`]: `dorun inspect`, the admin API as terminal tables.
//! - [`watch`]: `dorun serve --watch`, a parent that restarts `dorun serve` on file changes.
//! - [`ephemeral`]: the `--ephemeral` data directory, removed on exit.
//! - [`devtools`]: `--inspect`, the Chrome DevTools endpoint bridged to each isolate's inspector.
//! - [`config`]: wrangler.toml / wrangler.json / wrangler.jsonc, read as wrangler reads them.
//! - [`migrations`]: Durable Object migrations applied to the data directory at startup.
//! - [`build`]: wrangler's `[build]` command, run before the Worker loads.
//! - [`workers`]: the worker assembly: configs -> worker specs -> running pools (with
//!   migrations, `script_name` links and static assets), shared by `serve`, `check` and
//!   in-process use.
//! - [`client_ip`]: `CF-Connecting-IP` from the TCP peer or, behind `--trust-proxy`, the
//!   forwarding headers.
//! - [`cli`]: the `dorun` command line (`serve`, `check`): arguments, logging, signals.
//! - [`crons`]: cron triggers: `scheduled()` at each pattern's minutes, and on demand.
//! - [`queues`]: queue consumers: stored messages to `queue()` in batches, and settled.
//! - [`workflows`]: the Workflows engine: instances run, and resumed after sleeps, events and restarts.
//! - [`server`]: the HTTP front door (hyper): accepts connections, gives each request its
//!   absolute URL and `CF-Connecting-IP`, hands it to the Worker pool, logs one line per
//!   request, and drains in-flight requests on shutdown; [`connections`]: its connection
//!   budget and the deadlines of idle connections.
//! - [`websocket`]: completes WebSocket upgrades the Worker accepted and pumps frames
//!   between clients and the socket registry (tokio-tungstenite).
//!
//! The JavaScript side (isolate threads, module loading, Web APIs) is `dorun-runtime`.

pub mod admin;
pub mod admin_client;
pub mod backup;
pub mod build;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod crons;
pub mod d1;
pub mod devtools;
pub mod ephemeral;
pub mod inspect;
pub mod migrations;
pub mod parent;
pub mod queues;
pub mod restore;
pub mod server;
pub mod watch;
pub mod websocket;
pub mod workers;
pub mod workflows;
