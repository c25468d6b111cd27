// Command custom-job is a kubetrain custom trainer written in Go with the standard library
// only: it follows the custom-job report contract (docs/custom-jobs.md).
//
// It fits y = a*x + b by minibatch SGD on data generated from spec.training.seed, so the
// loss really falls. The operator gives it the TrainingJob spec in KUBETRAIN_CONFIG; it
// reads spec.training (epochs, batchSize, learningRate, seed), spec.dataset.synthetic
// (samples) and spec.checkpoint (intervalEpochs, intervalSteps, keepLast). It reports
// progress on the report channel (the Pod's annotation when the channel is down), writes
// checkpoints under KUBETRAIN_CHECKPOINT_DIR, resumes from RESUME_FROM, stops with a
// checkpoint on SIGTERM (exit 143) and writes its model to KUBETRAIN_OUTPUT_DIR (exit 0).
//
// Two variables of its own, set with spec.env:
//
//	CUSTOM_STEP_DELAY_MS   sleep this long after every step (to watch it train); default 0
//	CUSTOM_PAUSE_AT_STEP   after this step, wait up to a minute for SIGTERM (a test hook)
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Exit codes the operator interprets (docs/custom-jobs.md, "Exit codes").
const (
	exitCompleted = 0   // every worker exiting 0 completes the job
	exitFailed    = 1   // anything else: a failure, retried within spec.runPolicy.backoffLimit
	exitPermanent = 78  // a failure no retry cures: the job fails at once
	exitStopped   = 143 // checkpointed on SIGTERM: resumable, not a failure
)

// spec is the part of the TrainingJob spec (KUBETRAIN_CONFIG, camelCase JSON) this trainer uses.
type spec struct {
	Dataset struct {
		Synthetic *struct {
			Samples int `json:"samples"`
		} `json:"synthetic"`
	} `json:"dataset"`
	Training struct {
		Epochs       int      `json:"epochs"`
		BatchSize    int      `json:"batchSize"`
		LearningRate *float64 `json:"learningRate"`
		Seed         int64    `json:"seed"`
	} `json:"training"`
	Checkpoint struct {
		IntervalEpochs int `json:"intervalEpochs"`
		IntervalSteps  int `json:"intervalSteps"`
		KeepLast       int `json:"keepLast"`
	} `json:"checkpoint"`
}

// permanentError is a failure no retry can cure: exit 78 with "<Reason>: <message>".
type permanentError struct{ reason, message string }

func (e permanentError) Error() string { return e.reason + ": " + e.message }

func configError(format string, args ...any) error {
	return permanentError{"ConfigurationError", fmt.Sprintf(format, args...)}
}

// config is what this run needs, from the spec and the Pod's environment.
type config struct {
	epochs, batchSize, samples, stepsPerEpoch int
	learningRate                              float64
	seed                                      int64
	intervalEpochs, intervalSteps, keepLast   int
	checkpointDir, outputDir, resumeFrom      string
	stepDelay                                 time.Duration
	pauseAtStep                               int
}

func loadConfig() (config, error) {
	var s spec
	s.Training.Epochs, s.Training.BatchSize, s.Training.Seed = 3, 8, 42
	s.Checkpoint.IntervalEpochs, s.Checkpoint.KeepLast = 1, 3
	text := os.Getenv("KUBETRAIN_CONFIG")
	if text == "" {
		return config{}, configError("KUBETRAIN_CONFIG is not set (the TrainingJob spec as JSON)")
	}
	if err := json.Unmarshal([]byte(text), &s); err != nil {
		return config{}, configError("KUBETRAIN_CONFIG is not a TrainingJob spec: %v", err)
	}
	if s.Dataset.Synthetic == nil {
		return config{}, configError("spec.dataset: this example trains on spec.dataset.synthetic only")
	}
	if world := os.Getenv("WORLD_SIZE"); world != "" && world != "1" {
		return config{}, configError("spec.resources: this example trains on one worker with one process (WORLD_SIZE=%s)", world)
	}
	c := config{
		epochs:         max(s.Training.Epochs, 1),
		batchSize:      max(s.Training.BatchSize, 1),
		samples:        max(s.Dataset.Synthetic.Samples, 1),
		learningRate:   0.05,
		seed:           s.Training.Seed,
		intervalEpochs: max(s.Checkpoint.IntervalEpochs, 1),
		intervalSteps:  s.Checkpoint.IntervalSteps,
		keepLast:       max(s.Checkpoint.KeepLast, 1),
		checkpointDir:  os.Getenv("KUBETRAIN_CHECKPOINT_DIR"),
		outputDir:      os.Getenv("KUBETRAIN_OUTPUT_DIR"),
		resumeFrom:     os.Getenv("RESUME_FROM"),
	}
	if s.Training.LearningRate != nil {
		c.learningRate = *s.Training.LearningRate
	}
	if c.resumeFrom == "latest" {
		c.resumeFrom = ""
	}
	c.stepsPerEpoch = (c.samples + c.batchSize - 1) / c.batchSize
	if c.checkpointDir == "" {
		return config{}, configError("KUBETRAIN_CHECKPOINT_DIR is not set (the checkpoint volume's mount)")
	}
	if c.outputDir == "" {
		c.outputDir = c.checkpointDir + "/output"
	}
	var err error
	if c.stepDelay, err = millis("CUSTOM_STEP_DELAY_MS"); err != nil {
		return config{}, err
	}
	if raw := os.Getenv("CUSTOM_PAUSE_AT_STEP"); raw != "" {
		if c.pauseAtStep, err = strconv.Atoi(raw); err != nil || c.pauseAtStep < 1 {
			return config{}, configError("CUSTOM_PAUSE_AT_STEP=%q is not a step number", raw)
		}
	}
	return c, nil
}

