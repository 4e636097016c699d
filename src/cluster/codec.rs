//! [`PrsPhysicalCodec`]: how a `ParallelRunExec` travels between the driver, the scheduler
//! and the executors of a Ballista cluster.
//!
//! Our bytes are [`PRS_MAGIC`], the encoding process's parallel-run version (a length byte,
//! then the text), the operator's mode, then the [`OperatorSpec`] bytes (the plan as a
//! value, versioned). A process of another parallel-run version refuses to decode them,
//! naming both versions (see [`super::gate`]); the operator's children (the manifest leaf) are encoded by
//! DataFusion's own converter. Everything that is not ours (shuffle writers and readers...)
//! goes to Ballista's codec. The first stage of a `partition_keys` job has our other node,
//! [`KeyedReadExec`]: the same magic and version, the byte `0x80` where the mode goes, then
//! its own bytes (input name and rows schema). Decoding is pure: the scheduler decodes every stage plan, and
//! its host may have no Python and none of the job's files; the runtime (worker factory) is
//! built at the operator's first `execute()`, by the [`RuntimeProvider`] of the process.

use std::fmt;
use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::cluster::advertised_version;
use crate::error::PrsError;
use crate::exec::keyed_shared::KeyedReadExec;
use crate::exec::{ExecMode, OperatorSpec, ParallelRunExec, RuntimeProvider};

/// The first bytes of an encoded `ParallelRunExec`. Ballista's own nodes are protobuf
/// messages, whose first byte is a field tag (never `P` followed by these).
pub const PRS_MAGIC: &[u8; 4] = b"PRS\x01";

/// The physical codec of every parallel-run process of a cluster (driver, scheduler,
/// executors): ours for `ParallelRunExec`, Ballista's for the rest.
pub struct PrsPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
    runtimes: Arc<dyn RuntimeProvider>,
    /// The parallel-run version written into, and required of, our bytes.
    version: String,
}

impl fmt::Debug for PrsPhysicalCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrsPhysicalCodec").finish_non_exhaustive()
    }
}

impl PrsPhysicalCodec {
    /// A codec whose decoded operators build their runtime with `runtimes` (when they run),
    /// of this process's [`advertised_version`].
    pub fn new(runtimes: Arc<dyn RuntimeProvider>) -> Self {
        PrsPhysicalCodec {
            inner: BallistaPhysicalExtensionCodec::default(),
            runtimes,
            version: advertised_version(),
        }
    }

    /// Checks the version at the start of `body` (after the magic): the rest when it is ours.
    fn strip_version<'a>(&self, body: &'a [u8]) -> Result<&'a [u8]> {
        let truncated =
            || DataFusionError::Plan("ParallelRunExec: the encoded operator is cut short".into());
        let (length, rest) = body.split_first().ok_or_else(truncated)?;
        let (version, rest) = rest
            .split_at_checked(usize::from(*length))
            .ok_or_else(truncated)?;
        if version != self.version.as_bytes() {
            return Err(DataFusionError::Plan(format!(
                "ParallelRunExec: the plan comes from parallel-run {} (the driver or the \
                 scheduler), this process runs parallel-run {}: run the same parallel-run \
                 version on the driver, the scheduler and every executor",
                String::from_utf8_lossy(version),
                self.version
            )));
        }
        Ok(rest)
    }
}

fn mode_byte(mode: ExecMode) -> u8 {
    match mode {
        ExecMode::Local => 0,
        ExecMode::Manifest => 1,
        ExecMode::Keyed => 2,
    }
}

/// The "mode" byte of a [`KeyedReadExec`] (the first stage of a `partition_keys` job).
const KEYED_READ: u8 = 0x80;

fn mode_of(byte: u8) -> Result<ExecMode> {
    match byte {
        0 => Ok(ExecMode::Local),
        1 => Ok(ExecMode::Manifest),
        2 => Ok(ExecMode::Keyed),
        other => Err(DataFusionError::Plan(format!(
            "ParallelRunExec: unknown operator mode {other}: run the same parallel-run version \
             on the driver, the scheduler and every executor"
        ))),
    }
}

impl PhysicalExtensionCodec for PrsPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(body) = buf.strip_prefix(PRS_MAGIC.as_slice()) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let body = self.strip_version(body)?;
        let (mode, spec) = body.split_first().ok_or_else(|| {
            DataFusionError::Plan("ParallelRunExec: the encoded operator is empty".into())
        })?;
        if *mode == KEYED_READ {
            let leaf = match inputs {
                [leaf] => leaf.clone(),
                _ => {
                    return Err(DataFusionError::Plan(
                        "KeyedReadExec: expected one input (its row chunks)".into(),
                    ))
                }
            };
            let exec = KeyedReadExec::decode(spec, leaf).map_err(PrsError::into_datafusion)?;
            return Ok(Arc::new(exec));
        }
        let spec = OperatorSpec::decode(spec).map_err(PrsError::into_datafusion)?;
        let exec = ParallelRunExec::deferred(
            mode_of(*mode)?,
            inputs.to_vec(),
            Arc::new(spec),
            self.runtimes.clone(),
        )
        .map_err(PrsError::into_datafusion)?;
        Ok(Arc::new(exec))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let (mode, body) = if let Some(exec) = node.downcast_ref::<ParallelRunExec>() {
            let spec = exec.spec().encode().map_err(PrsError::into_datafusion)?;
            (mode_byte(exec.mode()), spec)
        } else if let Some(read) = node.downcast_ref::<KeyedReadExec>() {
            let body = read.encode().map_err(PrsError::into_datafusion)?;
            (KEYED_READ, body)
        } else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let version = self.version.as_bytes();
        let length = u8::try_from(version.len()).map_err(|_| {
            DataFusionError::Plan(format!(
                "ParallelRunExec: version {:?} is longer than 255 bytes",
                self.version
            ))
        })?;
        buf.extend_from_slice(PRS_MAGIC);
        buf.push(length);
        buf.extend_from_slice(version);
        buf.push(mode);
        buf.extend_from_slice(&body);
        Ok(())
    }
}
