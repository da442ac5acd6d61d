//! A finished Vamana graph.

use std::collections::VecDeque;

/// Out-neighbour lists of every node plus the entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub(crate) adj: Vec<Vec<u32>>,
    pub(crate) max_degree: usize,
    pub(crate) medoid: u32,
}

impl Graph {
    /// Wraps adjacency lists; see [`Graph::check`] for what makes them valid.
    pub fn from_parts(adj: Vec<Vec<u32>>, max_degree: usize, medoid: u32) -> Self {
        Graph {
            adj,
            max_degree,
            medoid,
        }
    }
    pub fn len(&self) -> usize {
        self.adj.len()
    }
    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }
    pub fn max_degree(&self) -> usize {
        self.max_degree
    }
    pub fn medoid(&self) -> u32 {
        self.medoid
    }
    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.adj[i]
    }
    pub fn mean_degree(&self) -> f64 {
        self.adj.iter().map(Vec::len).sum::<usize>() as f64 / self.adj.len().max(1) as f64
    }

    /// Nodes reachable from the medoid, by breadth-first search.
    pub fn reachable(&self) -> Vec<bool> {
        let mut seen = vec![false; self.adj.len()];
        let mut queue = VecDeque::new();
        if let Some(s) = seen.get_mut(self.medoid as usize) {
            *s = true;
            queue.push_back(self.medoid);
        }
        while let Some(u) = queue.pop_front() {
            for &v in &self.adj[u as usize] {
                if let Some(s) = seen.get_mut(v as usize) {
                    if !*s {
                        *s = true;
                        queue.push_back(v);
                    }
                }
            }
        }
        seen
    }

    /// Checks the invariants every index relies on: degree ≤ R, no self
    /// loops, no duplicate edges, every id in range, every node reachable
    /// from the medoid. Returns the first violation found.
    pub fn check(&self) -> Result<(), String> {
        let n = self.adj.len();
        if n > 0 && self.medoid as usize >= n {
            return Err(format!("medoid {} out of range (n = {n})", self.medoid));
        }
        for (i, list) in self.adj.iter().enumerate() {
            if list.len() > self.max_degree {
                return Err(format!(
                    "node {i} has degree {} > R = {}",
                    list.len(),
                    self.max_degree
                ));
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            for w in sorted.windows(2) {
                if w[0] == w[1] {
                    return Err(format!("node {i} lists neighbour {} twice", w[0]));
                }
            }
            for &j in list {
                if j as usize == i {
                    return Err(format!("node {i} has a self loop"));
                }
                if j as usize >= n {
                    return Err(format!("node {i} has neighbour {j} out of range (n = {n})"));
                }
            }
        }
        if let Some(u) = self.reachable().iter().position(|&r| !r) {
            return Err(format!(
                "node {u} is not reachable from the medoid {}",
                self.medoid
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_each_violation() {
        let ok = Graph::from_parts(vec![vec![1], vec![2], vec![0]], 1, 0);
        assert!(ok.check().is_ok());
        let cases = [
            (vec![vec![1, 2], vec![2], vec![0]], "degree"),
            (vec![vec![0], vec![2], vec![0]], "self loop"),
            (vec![vec![1], vec![7], vec![0]], "out of range"),
            (vec![vec![1], vec![0], vec![0]], "not reachable"),
        ];
        for (adj, what) in cases {
            let err = Graph::from_parts(adj, 1, 0).check().unwrap_err();
            assert!(err.contains(what), "{err}");
        }
        let dup = Graph::from_parts(vec![vec![1, 1], vec![0]], 2, 0);
        assert!(dup.check().unwrap_err().contains("twice"));
    }
}
