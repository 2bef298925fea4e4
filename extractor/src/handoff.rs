//! How captured tensors travel from the eval callback to the writer thread
//! without the writer competing with the compute.
//!
//! The capture keeps a pass's copies and hands them over as one batch when the
//! pass ends, then waits until the writer has written them: the next pass's
//! decode runs alone, and the writer's disk work and hashing never share the
//! CPU with a timed decode. Memory is bounded by bytes, not by a count of
//! tensors: when a pass captures more than the budget (every node of a long
//! prompt), the copies so far go to the writer early, and the callback waits
//! for room. Only then does writing overlap the compute.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{bail, Result};

use crate::captured::Captured;

/// The default budget, in MB: above a typical pass's checkpoints (the nine of
/// a 1000-token GPT-2 pass take 65 MB), and what a whole-graph capture may add
/// to the process's memory.
pub const DEFAULT_BUDGET_MB: usize = 256;

/// Bytes of captured data in memory, shared by the capture and the writer.
struct Budget {
    ledger: Mutex<Ledger>,
    /// Signalled when bytes are given back or the writer stops.
    changed: Condvar,
    limit: usize,
    spare: Mutex<Spare>,
}

/// Copies' buffers given back once written (or discarded), for the next
/// copies: a reused buffer is already in memory, so a copy into it pays no
/// page faults and no zeroing by the kernel. Held within the budget too;
/// oldest first, so that the newest are the ones kept when room runs out.
#[derive(Default)]
struct Spare {
    buffers: VecDeque<Vec<f32>>,
    bytes: usize,
}

/// Below this many floats (64 KiB) a buffer is not kept: the allocator
/// serves small ones from memory it already has.
const SPARE_MIN: usize = 1 << 14;

struct Ledger {
    used: usize,
    /// The writer is gone (finished, failed or panicked): nothing will be given back.
    writer_stopped: bool,
}

impl Budget {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spare(&self) -> MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer for `n` floats: the smallest spare one that holds
    /// them without wasting more than as much again, else a new one.
    fn buffer(&self, n: usize) -> Vec<f32> {
        let mut spare = self.spare();
        let fits = |v: &Vec<f32>| (n..=2 * n).contains(&v.capacity());
        let best = (spare.buffers.iter().enumerate())
            .filter(|(_, v)| fits(v))
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let v = spare.buffers.remove(i).expect("an index found above");
                spare.bytes -= bytes(v.capacity());
                v
            }
            None => Vec::with_capacity(n),
        }
    }

    /// Keeps `v` for a later copy, within the budget: the oldest spare
    /// buffers make room for it. Otherwise a node larger than what the spare
    /// buffers left (a whole pass's logits: 157 MB at 781 GPT-2 tokens) would
    /// be copied into fresh memory, page faults and all, on every pass.
    fn recycle(&self, mut v: Vec<f32>) {
        let size = bytes(v.capacity());
        let room = self.limit.saturating_sub(self.ledger().used);
        if v.capacity() < SPARE_MIN || size > room {
            return;
        }
        let mut spare = self.spare();
        while spare.bytes + size > room {
            let old = spare
                .buffers
                .pop_front()
                .expect("spare bytes are its buffers'");
            spare.bytes -= bytes(old.capacity());
        }
        v.clear();
        spare.bytes += size;
        spare.buffers.push_back(v);
    }

    /// Waits until `done` holds; an error, not a hang, once the writer stopped.
    fn wait_until(&self, done: impl Fn(&Ledger) -> bool) -> Result<MutexGuard<'_, Ledger>> {
        let mut ledger = self.ledger();
        while !done(&ledger) {
            if ledger.writer_stopped {
                bail!(WRITER_STOPPED);
            }
            ledger = self.changed.wait(ledger).unwrap_or_else(|p| p.into_inner());
        }
        Ok(ledger)
    }
}

const WRITER_STOPPED: &str = "the writer thread stopped (its error follows)";

/// The capture's end: collects a pass's copies and hands them over.
pub struct Outbox {
    budget: Arc<Budget>,
    pending: Vec<Captured>,
    pending_bytes: usize,
    sink: Option<Sender<Vec<Captured>>>,
}

