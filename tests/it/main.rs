//! The one integration-test binary (every extra binary links DataFusion again).

mod common;
/// The object-storage servers, shared with the benchmark harness.
#[path = "../support/servers.rs"]
mod servers;

mod api;
mod azure;
mod batching;
mod cli;
mod cluster;
mod faults;
mod isolate;
mod mltable;
mod object_store;
mod outputs;
mod partition;
mod python;
mod resume;
mod sql;
