//! The runtime seam: everything the node and its clients need from an async
//! runtime (executors, tasks, timers, sockets, disk reads, blocking work),
//! on one of two backends chosen per process.
//!
//! | backend | sockets | index reads | where |
//! |---|---|---|---|
//! | [`Backend::Glommio`] | io_uring | `O_DIRECT` through io_uring (`DmaFile`) | default, where io_uring can be set up |
//! | [`Backend::Epoll`] | epoll (`async-io`) | blocking `pread` (`O_DIRECT` where the filesystem allows) on a thread pool (`blocking`) | containers whose seccomp profile blocks io_uring, `kernel.io_uring_disabled`, `SHARDANN_DISABLE_URING` |
//!
//! Both are thread-per-core: one single-threaded executor per core, whose
//! tasks are `!Send` and share the executor's state through `Rc`, so the
//! code above this module is the same on both; it calls the functions here
//! instead of glommio's. Which backend the calling task runs on is a
//! property of its thread (an epoll executor registers itself in a
//! thread-local), so [`spawn_local`] and friends need no handle.
//!
//! The epoll backend gives up what only io_uring has: the W reads of a
//! search round go to pool threads instead of one submission, and the
//! search task queue's CPU shares (glommio's scheduler) become a single
//! FIFO queue. It is the fallback that keeps a node serving where io_uring
//! is not allowed, not the fast path.
//!
//! Modules: [`hyper_io`] (what hyper needs: IO adapter, spawner, timer),
//! [`net`] (TCP streams and listeners), [`file`] (reading index and
//! segment files).

pub mod file;
pub mod hyper_io;
pub mod net;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use serde::Deserialize;

pub use hyper_io::{AsyncIoTimer, Io, LocalExec};

use crate::error::ServerError;
use crate::runtime::DEFAULT_IO_MEMORY;

/// The runtime a node (or a client) asks for: `node.toml`'s `runtime`,
/// `serve --runtime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// glommio where io_uring can be set up, else epoll, with one line on
    /// stderr saying why ([`auto`]).
    #[default]
    Auto,
    /// glommio or an error at start.
    #[serde(alias = "io_uring", alias = "uring")]
    Glommio,
    /// The epoll backend even where io_uring works (tests, comparisons).
    Epoll,
}

impl RuntimeChoice {
    pub fn resolve(self) -> Backend {
        match self {
            RuntimeChoice::Auto => auto(),
            RuntimeChoice::Glommio => Backend::Glommio,
            RuntimeChoice::Epoll => Backend::Epoll,
        }
    }
}

impl std::str::FromStr for RuntimeChoice {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            "glommio" | "io_uring" | "uring" => Ok(RuntimeChoice::Glommio),
            "epoll" => Ok(RuntimeChoice::Epoll),
            _ => Err(ServerError::InvalidParameter(format!(
                "unknown runtime {s:?}: expected auto, glommio or epoll"
            ))),
        }
    }
}

/// One of the two runtimes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Glommio,
    Epoll,
}

impl Backend {
    /// The name `serve` prints and `/healthz` reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Glommio => "glommio",
            Backend::Epoll => "epoll",
        }
    }
}

static AUTO: OnceLock<Backend> = OnceLock::new();

/// Makes `backend` this process's [`auto`] choice, so that what runs beside
/// a node (its startup pulls, [`block_on`], clients) runs where the node
/// does, without probing io_uring at all. A node asked for a runtime
/// explicitly calls it; the first choice in a process stands (`false` if
/// one had already been made).
pub fn set_default(backend: Backend) -> bool {
    AUTO.set(backend).is_ok()
}

/// The backend this process uses when none was asked for: glommio if an
/// io_uring can be set up and a glommio executor started, else epoll.
/// Probed once per process (one unpinned executor: a node's N pinned ones
/// can still fail, and `serve::start` then falls back itself); a fallback
/// is said once on stderr, with the reason.
pub fn auto() -> Backend {
    *AUTO.get_or_init(|| match glommio_probe() {
        Ok(()) => Backend::Glommio,
        Err(why) => {
            eprintln!(
                "note: {why}; running on the epoll runtime instead (sockets on epoll, index reads with pread on a thread pool)"
            );
            Backend::Epoll
        }
    })
}

