//! Which device trains: Burn's wgpu on a real GPU (Vulkan, Metal or DX12) when one exists, else
//! the Flex CPU backend. `wgpu` forces wgpu on whatever adapter exists (Mesa's lavapipe included);
//! `cpu` forces Flex.

use burn::tensor::{Device, DeviceKind};
use std::fmt;

/// What the operator asked for (`--backend` or `FLWR_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// A GPU through wgpu if one exists, else the CPU.
    #[default]
    Auto,
    /// wgpu on the best adapter, even a software one.
    Wgpu,
    /// The Flex CPU backend.
    Cpu,
}

impl BackendChoice {
    /// The name `--backend` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Wgpu => "wgpu",
            BackendChoice::Cpu => "cpu",
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "wgpu" | "gpu" => Ok(BackendChoice::Wgpu),
            "cpu" | "flex" => Ok(BackendChoice::Cpu),
            other => Err(format!("unknown backend {other:?}: use auto, wgpu or cpu")),
        }
    }
}

/// The chosen device and a sentence saying what it is.
#[derive(Clone)]
pub struct TrainingDevice {
    /// The Burn device.
    pub device: Device,
    /// For the node's log.
    pub description: String,
}

impl fmt::Debug for TrainingDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// Tries a wgpu device of `kind`; `None` when no such adapter exists.
fn wgpu(kind: DeviceKind) -> Option<Device> {
    Device::wgpu_options().device_kind(kind).init().ok()
}

/// Picks the device for `choice`.
pub fn select(choice: BackendChoice) -> Result<TrainingDevice, String> {
    let cpu = || TrainingDevice {
        device: Device::flex(),
        description: "CPU (Burn Flex backend)".into(),
    };
    match choice {
        BackendChoice::Cpu => Ok(cpu()),
        BackendChoice::Wgpu => wgpu(DeviceKind::DefaultDevice)
            .map(|device| TrainingDevice {
                device,
                description: "GPU via wgpu (default adapter)".into(),
            })
            .ok_or_else(|| {
                "no wgpu adapter: install a Vulkan, Metal or DX12 driver, or use --backend cpu"
                    .into()
            }),
        BackendChoice::Auto => {
            for (kind, name) in [
                (DeviceKind::DiscreteGpu(0), "discrete GPU"),
                (DeviceKind::IntegratedGpu(0), "integrated GPU"),
            ] {
                if let Some(device) = wgpu(kind) {
                    return Ok(TrainingDevice {
                        device,
                        description: format!("{name} via wgpu"),
                    });
                }
            }
            Ok(cpu())
        }
    }
}
