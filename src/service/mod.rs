//! The running node: SCP → spool → tracker → pipeline → outbox, plus the HTTP API, wired from
//! validated [`Settings`]. Every hand-over between stages goes through the job database, so a
//! restart resumes where the node stopped.

mod outbox;
mod repeats;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState, Metrics, SpaceFloor};
use crate::audit::{Alert, AuditError, AuditEvent, AuditTrail, Direction, Peer, Transfers};
use crate::config::Settings;
use crate::infer::runtime::{self, RuntimeError};
use crate::infer::{Ensemble, InferError};
use crate::ingest::{self, ConnectionEvent, IngestStats, InstanceSink, ReceivedInstance, StoreOutcome};
use crate::package::manifest::{ModelPackage, PackageError};
use crate::spool::bell::Bell;
use crate::spool::{Spool, SpoolError};
use crate::tracker::Tracker;
use repeats::Repeats;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Spool or job database.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The tracker could not read its state.
    #[error(transparent)]
    Tracker(#[from] crate::tracker::TrackerError),
    /// ONNX Runtime library.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model package.
    #[error("[node] model: {0}")]
    Model(#[from] PackageError),
    /// Loading the model into ONNX Runtime.
    #[error("[node] model: {0}")]
    Infer(#[from] InferError),
    /// The DICOM listening socket.
    #[error(transparent)]
    Listen(#[from] ingest::IngestError),
    /// The audit trail.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A listening socket.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    /// Where the SCP listens.
    pub dicom_addr: SocketAddr,
    /// Where the HTTP API listens, when enabled.
    pub api_addr: Option<SocketAddr>,
    /// The job database (tests and the demo watch it).
    pub db: Arc<crate::spool::db::JobDb>,
    shutdown: watch::Sender<bool>,
    audit: AuditTrail,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Refuses instances while the spool volume is below its free-space floor (0xA700: the
/// modality keeps them and retries), counts spool outcomes into the metrics, gathers what each
/// association stored for the audit trail, then answers what the spool said.
struct MeteredSpool {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    /// The spool volume and `[node] min_free_mb`.
    floor: SpaceFloor,
    audit: AuditTrail,
    /// Studies stored per open association (keyed by the peer's address and port).
    received: Mutex<HashMap<SocketAddr, Transfers>>,
}

impl InstanceSink for MeteredSpool {
    fn staging_dir(&self) -> std::path::PathBuf {
        self.spool.staging_dir()
    }

    fn store(&self, instance: ReceivedInstance) -> StoreOutcome {
        let bytes = instance.dataset.len();
        let peer = instance.peer;
        let (outcome, identity) = match self.floor.check() {
            Ok(()) => self.spool.store_identified(instance),
            Err(reason) => {
                let status = crate::dimse::STATUS_OUT_OF_RESOURCES;
                (StoreOutcome::Failed { status, reason }, None)
            }
        };
        match &outcome {
            StoreOutcome::Failed { status, .. } => self.metrics.instance_refused(*status),
            _ => self.metrics.instance_received(bytes),
        }
        if let (StoreOutcome::Stored, Some(identity)) = (&outcome, identity) {
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            received.entry(peer).or_default().add(&identity);
        }
        outcome
    }

    fn connection_event(&self, event: ConnectionEvent) {
        let peer_of = |address: SocketAddr, ae: &str| Peer {
            ae_title: Some(ae.to_owned()).filter(|a| !a.is_empty()),
            address: address.ip().to_string(),
        };
        match event {
            ConnectionEvent::AssociationEnded { peer, calling_ae } => {
                let transfers = self.received.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                if let Some(transfers) = transfers {
                    transfers.record(&self.audit, Direction::Received, &peer_of(peer, &calling_ae));
                }
            }
            ConnectionEvent::TlsRefused { peer, why } => self.audit.record(&AuditEvent::Security {
                alert: Alert::TlsHandshakeFailed,
                peer: peer_of(peer, ""),
                description: format!("TLS handshake failed: {why}"),
            }),
            ConnectionEvent::AssociationRejected { peer, calling_ae, why } => {
                self.audit.record(&AuditEvent::Security {
                    alert: Alert::AssociationRejected,
                    peer: peer_of(peer, &calling_ae),
                    description: format!("association rejected: {why}"),
                })
            }
        }
    }
}

/// Starts every stage on the current tokio runtime (it must be multi-threaded).
pub async fn start(settings: Settings) -> Result<Node, ServiceError> {
    let spool = Arc::new(Spool::open(&settings.node.data_dir, &settings.node.device_uid)?);
    let db = spool.db().clone();
    let requeued = db.requeue_unfinished().map_err(SpoolError::from)?;
    if requeued > 0 {
        tracing::warn!("{requeued} unfinished job(s) from before the restart run again");
    }
    let ensemble = load_model(&settings)?;
    let audit = AuditTrail::start(&settings.audit, &settings.node.data_dir, &settings.scp.config.ae_title)?;
    let channels = ensemble.manifest().channels.clone();
    tracing::info!(
        model = %ensemble.manifest().name,
        device = ?ensemble.device(),
        "model {} loaded", settings.node.model.display()
    );

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let listener = ingest::bind(&settings.scp).await?;
    let dicom_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        what: "DICOM [scp] bind",
        addr: settings.scp.bind.to_string(),
        source,
    })?;
    let sink: Arc<dyn InstanceSink> = Arc::new(MeteredSpool {
        spool: spool.clone(),
        metrics: metrics.clone(),
        floor: SpaceFloor::for_spool(&settings.node.data_dir, settings.node.min_free_mb),
        audit: audit.clone(),
        received: Mutex::default(),
    });
    let scp_settings = settings.scp.clone();
    let stats = Arc::new(IngestStats::default());
    let rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = ingest::serve(listener, scp_settings, sink, stats, rx).await {
            tracing::error!("DICOM listener stopped: {e}");
        }
    }));

    let api_addr = if settings.api.enabled {
        let listener = bind("HTTP [api] bind", &settings.api.bind).await?;
        let addr = listener.local_addr().ok();
        let state = ApiState {
            destinations: settings.destinations.clone().into(),
            node_ae: settings.scp.config.ae_title.clone(),
            auth: Arc::new(api::auth::Auth::new(
                settings.api.users.clone(),
                settings.api.session_ttl(),
            )),
            audit: audit.clone(),
            ..ApiState::new(
                db.clone(),
                metrics.clone(),
                ready.clone(),
                SpaceFloor::for_data_dir(&settings.node.data_dir, settings.node.min_free_mb),
            )
        };
        let rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = api::serve(listener, state, rx).await {
                tracing::error!("HTTP API stopped: {e}");
            }
        }));
        addr
    } else {
        None
    };

    let tracker = Tracker::new(
        db.clone(),
        settings.router.clone(),
        channels,
        settings.tracker.clone(),
        crate::spool::db::now(),
    )?;
    let mut threads = vec![spawn_thread("tracker", {
        let rx = shutdown_rx.clone();
        let poll = Duration::from_secs_f64(settings.tracker.poll_s);
        let metrics = metrics.clone();
        let spool = spool.clone();
        let retention = settings.retention.clone();
        let results = results_dir(&settings.node.data_dir);
        move || tracker_loop(tracker, spool, &results, retention, metrics, rx, poll)
    })];
    threads.push(spawn_thread("pipeline", {
        let worker = worker::Worker::new(&settings, db.clone(), ensemble, metrics.clone());
        let rx = shutdown_rx.clone();
        move || worker.run(rx)
    }));
    tasks.push(tokio::spawn(outbox::run(
        db.clone(),
        settings.clone(),
        metrics.clone(),
        audit.clone(),
        shutdown_rx.clone(),
    )));
    ready.store(true, Ordering::SeqCst);
    audit.record(&AuditEvent::Application { started: true });
    let api = api_addr.map_or_else(|| "off".into(), |a| a.to_string());
    tracing::info!(%dicom_addr, api_addr = %api, ae_title = %settings.scp.config.ae_title, "node ready");
    Ok(Node {
        dicom_addr,
        api_addr,
        db,
        shutdown,
        audit,
        tasks,
        threads,
    })
}

