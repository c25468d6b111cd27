# kubetrain: the entry points people and CI use. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER_DIR ?= .cluster
KUBECTL := bin/kubectl --kubeconfig $(CLUSTER_DIR)/kubeconfig

.PHONY: help setup setup-cold lock lock-base system venv binaries test lint unit integration crds bench images test-images test-node kind-e2e cluster-up cluster-down demo clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: ## everything a fresh machine needs, each step timed: tmux, .venv from the lock, the locked binaries in bin/
	@bash hack/setup.sh

setup-cold: ## prove `make setup` on a fresh clone of HEAD with empty caches (and GOFLAGS=-mod=readonly); prints its time
	@bash hack/setup-cold.sh

lock: ## regenerate the locks from hack/versions.env and pyproject.toml: hack/tools/*/go.{mod,sum}, hack/requirements.lock, images/*/requirements.lock
	@bash hack/lock-tools.sh
	@bash hack/lock-python.sh

lock-base: ## resolve images/base/packages.in against the Debian archive into images/base/packages.lock
	@bash hack/build-base.sh --lock

system: ## Debian packages the tests, image builds and the real node use: tmux, Prometheus, buildah, podman, runc, mmdebstrap, CNI plugins, iptables
	@bash hack/install-system.sh

venv: $(VENV)/.installed ## .venv with exactly hack/requirements.lock (all extras), the package editable

$(VENV)/.installed: pyproject.toml hack/requirements.lock hack/install-python.sh
	@PYTHON=$(PYTHON) bash hack/install-python.sh
	@touch $@

binaries: ## build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, helm, kueue, containerd, coredns into bin/ from hack/tools/ (cached by lock)
	@bash hack/build-binaries.sh

test: lint ## every test tier but the images' and the real node's (the README's test command; .ci/run adds those two when their inputs changed)
	@bash hack/pytest.sh tests --ignore=tests/images --ignore=tests/node

test-images: images ## the image tier: build the images (cached by digest), then run each in a real container runtime
	@bash hack/pytest.sh tests/images

test-node: images ## the real node's tier: the chart as shipped on a kubelet and containerd, running the images (root)
	@bash hack/pytest.sh tests/node

unit: ## unit tests only (no cluster)
	@bash hack/pytest.sh tests/unit

integration: ## integration tests only (real local control plane)
	@bash hack/pytest.sh tests/integration

lint: ## ruff, mypy --strict, import contracts
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint images/*/Dockerfile

crds: ## regenerate crds/ and the chart's copies (CRD from the models, operator ClusterRole)
	$(PY) -m kubetrain.api.crd --out crds --chart-out charts/kubetrain/files/crds
	cp config/rbac/operator-clusterrole.yaml charts/kubetrain/files/rbac/
	cp config/trainer-policy.yaml charts/kubetrain/files/

bench: ## the benchmarks, printing their figures
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

images: $(VENV)/.installed ## build the three images daemonless (buildah) from the locks, cached by input digest; prints time, digest, sizes
	@bash hack/build-images.sh

kind-e2e: ## on a host with Docker: kind cluster, images loaded, Helm install, the tiny job with a stop and resume
	@bash hack/kind-e2e.sh

cluster-up: ## start the local cluster; writes .cluster/kubeconfig (KUEUE=1: with Kueue and GPU queues; NODE=real: with a real node running the images)
	@$(PY) -m kubetrain.localcluster up --dir $(CLUSTER_DIR) $(if $(KUEUE),--kueue) $(if $(filter real,$(NODE)),--real-node)

cluster-down: ## stop the local cluster (every process it started, by PID) and leave the host as it was
	@$(PY) -m kubetrain.localcluster down --dir $(CLUSTER_DIR)

demo: cluster-up ## the main job: a tiny LoRA TrainingJob on the local cluster, stopped and resumed on the way
	@$(PY) -m kubetrain.localcluster.demo --dir $(CLUSTER_DIR)

clean: cluster-down ## remove build output (the binary cache in ~/.cache/kubetrain stays)
	rm -rf bin $(VENV) $(CLUSTER_DIR)
