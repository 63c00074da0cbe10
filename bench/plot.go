package main

// One PNG per figure (gonum/plot): a horizontal bar per case at its median,
// a whisker from the minimum to the maximum of the repetitions, and the
// median written beside it. Quicpipe's bars are blue, baselines grey,
// reference measurements light.

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

var (
	colorQuicpipe  = color.RGBA{R: 0x1f, G: 0x6f, B: 0xc0, A: 0xff}
	colorBaseline  = color.RGBA{R: 0x80, G: 0x80, B: 0x80, A: 0xff}
	colorReference = color.RGBA{R: 0xc8, G: 0xc8, B: 0xc8, A: 0xff}
)

func isReference(name string) bool { return strings.HasPrefix(name, "reference:") }

func barColor(s *Series) color.Color {
	switch {
	case isReference(s.Case):
		return colorReference
	case s.Baseline:
		return colorBaseline
	}
	return colorQuicpipe
}

func writePlots(res *Results, dir string) error {
	var errs []string
	for _, f := range res.Figures {
		if len(f.Series) == 0 {
			continue
		}
		if err := plotFigure(f, filepath.Join(dir, f.ID+".png")); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", f.ID, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// wrap breaks a label into lines of about n characters.
func wrap(s string, n int) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > n {
			lines = append(lines, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return strings.Join(append(lines, line), "\n")
}

func plotFigure(f *Figure, path string) error {
	var series []*Series
	for _, s := range f.Series {
		if len(s.Values) > 0 {
			series = append(series, s)
		}
	}
	if len(series) == 0 {
		return fmt.Errorf("no data")
	}
	p := plot.New()
	p.Title.Text = wrap(f.Title, 80) + "\n" + wrap(f.Condition, 90)
	p.X.Label.Text = f.Unit + fmt.Sprintf("  (bar: median of %s; whisker: min–max)", repsText(series))
	p.X.Min = 0
	names := make([]string, len(series))
	maxV := 0.0
	// Bars are drawn from the top: the first case at the top.
	n := len(series)
	for i, s := range series {
		y := float64(n - 1 - i)
		names[n-1-i] = wrap(s.Case, 28)
		bc, err := plotter.NewBarChart(plotter.Values{s.Median}, vg.Points(16))
		if err != nil {
			return err
		}
		bc.Horizontal = true
		bc.XMin = y
		bc.Color = barColor(s)
		bc.LineStyle.Width = 0
		p.Add(bc)
		if len(s.Values) > 1 {
			eb, err := plotter.NewXErrorBars(errPoint{x: s.Median, y: y, lo: s.Median - s.Min, hi: s.Max - s.Median})
			if err != nil {
				return err
			}
			eb.CapWidth = vg.Points(8)
			p.Add(eb)
		}
		maxV = math.Max(maxV, s.Max)
	}
	labels := plotter.XYLabels{}
	for i, s := range series {
		labels.XYs = append(labels.XYs, plotter.XY{X: s.Max, Y: float64(n-1-i) - 0.12})
		labels.Labels = append(labels.Labels, "  "+formatValue(s.Median, f.Unit))
	}
	l, err := plotter.NewLabels(labels)
	if err != nil {
		return err
	}
	p.Add(l)
	p.X.Max = maxV * 1.3
	if maxV == 0 {
		p.X.Max = 1
	}
	p.NominalY(names...)
	p.Y.Tick.Label.Font.Size = vg.Points(9)
	height := vg.Length(1.6+0.55*float64(n)) * vg.Inch
	return p.Save(8*vg.Inch, height, path)
}

type errPoint struct{ x, y, lo, hi float64 }

func (e errPoint) Len() int                      { return 1 }
func (e errPoint) XY(int) (float64, float64)     { return e.x, e.y }
func (e errPoint) XError(int) (float64, float64) { return e.lo, e.hi }

func repsText(ss []*Series) string {
	lo, hi := len(ss[0].Values), len(ss[0].Values)
	for _, s := range ss {
		lo, hi = min(lo, len(s.Values)), max(hi, len(s.Values))
	}
	if lo == hi {
		return fmt.Sprintf("%d", lo)
	}
	return fmt.Sprintf("%d–%d", lo, hi)
}

// formatValue prints a value with a precision fit for its size.
func formatValue(v float64, unit string) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a == 0:
		return "0"
	}
	return fmt.Sprintf("%.2g", v)
}
