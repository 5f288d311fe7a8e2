//! The CSV files of the Alibaba GPU cluster trace (cluster-trace-gpu-v2023, "openb"): node
//! lists `sn,cpu_milli,memory_mib,gpu,model` and pod lists
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`.

use yiyun_engine::model::{GpuRequest, Node, Pod, Resources};

use crate::Error;

/// Pods a trace node may run; the trace records none, so kubelet's default.
pub const MAX_PODS: u64 = 110;

/// A node of the trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceNode {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u8,
    pub model: Option<String>,
}

/// Quality of service of a trace pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// Latency-sensitive.
    LatencySensitive,
    BestEffort,
}

/// A pod of the trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TracePod {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpu: GpuRequest,
    pub gpu_models: Vec<String>,
    pub qos: Qos,
    /// Seconds from the start of the trace.
    pub created: u64,
    /// None when the pod was still running at the end of the trace.
    pub deleted: Option<u64>,
}

impl TraceNode {
    pub fn to_node(&self) -> Node {
        let mut node = Node::new(
            self.name.clone(),
            Resources {
                cpu_milli: self.cpu_milli,
                memory_bytes: self.memory_mib << 20,
                pods: MAX_PODS,
                ..Resources::default()
            },
        );
        node.gpus = self.gpus;
        node.gpu_model = self.model.clone();
        node
    }
}

impl TracePod {
    pub fn to_pod(&self, key: String) -> Pod {
        let mut pod = Pod::new(key, Resources::new(self.cpu_milli, self.memory_mib << 20));
        pod.gpu = self.gpu;
        pod.gpu_models = self.gpu_models.clone();
        pod
    }
}

/// A CSV file with a header (the trace quotes nothing): rows of fields, with the index of each
/// column the caller names, so columns may come in any order and extra ones are ignored.
struct Csv<'a> {
    file: &'a str,
    columns: Vec<Option<usize>>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    /// Parses `text`; every column in `required` must be in the header, `optional` ones may be.
    fn parse(text: &'a str, file: &'a str, required: &[&str], optional: &[&str]) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Err(Error::Trace {
                file: file.to_string(),
                line: 1,
                message: format!(
                    "the file is empty (expected a header with {}, then rows)",
                    required.join(",")
                ),
            });
        }
        let mut lines = text.lines().enumerate();
        let header: Vec<&str> =
            lines.next().map(|(_, line)| line.trim().split(',').map(str::trim).collect()).unwrap_or_default();
        let find = |name: &str| header.iter().position(|column| *column == name);
        if let Some(missing) = required.iter().find(|name| find(name).is_none()) {
            return Err(Error::Trace {
                file: file.to_string(),
                line: 1,
                message: format!("the header lacks the column `{missing}` (it needs {})", required.join(",")),
            });
        }
        let columns = required.iter().chain(optional).map(|name| find(name)).collect();
        let rows = lines
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                let fields: Vec<&str> = line.trim().split(',').map(str::trim).collect();
                if fields.len() < header.len() {
                    return Err(Error::Trace {
                        file: file.to_string(),
                        line: index + 1,
                        message: format!("{} fields, the header has {}", fields.len(), header.len()),
                    });
                }
                Ok((index + 1, fields))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            return Err(Error::Trace {
                file: file.to_string(),
                line: 2,
                message: "the header is followed by no rows".to_string(),
            });
        }
        Ok(Csv { file, columns, rows })
    }

    /// Field `column` (the index in required + optional) of a row; empty when the file lacks it.
    fn field(&self, row: &[&'a str], column: usize) -> &'a str {
        self.columns[column].map_or("", |index| row[index])
    }

    /// A size in MiB, which must fit in bytes.
    fn mebibytes(&self, line: usize, name: &str, value: &str) -> Result<u64, Error> {
        let mib = self.number(line, name, value)?;
        if mib > u64::MAX >> 20 {
            return Err(Error::Trace {
                file: self.file.to_string(),
                line,
                message: format!("{name} {mib} is more bytes than can be counted"),
            });
        }
        Ok(mib)
    }

    fn number(&self, line: usize, name: &str, value: &str) -> Result<u64, Error> {
        value.parse().map_err(|_| Error::Trace {
            file: self.file.to_string(),
            line,
            message: format!("{name} must be a non-negative integer, found `{value}`"),
        })
    }
}

/// Parses a node list.
pub fn parse_nodes(text: &str, file: &str) -> Result<Vec<TraceNode>, Error> {
    let csv = Csv::parse(text, file, &["sn", "cpu_milli", "memory_mib", "gpu"], &["model"])?;
    csv.rows
        .iter()
        .map(|(line, row)| {
            let line = *line;
            let gpus = csv.number(line, "gpu", csv.field(row, 3))?;
            let gpus = u8::try_from(gpus)
                .ok()
                .filter(|&g| usize::from(g) <= yiyun_engine::gpu::MAX_GPUS)
                .ok_or_else(|| Error::Trace {
                    file: file.to_string(),
                    line,
                    message: format!("gpu must be at most {}, found {gpus}", yiyun_engine::gpu::MAX_GPUS),
                })?;
            Ok(TraceNode {
                name: csv.field(row, 0).to_string(),
                cpu_milli: csv.number(line, "cpu_milli", csv.field(row, 1))?,
                memory_mib: csv.mebibytes(line, "memory_mib", csv.field(row, 2))?,
                gpus,
                model: Some(csv.field(row, 4)).filter(|m| !m.is_empty()).map(str::to_string),
            })
        })
        .collect()
}

/// Parses a pod list; `gpu_spec`, `qos`, `creation_time` and `deletion_time` are optional.
pub fn parse_pods(text: &str, file: &str) -> Result<Vec<TracePod>, Error> {
    let csv = Csv::parse(
        text,
        file,
        &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"],
        &["gpu_spec", "qos", "creation_time", "deletion_time"],
    )?;
    csv.rows
        .iter()
        .map(|(line, row)| {
            let line = *line;
            let invalid = |message: String| Error::Trace { file: file.to_string(), line, message };
            let num_gpu = csv.number(line, "num_gpu", csv.field(row, 3))?;
            let gpu_milli = csv.number(line, "gpu_milli", csv.field(row, 4))?;
            let gpu = match (num_gpu, gpu_milli) {
                (0, _) => GpuRequest::None,
                (1, milli @ 1..=999) => GpuRequest::Fraction(milli as u16),
                (count @ 1..=16, 1000) => GpuRequest::Whole(count as u8),
                _ => {
                    return Err(invalid(format!(
                        "num_gpu {num_gpu} with gpu_milli {gpu_milli}: a fraction (1-999) needs one GPU, whole GPUs need 1000"
                    )));
                }
            };
            let qos = match csv.field(row, 6) {
                "BE" => Qos::BestEffort,
                _ => Qos::LatencySensitive,
            };
            let created = match csv.field(row, 7) {
                "" => 0,
                value => csv.number(line, "creation_time", value)?,
            };
            let deleted = match csv.field(row, 8) {
                "" => None,
                value => Some(csv.number(line, "deletion_time", value)?),
            };
            Ok(TracePod {
                name: csv.field(row, 0).to_string(),
                cpu_milli: csv.number(line, "cpu_milli", csv.field(row, 1))?,
                memory_mib: csv.mebibytes(line, "memory_mib", csv.field(row, 2))?,
                gpu,
                gpu_models: csv.field(row, 5).split('|').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect(),
                qos,
                created,
                deleted,
            })
        })
        .collect()
}

/// Trace rows for the simulator's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A latency-sensitive pod of 1 GiB, from the start of the trace.
    pub(crate) fn pod(name: &str, cpu_milli: u64, gpu: GpuRequest) -> TracePod {
        TracePod {
            name: name.into(),
            cpu_milli,
            memory_mib: 1024,
            gpu,
            gpu_models: Vec::new(),
            qos: Qos::LatencySensitive,
            created: 0,
            deleted: None,
        }
    }

    /// A node of GPU `model` with 4 GiB of memory per CPU.
    pub(crate) fn node(name: &str, cpu_milli: u64, gpus: u8, model: &str) -> TraceNode {
        TraceNode {
            name: name.into(),
            cpu_milli,
            memory_mib: cpu_milli * 4096 / 1000,
            gpus,
            model: Some(model.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_trace_format() {
        let nodes = parse_nodes(
            "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,32000,1024,0,\n",
            "n.csv",
        )
        .expect("valid");
        assert_eq!(nodes[0].gpus, 2);
        assert_eq!(nodes[1].model, None);
        let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time";
        let pods = parse_pods(
            &format!("{header}\np0,6000,12288,1,460,,LS,Running,10,20,10\np1,8000,1,8,1000,V100M16|V100M32,BE,Running,5,,5\n"),
            "p.csv",
        )
        .expect("valid");
        assert_eq!(pods[0].gpu, GpuRequest::Fraction(460));
        assert_eq!(pods[0].deleted, Some(20));
        assert_eq!(pods[1].gpu, GpuRequest::Whole(8));
        assert_eq!(pods[1].gpu_models, vec!["V100M16", "V100M32"]);
        assert_eq!(pods[1].qos, Qos::BestEffort);
    }

    #[test]
    fn an_empty_file_a_header_alone_and_an_absurd_size_are_clear_errors() {
        let err = parse_nodes("", "nodes.csv").expect_err("empty");
        assert_eq!(
            err.to_string(),
            "nodes.csv line 1: the file is empty (expected a header with sn,cpu_milli,memory_mib,gpu, then rows)"
        );
        let err =
            parse_pods("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n\n", "pods.csv").expect_err("no rows");
        assert_eq!(err.to_string(), "pods.csv line 2: the header is followed by no rows");
        let err = parse_nodes("sn,cpu_milli,memory_mib,gpu\nn0,1,18446744073709551615,0\n", "big.csv")
            .expect_err("too many bytes");
        assert!(
            err.to_string().contains("memory_mib 18446744073709551615 is more bytes than can be counted"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_name_the_file_line_and_field() {
        let err = parse_nodes("sn,cpu_milli,memory_mib,gpu,model\nn0,lots,1,0,\n", "nodes.csv")
            .expect_err("bad cpu");
        assert_eq!(
            err.to_string(),
            "nodes.csv line 2: cpu_milli must be a non-negative integer, found `lots`"
        );
        let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time";
        let err = parse_pods(&format!("{header}\np,1,1,2,500,,LS,Running,0,1,0\n"), "pods.csv")
            .expect_err("2 x 0.5");
        assert!(err.to_string().starts_with("pods.csv line 2: num_gpu 2 with gpu_milli 500"), "{err}");
        let err = parse_nodes("name,cpu\n", "x.csv").expect_err("wrong header");
        assert_eq!(
            err.to_string(),
            "x.csv line 1: the header lacks the column `sn` (it needs sn,cpu_milli,memory_mib,gpu)"
        );
        let pods = parse_pods("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,1,2,1000\n", "short.csv")
            .expect("the optional columns may be missing");
        assert_eq!((pods[0].gpu, pods[0].created, pods[0].deleted), (GpuRequest::Whole(2), 0, None));
    }
}
