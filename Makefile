# yiyun: `make demo` shows it working, `make test` checks everything.
SHELL := /bin/bash
# One target directory shared by every work tree and CI run on this machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/yiyun/target

.PHONY: test lint unit e2e fuzz crds demo demo-down cluster-binaries release bench-billing bench-api bench-dr bench-tenancy bench-pools bench-engine bench-scheduler bench-scheduler-perf simulate simulate-timeline simulate-scenario

## test: format check, clippy (warnings denied), unit tests, then e2e tests on a fresh local cluster
test: lint unit e2e

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	cargo test --workspace --exclude yiyun-e2e --locked

## e2e: brings up a local cluster, two more for disaster recovery (a primary, and a standby
## with Secrets encrypted at rest; both with kube-scheduler), one for the chart's install,
## upgrade and uninstall (with kube-scheduler), and a PostgreSQL server of its own (for the
## billing ledger), runs the e2e tests (the fault and node-pool tests beside the others, on
## clusters of their own: e2e/run-tests), and always takes them all down
e2e: cluster-binaries
	cargo build -p yiyun --locked
	e2e/with-postgres e2e-$$$$ \
	  e2e/with-named-cluster YIYUN_DR_PRIMARY e2e-drp-$$$$ --scheduler -- \
	  e2e/with-named-cluster YIYUN_DR_STANDBY e2e-drs-$$$$ --scheduler --encrypt-secrets -- \
	  e2e/with-named-cluster YIYUN_HELM_CLUSTER e2e-helm-$$$$ --scheduler -- \
	  e2e/with-cluster e2e-$$$$ e2e/run-tests e2e-$$$$

cluster-binaries:
	e2e/build-binaries.sh

## fuzz: the property fuzzers (quantity parsing, pod conversion, the tenant planner, trace
## parsing) with FUZZ_CASES random inputs each (`make test` runs 256); 100,000 take a few minutes
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --locked -p yiyun-quota --test fuzz
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --locked -p yiyun-simulator --test fuzz
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --locked -p yiyun-scheduler fuzz

## release: the static release binary the image carries (`Dockerfile` runs this): musl, so it
## needs no libc at run time. Needs `rustup target add x86_64-unknown-linux-musl` and Debian's
## musl-tools; about 10 minutes on 2 cores.
release:
	cargo build --release --locked -p yiyun --target x86_64-unknown-linux-musl
	@echo "built $(CARGO_TARGET_DIR)/x86_64-unknown-linux-musl/release/yiyun"

## crds: regenerate the checked-in CRD YAML from the Rust types
crds:
	cargo run -q -p yiyun --locked -- crd > charts/yiyun/crds/crds.yaml

## demo: local cluster (unless KUBECONFIG is set; one that is not a local yiyun cluster needs
## DEMO_FLAGS=--any-cluster), CRDs, admission policies, yiyun, examples/, and a summary
demo:
	e2e/demo $(DEMO_FLAGS)

demo-down:
	e2e/cluster down demo
	e2e/cluster down demo-standby

## bench-tenancy: 1,000 tenants on a fresh local cluster, timed against a direct-write baseline
bench-tenancy: cluster-binaries
	cargo build --release -p yiyun --locked
	e2e/with-cluster bench-$$$$ $(CARGO_TARGET_DIR)/release/yiyun bench tenancy

## bench-pools: 5,000 kwok nodes in 10 pools on a fresh local cluster
bench-pools: cluster-binaries
	cargo build --release -p yiyun --locked
	e2e/with-cluster bench-$$$$ $(CARGO_TARGET_DIR)/release/yiyun bench pools

## bench-billing: 10,000 pods over a month metered, rated and exported on SQLite and on a
## throwaway PostgreSQL, then the meter's CPU per 1,000 pod events and RSS on a fresh local cluster (~4 min)
bench-billing: cluster-binaries
	cargo build --release -p yiyun --locked
	e2e/with-postgres bench-$$$$ sh -c 'YIYUN_BENCH_POSTGRES=$$YIYUN_TEST_POSTGRES e2e/with-cluster bench-$$$$ $(CARGO_TARGET_DIR)/release/yiyun bench billing'

