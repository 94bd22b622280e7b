//! Finds a node index from the address of the Python `str` object that named
//! it. Edges usually name the very objects given as nodes, so most lookups
//! never touch a string. Node objects sit close together in memory, so a
//! direct table indexed by address is small; when they are too scattered, a
//! hash map takes over.

use rustc_hash::FxHashMap;

const NONE: u32 = u32::MAX;

pub enum AddressIndex {
    Direct { base: usize, end: usize, shift: u32, slots: Vec<u32> },
    Hashed(FxHashMap<usize, u32>),
}

impl AddressIndex {
    /// Indexes `addresses[i] -> i`; a repeated address keeps its first index.
    pub fn new(addresses: &[usize]) -> Self {
        let (Some(&min), Some(&max)) = (addresses.iter().min(), addresses.iter().max()) else {
            return AddressIndex::Hashed(FxHashMap::default());
        };
        let shift = addresses
            .iter()
            .fold(usize::BITS, |tz, &a| tz.min((a - min).trailing_zeros()))
            .min(6);
        let span = ((max - min) >> shift) + 1;
        if span > 16 * addresses.len() + 4096 {
            let mut map = FxHashMap::default();
            map.reserve(addresses.len());
            for (ix, &a) in addresses.iter().enumerate() {
                map.entry(a).or_insert(ix as u32);
            }
            return AddressIndex::Hashed(map);
        }
        let mut slots = vec![NONE; span];
        for (ix, &a) in addresses.iter().enumerate().rev() {
            slots[(a - min) >> shift] = ix as u32;
        }
        AddressIndex::Direct { base: min, end: max, shift, slots }
    }

    #[inline]
    fn slot(&self, address: usize) -> Option<usize> {
        match *self {
            AddressIndex::Direct { base, end, shift, .. } => {
                let offset = address.wrapping_sub(base);
                (address >= base && address <= end && offset & ((1 << shift) - 1) == 0)
                    .then_some(offset >> shift)
            }
            AddressIndex::Hashed(_) => None,
        }
    }

    #[inline]
    pub fn get(&self, address: usize) -> Option<u32> {
        match self {
            AddressIndex::Direct { slots, .. } => {
                self.slot(address).map(|s| slots[s]).filter(|&ix| ix != NONE)
            }
            AddressIndex::Hashed(map) => map.get(&address).copied(),
        }
    }

    /// Hints the CPU to fetch the slot for `address` ahead of its lookup.
    #[inline]
    pub fn prefetch(&self, address: usize) {
        #[cfg(target_arch = "x86_64")]
        if let (AddressIndex::Direct { slots, .. }, Some(s)) = (self, self.slot(address)) {
            // SAFETY: prefetching is a hint; the pointer is in bounds anyway.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(slots.as_ptr().add(s) as *const i8);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = address;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_hashed_agree() {
        let close: Vec<usize> = (0..1000).map(|i| 0x10_0000 + i * 48).collect();
        let far: Vec<usize> = (0..1000).map(|i| 0x10_0000 + i * 48_000_000).collect();
        for addresses in [close, far] {
            let index = AddressIndex::new(&addresses);
            for (ix, &a) in addresses.iter().enumerate() {
                index.prefetch(a);
                assert_eq!(index.get(a), Some(ix as u32));
                assert_eq!(index.get(a + 8), None);
            }
            assert_eq!(index.get(0), None);
            assert_eq!(index.get(usize::MAX), None);
        }
        assert!(matches!(AddressIndex::new(&[8, 8, 24]), AddressIndex::Direct { .. }));
        assert_eq!(AddressIndex::new(&[8, 8, 24]).get(8), Some(0));
        assert_eq!(AddressIndex::new(&[]).get(8), None);
    }
}
