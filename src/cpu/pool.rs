//! A parallel loop in which the calling thread works too.
//!
//! A rayon parallel iterator called from a thread outside the pool (a training loop's thread,
//! in the usual case) hands the whole job to the pool and blocks: the caller sleeps on a
//! condition variable, a worker has to be woken to start, and the caller has to be woken at
//! the end. Those hand-offs cost a tenth of the loss on 256×1000 logits on 2 cores
//! (`BENCHMARKS.md`, "Measurements behind code choices"). [`for_each_task`] instead runs tasks
//! on the caller at once, lets `threads - 1` pool workers join as they wake, hands out tasks
//! in order through an atomic counter (so whoever is awake does the work), and spins briefly at
//! the end for tasks still running rather than sleeping.
//!
//! Each task writes only its own outputs, so the result does not depend on which thread ran
//! which task. [`for_each_row`] cuts buffers of rows (logits, gradients, losses) into such
//! tasks, or hands large jobs to rayon's splitting.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the caller spins for tasks other threads still run before it blocks in rayon's
/// scope (which sleeps): longer than a task of [`crate::cpu`]'s sizes, short enough that a
/// preempted helper does not burn a core for long.
const SPIN: Duration = Duration::from_micros(200);

/// Runs `f` on every task, on the calling thread and up to `threads - 1` rayon workers, and
/// returns when all are done. A panic in `f` reaches the caller (rayon's scope rethrows it).
fn for_each_task<I: Send, F: Fn(I) + Sync>(tasks: Vec<I>, f: F) {
    let n = tasks.len();
    let helpers = rayon::current_num_threads().min(n).saturating_sub(1);
    if helpers == 0 {
        tasks.into_iter().for_each(f);
        return;
    }
    // One slot per task, each taken once: the counter says whose turn it is, the mutex (never
    // contended) moves the task out safely.
    let slots: Vec<Mutex<Option<I>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let run = || loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = slots.get(k) else { break };
        let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            f(task);
        }
        done.fetch_add(1, Ordering::Release);
    };
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| run());
        }
        run();
        let start = Instant::now();
        while done.load(Ordering::Acquire) < n && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
    });
}

/// Rows of one or more buffers, split between rows: a row is `width` elements of a [`Slab`],
/// one element of a loss buffer, and a pair splits both of its sides at the same row.
pub(crate) trait Rows: Send + Sized {
    /// How many rows.
    fn rows(&self) -> usize;
    /// The first `at` rows and the rest (`at <= rows()`).
    fn split(self, at: usize) -> (Self, Self);
}

/// A buffer of rows of `width` elements (`width > 0`).
#[derive(Debug)]
pub(crate) struct Slab<S> {
    pub(crate) data: S,
    pub(crate) width: usize,
}

impl<S> Slab<S> {
    /// `data` as rows of `width` elements.
    pub(crate) fn of(data: S, width: usize) -> Self {
        Slab { data, width }
    }
}

impl<T: Sync> Rows for Slab<&[T]> {
    fn rows(&self) -> usize {
        self.data.len() / self.width
    }
    fn split(self, at: usize) -> (Self, Self) {
        let (a, b) = self.data.split_at(at * self.width);
        let width = self.width;
        (Slab { data: a, width }, Slab { data: b, width })
    }
}

impl<T: Send> Rows for Slab<&mut [T]> {
    fn rows(&self) -> usize {
        self.data.len() / self.width
    }
    fn split(self, at: usize) -> (Self, Self) {
        let (a, b) = self.data.split_at_mut(at * self.width);
        let width = self.width;
        (Slab { data: a, width }, Slab { data: b, width })
    }
}

/// Per-sample losses: one element per row.
impl Rows for &mut [f32] {
    fn rows(&self) -> usize {
        self.len()
    }
    fn split(self, at: usize) -> (Self, Self) {
        self.split_at_mut(at)
    }
}

impl<A: Rows, B: Rows> Rows for (A, B) {
    fn rows(&self) -> usize {
        self.0.rows().min(self.1.rows())
    }
    fn split(self, at: usize) -> (Self, Self) {
        let ((a0, a1), (b0, b1)) = (self.0.split(at), self.1.split(at));
        ((a0, b0), (a1, b1))
    }
}

/// Runs `row(i, rows_i)` for every row `i` (given as a one-row split of `rows`), in tasks of
/// `per` rows: small jobs through [`for_each_task`], where the caller works too; large ones
/// through rayon's adaptive splitting (halves of at least `per` rows), whose contiguous ranges
/// keep a prefetch of the next row on the thread that will read it.
pub(crate) fn for_each_row<R: Rows>(
    rows: R,
    per: usize,
    small: bool,
    row: impl Fn(usize, R) + Sync,
) {
    let per = per.max(1);
    let run = |mut i: usize, mut r: R| {
        while r.rows() > 0 {
            let (one, rest) = r.split(1);
            row(i, one);
            (i, r) = (i + 1, rest);
        }
    };
    if small {
        let mut tasks = Vec::with_capacity(rows.rows().div_ceil(per));
        let (mut i, mut r) = (0, rows);
        while r.rows() > 0 {
            let take = per.min(r.rows());
            let (task, rest) = r.split(take);
            tasks.push((i, task));
            (i, r) = (i + per, rest);
        }
        for_each_task(tasks, |(i, task)| run(i, task));
    } else {
        use rayon::iter::ParallelIterator;
        rayon::iter::split((0, rows), |(i, r)| {
            let n = r.rows();
            if n < 2 * per {
                ((i, r), None)
            } else {
                let (a, b) = r.split(n / 2);
                ((i, a), Some((i + n / 2, b)))
            }
        })
        .for_each(|(i, r)| run(i, r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once() {
        for n in [0, 1, 2, 3, 17, 256] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_each_task((0..n).collect(), |i: usize| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn tasks_write_their_own_outputs() {
        let mut out = vec![0usize; 1000];
        let tasks: Vec<(usize, &mut [usize])> = out.chunks_mut(7).enumerate().collect();
        for_each_task(tasks, |(k, chunk)| {
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = k * 7 + j;
            }
        });
        assert!(out.iter().enumerate().all(|(i, &v)| i == v));
    }

    /// Every row reaches `row` once with its index, its slab row and its loss, small or large.
    #[test]
    fn rows_reach_their_index() {
        for (n, width, per) in [(0, 3, 4), (1, 3, 4), (37, 3, 4), (1000, 2, 7), (1000, 5, 1)] {
            for small in [true, false] {
                let z: Vec<usize> = (0..n * width).collect();
                let mut out = vec![0usize; n * width];
                let mut loss = vec![0.0f32; n];
                let rows = (
                    Slab {
                        data: &z[..],
                        width,
                    },
                    (
                        Slab {
                            data: &mut out[..],
                            width,
                        },
                        &mut loss[..],
                    ),
                );
                for_each_row(rows, per, small, |i, (z, (o, l))| {
                    assert_eq!((z.data.len(), o.data.len(), l.len()), (width, width, 1));
                    o.data.copy_from_slice(z.data);
                    l[0] = i as f32;
                });
                assert!(
                    out.iter().enumerate().all(|(k, &v)| k == v),
                    "{n}x{width} {small}"
                );
                assert!(loss.iter().enumerate().all(|(i, &l)| l == i as f32));
            }
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            for_each_task((0..64).collect(), |i: usize| assert!(i != 40, "task 40"));
        });
        assert!(r.is_err());
    }
}
