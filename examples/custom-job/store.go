package main

// Checkpoints and the model on the job's volume, in the layout the built-in trainers use
// (docs/custom-jobs.md, "Checkpoints"): a checkpoint is written in <root>/.staging, its
// manifest kubetrain-checkpoint.json last, then renamed to <root>/ckpt-<step, 8 digits>.
// Only a directory whose manifest is intact and whose files match it counts; the newest is
// the one committed last (the manifest's sequence), not the highest step.

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	checkpointManifest = "kubetrain-checkpoint.json"
	modelManifest      = "kubetrain-model.json"
	stagingDir         = ".staging"
	checkpointPrefix   = "ckpt-"
	maxCheckpoints     = 64
)

func checkpointID(step int) string { return fmt.Sprintf("%s%08d", checkpointPrefix, step) }

// checkpointInfo is a checkpoint's manifest.
type checkpointInfo struct {
	ID            string           `json:"id"`
	Step          int              `json:"step"`
	Epoch         int              `json:"epoch"`
	Loss          *float64         `json:"loss"`
	CreatedAt     string           `json:"createdAt"`
	SizeBytes     int64            `json:"sizeBytes"`
	Sequence      int              `json:"sequence"`
	ResumeRequest string           `json:"resumeRequest"`
	Files         map[string]int64 `json:"files"`
}

func (c checkpointInfo) reported(root string) reportedCheckpoint {
	return reportedCheckpoint{
		ID: c.ID, Epoch: c.Epoch, Step: c.Step, Loss: c.Loss, CreatedAt: c.CreatedAt,
		SizeBytes: c.SizeBytes, Path: filepath.Join(root, c.ID),
	}
}

type checkpointStore struct {
	root     string
	keepLast int
}

// clearStaging removes what a writer killed mid-checkpoint left behind.
func (s checkpointStore) clearStaging() error {
	staging := filepath.Join(s.root, stagingDir)
	if err := os.RemoveAll(staging); err != nil {
		return err
	}
	return os.MkdirAll(staging, 0o755)
}

// complete is every complete checkpoint, oldest first (by commit order).
func (s checkpointStore) complete() ([]checkpointInfo, error) {
	entries, err := os.ReadDir(s.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var found []checkpointInfo
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), checkpointPrefix) {
			continue
		}
		if info, ok := readCheckpoint(filepath.Join(s.root, e.Name())); ok {
			found = append(found, info)
		} else {
			logf("ignoring incomplete checkpoint %s", e.Name())
		}
	}
	sort.Slice(found, func(i, j int) bool {
		if found[i].Sequence != found[j].Sequence {
			return found[i].Sequence < found[j].Sequence
		}
		return found[i].Step < found[j].Step
	})
	return found, nil
}

func readCheckpoint(dir string) (checkpointInfo, bool) {
	var info checkpointInfo
	text, err := os.ReadFile(filepath.Join(dir, checkpointManifest))
	if err != nil || json.Unmarshal(text, &info) != nil || info.ID == "" || info.Files == nil {
		return info, false
	}
	for name, size := range info.Files {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Size() != size {
			return info, false
		}
	}
	return info, true
}

// resolve is the checkpoint a run starts from: "" the latest (or none); an id that one,
// unless a run started with the same request already wrote newer ones (a restart).
func (s checkpointStore) resolve(request string) (*checkpointInfo, error) {
	all, err := s.complete()
	if err != nil {
		return nil, err
	}
	if len(all) == 0 && request == "" {
		return nil, nil
	}
	if n := len(all); n > 0 && (request == "" || all[n-1].ResumeRequest == request) {
		return &all[n-1], nil
	}
	ids := []string{}
	for i := range all {
		if all[i].ID == request {
			return &all[i], nil
		}
		ids = append(ids, all[i].ID)
	}
	if len(ids) == 0 {
		ids = []string{"none"}
	}
	return nil, configError("cannot resume from checkpoint %q: it is not a complete checkpoint in %s (complete checkpoints: %s)",
		request, s.root, strings.Join(ids, ", "))
}

func (s checkpointStore) load(c checkpointInfo) (model, error) {
	var m model
	text, err := os.ReadFile(filepath.Join(s.root, c.ID, "model.json"))
	if err == nil {
		err = json.Unmarshal(text, &m)
	}
	if err != nil {
		return m, fmt.Errorf("reading checkpoint %s: %w", c.ID, err)
	}
	return m, nil
}

