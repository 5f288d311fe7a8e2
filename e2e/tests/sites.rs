//! ComputeSite and NodePool: the schema and CEL rules the apiserver enforces.

use yiyun_e2e::{client, install_crds, kubectl, kubectl_apply as apply, repo_file, unique};

#[tokio::test]
async fn the_example_sites_and_pools_are_valid_and_shown_usefully() {
    let client = client().await;
    install_crds(&client).await;
    let (ok, out) = apply(&repo_file("examples/sites/sites.yaml"));
    assert!(ok, "{out}");
    let (ok, out) = apply(&repo_file("examples/sites/nodepools.yaml"));
    assert!(ok, "{out}");
    let table = String::from_utf8_lossy(&kubectl(&["get", "site", "qingyang"]).stdout).into_owned();
    assert!(table.contains("CNY/KWH") && table.contains("west") && table.contains("0.32"), "{table}");
    let explained =
        String::from_utf8_lossy(&kubectl(&["explain", "nodepool.spec.onboarding"]).stdout).into_owned();
    assert!(explained.contains("approvedNodes"), "{explained}");
}

#[tokio::test]
async fn invalid_sites_and_pools_are_refused_with_readable_messages() {
    let client = client().await;
    install_crds(&client).await;
    let site = unique("loop");
    let (ok, out) = apply(&format!(
        "apiVersion: yiyun.io/v1alpha1\nkind: ComputeSite\nmetadata: {{name: {site}}}\nspec: {{region: x, regionClass: east, hub: h, city: c, powerPricePerKWh: \"0.5\", pue: 1.2, carbonIntensity: 1, links: [{{to: {site}, latencyMs: 1, bandwidthGbps: 1, pricePerGB: \"0\"}}]}}\n"
    ));
    assert!(!ok && out.contains("a site cannot link to itself"), "{out}");

    let (ok, out) = apply(&format!(
        "apiVersion: yiyun.io/v1alpha1\nkind: ComputeSite\nmetadata: {{name: {site}}}\nspec: {{region: x, regionClass: north, hub: h, city: c, powerPricePerKWh: \"cheap\", pue: 0.5, carbonIntensity: 1}}\n"
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("spec.regionClass") && out.contains("Unsupported value: \"north\""), "{out}");
    assert!(out.contains("spec.powerPricePerKWh"), "{out}");
    assert!(out.contains("spec.pue") && out.contains("greater than or equal to 1"), "{out}");

    let pool = unique("bad");
    let (ok, out) = apply(&format!(
        "apiVersion: yiyun.io/v1alpha1\nkind: NodePool\nmetadata: {{name: {pool}}}\nspec: {{site: x, nodeNames: [a], nodeSelector: {{matchLabels: {{a: b}}}}, rack: {{label: r, nodes: {{a: r1}}}}, maintenance: [{{name: m, reason: r, drainTimeout: soon}}]}}\n"
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("set exactly one of spec.nodeSelector and spec.nodeNames"), "{out}");
    assert!(out.contains("set at most one of rack.label and rack.nodes"), "{out}");
    assert!(out.contains("a maintenance entry names either nodes or a rack"), "{out}");
    assert!(out.contains("spec.maintenance[0].drainTimeout"), "{out}");
}
