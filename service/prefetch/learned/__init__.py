"""The learned prefetcher: candidate features (numpy), the ranking network and its runtime (torch)."""
