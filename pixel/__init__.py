"""The domain shared by the collector, the sink and attribution: events, ids, hashing, registry."""
