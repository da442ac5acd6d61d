//! `shardann embed`: a JSON Lines corpus to vectors with a sentence encoder
//! (engine::embed does the work; this file parses, reports and times).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use shardann_engine::embed::{self, Encoder, JobReport, JobSpec, ModelInfo};

use crate::cli::EmbedArgs;
use crate::progress::Bars;

/// The embed job of `spec` with the model in `model`, on `threads` threads
/// (0: every core), with a progress bar: what `embed` and `build
/// --embed-model` share. Returns the report, the model and the threads.
pub fn run_job(
    model: &Path,
    max_tokens: Option<usize>,
    spec: &JobSpec,
    threads: usize,
    quiet: bool,
) -> anyhow::Result<(JobReport, ModelInfo, usize)> {
    let threads = if threads == 0 {
        crate::util::cores()
    } else {
        threads
    };
    crate::util::with_threads(threads, || -> anyhow::Result<_> {
        let enc = Encoder::open(model, max_tokens)
            .with_context(|| format!("loading the model in {}", model.display()))?;
        let bars = Bars::with_rate(quiet, "docs");
        let r = embed::run(&enc, spec, &bars)
            .with_context(|| format!("embedding {}", spec.input.display()))?;
        Ok((r, enc.info().clone(), threads))
    })?
}

pub fn embed(a: &EmbedArgs, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(dir) = &a.merge {
        let r =
            embed::merge(dir).with_context(|| format!("merging the parts in {}", dir.display()))?;
        writeln!(
            out,
            "merged {} parts: {} documents ({} truncated) into {}",
            r.parts,
            r.documents,
            r.truncated,
            r.manifest
                .with_file_name(embed::job::VECTORS_FILE)
                .display()
        )?;
        return Ok(());
    }
    let (Some(model), Some(input), Some(out_dir)) = (&a.model, &a.input, &a.out) else {
        anyhow::bail!("embed needs --model, --input and --out (or --merge DIR)");
    };
    let spec = JobSpec {
        input: input.clone(),
        fields: a.fields.clone(),
        out: out_dir.clone(),
        batch: a.batch,
        part: a.part,
        window: a.window,
    };
    let started = Instant::now();
    let (r, info, threads) = run_job(model, a.max_tokens, &spec, a.threads, quiet)?;
    let secs = started.elapsed().as_secs_f64();
    let part = match a.part {
        Some((i, n)) => format!(" (part {i}/{n}: rows {}..{})", r.rows.start, r.rows.end),
        None => String::new(),
    };
    if r.already_done {
        writeln!(
            out,
            "already complete{part}: {} documents in {}",
            r.rows.len(),
            r.vectors.display()
        )?;
    } else {
        let rate = r.embedded as f64 / secs.max(1e-9);
        writeln!(
            out,
            "embedded {} documents{part} in {secs:.1} s ({rate:.1} docs/s, {threads} threads){}",
            r.embedded,
            if r.resumed > 0 {
                format!("; {} were done before the restart", r.resumed)
            } else {
                String::new()
            }
        )?;
        if r.slots > 0 {
            writeln!(
                out,
                "word pieces: {} ({:.1} % of the batch slots; the rest was padding)",
                r.tokens,
                100.0 * r.tokens as f64 / r.slots as f64
            )?;
        }
    }
    writeln!(
        out,
        "truncated: {} of {} texts were longer than {} word pieces and were cut",
        r.truncated,
        r.rows.len(),
        info.max_tokens
    )?;
    writeln!(
        out,
        "wrote {} ({} × {}), {}, {}",
        r.vectors.display(),
        r.rows.len(),
        info.dim,
        r.ids.display(),
        r.manifest.display()
    )?;
    Ok(())
}
