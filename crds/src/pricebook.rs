//! `PriceBook`: what the one cloud charges, per site or region class, from a point in time.

// Several printer columns share a type; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RegionClass;

/// Prices in CNY for a scope (every site, a region class, or one site) over an effective range.
/// Where several books are in force for a site, the most specific prices each resource: the
/// site's book, else its region class's, else the book for every site. Two books of the same
/// scope must not overlap in time: the controller refuses the later one.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "yiyun.io",
    version = "v1alpha1",
    kind = "PriceBook",
    doc = "Prices in CNY per vCPU-hour, GiB-hour, GPU-hour by model, storage GiB-month, cross-region \
           GB and reserved-but-unused quota, for every site, a region class or one site, from an \
           effective time. The most specific book in force prices each resource.",
    status = "PriceBookStatus",
    shortname = "pb",
    category = "yiyun",
    derive = "PartialEq",
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.scope.regionClass"),
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.scope.site"),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.effectiveFrom"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.effectiveTo"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "CNY/vCPU-h", type_ = "string", json_path = ".spec.prices.cpuCoreHour", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.effectiveTo) || self.effectiveTo > self.effectiveFrom")
    .message("spec.effectiveTo must be later than spec.effectiveFrom"))]
pub struct PriceBookSpec {
    /// Human-readable name (e.g. "2026 年政务云标准价格").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// Where the book applies: absent for every site, or a region class, or one site.
    #[serde(default)]
    pub scope: PriceScope,

    /// When the prices take effect (RFC 3339, e.g. `2026-11-01T00:00:00+08:00`). A change
    /// mid-month splits the month's lines exactly at this time.
    pub effective_from: Time,

    /// When they stop (exclusive); absent for open-ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_to: Option<Time>,

    /// The prices this book sets. A resource it leaves out is priced by the less specific book
    /// in force (a west-site book may lower only the vCPU price).
    #[serde(default)]
    pub prices: Prices,

    /// Discounts by tenant level, as fractions of the price (`"0.1"` is 10% off).
    #[serde(default)]
    pub discounts: LevelDiscounts,
}

/// The sites a PriceBook applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.regionClass) && has(self.site))")
    .message("spec.scope names a region class or a site, not both"))]
pub struct PriceScope {
    /// `east` or `west`: every site of the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_class: Option<RegionClass>,
    /// One ComputeSite by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub site: Option<String>,
}

/// Prices in CNY, as decimal strings with at most 6 decimal places (e.g. `"0.12"`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    /// Per vCPU-hour requested (a 500m request for an hour is half a vCPU-hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub cpu_core_hour: Option<String>,
    /// Per GiB-hour of memory requested.
    #[serde(rename = "memoryGiBHour", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub memory_gib_hour: Option<String>,
    /// Per GPU-hour, by GPU model (the node's `yiyun.io/gpu-model`, e.g. `A800`); fractions of a
    /// GPU (`yiyun.io/gpu-milli`) pay pro rata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "price_map_schema")]
    pub gpu_hour: BTreeMap<String, String>,
    /// Per GiB-month of persistent volume claims (a month is its calendar length).
    #[serde(rename = "storageGiBMonth", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub storage_gib_month: Option<String>,
    /// Per GB (10^9 bytes) of input data moved from another region to the pod's site.
    #[serde(rename = "crossRegionGB", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub cross_region_gb: Option<String>,
    /// Quota a tenant holds (`quota.guaranteed`) but its pods do not request. Absent: holding
    /// quota is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<ReservedPrices>,
}

/// Prices of guaranteed quota held but not requested, in CNY.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservedPrices {
    /// Per vCPU-hour held unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub cpu_core_hour: Option<String>,
    /// Per GiB-hour of memory held unused.
    #[serde(rename = "memoryGiBHour", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub memory_gib_hour: Option<String>,
    /// Per whole GPU-hour held unused (guarantees name no model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "price_schema")]
    pub gpu_hour: Option<String>,
}

/// Discounts by tenant level, fractions from 0 to 1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LevelDiscounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "discount_schema")]
    pub province: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "discount_schema")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "discount_schema")]
    pub county: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "discount_schema")]
    pub department: Option<String>,
}

/// A price: a decimal string, never a float (money is exact to the fen).
fn price_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 20,
        "pattern": PRICE_PATTERN,
        "description": "a price in CNY: a decimal number with at most 6 decimal places, such as \"0.12\""
    })
}

fn price_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 20, "pattern": PRICE_PATTERN},
        "x-kubernetes-validations": [{
            "rule": "self.all(model, model.matches('^[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$'))",
            "message": "GPU models are names such as A800 or H20 (letters, digits, '-', '_', '.')"
        }]
    })
}

fn discount_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 6,
        "pattern": "^(0(\\.[0-9]{1,4})?|1(\\.0{1,4})?)$",
        "description": "a fraction of the price from 0 to 1, such as \"0.1\" for 10% off"
    })
}

/// Decimal CNY amounts in a PriceBook: digits, then at most 6 decimal places.
pub const PRICE_PATTERN: &str = "^[0-9]{1,12}(\\.[0-9]{1,6})?$";

/// Observed state of a PriceBook.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceBookStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: whether rating uses the book, and when not, why (an overlap with another
    /// book of the same scope).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