func millis(name string) (time.Duration, error) {
	raw := os.Getenv(name)
	if raw == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return 0, configError("%s=%q is not a number of milliseconds", name, raw)
	}
	return time.Duration(n) * time.Millisecond, nil
}

// model is what is trained, checkpointed and published.
type model struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

const trueA, trueB, noise = 3.0, -2.0, 0.1

// batch is the minibatch of one step: generated from the seed and the step, so a resumed
// run sees exactly what an uninterrupted one would have.
func batch(seed int64, step, size int) (xs, ys []float64) {
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(step)))
	xs, ys = make([]float64, size), make([]float64, size)
	for i := range xs {
		xs[i] = rng.Float64()*2 - 1
		ys[i] = trueA*xs[i] + trueB + noise*rng.NormFloat64()
	}
	return xs, ys
}

// sgdStep takes one gradient step on the mean squared error; returns the loss before it.
func (m *model) sgdStep(xs, ys []float64, lr float64) float64 {
	var loss, gradA, gradB float64
	for i, x := range xs {
		residual := m.A*x + m.B - ys[i]
		loss += residual * residual
		gradA += 2 * residual * x
		gradB += 2 * residual
	}
	n := float64(len(xs))
	m.A -= lr * gradA / n
	m.B -= lr * gradB / n
	return loss / n
}

// evalLoss is the mean squared error on a fixed held-out set.
func (m model) evalLoss(seed int64) float64 {
	xs, ys := batch(seed+1, -1, 256)
	var loss float64
	for i, x := range xs {
		r := m.A*x + m.B - ys[i]
		loss += r * r
	}
	return loss / float64(len(xs))
}

// stopRequested is set by SIGTERM (the kubelet stopping the Pod) or SIGINT.
var stopRequested atomic.Bool

func main() {
	os.Exit(run())
}

func run() int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		logf("%v received: checkpointing at the next step boundary", sig)
		stopRequested.Store(true)
	}()

	rep := newReporter()
	cfg, err := loadConfig()
	if err != nil {
		return finish(rep, report{State: "failed", Message: err.Error()}, err)
	}
	t := &trainer{cfg: cfg, rep: rep, store: checkpointStore{root: cfg.checkpointDir, keepLast: cfg.keepLast}}
	final, err := t.train()
	return finish(rep, final, err)
}

// finish delivers the last report, writes the termination message and picks the exit code.
func finish(rep *reporter, last report, err error) int {
	code, message := exitCompleted, last.Message
	var permanent permanentError
	switch {
	case errors.As(err, &permanent):
		code, message = exitPermanent, permanent.Error()
	case errors.Is(err, errStopped):
		code = exitStopped
	case err != nil:
		code, message = exitFailed, err.Error()
	}
	if err != nil && !errors.Is(err, errStopped) {
		last.State, last.Message = "failed", message
	}
	if !rep.close(last, 10*time.Second) {
		logf("the last report was not delivered")
	}
	writeTerminationMessage(message)
	logf("exit %d: %s", code, message)
	return code
}

var errStopped = errors.New("stopped on request")

// terminationLog is where the kubelet reads the termination message (terminationMessagePath).
func terminationLog() string {
	if path := os.Getenv("KUBETRAIN_TERMINATION_LOG"); path != "" {
		return path
	}
	return "/dev/termination-log"
}

