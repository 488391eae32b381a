//! The node's Prometheus metrics: counters the service bumps as it works, the job gauge filled
//! from the database at scrape time, and stage latency histograms.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::spool::db::JobState;

/// Content type of [`Metrics::encode`]'s output (OpenMetrics text exposition).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Stages timed by `fcdnode_stage_seconds`. `turnaround` is the series turnaround of
/// `fcdnode bench node`, seen from inside: the last instance of a job's series stored (its
/// C-STORE-RSP) → the job's last result (the SR) acknowledged by the destination(s); recorded
/// once per delivered job, so it includes the stable age, queueing and delivery retries.
pub const STAGES: [&str; 7] = [
    "assemble",
    "preprocess",
    "infer",
    "explain",
    "report",
    "deliver",
    "turnaround",
];

/// Upper bounds of the stage histogram buckets, in seconds: 1 ms … 120 s.
pub const STAGE_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// What one delivery attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// Acknowledged by the destination.
    Delivered,
    /// Transient fault; another attempt is scheduled.
    Retry,
    /// Permanent fault or retries exhausted: a dead letter.
    Dead,
}

impl DeliveryOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry => "retry",
            DeliveryOutcome::Dead => "dead",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    destination: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

type HistogramFamily = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

/// The metrics registry and handles to its metrics. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    instances_received: Counter,
    instances_refused: Family<StatusLabel, Counter>,
    bytes_received: Counter,
    series_completed: Counter,
    jobs: Family<StateLabel, Gauge>,
    database_up: Gauge,
    stages: HistogramFamily,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_failures: Family<DestinationLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered; job states and stages start at zero so they
    /// are exposed before anything happened.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let instances_received = Counter::default();
        let instances_refused = Family::<StatusLabel, Counter>::default();
        let bytes_received = Counter::default();
        let series_completed = Counter::default();
        let jobs = Family::<StateLabel, Gauge>::default();
        let database_up = Gauge::default();
        let stages = HistogramFamily::new_with_constructor(stage_histogram);
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let delivery_failures = Family::<DestinationLabel, Counter>::default();

        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "fcdnode_instances_received",
            "DICOM instances stored and acknowledged",
            instances_received.clone(),
        );
        registry.register(
            "fcdnode_instances_refused",
            "C-STORE requests answered with a failure status, by status (hex)",
            instances_refused.clone(),
        );
        registry.register(
            "fcdnode_bytes_received",
            "Bytes of DICOM instances stored",
            bytes_received.clone(),
        );
        registry.register(
            "fcdnode_series_completed",
            "Series that became stable and were handed to routing",
            series_completed.clone(),
        );
        registry.register("fcdnode_jobs", "Jobs in the database, by state", jobs.clone());
        registry.register(
            "fcdnode_database_up",
            "1 when the job database answered at the last scrape, else 0",
            database_up.clone(),
        );
        registry.register(
            "fcdnode_stage_seconds",
            "Duration of pipeline stages in seconds; turnaround: last C-STORE-RSP of a job's series \
             to its last result acknowledged by the destination (per delivered job, as fcdnode bench node)",
            stages.clone(),
        );
        registry.register(
            "fcdnode_deliveries",
            "Delivery attempts by destination and outcome (delivered, retry, dead)",
            deliveries.clone(),
        );
        registry.register(
            "fcdnode_delivery_failures",
            "Failed delivery attempts (retry or dead) by destination",
            delivery_failures.clone(),
        );

        for state in JobState::ALL {
            let _ = jobs.get_or_create(&StateLabel { state: state.as_str() });
        }
        for stage in STAGES {
            let _ = stages.get_or_create(&StageLabel { stage });
        }

        Self {
            registry,
            instances_received,
            instances_refused,
            bytes_received,
            series_completed,
            jobs,
            database_up,
            stages,
            deliveries,
            delivery_failures,
        }
    }

    /// One instance stored and acknowledged, of `bytes` bytes.
    pub fn instance_received(&self, bytes: u64) {
        self.instances_received.inc();
        self.bytes_received.inc_by(bytes);
    }

    /// One C-STORE answered with the failure `status` (labelled like `0xC000`).
    pub fn instance_refused(&self, status: u16) {
        self.instances_refused
            .get_or_create(&StatusLabel {
                status: format!("0x{status:04X}"),
            })
            .inc();
    }

    /// One series completed (stable) and handed on.
    pub fn series_completed(&self) {
        self.series_completed.inc();
    }

    /// Records that `stage` (one of [`STAGES`]) took `seconds`. Unknown stages and negative or
    /// non-finite durations are logged and dropped.
    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        let Some(stage) = STAGES.into_iter().find(|s| *s == stage) else {
            tracing::warn!(stage, "unknown stage for fcdnode_stage_seconds; not recorded");
            return;
        };
        if !seconds.is_finite() || seconds < 0.0 {
            tracing::warn!(stage, seconds, "invalid stage duration; not recorded");
            return;
        }
        self.stages.get_or_create(&StageLabel { stage }).observe(seconds);
    }

    /// One delivery attempt to `destination` ended with `outcome`; retry and dead also count
    /// as failures.
    pub fn delivery(&self, destination: &str, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                destination: destination.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        if outcome != DeliveryOutcome::Delivered {
            self.delivery_failures
                .get_or_create(&DestinationLabel {
                    destination: destination.to_owned(),
                })
                .inc();
        }
    }

    /// Sets `fcdnode_jobs` from the database's counts (`JobDb::job_counts`); states absent
    /// from `counts` are set to 0. Also marks the database up.
    pub fn set_job_counts(&self, counts: &[(JobState, i64)]) {
        for state in JobState::ALL {
            let n = counts.iter().filter(|(s, _)| *s == state).map(|(_, n)| *n).sum();
            self.jobs.get_or_create(&StateLabel { state: state.as_str() }).set(n);
        }
        self.database_up.set(1);
    }

    /// Marks the database down for this scrape (the job gauge keeps its last values).
    pub fn set_database_down(&self) {
        self.database_up.set(0);
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only returns the writer's errors.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn metrics_is_send_and_sync() {
        assert_send_sync::<Metrics>();
    }

    #[test]
    fn counters_and_labels_are_encoded() {
        let m = Metrics::new();
        m.instance_received(100);
        m.instance_received(50);
        m.instance_refused(0xA700);
        m.delivery("pacs", DeliveryOutcome::Retry);
        m.delivery("pacs", DeliveryOutcome::Delivered);
        m.observe_stage("infer", 0.3);
        m.observe_stage("nonsense", 1.0);
        m.observe_stage("report", f64::NAN);
        m.set_job_counts(&[(JobState::Delivered, 2)]);
        let text = m.encode();
        assert!(text.contains("fcdnode_instances_received_total 2\n"), "{text}");
        assert!(text.contains("fcdnode_bytes_received_total 150\n"), "{text}");
        assert!(
            text.contains("fcdnode_instances_refused_total{status=\"0xA700\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fcdnode_deliveries_total{destination=\"pacs\",outcome=\"retry\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fcdnode_delivery_failures_total{destination=\"pacs\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("fcdnode_jobs{state=\"delivered\"} 2\n"), "{text}");
        assert!(text.contains("fcdnode_jobs{state=\"failed\"} 0\n"), "{text}");
        assert!(
            text.contains("fcdnode_stage_seconds_count{stage=\"infer\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fcdnode_stage_seconds_count{stage=\"report\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("nonsense"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
