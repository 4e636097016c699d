//! Multi-node runs on an Apache DataFusion Ballista 55 cluster: the codec that carries
//! `ParallelRunExec` between processes ([`codec`]), and our own `scheduler` and `executor`
//! processes built from the Ballista libraries with that codec ([`server`]).

pub mod codec;
pub mod server;

pub use codec::{PrsPhysicalCodec, PRS_MAGIC};
