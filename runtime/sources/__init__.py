"""Event sources: HTTP (``http.py`` parsing + ``runtime/api.py`` route), Falco's file output
(``file.py``) and NATS JetStream (``nats.py``). All hand validated alerts to
``runtime.ingest.EventIngestor`` and acknowledge only after it resolved; long-running ones
implement ``base.Source``."""