## bench-api: the self-service API under 100 callers of 10 tenants: submit-job and list-jobs
## against the same callers asking the apiserver directly, the review cache, CPU and RSS, on a
## fresh local cluster (~3 min)
bench-api: cluster-binaries
	cargo build --release -p yiyun --locked
	e2e/with-cluster bench-$$$$ $(CARGO_TARGET_DIR)/release/yiyun bench api

## bench-dr: 100 protected namespaces of 50 objects on a DR primary, copied to a standby (both
## fresh local clusters): first copy, lag at 20 changes/s against the primary's own watch, a
## consistent copy after a restart, a failover of every namespace, controller CPU and RSS (~5 min)
bench-dr: cluster-binaries
	cargo build --release -p yiyun --locked
	e2e/with-named-cluster YIYUN_DR_PRIMARY bench-drp-$$$$ -- \
	  e2e/with-named-cluster YIYUN_DR_STANDBY bench-drs-$$$$ --scheduler --encrypt-secrets -- \
	  $(CARGO_TARGET_DIR)/release/yiyun bench dr

## simulate: the FGD paper's placement experiment on the Alibaba trace and twelve generated mixes,
## every policy, 10 seeds (~2 min)
simulate:
	cargo build --release -p yiyun --locked
	$(CARGO_TARGET_DIR)/release/yiyun simulate fgd --traces ../shared/traces/openb

## bench-engine: the placement engine alone on one core against a full scan, fastest of 3 runs each (5,000 and 10,000 nodes; ~3 min)
bench-engine:
	cargo build --release -p yiyun --locked
	$(CARGO_TARGET_DIR)/release/yiyun bench engine --traces ../shared/traces/openb

## simulate-timeline: the trace replayed in time on four East/West sites, every policy (~1 s)
simulate-timeline:
	cargo build --release -p yiyun --locked
	$(CARGO_TARGET_DIR)/release/yiyun simulate timeline --traces ../shared/traces/openb

## simulate-scenario: simulator/scenarios/east-west.yaml, where each pod goes or why it waits
simulate-scenario:
	cargo build --release -p yiyun --locked
	$(CARGO_TARGET_DIR)/release/yiyun simulate scenario simulator/scenarios/east-west.yaml

## bench-scheduler: yiyun-scheduler vs kube-scheduler and the apiserver ceiling, 1,000 and 5,000 kwok nodes (~25 min)
bench-scheduler: cluster-binaries
	cargo build --release -p yiyun --locked
	source e2e/versions.env && KUBE_SCHEDULER=$$HOME/.cache/yiyun/bin/kube-scheduler-$$KUBERNETES_VERSION \
	  e2e/with-cluster bench-$$$$ $(CARGO_TARGET_DIR)/release/yiyun bench scheduler

## bench-scheduler-perf: kube-scheduler's own scheduler_perf workloads (from the Go module cache, as
## they are), kube-scheduler then yiyun-scheduler on each, each on a fresh local cluster, with a
## correctness check of the final placement (~35 min for the default list;
## WORKLOADS=SchedulingBasic/500Nodes,... for others, CONTENDERS=yiyun-scheduler for one)
bench-scheduler-perf: cluster-binaries
	cargo build --release -p yiyun --locked
	source e2e/versions.env && \
	  export KUBE_SCHEDULER=$$HOME/.cache/yiyun/bin/kube-scheduler-$$KUBERNETES_VERSION && \
	  export SCHEDULER_PERF_DIR=$$(go mod download -json k8s.io/kubernetes@$$KUBERNETES_VERSION | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/test/integration/scheduler_perf && \
	  $(CARGO_TARGET_DIR)/release/yiyun bench scheduler --suite scheduler-perf --cluster-script e2e/cluster $(if $(WORKLOADS),--workloads $(WORKLOADS)) $(if $(CONTENDERS),--contenders $(CONTENDERS))
