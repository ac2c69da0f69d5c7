//! Which backend the training loops run on: `--device cpu|cuda` and the matmul precision
//! ([`DeviceSpec`]) → a backend handed to a loop that is generic over it ([`with_backend`]).
//!
//! The cuda backend exists only in builds with the `cuda` feature; without it, asking for it is an
//! error that says how to build it. Checkpoints are host-side (safetensors + JSON), so a run on one
//! device resumes on the other.

use std::sync::Arc;

use kiln_engine::{Backend, CpuBackend};

use crate::error::TrainError;

/// A backend the training loops can run on: any [`Backend`] that owns its data (`'static`).
/// What the loops need beyond the kernels (wait for queued work, peak device memory, a memory
/// check before allocating, a label for logs) are [`Backend`]'s own methods.
pub trait TrainBackend: Backend + 'static {}
impl<B: Backend + 'static> TrainBackend for B {}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    /// As `--device` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(TrainError::Config(format!(
                "unknown device `{s}` (cpu or cuda)"
            ))),
        }
    }
}

pub use kiln_engine::backend::Precision;

/// A device and, optionally, its matmul precision (default: f32 on the cpu, bf16 on cuda).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub device: Device,
    pub precision: Option<Precision>,
}

impl DeviceSpec {
    pub fn cpu() -> Self {
        DeviceSpec {
            device: Device::Cpu,
            precision: None,
        }
    }

    /// Error early (before any data is read) when this build cannot run on the device.
    /// Also refuses a precision the device does not have.
    pub fn check_built(&self) -> Result<(), TrainError> {
        match self.device {
            Device::Cuda if !cfg!(feature = "cuda") => Err(no_cuda()),
            Device::Cpu => cpu_precision(self.precision),
            Device::Cuda => Ok(()),
        }
    }

    /// From the CLI strings (`--device`, `--precision`).
    pub fn parse(device: &str, precision: Option<&str>) -> Result<Self, TrainError> {
        Ok(DeviceSpec {
            device: device.parse()?,
            precision: precision.map(str::parse).transpose()?,
        })
    }
}

/// A computation generic over the backend (Rust has no generic closures): [`with_backend`]
/// builds the backend a [`DeviceSpec`] names and calls [`OnBackend::run`] with it.
pub trait OnBackend {
    type Output;
    fn run<B: TrainBackend>(self, backend: Arc<B>) -> Result<Self::Output, TrainError>;
}

/// Build the backend `spec` names (`threads` sizes the cpu backend) and run `f` on it.
pub fn with_backend<F: OnBackend>(
    spec: &DeviceSpec,
    threads: usize,
    f: F,
) -> Result<F::Output, TrainError> {
    match spec.device {
        Device::Cpu => {
            cpu_precision(spec.precision)?;
            f.run(Arc::new(CpuBackend::new(threads)))
        }
        Device::Cuda => on_cuda(spec.precision, f),
    }
}

fn cpu_precision(p: Option<Precision>) -> Result<(), TrainError> {
    match p {
        Some(p) if p != Precision::F32 => Err(TrainError::Config(format!(
            "precision {p:?} needs --device cuda: the cpu backend computes in f32"
        ))),
        _ => Ok(()),
    }
}

#[cfg(feature = "cuda")]
fn on_cuda<F: OnBackend>(precision: Option<Precision>, f: F) -> Result<F::Output, TrainError> {
    use kiln_engine::cuda::{CudaBackend, CudaOptions};
    let mut opts = CudaOptions::default();
    if let Some(p) = precision {
        opts.precision = p;
    }
    let be = CudaBackend::new(0, opts)?;
    f.run(Arc::new(be))
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<F: OnBackend>(_: Option<Precision>, _: F) -> Result<F::Output, TrainError> {
    Err(no_cuda())
}

fn no_cuda() -> TrainError {
    TrainError::Config(
        "--device cuda: this kiln was built without the cuda backend; rebuild with \
         `CUDARC_CUDA_VERSION=13000 cargo build --release -p kiln --features cuda` \
         (no CUDA install needed to build; the GPU machine needs the driver and toolkit libraries)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl OnBackend for Name {
        type Output = (String, &'static str);
        fn run<B: TrainBackend>(self, be: Arc<B>) -> Result<Self::Output, TrainError> {
            Ok((be.name().to_string(), be.precision().as_str()))
        }
    }

    #[test]
    fn specs_parse_and_dispatch() {
        let s = DeviceSpec::parse("cpu", None).unwrap();
        assert_eq!(
            with_backend(&s, 1, Name).unwrap(),
            ("cpu".to_string(), "f32")
        );
        assert!(DeviceSpec::parse("tpu", None)
            .unwrap_err()
            .to_string()
            .contains("cpu or cuda"));
        assert!(DeviceSpec::parse("cuda", Some("fp8")).is_err());
        let e = with_backend(&DeviceSpec::parse("cpu", Some("bf16")).unwrap(), 1, Name)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--device cuda"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let spec = DeviceSpec::parse("cuda", None).unwrap();
        let e = with_backend(&spec, 1, Name).unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        assert_eq!(spec.check_built().unwrap_err().to_string(), e);
    }
}
