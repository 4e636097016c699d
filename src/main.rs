//! The `parallel-run` binary: a thin wrapper over [`parallel_run::cli`].

use clap::Parser;

fn main() {
    let cli = parallel_run::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("parallel-run: error: cannot start the async runtime: {e}");
            std::process::exit(parallel_run::cli::EXIT_JOB_FAILED);
        }
    };
    let code = runtime.block_on(parallel_run::cli::main_with(
        cli,
        parallel_run::scripts::builtin_registry(),
    ));
    // Don't wait for abandoned blocking threads (e.g. a Rust run() that timed out).
    runtime.shutdown_background();
    std::process::exit(code);
}
