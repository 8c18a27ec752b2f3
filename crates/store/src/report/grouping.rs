//! Grouping the series of a report: [`Grouper`] gives each series the
//! group of its key, naming each `--by` value by an id ([`Values`]) kept in
//! maps with a cheap integer hasher ([`IdHasher`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::StoreError;
use crate::report::query::{Cell, GroupBy, ProcInfo, Query, SeriesColumns, SeriesInfo};

/// True when a `--by` field is taken from the process row of a series.
fn from_process(g: GroupBy) -> bool {
    matches!(
        g,
        GroupBy::Exe | GroupBy::Process | GroupBy::User | GroupBy::Cgroup
    )
}

/// The values one part of a group key (one `--by` field) takes, each stored
/// once and named by its index.
#[derive(Debug, Default)]
struct Values {
    cells: Vec<Vec<Cell>>,
    ids: HashMap<Vec<Cell>, u32>,
    /// The same ids, found from the text or the number the cells are made
    /// of, without building the cells of a value met before. Short text
    /// (addresses, names of protocols and directions) is kept in the table
    /// itself rather than behind a pointer.
    by_short_text: HashMap<ShortText, u32>,
    by_text: HashMap<Box<str>, u32>,
    by_int: IdMap<i64, u32>,
}

/// Text of up to 23 bytes, its length in the last byte.
type ShortText = [u8; 24];

fn short_text(text: &str) -> Option<ShortText> {
    let b = text.as_bytes();
    (b.len() < 24).then(|| {
        let mut s = [0; 24];
        s[..b.len()].copy_from_slice(b);
        s[23] = b.len() as u8;
        s
    })
}

impl Values {
    fn id(&mut self, cells: Vec<Cell>) -> u32 {
        if let Some(id) = self.ids.get(&cells) {
            return *id;
        }
        let id = self.cells.len() as u32;
        self.cells.push(cells.clone());
        self.ids.insert(cells, id);
        id
    }

    fn text_id(&mut self, text: &str, cells: impl FnOnce() -> Vec<Cell>) -> u32 {
        if let Some(short) = short_text(text) {
            if let Some(id) = self.by_short_text.get(&short) {
                return *id;
            }
            let id = self.id(cells());
            self.by_short_text.insert(short, id);
            return id;
        }
        if let Some(id) = self.by_text.get(text) {
            return *id;
        }
        let id = self.id(cells());
        self.by_text.insert(text.into(), id);
        id
    }

    fn int_id(&mut self, n: i64, cells: impl FnOnce() -> Vec<Cell>) -> u32 {
        if let Some(id) = self.by_int.get(&n) {
            return *id;
        }
        let id = self.id(cells());
        self.by_int.insert(n, id);
        id
    }
}

/// A hasher for integer keys (the ids made here, process rows, ports):
/// cheaper than the default SipHash, and mixed well enough that pairs of ids
/// packed in a `u64` spread over a table. Text, which comes from the
/// network, keeps the default hasher.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        // The final mix of MurmurHash3: every bit of the state reaches
        // the bits the table uses.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Gives each series its group. Each `--by` field of a series is named by
/// a value id (text borrowed from the row is looked up, not copied), the
/// ids of a key are combined pairwise into one, and that one names the
/// group; a group's cells are built only when it is shown. The process
/// fields (and filters) are looked at once per process.
pub(super) struct Grouper<'q> {
    q: &'q Query,
    procs: HashMap<i64, ProcInfo>,
    /// Per process: where its key (the process fields set, the others 0)
    /// starts in `process_keys`, or `u32::MAX` when the process fails the
    /// filters.
    by_process: IdMap<Option<i64>, u32>,
    process_keys: Vec<u32>,
    /// True when a field or a filter needs more of the series row than its
    /// process.
    series_level: bool,
    pub(super) cols: SeriesColumns,
    /// One per `--by` field.
    values: Vec<Values>,
    /// `pairs[i]`: the id of the first `i + 2` fields of a key, from the id
    /// of the first `i + 1` and the value id of field `i + 1`.
    pairs: Vec<IdMap<u64, u32>>,
    /// The group of each id of a whole key (`u32::MAX`: none yet).
    groups: Vec<u32>,
    count: usize,
    /// The keys of the groups, `q.by.len()` value ids each.
    keys: Vec<u32>,
    scratch: Vec<u32>,
}

