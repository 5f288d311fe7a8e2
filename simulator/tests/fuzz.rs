//! Fuzzing by property: the trace parsers take any text, and any CSV of numbers, without a
//! panic or an overflow. `make fuzz` runs these with many more cases (PROPTEST_CASES).

use proptest::prelude::*;
use yiyun_simulator::trace::{parse_nodes, parse_pods};

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2_000).prop_map(|n| n.to_string()),
        Just(String::new()),
        "[a-zA-Z0-9|.-]{0,8}",
    ]
}

fn csv(header: &'static str) -> impl Strategy<Value = String> {
    let width = header.split(',').count();
    proptest::collection::vec(proptest::collection::vec(field(), 0..=width + 1), 0..6).prop_map(move |rows| {
        let body: Vec<String> = rows.into_iter().map(|row| row.join(",")).collect();
        format!("{header}\n{}\n", body.join("\n"))
    })
}

proptest! {
    #[test]
    fn any_text_is_a_trace_or_a_clear_error(text in "(?s).{0,200}") {
        for result in [parse_nodes(&text, "n.csv").map(|_| ()), parse_pods(&text, "p.csv").map(|_| ())] {
            if let Err(err) = result {
                prop_assert!(err.to_string().contains(".csv line "), "{err}");
            }
        }
    }

    #[test]
    fn node_rows_of_any_numbers_convert_without_overflow(text in csv("sn,cpu_milli,memory_mib,gpu,model")) {
        if let Ok(nodes) = parse_nodes(&text, "n.csv") {
            for node in nodes {
                let converted = node.to_node();
                prop_assert_eq!(converted.allocatable.memory_bytes >> 20, node.memory_mib);
            }
        }
    }

    #[test]
    fn pod_rows_of_any_numbers_convert_without_overflow(
        text in csv("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,creation_time,deletion_time")
    ) {
        if let Ok(pods) = parse_pods(&text, "p.csv") {
            for pod in pods {
                let converted = pod.to_pod(pod.name.clone());
                prop_assert_eq!(converted.requests.memory_bytes >> 20, pod.memory_mib);
            }
        }
    }
}
