//! End-to-end tests: real `dorun` processes on 127.0.0.1, real HTTP clients.
//! Fixtures (a Worker + its config each) live in `tests/fixtures/`.

mod harness;

mod abuse;
mod admin;
mod admin_page;
mod alarms;
mod api_gaps;
mod assets;
mod backup;
mod cache;
mod commonjs;
mod config;
mod container;
mod crons;
mod d1;
mod devtools;
mod entry;
mod errors;
mod examples;
mod exports;
mod handlers;
mod hostile;
mod inspect;
mod integration_example;
mod kv;
mod local_bindings;
mod logs;
mod many_objects;
mod modules;
mod multi;
mod node_compat;
mod npm_package;
mod objects;
mod portable;
mod queues;
mod r2;
mod reference;
mod replication;
mod services;
mod streaming;
mod watch;
mod web_apis;
mod websockets;
mod workflows;
