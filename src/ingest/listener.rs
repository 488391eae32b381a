//! The accept loop: [`bind`], [`serve`] and what happens to a connection before it becomes an
//! association. Owns the association cap (one semaphore of `max_associations` slots for served
//! associations, a second of the same size for the peers being turned away), the transient
//! A-ASSOCIATE-RJ sent to a peer over the cap, and shutdown: stop accepting, let the running
//! associations end (idle ones abort at once, busy ones finish their message) and cancel what
//! is left after the grace period. Each admitted connection is handed to
//! `association::handle_association`; the counters live in `stats`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJSource, Pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::InstanceSink;
use super::association::{Shared, handle_association};
use super::config::ScpSettings;
use super::stats::{IngestStats, bump};

/// Largest A-ASSOCIATE-RQ read (and discarded) when answering "too many associations".
const MAX_REJECTED_RQ: u32 = 256 * 1024;

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

/// Binds the checked `bind` address.
pub async fn bind(settings: &ScpSettings) -> Result<TcpListener, IngestError> {
    let addr = settings.bind;
    TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Bind { addr, source })
}

/// Serves DICOM associations on `listener` until `shutdown` turns true (or its sender is
/// dropped). Each association runs in its own task; instances go to `sink.store` on a blocking
/// thread and the C-STORE-RSP is sent only after it returns. On shutdown, idle associations are
/// aborted, busy ones finish their current message, and after `read_timeout_s` (+5 s) whatever
/// is left is cancelled. Needs a multi-thread tokio runtime.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<ScpSettings>,
    sink: Arc<dyn InstanceSink>,
    stats: Arc<IngestStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let shared = Arc::new(Shared::new(&settings, sink, stats, shutdown.clone()));
    let config = shared.config.clone();
    let slots = Arc::new(Semaphore::new(config.max_associations));
    let reject_slots = Arc::new(Semaphore::new(config.max_associations));
    let mut tasks = JoinSet::new();
    let local = listener.local_addr().ok();
    info!(addr = ?local, ae_title = %config.ae_title, max_pdu = config.max_pdu, "DICOM SCP listening");
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
                let (socket, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = socket.set_nodelay(true) {
                    warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(handle_association(shared.clone(), socket, peer, permit));
                    }
                    Err(_) => {
                        bump(&shared.stats.associations_rejected);
                        if let Ok(permit) = reject_slots.clone().try_acquire_owned() {
                            let limit = config.max_associations;
                            tasks.spawn(reject_busy(socket, peer, config.read_timeout(), limit, permit));
                        } else {
                            warn!(%peer, max_associations = config.max_associations,
                                "connection dropped: too many concurrent associations and rejections");
                        }
                    }
                }
            }
        }
    }
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

/// Reads the A-ASSOCIATE-RQ of a peer over the association limit (at most 256 KiB, allocated
/// as it arrives), logs who it was and answers A-ASSOCIATE-RJ (transient, service provider
/// presentation, local limit exceeded).
async fn reject_busy(
    mut socket: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    limit: usize,
    _permit: OwnedSemaphorePermit,
) {
    let answer = async {
        let mut pdu = vec![0u8; 6];
        socket.read_exact(&mut pdu).await?;
        let length = u32::from_be_bytes([pdu[2], pdu[3], pdu[4], pdu[5]]);
        if pdu[0] != 0x01 || length > MAX_REJECTED_RQ {
            return Ok::<_, std::io::Error>(None);
        }
        (&mut socket).take(u64::from(length)).read_to_end(&mut pdu).await?;
        let calling = match dicom_ul::read_pdu(&pdu[..], MAX_REJECTED_RQ, false) {
            Ok(Some(Pdu::AssociationRQ(rq))) => rq.calling_ae_title,
            _ => return Ok(None),
        };
        let rj = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        });
        let mut bytes = Vec::new();
        dicom_ul::pdu::write_pdu(&mut bytes, &rj).map_err(std::io::Error::other)?;
        socket.write_all(&bytes).await?;
        socket.shutdown().await?;
        Ok(Some(calling))
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Some(calling_ae))) => warn!(%peer, calling_ae = %calling_ae, max_associations = limit,
            "association rejected (transient): too many concurrent associations"),
        Ok(Ok(None)) => warn!(%peer, max_associations = limit,
            "over the association limit and no readable A-ASSOCIATE-RQ: dropped"),
        Ok(Err(e)) => warn!(%peer, max_associations = limit, error = %e,
            "over the association limit: connection failed"),
        Err(_) => warn!(%peer, max_associations = limit, "over the association limit and silent: dropped"),
    }
}

#[cfg(test)]
mod tests {
    use dicom_ul::association::Error as UlError;
    use dicom_ul::association::client::ClientAssociationOptions;
    use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource};

    use super::*;
    use crate::ingest::{ReceivedInstance, ScpConfig, StoreOutcome, VERIFICATION};

    struct NoSink;

    impl InstanceSink for NoSink {
        fn store(&self, _instance: ReceivedInstance) -> StoreOutcome {
            StoreOutcome::Stored
        }
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
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let settings = ScpConfig {
                max_associations: 1,
                ..ScpConfig::default()
            }
            .check()
            .unwrap();
            let stats = Arc::new(IngestStats::default());
            let (shutdown, rx) = watch::channel(false);
            let server = tokio::spawn(serve(listener, Arc::new(settings), Arc::new(NoSink), stats.clone(), rx));

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
