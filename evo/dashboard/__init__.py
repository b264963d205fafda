"""`evo dashboard`: a live web view of the runs in a results database.

It reads the database read-only (`Storage(read_only=True)`: never a migration, a write or a
write lock), so it can watch a search while the search writes; started
before the search has created the database, it waits for it and says "no runs yet".

Pages (`pages`): `/` lists every run; `/runs/NAME` is the run's report (the sections of
`evo report`), with every trial id linking to its page; `/runs/NAME/trials/ID` is one
trial (`trial`). No page reloads itself: `static/live.js` asks `/api/view/PAGE?since=V`
every few seconds and updates what changed in place. The JSON API for scripts (`api`):
`/api/runs`, `/api/runs/NAME`, `/api/runs/NAME/trials` and
`/api/runs/NAME/trials/ID/curve` (a running trial's so far). plotly.js comes from the
installed plotly package, under a versioned URL that browsers cache; no page needs the
network. plotly is imported where a page draws, not with this package, so that the runs
list and the API answer without loading it. The app, its static files, errors and the
token check are in `app`; `database` opens the database once it exists.

Off the loopback interface a token is required (`--token` or EVO_DASHBOARD_TOKEN), sent as
`?token=` once (the dashboard then keeps it in a cookie) or as `Authorization: Bearer`.
"""

from evo.dashboard.app import TOKEN_ENV, build_app, serve_dashboard

__all__ = ["TOKEN_ENV", "build_app", "serve_dashboard"]
