//! Product quantization: compressed vectors held in RAM to steer the search.
//!
//! ```text
//!  vector (dim) ──prepare──► f32 (normalized for cosine) ──split──► M chunks
//!                                                                   │
//!   chunk m ──nearest of 256 centroids (crate::kmeans on a sample)──► code byte m
//!
//!  query ──► QueryTable: M × 256 partial distances ──► ADC: Σ_m table[m][code[m]]
//! ```
//!
//! | file | what |
//! |---|---|
//! | `codes.rs` | [`Codes`]: the code bytes, aligned to cache lines |
//! | `encode.rs` | [`PqCodebook`]: chunking, centring, encoding, decoding |
//! | `table.rs` | [`QueryTable`]: asymmetric distance computation (ADC) |
//!
//! For L2 the codebook quantizes `x - μ` (μ the sample mean): centring makes
//! the chunks' centroids spend their precision on the spread of the data, not
//! on its offset. For inner product the same reconstruction `x ≈ μ + c` is
//! used, and the table adds `⟨q, μ⟩` back, so an ADC value is exactly the
//! inner product with the reconstructed vector.

mod codes;
mod encode;
mod table;

pub use codes::Codes;
pub use encode::{PqCodebook, PqParams};
pub(crate) use table::prefetch_codes;
pub use table::QueryTable;
