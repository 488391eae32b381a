//! ONNX Runtime through `ort` with `load-dynamic`: library path → loaded runtime → sessions on
//! CPU or CUDA → `logits` and `features` for a `[batch, channel, depth, height, width]` input;
//! owns the process-wide runtime.
//!
//! The shared library is found by [`find_library`] (config, then `ORT_DYLIB_PATH`, then the
//! project-local `.tools/libonnxruntime.so` that `scripts/setup.sh` links from the PyPI
//! `onnxruntime` wheel), loaded once by [`init`], and used by [`session`] and [`run`].
//!
//! ```no_run
//! use fcdnode::infer::runtime::{self, Device};
//! # fn main() -> Result<(), runtime::RuntimeError> {
//! runtime::init(&runtime::find_library(None)?)?;
//! let mut session = runtime::session("models/demo/fold0.onnx".as_ref(), Device::Auto, 2)?;
//! let input = ndarray::Array5::<f32>::zeros((1, 1, 64, 64, 64));
//! let out = runtime::run(&mut session, &input)?;
//! println!("{:?} {:?}", out.logits.dim(), out.features.dim());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{Array2, Array5, Ix2, Ix5};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::package::onnx::{FEATURES, INPUT, LOGITS};

/// Name of the project-local library link made by `scripts/setup.sh`.
pub const LOCAL_LIBRARY: &str = ".tools/libonnxruntime.so";
/// The ONNX Runtime version the project pins (`scripts/setup.sh`).
pub const PINNED_VERSION: &str = "1.31.1";

const INSTALL_HINT: &str = "run scripts/setup.sh, or `pip install onnxruntime==1.31.1` (onnxruntime-gpu for CUDA) \
     and point `[runtime] onnxruntime = \"...\"` in the config or ORT_DYLIB_PATH at its \
     onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The variable that stops ONNX Runtime's telemetry. Its Linux builds start a 1DS uploader