/// The writer's end: batches in order, each tensor's bytes given back once
/// written. Dropping it (the writer thread ending, by error or panic too)
/// wakes a capture waiting for room: it fails instead of waiting for ever.
pub struct Inbox {
    budget: Arc<Budget>,
    batches: Receiver<Vec<Captured>>,
}

/// A connected outbox and inbox with a budget of `limit` bytes.
pub fn channel(limit: usize) -> (Outbox, Inbox) {
    let budget = Arc::new(Budget {
        ledger: Mutex::new(Ledger {
            used: 0,
            writer_stopped: false,
        }),
        changed: Condvar::new(),
        limit,
        spare: Mutex::default(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    (
        Outbox {
            budget: budget.clone(),
            pending: Vec::new(),
            pending_bytes: 0,
            sink: Some(tx),
        },
        Inbox {
            budget,
            batches: rx,
        },
    )
}

fn bytes_of(c: &Captured) -> usize {
    bytes(c.data.len())
}

fn bytes(floats: usize) -> usize {
    floats * std::mem::size_of::<f32>()
}

impl Outbox {
    /// Keeps `captured` for the end of the pass; if it does not fit in the
    /// budget, hands over what is kept and waits for room.
    pub fn push(&mut self, captured: Captured) -> Result<()> {
        let n = bytes_of(&captured);
        if self.pending_bytes + n > self.budget.limit {
            self.flush()?;
        }
        let limit = self.budget.limit;
        // A tensor larger than the whole budget still goes, alone.
        let mut ledger = self
            .budget
            .wait_until(|l| l.used == 0 || l.used + n <= limit)?;
        ledger.used += n;
        drop(ledger);
        self.pending_bytes += n;
        self.pending.push(captured);
        Ok(())
    }

    /// Hands the kept copies to the writer.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        match &self.sink {
            Some(sink) if sink.send(batch).is_ok() => Ok(()),
            _ => bail!(WRITER_STOPPED),
        }
    }

    /// Hands over what is kept and waits until the writer has written it all.
    pub fn drain(&mut self) -> Result<()> {
        self.flush()?;
        drop(self.budget.wait_until(|l| l.used == 0)?);
        Ok(())
    }

    /// An empty buffer for a copy of `n` floats, reused where one was given back.
    pub fn buffer(&self, n: usize) -> Vec<f32> {
        self.budget.buffer(n)
    }

    /// A copy's buffer no longer needed (a timing pass discards its copies).
    pub fn recycle(&self, data: Vec<f32>) {
        self.budget.recycle(data);
    }

    /// No more batches: the writer finishes what it has and stops.
    pub fn close(&mut self) {
        self.sink = None;
    }
}

impl Inbox {
    /// The next batch; `None` once the capture is closed and all is received.
    pub fn next_batch(&self) -> Option<Vec<Captured>> {
        self.batches.recv().ok()
    }

    /// A written batch's buffers, back for the capture's next copies.
    pub fn recycle(&self, batch: Vec<Captured>) {
        for c in batch {
            self.budget.recycle(c.data);
        }
    }

    /// What the writing threads give memory back with.
    pub fn release(&self) -> Release {
        Release(self.budget.clone())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.budget.ledger().writer_stopped = true;
        self.budget.changed.notify_all();
    }
}

/// Gives a written tensor's bytes back to the budget (shared by writing threads).
#[derive(Clone)]
pub struct Release(Arc<Budget>);

impl Release {
    /// The tensor is written (or dropped after an error): its bytes are free again.
    pub fn done(&self, captured: &Captured) {
        let mut ledger = self.0.ledger();
        ledger.used = ledger.used.saturating_sub(bytes_of(captured));
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::captured::Place;

    fn tensor(n: usize) -> Captured {
        Captured {
            id: "x".into(),
            layer: None,
            tensor: "x".into(),
            file_stem: "x".into(),
            step: 0,
            ggml_ne: [n as i64, 1, 1, 1],
            shape: vec![n as i64],
            source_dtype: "f32",
            op: "ADD",
            buffer: "CPU".into(),
            fetched: 0,
            data: vec![0.0; n],
            place: Place::default(),
        }
    }

    #[test]
    fn a_pass_is_handed_over_whole_at_its_end() {
        let (mut out, inbox) = channel(1 << 20);
        out.push(tensor(10)).unwrap();
        out.push(tensor(20)).unwrap();
        assert!(
            inbox.batches.try_recv().is_err(),
            "nothing before the pass ends"
        );
        out.flush().unwrap();
        let batch = inbox.next_batch().unwrap();
        assert_eq!(
            batch.iter().map(|c| c.data.len()).collect::<Vec<_>>(),
            [10, 20]
        );
    }

    #[test]
    fn over_the_budget_the_capture_waits_for_the_writer() {
        // Room for 100 floats: the third tensor of 40 must wait for a write.
        let (mut out, inbox) = channel(400);
        let writer = std::thread::spawn(move || {
            let mut sizes = Vec::new();
            let release = inbox.release();
            while let Some(batch) = inbox.next_batch() {
                for c in &batch {
                    sizes.push(c.data.len());
                    release.done(c);
                }
            }
            sizes
        });
        for _ in 0..5 {
            out.push(tensor(40)).unwrap();
        }
        out.drain().unwrap();
        out.close();
        assert_eq!(writer.join().unwrap(), [40; 5]);
    }

    #[test]
    fn a_dead_writer_is_an_error_not_a_hang() {
        let (mut out, inbox) = channel(400);
        out.push(tensor(40)).unwrap();
        drop(inbox);
        let err = out.drain().unwrap_err().to_string();
        assert!(err.contains("writer thread stopped"), "{err}");
    }

    #[test]
    fn a_capture_waiting_for_room_fails_when_the_writer_dies() {
        // The writer takes the first batch, then fails without giving its bytes back.
        let (mut out, inbox) = channel(400);
        let writer = std::thread::spawn(move || {
            let first = inbox.next_batch();
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(inbox);
            first.map(|b| b.len())
        });
        out.push(tensor(60)).unwrap();
        // 240 + 240 > 400: this push hands the first over and waits for room.
        let err = out.push(tensor(60)).unwrap_err().to_string();
        assert!(err.contains("writer thread stopped"), "{err}");
        assert_eq!(writer.join().unwrap(), Some(1));
    }

    #[test]
    fn written_buffers_come_back_for_the_next_copies_within_the_budget() {
        let (mut out, inbox) = channel(bytes(3 * SPARE_MIN));
        out.push(tensor(SPARE_MIN)).unwrap();
        out.flush().unwrap();
        let batch = inbox.next_batch().unwrap();
        let release = inbox.release();
        batch.iter().for_each(|c| release.done(c));
        let at = batch[0].data.as_ptr();
        inbox.recycle(batch);
        // Too small a need takes no buffer twice its size; a fitting one is the same memory.
        assert_eq!(out.buffer(SPARE_MIN / 4).capacity(), SPARE_MIN / 4);
        let again = out.buffer(SPARE_MIN);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        // Within the budget the oldest buffers make room for the newest: 3
        // fit, a fourth takes the place of the first.
        let fourth = Vec::with_capacity(SPARE_MIN);
        let (first, fourth_at) = (again.as_ptr(), fourth.as_ptr());
        out.recycle(again);
        for _ in 0..2 {
            out.recycle(Vec::with_capacity(SPARE_MIN));
        }
        out.recycle(fourth);
        let held = |out: &Outbox| -> Vec<_> {
            out.budget
                .spare()
                .buffers
                .iter()
                .map(|v| v.as_ptr())
                .collect()
        };
        assert_eq!(held(&out).len(), 3);
        assert!(!held(&out).contains(&first) && held(&out).contains(&fourth_at));
        // One as large as the budget replaces them all; a larger one is let go.
        out.recycle(Vec::with_capacity(3 * SPARE_MIN));
        assert_eq!(out.budget.spare().buffers.len(), 1);
        out.recycle(Vec::with_capacity(4 * SPARE_MIN));
        assert_eq!(out.budget.spare().buffers[0].capacity(), 3 * SPARE_MIN);
        // Small buffers are not kept at all.
        out.recycle(Vec::with_capacity(16));
        assert_eq!(out.budget.spare().buffers.len(), 1);
    }
}
