//! The one session recipe: every SessionState the engine builds comes from here. A job's
//! session ([`job_session_with`]) reads each input as one ordered stream (one partition, no
//! repartitioning), splits its memory between DataFusion's operators and the engine's own
//! buffers, and plans the operator; a user's own session gets the operator's planner added
//! ([`with_query_planner`]) and nothing else changed.

use std::sync::Arc;

use datafusion::execution::context::QueryPlanner;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::exec::dispatch::EngineMemoryPool;
use crate::exec::ParallelRunQueryPlanner;
use crate::input::LocalParquetFactory;

/// A session configured for deterministic input order, with parallel-run's planner.
pub fn job_session() -> SessionContext {
    job_session_with(None)
}

/// [`job_session`] with a memory limit for the engine's buffers and grouping (partition_keys
/// spill to disk beyond it). `None`: half of the machine's memory.
pub fn job_session_with(memory_limit: Option<u64>) -> SessionContext {
    let limit = memory_limit.unwrap_or_else(default_memory_limit) as usize;
    // What a sort keeps back for merging its spill files: DataFusion's 10 MB default would
    // not fit small limits.
    let sort_reserve = (limit / 32).clamp(64 * 1024, 10 * 1024 * 1024);
    // Half for DataFusion's operators (sorts spill beyond it), half for the engine's own
    // buffers (see EngineMemoryPool).
    let engine_pool = EngineMemoryPool(Arc::new(GreedyMemoryPool::new(limit / 2)));
    let runtime = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_max_spill_merge_fan_in(spill_merge_fan_in(limit)),
        )
        .with_memory_pool(Arc::new(FairSpillPool::new(limit / 2)))
        .build_arc()
        .unwrap_or_else(|_| Arc::new(RuntimeEnv::default()));
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_repartition_file_scans(false)
        .with_round_robin_repartition(false)
        .with_batch_size(8192)
        // Plain Utf8 strings: what pandas and every writer handle best, and no view buffers
        // shared between mini-batches.
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_usize(
            "datafusion.execution.sort_spill_reservation_bytes",
            sort_reserve,
        )
        .set_usize(
            "datafusion.execution.sort_in_place_threshold_bytes",
            sort_reserve,
        )
        .with_extension(Arc::new(engine_pool));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_table_factory("PARQUET".into(), Arc::new(LocalParquetFactory))
        .with_query_planner(Arc::new(ParallelRunQueryPlanner))
        .build();
    SessionContext::new_with_state(state)
}

/// What one spill file costs while a sort merges it: DataFusion reserves 4 sort batches for
/// it, but its reader grows each batch's buffer by doubling, reads 2 batches ahead, and the
/// allocator keeps much of what the reader frees. Measured on keyed-20M (8192-row batches of
/// about 130 bytes a row): about 14 MB of RSS per merged file.
const MERGED_SPILL_FILE_BYTES: usize = 16 * 1024 * 1024;

/// How many spill files one merge pass of a sort may read at once, for a job `limit`: as many
/// as DataFusion's half of it holds at [`MERGED_SPILL_FILE_BYTES`] each, at least 4.
/// Unbounded, a sort over data many times the limit merged as many files as its reservation
/// allowed (15 on keyed-20M), and the parent's RSS grew with the data (334 MB vs 204 MB at 4
/// for a 128 MB limit); bounded, more data means more merge passes, not more memory.
pub fn spill_merge_fan_in(limit: usize) -> usize {
    (limit / 2 / MERGED_SPILL_FILE_BYTES).clamp(4, 64)
}

/// Half of the machine's physical memory (4 GiB when it cannot be read).
pub fn default_memory_limit() -> u64 {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page_size > 0 {
        (pages as u64).saturating_mul(page_size as u64) / 2
    } else {
        4 << 30
    }
}

/// `state` (a user's session: its tables, settings and runtime) with `planner` as its query
/// planner and, when given, `config` as its settings.
pub fn with_query_planner(
    state: SessionState,
    config: Option<SessionConfig>,
    planner: Arc<dyn QueryPlanner + Send + Sync>,
) -> SessionState {
    let mut builder = SessionStateBuilder::new_from_existing(state);
    if let Some(config) = config {
        // The session's catalogs exist: a fresh default catalog would replace the one holding
        // its tables.
        builder = builder.with_config(config.with_create_default_catalog_and_schema(false));
    }
    builder.with_query_planner(planner).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_merge_a_bounded_number_of_spill_files_that_grows_with_the_limit() {
        assert_eq!(spill_merge_fan_in(128 * 1000 * 1000), 4);
        assert_eq!(spill_merge_fan_in(6 * 1024 * 1024), 4);
        assert_eq!(spill_merge_fan_in(1 << 30), 32);
        assert_eq!(spill_merge_fan_in(usize::MAX), 64);
        // The job session uses it (0 would be DataFusion's default: unbounded).
        let ctx = job_session_with(Some(128 * 1000 * 1000));
        let fan_in = ctx.runtime_env().disk_manager.max_spill_merge_fan_in();
        assert_eq!(fan_in, 4);
    }
}
