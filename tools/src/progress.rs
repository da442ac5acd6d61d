//! indicatif bars behind the engine's `Progress` trait.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardann_engine::progress::Progress;

/// One bar per stage, drawn on stderr; hidden when stderr is not a terminal.
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
    quiet: bool,
    template: &'static str,
    /// Show the process's resident memory after the stage name (a build
    /// under a memory budget), refreshed at most every `MEMORY_EVERY`.
    memory: Option<Mutex<(String, Instant)>>,
}

const MEMORY_EVERY: Duration = Duration::from_millis(500);

/// Resident memory of this process now (Linux `/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            current: Mutex::new(None),
            quiet,
            template: "{msg:32} [{bar:30}] {human_pos}/{human_len} ({eta} left)",
            memory: None,
        }
    }

    /// Bars whose message also says the memory in use ("… · RSS 1.2 GiB").
    pub fn with_memory(quiet: bool) -> Self {
        Bars {
            memory: Some(Mutex::new((String::new(), Instant::now()))),
            template: "{msg:48} [{bar:30}] {human_pos}/{human_len} ({eta} left)",
            ..Bars::new(quiet)
        }
    }

    fn memory_message(name: &str) -> String {
        match resident_bytes() {
            Some(b) => format!("{name} · RSS {}", shardann_engine::error::fmt_bytes(b)),
            None => name.to_string(),
        }
    }

    /// Bars that also show the rate (`embed`: documents per second).
    pub fn with_rate(quiet: bool, unit: &'static str) -> Self {
        let template = match unit {
            "docs" => "{msg:12} [{bar:30}] {human_pos}/{human_len} docs, {per_sec}, {eta} left",
            _ => "{msg:12} [{bar:30}] {human_pos}/{human_len}, {per_sec}, {eta} left",
        };
        Bars {
            current: Mutex::new(None),
            quiet,
            template,
            memory: None,
        }
    }
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: u64) {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(self.template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            match &self.memory {
                Some(m) => {
                    if let Ok(mut m) = m.lock() {
                        *m = (name.to_string(), Instant::now());
                    }
                    b.set_message(Self::memory_message(name));
                }
                None => b.set_message(name.to_string()),
            }
            b
        };
        if let Ok(mut cur) = self.current.lock() {
            if let Some(old) = cur.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn inc(&self, n: u64) {
        if let Ok(cur) = self.current.lock() {
            if let Some(b) = cur.as_ref() {
                b.inc(n);
                if let Some(Ok(mut m)) = self.memory.as_ref().map(Mutex::lock) {
                    if m.1.elapsed() >= MEMORY_EVERY {
                        m.1 = Instant::now();
                        b.set_message(Self::memory_message(&m.0));
                    }
                }
            }
        }
    }

    fn finish_stage(&self) {
        if let Ok(mut cur) = self.current.lock() {
            if let Some(b) = cur.take() {
                b.finish_and_clear();
            }
        }
    }
}
