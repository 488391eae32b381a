//! The accept loop: [`bind`], [`serve`], admission and shutdown. A new connection is admitted
//! as pending (`admission`: at most `max_pending` in all and `max_pending_per_address` from one
//! address; over either it is closed at once) and handed to `association::handle_connection`,
//! which takes an association slot only once its A-ASSOCIATE-RQ is read and accepted. Shutdown
//! stops accepting, lets the running associations end (idle ones and pending connections at
//! once, busy ones after their message) and cancels what is left after the grace period. The
//! counters live in `stats`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use super::InstanceSink;
use super::admission::{Pending, PendingGuard};
use super::association::{Shared, handle_connection};
use super::config::ScpSettings;
use super::stats::{IngestStats, bump};

/// Why the SCP cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The listen address cannot be bound.
    #[error("scp.bind: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The SCP's listening sockets: the plain port, and the TLS port with its handshake when
/// `[scp.tls]` is configured.
pub struct Listeners {
    /// The plain DICOM port.
    pub plain: TcpListener,
    /// The DICOM TLS port and its acceptor.
    pub tls: Option<(TcpListener, TlsAcceptor)>,
}

impl Listeners {
    /// Address of the plain port.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.plain.local_addr()
    }
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Self {
        Self { plain, tls: None }
    }
}

/// Binds the checked `bind` address, and the TLS port when configured.
pub async fn bind(settings: &ScpSettings) -> Result<Listeners, IngestError> {
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| IngestError::Bind { addr, source })
    };
    let plain = listen(settings.bind).await?;
    let tls = match &settings.tls {
        Some(tls) => Some((listen(tls.bind).await?, tls.acceptor.clone())),
        None => None,
    };
    Ok(Listeners { plain, tls })
}

/// A new connection admitted as pending, or `None` (accept failed, or too many pending: closed
/// at once).
async fn admit(
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    pending: &Arc<Pending>,
    shared: &Shared,
) -> Option<(tokio::net::TcpStream, SocketAddr, PendingGuard)> {
    let (socket, peer) = match accepted {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return None;
        }
    };
    if let Err(e) = socket.set_nodelay(true) {
        warn!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    match pending.admit(peer.ip()) {
        Ok(guard) => Some((socket, peer, guard)),
        Err(refusal) => {
            bump(&shared.stats.connections_refused);
            warn!(%peer, reason = refusal.reason(), "connection closed at once: too many pending connections");
            None
        }
    }
}

