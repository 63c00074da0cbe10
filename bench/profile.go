package main

// CPU profiles of the relay's core during a capacity window, with perf's
// software cpu-clock event (this VM has no hardware counters): where the
// relay's CPU goes, kernel included. The harness keeps the report beside the
// results and quotes its top in the summary.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func havePerf() bool {
	_, err := exec.LookPath("perf")
	return err == nil
}

// perfRecord samples CPU cpu for secs seconds into file. It returns once
// recording has started; wait for the returned channel.
func perfRecord(cpu int, secs float64, file string) (<-chan error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
	cmd := exec.CommandContext(ctx, "perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g",
		"-C", fmt.Sprint(cpu), "-o", file, "--", "sleep", fmt.Sprintf("%.1f", secs))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		defer cancel()
		if err := cmd.Wait(); err != nil {
			done <- fmt.Errorf("perf record: %v: %s", err, out.String())
			return
		}
		done <- nil
	}()
	return done, nil
}

// perfReport writes two flat reports of file (by shared object, and by
// symbol) to txt and returns the top lines of each.
func perfReport(file, txt string) (string, error) {
	var all strings.Builder
	var top []string
	for _, sort := range []string{"dso", "dso,sym"} {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		out, err := exec.CommandContext(ctx, "perf", "report", "-i", file, "--stdio", "--no-children",
			"-g", "none", "--percent-limit", "0.5", "--sort", sort).Output()
		cancel()
		if err != nil {
			return "", fmt.Errorf("perf report: %w", err)
		}
		fmt.Fprintf(&all, "### perf report --sort %s\n\n%s\n", sort, out)
		n := 0
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
				continue
			}
			top = append(top, strings.TrimRight(l, " "))
			n++
			if (sort == "dso" && n == 4) || n == 12 {
				break
			}
		}
		top = append(top, "")
	}
	if err := os.WriteFile(txt, []byte(all.String()), 0o644); err != nil {
		return "", err
	}
	return strings.Join(top, "\n"), nil
}

// profileCase profiles the relay core during one extra capacity window.
func profileCase(lab *Lab, res *Results, gen *proc, srv *capServer, c capCase, secs float64, outDir, tmp string) error {
	if !havePerf() {
		return fmt.Errorf("perf is not installed (apt-get install linux-perf)")
	}
	slug := strings.NewReplacer(" ", "-", "(", "", ")", "", "/", "-", ":", "", "+", "-").Replace(strings.ToLower(c.name))
	data := filepath.Join(tmp, "perf-"+slug+".data")
	if err := gen.call(10*time.Second, nil, "run", fmt.Sprintf("%.2f", secs+1.5), 0, 0); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	done, err := perfRecord(capRelayCPU, secs, data)
	if err != nil {
		return err
	}
	var ev struct{ Sent int64 }
	if err := gen.event(time.Duration(secs+30)*time.Second, &ev); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return err
	}
	txt := filepath.Join(outDir, "profile-"+slug+".txt")
	top, err := perfReport(data, txt)
	if err != nil {
		return err
	}
	res.profile(c.name, filepath.Base(txt), top)
	return nil
}
