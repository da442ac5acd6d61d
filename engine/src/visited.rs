//! A reusable visited set over dense node ids.

/// A bitset that remembers which words it dirtied, so clearing costs
/// O(touched) rather than O(n): one is reused for every greedy search a
/// build thread runs.
pub(crate) struct VisitedSet {
    bits: Vec<u64>,
    touched: Vec<u32>,
}

impl VisitedSet {
    pub fn new(n: usize) -> Self {
        VisitedSet {
            bits: vec![0; n.div_ceil(64)],
            touched: Vec::new(),
        }
    }

    /// Marks `id`; returns true if it was not marked before.
    #[inline]
    pub fn insert(&mut self, id: u32) -> bool {
        let w = (id / 64) as usize;
        let mask = 1u64 << (id % 64);
        let Some(word) = self.bits.get_mut(w) else {
            return false;
        };
        if *word & mask != 0 {
            return false;
        }
        if *word == 0 {
            self.touched.push(w as u32);
        }
        *word |= mask;
        true
    }

    pub fn clear(&mut self) {
        for &w in &self.touched {
            if let Some(word) = self.bits.get_mut(w as usize) {
                *word = 0;
            }
        }
        self.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_clear() {
        let mut v = VisitedSet::new(200);
        assert!(v.insert(3));
        assert!(!v.insert(3));
        assert!(v.insert(130));
        assert!(!v.insert(500), "out of range ids are never reported new");
        v.clear();
        assert!(v.insert(3) && v.insert(130));
    }
}
