//! Routing: classify a series as `T1w`, `FLAIR` or ignored, by rules from the TOML config, and
//! say why. Rules are tried in order; the first whose every condition holds wins.

use regex::Regex;

use crate::assemble::{Plan, SeriesMeta};
pub use crate::package::manifest::Modality as Channel;
use crate::preprocess::MIN_VOXELS_PER_AXIS;

/// One routing rule as written in TOML. Every condition present must hold.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name shown in decisions.
    pub name: String,
    /// Channel to route to; absent = ignore the series (an explicit exclusion rule).
    #[serde(default)]
    pub channel: Option<Channel>,
    /// Regex (case-insensitive) that SeriesDescription, ProtocolName or SequenceName must match.
    #[serde(default)]
    pub names: Option<String>,
    /// Regex that none of those names may match.
    #[serde(default)]
    pub exclude_names: Option<String>,
    /// Regex ScanningSequence must match (e.g. `IR`).
    #[serde(default)]
    pub scanning_sequence: Option<String>,
    /// Regex SequenceVariant must match.
    #[serde(default)]
    pub sequence_variant: Option<String>,
    /// Required MRAcquisitionType (`2D`/`3D`); a series without the attribute passes.
    #[serde(default)]
    pub mr_acquisition_type: Option<String>,
    /// [min, max] Inversion Time in ms; a series without it passes.
    #[serde(default)]
    pub inversion_time_ms: Option<[f64; 2]>,
    /// [min, max] Echo Time in ms; a series without it passes.
    #[serde(default)]
    pub echo_time_ms: Option<[f64; 2]>,
    /// [min, max] Repetition Time in ms; a series without it passes.
    #[serde(default)]
    pub repetition_time_ms: Option<[f64; 2]>,
    /// Largest slice thickness (or slice step, when larger) in mm.
    #[serde(default)]
    pub max_slice_thickness_mm: Option<f64>,
    /// Fewest slices.
    #[serde(default)]
    pub min_slices: Option<usize>,
}

/// The `[routing]` section: rules in order.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Rules, tried in order.
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    /// Recognises common vendor names of 3D T1 (MPRAGE, MP2RAGE UNI, T1 MPR, 3D T1 TFE, BRAVO,
    /// FSPGR) and 3D FLAIR (SPACE/CUBE/VISTA FLAIR, 3D FLAIR, Bonn's T2sel and tse3dvfl), and
    /// refuses 2D thick-slice FLAIR, which a 3D model cannot use.
    fn default() -> Self {
        let flair_names = r"flair|t2sel|tse3dvfl|dark[ _-]?fluid|spc.*fl|space.*ir|cube.*fl|vista.*fl";
        let rule = |name: &str, channel, names: &str| RuleConfig {
            name: name.into(),
            channel,
            names: Some(names.into()),
            exclude_names: Some(r"localizer|scout|survey|derived|heatmap|fcdnode|\bmpr[ _](cor|sag|tra)".into()),
            scanning_sequence: None,
            sequence_variant: None,
            mr_acquisition_type: Some("3D".into()),
            inversion_time_ms: None,
            echo_time_ms: None,
            repetition_time_ms: None,
            max_slice_thickness_mm: Some(1.5),
            min_slices: Some(60),
        };
        let mut flair = rule("3D FLAIR", Some(Channel::Flair), flair_names);
        flair.inversion_time_ms = Some([1200.0, 3500.0]);
        let mut flair_2d = rule(
            "2D thick-slice FLAIR (refused: 3D models need thin slices)",
            None,
            flair_names,
        );
        flair_2d.mr_acquisition_type = Some("2D".into());
        flair_2d.max_slice_thickness_mm = None;
        flair_2d.min_slices = None;
        let t1 = rule(
            "3D T1w",
            Some(Channel::T1w),
            r"mprage|mp-rage|mp2rage.*uni|uni.*mp2rage|t1.?mpr|3d.?t1|t1.?3d|t1.?tfe|tfe.?t1|bravo|fspgr|spgr|t1w",
        );
        Self {
            rules: vec![flair, flair_2d, t1],
        }
    }
}

/// Errors in the routing configuration, naming the rule and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// A regex does not compile.
    #[error("routing rule {rule:?}, key `{key}`: invalid regex: {source}")]
    BadRegex {
        rule: String,
        key: &'static str,
        #[source]
        source: Box<regex::Error>,
    },
    /// A [min, max] range is reversed or not finite.
    #[error("routing rule {rule:?}, key `{key}`: range {range:?} must be finite with min ≤ max")]
    BadRange {
        rule: String,
        key: &'static str,
        range: [f64; 2],
    },
}

