// A small time-series chart over uPlot (bundled from npm, drawn on a canvas: no CDN, nothing
// inline that the page's CSP would refuse). The latest value of each series is also written
// out as text, so the numbers are readable without the picture.

import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Line {
  label: string;
  /** One value per x; null where it is not known. */
  values: (number | null)[];
}

const COLORS = ["#1f5f4a", "#c2410c", "#1d4f91", "#7c3aed", "#a4262c", "#0f766e", "#a16207", "#475569"];

export function Chart({
  title,
  unit,
  xs,
  lines,
  digits = 1,
}: {
  title: string;
  unit: string;
  /** Unix seconds. */
  xs: number[];
  lines: Line[];
  digits?: number;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = lines.map((l) => l.label).join("\u0000");

  useEffect(() => {
    if (!box.current) return;
    const opts: uPlot.Options = {
      width: Math.max(box.current.clientWidth, 240),
      height: 150,
      legend: { show: true, live: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } },
      // Whole-number charts (counts) get whole-number ticks.
      axes: [
        { size: 30 },
        { size: 50, values: (_u, ticks) => ticks.map((t) => fmt(t, digits)), ...(digits === 0 ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000] } : {}) },
      ],
      series: [{}, ...lines.map((l, i) => ({ label: l.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false }))],
    };
    plot.current = new uPlot(opts, [xs, ...lines.map((l) => l.values)] as uPlot.AlignedData, box.current);
    const resize = new ResizeObserver(() => {
      if (box.current && plot.current) plot.current.setSize({ width: Math.max(box.current.clientWidth, 240), height: 150 });
    });
    resize.observe(box.current);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [shape]);

  useEffect(() => {
    plot.current?.setData([xs, ...lines.map((l) => l.values)] as uPlot.AlignedData);
  }, [xs, lines]);

  const latest = lines.map((l) => {
    const v = [...l.values].reverse().find((x) => x !== null && x !== undefined);
    return `${l.label}: ${v === undefined || v === null ? "—" : fmt(v, digits)}${unit ? " " + unit : ""}`;
  });
  return (
    <figure class="chart" aria-label={title}>
      <figcaption>
        <strong>{title}</strong> <span class="chart-now">{latest.join(" · ")}</span>
      </figcaption>
      <div ref={box} class="chart-canvas" />
    </figure>
  );
}

function fmt(v: number, digits: number): string {
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  return v.toFixed(digits);
}