func writeTerminationMessage(message string) {
	if len(message) > 4096 {
		message = message[:4096]
	}
	if err := os.WriteFile(terminationLog(), []byte(message), 0o644); err != nil {
		logf("cannot write the termination message: %v", err)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s custom-job: %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

type trainer struct {
	cfg         config
	rep         *reporter
	store       checkpointStore
	checkpoints []checkpointInfo
}

// train runs from the resume point to the end, or until SIGTERM; the report it returns is
// the last word.
func (t *trainer) train() (report, error) {
	cfg := t.cfg
	total := cfg.epochs * cfg.stepsPerEpoch
	base := report{TotalEpochs: cfg.epochs, TotalSteps: total, ThroughputUnit: "samples/s"}

	if done, ok := publishedModel(cfg.outputDir); ok { // a restart after the model was published
		base.State, base.Step, base.Epoch, base.Model = "completed", total, cfg.epochs, &done
		base.Message = "the model was already published at " + done.Path
		return t.withCheckpoints(base), nil
	}
	if err := t.store.clearStaging(); err != nil {
		return base, err
	}
	var m model
	step := 0
	from, err := t.store.resolve(cfg.resumeFrom)
	if err != nil {
		return base, err
	}
	if from != nil {
		if m, err = t.store.load(*from); err != nil {
			return base, err
		}
		step = from.Step
		base.Message = "resumed from " + from.ID
		logf("resuming from checkpoint %s (step %d)", from.ID, step)
	} else {
		base.Message = "starting"
	}
	if t.checkpoints, err = t.store.complete(); err != nil {
		return base, err
	}
	r := base
	r.State, r.Step, r.Epoch = "starting", step, step/cfg.stepsPerEpoch
	t.rep.submit(t.withCheckpoints(r), true)

	var loss float64
	started, startStep := time.Now(), step
	for step < total {
		if stopRequested.Load() {
			return t.stop(base, m, step, loss)
		}
		xs, ys := batch(cfg.seed, step, cfg.batchSize)
		loss = m.sgdStep(xs, ys, cfg.learningRate)
		step++
		epoch := step / cfg.stepsPerEpoch
		epochEnd := step%cfg.stepsPerEpoch == 0
		r = base
		r.State, r.Step, r.Epoch, r.Message = "running", step, epoch, ""
		r.Loss, r.LearningRate = ptr(loss), ptr(cfg.learningRate)
		if elapsed := time.Since(started).Seconds(); elapsed > 0 {
			r.Throughput = ptr(float64((step-startStep)*cfg.batchSize) / elapsed)
		}
		r.Metrics = map[string]float64{"a": m.A, "b": m.B}
		due := (epochEnd && epoch%cfg.intervalEpochs == 0) ||
			(cfg.intervalSteps > 0 && step%cfg.intervalSteps == 0)
		if epochEnd {
			r.EvalLoss = ptr(m.evalLoss(cfg.seed))
		}
		if due || step == total {
			if err := t.checkpoint(m, step, epoch, loss); err != nil {
				return r, err
			}
		}
		t.rep.submit(t.withCheckpoints(r), due || epochEnd)
		if cfg.pauseAtStep == step {
			waitForStop(time.Minute)
		}
		if cfg.stepDelay > 0 {
			time.Sleep(cfg.stepDelay)
		}
	}
	published, err := publishModel(cfg.outputDir, m, loss)
	if err != nil {
		return r, err
	}
	r.State, r.Model = "completed", &published
	r.Message = fmt.Sprintf("fitted y = %.3fx %+.3f; model at %s", m.A, m.B, published.Path)
	return t.withCheckpoints(r), nil
}

// stop writes a checkpoint at the current step (unless one is there already) and ends the run.
func (t *trainer) stop(base report, m model, step int, loss float64) (report, error) {
	r := base
	r.State, r.Step, r.Epoch = "stopping", step, step/t.cfg.stepsPerEpoch
	if step > 0 {
		r.Loss = ptr(loss)
	}
	latest := ""
	if n := len(t.checkpoints); n > 0 {
		latest = t.checkpoints[n-1].ID
	}
	if step > 0 && latest != checkpointID(step) {
		if err := t.checkpoint(m, step, r.Epoch, loss); err != nil {
			return r, err
		}
		latest = checkpointID(step)
	}
	r.Message = fmt.Sprintf("stopped at step %d", step)
	if latest != "" {
		r.Message += "; checkpoint " + latest
	}
	return t.withCheckpoints(r), errStopped
}

func (t *trainer) checkpoint(m model, step, epoch int, loss float64) error {
	info, err := t.store.save(m, step, epoch, loss, t.cfg.resumeFrom)
	if err != nil {
		return fmt.Errorf("writing checkpoint at step %d: %w", step, err)
	}
	logf("checkpoint %s (loss %.4f)", info.ID, loss)
	if err := t.store.prune(); err != nil {
		logf("pruning old checkpoints: %v", err)
	}
	t.checkpoints, err = t.store.complete()
	return err
}

// withCheckpoints is r listing every complete checkpoint on the volume (the operator replaces
// status.checkpoints with the list of each report that has one).
func (t *trainer) withCheckpoints(r report) report {
	cps := t.checkpoints
	if len(cps) > maxCheckpoints {
		cps = cps[len(cps)-maxCheckpoints:]
	}
	r.Checkpoints = make([]reportedCheckpoint, 0, len(cps))
	for _, c := range cps {
		r.Checkpoints = append(r.Checkpoints, c.reported(t.store.root))
	}
	return r
}

func waitForStop(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for !stopRequested.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

func ptr(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil // the operator rejects a report with a non-finite number
	}
	return &v
}
