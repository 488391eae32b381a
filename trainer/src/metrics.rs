//! Classification metrics (accuracy, ROC-AUC with a bootstrap interval, sensitivity,
//! specificity, macro-F1, Youden's and the target-sensitivity thresholds), calibration (Brier
//! score, reliability bins, expected calibration error), summaries over folds, and the paired
//! t-test between experiments.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Counts at one decision threshold; the positive class is the lesion class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    /// Positives called positive.
    pub tp: usize,
    /// Negatives called positive.
    pub fp: usize,
    /// Negatives called negative.
    pub tn: usize,
    /// Positives called negative.
    pub fn_: usize,
}

impl Confusion {
    /// Counts decisions `probability ≥ threshold` against `labels` (true = positive).
    pub fn at(labels: &[bool], probabilities: &[f64], threshold: f64) -> Self {
        let mut c = Self::default();
        for (&y, &p) in labels.iter().zip(probabilities) {
            match (y, p >= threshold) {
                (true, true) => c.tp += 1,
                (true, false) => c.fn_ += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// (tp + tn) / all; NaN when empty.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }

    /// Recall of the positive class, tp / (tp + fn); NaN without positives.
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Recall of the negative class, tn / (tn + fp); NaN without negatives.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp)
    }

    /// Mean of the two classes' F1 scores (a class never predicted nor present scores 0).
    pub fn macro_f1(&self) -> f64 {
        let f1 = |tp: usize, fp: usize, fn_: usize| {
            let d = 2 * tp + fp + fn_;
            if d == 0 { 0.0 } else { 2.0 * tp as f64 / d as f64 }
        };
        (f1(self.tp, self.fp, self.fn_) + f1(self.tn, self.fn_, self.fp)) / 2.0
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { f64::NAN } else { a as f64 / b as f64 }
}

/// Area under the ROC curve as the Mann–Whitney probability that a random positive scores
/// above a random negative (ties count one half); NaN when a class is absent.
pub fn roc_auc(labels: &[bool], scores: &[f64]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0usize);
    for (&yi, &si) in labels.iter().zip(scores) {
        if !yi {
            continue;
        }
        for (&yj, &sj) in labels.iter().zip(scores) {
            if yj {
                continue;
            }
            pairs += 1;
            wins += if si > sj {
                1.0
            } else if si == sj {
                0.5
            } else {
                0.0
            };
        }
    }
    if pairs == 0 { f64::NAN } else { wins / pairs as f64 }
}

/// ROC curve points (false-positive rate, true-positive rate), from (0, 0) to (1, 1), one
/// point per distinct score.
pub fn roc_curve(labels: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let positives = labels.iter().filter(|&&y| y).count().max(1) as f64;
    let negatives = labels.iter().filter(|&&y| !y).count().max(1) as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    for (n, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(n + 1).is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            points.push((fp / negatives, tp / positives));
        }
    }
    points
}

