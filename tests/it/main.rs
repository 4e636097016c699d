//! The one integration-test binary (every extra binary links DataFusion again).

mod common;

mod api;
mod batching;
mod cli;
mod faults;
mod outputs;
mod python;
