//! A session's queue of frames the socket would not take yet.
//!
//! Frames are shared `Bytes` (a refcount, never a copy). The queue holds
//! nothing while the socket keeps up, which is the common case; it is the
//! slow path and the measure of a slow consumer.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// One pointer while empty: every idle session has an outbox, few use it.
#[derive(Debug, Default)]
pub struct Outbox(Option<Box<Queue>>);

#[derive(Debug, Default)]
pub struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of `frames[0]` already written.
    offset: usize,
    /// Unwritten bytes queued.
    bytes: usize,
}

static EMPTY: Queue = Queue {
    frames: VecDeque::new(),
    offset: 0,
    bytes: 0,
};

impl std::ops::Deref for Outbox {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl Outbox {
    fn queue(&mut self) -> &mut Queue {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn push(&mut self, frame: Bytes) {
        self.queue().push(frame);
    }

    pub fn prepend(&mut self, frames: impl DoubleEndedIterator<Item = Bytes>, offset: usize) {
        self.queue().prepend(frames, offset);
    }

    pub fn advance(&mut self, n: usize) -> usize {
        let Some(q) = self.0.as_mut() else { return 0 };
        let done = q.advance(n);
        if q.frames.is_empty() {
            // The queue is the slow path; an idle connection keeps no
            // memory for it.
            self.0 = None;
        }
        done
    }

    pub fn drop_unstarted(&mut self) -> usize {
        let Some(q) = self.0.as_mut() else { return 0 };
        let dropped = q.drop_unstarted();
        if q.frames.is_empty() {
            self.0 = None;
        }
        dropped
    }
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Puts frames in front of what is queued, keeping their order; the
    /// first of them has `offset` bytes written already. Only valid when
    /// nothing of the current front has been written.
    fn prepend(&mut self, frames: impl DoubleEndedIterator<Item = Bytes>, offset: usize) {
        debug_assert_eq!(self.offset, 0);
        for f in frames.rev() {
            self.bytes += f.len();
            self.frames.push_front(f);
        }
        self.bytes -= offset;
        self.offset = offset;
    }

    /// Fills `iov` with the unwritten bytes, oldest first. Returns how many
    /// slices were filled.
    pub fn fill<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, f) in self.frames.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let s = if i == 0 { &f[self.offset..] } else { &f[..] };
            iov[n] = IoSlice::new(s);
            n += 1;
        }
        n
    }

    /// Marks `n` bytes written. Returns the number of frames completed.
    fn advance(&mut self, mut n: usize) -> usize {
        self.bytes -= n.min(self.bytes);
        let mut done = 0;
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                break;
            }
            n -= left;
            self.offset = 0;
            self.frames.pop_front();
            done += 1;
        }
        done
    }

    /// Drops every frame not yet started (a partly written frame must be
    /// finished or the stream is corrupt). Returns how many were dropped.
    fn drop_unstarted(&mut self) -> usize {
        let keep = usize::from(self.offset > 0);
        let dropped = self.frames.len() - keep.min(self.frames.len());
        self.frames.truncate(keep);
        self.bytes = self.frames.front().map_or(0, |f| f.len() - self.offset);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov_bytes(o: &Outbox) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = o.fill(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"abc"));
        o.push(Bytes::from_static(b"de"));
        assert_eq!(o.bytes(), 5);
        assert_eq!(o.advance(2), 0);
        assert_eq!(iov_bytes(&o), b"cde");
        assert_eq!(o.advance(2), 1);
        assert_eq!(iov_bytes(&o), b"e");
        assert_eq!(o.bytes(), 1);
        assert_eq!(o.advance(1), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn prepend_keeps_order_and_offset() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"Z"));
        o.prepend(
            [Bytes::from_static(b"xyz"), Bytes::from_static(b"12")].into_iter(),
            1,
        );
        assert_eq!(iov_bytes(&o), b"yz12Z");
        assert_eq!(o.bytes(), 5);
    }

    #[test]
    fn drop_unstarted_keeps_a_partly_written_frame() {
        let mut o = Outbox::default();
        for f in [&b"abcd"[..], b"ef", b"gh"] {
            o.push(Bytes::copy_from_slice(f));
        }
        o.advance(1);
        assert_eq!(o.drop_unstarted(), 2);
        assert_eq!(iov_bytes(&o), b"bcd");
        assert_eq!(o.bytes(), 3);
        let mut fresh = Outbox::default();
        fresh.push(Bytes::from_static(b"q"));
        assert_eq!(fresh.drop_unstarted(), 1);
        assert!(fresh.is_empty() && fresh.bytes() == 0);
    }
}
