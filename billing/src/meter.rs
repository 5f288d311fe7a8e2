//! What is metered (GB/T 37735 indicators) and in which units.

use serde::{Deserialize, Serialize};

/// A billed resource. Usage is recorded in exact integer base units (milli-vCPU, bytes,
/// milli-GPU) over whole seconds; a bill states it in the price's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Meter {
    /// vCPU requested, in milli-vCPU; billed per vCPU-hour.
    Cpu,
    /// Memory requested, in bytes; billed per GiB-hour.
    Memory,
    /// GPUs (whole or fractions), in milli-GPU of one model; billed per GPU-hour.
    Gpu,
    /// Persistent volume claims, in bytes; billed per GiB-month.
    Storage,
    /// Input data moved across regions, in bytes at an instant; billed per GB.
    CrossRegion,
    /// Guaranteed quota held but not requested: vCPU, memory, whole GPUs.
    ReservedCpu,
    ReservedMemory,
    ReservedGpu,
    /// Under the usage basis, vCPU and memory used beyond the request (in the units of
    /// [`Meter::Cpu`] and [`Meter::Memory`], at their prices): with the request's own line,
    /// max(request, usage).
    CpuOverRequest,
    MemoryOverRequest,
}

const GIB: i128 = 1 << 30;

impl Meter {
    pub const ALL: [Meter; 10] = [
        Meter::Cpu,
        Meter::Memory,
        Meter::Gpu,
        Meter::Storage,
        Meter::CrossRegion,
        Meter::ReservedCpu,
        Meter::ReservedMemory,
        Meter::ReservedGpu,
        Meter::CpuOverRequest,
        Meter::MemoryOverRequest,
    ];

    /// The stable name in the ledger and the exports.
    pub fn key(self) -> &'static str {
        match self {
            Meter::Cpu => "cpu",
            Meter::Memory => "memory",
            Meter::Gpu => "gpu",
            Meter::Storage => "storage",
            Meter::CrossRegion => "cross-region",
            Meter::ReservedCpu => "reserved-cpu",
            Meter::ReservedMemory => "reserved-memory",
            Meter::ReservedGpu => "reserved-gpu",
            Meter::CpuOverRequest => "cpu-over-request",
            Meter::MemoryOverRequest => "memory-over-request",
        }
    }

    pub fn from_key(key: &str) -> Option<Meter> {
        Meter::ALL.into_iter().find(|m| m.key() == key)
    }

    /// 资源名称, for the Chinese exports.
    pub fn chinese(self) -> &'static str {
        match self {
            Meter::Cpu => "vCPU",
            Meter::Memory => "内存",
            Meter::Gpu => "GPU",
            Meter::Storage => "存储",
            Meter::CrossRegion => "跨区域传输",
            Meter::ReservedCpu => "预留未用 vCPU",
            Meter::ReservedMemory => "预留未用内存",
            Meter::ReservedGpu => "预留未用 GPU",
            Meter::CpuOverRequest => "超出申请的 vCPU 用量",
            Meter::MemoryOverRequest => "超出申请的内存用量",
        }
    }

    /// The unit a price is per.
    pub fn unit(self) -> &'static str {
        match self {
            Meter::Cpu | Meter::ReservedCpu | Meter::CpuOverRequest => "vCPU-hour",
            Meter::Memory | Meter::ReservedMemory | Meter::MemoryOverRequest => "GiB-hour",
            Meter::Gpu | Meter::ReservedGpu => "GPU-hour",
            Meter::Storage => "GiB-month",
            Meter::CrossRegion => "GB",
        }
    }

    /// 计量单位.
    pub fn chinese_unit(self) -> &'static str {
        match self {
            Meter::Cpu | Meter::ReservedCpu | Meter::CpuOverRequest => "核·小时",
            Meter::Memory | Meter::ReservedMemory | Meter::MemoryOverRequest => "GiB·小时",
            Meter::Gpu | Meter::ReservedGpu => "卡·小时",
            Meter::Storage => "GiB·月",
            Meter::CrossRegion => "GB",
        }
    }

    /// Whether usage is at an instant (a transfer), not over time.
    pub fn is_instant(self) -> bool {
        self == Meter::CrossRegion
    }

    /// The meter whose price applies: usage beyond the request costs what the request does.
    pub fn priced_as(self) -> Meter {
        match self {
            Meter::CpuOverRequest => Meter::Cpu,
            Meter::MemoryOverRequest => Meter::Memory,
            meter => meter,
        }
    }

    /// Whether the meter is of a GPU model.
    pub fn has_model(self) -> bool {
        self == Meter::Gpu
    }

    /// Base-unit-seconds (base units for an instant meter) in one billed unit; storage's
    /// GiB-month is over the calendar month of `month_seconds`.
    pub fn per_unit(self, month_seconds: i64) -> i128 {
        match self {
            Meter::Cpu | Meter::Gpu | Meter::ReservedCpu | Meter::ReservedGpu | Meter::CpuOverRequest => {
                1000 * 3600
            }
            Meter::Memory | Meter::ReservedMemory | Meter::MemoryOverRequest => GIB * 3600,
            Meter::Storage => GIB * i128::from(month_seconds),
            Meter::CrossRegion => 1_000_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for meter in Meter::ALL {
            assert_eq!(Meter::from_key(meter.key()), Some(meter));
        }
        assert_eq!(Meter::from_key("bandwidth"), None);
    }
}
