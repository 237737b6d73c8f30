"""The query and event log in the shape of OpenSearch User Behavior Insights (UBI).

One query record per ``/search`` answer and the events clients send to ``POST /events``, written by one
writer thread with batched commits (:mod:`.writer`) into a pluggable :class:`~.records.LogStore`; the
embedded default is SQLite (:mod:`.sqlite`), the scale-out one OpenSearch (:mod:`.opensearch`, chosen in
:mod:`.stores`). Field names are the UBI spec's
(https://github.com/o19s/ubi, schema 1.3.0; OpenSearch's ``ubi_queries`` / ``ubi_events`` mappings).

Nothing here imports FastAPI: the stores and ``twostage log purge`` work without the service extra.
"""