/// A series routed to a model channel, competing with others for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<T> {
    /// Series Instance UID.
    pub series_uid: String,
    /// Slices of its main stack.
    pub slices: usize,
    /// When its last instance arrived (Unix seconds; 0 when unknown, e.g. files on disk).
    pub received_at: f64,
    /// What the caller carries along (files, rows).
    pub item: T,
}

/// The one rule for several series routed to the same channel (the node's tracker and `fcdnode
/// infer` both use it): the most slices (the full acquisition, not a partial resend or a
/// reformat); on a tie the latest received; then the smaller UID, so the choice is stable.
pub fn pick<T>(candidates: Vec<Candidate<T>>) -> Option<Candidate<T>> {
    candidates.into_iter().max_by(|a, b| {
        a.slices
            .cmp(&b.slices)
            .then(a.received_at.total_cmp(&b.received_at))
            .then(b.series_uid.cmp(&a.series_uid))
    })
}

/// The series chosen for one model channel and the instance files that hold it: the hand-off
/// from the tracker (or `fcdnode infer`'s routing) to the pipeline.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelSeries {
    /// The model channel it feeds.
    pub channel: Channel,
    /// Series Instance UID.
    pub series_uid: String,
    /// Its instance files (in the plan's order when there is a plan).
    pub files: Vec<std::path::PathBuf>,
    /// The plan routing made from the stored headers, so the pipeline decodes by it instead of
    /// planning again (`None` only for jobs stored before plans were kept).
    #[serde(default)]
    pub plan: Option<Plan>,
}

/// Routing rules, checked and compiled once.
#[derive(Clone, Debug)]
pub struct Router {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    config: RuleConfig,
    names: Option<Regex>,
    exclude_names: Option<Regex>,
    scanning_sequence: Option<Regex>,
    sequence_variant: Option<Regex>,
}

/// What routing decided for one series, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    /// The channel, or `None` when the series is ignored.
    pub channel: Option<Channel>,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// Human-readable reason: the conditions that held, or why each rule failed.
    pub reason: String,
}

/// What a series looks like to the router.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesFacts<'a> {
    /// Series attributes.
    pub meta: &'a SeriesMeta,
    /// Number of slices of the main stack.
    pub slices: usize,
    /// Measured step between slices in mm (from positions).
    pub slice_step_mm: Option<f64>,
}

impl Router {
    /// Compiles the rules; refuses bad regexes and ranges with the rule's name.
    pub fn new(config: &RoutingConfig) -> Result<Self, RoutingError> {
        let compile = |rule: &RuleConfig, key: &'static str, pattern: &Option<String>| {
            pattern
                .as_ref()
                .map(|p| {
                    regex::RegexBuilder::new(p)
                        .case_insensitive(true)
                        .build()
                        .map_err(|source| RoutingError::BadRegex {
                            rule: rule.name.clone(),
                            key,
                            source: Box::new(source),
                        })
                })
                .transpose()
        };
        let mut rules = Vec::new();
        for r in &config.rules {
            for (key, range) in [
                ("inversion_time_ms", r.inversion_time_ms),
                ("echo_time_ms", r.echo_time_ms),
                ("repetition_time_ms", r.repetition_time_ms),
            ] {
                if let Some(range) = range
                    && !(range[0].is_finite() && range[1].is_finite() && range[0] <= range[1])
                {
                    return Err(RoutingError::BadRange {
                        rule: r.name.clone(),
                        key,
                        range,
                    });
                }
            }
            rules.push(Rule {
                names: compile(r, "names", &r.names)?,
                exclude_names: compile(r, "exclude_names", &r.exclude_names)?,
                scanning_sequence: compile(r, "scanning_sequence", &r.scanning_sequence)?,
                sequence_variant: compile(r, "sequence_variant", &r.sequence_variant)?,
                config: r.clone(),
            });
        }
        Ok(Self { rules })
    }

    /// Routes one series: the first rule whose conditions all hold decides. A series too thin
    /// for any model (a single slice, which assembles as dcm2niix converts it) is never routed,
    /// whatever the rules say: preprocessing would refuse it.
    pub fn route(&self, facts: &SeriesFacts<'_>) -> Decision {
        if facts.slices < MIN_VOXELS_PER_AXIS {
            return Decision {
                channel: None,
                rule: None,
                reason: format!(
                    "too thin for the model: {} slice(s), a 3D model needs at least {MIN_VOXELS_PER_AXIS}",
                    facts.slices
                ),
            };
        }
        let mut failures = Vec::new();
        for rule in &self.rules {
            match rule.check(facts) {
                Ok(held) => {
                    let verdict = match rule.config.channel {
                        Some(c) => c.to_string(),
                        None => "ignored".into(),
                    };
                    return Decision {
                        channel: rule.config.channel,
                        rule: Some(rule.config.name.clone()),
                        reason: format!("{verdict} by rule {:?}: {}", rule.config.name, held.join(", ")),
                    };
                }
                Err(Unmet(why)) => failures.push(format!("{:?}: {why}", rule.config.name)),
            }
        }
        Decision {
            channel: None,
            rule: None,
            reason: format!("no rule matched ({})", failures.join("; ")),
        }
    }
}

