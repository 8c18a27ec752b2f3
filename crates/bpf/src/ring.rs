//! The reader of the ring buffer the programs write their records to
//! (`events`), with its data mapped once.
//!
//! libbpf maps a ring buffer's data twice in a row, so that a record that
//! wraps around the end reads as one piece; the process's resident memory
//! then counts every page of it twice (a 16 MiB ring buffer showed as
//! 32 MiB). Here the data is mapped once and a record that wraps is copied
//! into a buffer of the reader's own. The protocol is the kernel's
//! (`kernel/bpf/ringbuf.c`): a consumer position the reader writes, a
//! producer position and the data it reads, and before each record an
//! 8-byte header whose length word carries a busy bit (still being written)
//! and a discard bit.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// A ring buffer map, mapped for reading.
pub(crate) struct Ring {
    epoll: OwnedFd,
    page: usize,
    size: usize,
    /// The consumer position's page (read-write).
    consumer: *mut u8,
    /// The producer position's page, then the data (read-only).
    producer: *mut u8,
    /// Where a record that wraps around the end is put together.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("size", &self.size).finish()
    }
}

impl Ring {
    /// Maps the ring buffer map `map` of `size` bytes of data (its
    /// max_entries). The map must outlive the reader.
    pub(crate) fn new(map: BorrowedFd<'_>, size: usize) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        if size == 0 || !size.is_power_of_two() || !size.is_multiple_of(page) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {size} is not a power of two pages"),
            ));
        }
        let fd = map.as_raw_fd();
        // SAFETY: mapping a map's pages at offsets the kernel defines; the
        // results are checked before use and unmapped in Drop.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what was mapped just above.
            unsafe { libc::munmap(consumer, page) };
            return Err(e);
        }
        let unmap = || {
            // SAFETY: unmapping what was mapped above.
            unsafe {
                libc::munmap(consumer, page);
                libc::munmap(producer, page + size);
            }
        };
        // SAFETY: epoll_create1 has no preconditions; its result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            let e = io::Error::last_os_error();
            unmap();
            return Err(e);
        }
        // SAFETY: ep is a new descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; ev lives across the call.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            unmap();
            return Err(e);
        }
        Ok(Ring {
            epoll,
            page,
            size,
            consumer: consumer.cast(),
            producer: producer.cast(),
            scratch: Vec::new(),
        })
    }

    /// Bytes of data the ring buffer holds.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Waits up to `timeout` until the kernel says records are waiting.
    pub(crate) fn wait(&self, timeout: Duration) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the epoll descriptor is open; ev has room for one event.
        // An error (EINTR) counts as nothing waiting.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut ev, 1, ms) };
    }

    /// Hands every complete record waiting to `f`, in order, and frees its
    /// room for the kernel; returns how many it handed over.
    pub(crate) fn consume(&mut self, f: impl FnMut(&[u8])) -> usize {
        // SAFETY: the pointers come from the mappings made in `new`, which
        // live as long as self: the consumer position at the start of its
        // page, the producer position at the start of its own, the data
        // one page after it.
        unsafe {
            let data = self.producer.add(self.page);
            take(
                &*(self.consumer as *const AtomicU64),
                &*(self.producer as *const AtomicU64),
                data,
                self.size,
                &mut self.scratch,
                f,
            )
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the mappings made in `new`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + self.size);
        }
    }
}