fn glommio_probe() -> Result<(), String> {
    if !shardann_engine::io::UringReader::usable() {
        return Err("io_uring cannot be set up here (blocked by seccomp, kernel.io_uring_disabled, or SHARDANN_DISABLE_URING)".into());
    }
    probe_pool(PoolSpec {
        backend: Backend::Glommio,
        executors: 1,
        name: "shardann-probe",
        pinned: false,
    })
}

thread_local! {
    /// The epoll executor running on this thread, if any.
    static EPOLL: RefCell<Option<Rc<LocalExecutor<'static>>>> = const { RefCell::new(None) };
}

fn epoll_executor() -> Option<Rc<LocalExecutor<'static>>> {
    EPOLL.with(|e| e.borrow().clone())
}

/// The backend of the executor the caller runs on.
pub fn current() -> Backend {
    if epoll_executor().is_some() {
        Backend::Epoll
    } else {
        Backend::Glommio
    }
}

/// Runs `fut` to completion on a new epoll executor on this thread; tasks
/// spawned meanwhile run beside it and are dropped when it returns.
fn run_epoll<F: Future>(fut: F) -> F::Output {
    let ex = Rc::new(LocalExecutor::new());
    EPOLL.with(|e| *e.borrow_mut() = Some(Rc::clone(&ex)));
    let out = async_io::block_on(ex.run(fut));
    EPOLL.with(|e| e.borrow_mut().take());
    out
}

/// A spawned task: awaiting it gives its output, dropping it cancels it,
/// [`Task::detach`] lets it run on.
#[must_use = "a task is cancelled when dropped; detach it to let it run"]
pub enum Task<T> {
    Glommio(glommio::Task<T>),
    Epoll(async_executor::Task<T>),
}

impl<T> Task<T> {
    pub fn detach(self) {
        match self {
            Task::Glommio(t) => {
                t.detach();
            }
            Task::Epoll(t) => t.detach(),
        }
    }
}

impl<T> Future for Task<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Task::Glommio(t) => Pin::new(t).poll(cx),
            Task::Epoll(t) => Pin::new(t).poll(cx),
        }
    }
}

/// Spawns `fut` on the caller's executor.
pub fn spawn_local<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    match epoll_executor() {
        Some(ex) => Task::Epoll(ex.spawn(fut)),
        None => Task::Glommio(glommio::spawn_local(fut)),
    }
}

/// A queue of tasks with its own CPU shares against the executor's default
/// queue (1,000 shares) on glommio. The epoll executor has one FIFO queue:
/// there a `Queue` is that queue.
#[derive(Clone, Copy, Debug)]
pub struct Queue(Option<glommio::TaskQueueHandle>);

impl Queue {
    /// A new queue on the caller's executor.
    pub fn new(name: &str, shares: usize) -> Queue {
        if epoll_executor().is_some() {
            return Queue(None);
        }
        Queue(Some(glommio::executor().create_task_queue(
            glommio::Shares::Static(shares),
            glommio::Latency::NotImportant,
            name,
        )))
    }

    /// Spawns `fut` into this queue.
    pub fn spawn<F>(&self, fut: F) -> io::Result<Task<F::Output>>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        match self.0 {
            None => Ok(spawn_local(fut)),
            Some(q) => glommio::spawn_local_into(fut, q)
                .map(Task::Glommio)
                .map_err(|e| io::Error::other(e.to_string())),
        }
    }
}

