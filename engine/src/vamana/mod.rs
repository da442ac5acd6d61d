//! The Vamana graph of DiskANN (Subramanya et al., NeurIPS 2019).
//!
//! ```text
//!   random order of points ──► for each p (in parallel):
//!        greedy_search(p, L) from the medoid ──► pool = expanded ∪ N(p)
//!        N(p) = RobustPrune(p, pool, α, R)
//!        for j in N(p): add p to N(j); if |N(j)| > slack·R: N(j) = RobustPrune(j, N(j) ∪ {p})
//!   pass 1 with α = 1 (a sparse, navigable skeleton), pass 2 with the given α
//!   (long-range edges), then every node is pruned to ≤ R and connectivity
//!   from the medoid is repaired if a prune cut anything off.
//! ```
//!
//! | file | what |
//! |---|---|
//! | `graph.rs` | [`Graph`]: the finished adjacency lists and their invariants |
//! | `prune.rs` | RobustPrune: the α-rule that keeps edges diverse |
//! | `build.rs` | [`build`]: the two passes, greedy search, reverse edges |
//! | `mutable.rs` | [`MutableGraph`]: a graph grown one insert at a time (a shard's mutable part) |

mod build;
mod graph;
mod mutable;
mod prune;

pub use build::{build, VamanaParams};
pub use graph::Graph;
pub use mutable::MutableGraph;
pub(crate) use prune::{occludes, robust_prune};
