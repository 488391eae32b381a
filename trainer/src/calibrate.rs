//! Pooled out-of-fold predictions → the package's [`Decision`]: a Platt calibration of the
//! probability, then a threshold chosen on the calibrated probabilities by the run's
//! [`ThresholdRule`], with what both give on those predictions (sensitivity, specificity, Brier
//! score and ECE before and after calibration). `report` states it; `export` writes it into the
//! manifest (`threshold`, `[calibration]`), where the node applies it to the ensemble mean.
//!
//! Out-of-fold predictions come from single fold networks, while the node calibrates the mean
//! of all folds, which is usually a little less extreme; `fcdtrain evaluate` on fresh data
//! measures what the package's calibration really gives.

use fcdnode::package::manifest::{Calibration, CalibrationMethod, logit, sigmoid};

use crate::config::ThresholdRule;
use crate::metrics::{Confusion, brier_score, calibration, roc_auc, sensitivity_threshold, youden_threshold};

/// Reliability bins of the expected calibration error the decision reports.
pub const ECE_BINS: usize = 10;

/// Why no decision can be taken from a set of predictions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionError {
    /// Calibration and threshold need patients and controls.
    #[error(
        "the out-of-fold predictions hold {positives} fcd and {negatives} hc subject(s): calibration and threshold need both"
    )]
    OneClass { positives: usize, negatives: usize },
    /// The best logistic fit ranks controls above patients (or ignores the model).
    #[error(
        "the out-of-fold probabilities do not rank patients above controls (Platt slope a = {a:.3}, ROC-AUC {auc:.3}): no calibration makes them a triage decision"
    )]
    NoRanking { a: f64, auc: f64 },
}

/// The decision rule of a package, and what it gives on the predictions it was chosen on.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    /// How the threshold was chosen.
    pub rule: ThresholdRule,
    /// The probability calibration (as the manifest stores it); `None` for
    /// [`Decision::uncalibrated`].
    pub calibration: Option<Calibration>,
    /// Threshold on the calibrated (or, without calibration, raw) probability.
    pub threshold: f64,
    /// Subjects, and of which fcd.
    pub n: usize,
    pub positives: usize,
    /// At `threshold`, on the calibrated probabilities.
    pub sensitivity: f64,
    pub specificity: f64,
    /// Brier score of the raw and of the calibrated probabilities.
    pub brier: [f64; 2],
    /// Expected calibration error ([`ECE_BINS`] bins) of the raw and of the calibrated probabilities.
    pub ece: [f64; 2],
}

impl Decision {
    /// Fits the calibration on (`labels`, `raw` probabilities) and picks the threshold by `rule`
    /// on the calibrated ones. `source` names the predictions (e.g. "out-of-fold predictions of
    /// folds fold-1, fold-2") for the manifest's `fitted_on`.
    pub fn choose(labels: &[bool], raw: &[f64], rule: ThresholdRule, source: &str) -> Result<Self, DecisionError> {
        let positives = both_classes(labels)?;
        let (a, b) = fit_platt(labels, raw);
        if a.is_nan() || a <= 0.0 {
            return Err(DecisionError::NoRanking {
                a,
                auc: roc_auc(labels, raw),
            });
        }
        let calibration = Calibration {
            method: CalibrationMethod::Platt,
            a,
            b,
            fitted_on: format!("{source}: {} subjects ({positives} fcd)", labels.len()),
        };
        Ok(Self::with(labels, raw, rule, Some(calibration)))
    }

    /// The threshold by `rule` on the raw probabilities, without calibration: for predictions
    /// that [`Decision::choose`] refuses as not ranking, when the caller ships them anyway.
    pub fn uncalibrated(labels: &[bool], raw: &[f64], rule: ThresholdRule) -> Result<Self, DecisionError> {
        both_classes(labels)?;
        Ok(Self::with(labels, raw, rule, None))
    }

