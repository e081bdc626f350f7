"""The data stage: from a user's interaction files to validated spans and session records.

  config.py      how sessions are cut and split (plain values)
  ingest.py      reading interaction files into the pipeline's TFRecord events, refusing bad rows
  spans.py       each run's events as the input's next span
  validation.py  TFDV anomalies and drift as a stop with a readable reason
  sessions.py    sessions, retrieval examples and RL transitions (Beam; SessionBuilder's logic)
"""
