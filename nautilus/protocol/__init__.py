"""The sans-IO protocol: messages, state table, key schedule, steps, connection."""
