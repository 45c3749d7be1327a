"""The sink: moves events from the Redis Stream into ClickHouse in large batches."""
