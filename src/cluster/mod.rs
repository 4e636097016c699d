//! Multi-node runs on an Apache DataFusion Ballista 55 cluster: the codec that carries
//! `ParallelRunExec` between processes ([`codec`]).

pub mod codec;

pub use codec::{PrsPhysicalCodec, PRS_MAGIC};
