//! The `shardann` binary: a thin shell over [`shardann::run`].

fn main() -> std::process::ExitCode {
    let mut stdout = std::io::stdout().lock();
    match shardann::run(std::env::args_os(), &mut stdout) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // clap errors (including --help) print themselves.
            if let Some(clap_err) = e.downcast_ref::<clap::Error>() {
                let _ = clap_err.print();
                return if clap_err.use_stderr() {
                    std::process::ExitCode::from(2)
                } else {
                    std::process::ExitCode::SUCCESS
                };
            }
            eprintln!("error: {}", shardann::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