/// Waits `d` on the caller's executor.
pub async fn sleep(d: Duration) {
    if epoll_executor().is_some() {
        async_io::Timer::after(d).await;
    } else {
        glommio::timer::sleep(d).await;
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first (the
/// future is dropped, which cancels its reads and requests).
pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let timer = std::pin::pin!(sleep(deadline.saturating_duration_since(Instant::now())));
    let fut = std::pin::pin!(fut);
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

/// Runs `f` on a thread where blocking is fine (model inference, file
/// reads), without stalling the caller's executor.
pub async fn spawn_blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if epoll_executor().is_some() {
        blocking::unblock(f).await
    } else {
        glommio::executor().spawn_blocking(f).await
    }
}

/// Executors started by [`start_pool`], one thread each.
pub struct Pool<T> {
    inner: PoolInner<T>,
}

enum PoolInner<T> {
    Glommio(glommio::PoolThreadHandles<T>),
    Epoll(Vec<std::thread::JoinHandle<T>>),
}

impl<T> Pool<T> {
    /// Waits for every executor: its output, or why its thread failed.
    pub fn join_all(self) -> Vec<io::Result<T>> {
        match self.inner {
            PoolInner::Glommio(h) => h
                .join_all()
                .into_iter()
                .map(|r| r.map_err(io::Error::from))
                .collect(),
            PoolInner::Epoll(h) => h
                .into_iter()
                .map(|t| {
                    t.join()
                        .map_err(|_| io::Error::other("the executor thread panicked"))
                })
                .collect(),
        }
    }
}

/// How [`start_pool`] starts its executors.
#[derive(Clone, Copy, Debug)]
pub struct PoolSpec<'a> {
    pub backend: Backend,
    pub executors: usize,
    /// Thread names (glommio adds the executor's number).
    pub name: &'a str,
    /// One executor pinned per CPU (glommio only): for a node that owns the
    /// machine. Otherwise the kernel places the threads.
    pub pinned: bool,
}

/// Starts `spec.executors` executors, each running `make()`'s future.
pub fn start_pool<G, F, T>(spec: PoolSpec<'_>, make: G) -> io::Result<Pool<T>>
where
    G: FnOnce() -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    match spec.backend {
        Backend::Glommio => {
            let placement = if spec.pinned {
                glommio::PoolPlacement::MaxSpread(spec.executors, None)
            } else {
                glommio::PoolPlacement::Unbound(spec.executors)
            };
            glommio::LocalExecutorPoolBuilder::new(placement)
                // Each executor's blocking thread (query embedding)
                // unpinned: the pool's default pins every one of them to the
                // same first CPU, and candle's threads started from there
                // would inherit that one CPU.
                .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
                .name(spec.name)
                .io_memory(DEFAULT_IO_MEMORY)
                .on_all_shards(make)
                .map(|h| Pool {
                    inner: PoolInner::Glommio(h),
                })
                .map_err(io::Error::from)
        }
        Backend::Epoll => {
            let mut handles = Vec::with_capacity(spec.executors);
            for i in 0..spec.executors {
                let make = make.clone();
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("{}-{i}", spec.name))
                        .spawn(move || run_epoll(make()))?,
                );
            }
            Ok(Pool {
                inner: PoolInner::Epoll(handles),
            })
        }
    }
}

/// Waits for [`block_on`]'s thread.
type Joiner<T> = Box<dyn FnOnce() -> io::Result<T>>;

/// Can `spec`'s pool start here? Starts it with empty executors and waits
/// for them: on glommio, N executors need N times the locked memory of the
/// one [`auto`] tried, and pinned ones need their CPUs. `Err` says why not.
pub fn probe_pool(spec: PoolSpec<'_>) -> Result<(), String> {
    let why = |e: &dyn std::fmt::Display| {
        format!(
            "{} {} executor(s) cannot start here ({e})",
            spec.executors,
            spec.backend.name()
        )
    };
    let pool = start_pool(spec, || async {}).map_err(|e| why(&e))?;
    for joined in pool.join_all() {
        joined.map_err(|e| why(&e))?;
    }
    Ok(())
}