/// The consuming loop over a ring of `size` bytes at `data` (see the
/// module's text), as libbpf's own: stop at the first record still being
/// written; skip discarded ones; publish the new consumer position after
/// each record.
///
/// # Safety
/// `data` points to `size` readable bytes (a power of two), 8-byte aligned,
/// that the positions index.
unsafe fn take(
    consumer: &AtomicU64,
    producer: &AtomicU64,
    data: *const u8,
    size: usize,
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]),
) -> usize {
    // SAFETY: every offset read is masked into the `size` bytes the
    // caller vouches for, and a body that crosses the end is read in two
    // pieces that stay inside them.
    unsafe {
        let mask = size as u64 - 1;
        let mut cons = consumer.load(Ordering::Acquire);
        let mut handed = 0;
        loop {
            let prod = producer.load(Ordering::Acquire);
            if cons >= prod {
                return handed;
            }
            while cons < prod {
                let off = (cons & mask) as usize;
                // Headers are 8-byte aligned and the size a power of two pages,
                // so a header never wraps.
                let len = (*(data.add(off) as *const AtomicU32)).load(Ordering::Acquire);
                if len & BUSY != 0 {
                    return handed;
                }
                let body = (len & !(BUSY | DISCARD)) as usize;
                if len & DISCARD == 0 {
                    let start = (off + HEADER) & mask as usize;
                    if start + body <= size {
                        f(std::slice::from_raw_parts(data.add(start), body));
                    } else {
                        let first = size - start;
                        scratch.clear();
                        scratch
                            .extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
                        scratch.extend_from_slice(std::slice::from_raw_parts(data, body - first));
                        f(scratch);
                    }
                    handed += 1;
                }
                cons += ((HEADER + body + 7) & !7) as u64;
                consumer.store(cons, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of 64 bytes in memory, written as the kernel writes.
    struct Fake {
        data: Vec<u64>,
        cons: AtomicU64,
        prod: AtomicU64,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                data: vec![0; 8],
                cons: AtomicU64::new(0),
                prod: AtomicU64::new(0),
            }
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the Vec's u64s viewed as bytes.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), 64) }
        }
        /// Writes a record at the producer position; `flags` are set in its
        /// length word.
        fn put(&mut self, body: &[u8], flags: u32) {
            let pos = self.prod.load(Ordering::Relaxed) as usize;
            let len = body.len() as u32 | flags;
            let b = self.bytes();
            b[pos % 64..pos % 64 + 4].copy_from_slice(&len.to_ne_bytes());
            for (i, x) in body.iter().enumerate() {
                b[(pos + HEADER + i) % 64] = *x;
            }
            self.prod.store(
                (pos + ((HEADER + body.len() + 7) & !7)) as u64,
                Ordering::Release,
            );
        }
        fn take(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut scratch = Vec::new();
            // SAFETY: 64 bytes of u64s.
            unsafe {
                take(
                    &self.cons,
                    &self.prod,
                    self.data.as_ptr().cast(),
                    64,
                    &mut scratch,
                    |r| out.push(r.to_vec()),
                )
            };
            out
        }
    }

    #[test]
    fn records_come_whole_and_in_order_also_across_the_end() {
        let mut r = Fake::new();
        r.put(b"abcdefghijkl", 0); // 8 + 12 -> 24
        r.put(b"0123456789", 0); // 8 + 10 -> 24, at 24
        assert_eq!(r.take(), [b"abcdefghijkl".to_vec(), b"0123456789".to_vec()]);
        assert_eq!(r.cons.load(Ordering::Relaxed), 48);
        // At 48: header 48..56, body 56..64 then 0..12 (wraps).
        r.put(b"wrapped-around-end!!", 0);
        assert_eq!(r.take(), [b"wrapped-around-end!!".to_vec()]);
        assert_eq!(r.cons.load(Ordering::Relaxed), 48 + 32);
        // A body that ends exactly at the end, and one that starts at 0.
        r.put(b"1234567890123456789012", 0); // at 80 (16): 24..46 -> 32 bytes
        r.put(b"x", 0); // at 112 (48): body 56..57
        assert_eq!(
            r.take(),
            [b"1234567890123456789012".to_vec(), b"x".to_vec()]
        );
        r.put(b"after-end", 0); // at 128 (0)
        assert_eq!(r.take(), [b"after-end".to_vec()]);
        assert_eq!(r.cons.load(Ordering::Relaxed), 152);
    }

    #[test]
    fn a_record_being_written_stops_the_reading_and_discarded_ones_are_skipped() {
        let mut r = Fake::new();
        r.put(b"gone", DISCARD);
        r.put(b"kept", 0);
        r.put(b"busy", BUSY);
        r.put(b"later", 0);
        assert_eq!(r.take(), [b"kept".to_vec()]);
        // The consumer stops before the busy one and frees the two before.
        assert_eq!(r.cons.load(Ordering::Relaxed), 32);
        // Once written, it and the one after come.
        let b = r.bytes();
        b[32..36].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(r.take(), [b"busy".to_vec(), b"later".to_vec()]);
        assert!(r.take().is_empty());
    }
}
