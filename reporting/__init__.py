"""The read side: the API app (reports, the feed, diagnostics, explanations, imports, the dashboard)."""
