"""`sluice ui`: one status page for a whole consumer group.

One process reads what the workers write (the prediction log, the dead-letter
and late topics, `monitoring`, `deployments`, `labeled`) and scrapes every
worker's `/metrics`; a small HTTP server hands the page its data as JSON
(`/api/status`) and serves the page, its script and the charting library
(plotly.js from the `plotly` package: nothing is fetched from the internet).

Rooms: `board` and `monitoring` fold records into bounded state (pure, no
Kafka), `scrape` reads the metrics endpoints, `feed` is the one Kafka
consumer, `server` the HTTP door; `static/` holds the page.
"""