/// The next connection on the TLS port; never resolves without one.
async fn accept_tls(tls: &Option<(TcpListener, TlsAcceptor)>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves DICOM associations on `listener` until `shutdown` turns true (or its sender is
/// dropped). Each association runs in its own task; instances go to `sink.store` on a blocking
/// thread and the C-STORE-RSP is sent only after it returns. On shutdown, idle associations are
/// aborted, busy ones finish their current message, and after `read_timeout_s` (+5 s) whatever
/// is left is cancelled. Needs a multi-thread tokio runtime.
pub async fn serve(
    listeners: impl Into<Listeners>,
    settings: Arc<ScpSettings>,
    sink: Arc<dyn InstanceSink>,
    stats: Arc<IngestStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let shared = Arc::new(Shared::new(&settings, sink, stats, shutdown.clone()));
    let config = shared.config.clone();
    let pending = Pending::new(config.max_pending, config.max_pending_per_address);
    let mut tasks = JoinSet::new();
    let Listeners { plain: listener, tls } = listeners.into();
    let local = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    info!(addr = %local, ae_title = %config.ae_title, max_pdu = config.max_pdu,
        max_associations = config.max_associations, max_pending = config.max_pending, "DICOM SCP listening");
    if let Some((tls_listener, _)) = &tls {
        let addr = tls_listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        info!(addr = %addr, "DICOM TLS listening");
    }
    if *shutdown.borrow_and_update() {
        return Ok(());
    }
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() {
                    break;
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    error!(error = %e, "association task panicked");
                }
            }
            accepted = listener.accept() => {
                if let Some((socket, peer, guard)) = admit(accepted, &pending, &shared).await {
                    tasks.spawn(handle_connection(shared.clone(), socket, peer, guard, None));
                }
            }
            accepted = accept_tls(&tls) => {
                if let Some((socket, peer, guard)) = admit(accepted, &pending, &shared).await {
                    let acceptor = tls.as_ref().map(|(_, acceptor)| acceptor.clone());
                    tasks.spawn(handle_connection(shared.clone(), socket, peer, guard, acceptor));
                }
            }
        }
    }
    drop(tls);
    drop(listener);
    info!(active = tasks.len(), "DICOM SCP shutting down");
    let grace = config.read_timeout() + Duration::from_secs(5);
    let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "associations still running after the grace period: cancelled"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dicom_ul::association::Error as UlError;
    use dicom_ul::association::client::ClientAssociationOptions;
    use dicom_ul::pdu::{
        AbortRQServiceProviderReason, AbortRQSource, AssociationRJResult,
        AssociationRJServiceProviderPresentationReason, AssociationRJSource, Pdu,
    };
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::ingest::{ReceivedInstance, ScpConfig, StoreOutcome, VERIFICATION};

    struct NoSink;

    impl InstanceSink for NoSink {
        fn store(&self, _instance: ReceivedInstance) -> StoreOutcome {
            StoreOutcome::Stored
        }
    }

    /// `serve` on a free loopback port with `config` and a sink that keeps nothing: its
    /// address, counters, shutdown switch and task.
    async fn start(
        config: ScpConfig,
    ) -> (
        std::net::SocketAddr,
        Arc<IngestStats>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), IngestError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Arc::new(config.check().unwrap());
        let stats = Arc::new(IngestStats::default());
        let (shutdown, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, settings, Arc::new(NoSink), stats.clone(), rx));
        (addr, stats, shutdown, server)
    }

    fn client() -> ClientAssociationOptions<'static> {
        ClientAssociationOptions::new()
            .calling_ae_title("SCU")
            .called_ae_title("FCDNODE")
            .with_presentation_context(VERIFICATION, vec!["1.2.840.10008.1.2"])
    }

    /// One association slot: the second peer is turned away (transient, local limit exceeded)
    /// while the first is served; shutdown aborts the idle first one and `serve` returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_the_cap_is_rejected_transiently_and_shutdown_aborts_idle_associations() {
        let test = async {
            let (addr, stats, shutdown, server) = start(ScpConfig {
                max_associations: 1,
                ..ScpConfig::default()
            })
            .await;

            let mut first = client()
                .establish_async(addr)
                .await
                .expect("first association accepted");
            match client().establish_async(addr).await {
                Err(UlError::Rejected { association_rj, .. }) => {
                    assert_eq!(association_rj.result, AssociationRJResult::Transient);
                    assert_eq!(
                        association_rj.source,
                        AssociationRJSource::ServiceProviderPresentation(
                            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded
                        )
                    );
                }
                Err(e) => panic!("expected a rejection, got {e}"),
                Ok(_) => panic!("expected a rejection, got a second association"),
            }

            shutdown.send(true).unwrap();
            match first.receive().await {
                Ok(Pdu::AbortRQ { source }) => assert_eq!(
                    source,
                    AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified)
                ),
                other => panic!("expected A-ABORT on shutdown, got {other:?}"),
            }
            server.await.unwrap().unwrap();
            let stats = stats.snapshot();
            assert_eq!(stats.associations_accepted, 1);
            assert_eq!(stats.associations_rejected, 1);
            assert_eq!(stats.associations_aborted, 1);
            assert_eq!(stats.associations_active, 0);
            assert!(
                TcpStream::connect(addr).await.is_err(),
                "the listener is closed once serve returns"
            );
        };
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .expect("test took too long");
    }

    /// Reads until the server closes: Ok(bytes read) on EOF or reset, Err after `within`.
    async fn until_closed(socket: &mut TcpStream, within: Duration) -> Result<usize, &'static str> {
        let read = async {
            let mut total = 0;
            let mut buf = [0u8; 256];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        };
        tokio::time::timeout(within, read).await.map_err(|_| "still open")
    }

    /// One association slot and three silent connections: the silent ones hold no slot, so a
    /// peer that speaks is served at once, and they are closed at the handshake deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_take_no_association_slot_and_close_at_the_deadline() {
        let test = async {
            let (addr, stats, shutdown, server) = start(ScpConfig {
                max_associations: 1,
                handshake_timeout_s: 1,
                ..ScpConfig::default()
            })
            .await;

            let mut silent = Vec::new();
            for _ in 0..3 {
                silent.push(TcpStream::connect(addr).await.unwrap());
            }
            let association = client().establish_async(addr).await;
            assert!(association.is_ok(), "the only slot went to a silent connection");
            for socket in &mut silent {
                let read = until_closed(socket, Duration::from_secs(5)).await;
                assert_eq!(read, Ok(0), "a silent connection outlived the handshake deadline");
            }
            drop(association);
            shutdown.send(true).unwrap();
            server.await.unwrap().unwrap();
            let stats = stats.snapshot();
            assert_eq!(stats.associations_accepted, 1);
            assert_eq!(stats.associations_rejected, 3, "three handshakes timed out");
            assert_eq!(stats.connections_refused, 0);
        };
        tokio::time::timeout(Duration::from_secs(20), test)
            .await
            .expect("test took too long");
    }

    /// Past `max_pending_per_address` (and then `max_pending`) a new connection is closed at
    /// once, long before the handshake deadline; a place freed is taken again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_pending_caps_are_closed_at_once() {
        let test = async {
            let (addr, stats, shutdown, server) = start(ScpConfig {
                max_pending: 3,
                max_pending_per_address: 2,
                handshake_timeout_s: 60,
                ..ScpConfig::default()
            })
            .await;

            // Two from 127.0.0.1 fill its share; a third from there is closed at once.
            let mut first = TcpStream::connect(addr).await.unwrap();
            let _second = TcpStream::connect(addr).await.unwrap();
            let mut third = TcpStream::connect(addr).await.unwrap();
            assert_eq!(until_closed(&mut third, Duration::from_secs(5)).await, Ok(0));
            // Another address (127.0.0.2 is loopback too) takes the last place in all...
            let other = tokio::net::TcpSocket::new_v4().unwrap();
            other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let _other = other.connect(addr).await.unwrap();
            // ...so the next one from yet another address is over max_pending.
            let over = tokio::net::TcpSocket::new_v4().unwrap();
            over.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            let mut over = over.connect(addr).await.unwrap();
            assert_eq!(until_closed(&mut over, Duration::from_secs(5)).await, Ok(0));
            // The pending ones are still open, and a place freed is taken again.
            assert_eq!(
                until_closed(&mut first, Duration::from_millis(300)).await,
                Err("still open")
            );
            drop(first);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let association = client().establish_async(addr).await;
            assert!(association.is_ok(), "the freed place was not reused");
            assert_eq!(stats.snapshot().connections_refused, 2);
            drop(association);
            shutdown.send(true).unwrap();
            server.await.unwrap().unwrap();
        };
        tokio::time::timeout(Duration::from_secs(20), test)
            .await
            .expect("test took too long");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_returns_at_once_when_already_shut_down_and_bind_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = listener.local_addr().unwrap();
        let settings = ScpConfig {
            bind: taken.to_string(),
            ..ScpConfig::default()
        }
        .check()
        .unwrap();
        match bind(&settings).await {
            Err(IngestError::Bind { addr, .. }) => assert_eq!(addr, taken),
            Ok(_) => panic!("bound an address already in use"),
        }
        let stats = Arc::new(IngestStats::default());
        let (_shutdown, rx) = watch::channel(true);
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            serve(listener, Arc::new(settings), Arc::new(NoSink), stats.clone(), rx),
        )
        .await
        .expect("serve returns without waiting");
        assert!(served.is_ok());
        assert_eq!(stats.snapshot(), Default::default());
    }
}
