package main

// Progress reports (docs/custom-jobs.md, "The report" and "Delivering reports"): pushed to
// the operator's report channel over HTTPS with the Pod's report token; when the channel
// does not take one, patched into the Pod's own annotation with the Pod's ServiceAccount
// token. A report that ends the run (completed, failed, stopping) goes to both.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	defaultAnnotation = "kubetrain.io/progress"
	maxReportBytes    = 32 * 1024
	channelRetryAfter = 30 * time.Second
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// report is the JSON the operator decodes (kubetrain.api.report.ProgressReport).
type report struct {
	Version        int                  `json:"version"`
	Time           string               `json:"time"`
	State          string               `json:"state"`
	Epoch          int                  `json:"epoch"`
	TotalEpochs    int                  `json:"totalEpochs"`
	Step           int                  `json:"step"`
	TotalSteps     int                  `json:"totalSteps"`
	Loss           *float64             `json:"loss,omitempty"`
	EvalLoss       *float64             `json:"evalLoss,omitempty"`
	LearningRate   *float64             `json:"learningRate,omitempty"`
	Throughput     *float64             `json:"throughput,omitempty"`
	ThroughputUnit string               `json:"throughputUnit,omitempty"`
	Metrics        map[string]float64   `json:"metrics,omitempty"`
	Checkpoints    []reportedCheckpoint `json:"checkpoints,omitempty"`
	Model          *reportedModel       `json:"model,omitempty"`
	Message        string               `json:"message,omitempty"`
}

type reportedCheckpoint struct {
	ID        string   `json:"id"`
	Epoch     int      `json:"epoch"`
	Step      int      `json:"step"`
	Loss      *float64 `json:"loss,omitempty"`
	CreatedAt string   `json:"createdAt"`
	SizeBytes int64    `json:"sizeBytes"`
	Path      string   `json:"path"`
}

type reportedModel struct {
	Path      string `json:"path"`
	Format    string `json:"format,omitempty"`
	SizeBytes int64  `json:"sizeBytes,omitempty"`
	Digest    string `json:"digest,omitempty"`
}

func durable(state string) bool {
	return state == "completed" || state == "failed" || state == "stopping"
}

// sender delivers one encoded report somewhere.
type sender func(body []byte) error

// reporter sends the newest submitted report at most once per interval, from a goroutine,
// so training never waits on the network; urgent reports skip the wait.
type reporter struct {
	push, annotate     sender // either may be nil
	interval, fallback time.Duration

	mu             sync.Mutex
	pending        *report
	urgent         bool
	closing        bool
	wake           chan struct{}
	done           chan struct{}
	downUntil      time.Time
	lastAnnotation time.Time
}

func newReporter() *reporter {
	r := &reporter{
		interval: seconds("KUBETRAIN_REPORT_CHANNEL_INTERVAL_SECONDS", seconds("KUBETRAIN_REPORT_INTERVAL_SECONDS", 5*time.Second)),
		fallback: seconds("KUBETRAIN_REPORT_INTERVAL_SECONDS", 12*time.Second),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if rank := os.Getenv("RANK"); rank == "" || rank == "0" { // the operator mirrors rank 0 only
		var err error
		if r.push, err = channelSender(); err != nil {
			logf("no report channel: %v", err)
		}
		if r.annotate, err = annotationSender(); err != nil {
			logf("no annotation fallback: %v", err)
		}
	}
	go r.loop()
	return r
}

func seconds(name string, fallback time.Duration) time.Duration {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return time.Duration(v * float64(time.Second))
	}
	return fallback
}

// submit queues r, replacing a report not sent yet.
func (rep *reporter) submit(r report, urgent bool) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if rep.closing {
		return
	}
	rep.pending, rep.urgent = &r, rep.urgent || urgent
	rep.poke()
}