/// Runs `make()`'s future to completion on a fresh, unpinned executor
/// thread of this process's [`auto`] backend and returns its output: how
/// blocking code (the CLI, a node's startup) calls the async clients.
pub fn block_on<F, Fut, T>(name: &str, make: F) -> crate::error::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let started = match auto() {
        Backend::Glommio => glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(name)
            .io_memory(DEFAULT_IO_MEMORY)
            .spawn(make)
            .map(|h| Box::new(move || h.join().map_err(io::Error::from)) as Joiner<T>)
            .map_err(io::Error::from),
        Backend::Epoll => std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run_epoll(make()))
            .map(|h| {
                Box::new(move || {
                    h.join()
                        .map_err(|_| io::Error::other("the executor thread panicked"))
                }) as Joiner<T>
            }),
    };
    let join = started.map_err(|source| ServerError::Runtime {
        executors: 1,
        source,
    })?;
    join().map_err(|source| ServerError::Executor {
        executor: 0,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_both<T: Send + 'static>(
        make: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Clone + Send + 'static,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for backend in [Backend::Glommio, Backend::Epoll] {
            if backend == Backend::Glommio && auto() == Backend::Epoll {
                continue;
            }
            let spec = PoolSpec {
                backend,
                executors: 1,
                name: "rt-test",
                pinned: false,
            };
            for r in start_pool(spec, make.clone()).unwrap().join_all() {
                out.push(r.unwrap());
            }
        }
        out
    }

    #[test]
    fn tasks_timers_and_blocking_work_on_both_backends() {
        let outs = on_both(|| {
            Box::pin(async {
                let backend = current();
                let a = spawn_local(async { 20 });
                let q = Queue::new("q", 100);
                let b = q.spawn(async { 21 }).unwrap();
                let c = spawn_blocking(|| 1).await;
                let slow = until(
                    Instant::now() + Duration::from_millis(5),
                    sleep(Duration::from_secs(5)),
                )
                .await;
                let fast = until(Instant::now() + Duration::from_secs(5), async { 7 }).await;
                // A dropped task is cancelled: its side effect never happens.
                let flag = Rc::new(std::cell::Cell::new(false));
                let f2 = Rc::clone(&flag);
                drop(spawn_local(async move {
                    sleep(Duration::from_millis(1)).await;
                    f2.set(true);
                }));
                sleep(Duration::from_millis(20)).await;
                (backend, a.await + b.await + c, slow, fast, flag.get())
            })
        });
        assert!(!outs.is_empty());
        for (i, (backend, sum, slow, fast, flag)) in outs.iter().enumerate() {
            if i + 1 == outs.len() {
                assert_eq!(*backend, Backend::Epoll);
            }
            assert_eq!(*sum, 42);
            assert_eq!(*slow, None);
            assert_eq!(*fast, Some(7));
            assert!(!flag);
        }
    }

    #[test]
    fn runtime_choice_parses_and_names_what_it_accepts() {
        assert_eq!(
            "epoll".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Epoll
        );
        assert_eq!(
            "glommio".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Glommio
        );
        assert_eq!(
            "auto".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Auto
        );
        let e = "tokio".parse::<RuntimeChoice>().unwrap_err().to_string();
        assert!(e.contains("tokio") && e.contains("epoll"), "{e}");
        assert_eq!(RuntimeChoice::Epoll.resolve(), Backend::Epoll);
        #[derive(Deserialize)]
        struct Config {
            runtime: RuntimeChoice,
        }
        for (text, want) in [
            ("epoll", RuntimeChoice::Epoll),
            ("io_uring", RuntimeChoice::Glommio),
            ("glommio", RuntimeChoice::Glommio),
        ] {
            let c: Config = toml::from_str(&format!("runtime = \"{text}\"")).unwrap();
            assert_eq!(c.runtime, want, "{text}");
        }
        assert!(toml::from_str::<Config>("runtime = \"tokio\"").is_err());
    }

    #[test]
    fn a_pool_that_can_start_is_probed_as_such() {
        let spec = PoolSpec {
            backend: Backend::Epoll,
            executors: 2,
            name: "probe-test",
            pinned: false,
        };
        probe_pool(spec).unwrap();
    }
}
