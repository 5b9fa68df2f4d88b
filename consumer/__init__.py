"""The replayer: consumes queued operations and replays each upstream as its synchronous call."""