impl Node {
    /// Stops accepting, lets running steps finish, and returns when every stage has stopped.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let threads = self.threads;
        let audit = self.audit;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            audit.stop();
        })
        .await;
    }
}

/// Results of job `id` live in `<data_dir>/results/job-<id>`.
pub fn results_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("results")
}

fn load_model(settings: &Settings) -> Result<Ensemble, ServiceError> {
    let library = runtime::find_library(settings.runtime.onnxruntime.as_deref())?;
    runtime::init(&library)?;
    let package = ModelPackage::load(&settings.node.model)?;
    Ok(Ensemble::load(
        &package,
        settings.runtime.device,
        settings.runtime.threads,
    )?)
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr).await.map_err(|source| ServiceError::Bind {
        what,
        addr: addr.to_owned(),
        source,
    })
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start the {name} thread: {e}"))
}

/// How often a lasting error is logged again, with its count.
const REPEATS_EVERY: Duration = Duration::from_secs(60);

/// Logs an error of a polling loop at ERROR: the first time, then once per [`REPEATS_EVERY`]
/// with how often it recurred.
fn log_repeated(repeats: &mut Repeats, what: &str, message: &str) {
    match repeats.error(message, std::time::Instant::now()) {
        repeats::Log::First => tracing::error!("{what}: {message}"),
        repeats::Log::Again { times, over } => tracing::error!(
            repeated = times,
            "{what}: {message} (again {times} time(s) in the last {} s)",
            over.as_secs()
        ),
        repeats::Log::Quiet => {}
    }
}

