use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(enrollhook::background::runtime_workers())
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(enrollhook::cli::main()),
        Err(e) => {
            eprintln!("enrollhook: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
