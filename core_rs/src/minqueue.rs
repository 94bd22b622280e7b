//! A priority queue of dense indices with cheap pop-min: a hierarchy of
//! 64-bit words where each bit of a level says "some bit below is set".
//! Three levels cover 262,144 indices, four cover 16 million; the upper levels
//! stay in cache, so pops cost a few `trailing_zeros`, not a heap's sift.

pub struct MinQueue {
    /// `levels[0]` has one bit per index; the last level is a single word.
    levels: Vec<Vec<u64>>,
}

impl MinQueue {
    pub fn new(capacity: usize) -> Self {
        let mut levels = Vec::new();
        let mut words = capacity.div_ceil(64).max(1);
        loop {
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            words = words.div_ceil(64);
        }
        MinQueue { levels }
    }

    pub fn is_empty(&self) -> bool {
        self.levels[self.levels.len() - 1][0] == 0
    }

    pub fn insert(&mut self, ix: u32) {
        let mut i = ix as usize;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            let was_empty = *word == 0;
            *word |= 1 << (i % 64);
            if !was_empty {
                break; // the levels above already know this word is non-empty
            }
            i /= 64;
        }
    }

    pub fn pop_min(&mut self) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        let mut i = 0usize;
        for level in self.levels.iter().rev() {
            i = i * 64 + level[i].trailing_zeros() as usize;
        }
        let found = i;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                break;
            }
            i /= 64;
        }
        Some(found as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn matches_a_binary_heap() {
        for capacity in [1usize, 63, 64, 65, 4096, 4097, 300_000] {
            let mut queue = MinQueue::new(capacity);
            let mut heap = BinaryHeap::new();
            let mut state = capacity as u64 + 1;
            for step in 0..20_000 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let ix = ((state >> 33) % capacity as u64) as u32;
                if step % 3 == 2 {
                    assert_eq!(queue.pop_min(), heap.pop().map(|Reverse(x)| x));
                } else if !heap.iter().any(|&Reverse(x)| x == ix) {
                    queue.insert(ix);
                    heap.push(Reverse(ix));
                }
            }
            while let Some(Reverse(x)) = heap.pop() {
                assert_eq!(queue.pop_min(), Some(x));
            }
            assert!(queue.is_empty());
            assert_eq!(queue.pop_min(), None);
        }
    }
}
