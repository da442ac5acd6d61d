//! indicatif bars behind the engine's `Progress` trait.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

use shardann_engine::progress::Progress;

/// One bar per stage, drawn on stderr; hidden when stderr is not a terminal.
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
    quiet: bool,
    template: &'static str,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            current: Mutex::new(None),
            quiet,
            template: "{msg:32} [{bar:30}] {human_pos}/{human_len} ({eta} left)",
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
            b.set_message(name.to_string());
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