/// The first condition of a rule that did not hold, in words (an outcome of routing, shown in
/// the decision's reason; not a failure).
struct Unmet(String);

impl Rule {
    /// The conditions that held, or the first that failed.
    fn check(&self, f: &SeriesFacts<'_>) -> Result<Vec<String>, Unmet> {
        let m = f.meta;
        let c = &self.config;
        let mut held = Vec::new();
        let names = [&m.series_description, &m.protocol_name, &m.sequence_name];
        if let Some(re) = &self.names {
            match names.iter().find(|n| re.is_match(n)) {
                Some(n) => held.push(format!("name {n:?} matches /{}/", re.as_str())),
                None => return Err(Unmet(format!("no name among {names:?} matches /{}/", re.as_str()))),
            }
        }
        if let Some(re) = &self.exclude_names
            && let Some(n) = names.iter().find(|n| re.is_match(n))
        {
            return Err(Unmet(format!("name {n:?} is excluded by /{}/", re.as_str())));
        }
        for (label, re, value) in [
            ("ScanningSequence", &self.scanning_sequence, &m.scanning_sequence),
            ("SequenceVariant", &self.sequence_variant, &m.sequence_variant),
        ] {
            if let Some(re) = re {
                if !re.is_match(value) {
                    return Err(Unmet(format!("{label} {value:?} does not match /{}/", re.as_str())));
                }
                held.push(format!("{label} {value:?}"));
            }
        }
        if let Some(want) = &c.mr_acquisition_type
            && !m.mr_acquisition_type.is_empty()
        {
            if !m.mr_acquisition_type.eq_ignore_ascii_case(want) {
                return Err(Unmet(format!(
                    "MRAcquisitionType {} is not {want}",
                    m.mr_acquisition_type
                )));
            }
            held.push(format!("MRAcquisitionType {want}"));
        }
        for (label, range, value) in [
            ("InversionTime", c.inversion_time_ms, m.inversion_time),
            ("EchoTime", c.echo_time_ms, m.echo_time),
            ("RepetitionTime", c.repetition_time_ms, m.repetition_time),
        ] {
            if let (Some([lo, hi]), Some(v)) = (range, value) {
                if v < lo || v > hi {
                    return Err(Unmet(format!("{label} {v} ms outside [{lo}, {hi}]")));
                }
                held.push(format!("{label} {v} ms in [{lo}, {hi}]"));
            }
        }
        if let Some(max) = c.max_slice_thickness_mm {
            let thickness = m
                .slice_thickness
                .into_iter()
                .chain(f.slice_step_mm)
                .fold(f64::NAN, f64::max);
            if thickness > max + 1e-6 {
                return Err(Unmet(format!("slice thickness {thickness} mm > {max} mm")));
            }
            if thickness.is_finite() {
                held.push(format!("slice thickness {thickness} mm ≤ {max} mm"));
            }
        }
        if let Some(min) = c.min_slices {
            if f.slices < min {
                return Err(Unmet(format!("{} slices < {min}", f.slices)));
            }
            held.push(format!("{} slices ≥ {min}", f.slices));
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(description: &str, acq: &str, thickness: f64, ti: Option<f64>) -> SeriesMeta {
        SeriesMeta {
            series_description: description.into(),
            mr_acquisition_type: acq.into(),
            slice_thickness: Some(thickness),
            inversion_time: ti,
            ..SeriesMeta::default()
        }
    }

    fn route(m: &SeriesMeta, slices: usize) -> Decision {
        Router::new(&RoutingConfig::default()).unwrap().route(&SeriesFacts {
            meta: m,
            slices,
            slice_step_mm: Some(m.slice_thickness.unwrap_or(1.0)),
        })
    }

    #[test]
    fn vendor_names_route_to_their_channel() {
        for name in [
            "MPRAGE",
            "t1_mprage_sag_p2_iso",
            "t1_mprage_sag",
            "MP2RAGE_UNI",
            "T1 MPR",
            "3D T1 TFE",
            "Sag BRAVO",
            "FSPGR 3D",
            "sT1W_3D_TFE",
        ] {
            let d = route(&meta(name, "3D", 1.0, Some(900.0)), 176);
            assert_eq!(d.channel, Some(Channel::T1w), "{name}: {}", d.reason);
        }
        for name in [
            "SPACE FLAIR",
            "t2_spc_da-fl_sag_p2_iso",
            "CUBE FLAIR",
            "VISTA FLAIR",
            "3D FLAIR",
            "T2sel",
            "tse3dvfl",
        ] {
            let d = route(&meta(name, "3D", 1.0, Some(1800.0)), 176);
            assert_eq!(d.channel, Some(Channel::Flair), "{name}: {}", d.reason);
            assert!(d.reason.contains("name"), "{}", d.reason);
        }
    }

    #[test]
    fn thick_2d_flair_is_refused_with_the_reason() {
        let d = route(&meta("t2_tirm_tra_dark-fluid", "2D", 5.0, Some(2500.0)), 28);
        assert_eq!(d.channel, None);
        assert!(
            d.rule.as_deref().is_some_and(|r| r.contains("2D thick-slice FLAIR")),
            "{d:?}"
        );
        let d = route(&meta("AX FLAIR", "3D", 4.0, Some(2500.0)), 40);
        assert_eq!(d.channel, None, "{}", d.reason);
    }

    #[test]
    fn unknown_and_excluded_series_are_ignored_with_every_rule_explained() {
        let d = route(&meta("DWI b1000", "2D", 4.0, None), 30);
        assert_eq!(d.channel, None);
        assert!(
            d.reason.starts_with("no rule matched") && d.reason.contains("3D T1w"),
            "{}",
            d.reason
        );
        let d = route(&meta("MPR Cor", "3D", 1.0, None), 176);
        assert_eq!(d.channel, None, "{}", d.reason);
        let d = route(&meta("MPRAGE localizer", "3D", 1.0, None), 3);
        assert_eq!(d.channel, None, "{}", d.reason);
        let d = route(&meta("FLAIR 3D", "3D", 1.0, Some(100.0)), 176);
        assert!(
            d.channel.is_none() && d.reason.contains("InversionTime 100 ms outside"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_single_slice_is_never_routed_whatever_the_rules() {
        let mut config = RoutingConfig::default();
        config.rules.iter_mut().for_each(|r| r.min_slices = None);
        let router = Router::new(&config).unwrap();
        let m = meta("3D FLAIR", "3D", 1.0, Some(1800.0));
        let facts = |slices| SeriesFacts {
            meta: &m,
            slices,
            slice_step_mm: Some(1.0),
        };
        let d = router.route(&facts(1));
        assert_eq!((d.channel, d.rule.as_deref()), (None, None), "{}", d.reason);
        assert!(d.reason.contains("too thin for the model: 1 slice(s)"), "{}", d.reason);
        assert_eq!(router.route(&facts(2)).channel, Some(Channel::Flair));
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        let mut config = RoutingConfig::default();
        config.rules[0].names = Some("(unclosed".into());
        let err = Router::new(&config).unwrap_err().to_string();
        assert!(err.contains("3D FLAIR") && err.contains("`names`"), "{err}");
        let mut config = RoutingConfig::default();
        config.rules[2].echo_time_ms = Some([5.0, 1.0]);
        assert!(Router::new(&config).unwrap_err().to_string().contains("echo_time_ms"));
        let toml_text = "[[rules]]\nname = \"x\"\nchannel = \"FLAIR\"\nbogus = 1\n";
        assert!(toml::from_str::<RoutingConfig>(toml_text).is_err());
        let ok: RoutingConfig = toml::from_str("[[rules]]\nname = \"x\"\nchannel = \"T1w\"\nnames = \"t1\"\n").unwrap();
        assert_eq!(ok.rules[0].channel, Some(Channel::T1w));
    }
}