    fn with(labels: &[bool], raw: &[f64], rule: ThresholdRule, calibration: Option<Calibration>) -> Self {
        let calibrated: Vec<f64> = match &calibration {
            Some(c) => raw.iter().map(|&p| c.apply(p)).collect(),
            None => raw.to_vec(),
        };
        let threshold = match rule {
            ThresholdRule::Sensitivity { target } => sensitivity_threshold(labels, &calibrated, target),
            ThresholdRule::Youden => youden_threshold(labels, &calibrated),
        };
        let at = Confusion::at(labels, &calibrated, threshold);
        Self {
            rule,
            calibration,
            threshold,
            n: labels.len(),
            positives: labels.iter().filter(|&&y| y).count(),
            sensitivity: at.sensitivity(),
            specificity: at.specificity(),
            brier: [brier_score(labels, raw), brier_score(labels, &calibrated)],
            ece: [calibration_error(labels, raw), calibration_error(labels, &calibrated)],
        }
    }

    /// The probability `raw` as the package reports it.
    pub fn apply(&self, raw: f64) -> f64 {
        self.calibration.as_ref().map_or(raw, |c| c.apply(raw))
    }

    /// One sentence for the manifest's `provenance.threshold_rule` and the report.
    pub fn describe(&self) -> String {
        format!(
            "{} on the {} out-of-fold probabilities of {} subjects ({} fcd): threshold {:.4}, sensitivity {:.3}, specificity {:.3}",
            self.rule,
            if self.calibration.is_some() {
                "Platt-calibrated"
            } else {
                "uncalibrated"
            },
            self.n,
            self.positives,
            self.threshold,
            self.sensitivity,
            self.specificity
        )
    }
}

/// The number of positives, when both classes are present.
fn both_classes(labels: &[bool]) -> Result<usize, DecisionError> {
    let positives = labels.iter().filter(|&&y| y).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(DecisionError::OneClass { positives, negatives });
    }
    Ok(positives)
}

fn calibration_error(labels: &[bool], probabilities: &[f64]) -> f64 {
    calibration(labels, probabilities, ECE_BINS).1
}

