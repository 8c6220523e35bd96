//! `huddle`: see `huddle --help`.

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("huddle: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(huddle_server::run_cli(std::env::args_os().skip(1).collect())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("huddle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
