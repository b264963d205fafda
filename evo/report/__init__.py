"""The report of a search run: one HTML page (`evo report`, and each run's page of
`evo dashboard`).

By default the page embeds plotly's JavaScript, so it opens offline and can be archived
or mailed as a single file; `plotly="file"` writes the script once beside the page
instead (most of an inline page's size is that script). It only reads the results
database, so it can be made while the search is still running. A search with rungs is
judged at its top rung (the budget nearest the target): the summary, the front and the
learning curves are of top-rung trials; the rungs section and the anytime curve show how
the search got there. Stalled trials (see evo.summary.stalled) are listed, in the
trials and failures sections, but left out of the charts.

The numbers come from `evo.summary`; this package draws them. `page` writes the page
(`write_report`, `render_report`) from one module per kind of section, in page order:
`overview` (the summary), `progress` (rungs, objectives per generation, best against
compute), `front` (optimisation history or Pareto front), `genes` (parallel coordinates,
gene importance), `curves` (learning curves), `trials` (the trials table, workers,
failures) and `retrained` (validation, promotions). They all read `run.Run`; `labels`
says how trials, metrics and genes read, `ticks` how axes are ranged and ticked, and
`markup` holds the HTML, which loads no plotly: each figure is its JSON, which the page's
script (`page.js`, inline in the page) draws, and which `evo dashboard` redraws in place.
Nothing is imported here, so that `evo.report.markup` stays light.
"""
