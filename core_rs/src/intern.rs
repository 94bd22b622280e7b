//! Node ids interned into one arena, looked up through a compact hash table.
//!
//! A million ids cost one string buffer, one offset vector and a table of
//! `u32` indices: far fewer allocations and cache misses than a map of owned
//! strings, which matters when a DAG is built from millions of edges.

use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};
use rustc_hash::FxBuildHasher;

#[derive(Default)]
pub struct Interner {
    arena: String,
    /// `ends[i]` is where id `i` ends in the arena (it starts at `ends[i-1]`).
    ends: Vec<usize>,
    table: HashTable<u32>,
}

fn hash(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

fn slice<'a>(arena: &'a str, ends: &[usize], ix: u32) -> &'a str {
    let i = ix as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &arena[start..ends[i]]
}

impl Interner {
    pub fn with_capacity(ids: usize) -> Self {
        Interner {
            arena: String::with_capacity(ids * 8),
            ends: Vec::with_capacity(ids),
            table: HashTable::with_capacity(ids),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, ix: u32) -> &str {
        slice(&self.arena, &self.ends, ix)
    }

    pub fn index_of(&self, s: &str) -> Option<u32> {
        let (arena, ends) = (&self.arena, &self.ends);
        self.table
            .find(hash(s), |&ix| slice(arena, ends, ix) == s)
            .copied()
    }

    /// Adds `s` and returns its index, or `Err` with the index it already has.
    pub fn insert(&mut self, s: &str) -> Result<u32, u32> {
        let Interner { arena, ends, table } = self;
        let entry = table.entry(
            hash(s),
            |&ix| slice(arena, ends, ix) == s,
            |&ix| hash(slice(arena, ends, ix)),
        );
        match entry {
            Entry::Occupied(found) => Err(*found.get()),
            Entry::Vacant(slot) => {
                let ix = ends.len() as u32;
                arena.push_str(s);
                ends.push(arena.len());
                slot.insert(ix);
                Ok(ix)
            }
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.len() as u32).map(move |ix| self.get(ix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_finds() {
        let mut names = Interner::default();
        assert_eq!(names.insert("a"), Ok(0));
        assert_eq!(names.insert(""), Ok(1));
        assert_eq!(names.insert("bc"), Ok(2));
        assert_eq!(names.insert("a"), Err(0));
        assert_eq!(names.index_of("bc"), Some(2));
        assert_eq!(names.index_of(""), Some(1));
        assert_eq!(names.index_of("b"), None);
        assert_eq!(names.iter().collect::<Vec<_>>(), ["a", "", "bc"]);
        // Growth past the initial capacity rehashes from the arena.
        for i in 0..10_000 {
            names.insert(&format!("n{i}")).unwrap();
        }
        assert_eq!(names.index_of("n9999"), Some(10_002));
        assert_eq!(names.get(3), "n0");
    }
}
