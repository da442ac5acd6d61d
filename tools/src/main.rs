//! The `shardann` binary: a thin shell over [`shardann::run`].

use std::io::Write;

/// The exit status of a process killed by SIGPIPE, as a shell reports it
/// (128 + 13).
const SIGPIPE_STATUS: u8 = 141;

fn main() -> std::process::ExitCode {
    let mut stdout = ClosedPipeAware {
        inner: std::io::stdout().lock(),
        closed: false,
    };
    let result = shardann::run(std::env::args_os(), &mut stdout);
    // `shardann search … | head -1`: the reader left, and what is left to
    // print has nobody to read it. End quietly, with the status `cat` or
    // `grep` would have (killed by SIGPIPE), rather than an error message.
    // Only a write to stdout counts: a peer closing a socket is a real error.
    if stdout.closed {
        return std::process::ExitCode::from(SIGPIPE_STATUS);
    }
    match result {
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

/// Stdout that remembers whether a write failed because the reading end of
/// its pipe closed.
///
/// Rust ignores SIGPIPE, so such a write returns `BrokenPipe` and the
/// command fails with it. Resetting SIGPIPE to its default instead would
/// also kill `shardann serve` whenever a client hangs up mid-answer: glommio
/// sends on sockets without `MSG_NOSIGNAL`.
struct ClosedPipeAware<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> ClosedPipeAware<W> {
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            self.closed = true;
        }
        r
    }
}

impl<W: Write> Write for ClosedPipeAware<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}