/// that looks up `mobile.events.data.microsoft.com` seconds after the library loads;
/// `DisableTelemetryEvents` (ort's `with_telemetry(false)`) comes too late to stop it, this
/// variable, read by the library itself, does. `tests/it/node.rs` watches the node under strace.
pub const TELEMETRY_SWITCH: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_SWITCH`] to `1` for this process, so that [`init`] may load the library.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (the binaries do
/// so on the first line of `main`), as [`std::env::set_var`] requires.
pub unsafe fn switch_off_telemetry() {
    // SAFETY: the caller guarantees that no other thread reads or writes the environment.
    unsafe { std::env::set_var(TELEMETRY_SWITCH, "1") };
}

/// Why ONNX Runtime could not be found, loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No library at any of the searched places.
    #[error("no ONNX Runtime library found (searched {}): {INSTALL_HINT}", list(.searched))]
    LibraryNotFound { searched: Vec<PathBuf> },
    /// A library path that was given (config, `ORT_DYLIB_PATH`, or to [`init`]) does not exist.
    #[error("ONNX Runtime library {path} (from {origin}) does not exist: {INSTALL_HINT}")]
    LibraryMissing { path: PathBuf, origin: &'static str },
    /// [`TELEMETRY_SWITCH`] is not `1`: loading the library would let it phone home.
    #[error(
        "refusing to load ONNX Runtime: {TELEMETRY_SWITCH} is not set to 1, and without it the \
         library sends telemetry to Microsoft (set it in the environment, or call \
         runtime::switch_off_telemetry first)"
    )]
    TelemetryNotOff,
    /// The library exists but could not be loaded (not a library, wrong version, …).
    #[error("cannot load ONNX Runtime library {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    /// The process already runs another ONNX Runtime library (it can load only one).
    #[error("ONNX Runtime is already loaded from {loaded}, cannot switch to {requested}")]
    OtherLibraryLoaded { loaded: PathBuf, requested: PathBuf },
    /// Creating the ONNX Runtime environment failed.
    #[error("cannot create the ONNX Runtime environment")]
    Environment {
        #[source]
        source: ort::Error,
    },
    /// [`session`] was called before [`init`].
    #[error("ONNX Runtime is not initialised: call infer::runtime::init with the library path first")]
    NotInitialised,
    /// The model file does not exist.
    #[error("ONNX model {path} does not exist")]
    ModelMissing { path: PathBuf },
    /// `device = "cuda"` was asked for and the CUDA execution provider could not be used.
    #[error(
        "CUDA was requested for {path} but the CUDA execution provider is unavailable (needs the onnxruntime-gpu \
         library, CUDA 13, cuDNN 9 and a GPU); use device \"auto\" or \"cpu\""
    )]
    CudaUnavailable {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    /// ONNX Runtime refused the model or a session option.
    #[error("ONNX Runtime cannot open model {path}")]
    Session {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    /// Running the graph failed (e.g. an input shape the graph does not accept).
    #[error("ONNX Runtime failed to run the model on an input of shape {input_shape:?}")]
    Run {
        input_shape: Vec<usize>,
        #[source]
        source: ort::Error,
    },
    /// The graph has no output of that name.
    #[error("the model has no output `{name}` (outputs: {found:?})")]
    MissingOutput { name: String, found: Vec<String> },
    /// An output is not a float tensor of the expected rank.
    #[error("model output `{name}` is not a float tensor of rank {rank}")]
    BadOutput {
        name: String,
        rank: usize,
        #[source]
        source: Option<ort::Error>,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Execution provider choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when its provider registers and a session starts on it, else CPU (logged).
    #[default]
    Auto,
    /// CPU execution provider only.
    Cpu,
    /// CUDA execution provider; an error when it is unavailable.
    Cuda,
}

/// The ONNX Runtime library to load: `configured` (config `[runtime] onnxruntime`), else
/// `ORT_DYLIB_PATH`, else `.tools/libonnxruntime.so` next to an ancestor of the executable or
/// of the current directory, or in this crate's source tree; else an error saying how to
/// install it.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = configured {
        return existing(path, "config [runtime] onnxruntime");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(Path::new(&path), "ORT_DYLIB_PATH");
    }
    let mut searched = Vec::new();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in roots {
        let candidate = root.join(LOCAL_LIBRARY);
        if searched.contains(&candidate) {
            continue;
        }
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(RuntimeError::LibraryNotFound { searched })
}

fn existing(path: &Path, origin: &'static str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(RuntimeError::LibraryMissing {
            path: path.to_path_buf(),
            origin,
        })
    }
}

/// The loaded library (canonical path) and the process-wide environment.
struct Runtime {
    library: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `library` once for the process. Calling it again with the same
/// library (or a link to it) does nothing; another library is refused.
pub fn init(library: &Path) -> Result<(), RuntimeError> {
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let canonical = library.canonicalize().map_err(|_| RuntimeError::LibraryMissing {
        path: library.to_path_buf(),
        origin: "init",
    })?;
    if let Some(runtime) = RUNTIME.get() {
        return if runtime.library == canonical {
            Ok(())
        } else {
            Err(RuntimeError::OtherLibraryLoaded {
                loaded: runtime.library.clone(),
                requested: library.to_path_buf(),
            })
        };
    }
    if std::env::var_os(TELEMETRY_SWITCH).is_none_or(|v| v != "1") {
        return Err(RuntimeError::TelemetryNotOff);
    }
    let builder = ort::init_from(&canonical).map_err(|source| RuntimeError::Load {
        path: library.to_path_buf(),
        source,
    })?;
    // Belt and braces: the ETW/1DS event switch too.
    let env = builder
        .with_name("fcdnode")
        .with_telemetry(false)
        .build()
        .map_err(|source| RuntimeError::Environment { source })?;
    tracing::info!(library = %canonical.display(), "ONNX Runtime loaded");
    let _ = RUNTIME.set(Runtime {
        library: canonical,
        env,
    });
    Ok(())
}

/// The canonical path of the loaded library, if [`init`] succeeded.
pub fn loaded_library() -> Option<&'static Path> {
    RUNTIME.get().map(|r| r.library.as_path())
}

/// A session for `model` on `device` with `threads` intra-op threads (0 = ONNX Runtime's
/// default, one per core). Needs [`init`] first.
pub fn session(model: &Path, device: Device, threads: usize) -> Result<Session, RuntimeError> {
    session_on(model, device, threads).map(|(session, _)| session)
}

/// Like [`session`], also saying which device the session runs on ([`Device::Cpu`] or
/// [`Device::Cuda`], never `Auto`).
pub fn session_on(model: &Path, device: Device, threads: usize) -> Result<(Session, Device), RuntimeError> {
    let runtime = RUNTIME.get().ok_or(RuntimeError::NotInitialised)?;
    if !model.is_file() {
        return Err(RuntimeError::ModelMissing {
            path: model.to_path_buf(),
        });
    }
    let (session, used) = match device {
        Device::Cpu => (build(&runtime.env, model, threads, false)?, Device::Cpu),
        Device::Cuda => (build(&runtime.env, model, threads, true)?, Device::Cuda),
        Device::Auto => {
            let cuda_compiled = ep::CUDA::is_available().unwrap_or(false);
            let cuda = if cuda_compiled {
                build(&runtime.env, model, threads, true).map_err(|e| e.to_string())
            } else {
                Err("this ONNX Runtime build has no CUDA execution provider".to_string())
            };
            match cuda {
                Ok(session) => (session, Device::Cuda),
                Err(reason) => {
                    tracing::info!(model = %model.display(), %reason, "CUDA unavailable, using CPU");
                    (build(&runtime.env, model, threads, false)?, Device::Cpu)
                }
            }
        }
    };
    tracing::info!(model = %model.display(), device = ?used, threads, "ONNX Runtime session ready");
    Ok((session, used))
}

fn build(env: &Environment, model: &Path, threads: usize, cuda: bool) -> Result<Session, RuntimeError> {
    let session_err = |e: ort::Error| RuntimeError::Session {
        path: model.to_path_buf(),
        source: e,
    };
    let mut builder = Session::builder(env).map_err(session_err)?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(|e| session_err(strip(e)))?;
    }
    if !cuda {
        // No arena and no memory pattern: freed activations go back to the system instead of
        // staying reserved for the next run (ResNet-18 at 1 mm peaked above 1.3 GB with them).
        builder = builder.with_memory_pattern(false).map_err(|e| session_err(strip(e)))?;
        // No spinning between operators: the node prepares the next job on the same cores while
        // the model runs, and spinning threads would take their time from it.
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| session_err(strip(e)))?;
        builder = builder
            .with_execution_providers([ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(|e| session_err(strip(e)))?;
    }
    if cuda {
        builder = builder
            .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| RuntimeError::CudaUnavailable {
                path: model.to_path_buf(),
                source: strip(e),
            })?;
    }
    builder.commit_from_file(model).map_err(|e| {
        if cuda {
            RuntimeError::CudaUnavailable {
                path: model.to_path_buf(),
                source: e,
            }
        } else {
            session_err(e)
        }
    })
}

/// Drops the builder an `ort` builder error carries, keeping code and message.
fn strip<R>(e: ort::Error<R>) -> ort::Error {
    ort::Error::new_with_code(e.code(), e.message())
}

/// What one forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// Class scores before softmax, `[batch, classes]`.
    pub logits: Array2<f32>,
    /// Input of global average pooling, `[batch, channel, depth, height, width]`.
    pub features: Array5<f32>,
}

/// Runs `session` on `input` `[batch, channel, depth, height, width]` and returns the graph's
/// `logits` and `features` (our writer's output names; see [`run_named`] for others).
pub fn run(session: &mut Session, input: &Array5<f32>) -> Result<Outputs, RuntimeError> {
    run_named(session, input, LOGITS, FEATURES)
}

/// [`run`] with the output names a model manifest declares.
pub fn run_named(
    session: &mut Session,
    input: &Array5<f32>,
    logits_name: &str,
    features_name: &str,
) -> Result<Outputs, RuntimeError> {
    let input_shape = input.shape().to_vec();
    let run_err = |source| RuntimeError::Run {
        input_shape: input_shape.clone(),
        source,
    };
    let contiguous = input.as_standard_layout();
    let tensor = TensorRef::from_array_view(contiguous.view()).map_err(run_err)?;
    let outputs = session.run(ort::inputs![INPUT => tensor]).map_err(run_err)?;
    let found: Vec<String> = outputs.keys().map(str::to_string).collect();
    let get = |name: &str, rank: usize| {
        let value = outputs.get(name).ok_or_else(|| RuntimeError::MissingOutput {
            name: name.to_string(),
            found: found.clone(),
        })?;
        value
            .try_extract_array::<f32>()
            .map_err(|source| RuntimeError::BadOutput {
                name: name.to_string(),
                rank,
                source: Some(source),
            })
            .map(|view| view.to_owned())
    };
    let logits = get(logits_name, 2)?
        .into_dimensionality::<Ix2>()
        .map_err(|_| RuntimeError::BadOutput {
            name: logits_name.to_string(),
            rank: 2,
            source: None,
        })?;
    let features = get(features_name, 5)?
        .into_dimensionality::<Ix5>()
        .map_err(|_| RuntimeError::BadOutput {
            name: features_name.to_string(),
            rank: 5,
            source: None,
        })?;
    Ok(Outputs { logits, features })
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Axis, Ix1};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::package::arch::{ArchSpec, Pooling};
    use crate::package::onnx::{python, write_onnx};
    use crate::package::weights::Weights;

    /// The project-local library; fails loudly when setup has not been run.
    fn ready() {
        let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(LOCAL_LIBRARY);
        assert!(
            lib.is_file(),
            "{} is missing: run scripts/setup.sh (ONNX Runtime {PINNED_VERSION} from PyPI)",
            lib.display()
        );
        init(&lib).unwrap();
        // Same library again (through its link or its target) is fine.
        init(&lib).unwrap();
        init(&lib.canonicalize().unwrap()).unwrap();
    }

    fn random_input(shape: (usize, usize, usize, usize, usize), seed: u64) -> Array5<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array5::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
    }

    fn arch(name: &str, width_mult: f64) -> ArchSpec {
        ArchSpec {
            width_mult,
            ..ArchSpec::from_name(name).unwrap()
        }
    }

    /// Writes a model, runs ORT on a batch of 2, checks shapes and that logits are the linear
    /// head pooled over `features` as the spec says.
    fn check_model(
        arch: &ArchSpec,
        shape: [usize; 3],
        seed: u64,
        dir: &Path,
    ) -> (PathBuf, Weights, Array5<f32>, Outputs) {
        ready();
        let weights = Weights::random(arch, seed);
        let path = dir.join(format!("{}.onnx", arch.name()));
        write_onnx(arch, &weights, shape, &path).unwrap();
        let mut session = session(&path, Device::Cpu, 1).unwrap();
        let input = random_input((2, arch.in_channels, shape[0], shape[1], shape[2]), seed + 100);
        let out = run(&mut session, &input).unwrap();
        let [fd, fh, fw] = arch.feature_shape(shape);
        assert_eq!(out.logits.dim(), (2, arch.num_classes));
        assert_eq!(out.features.dim(), (2, arch.feature_channels(), fd, fh, fw));
        let fc_w = weights.0["fc.weight"].clone().into_dimensionality::<Ix2>().unwrap();
        let fc_b: Array1<f32> = weights.0["fc.bias"].clone().into_dimensionality::<Ix1>().unwrap();
        for b in 0..2 {
            let sample = out.features.index_axis(Axis(0), b);
            let voxels = sample.to_shape((arch.feature_channels(), fd * fh * fw)).unwrap();
            let expected = match arch.pooling {
                Pooling::Mean => fc_w.dot(&voxels.mean_axis(Axis(1)).unwrap()) + &fc_b,
                Pooling::Lse { sharpness } => {
                    // Per-voxel scores [classes, voxels], then log-mean-exp along the voxels.
                    let r = sharpness as f32;
                    let scores = fc_w.dot(&voxels) + fc_b.view().insert_axis(Axis(1));
                    scores.map_axis(Axis(1), |row| {
                        let peak = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                        let mean = row.iter().map(|&v| (r * (v - peak)).exp()).sum::<f32>() / row.len() as f32;
                        peak + mean.ln() / r
                    })
                }
            };
            for (e, got) in expected.iter().zip(out.logits.row(b)) {
                assert!((e - got).abs() <= 1e-4 * e.abs().max(1.0), "logit {got} vs head {e}");
            }
        }
        // Features come after a ReLU and are not all zero.
        assert!(out.features.iter().all(|v| *v >= 0.0));
        assert!(out.features.iter().any(|v| *v > 0.0));
        (path, weights, input, out)
    }

    fn write_f32(path: &Path, values: impl IntoIterator<Item = f32>) {
        let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
        std::fs::write(path, bytes).unwrap();
    }

    fn read_f32(path: &Path) -> Vec<f32> {
        std::fs::read(path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// The same graph and input through `onnx.reference.ReferenceEvaluator`, an independent
    /// executor: both outputs within 1e-4.
    fn compare_with_reference(model: &Path, input: &Array5<f32>, out: &Outputs, dir: &Path) {
        let input_path = dir.join("input.f32");
        write_f32(&input_path, input.iter().copied());
        let shape: Vec<String> = input.shape().iter().map(|d| d.to_string()).collect();
        let script = "import sys, numpy as np\n\
                      from onnx.reference import ReferenceEvaluator\n\
                      model, inp, out_dir = sys.argv[1:4]\n\
                      shape = [int(s) for s in sys.argv[4].split(',')]\n\
                      x = np.fromfile(inp, dtype='<f4').reshape(shape)\n\
                      logits, features = ReferenceEvaluator(model).run(['logits', 'features'], {'input': x})\n\
                      logits.astype('<f4').tofile(out_dir + '/ref_logits.f32')\n\
                      features.astype('<f4').tofile(out_dir + '/ref_features.f32')\n\
                      print('shapes', logits.shape, features.shape)\n";
        let stdout = python::run(
            script,
            &[
                model.as_os_str(),
                input_path.as_os_str(),
                dir.as_os_str(),
                shape.join(",").as_ref(),
            ],
        );
        let ref_logits = read_f32(&dir.join("ref_logits.f32"));
        let ref_features = read_f32(&dir.join("ref_features.f32"));
        assert_eq!(ref_logits.len(), out.logits.len(), "{stdout}");
        assert_eq!(ref_features.len(), out.features.len(), "{stdout}");
        let max_diff = |a: &[f32], b: &mut dyn Iterator<Item = f32>| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                .fold(0.0f32, f32::max)
        };
        let dl = max_diff(&ref_logits, &mut out.logits.iter().copied());
        let df = max_diff(&ref_features, &mut out.features.iter().copied());
        eprintln!("ORT vs reference: logits {dl}, features {df}; {stdout}");
        assert!(dl <= 1e-4 && df <= 1e-4, "ORT vs reference: logits {dl}, features {df}");
    }

    /// MedicalNet's forward pass (Tencent/MedicalNet `models/resnet.py`) written directly in
    /// NumPy (float64) from the state_dict and the stage table, independent of the ONNX graph:
    /// checks the writer's semantics (padding, dilation, shortcut A/B, batch norm, head).
    const NUMPY_MEDICALNET: &str = r#"
import sys, json, numpy as np
wdir, inp, out_dir = sys.argv[1:4]
spec = json.load(open(wdir + '/spec.json'))
W = {k: np.fromfile(f'{wdir}/{k}.f32', dtype='<f4').reshape(s).astype(np.float64)
     for k, s in spec['shapes'].items()}
x = np.fromfile(inp, dtype='<f4').reshape(spec['input']).astype(np.float64)
EPS = spec['eps']

def conv(x, w, stride, dil):
    k = w.shape[2]
    pad = dil * (k - 1) // 2
    x = np.pad(x, ((0, 0), (0, 0)) + ((pad, pad),) * 3)
    ext = dil * (k - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (ext,) * 3, axis=(2, 3, 4))
    win = win[..., ::dil, ::dil, ::dil][:, :, ::stride[0], ::stride[1], ::stride[2]]
    return np.tensordot(win, w, axes=([1, 5, 6, 7], [1, 2, 3, 4])).transpose(0, 4, 1, 2, 3)

def bn(x, p):
    g, b, m, v = (W[f'{p}.{n}'][None, :, None, None, None]
                  for n in ('weight', 'bias', 'running_mean', 'running_var'))
    return (x - m) / np.sqrt(v + EPS) * g + b

relu = lambda x: np.maximum(x, 0)

def maxpool(x):
    x = np.pad(x, ((0, 0), (0, 0)) + ((1, 1),) * 3, constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3, 3), axis=(2, 3, 4))
    return win[:, :, ::2, ::2, ::2].max(axis=(5, 6, 7))

x = relu(bn(conv(x, W['conv1.weight'], spec['stem_stride'], 1), 'bn1'))
x = maxpool(x)
inplanes = x.shape[1]
for s, st in enumerate(spec['stages']):
    for b in range(st['blocks']):
        p = f'layer{s + 1}.{b}'
        stride = st['stride'] if b == 0 else 1
        d = st['dilation']
        if spec['block'] == 'basic':
            y = relu(bn(conv(x, W[p + '.conv1.weight'], [stride] * 3, d), p + '.bn1'))
            y = bn(conv(y, W[p + '.conv2.weight'], [1] * 3, d), p + '.bn2')
        else:
            y = relu(bn(conv(x, W[p + '.conv1.weight'], [1] * 3, 1), p + '.bn1'))
            y = relu(bn(conv(y, W[p + '.conv2.weight'], [stride] * 3, d), p + '.bn2'))
            y = bn(conv(y, W[p + '.conv3.weight'], [1] * 3, 1), p + '.bn3')
        out = st['out_channels']
        if stride != 1 or inplanes != out:
            if spec['shortcut'] == 'A':
                r = x[:, :, ::stride, ::stride, ::stride]
                zeros = np.zeros((r.shape[0], out - r.shape[1]) + r.shape[2:])
                r = np.concatenate([r, zeros], axis=1)
            else:
                r = bn(conv(x, W[p + '.downsample.0.weight'], [stride] * 3, 1), p + '.downsample.1')
        else:
            r = x
        x = relu(y + r)
        inplanes = out
features = x
pooling = spec['pooling']
if pooling['kind'] == 'mean':
    logits = features.mean(axis=(2, 3, 4)) @ W['fc.weight'].T + W['fc.bias']
else:
    r = pooling['sharpness']
    scores = np.einsum('bkdhw,ck->bcdhw', features, W['fc.weight']) + W['fc.bias'][None, :, None, None, None]
    flat = r * scores.reshape(scores.shape[0], scores.shape[1], -1)
    peak = flat.max(axis=2, keepdims=True)
    logits = (np.log(np.exp(flat - peak).mean(axis=2)) + peak[..., 0]) / r
logits.astype('<f4').tofile(out_dir + '/np_logits.f32')
features.astype('<f4').tofile(out_dir + '/np_features.f32')
print('numpy', logits.shape, features.shape)
"#;

    /// Compares ORT's outputs with [`NUMPY_MEDICALNET`] on the same weights and input.
    fn compare_with_numpy(arch: &ArchSpec, weights: &Weights, input: &Array5<f32>, out: &Outputs, dir: &Path) {
        let wdir = dir.join("weights");
        std::fs::create_dir_all(&wdir).unwrap();
        let mut shapes = serde_json::Map::new();
        for (name, tensor) in &weights.0 {
            write_f32(&wdir.join(format!("{name}.f32")), tensor.iter().copied());
            shapes.insert(name.clone(), serde_json::json!(tensor.shape()));
        }
        let stages: Vec<_> = arch
            .stages()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "blocks": s.blocks, "stride": s.stride, "dilation": s.dilation,
                    "out_channels": s.out_channels,
                })
            })
            .collect();
        let spec = serde_json::json!({
            "shapes": shapes,
            "input": input.shape(),
            "eps": crate::package::weights::BN_EPS,
            "stem_stride": arch.stem_stride,
            "stages": stages,
            "block": match arch.block() { crate::package::arch::Block::Basic => "basic", _ => "bottleneck" },
            "shortcut": format!("{:?}", arch.shortcut()),
            "pooling": arch.pooling,
        });
        std::fs::write(wdir.join("spec.json"), spec.to_string()).unwrap();
        let input_path = dir.join("np_input.f32");
        write_f32(&input_path, input.iter().copied());
        let stdout = python::run(
            NUMPY_MEDICALNET,
            &[wdir.as_os_str(), input_path.as_os_str(), dir.as_os_str()],
        );
        let np_logits = read_f32(&dir.join("np_logits.f32"));
        let np_features = read_f32(&dir.join("np_features.f32"));
        assert_eq!(np_logits.len(), out.logits.len(), "{stdout}");
        assert_eq!(np_features.len(), out.features.len(), "{stdout}");
        let rel = |a: &[f32], b: &mut dyn Iterator<Item = f32>| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                .fold(0.0f32, f32::max)
        };
        let dl = rel(&np_logits, &mut out.logits.iter().copied());
        let df = rel(&np_features, &mut out.features.iter().copied());
        eprintln!("ORT vs NumPy MedicalNet ({}): logits {dl}, features {df}", arch.name());
        assert!(
            dl <= 1e-4 && df <= 1e-4,
            "ORT vs NumPy MedicalNet: logits {dl}, features {df}"
        );
    }

    #[test]
    fn resnet10_runs_and_matches_reference() {
        let dir = tempfile::tempdir().unwrap();
        let a = arch("resnet10", 0.25);
        let (path, weights, input, out) = check_model(&a, [24, 28, 20], 7, dir.path());
        compare_with_reference(&path, &input, &out, dir.path());
        compare_with_numpy(&a, &weights, &input, &out, dir.path());
    }

    #[test]
    fn resnet18_shortcut_a_lse_head_runs_and_matches_reference() {
        let dir = tempfile::tempdir().unwrap();
        // With the log-mean-exp head.
        let a = ArchSpec {
            pooling: Pooling::Lse { sharpness: 4.0 },
            ..arch("resnet18", 0.125)
        };
        assert_eq!(a.shortcut(), crate::package::arch::Shortcut::A);
        let (path, weights, input, out) = check_model(&a, [24, 28, 20], 8, dir.path());
        compare_with_reference(&path, &input, &out, dir.path());
        compare_with_numpy(&a, &weights, &input, &out, dir.path());
    }

    #[test]
    fn bottleneck_and_strided_variants_match_numpy() {
        let dir = tempfile::tempdir().unwrap();
        // ResNet-50 (bottleneck, shortcut B), two input channels, three classes.
        let mut r50 = arch("resnet50", 0.0625);
        r50.in_channels = 2;
        r50.num_classes = 3;
        let (_, weights, input, out) = check_model(&r50, [20, 16, 18], 9, dir.path());
        compare_with_numpy(&r50, &weights, &input, &out, dir.path());
        // Strided layout, anisotropic stem, shortcut A.
        let dir = tempfile::tempdir().unwrap();
        let mut strided = arch("resnet18", 0.125);
        strided.layout = crate::package::arch::Layout::Strided;
        strided.stem_stride = [1, 2, 2];
        let (_, weights, input, out) = check_model(&strided, [17, 40, 36], 10, dir.path());
        compare_with_numpy(&strided, &weights, &input, &out, dir.path());
    }

    #[test]
    fn auto_device_falls_back_to_cpu_and_threads_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let a = arch("resnet10", 0.25);
        ready();
        let path = dir.path().join("m.onnx");
        write_onnx(&a, &Weights::random(&a, 1), [16, 16, 16], &path).unwrap();
        let (mut s, used) = session_on(&path, Device::Auto, 2).unwrap();
        // The PyPI CPU wheel has no CUDA provider.
        if !ep::CUDA::is_available().unwrap() {
            assert_eq!(used, Device::Cpu);
            let err = session(&path, Device::Cuda, 1).unwrap_err();
            assert!(matches!(err, RuntimeError::CudaUnavailable { .. }), "{err}");
        }
        let out = run(&mut s, &random_input((1, 1, 16, 16, 16), 3)).unwrap();
        assert_eq!(out.logits.dim(), (1, 2));
        // A wrong input shape is a clear run error, not a panic.
        let err = run(&mut s, &random_input((1, 2, 16, 16, 16), 3)).unwrap_err();
        assert!(matches!(err, RuntimeError::Run { .. }), "{err}");
        assert!(err.to_string().contains("[1, 2, 16, 16, 16]"), "{err}");
    }

    #[test]
    fn bad_model_paths_are_clear_errors() {
        ready();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.onnx");
        let err = session(&missing, Device::Cpu, 1).unwrap_err();
        assert!(matches!(err, RuntimeError::ModelMissing { .. }));
        assert!(err.to_string().contains("absent.onnx"), "{err}");
        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, b"not a protobuf at all").unwrap();
        let err = session(&garbage, Device::Cpu, 1).unwrap_err();
        assert!(matches!(err, RuntimeError::Session { .. }), "{err}");
        assert!(err.to_string().contains("garbage.onnx"), "{err}");
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("libonnxruntime.so");
        let err = find_library(Some(&missing)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RuntimeError::LibraryMissing { .. }), "{text}");
        assert!(
            text.contains("scripts/setup.sh")
                && text.contains("onnxruntime==1.31.1")
                && text.contains("ORT_DYLIB_PATH"),
            "{text}"
        );
        assert!(text.contains(&missing.display().to_string()), "{text}");
        let err = init(&missing).unwrap_err();
        assert!(matches!(err, RuntimeError::LibraryMissing { .. }), "{err}");
        // A file that is not a library: refused by the loader, or (when the real library is
        // already loaded in this test process) refused as a second library. Both name it.
        let fake = dir.path().join("libfake.so");
        std::fs::write(&fake, b"not an ELF").unwrap();
        let err = init(&fake).unwrap_err();
        assert!(
            matches!(err, RuntimeError::Load { .. } | RuntimeError::OtherLibraryLoaded { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("libfake.so"), "{err}");
    }

    #[test]
    fn project_library_is_found() {
        // ORT_DYLIB_PATH is not set in the test environment; the project-local link is found.
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            let found = find_library(None).unwrap();
            assert!(found.ends_with(LOCAL_LIBRARY), "{}", found.display());
        }
        let err = RuntimeError::LibraryNotFound {
            searched: vec![PathBuf::from("/a/.tools/libonnxruntime.so")],
        };
        let text = err.to_string();
        assert!(
            text.contains("searched /a/.tools/libonnxruntime.so") && text.contains("scripts/setup.sh"),
            "{text}"
        );
    }
}
