/* Usage: the chart over the chosen range. */
(function () {
  "use strict";
  const { $, fmt, charts } = window.Nebula;
  const data = $("#usage-timeline");
  const container = $('[data-chart="timeline"]');
  if (!data || !container) return;
  const timeline = JSON.parse(data.textContent);
  const daily = timeline.bucket_seconds >= 86400;
  // Past 24 hours a time alone is ambiguous (which day's 14:00?): the axis shows the date.
  const multiDay = timeline.span_seconds > 86400;
  const label = (p) => {
    const date = new Date(p.start);
    const day = date.toLocaleDateString([], { month: "short", day: "numeric" });
    if (daily) return day;
    if (multiDay) return day + " " + fmt.clock(p.start);
    return fmt.clock(p.start);
  };
  // The axis of a range of days names the days (the bars' tooltips give the time too).
  const axisLabel = (p) =>
    timeline.span_seconds >= 2 * 86400
      ? new Date(p.start).toLocaleDateString([], { month: "short", day: "numeric" })
      : label(p);
  charts.bars(container, timeline.points, {
    value: (p) => p.requests,
    part: (p) => p.errors,
    label,
    axisLabel,
    tooltip: (p) => `${label(p)} · ${p.requests} requests, ${p.errors} errors`,
  });
  charts.bars($('[data-chart="tokens"]'), timeline.points, {
    value: (p) => p.tokens,
    barClass: "bar-tokens",
    label,
    axisLabel,
    tooltip: (p) => `${label(p)} · ${fmt.compact(p.tokens)} tokens`,
  });
})();
