//! The Mercato service kit: what every service needs, written once.
//!
//! It holds the service skeleton (configuration, HTTP bootstrap, errors, storage, idempotency,
//! token checks, health, metrics) and the contracts services share (typed ids, roles, the event
//! envelope). It deliberately holds no business rules: those live in each service's `domain`.

// An unwrap or expect in service code turns a case nobody handled into a crash; say what
// happens instead (tests may unwrap: a panic is how they fail).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod auth;
pub mod backoff;
pub mod chaos;
pub mod client;
pub mod config;
pub mod context;
pub mod contracts;
pub mod db;
pub mod demo;
pub mod events;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod redis;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod validate;

pub use problem::Problem;