/// Percentile 95 % interval of the ROC-AUC over `replicates` stratified bootstrap resamples
/// (positives and negatives resampled separately, so every replicate has both classes), seeded
/// so a report is reproducible; NaN when a class is absent or `replicates` is 0.
pub fn auc_bootstrap_ci(labels: &[bool], scores: &[f64], replicates: usize, seed: u64) -> [f64; 2] {
    let pos: Vec<f64> = labels
        .iter()
        .zip(scores)
        .filter(|(y, _)| **y)
        .map(|(_, s)| *s)
        .collect();
    let neg: Vec<f64> = labels
        .iter()
        .zip(scores)
        .filter(|(y, _)| !**y)
        .map(|(_, s)| *s)
        .collect();
    if pos.is_empty() || neg.is_empty() || replicates == 0 {
        return [f64::NAN; 2];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut aucs: Vec<f64> = (0..replicates)
        .map(|_| {
            let p: Vec<f64> = (0..pos.len()).map(|_| pos[rng.random_range(0..pos.len())]).collect();
            let n: Vec<f64> = (0..neg.len()).map(|_| neg[rng.random_range(0..neg.len())]).collect();
            let y: Vec<bool> = p.iter().map(|_| true).chain(n.iter().map(|_| false)).collect();
            roc_auc(&y, &[p, n].concat())
        })
        .collect();
    aucs.sort_by(f64::total_cmp);
    let at = |q: f64| aucs[((q * (aucs.len() - 1) as f64).round() as usize).min(aucs.len() - 1)];
    [at(0.025), at(0.975)]
}

/// Moves a threshold that sits on the score `t` down to the middle of the gap below it (halfway
/// to the next lower score), so the decisions on these scores stay the same but a new subject
/// scoring a little below `t` is not decided the other way: a threshold on an observed score is
/// the most fragile place for it. `t` itself when nothing scores below it.
fn mid_gap_below(scores: &[f64], t: f64) -> f64 {
    scores
        .iter()
        .copied()
        .filter(|s| s.is_finite() && *s < t)
        .max_by(f64::total_cmp)
        .map_or(t, |below| (t + below) / 2.0)
}

/// The score threshold maximising Youden's J = sensitivity + specificity − 1 (decision
/// `score ≥ threshold`); ties keep the higher threshold, placed mid-gap below that score
/// ([`mid_gap_below`]). NaN when a class is absent.
pub fn youden_threshold(labels: &[bool], scores: &[f64]) -> f64 {
    if !labels.iter().any(|&y| y) || labels.iter().all(|&y| y) {
        return f64::NAN;
    }
    let mut candidates: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    candidates.sort_by(|a, b| b.total_cmp(a));
    candidates.dedup();
    let mut best = (f64::NEG_INFINITY, f64::NAN);
    for t in candidates {
        let c = Confusion::at(labels, scores, t);
        let j = c.sensitivity() + c.specificity() - 1.0;
        if j > best.0 {
            best = (j, t);
        }
    }
    mid_gap_below(scores, best.1)
}

/// The highest score threshold whose sensitivity (decision `score ≥ threshold`) is at least
/// `target`: below the lowest of the top ⌈target · positives⌉ positives' scores (ties
/// included), mid-gap to the next lower score ([`mid_gap_below`]). NaN without positives.
pub fn sensitivity_threshold(labels: &[bool], scores: &[f64], target: f64) -> f64 {
    let mut candidates: Vec<f64> = labels
        .iter()
        .zip(scores)
        .filter(|(y, s)| **y && s.is_finite())
        .map(|(_, s)| *s)
        .collect();
    candidates.sort_by(|a, b| b.total_cmp(a));
    candidates.dedup();
    // Sensitivities are ratios of small counts: 9 / 10 must meet a target of 0.9.
    candidates
        .into_iter()
        .find(|&t| Confusion::at(labels, scores, t).sensitivity() >= target - 1e-9)
        .map_or(f64::NAN, |t| mid_gap_below(scores, t))
}

/// Mean squared difference between probability and outcome (1 for a positive); NaN when empty.
pub fn brier_score(labels: &[bool], probabilities: &[f64]) -> f64 {
    if labels.is_empty() {
        return f64::NAN;
    }
    labels
        .iter()
        .zip(probabilities)
        .map(|(&y, &p)| (p - if y { 1.0 } else { 0.0 }).powi(2))
        .sum::<f64>()
        / labels.len() as f64
}

/// One bin of a reliability diagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CalibrationBin {
    /// Bin edges on the probability axis (`lower ≤ p < upper`; the last bin includes 1).
    pub lower: f64,
    pub upper: f64,
    /// Subjects in the bin.
    pub n: usize,
    /// Their mean predicted probability (NaN when empty).
    pub mean_probability: f64,
    /// The fraction of them that are positive (NaN when empty).
    pub fraction_positive: f64,
}

