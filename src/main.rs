use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    enrollhook::cli::main().await
}
