//! A parallel loop in which the calling thread works too.
//!
//! A rayon parallel iterator called from a thread outside the pool (a training loop's thread,
//! in the usual case) hands the whole job to the pool and blocks: the caller sleeps on a
//! condition variable, a worker has to be woken to start, and the caller has to be woken at
//! the end. On the 2-core machine of `BENCHMARKS.md` those hand-offs cost about 10 µs per
//! call, which is a tenth of the loss on 256×1000 logits. [`for_each_task`] instead runs tasks
//! on the caller at once, lets `threads - 1` pool workers join as they wake, hands out tasks
//! in order through an atomic counter (so whoever is awake does the work), and spins briefly at
//! the end for tasks still running rather than sleeping.
//!
//! Each task writes only its own outputs, so the result does not depend on which thread ran
//! which task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the caller spins for tasks other threads still run before it blocks in rayon's
/// scope (which sleeps): longer than a task of [`crate::cpu`]'s sizes, short enough that a
/// preempted helper does not burn a core for long.
const SPIN: Duration = Duration::from_micros(200);

/// Runs `f` on every task, on the calling thread and up to `threads - 1` rayon workers, and
/// returns when all are done. A panic in `f` reaches the caller (rayon's scope rethrows it).
pub(crate) fn for_each_task<I: Send, F: Fn(I) + Sync>(tasks: Vec<I>, f: F) {
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

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            for_each_task((0..64).collect(), |i: usize| assert!(i != 40, "task 40"));
        });
        assert!(r.is_err());
    }
}
