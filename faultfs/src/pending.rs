//! The writes of one file that were not fsynced yet: byte extents kept in memory, a later write
//! overriding the bytes of an earlier one.

use std::collections::BTreeMap;

/// Non-overlapping extents of one file, keyed by their offset.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl Pending {
    /// Records a write of `data` at `offset`, over whatever was pending there.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let mut overlapping: Vec<u64> = Vec::new();
        if let Some((&start, extent)) = self.extents.range(..offset).next_back()
            && start + extent.len() as u64 > offset
        {
            overlapping.push(start);
        }
        overlapping.extend(self.extents.range(offset..end).map(|(&start, _)| start));
        for start in overlapping {
            let Some(mut extent) = self.extents.remove(&start) else {
                continue;
            };
            self.bytes -= extent.len() as u64;
            let extent_end = start + extent.len() as u64;
            if extent_end > end {
                let right = extent[(end - start) as usize..].to_vec();
                self.insert(end, right);
            }
            if start < offset {
                extent.truncate((offset - start) as usize);
                self.insert(start, extent);
            }
        }
        // Appends (the common case: a log) grow the extent they follow.
        if let Some((&start, extent)) = self.extents.range_mut(..offset).next_back()
            && start + extent.len() as u64 == offset
        {
            extent.extend_from_slice(data);
            self.bytes += data.len() as u64;
            return;
        }
        self.insert(offset, data.to_vec());
    }

    fn insert(&mut self, offset: u64, data: Vec<u8>) {
        self.bytes += data.len() as u64;
        self.extents.insert(offset, data);
    }

    /// How many bytes are pending.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The end of the last pending extent (0 when none): the file is at least this long.
    pub(crate) fn end(&self) -> u64 {
        self.extents
            .last_key_value()
            .map_or(0, |(&start, extent)| start + extent.len() as u64)
    }

    /// Copies the pending bytes of `[offset, offset + buf.len())` over `buf`.
    pub(crate) fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self
            .extents
            .range(..offset)
            .next_back()
            .map_or(offset, |(&start, _)| start);
        for (&start, extent) in self.extents.range(first..end) {
            let extent_end = start + extent.len() as u64;
            let (from, to) = (start.max(offset), extent_end.min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&extent[(from - start) as usize..(to - start) as usize]);
            }
        }
    }

    /// Drops every pending byte at or beyond `size`.
    pub(crate) fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self
            .extents
            .range(size..)
            .map(|(&start, _)| start)
            .collect();
        for start in beyond {
            if let Some(extent) = self.extents.remove(&start) {
                self.bytes -= extent.len() as u64;
            }
        }
        if let Some((&start, extent)) = self.extents.range_mut(..size).next_back()
            && start + extent.len() as u64 > size
        {
            let cut = extent.len() as u64 - (size - start);
            extent.truncate((size - start) as usize);
            self.bytes -= cut;
        }
    }

    /// The extents, by offset.
    pub(crate) fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents
            .iter()
            .map(|(&start, extent)| (start, extent.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader sees of a file of `len` bytes of `.` with `pending` over it.
    fn view(pending: &Pending, len: usize) -> String {
        let mut buf = vec![b'.'; len];
        pending.overlay(0, &mut buf);
        String::from_utf8(buf).expect("ascii")
    }

    fn check_bytes(pending: &Pending) {
        let sum: u64 = pending.extents().map(|(_, e)| e.len() as u64).sum();
        assert_eq!(pending.bytes(), sum);
        let mut last_end = 0;
        for (start, extent) in pending.extents() {
            assert!(start >= last_end, "extents overlap");
            assert!(!extent.is_empty());
            last_end = start + extent.len() as u64;
        }
    }

    #[test]
    fn later_writes_override_earlier_ones_and_appends_merge() {
        let mut p = Pending::default();
        p.write(2, b"abcdef");
        p.write(4, b"XY");
        assert_eq!(view(&p, 10), "..abXYef..");
        p.write(0, b"0123");
        assert_eq!(view(&p, 10), "0123XYef..");
        p.write(8, b"gh");
        assert_eq!(view(&p, 10), "0123XYefgh");
        p.write(1, b"-------");
        assert_eq!(view(&p, 10), "0-------gh");
        p.write(12, b"zz");
        assert_eq!(view(&p, 14), "0-------gh..zz");
        assert_eq!(p.end(), 14);
        check_bytes(&p);
        assert_eq!(p.bytes(), 12);
    }

    #[test]
    fn appends_grow_one_extent() {
        let mut p = Pending::default();
        for i in 0..100u64 {
            p.write(10 + i * 3, b"abc");
        }
        assert_eq!(p.extents().count(), 1);
        assert_eq!((p.bytes(), p.end()), (300, 310));
    }

    #[test]
    fn a_write_covering_several_extents_replaces_them() {
        let mut p = Pending::default();
        p.write(0, b"aa");
        p.write(4, b"bb");
        p.write(8, b"cc");
        p.write(1, b"XXXXXXXX");
        assert_eq!(view(&p, 11), "aXXXXXXXXc.");
        check_bytes(&p);
    }

    #[test]
    fn overlay_reads_a_window() {
        let mut p = Pending::default();
        p.write(3, b"abcdef");
        let mut buf = vec![b'.'; 4];
        p.overlay(5, &mut buf);
        assert_eq!(&buf, b"cdef");
        let mut buf = vec![b'.'; 4];
        p.overlay(0, &mut buf);
        assert_eq!(&buf, b"...a");
    }

    #[test]
    fn truncate_drops_what_lies_beyond() {
        let mut p = Pending::default();
        p.write(0, b"abcd");
        p.write(6, b"efgh");
        p.truncate(7);
        assert_eq!(view(&p, 10), "abcd..e...");
        assert_eq!(p.end(), 7);
        p.truncate(2);
        assert_eq!(view(&p, 10), "ab........");
        check_bytes(&p);
        p.truncate(0);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
    }
}
