//! Sentence embeddings: text in, unit vectors out, as sentence-transformers
//! computes them, from a model folder on local disk (no hub, no network).
//!
//! ```text
//!  model folder ─► model::Encoder::open (files cross-checked: config ↔ weights ↔ tokenizer ↔ pooling)
//!
//!  text ─► Encoder::tokenize (word pieces, cut to max_tokens, truncation flagged)
//!       ─► Encoder::embed_tokens (BERT, candle, CPU) ─► pool::mean_normalized ─► [f32; dim]
//!
//!  docs.jsonl ─► job::run: input ─► plan (fixed batches) ─► journal (checkpoint) ─► vectors.fbin
//!  part files ─► job::merge ─► vectors.fbin
//! ```
//!
//! | file | what |
//! |---|---|
//! | `model.rs` | [`Encoder`]: load and check a model folder; tokenize; embed a batch |
//! | `pool.rs` | mean pooling over the real tokens, L2 normalisation |
//! | `input.rs` | the JSON Lines input of a run: ids and the fields to embed, checked per line |
//! | `plan.rs` | which texts form which batch, fixed by the input alone; parts of whole windows |
//! | `journal.rs` | the checkpoint: durable records of finished batches (`format-spec/embed.md`) |
//! | `job.rs` | the batch job: run, resume, finish, merge parts |
//!
//! Inference runs on candle's CPU backend; its matrix products use the
//! calling thread's rayon pool, so the caller decides the threads (the CLI's
//! `--threads`). No async runtime and no threads of its own, as everywhere
//! in the engine.

pub mod input;
pub mod job;
pub mod journal;
pub mod model;
pub mod plan;
pub mod pool;

pub use job::{merge, run, JobReport, JobSpec, MergeReport};
pub use model::{Encoder, ModelInfo, Tokens, Workload};
