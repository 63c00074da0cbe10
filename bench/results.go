package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
)

// Series is one case of one figure: repeated measurements of one quantity.
type Series struct {
	Case     string    `json:"case"`
	Baseline bool      `json:"baseline,omitempty"`
	Values   []float64 `json:"values"`
	Median   float64   `json:"median"`
	Min      float64   `json:"min"`
	Max      float64   `json:"max"`
	Note     string    `json:"note,omitempty"`
}

// Figure is one quantity measured for several cases under one condition,
// each case beside its baseline from the same run.
type Figure struct {
	ID          string    `json:"id"` // file name of the plot, without .png
	Comparison  string    `json:"comparison"`
	Title       string    `json:"title"`
	Condition   string    `json:"condition"`
	Unit        string    `json:"unit"`
	HigherBest  bool      `json:"higher_is_better"`
	NoRatios    bool      `json:"no_ratios,omitempty"` // ratios between cases mean nothing
	Series      []*Series `json:"series"`
	Explanation string    `json:"explanation,omitempty"`
}

// Target is a goal from issue 8 with the ratio measured against it.
type Target struct {
	Name     string  `json:"name"`
	Goal     string  `json:"goal"`
	Ratio    float64 `json:"ratio"` // 0 when not measured
	Measured bool    `json:"measured"`
	Detail   string  `json:"detail"`
	Met      bool    `json:"met"`
	Why      string  `json:"why,omitempty"`
}

// Missing is a figure the run could not produce.
type Missing struct {
	What   string `json:"what"`
	Reason string `json:"reason"`
}

// Profile is a perf profile of the relay's core in one case.
type Profile struct {
	Case string `json:"case"`
	File string `json:"file"`
	Top  string `json:"top"`
}

// Results is everything a run produced.
type Results struct {
	mu       sync.Mutex
	Started  string            `json:"started"`
	Mode     string            `json:"mode"`
	Machine  map[string]string `json:"machine"`
	Figures  []*Figure         `json:"figures"`
	Targets  []*Target         `json:"targets"`
	Missing  []*Missing        `json:"missing"`
	Notes    []string          `json:"notes"`
	Profiles []*Profile        `json:"profiles"`
	Duration float64           `json:"duration_seconds"`
}

func (r *Results) figure(id, comparison, title, condition, unit string, higherBest bool) *Figure {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.Figures {
		if f.ID == id {
			return f
		}
	}
	f := &Figure{ID: id, Comparison: comparison, Title: title, Condition: condition, Unit: unit, HigherBest: higherBest}
	r.Figures = append(r.Figures, f)
	return f
}

func (f *Figure) series(name string, baseline bool) *Series {
	for _, s := range f.Series {
		if s.Case == name {
			return s
		}
	}
	s := &Series{Case: name, Baseline: baseline}
	f.Series = append(f.Series, s)
	return s
}

// add records one measurement.
func (f *Figure) add(name string, baseline bool, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	s := f.series(name, baseline)
	s.Values = append(s.Values, v)
	s.summarize()
}

func (s *Series) summarize() {
	if len(s.Values) == 0 {
		return
	}
	v := slices.Clone(s.Values)
	sort.Float64s(v)
	s.Min, s.Max = v[0], v[len(v)-1]
	if n := len(v); n%2 == 1 {
		s.Median = v[n/2]
	} else {
		s.Median = (v[n/2-1] + v[n/2]) / 2
	}
}

// get returns the series of a case, or nil.
func (f *Figure) get(name string) *Series {
	if f == nil {
		return nil
	}
	for _, s := range f.Series {
		if s.Case == name && len(s.Values) > 0 {
			return s
		}
	}
	return nil
}

func (r *Results) find(id string) *Figure {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.Figures {
		if f.ID == id {
			return f
		}
	}
	return nil
}

func (r *Results) missing(what string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Missing = append(r.Missing, &Missing{What: what, Reason: err.Error()})
	logf("MISSING %s: %v", what, err)
}

func (r *Results) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *Results) profile(name, file, top string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Profiles = append(r.Profiles, &Profile{Case: name, File: file, Top: top})
}

func (r *Results) target(t *Target) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Targets = append(r.Targets, t)
}

func (r *Results) writeJSON(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// writeCSV writes one row per measurement.
func (r *Results) writeCSV(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	w.Write([]string{"figure", "comparison", "condition", "case", "baseline", "unit", "repetition", "value"})
	for _, fig := range r.Figures {
		for _, s := range fig.Series {
			for i, v := range s.Values {
				w.Write([]string{fig.ID, fig.Comparison, fig.Condition, s.Case, strconv.FormatBool(s.Baseline),
					fig.Unit, strconv.Itoa(i + 1), strconv.FormatFloat(v, 'g', 8, 64)})
			}
		}
	}
	w.Flush()
	return w.Error()
}