// close delivers last (retrying until timeout) and stops; true when it was delivered.
func (rep *reporter) close(last report, timeout time.Duration) bool {
	rep.mu.Lock()
	rep.pending, rep.urgent, rep.closing = &last, true, true
	rep.poke()
	rep.mu.Unlock()
	select {
	case <-rep.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (rep *reporter) poke() {
	select {
	case rep.wake <- struct{}{}:
	default:
	}
}

func (rep *reporter) loop() {
	next, failures := time.Now(), 0
	for {
		rep.mu.Lock()
		r, urgent, closing := rep.pending, rep.urgent, rep.closing
		if r == nil && closing {
			rep.mu.Unlock()
			close(rep.done)
			return
		}
		wait := time.Until(next)
		if r != nil && (urgent || wait <= 0) {
			rep.pending, rep.urgent = nil, false
			rep.mu.Unlock()
			if err := rep.send(*r); err != nil {
				failures++
				backoff := min(rep.interval<<min(failures-1, 6), time.Minute)
				if closing {
					backoff = min(backoff, 2*time.Second)
				}
				logf("report not delivered (%d in a row): %v", failures, err)
				next = time.Now().Add(backoff)
				rep.mu.Lock()
				if rep.pending == nil {
					rep.pending = r // retry it, unless something newer came meanwhile
				}
				rep.mu.Unlock()
				time.Sleep(time.Until(next)) // a retry waits its backoff, urgent or not
				continue
			}
			failures, next = 0, time.Now().Add(rep.interval)
			continue
		}
		rep.mu.Unlock()
		if r == nil {
			<-rep.wake
		} else {
			select {
			case <-rep.wake:
			case <-time.After(wait):
			}
		}
	}
}

// send stamps and delivers one report: the channel while it answers, else the annotation at
// its slower pace; a last word goes to the annotation as well.
func (rep *reporter) send(r report) error {
	r.Version, r.Time = 1, time.Now().UTC().Format(time.RFC3339Nano)
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if len(body) > maxReportBytes {
		logf("dropping a %d-byte report (the limit is %d)", len(body), maxReportBytes)
		return nil
	}
	if rep.push == nil && rep.annotate == nil {
		logf("progress %s", body)
		return nil
	}
	now := time.Now()
	// Without a fallback the channel is tried every time; with one, again after a pause.
	if rep.push != nil && (rep.annotate == nil || !now.Before(rep.downUntil)) {
		err := rep.push(body)
		if err == nil {
			if durable(r.State) && rep.annotate != nil {
				return rep.annotation(body, now)
			}
			return nil
		}
		logf("report channel unavailable (%v); using the Pod annotation for %s", err, channelRetryAfter)
		rep.downUntil = now.Add(channelRetryAfter)
		if rep.annotate == nil {
			return err
		}
	}
	if durable(r.State) || now.Sub(rep.lastAnnotation) >= rep.fallback {
		return rep.annotation(body, now)
	}
	return nil // a newer report follows within the annotation interval
}

func (rep *reporter) annotation(body []byte, now time.Time) error {
	if err := rep.annotate(body); err != nil {
		return err
	}
	rep.lastAnnotation = now
	return nil
}

// channelSender POSTs to KUBETRAIN_REPORT_URL, verifying the operator with the PEM in
// KUBETRAIN_REPORT_CA, with the bearer token in KUBETRAIN_REPORT_TOKEN_FILE (read every
// time: the kubelet rotates it).
func channelSender() (sender, error) {
	target, tokenFile := os.Getenv("KUBETRAIN_REPORT_URL"), os.Getenv("KUBETRAIN_REPORT_TOKEN_FILE")
	if target == "" || tokenFile == "" {
		return nil, errors.New("KUBETRAIN_REPORT_URL or KUBETRAIN_REPORT_TOKEN_FILE is not set")
	}
	client, err := httpsClient([]byte(os.Getenv("KUBETRAIN_REPORT_CA")))
	if err != nil {
		return nil, fmt.Errorf("KUBETRAIN_REPORT_CA: %w", err)
	}
	return func(body []byte) error {
		return request(client, http.MethodPost, target, tokenFile, "application/json", body)
	}, nil
}

// annotationSender merge-patches the report into the Pod's own annotation, with the Pod's
// ServiceAccount token (the admission policy lets it change its own Pod's annotations only).
func annotationSender() (sender, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	pod, namespace := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if host == "" || port == "" || pod == "" || namespace == "" {
		return nil, errors.New("not in a Pod (KUBERNETES_SERVICE_HOST, POD_NAME or POD_NAMESPACE is not set)")
	}
	ca, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		return nil, err
	}
	client, err := httpsClient(ca)
	if err != nil {
		return nil, err
	}
	annotation := os.Getenv("KUBETRAIN_PROGRESS_ANNOTATION")
	if annotation == "" {
		annotation = defaultAnnotation
	}
	target := (&url.URL{
		Scheme: "https", Host: net.JoinHostPort(host, port),
		Path: "/api/v1/namespaces/" + namespace + "/pods/" + pod,
	}).String()
	return func(body []byte) error {
		patch, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"annotations": map[string]string{annotation: string(body)}},
		})
		return request(client, http.MethodPatch, target, serviceAccountDir+"/token", "application/merge-patch+json", patch)
	}, nil
}

func httpsClient(caPEM []byte) (*http.Client, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(bytes.TrimSpace(caPEM)) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("no PEM certificate in it")
		}
		config.RootCAs = pool
	}
	transport := &http.Transport{TLSClientConfig: config, MaxIdleConnsPerHost: 1}
	return &http.Client{Transport: transport, Timeout: 15 * time.Second}, nil
}

func request(client *http.Client, method, target, tokenFile, contentType string, body []byte) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", contentType)
	answer, err := client.Do(req)
	if err != nil {
		return err
	}
	defer answer.Body.Close()
	detail, _ := io.ReadAll(io.LimitReader(answer.Body, 200))
	if answer.StatusCode >= 300 {
		return fmt.Errorf("%s answered %d %s", target, answer.StatusCode, strings.TrimSpace(string(detail)))
	}
	return nil
}
