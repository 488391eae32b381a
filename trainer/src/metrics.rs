//! Classification metrics (accuracy, ROC-AUC, sensitivity, specificity, macro-F1), summaries
//! over folds, and the paired t-test between experiments.

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
}
