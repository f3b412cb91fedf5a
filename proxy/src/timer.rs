//! Per-connection deadlines in an indexed binary min-heap.
//!
//! Why not smoltcp's `poll_at` over every socket: that is a scan of all
//! connections. Why not a plain `BinaryHeap` with lazy deletion: deadlines move
//! on almost every segment (delayed ACK, retransmit, idle timer), so stale
//! entries would pile up without bound. Here every connection has at most one
//! entry, updates are O(log n) in place, the earliest deadline is O(1), and the
//! storage grows only when the number of connections does (no allocation per
//! packet).

use smoltcp::time::Instant;

const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Heap of (deadline, id), earliest first.
    heap: Vec<(Instant, u32)>,
    /// `pos[id]` = index of `id` in `heap`, or `NONE`.
    pos: Vec<u32>,
}

impl Timers {
    /// Sets (or moves) `id`'s deadline; `None` removes it.
    pub(crate) fn set(&mut self, id: u32, at: Option<Instant>) {
        let i = id as usize;
        if i >= self.pos.len() {
            self.pos.resize(i + 1, NONE);
        }
        let p = self.pos[i];
        match (p, at) {
            (NONE, None) => {}
            (NONE, Some(at)) => {
                self.heap.push((at, id));
                self.pos[i] = (self.heap.len() - 1) as u32;
                self.up(self.heap.len() - 1);
            }
            (p, None) => self.remove_at(p as usize),
            (p, Some(at)) => {
                let p = p as usize;
                let old = self.heap[p].0;
                if at == old {
                    return;
                }
                self.heap[p].0 = at;
                if at < old {
                    self.up(p);
                } else {
                    self.down(p);
                }
            }
        }
    }

    /// Earliest deadline, if any.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.heap.first().map(|&(at, _)| at)
    }

    /// Removes and returns an id whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<u32> {
        let &(at, id) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.remove_at(0);
        Some(id)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, p: usize) {
        let last = self.heap.len() - 1;
        self.swap(p, last);
        let (_, id) = self.heap.pop().expect("non-empty");
        self.pos[id as usize] = NONE;
        if p < self.heap.len() {
            self.down(p);
            self.up(p);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[min].0 {
                min = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[min].0 {
                min = r;
            }
            if min == i {
                break;
            }
            self.swap(i, min);
            i = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: i64) -> Instant {
        Instant::from_millis(v)
    }

    #[test]
    fn orders_moves_and_removes() {
        let mut t = Timers::default();
        // Pseudo-random deadlines, some moved and some removed.
        let mut want = Vec::new();
        for id in 0..200u32 {
            let at = (u64::from(id) * 7919 % 1000) as i64;
            t.set(id, Some(ms(at)));
            want.push(Some(at));
        }
        for id in (0..200u32).step_by(3) {
            let at = (u64::from(id) * 104_729 % 1000) as i64;
            t.set(id, Some(ms(at)));
            want[id as usize] = Some(at);
        }
        for id in (0..200u32).step_by(5) {
            t.set(id, None);
            want[id as usize] = None;
        }
        assert_eq!(t.len(), want.iter().flatten().count());
        let mut got = Vec::new();
        while let Some(id) = t.pop_expired(ms(1000)) {
            got.push((want[id as usize].unwrap(), id));
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            sorted.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        assert_eq!(got.len(), want.iter().flatten().count());
        assert_eq!(t.next_at(), None);
    }

    #[test]
    fn pop_respects_now() {
        let mut t = Timers::default();
        t.set(1, Some(ms(10)));
        t.set(2, Some(ms(5)));
        assert_eq!(t.next_at(), Some(ms(5)));
        assert_eq!(t.pop_expired(ms(4)), None);
        assert_eq!(t.pop_expired(ms(9)), Some(2));
        assert_eq!(t.pop_expired(ms(9)), None);
        assert_eq!(t.pop_expired(ms(10)), Some(1));
    }
}