/// Sleeps up to `d`, or until `bell` rings past the generation seen, or shutdown; true when
/// the node is shutting down.
fn wait_or_stop(rx: &watch::Receiver<bool>, d: Duration, bell: Option<(&Bell, u64)>) -> bool {
    // Shutdown is a watch channel, not a bell: look at it between short waits.
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if *rx.borrow() {
            return true;
        }
        let s = left.min(step);
        match bell {
            Some((bell, seen)) => {
                if bell.wait_past(seen, s) {
                    break;
                }
            }
            None => std::thread::sleep(s),
        }
        left -= s;
    }
    *rx.borrow()
}

fn tracker_loop(
    mut tracker: Tracker,
    spool: Arc<Spool>,
    results: &Path,
    retention: crate::config::RetentionConfig,
    metrics: Arc<Metrics>,
    rx: watch::Receiver<bool>,
    poll: Duration,
) {
    let mut last_retention = 0.0;
    let mut repeats = Repeats::new(REPEATS_EVERY);
    let mut journal_repeats = Repeats::new(REPEATS_EVERY);
    let bell = &spool.db().bells().instances;
    loop {
        let seen = bell.generation();
        let now = crate::spool::db::now();
        let ticked = match tracker.tick(now) {
            Ok(tick) => {
                if let Some(times) = repeats.recovered() {
                    tracing::info!(failed_ticks = times, "tracker: recovered");
                }
                for _ in 0..tick.completed {
                    metrics.series_completed();
                }
                true
            }
            Err(e) => {
                log_repeated(&mut repeats, "tracker", &e.to_string());
                false
            }
        };
        // Journal segments no association appends to any more: their instances made durable by
        // one sync of the volume, then deleted.
        match spool.retire_journal(crate::spool::JOURNAL_IDLE) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(segments = n, "spool journal retired"),
            Err(e) => log_repeated(&mut journal_repeats, "spool journal", &e.to_string()),
        }
        if now - last_retention > 3600.0 {
            last_retention = now;
            apply_retention(&spool, results, &retention);
        }
        // Sleep until the next series becomes stable (a later instance only moves that later);
        // with nothing pending, until an instance arrives. `poll` bounds either wait.
        // A failed pass waits `poll` whatever is due, so a lasting fault does not spin.
        let stopping = match tracker.next_due() {
            Ok(_) if !ticked => wait_or_stop(&rx, poll, None),
            Ok(Some(due)) => {
                let left = (due - crate::spool::db::now()).clamp(0.001, poll.as_secs_f64());
                wait_or_stop(&rx, Duration::from_secs_f64(left), None)
            }
            Ok(None) => wait_or_stop(&rx, poll, Some((bell, seen))),
            Err(e) => {
                log_repeated(&mut repeats, "tracker", &e.to_string());
                wait_or_stop(&rx, poll, None)
            }
        };
        if stopping {
            return;
        }
    }
}

fn apply_retention(spool: &Spool, results: &Path, retention: &crate::config::RetentionConfig) {
    const DAY: f64 = 86_400.0;
    if retention.spool_days > 0.0 {
        match spool.expire(retention.spool_days * DAY) {
            Ok(0) => {}
            Ok(n) => tracing::info!("retention: {n} spooled instance(s) deleted"),
            Err(e) => tracing::warn!("retention: {e}"),
        }
    }
    if retention.results_days > 0.0
        && let Ok(entries) = std::fs::read_dir(results)
    {
        let max_age = Duration::from_secs_f64(retention.results_days * DAY);
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old && let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), "retention: cannot delete: {e}");
            }
        }
    }
}