/// Platt scaling σ(a·logit(p) + b) fitted to `labels` by maximum likelihood; both classes must
/// be present. The targets are Platt's (1999) (N₊ + 1)/(N₊ + 2) and 1/(N₋ + 2) rather than 1 and
/// 0: perfectly separated predictions, usual on small cohorts, would otherwise send `a` to
/// infinity. Newton's method with a backtracking line search from the identity (a = 1, b = 0),
/// as Lin, Lin & Weng (2007) do it: the loss is convex in two parameters, so a 2×2 solve per step
/// is all it takes, and no optimisation crate is needed.
pub fn fit_platt(labels: &[bool], probabilities: &[f64]) -> (f64, f64) {
    let positives = labels.iter().filter(|&&y| y).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let (hi, lo) = ((positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0));
    let data: Vec<(f64, f64)> = labels
        .iter()
        .zip(probabilities)
        .map(|(&y, &p)| (logit(p), if y { hi } else { lo }))
        .collect();
    let n = data.len().max(1) as f64;
    // Mean negative log-likelihood, stable for any z: −log σ(z) = softplus(−z).
    let loss = |a: f64, b: f64| {
        data.iter()
            .map(|&(x, t)| {
                let z = a * x + b;
                t * softplus(-z) + (1.0 - t) * softplus(z)
            })
            .sum::<f64>()
            / n
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut f = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(x, t) in &data {
            let s = sigmoid(a * x + b);
            let w = s * (1.0 - s);
            ga += (s - t) * x;
            gb += s - t;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let (ga, gb) = (ga / n, gb / n);
        if ga.abs().max(gb.abs()) < 1e-12 {
            break;
        }
        // A tiny ridge keeps the solve defined when every logit is equal.
        let (haa, hab, hbb) = (haa / n + 1e-12, hab / n, hbb / n + 1e-12);
        let det = haa * hbb - hab * hab;
        let (da, db) = (-(hbb * ga - hab * gb) / det, -(haa * gb - hab * ga) / det);
        let slope = ga * da + gb * db;
        let mut step = 1.0;
        loop {
            let (na, nb) = (a + step * da, b + step * db);
            let nf = loss(na, nb);
            if nf <= f + 1e-4 * step * slope {
                (a, b, f) = (na, nb, nf);
                break;
            }
            step /= 2.0;
            if step < 1e-10 {
                return (a, b);
            }
        }
    }
    (a, b)
}

/// log(1 + eᶻ) without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts that are exactly what σ(a·x + b) expects at each x: the maximum-likelihood fit is
    /// (a, b) itself, up to rounding the counts and Platt's target smoothing (1 / 26 000).
    #[test]
    fn platt_fit_recovers_known_parameters() {
        for (a, b) in [(1.7, -0.6), (0.5, 0.3), (3.0, 1.0)] {
            let (mut labels, mut probs) = (Vec::new(), Vec::new());
            for k in 0..13 {
                let x = -3.0 + 0.5 * f64::from(k);
                let per_x = 2000;
                let positives = (per_x as f64 * sigmoid(a * x + b)).round() as usize;
                for i in 0..per_x {
                    labels.push(i < positives);
                    probs.push(sigmoid(x));
                }
            }
            let (fa, fb) = fit_platt(&labels, &probs);
            assert!(
                (fa - a).abs() < 0.01 && (fb - b).abs() < 0.01,
                "({a}, {b}) fitted as ({fa}, {fb})"
            );
        }
    }

    /// Separated predictions (sure, and right) still get finite parameters; the calibrated
    /// probabilities keep the order and come off the extremes.
    #[test]
    fn separated_predictions_give_a_finite_fit() {
        let labels = [true, true, true, false, false, false];
        let probs = [1.0, 0.99, 0.9, 0.1, 0.01, 0.0];
        let (a, b) = fit_platt(&labels, &probs);
        assert!(a.is_finite() && b.is_finite() && a > 0.0, "({a}, {b})");
        let top = sigmoid(a * logit(1.0) + b);
        assert!(top < 0.99 && top > sigmoid(a * logit(0.9) + b), "{top}");
    }

    #[test]
    fn decision_reports_the_rule_and_both_calibrations() {
        // Over-confident raw probabilities of a model that ranks well.
        let labels = [true, true, true, true, false, false, false, false, true, false];
        let raw = [0.999, 0.99, 0.95, 0.1, 0.9, 0.05, 0.01, 0.001, 0.97, 0.02];
        let d = Decision::choose(&labels, &raw, ThresholdRule::default(), "test").unwrap();
        assert_eq!((d.n, d.positives), (10, 5));
        let c = d.calibration.clone().unwrap();
        assert!(c.fitted_on.contains("test: 10 subjects (5 fcd)"));
        // Sensitivity ≥ 0.9 of 5 patients is all 5: the threshold sits below the lowest
        // patient's calibrated probability (raw 0.1), halfway to the next lower score (a
        // control's, raw 0.05), which lets one control (raw 0.9) through.
        assert!(
            (d.threshold - (c.apply(0.1) + c.apply(0.05)) / 2.0).abs() < 1e-12,
            "{}",
            d.threshold
        );
        assert_eq!(d.apply(0.1), c.apply(0.1));
        assert_eq!((d.sensitivity, d.specificity), (1.0, 0.8));
        // Calibration lowers the Brier score of over-confident predictions.
        assert!(d.brier[1] < d.brier[0], "{:?}", d.brier);
        assert!(d.describe().contains("sensitivity ≥ 0.9") && d.describe().contains("specificity 0.800"));
        let y = Decision::choose(&labels, &raw, ThresholdRule::Youden, "test").unwrap();
        assert_eq!(y.calibration, d.calibration, "the rule does not change the calibration");
        assert!(matches!(
            Decision::choose(&[true, true], &[0.2, 0.9], ThresholdRule::Youden, "x"),
            Err(DecisionError::OneClass {
                positives: 2,
                negatives: 0
            })
        ));
        // Controls above patients: refused, not inverted; uncalibrated on request.
        let (labels, raw) = ([true, false, true, false], [0.1, 0.9, 0.2, 0.8]);
        let err = Decision::choose(&labels, &raw, ThresholdRule::Youden, "x").unwrap_err();
        assert!(matches!(err, DecisionError::NoRanking { .. }), "{err}");
        let u = Decision::uncalibrated(&labels, &raw, ThresholdRule::default()).unwrap();
        assert_eq!((u.threshold, u.calibration.as_ref(), u.apply(0.3)), (0.1, None, 0.3));
        assert!(u.describe().contains("uncalibrated"), "{}", u.describe());
    }
}
