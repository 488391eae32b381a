//! The node's TOML configuration: raw sections as written, validated once into runtime settings
//! with errors that name the key. `fcdnode check-config` runs only this step.

use std::path::{Path, PathBuf};

use crate::infer::runtime::Device;
use crate::tracker::routing::{Router, RoutingConfig, RoutingError};

/// The whole file. Every section is optional and has documented defaults
/// (`config/fcdnode.toml` lists them).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[routing]`: which series feed which model channel.
    pub routing: RoutingConfig,
    /// `[runtime]`: where ONNX Runtime is and where it runs.
    pub runtime: RuntimeConfig,
}

/// `[runtime]`: the ONNX Runtime library and execution settings.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; when absent, `ORT_DYLIB_PATH`, then the project-local
    /// `.tools/libonnxruntime.so` from `scripts/setup.sh`.
    pub onnxruntime: Option<PathBuf>,
    /// `auto` (CUDA when its provider and a GPU are present, else CPU), `cpu` or `cuda`.
    pub device: Device,
    /// Intra-op threads per session; 0 lets ONNX Runtime choose.
    pub threads: usize,
}

/// Checked settings, ready for the stages.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Compiled routing rules.
    pub router: Router,
    /// ONNX Runtime settings.
    pub runtime: RuntimeConfig,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys (the message names line and key).
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// `[routing]` is invalid.
    #[error("{path}: [routing]: {source}")]
    Routing {
        path: PathBuf,
        #[source]
        source: RoutingError,
    },
}

impl Config {
    /// Reads and parses a TOML file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every section; `origin` names the file in errors.
    pub fn validate(&self, origin: &Path) -> Result<Settings, ConfigError> {
        let router = Router::new(&self.routing).map_err(|source| ConfigError::Routing {
            path: origin.to_owned(),
            source,
        })?;
        Ok(Settings {
            router,
            runtime: self.runtime.clone(),
        })
    }
}

/// Loads and validates `path`, or the defaults when `None`.
pub fn settings(path: Option<&Path>) -> Result<Settings, ConfigError> {
    match path {
        Some(p) => Config::load(p)?.validate(p),
        None => Config::default().validate(Path::new("(defaults)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fcdnode.toml");
        let config = Config::load(&path).unwrap();
        config.validate(&path).unwrap();
        assert_eq!(config, Config::default(), "config/fcdnode.toml must list the defaults");
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[routing]\nrules = []\nsurprise = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("surprise"), "{err}");
        std::fs::write(&path, "[[routing.rules]]\nname = \"r\"\nnames = \"[\"\n").unwrap();
        let err = Config::load(&path).unwrap().validate(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("rule \"r\""), "{err}");
        let err = Config::load(&dir.path().join("absent.toml")).unwrap_err().to_string();
        assert!(err.contains("absent.toml"), "{err}");
    }
}
