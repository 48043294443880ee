//! End-to-end tests: real `dorun` processes on 127.0.0.1, real HTTP clients.
//! Fixtures (a Worker + its config each) live in `tests/fixtures/`.

mod harness;

mod alarms;
mod api_gaps;
mod assets;
mod cache;
mod commonjs;
mod config;
mod entry;
mod errors;
mod examples;
mod exports;
mod handlers;
mod many_objects;
mod modules;
mod multi;
mod node_compat;
mod objects;
mod streaming;
mod web_apis;
mod websockets;
