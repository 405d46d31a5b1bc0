"""Web: what a browser or an HTTP client reaches.

Owns the HTTP endpoint (`http`: /healthz, /metrics, /v1/predict, /snapshot.jpg, bounded
connections and bodies, the bearer token) and the console (`console`: sessions, CSRF, its
JSON API, the pages in `console_static/`). Its settings are the `http` section (`config`).
What it needs of the running agent (stats, a classifier, the sample store) is handed to it
by the service, never imported.

May import: the base, `vision`, `people` and `site`. Not `delivery` or the top.
"""