// save stages the model, seals it with the manifest and renames it into place.
func (s checkpointStore) save(m model, step, epoch int, loss float64, request string) (checkpointInfo, error) {
	previous, err := s.complete()
	if err != nil {
		return checkpointInfo{}, err
	}
	staged, err := os.MkdirTemp(filepath.Join(s.root, stagingDir), "ckpt-")
	if err == nil {
		err = os.Chmod(staged, 0o755) // readable like the rest of the volume
	}
	if err != nil {
		return checkpointInfo{}, err
	}
	body, _ := json.Marshal(m)
	if err := writeSynced(filepath.Join(staged, "model.json"), body); err != nil {
		return checkpointInfo{}, err
	}
	info := checkpointInfo{
		ID: checkpointID(step), Step: step, Epoch: epoch, Loss: ptr(loss),
		CreatedAt: time.Now().UTC().Truncate(time.Second).Format(time.RFC3339),
		SizeBytes: int64(len(body)), Sequence: 1, ResumeRequest: request,
		Files: map[string]int64{"model.json": int64(len(body))},
	}
	if n := len(previous); n > 0 {
		info.Sequence = previous[n-1].Sequence + 1
	}
	manifest, _ := json.MarshalIndent(info, "", " ")
	if err := writeSynced(filepath.Join(staged, checkpointManifest), manifest); err != nil {
		return checkpointInfo{}, err
	}
	final := filepath.Join(s.root, info.ID)
	if _, err := os.Stat(final); err == nil { // the same step again (resumed and stopped at once)
		if err := s.discard(final); err != nil {
			return checkpointInfo{}, err
		}
	}
	if err := os.Rename(staged, final); err != nil {
		return checkpointInfo{}, err
	}
	return info, syncDir(s.root)
}

// prune deletes all but the newest keepLast complete checkpoints.
func (s checkpointStore) prune() error {
	all, err := s.complete()
	if err != nil {
		return err
	}
	for _, c := range all[:max(len(all)-s.keepLast, 0)] {
		if err := s.discard(filepath.Join(s.root, c.ID)); err != nil {
			return err
		}
	}
	return nil
}

// discard renames a checkpoint away first, so a crash mid-delete never leaves one that looks complete.
func (s checkpointStore) discard(dir string) error {
	trash, err := os.MkdirTemp(filepath.Join(s.root, stagingDir), "trash-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(trash, filepath.Base(dir))); err != nil {
		return err
	}
	return os.RemoveAll(trash)
}

// publishModel writes the model beside outputDir, renames it into place and seals it with
// kubetrain-model.json, written last: a restarted Pod that finds it does not train again.
func publishModel(outputDir string, m model, loss float64) (reportedModel, error) {
	staged := filepath.Join(filepath.Dir(outputDir), "."+filepath.Base(outputDir)+".staging")
	if err := os.RemoveAll(staged); err != nil {
		return reportedModel{}, err
	}
	if err := os.MkdirAll(staged, 0o755); err != nil {
		return reportedModel{}, err
	}
	body, _ := json.MarshalIndent(m, "", " ")
	if err := writeSynced(filepath.Join(staged, "model.json"), body); err != nil {
		return reportedModel{}, err
	}
	if err := os.RemoveAll(outputDir); err != nil {
		return reportedModel{}, err
	}
	if err := os.Rename(staged, outputDir); err != nil {
		return reportedModel{}, err
	}
	manifest, _ := json.MarshalIndent(map[string]any{
		"format": "json", "files": map[string]int64{"model.json": int64(len(body))}, "loss": ptr(loss),
	}, "", " ")
	if err := writeSynced(filepath.Join(outputDir, modelManifest), manifest); err != nil {
		return reportedModel{}, err
	}
	if err := syncDir(filepath.Dir(outputDir)); err != nil {
		return reportedModel{}, err
	}
	done, ok := publishedModel(outputDir)
	if !ok {
		return reportedModel{}, fmt.Errorf("the model in %s does not match its manifest", outputDir)
	}
	return done, nil
}

// publishedModel is the model a run of this job published, if its manifest holds.
func publishedModel(outputDir string) (reportedModel, bool) {
	var manifest struct {
		Format string           `json:"format"`
		Files  map[string]int64 `json:"files"`
	}
	text, err := os.ReadFile(filepath.Join(outputDir, modelManifest))
	if err != nil || json.Unmarshal(text, &manifest) != nil || manifest.Files == nil {
		return reportedModel{}, false
	}
	for name, size := range manifest.Files {
		if st, err := os.Stat(filepath.Join(outputDir, name)); err != nil || st.Size() != size {
			return reportedModel{}, false
		}
	}
	digest, size, err := treeDigest(outputDir)
	if err != nil {
		return reportedModel{}, false
	}
	return reportedModel{Path: outputDir, Format: manifest.Format, SizeBytes: size, Digest: digest}, true
}

// treeDigest is "sha256:" over each file's relative path, a NUL and its content, in path
// order with the manifest last (the operator's ReportedModel.digest).
func treeDigest(dir string) (string, int64, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, path)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		return "", 0, err
	}
	sort.SliceStable(files, func(i, j int) bool {
		mi, mj := filepath.Base(files[i]) == modelManifest, filepath.Base(files[j]) == modelManifest
		if mi != mj {
			return mj
		}
		return files[i] < files[j]
	})
	hasher, total := sha256.New(), int64(0)
	for _, rel := range files {
		hasher.Write([]byte(rel + "\x00"))
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return "", 0, err
		}
		n, err := io.Copy(hasher, f)
		f.Close()
		if err != nil {
			return "", 0, err
		}
		total += n
	}
	return fmt.Sprintf("sha256:%x", hasher.Sum(nil)), total, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
