//! Where cut streams are counted: the prompt and delivered output of a stream that ended
//! before its final usage are tokenized (milliseconds with a BPE encoding) on a few long-lived
//! threads of their own, fed by one queue — never on the runtime's threads, and never a thread
//! per stream. (With tokio's blocking pool, 5,000 streams cut at once started hundreds of
//! threads, each keeping its stack and allocator cache for the pool's 10 s keep-alive:
//! docs/benchmarks.md, "session 8".)

use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

/// The most counting threads, whatever the core count: cut streams are the exception, and a
/// backlog only delays records (a request's draft stays pending until its job ran, so shutdown
/// waits for it).
const MAX_THREADS: usize = 4;

static QUEUE: OnceLock<Option<flume::Sender<Job>>> = OnceLock::new();

/// Runs `job` on a counting thread, or here when none could be started. The job runs inside
/// the caller's tokio runtime context, if it has one: what a record settles in cluster mode (a
/// budget's or a TPM limit's shared reservation) spawns its Redis call onto that runtime.
pub fn run(job: impl FnOnce() + Send + 'static) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let job = move || {
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        job();
    };
    match QUEUE.get_or_init(start) {
        Some(queue) => {
            if let Err(flume::SendError(job)) = queue.send(Box::new(job)) {
                job();
            }
        }
        None => job(),
    }
}

/// Starts one counting thread per core (at most [`MAX_THREADS`]) sharing one queue.
fn start() -> Option<flume::Sender<Job>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_THREADS);
    let (queue, jobs) = flume::unbounded::<Job>();
    let mut started = 0;
    for index in 0..threads {
        let jobs = jobs.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("poolgate-estimate-{index}"))
            .spawn(move || {
                for job in jobs.iter() {
                    job();
                }
            });
        match spawned {
            Ok(_) => started += 1,
            Err(error) => {
                tracing::warn!(%error, "could not start a token-counting thread");
            }
        }
    }
    (started > 0).then_some(queue)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn every_job_runs_on_a_bounded_set_of_threads() {
        let (done, finished) = mpsc::channel();
        for number in 0..500 {
            let done = done.clone();
            run(move || {
                let thread = std::thread::current();
                done.send((number, thread.id(), thread.name().map(str::to_owned)))
                    .unwrap();
            });
        }
        drop(done);
        let results: Vec<_> = finished.iter().collect();
        let numbers: HashSet<_> = results.iter().map(|(number, _, _)| *number).collect();
        assert_eq!(numbers.len(), 500, "every job ran once");
        let threads: HashSet<_> = results.iter().map(|(_, id, _)| *id).collect();
        assert!(
            (1..=MAX_THREADS).contains(&threads.len()),
            "{} threads",
            threads.len()
        );
        for (_, _, name) in &results {
            let name = name.as_deref().unwrap_or_default();
            assert!(name.starts_with("poolgate-estimate-"), "ran on {name:?}");
        }
    }

    #[tokio::test]
    async fn a_job_runs_in_its_callers_runtime() {
        let (spawned, result) = tokio::sync::oneshot::channel();
        run(move || {
            // What a cluster-mode settle does: spawn onto the runtime it finds.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let _ = spawned.send(std::thread::current().name().map(str::to_owned));
                    });
                }
                Err(_) => drop(spawned),
            }
        });
        let ran_on = result.await.expect("the job found no runtime");
        let ran_on = ran_on.unwrap_or_default();
        assert!(!ran_on.starts_with("poolgate-estimate-"), "{ran_on}");
    }
}