/// Reliability bins (`bins` of equal width over [0, 1]) and the expected calibration error
/// Σ_b (n_b / n) · |mean probability_b − fraction positive_b| (NaN when empty).
pub fn calibration(labels: &[bool], probabilities: &[f64], bins: usize) -> (Vec<CalibrationBin>, f64) {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&y, &p) in labels.iter().zip(probabilities) {
        if !p.is_finite() {
            continue;
        }
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += usize::from(y);
    }
    let total: usize = sums.iter().map(|s| s.0).sum();
    let table: Vec<CalibrationBin> = sums
        .iter()
        .enumerate()
        .map(|(b, &(n, sum, pos))| CalibrationBin {
            lower: b as f64 / bins as f64,
            upper: (b + 1) as f64 / bins as f64,
            n,
            mean_probability: ratio_f(sum, n),
            fraction_positive: ratio_f(pos as f64, n),
        })
        .collect();
    let ece = if total == 0 {
        f64::NAN
    } else {
        table
            .iter()
            .filter(|b| b.n > 0)
            .map(|b| b.n as f64 / total as f64 * (b.mean_probability - b.fraction_positive).abs())
            .sum()
    };
    (table, ece)
}

fn ratio_f(a: f64, n: usize) -> f64 {
    if n == 0 { f64::NAN } else { a / n as f64 }
}

/// Mean and sample standard deviation of the finite values (NaN when none; std 0 for one).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}

