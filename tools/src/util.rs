//! Small helpers shared by the commands.

use std::path::Path;

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of the sizes of the regular files in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `1.23 GiB`-style sizes for people.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The git commit this binary was built from (`+dirty` when tracked files
/// differed from it), recorded by `tools/build.rs`.
pub fn git_commit() -> String {
    env!("SHARDANN_GIT_COMMIT").to_string()
}

/// Runs `f` on a rayon pool of `threads` threads (0 = all cores).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} threads: {e}"))?;
    Ok(pool.install(f))
}

/// Number of cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `$body` with `$t` bound to the Rust type of element type `$elem`.
#[macro_export]
macro_rules! with_elem {
    ($elem:expr, $t:ident => $body:expr) => {
        match $elem {
            shardann_engine::ElemType::U8 => {
                type $t = u8;
                $body
            }
            shardann_engine::ElemType::I8 => {
                type $t = i8;
                $body
            }
            shardann_engine::ElemType::F32 => {
                type $t = f32;
                $body
            }
        }
    };
}

/// The filter of each of `n` queries: `--filter JSON` (the same for all),
/// `--filters FILE` (JSON Lines, line i for query i; `{}` or a blank line
/// for none), or neither (no filter).
pub fn load_filters(
    one: Option<&str>,
    file: Option<&Path>,
    n: usize,
) -> anyhow::Result<Vec<Option<shardann_engine::filter::Filter>>> {
    use anyhow::Context;
    use shardann_engine::filter::Filter;
    let parse = |text: &str, what: &str| -> anyhow::Result<Filter> {
        let json: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{what}: not JSON"))?;
        Filter::parse(&json).with_context(|| what.to_string())
    };
    match (one, file) {
        (Some(_), Some(_)) => anyhow::bail!("give --filter or --filters, not both"),
        (Some(text), None) => {
            let f = parse(text, "--filter")?;
            Ok(vec![Some(f); n])
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading filters from {}", path.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() < n {
                anyhow::bail!(
                    "{} has {} lines, but there are {n} queries: one filter per query",
                    path.display(),
                    lines.len()
                );
            }
            lines
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, l)| {
                    if l.trim().is_empty() {
                        return Ok(None);
                    }
                    parse(l, &format!("{} line {}", path.display(), i + 1)).map(Some)
                })
                .collect()
        }
        (None, None) => Ok(vec![None; n]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.00 MiB");
    }
}
