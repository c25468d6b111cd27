#!/usr/bin/env bash
# End to end on kind, for hosts with Docker (the build machines of this project have none):
# builds the images, loads them into a kind cluster, installs the chart, runs the tiny LoRA
# job with a stop and a resume, and checks that it completes from where it stopped.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source hack/versions.env
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
CLUSTER="${KIND_CLUSTER:-kubetrain-e2e}"
TAG=e2e
REGISTRY=ghcr.io/kubetrain
KUBECTL=bin/kubectl
HELM=bin/helm
export KUBECONFIG="$root/.cluster/kind-kubeconfig"

log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
command -v docker >/dev/null || { echo "kind-e2e needs Docker" >&2; exit 1; }
[ -x bin/kind ] || GOBIN="$root/bin" go install "sigs.k8s.io/kind@$KIND_VERSION"

log "building images"
# The same `make images` as on the build machines (the same Dockerfiles, base recipe and
# locks), with Docker's builder: kind loads from Docker's image store.
make images IMAGE_BUILDER=docker IMAGE_REGISTRY=$REGISTRY IMAGE_TAG=$TAG

log "kind cluster $CLUSTER on Kubernetes $K8S_VERSION"
bin/kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
bin/kind create cluster --name "$CLUSTER" --image "${KIND_NODE_IMAGE:-kindest/node:$K8S_VERSION}" --kubeconfig "$KUBECONFIG" --wait 120s
trap 'bin/kind delete cluster --name "$CLUSTER"' EXIT
for image in operator trainer-lora trainer-vision; do
  bin/kind load docker-image --name "$CLUSTER" "$REGISTRY/$image:$TAG"
done

log "installing the chart"
$HELM install kubetrain charts/kubetrain -n kubetrain-system --create-namespace --wait --timeout 5m \
  --set image.tag=$TAG --set image.pullPolicy=Never \
  --set trainer.llmImage=$REGISTRY/trainer-lora:$TAG \
  --set trainer.visionImage=$REGISTRY/trainer-vision:$TAG --set trainer.pullPolicy=Never

log "the tiny LoRA job, stopped and resumed"
$KUBECTL apply -f examples/tiny-lora-cpu.yaml
$KUBECTL wait tj/tiny-lora --for=jsonpath='{.status.phase}'=Running --timeout=10m
# The example checkpoints every 64 steps: stop once the first checkpoint is in status.
$KUBECTL wait tj/tiny-lora --for=jsonpath='{.status.checkpoints[0].id}'=ckpt-00000064 --timeout=10m
$KUBECTL patch tj tiny-lora --type=merge -p '{"spec":{"suspend":true}}'
$KUBECTL wait tj/tiny-lora --for=jsonpath='{.status.phase}'=Stopped --timeout=5m
stopped_at=$($KUBECTL get tj tiny-lora -o jsonpath='{.status.progress.currentStep}')
log "stopped at step $stopped_at; checkpoint $($KUBECTL get tj tiny-lora -o jsonpath='{.status.latestCheckpoint}')"
$KUBECTL patch tj tiny-lora --type=merge -p '{"spec":{"suspend":false}}'
$KUBECTL wait tj/tiny-lora --for=jsonpath='{.status.phase}'=Completed --timeout=15m
$KUBECTL get tj tiny-lora
[ "$($KUBECTL get tj tiny-lora -o jsonpath='{.status.attempt}')" = 2 ] || { log "expected one resume"; exit 1; }
log "passed: the job resumed from step $stopped_at and completed"