/// Result of a paired t-test.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PairedT {
    /// Mean difference a − b.
    pub mean_difference: f64,
    /// t statistic.
    pub t: f64,
    /// Degrees of freedom (pairs − 1).
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Paired two-sided t-test of `a` against `b` (e.g. per-fold accuracies of two experiments);
/// `None` with fewer than two pairs or zero variance of the differences.
pub fn paired_t_test(a: &[f64], b: &[f64]) -> Option<PairedT> {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).filter(|x| x.is_finite()).collect();
    if d.len() < 2 {
        return None;
    }
    let (mean, sd) = mean_std(&d);
    if sd == 0.0 {
        return None;
    }
    let df = (d.len() - 1) as f64;
    let t = mean / (sd / (d.len() as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(PairedT {
        mean_difference: mean,
        t,
        df,
        p: 2.0 * (1.0 - dist.cdf(t.abs())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_metrics() {
        let y = [true, true, true, false, false, false, false];
        let p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4];
        let c = Confusion::at(&y, &p, 0.5);
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 3,
                fn_: 1
            }
        );
        assert!((c.accuracy() - 5.0 / 7.0).abs() < 1e-12);
        assert!((c.sensitivity() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.specificity() - 0.75).abs() < 1e-12);
        // F1(pos) = 4/6, F1(neg) = 6/8.
        assert!((c.macro_f1() - (4.0 / 6.0 + 0.75) / 2.0).abs() < 1e-12);
        assert!(Confusion::at(&[false], &[0.1], 0.5).sensitivity().is_nan());
    }

    #[test]
    fn auc_and_curve() {
        let y = [true, true, false, false];
        assert_eq!(roc_auc(&y, &[0.9, 0.8, 0.3, 0.1]), 1.0);
        assert_eq!(roc_auc(&y, &[0.1, 0.2, 0.3, 0.4]), 0.0);
        assert_eq!(roc_auc(&y, &[0.5, 0.5, 0.5, 0.5]), 0.5);
        // One positive below one negative: 3 of 4 pairs ordered.
        assert_eq!(roc_auc(&y, &[0.9, 0.3, 0.4, 0.1]), 0.75);
        assert!(roc_auc(&[true], &[0.3]).is_nan());
        let curve = roc_curve(&y, &[0.9, 0.3, 0.4, 0.1]);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn summaries_and_t_test() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((m, s), (2.0, 1.0));
        // Differences 1, 2, 3, 4, 5: mean 3, sd √2.5, t = 3 / (√2.5/√5) = 4.2426, df 4,
        // two-sided p = 0.01324 (tables).
        let a = [2.0, 4.0, 6.0, 8.0, 10.0];
        let b = [1.0, 2.0, 3.0, 4.0, 5.0];
        let r = paired_t_test(&a, &b).unwrap();
        assert!((r.t - 4.242_640_687).abs() < 1e-6, "{r:?}");
        assert!((r.p - 0.013_24).abs() < 1e-4, "{r:?}");
        assert!(paired_t_test(&[1.0], &[0.0]).is_none());
        assert!(paired_t_test(&[1.0, 2.0], &[0.0, 1.0]).is_none(), "zero variance");
    }
    #[test]
    fn brier_calibration_and_ece() {
        let y = [true, true, false, false];
        let p = [0.9, 0.6, 0.2, 0.7];
        // (0.01 + 0.16 + 0.04 + 0.49) / 4
        assert!((brier_score(&y, &p) - 0.175).abs() < 1e-12);
        let (bins, ece) = calibration(&y, &p, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins[2].n, 1);
        assert_eq!(bins[6].n, 1);
        assert_eq!(bins[7].n, 1);
        assert_eq!(bins[9].n, 1);
        // |0.9−1| + |0.6−1| + |0.2−0| + |0.7−0|, each weighted 1/4.
        assert!((ece - (0.1 + 0.4 + 0.2 + 0.7) / 4.0).abs() < 1e-12, "{ece}");
        // Probability 1.0 falls in the last bin.
        assert_eq!(calibration(&[true], &[1.0], 4).0[3].n, 1);
        assert!(brier_score(&[], &[]).is_nan());
    }

    /// Hand-made predictions with a known answer for each target.
    #[test]
    fn sensitivity_threshold_is_the_highest_that_keeps_the_target() {
        let positives = [0.95, 0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.45, 0.3, 0.2];
        let negatives = [0.85, 0.4, 0.35, 0.25, 0.1, 0.05];
        let labels: Vec<bool> = positives
            .iter()
            .map(|_| true)
            .chain(negatives.iter().map(|_| false))
            .collect();
        let scores = [&positives[..], &negatives[..]].concat();
        let close = |target: f64, expected: f64| {
            let t = sensitivity_threshold(&labels, &scores, target);
            assert!(
                (t - expected).abs() < 1e-12,
                "target {target}: {t}, expected {expected}"
            );
        };
        // 9 of 10 patients: the 9th highest patient, 0.3 (at the control's 0.35 only 8 remain),
        // mid-gap down to the control at 0.25.
        close(0.9, 0.275);
        assert_eq!(Confusion::at(&labels, &scores, 0.275).specificity(), 0.5);
        close(0.8, 0.425);
        close(1.0, 0.15);
        // Tied patients at 0.8: three of ten are asked for, the threshold keeps four.
        close(0.3, 0.75);
        close(0.1, 0.925);
        // Nothing below the lowest score: the threshold stays on it.
        assert_eq!(sensitivity_threshold(&[true, false], &[0.2, 0.7], 1.0), 0.2);
        assert!(sensitivity_threshold(&[false, false], &[0.1, 0.9], 0.9).is_nan());
    }

    #[test]
    fn youden_and_bootstrap() {
        let y = [true, true, true, false, false, false];
        let s = [0.9, 0.8, 0.35, 0.4, 0.3, 0.1];
        // t = 0.8: sens 2/3, spec 1 → J 0.667; t = 0.35: sens 1, spec 2/3 → 0.667 (tie: higher
        // wins), mid-gap down to the next score, 0.4.
        assert!(
            (youden_threshold(&y, &s) - 0.6).abs() < 1e-12,
            "{}",
            youden_threshold(&y, &s)
        );
        assert!(youden_threshold(&[true], &[0.2]).is_nan());
        // Perfect separation: every replicate is 1.
        assert_eq!(
            auc_bootstrap_ci(&y, &[0.9, 0.8, 0.7, 0.3, 0.2, 0.1], 200, 1),
            [1.0, 1.0]
        );
        let ci = auc_bootstrap_ci(&y, &s, 500, 1);
        let auc = roc_auc(&y, &s);
        assert!(
            ci[0] < auc && auc <= ci[1] && ci[0] >= 0.0 && ci[1] <= 1.0,
            "{ci:?} around {auc}"
        );
        assert_eq!(ci, auc_bootstrap_ci(&y, &s, 500, 1), "same seed, same interval");
        assert!(auc_bootstrap_ci(&[true, true], &[0.1, 0.2], 10, 1)[0].is_nan());
    }
}