impl<'q> Grouper<'q> {
    pub(super) fn new(q: &'q Query, procs: HashMap<i64, ProcInfo>) -> Self {
        Grouper {
            q,
            procs,
            by_process: IdMap::default(),
            process_keys: Vec::new(),
            series_level: !q.by.iter().all(|g| from_process(*g)) || q.filters.on_series(),
            cols: SeriesColumns::new(q),
            values: q.by.iter().map(|_| Values::default()).collect(),
            pairs: q.by.iter().skip(1).map(|_| IdMap::default()).collect(),
            groups: Vec::new(),
            count: 0,
            keys: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// How many groups there are; they are numbered from 0.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Where the key of a process starts in `process_keys`.
    fn process_key(&mut self, process_id: Option<i64>) -> u32 {
        let p = process_id.and_then(|id| self.procs.get(&id));
        let info = SeriesInfo {
            exe: p.and_then(|p| p.exe.as_deref()),
            exe_unknown: p.and_then(|p| p.exe_unknown.as_deref()),
            pid: p.map(|p| p.pid),
            comm: p.map(|p| p.comm.as_str()),
            uid: p.map(|p| p.uid),
            user: p.and_then(|p| p.user.as_deref()),
            cgroup: p.and_then(|p| p.cgroup.as_deref()),
            ..Default::default()
        };
        if !self.q.filters.matches_process(&info) {
            return u32::MAX;
        }
        let start = self.process_keys.len();
        for (i, g) in self.q.by.iter().enumerate() {
            let id = if from_process(*g) {
                self.values[i].id(info.key(&[*g]))
            } else {
                0
            };
            self.process_keys.push(id);
        }
        start as u32
    }

    /// The group of a series row (the columns of [`SeriesColumns`]), or
    /// None when it fails the filters.
    pub(super) fn group(&mut self, r: &rusqlite::Row<'_>) -> Result<Option<u32>, StoreError> {
        let process_id = r.get_ref_unwrap(1).as_i64_or_null().ok().flatten();
        let start = match self.by_process.get(&process_id) {
            Some(start) => *start,
            None => {
                let start = self.process_key(process_id);
                self.by_process.insert(process_id, start);
                start
            }
        };
        if start == u32::MAX {
            return Ok(None);
        }
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&self.process_keys[start as usize..][..self.q.by.len()]);
        if self.series_level {
            let info = self.cols.read(r)?;
            if !self.q.filters.matches_series(&info) {
                return Ok(None);
            }
            for (i, g) in self.q.by.iter().enumerate() {
                let v = &mut self.values[i];
                let cells = || info.key(&[*g]);
                self.scratch[i] = match g {
                    GroupBy::Remote => v.text_id(info.remote_ip, cells),
                    GroupBy::Host => v.text_id(info.remote_name.unwrap_or(info.remote_ip), cells),
                    GroupBy::Port => v.int_id(info.port.into(), cells),
                    GroupBy::Proto => v.text_id(info.proto, cells),
                    GroupBy::Direction => v.text_id(info.direction, cells),
                    GroupBy::Rule => v.id(cells()),
                    GroupBy::Exe | GroupBy::Process | GroupBy::User | GroupBy::Cgroup => continue,
                };
            }
        }
        let mut id = self.scratch.first().copied().unwrap_or(0);
        for (pairs, v) in self.pairs.iter_mut().zip(&self.scratch[1..]) {
            let next = pairs.len() as u32;
            id = *pairs
                .entry(u64::from(id) << 32 | u64::from(*v))
                .or_insert(next);
        }
        let id = id as usize;
        if self.groups.len() <= id {
            self.groups.resize(id + 1, u32::MAX);
        }
        if self.groups[id] == u32::MAX {
            self.groups[id] = self.count as u32;
            self.count += 1;
            self.keys.extend_from_slice(&self.scratch);
        }
        Ok(Some(self.groups[id]))
    }

    /// The cells of group `g`'s key.
    pub(super) fn key(&self, g: u32) -> Vec<Cell> {
        let n = self.q.by.len();
        let mut key = Vec::with_capacity(n + 1);
        for (id, v) in self.keys[g as usize * n..][..n].iter().zip(&self.values) {
            key.extend(v.cells[*id as usize].iter().cloned());
        }
        key
    }
}
